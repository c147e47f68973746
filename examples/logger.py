"""The ``cell`` guide's Logger: send, throw, scatter, then forward and stop_forward.

::

    python examples/logger.py

Loggers print on the node that hosts them: here, this program (or a
``zcell node -A examples.logger`` of the same cluster, if one runs).
"""

from __future__ import annotations

import argparse
import time

from zcell import Actor, CallTimeout, Node, forward, stop_forward


# The docs include the parts between "--8<--" markers (docs/actors.md).
# --8<-- [start:logger]
class Logger(Actor):
    name = "examples.logger.Logger"  # explicit: the same when run as a script

    class state(Actor.state):
        def __init__(self, label: str = "logger") -> None:
            self.label = label
            self.lines = 0

        def log(self, msg: str) -> int:
            self.lines += 1
            print(f"{self.label}: {msg}", flush=True)
            return self.lines

        def count(self) -> int:
            return self.lines

    # A client-side helper: it runs in the caller and talks to the actor through
    # its proxy. emit() is fire and forget, so we wait for the line to be logged.
    def wait_for_lines(self, lines: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.send.count() < lines:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.ref} logged fewer than {lines} lines")
            time.sleep(0.01)


# --8<-- [end:logger]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="forward and stop_forward")
    parser.add_argument("--cluster", default="zcell", help="mesh to join (default: zcell)")
    args = parser.parse_args(argv)

    with Node(cluster=args.cluster, actors=[Logger]) as node:
        # A moment to meet the cluster's other nodes, if any run (mDNS takes
        # milliseconds); alone, this node hosts everything itself.
        try:
            node.wait_for(nodes=2, timeout=0.3)
        except CallTimeout:
            pass

        # --8<-- [start:delivery]
        logger1 = node.spawn(Logger, label="logger1")
        logger2 = node.spawn(Logger, label="logger2")

        # The three delivery types of the guide.
        logger1.send("log", {"msg": "the quick brown fox ... (send: logger1)"})
        logger1.throw("log", {"msg": "the quick brown fox ... (throw: logger1 or logger2)"})
        list(logger1.scatter("log", {"msg": "the quick brown fox ... (scatter: both)"}))
        # --8<-- [end:delivery]

        # --8<-- [start:outbox]
        # The outbox: emit() goes to the bindings of logger1's outbox...
        logger1 | forward | logger2
        seen = logger2.send.count()
        logger1.emit("log", {"msg": "I will be printed from logger2"})
        logger2.wait_for_lines(seen + 1)

        # ...and, with no binding left, to logger1 itself.
        logger1 | stop_forward | logger2
        seen = logger1.send.count()
        logger1.emit("log", {"msg": "I will be printed from logger1"})
        logger1.wait_for_lines(seen + 1)
        # --8<-- [end:outbox]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
