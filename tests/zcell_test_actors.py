"""Actor types used by the test suite (importable by child `zcell node` processes)."""

from __future__ import annotations

import time

import gevent

from zcell import Actor, Next


class Echo(Actor):
    class state(Actor.state):
        def __init__(self, tag: str = "") -> None:
            self.tag = tag
            self.calls = 0
            self.started = False

        def on_start(self) -> None:
            self.started = True

        def echo(self, value=None):
            self.calls += 1
            return value

        def whoami(self):
            return {"tag": self.tag, "id": self.actor.id, "node": self.node.name}

        def count(self):
            return self.calls

        def is_started(self):
            return self.started

        def fail(self, kind: str = "KeyError", message: str = "boom"):
            import builtins

            raise getattr(builtins, kind)(message)

        def sleep(self, seconds: float):
            gevent.sleep(seconds)
            return seconds

        def block(self, seconds: float):
            time.sleep(seconds)  # really blocks the loop unless patched
            return seconds

        def hog(self, seconds: float):
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                n += 1
            return n

        def origin(self):
            o = self.actor.origin
            return None if o is None else o.id

        def call_other(self, other, method: str = "echo", kwargs=None):
            return other.send(method, kwargs or {})

        def ask_back(self, other, depth: int):
            """Call `other`, which calls us back, until depth reaches 0."""
            if depth <= 0:
                return "bottom"
            return other.send.ask_back(other=self.actor.ref, depth=depth - 1)

        def recurse(self, depth: int):
            if depth <= 0:
                return 0
            return 1 + self.actor.send.recurse(depth=depth - 1)

        def chain(self, refs: list, depth: int = 0):
            """Pass the call along `refs` (actors anywhere), returning the path length."""
            if not refs:
                return depth
            head, rest = refs[0], refs[1:]
            return head.send.chain(refs=rest, depth=depth + 1)

        def make_proxy_value(self):
            return self.actor.ref

        def bad_return(self):
            return {1, 2, 3}

        def decline(self):
            raise Next()

        def _private(self):
            return "never"


class Counter(Actor):
    class state(Actor.state):
        def __init__(self, start: int = 0) -> None:
            self.value = start
            self.stopped_marker = None

        def incr(self, by: int = 1):
            self.value += by
            return self.value

        def get(self):
            return self.value

        def on_stop(self) -> None:
            Counter.stops.append(self.actor.id)

    stops: list = []

    # A client-side helper on the outer class.
    def incr_twice(self) -> int:
        self.send.incr()
        return self.send.incr()


class Fallback(Actor):
    class state:  # cell style: a plain class
        def known(self):
            return "known"

        def default_receive(self, method, kwargs):
            return ["default", method, kwargs]


class Broken(Actor):
    class state(Actor.state):
        def __init__(self, fail: bool = True) -> None:
            if fail:
                raise ValueError("constructor failed on purpose")

        def ok(self):
            return "ok"


class Unregistered(Actor):
    """Never registered on any node by the tests."""

    class state(Actor.state):
        def ping(self):
            return "pong"


class Cache(Actor):
    """The cache pattern: values set by throw, read back by scatter + first_reply."""

    class state(Actor.state):
        def __init__(self) -> None:
            self.data: dict = {}

        def set(self, key: str, value):
            self.data[key] = value
            return self.actor.id

        def get(self, key: str):
            if key not in self.data:
                raise Next()
            return self.data[key]

        def size(self):
            return len(self.data)


class Logger(Actor):
    """The cell guide's Logger: remembers what it printed."""

    class state(Actor.state):
        def __init__(self, prefix: str = "") -> None:
            self.prefix = prefix
            self.lines: list = []

        def log(self, msg: str):
            line = self.prefix + msg
            print(line, flush=True)
            origin = self.actor.origin
            self.lines.append([line, None if origin is None else origin.id])
            return line

        def history(self):
            return self.lines

        def emit_from_inside(self, msg: str):
            self.actor.emit("log", {"msg": msg})


class Picky(Actor):
    """Declines everything except values it was told to accept."""

    class state(Actor.state):
        def __init__(self, accept=None) -> None:
            self.accept = accept
            self.seen = 0

        def take(self, value):
            self.seen += 1
            if value != self.accept:
                raise Next()
            return self.actor.id

        def seen_count(self):
            return self.seen


class Sink(Actor):
    """Counts numbered messages, to prove each arrived exactly once."""

    class state(Actor.state):
        def __init__(self, n: int) -> None:
            self.seen = bytearray(n)
            self.count = 0
            self.duplicates = 0

        def take(self, i: int) -> None:
            if self.seen[i]:
                self.duplicates += 1
            self.seen[i] = 1
            self.count += 1

        def report(self):
            return {
                "count": self.count,
                "duplicates": self.duplicates,
                "missing": self.seen.count(0),
            }


class Ready(Actor):
    """cell-style hook name, and the agent alias."""

    default_timeout = 1.5

    class state(Actor.state):
        def __init__(self) -> None:
            self.ready = False
            self.agent_is_node = self.agent is self.node

        def on_agent_ready(self) -> None:
            self.ready = True

        def facts(self):
            return {
                "ready": self.ready,
                "agent_is_node": self.agent_is_node,
                "node": self.node.name,
            }

        def slow(self, seconds: float):
            gevent.sleep(seconds)
            return seconds
