"""Hello, mesh: send, call, select, scatter and first_reply.

Alone, this script hosts its greeters itself::

    python examples/hello.py

Next to a node that hosts greeters too, they spread over both (the README's
walkthrough)::

    zcell node -A examples.hello        # terminal 1
    python examples/hello.py            # terminal 2
"""

from __future__ import annotations

import argparse

from zcell import Actor, CallTimeout, Node, first_reply


# The docs include the parts between "--8<--" markers (docs/index.md).
# --8<-- [start:greeter]
class Greeter(Actor):
    # The type name nodes agree on. Explicit, so that it is the same whether this
    # file runs as a script (module "__main__") or is imported as examples.hello.
    name = "examples.hello.Greeter"

    class state(Actor.state):
        def __init__(self, greeting: str = "Hello") -> None:
            self.greeting = greeting

        def greet(self, who: str = "world") -> str:
            return f"{self.greeting}, {who}! (from {self.node.name})"


# --8<-- [end:greeter]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hello, mesh.")
    parser.add_argument("--cluster", default="zcell", help="mesh to join (default: zcell)")
    args = parser.parse_args(argv)

    # This program is a node too: it may host Greeters, and finds other nodes by mDNS.
    with Node(cluster=args.cluster, actors=[Greeter]) as node:
        # A moment to meet the cluster's other nodes, if any run (mDNS takes
        # milliseconds); alone, this node hosts everything itself.
        try:
            node.wait_for(nodes=2, timeout=0.3)
        except CallTimeout:
            pass

        # --8<-- [start:calls]
        english = node.spawn(Greeter, greeting="Hello")
        french = node.spawn(Greeter, greeting="Bonjour")

        # send: deliver to one actor and wait for the handler's return value.
        print("send:   ", english.send.greet(who="world"))

        # call: an AsyncResult at once; the value when you need it.
        result = french.call.greet(who="le monde")
        print("call:   ", result.get(timeout=5), f"[{result.state}]")

        # select: a proxy for some existing actor of the type, anywhere in the mesh.
        somebody = node.select(Greeter)
        print("select: ", somebody.send.greet(who="whoever you are"))

        # scatter: every Greeter of the mesh answers; iterate over the replies.
        for reply in sorted(english.scatter.greet(who="everyone")):
            print("scatter:", reply)

        # first_reply: the first answer of a scatter (KeyError when nobody answers).
        print("first:  ", first_reply(english.scatter.greet(who="first", limit=1), key=Greeter))
        # --8<-- [end:calls]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
