"""``zcell demo``: a guided tour of a real mesh, in about ten seconds.

It starts a few ``zcell node -A zcell.cli.demo.actors`` child processes on this
machine (mDNS on loopback, in a cluster of its own, so it never meets anything
else; each child also gets this program's address as a ``--peer``, so it works
where multicast does not), joins them as a node itself, and narrates every
primitive across them: spawn, send, call, errors, throw, scatter, emit and
``forward``, a nested call chain, and a node killed with SIGKILL. Whatever
happens (success, failure, Ctrl-C, SIGTERM) it stops the children it started.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..daemon import die_with_parent

if TYPE_CHECKING:
    from zcell import ActorProxy, Node

__all__ = ["run_demo"]

MODULE = "zcell.cli.demo.actors"
#: Bound on each wait of the demo (mesh formation, replies, relayed output).
STEP_TIMEOUT = 15.0


class _Interrupted(BaseException):
    """SIGTERM (or Ctrl-C) during the demo: clean up and leave."""


class Narrator:
    """Prints the tour: sections, code as typed at a prompt, results, relayed output."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.t0 = time.monotonic()
        self.section_title = ""

    def _emit(self, kind: str, text: str, **extra: Any) -> None:
        if self.as_json:
            record = {"t": round(time.monotonic() - self.t0, 3), "kind": kind, "text": text}
            record.update(extra)
            print(json.dumps(record), flush=True)
        elif kind == "section":
            print(f"\n{text}", flush=True)
        elif kind == "code":
            print(f"  >>> {text}", flush=True)
        elif kind == "output":
            print(f"  | {extra['node']}: {text}", flush=True)
        else:
            print(f"  {text}", flush=True)

    def title(self, text: str) -> None:
        if self.as_json:
            self._emit("title", text)
        else:
            print(text, flush=True)

    def section(self, text: str) -> None:
        self.section_title = text
        self._emit("section", text)

    def code(self, text: str) -> None:
        self._emit("code", text)

    def say(self, text: str) -> None:
        self._emit("say", text)

    def output(self, node: str, text: str) -> None:
        self._emit("output", text, node=node)


