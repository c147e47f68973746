"""Actor types the zcell benchmarks use; hosted by ``zcell node -A bench.actors``.

Plain user code through zcell's public API: nothing here knows it is a benchmark
except ``Pinger``, which times calls made from inside a handler.
"""

from __future__ import annotations

import time
from typing import Any

from zcell import Actor


class Ping(Actor):
    """Echo: the target of ``send``/``call`` round trips."""

    class state(Actor.state):
        def ping(self, x: Any = None) -> Any:
            return x


class Sink(Actor):
    """Counts fire-and-forget messages; ``count()`` tells how many arrived."""

    class state(Actor.state):
        def __init__(self) -> None:
            self.n = 0

        def hit(self, x: Any = None) -> None:
            self.n += 1

        def count(self) -> int:
            return self.n

        def reset(self) -> int:
            n, self.n = self.n, 0
            return n


class Worker(Actor):
    """Target of ``throw``: counts what it got, says where it runs."""

    class state(Actor.state):
        def __init__(self) -> None:
            self.n = 0

        def work(self, x: Any = None) -> Any:
            self.n += 1
            return x

        def count(self) -> dict[str, Any]:
            return {"id": self.actor.id, "node": self.node.name, "n": self.n}

        def reset(self) -> int:
            n, self.n = self.n, 0
            return n


class Gather(Actor):
    """Target of ``scatter``: every actor of the type answers."""

    class state(Actor.state):
        def ping(self, x: Any = None) -> Any:
            return x


class Chain(Actor):
    """A nested call chain: each hop calls the next actor and waits for its reply."""

    class state(Actor.state):
        def chain(self, refs: list[Any], depth: int = 1) -> int:
            if not refs:
                return depth
            return refs[0].send.chain(refs=refs[1:], depth=depth + 1)


class Pinger(Actor):
    """Times ``send`` round trips made by a handler (actor to actor)."""

    class state(Actor.state):
        def rtt(self, target: Any, warm: int, n: int) -> dict[str, Any]:
            """``target.send.ping`` *warm* times, then *n* timed; latencies in ns."""
            ping = target.send.ping
            for i in range(warm):
                ping(x=i)
            clock = time.perf_counter_ns
            samples = [0] * n
            for i in range(n):
                t0 = clock()
                got = ping(x=i)
                samples[i] = clock() - t0
                if got != i:
                    raise RuntimeError(f"reply {got!r} to ping {i}")
            samples.sort()
            return {"sorted_ns": samples}


class Probe(Actor):
    """Reads its node's counters (``Node.statistics()``)."""

    class state(Actor.state):
        def stats(self) -> dict[str, Any]:
            return {"node": self.node.name, **self.node.statistics()}


class Idle(Actor):
    """An actor that does nothing: what an idle actor costs."""


class Spawner(Actor):
    """Spawns actors onto its own node from a handler (the node's own spawn path)."""

    class state(Actor.state):
        def spawn_idle(self, n: int) -> float:
            """Spawn *n* ``Idle`` actors here, one after another; seconds taken."""
            spawn, me = self.node.spawn, self.node.id
            t0 = time.perf_counter()
            for _ in range(n):
                spawn(Idle, on=me)
            return time.perf_counter() - t0

        def hosted(self) -> int:
            return int(self.node.statistics()["actors_hosted"])
