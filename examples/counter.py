"""The ``cell`` guide's Counter and Incrementer, both ways.

1. Through greenlets: ``Counter.count_to`` calls the Incrementer and blocks on
   each reply. Only its own greenlet waits, so nothing deadlocks, even with both
   actors on one node.
2. Through the outbox: ``AsyncCounter`` binds an Adder's outbox to itself; every
   result comes back as a new ``count`` message. No handler ever waits.

::

    python examples/counter.py
"""

from __future__ import annotations

import argparse
import time
import uuid

from gevent.event import Event

from zcell import Actor, CallTimeout, Node, forward

# The docs include the parts between "--8<--" markers (docs/actors.md).

# --- 1. via greenlets --------------------------------------------------------


# --8<-- [start:greenlets]
class Incrementer(Actor):
    name = "examples.counter.Incrementer"

    class state(Actor.state):
        def inc(self, n: int) -> int:
            return n + 1

    # A client-side helper, as in the guide: callers write incrementer.inc(n).
    def inc(self, n: int) -> int:
        return self.send.inc(n=n)


class Counter(Actor):
    name = "examples.counter.Counter"

    class state(Actor.state):
        def count_to(self, target: int) -> list[int]:
            incrementer = self.agent.spawn(Incrementer)
            counted = []
            n = 0
            while n < target:
                n = incrementer.inc(n)  # blocks this handler's greenlet only
                counted.append(n)
            self.agent.kill(incrementer)
            return counted


# --8<-- [end:greenlets]


# --- 2. via actor outboxes ---------------------------------------------------


# --8<-- [start:outbox]
class Adder(Actor):
    name = "examples.counter.Adder"

    class state(Actor.state):
        def add_one(self, i: int, token: str) -> int:
            print(f"Increasing {i} with one", flush=True)
            res = i + 1
            # emit() puts the message in this actor's outbox; the outbox is bound
            # to the counter's inbox, so the counter's `count` handler gets it.
            self.actor.emit("count", {"res": res, "token": token})
            return res


class AsyncCounter(Actor):
    name = "examples.counter.AsyncCounter"

    class state(Actor.state):
        def __init__(self) -> None:
            self.targets: dict[str, int] = {}
            self.counted: dict[str, list[int]] = {}
            self.adder = None
            self.bound = Event()  # handlers run in greenlets: they may wait on it

        def on_agent_ready(self) -> None:
            # Bind the outbox of our own Adder to our inbox.
            self.adder = self.agent.spawn(Adder)
            self.adder | forward | self.actor.ref
            self.bound.set()

        def count_to(self, target: int) -> str:
            self.bound.wait(5)
            token = uuid.uuid4().hex  # tells concurrent countings apart
            self.targets[token] = target
            self.counted[token] = []
            self.adder.send.add_one(i=0, token=token, nowait=True)
            return token

        def count(self, res: int, token: str) -> None:
            self.counted[token].append(res)
            if res < self.targets[token]:
                self.adder.send.add_one(i=res, token=token, nowait=True)
            else:
                print("Done with counting", flush=True)

        def progress(self, token: str) -> list[int]:
            return self.counted[token]

    def wait(self, token: str, target: int, timeout: float = 5.0) -> list[int]:
        """Client-side helper: poll until the counting of ``token`` is done."""
        deadline = time.monotonic() + timeout
        while len(counted := self.send.progress(token=token)) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"counting {token} did not finish")
            time.sleep(0.01)
        return counted


# --8<-- [end:outbox]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Counter and Incrementer")
    parser.add_argument("--cluster", default="zcell", help="mesh to join (default: zcell)")
    parser.add_argument("--target", type=int, default=5)
    args = parser.parse_args(argv)

    actors = [Incrementer, Counter, Adder, AsyncCounter]
    with Node(cluster=args.cluster, actors=actors) as node:
        # A moment to meet the cluster's other nodes, if any run (mDNS takes
        # milliseconds); alone, this node hosts everything itself.
        try:
            node.wait_for(nodes=2, timeout=0.3)
        except CallTimeout:
            pass

        counter = node.spawn(Counter)
        print("greenlets: counted", counter.send.count_to(target=args.target))

        async_counter = node.spawn(AsyncCounter)
        token = async_counter.send.count_to(target=args.target)
        print("outbox: counted", async_counter.wait(token, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
