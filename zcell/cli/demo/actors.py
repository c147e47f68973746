"""Actor types of ``zcell demo``, hosted by the ``zcell node -A zcell.cli.demo.actors``
nodes it starts.

They live in the package (not in ``examples/``) so that ``zcell demo`` works
wherever zcell is installed. Handlers may call ``time.sleep``: ``zcell node``
monkey-patches, so a sleeping handler parks only its own greenlet.
"""

from __future__ import annotations

import time
from typing import Any

from zcell import Actor, ActorProxy

__all__ = ["Bouncer", "Greeter", "Logger", "Worker"]


class Greeter(Actor):
    """Says hello; ``slow_greet`` takes its time, ``fail`` raises."""

    class state(Actor.state):
        def __init__(self, greeting: str = "Hello") -> None:
            self.greeting = greeting

        def greet(self, who: str = "world") -> str:
            return f"{self.greeting}, {who}! (from {self.node.name})"

        def slow_greet(self, who: str = "world", seconds: float = 0.5) -> str:
            time.sleep(seconds)
            return self.greet(who)

        def fail(self, key: str = "missing") -> None:
            raise KeyError(key)


class Worker(Actor):
    """Does jobs and says where; one per node shows how ``throw`` spreads them."""

    class state(Actor.state):
        def __init__(self) -> None:
            self.jobs = 0

        def work(self, job: int) -> dict[str, Any]:
            self.jobs += 1
            return {"job": job, "node": self.node.name}

        def report(self) -> dict[str, Any]:
            return {"node": self.node.name, "jobs": self.jobs}

        def members(self) -> list[str]:
            return sorted(n["name"] for n in self.node.nodes())

        def sleep(self, seconds: float) -> str:
            time.sleep(seconds)
            name: str = self.node.name  # typed Any in zcell._mesh until its rework
            return name


class Logger(Actor):
    """The ``cell`` guide's logger: prints on the node that hosts it."""

    class state(Actor.state):
        def __init__(self, label: str = "logger") -> None:
            self.label = label
            self.lines = 0

        def log(self, msg: str) -> int:
            self.lines += 1
            origin = self.actor.origin
            via = "" if origin is None or origin.id == self.actor.id else " (forwarded)"
            print(f"{self.label}: {msg}{via}", flush=True)
            return self.lines


class Bouncer(Actor):
    """Calls another bouncer, which calls back, ``hops`` times: a nested call chain."""

    class state(Actor.state):
        def bounce(self, other: ActorProxy, hops: int) -> list[str]:
            here = f"{self.node.name}"
            if hops <= 0:
                return [here]
            # Blocks this greenlet only: `other` may call us back meanwhile.
            return [here, *other.send.bounce(other=self.actor.ref, hops=hops - 1)]