class Child:
    """One ``zcell node`` child process; its output goes to a shared queue."""

    def __init__(self, name: str, argv: list[str], lines: queue.Queue[tuple[str, str]]) -> None:
        self.name = name
        self.banner: dict[str, Any] | None = None
        self.ready = threading.Event()
        self.exited = threading.Event()
        self._lines = lines
        self._early: list[str] = []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        demo = os.getpid()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            preexec_fn=lambda: die_with_parent(demo, signal.SIGTERM),
        )
        self.pid = self.popen.pid
        threading.Thread(target=self._read, name=f"demo-{name}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for raw in self.popen.stdout:
                line = raw.rstrip("\r\n")
                if self.banner is None and line.startswith("{"):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        record = {}
                    if record.get("event") == "ready":
                        self.banner = record
                        self.ready.set()
                        continue
                if self.banner is None:
                    self._early.append(line)
                elif not line.startswith('{"event": "stopped"'):
                    self._lines.put((self.name, line))
        except (OSError, ValueError):
            pass
        finally:
            self.exited.set()

    def startup_output(self) -> str:
        return "\n".join(self._early[-20:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                self.popen.send_signal(sig)  # by pid: only the process we started
            except ProcessLookupError:
                pass


class Demo:
    def __init__(self, args: argparse.Namespace, say: Narrator) -> None:
        self.args = args
        self.say = say
        self.cluster = args.cluster or f"demo-{uuid.uuid4().hex[:8]}"
        self.names = [f"demo-{i}" for i in range(1, args.nodes + 1)]
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.children: list[Child] = []
        self.node: Node | None = None  # start_mesh() makes it

    # -------------------------------------------------------------- plumbing

    def flush(self) -> None:
        """Print what the children printed so far."""
        while True:
            try:
                name, line = self.lines.get_nowait()
            except queue.Empty:
                return
            self.say.output(name, line)

    def expect(self, node: str, text: str, timeout: float = STEP_TIMEOUT) -> None:
        """Relay the children's output until ``node`` prints ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{node} did not print {text!r} within {timeout:g}s")
            try:
                name, line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.say.output(name, line)
            if name == node and text in line:
                return

    def started(self) -> Node:
        """This program's node, once ``start_mesh()`` has made it."""
        if self.node is None:
            raise RuntimeError("the demo's node is not started: call start_mesh() first")
        return self.node

    def short(self, ref: ActorProxy) -> str:
        names = {n["id"]: n["name"] for n in self.started().nodes()}
        return f"<{ref.name.rsplit('.', 1)[-1]} {ref.id[:8]} on {names.get(ref.node_id, '?')}>"

    # -------------------------------------------------------------- the tour

    def start_mesh(self) -> None:
        from zcell import Node

        from ..common import read_secret

        args, say = self.args, self.say
        secret = read_secret(args.secret_file)
        discovery = "static" if args.no_mdns else "mdns"
        node = self.node = Node(
            "demo-main",
            cluster=self.cluster,
            host=args.host,
            peers=args.peer,
            discovery=discovery,
            secret=secret,
        ).start()
        seed = node.endpoints["inbox"]
        how = "static peers" if args.no_mdns else f"mDNS on {args.host}"
        say.title(
            f"zcell demo: {len(self.names)} node processes on this machine and this program "
            f"form one mesh (cluster {self.cluster}, {how})."
        )
        say.section(f"Starting {', '.join(self.names)}: zcell node -A {MODULE}")
        started = time.monotonic()
        for name in self.names:
            argv = [sys.executable, "-m", "zcell", "node", "-A", MODULE]
            argv += ["--name", name, "--cluster", self.cluster, "--host", args.host]
            argv += ["--loglevel", "warning", "--json", "--peer", seed]
            for peer in args.peer:
                argv += ["--peer", peer]
            if args.no_mdns:
                argv.append("--no-mdns")
            if args.secret_file:
                argv += ["--secret-file", args.secret_file]
            self.children.append(Child(name, argv, self.lines))
        deadline = time.monotonic() + STEP_TIMEOUT
        for child in self.children:
            while not child.ready.wait(0.05):
                if not child.alive() or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{child.name} did not start (exit code {child.popen.poll()}):\n"
                        + child.startup_output()
                    )
            banner = child.banner or {}
            inbox = banner.get("endpoints", {}).get("inbox", "?")
            say.say(f"{child.name}  pid {child.pid:<7}  {inbox}  patched: {banner.get('patched')}")
        hosted = (self.children[0].banner or {}).get("actors", [])
        say.say(f"each hosts {', '.join(t.rsplit('.', 1)[-1] for t in hosted)} ({MODULE})")
        want = {"demo-main", *self.names}
        self._wait(lambda: want <= {n["name"] for n in node.nodes()}, "the mesh to form")
        say.say(
            f"this program is a node too (demo-main): it sees {len(want)} members "
            f"{time.monotonic() - started:.1f}s after the start"
        )

    def _wait(self, check: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def tour(self) -> None:
        from zcell import NodeDown, first_reply, forward, stop_forward

        from .actors import Bouncer, Greeter, Logger, Worker

        say, node, names = self.say, self.started(), self.names
        first, second, last = names[0], names[1], names[-1]

        say.section("1. spawn: place actors on nodes (by name here; by default the least-loaded)")
        say.code(f'greeter = node.spawn(Greeter, greeting="Hello", on="{first}")')
        greeter = node.spawn(Greeter, greeting="Hello", on=first)
        say.say(self.short(greeter))
        say.code("workers = [node.spawn(Worker, on=name) for name in names]")
        workers = [node.spawn(Worker, on=name) for name in names]
        say.say(", ".join(self.short(w) for w in workers))
        want = sorted({"demo-main", *names})
        # Every node must see every other before calls go node to node.
        self._wait(
            lambda: all(sorted(w.send.members()) == want for w in workers),
            "every node to see the whole mesh",
        )

        say.section("2. send: call one actor and wait for its reply")
        say.code('greeter.send.greet(who="world")')
        say.say(repr(greeter.send.greet(who="world")))

        say.section("3. call: an AsyncResult at once, the reply later")
        say.code('result = greeter.call.slow_greet(who="async", seconds=0.5)')
        t0 = time.monotonic()
        result = greeter.call.slow_greet(who="async", seconds=0.5)
        say.say(f"result.state -> {result.state!r}")
        say.code("result.get()")
        value = result.get()
        say.say(f"{value!r}  ({time.monotonic() - t0:.2f}s); result.state -> {result.state!r}")

        say.section("4. errors travel back: the handler raised KeyError on " + first)
        say.code('greeter.send.fail(key="missing")   # inside try/except KeyError')
        try:
            greeter.send.fail(key="missing")
        except KeyError as exc:
            say.say(f"caught {type(exc).__name__}: {exc.type_name}: {exc.remote_message}")  # type: ignore[attr-defined]
        say.say(f"the actor keeps running: {greeter.send.greet(who='again')!r}")

        jobs = 2 * len(workers)
        say.section(f"5. throw: {jobs} jobs, each to one Worker, round-robin over the nodes")
        say.code(f"[workers[0].throw.work(job=job) for job in range(1, {jobs + 1})]")
        done = [workers[0].throw.work(job=job) for job in range(1, jobs + 1)]
        say.say(", ".join(f"{d['job']}->{d['node']}" for d in done))
        spread = Counter(d["node"] for d in done)
        say.say("per node: " + ", ".join(f"{n} {spread[n]}" for n in sorted(spread)))

        say.section("6. scatter: ask every Worker, gather the replies as they arrive")
        say.code("list(workers[0].scatter.report())")
        for reply in sorted(workers[0].scatter.report(), key=lambda r: r["node"]):
            say.say(f"{reply['node']}: {reply['jobs']} jobs")
        say.code('first_reply(workers[0].scatter.report(limit=1), key="Worker")')
        say.say(f"{first_reply(workers[0].scatter.report(limit=1), key='Worker')}")

        say.section(f"7. emit and forward: logger1 on {first}, logger2 on {second}")
        say.code(f'logger1 = node.spawn(Logger, label="logger1", on="{first}")')
        logger1 = node.spawn(Logger, label="logger1", on=first)
        say.code(f'logger2 = node.spawn(Logger, label="logger2", on="{second}")')
        logger2 = node.spawn(Logger, label="logger2", on=second)
        say.code("logger1 | forward | logger2")
        logger1 | forward | logger2
        say.code('logger1.emit("log", {"msg": "I will be printed from logger2"})')
        logger1.emit("log", {"msg": "I will be printed from logger2"})
        self.expect(second, "I will be printed from logger2")
        say.code("logger1 | stop_forward | logger2")
        logger1 | stop_forward | logger2
        say.code('logger1.emit("log", {"msg": "I will be printed from logger1"})')
        logger1.emit("log", {"msg": "I will be printed from logger1"})
        self.expect(first, "I will be printed from logger1")

        say.section(f"8. a nested call chain: A on {first} calls B on {second}, which calls A...")
        say.code(f'a, b = node.spawn(Bouncer, on="{first}"), node.spawn(Bouncer, on="{second}")')
        a, b = node.spawn(Bouncer, on=first), node.spawn(Bouncer, on=second)
        say.code("a.send.bounce(other=b, hops=3)")
        path = a.send.bounce(other=b, hops=3)
        say.say(" -> ".join(path) + "   (each handler waits in its own greenlet: no deadlock)")

        say.section(f"9. a node dies: {last} gets SIGKILL while a call to it is in flight")
        victim = next(c for c in self.children if c.name == last)
        say.code("slow = workers[-1].call.sleep(seconds=20, timeout=15)")
        slow = workers[-1].call.sleep(seconds=20, timeout=15)
        time.sleep(0.2)  # for the story: let the call reach its handler
        say.say(f"kill -KILL {victim.pid}   ({last})")
        killed_at = time.monotonic()
        victim.signal(signal.SIGKILL)
        say.code("slow.get()")
        try:
            slow.get()
            raise RuntimeError("the call to the killed node succeeded")
        except NodeDown as exc:
            say.say(f"NodeDown after {time.monotonic() - killed_at:.1f}s: {exc}")
        self._wait(lambda: last not in {n["name"] for n in node.nodes()}, f"{last} to leave")
        members = sorted(n["name"] for n in node.nodes())
        say.say(f"node.nodes() -> {', '.join(members)}")
        left = len(node.actors(Worker))
        say.say(f"its actors left the directory: node.actors(Worker) has {left} left")
        if len(workers) > 1:
            say.code(f"[workers[0].throw.work(job=job) for job in range(1, {left * 2 + 1})]")
            done = [workers[0].throw.work(job=job) for job in range(1, left * 2 + 1)]
            say.say(", ".join(f"{d['job']}->{d['node']}" for d in done))
        self.flush()

    def stop(self) -> None:
        """Stop every child we started (SIGTERM, then SIGKILL) and our own node."""
        started = time.monotonic()
        running = [c for c in self.children if c.alive()]
        for child in running:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for child in running:
            try:
                child.popen.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.signal(signal.SIGKILL)
        for child in self.children:
            try:
                child.popen.wait(2.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed above
                pass
            child.exited.wait(1.0)
            if child.popen.stdout is not None:
                child.popen.stdout.close()
        if self.node is not None:
            self.node.stop(timeout=1.0)
        if running:
            names = ", ".join(c.name for c in running)
            self.say.section(f"Stopped {names} (SIGTERM: graceful) and this program's node")
            self.say.say(f"in {time.monotonic() - started:.1f}s")


def run_demo(args: argparse.Namespace) -> int:
    """Run the tour; returns the exit code (0, or 1 when a step failed, 130 on Ctrl-C)."""
    if not 2 <= args.nodes <= 9:
        print("zcell demo: --nodes must be between 2 and 9", file=sys.stderr)
        return 2
    from ..common import read_secret

    read_secret(args.secret_file)  # a bad --secret-file is a usage error (exit 2)
    say = Narrator(args.json)
    demo = Demo(args, say)
    previous = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_term(signum: int, frame: Any) -> None:
        raise _Interrupted()

    if in_main:
        previous = signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        demo.start_mesh()
        demo.tour()
    except (KeyboardInterrupt, _Interrupted):
        say.section("Interrupted: stopping the nodes")
        code = 130
    except Exception as exc:
        demo.flush()
        say.section(f"The demo failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        try:
            demo.stop()
        except (KeyboardInterrupt, _Interrupted):
            for child in demo.children:  # a second Ctrl-C: no more patience
                child.signal(signal.SIGKILL)
            code = 130
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if code == 0:
        say.section(f"Done in {time.monotonic() - say.t0:.1f}s. Next: the README's walkthrough.")
    return code
