"""Chat: users scatter their posts to every other user.

``say`` scatters ``receive`` to every User of the mesh, itself included; a user
declines its own post by raising ``Next``, so the scatter gathers the nicknames
of those who read it. ::

    python examples/chat.py

With ``zcell node -A examples.chat`` running in the same cluster, users spread
over the nodes and posts cross them.
"""

from __future__ import annotations

import argparse

from zcell import Actor, CallTimeout, Next, Node


class User(Actor):
    name = "examples.chat.User"

    class state(Actor.state):
        def __init__(self, nick: str) -> None:
            self.nick = nick
            self.inbox: list[str] = []

        def say(self, text: str) -> list[str]:
            """Post to everyone; returns who read it."""
            readers = self.actor.scatter.receive(sender=self.nick, text=text)
            return sorted(readers)

        def receive(self, sender: str, text: str) -> str:
            if sender == self.nick:
                raise Next()  # our own post: decline, give no reply
            self.inbox.append(f"<{sender}> {text}")
            return self.nick

        def history(self) -> list[str]:
            return self.inbox

        def where(self) -> str:
            return self.node.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="users scatter posts to each other")
    parser.add_argument("--cluster", default="zcell", help="mesh to join (default: zcell)")
    args = parser.parse_args(argv)

    with Node(cluster=args.cluster, actors=[User]) as node:
        # A moment to meet the cluster's other nodes, if any run (mDNS takes
        # milliseconds); alone, this node hosts everything itself.
        try:
            node.wait_for(nodes=2, timeout=0.3)
        except CallTimeout:
            pass

        users = {nick: node.spawn(User, nick=nick) for nick in ("alice", "bob", "carol")}
        print("users live on", ", ".join(sorted({u.send.where() for u in users.values()})))
        print("alice said hi, read by", users["alice"].send.say(text="hi all"))
        print("bob answered, read by", users["bob"].send.say(text="hello alice"))
        for nick, user in users.items():
            print(f"{nick}'s inbox:", user.send.history())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
