"""Shared fixtures: real nodes on loopback, always stopped with a deadline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# An environment that sets PYTHONDONTWRITEBYTECODE (this VM's does) makes every
# process the suite starts, hundreds of nodes and workers, compile zcell from its
# source again: a third of a second of CPU each. Let them cache it, as Python does
# by default (``__pycache__`` is ignored by git).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from zcell_test_actors import Echo  # noqa: E402

from zcell import Node  # noqa: E402
from zcell.cli import main as cli_main  # noqa: E402

#: One factor scales every timing in the suite (slow CI machines: ZCELL_TEST_SLOW=2).
SLOW = float(os.environ.get("ZCELL_TEST_SLOW", "1"))


@pytest.fixture(autouse=True)
def _leave_the_test_thread_without_a_gevent_hub() -> Iterator[None]:
    """A test that uses gevent in the test's own thread (a RateLimiter, TimeLimits,
    a gevent.sleep) leaves a hub there; a plain program thread with a hub sends
    through its node's loop instead of its own port (zcell._mesh.messaging), so
    every later test in this process would test the other path. Destroy the hub
    the test made, so each test starts in a plain thread as a program would."""
    import gevent.hub

    had_hub = gevent.hub._get_hub() is not None
    yield
    hub = gevent.hub._get_hub()
    if hub is not None and not had_hub:
        hub.destroy(destroy_loop=True)


def child_env() -> dict[str, str]:
    """Environment for child processes: the tests' actor modules importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


MakeNode = Callable[..., Node]


def unique_cluster(prefix: str = "t") -> str:
    """A cluster name of its own, so that a test never meets other nodes on this machine."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def with_cluster(code: str, cluster: str) -> str:
    """``code`` with every ``Node(`` put in ``cluster``."""
    assert "cluster=" not in code, "README blocks that are run must not choose a cluster"
    return re.sub(r"\bNode\(", f'Node(cluster="{cluster}", ', code)


def run_block(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run a documented code block as a script in a child process, in a cluster of its
    own (see :func:`with_cluster`); returns the finished process, output captured."""
    script = tmp_path / "block.py"
    script.write_text(with_cluster(code, unique_cluster()))
    return run_script(script)


def run_script(script: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child process from the repository's root (bounded in
    time); returns the finished process, output captured."""
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * SLOW,
        env=child_env(),
    )


def run_bench_json(module: str, *args: str, timeout: float) -> Any:
    """``python -m <module> *args`` from the repository root (a benchmark of
    ``bench/``): it must exit 0; its standard output, parsed as JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``zcell ARGV`` in this process; returns (exit code, stdout, stderr)."""
    code = cli_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; fail after ``timeout`` (scaled by SLOW) seconds.

    Returns the seconds it took.
    """
    start = time.monotonic()
    deadline = start + timeout * SLOW
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * SLOW}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


class Unwalkable(dict):  # type: ignore[type-arg]
    """A table that counts every walk over it (lookups stay free): swapped in for
    one whose walks per operation must not grow with its size."""

    walks = 0

    def _walk(self) -> None:
        type(self).walks += 1

    def items(self):  # type: ignore[no-untyped-def]
        self._walk()
        return super().items()

    def values(self):  # type: ignore[no-untyped-def]
        self._walk()
        return super().values()

    def keys(self):  # type: ignore[no-untyped-def]
        self._walk()
        return super().keys()

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._walk()
        return super().__iter__()


def count_walks(node: Node, owner: object, attr: str) -> None:
    """Swap the table ``owner.<attr>`` for an ``Unwalkable`` copy, in ``node``'s
    loop (which changes the table), and start counting its walks from 0."""

    def swap() -> None:
        setattr(owner, attr, Unwalkable(getattr(owner, attr)))

    node.call_in_loop(swap)
    assert isinstance(getattr(owner, attr), Unwalkable)
    Unwalkable.walks = 0


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process (``T``: stopped by a signal)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def make_node() -> Iterator[MakeNode]:
    """Start nodes (static discovery on 127.0.0.1 unless told otherwise); stop them all."""
    nodes: list[Node] = []

    def make(name: str | None = None, **kwargs: object) -> Node:
        kwargs.setdefault("discovery", "static")
        node = Node(name, **kwargs).start()  # type: ignore[arg-type]
        nodes.append(node)
        return node

    yield make
    for node in reversed(nodes):
        node.stop(timeout=0.5)
    leaked = [node.name for node in nodes if not node._loop.join(5 * SLOW)]
    assert not leaked, f"node loop threads still running after stop: {leaked}"


@pytest.fixture
def mesh(make_node: MakeNode) -> Callable[..., list[Node]]:
    """``mesh(3, actors=[...])``: n nodes joined through the first one, fully connected."""

    def build(n: int, **kwargs: object) -> list[Node]:
        first = make_node("n0", **kwargs)
        nodes = [first]
        for i in range(1, n):
            nodes.append(make_node(f"n{i}", peers=[first.endpoints["inbox"]], **kwargs))
        for node in nodes:
            node.wait_for(nodes=n, timeout=10 * SLOW)
        return nodes

    return build


@pytest.fixture
def procs() -> Iterator[Callable[..., object]]:
    """Start local child processes (own process group, output read by a thread);
    every one is killed at teardown."""
    from netns import Proc

    started: list[Proc] = []

    def start(argv: list[str], stdin: int | None = None) -> Proc:
        proc = Proc(argv, None, env=child_env(), stdin=stdin)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def start_zcell_node(procs: Callable[..., Any], name: str, *extra: str) -> tuple[Any, str]:
    """``zcell node -A zcell_test_actors --no-mdns --name NAME *extra`` as a child
    process (from the ``procs`` fixture); returns (proc, inbox endpoint) once ready."""
    proc = procs(["zcell", "node", "-A", "zcell_test_actors", "--no-mdns", "--name", name, *extra])
    inbox = proc.wait_for_line(r"inbox:\s+(\S+)", 15 * SLOW).group(1)
    proc.wait_for_line("^ready$", 15 * SLOW)
    return proc, inbox


def join_target_node(
    make_node: MakeNode, procs: Callable[..., Any], cluster: str
) -> tuple[Any, str, Node]:
    """A child ``zcell node`` named ``target`` in ``cluster`` and an in-process node
    ``me`` meshed with it; returns (child proc, target's inbox, me). For tests that
    attack or strain a node in another process while a genuine node talks to it."""
    child, inbox = start_zcell_node(procs, "target", "--cluster", cluster)
    me = make_node("me", cluster=cluster, peers=[inbox])
    me.wait_for(nodes=2, timeout=10 * SLOW)
    return child, inbox, me


class EchoTarget(NamedTuple):
    """What :func:`echo_target` gives a test."""

    child: Any  # the target's process (netns.Proc)
    inbox: str  # the target's inbox endpoint
    me: Node  # the genuine in-process node meshed with it
    ref: Any  # an Echo on the target, spawned from me
    cluster: str


@pytest.fixture
def echo_target(make_node: MakeNode, procs: Callable[..., Any]) -> EchoTarget:
    """:func:`join_target_node` in a cluster of its own, plus an Echo on the target:
    the set-up of tests that strain a node in another process and then check it
    still serves."""
    cluster = unique_cluster()
    child, inbox, me = join_target_node(make_node, procs, cluster)
    return EchoTarget(child, inbox, me, me.spawn(Echo, on="target"), cluster)


#: The modules with the longest tests (``--durations``), run first: with ``-n 2``
#: the workers then end together, not one idle while the other runs a long test
#: it was handed last. Each module's tests keep their order (and one worker).
LONGEST_FIRST = (
    "test_bench.py",
    "test_flood.py",
    "test_canvas_process.py",
    "test_tasks_workers.py",
    "test_beat.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest as collected


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On CI (CI=true) a skipped network-namespace test is a failure: CI runs as root
    and installs iproute2 and nftables, so these tests must run there."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("netns"):
        report.outcome = "failed"
        report.longrepr = f"network-namespace test skipped on CI: {report.longrepr}"


def start_zcell_worker(
    procs: Callable[..., Any],
    name: str,
    cluster: str,
    *extra: str,
    peer: str | None = None,
    app: str = "zcell_test_tasks",
) -> tuple[Any, str]:
    """``zcell worker -A APP --no-mdns --name NAME --cluster CLUSTER *extra``
    as a child process (from the ``procs`` fixture), joined to ``peer`` if given;
    returns (proc, inbox endpoint) once ready."""
    argv = ["zcell", "worker", "-A", app, "--no-mdns", "--name", name]
    argv += ["--cluster", cluster, *extra]
    if peer is not None:
        argv += ["--peer", peer]
    proc = procs(argv)
    inbox = proc.wait_for_line(r"inbox:\s+(\S+)", 15 * SLOW).group(1)
    proc.wait_for_line("^ready$", 15 * SLOW)
    return proc, inbox


def in_host(host: Any) -> Callable[[list[str]], Any]:
    """A ``procs``-like starter for a host of a network-namespace mesh
    (tests/netns.py): ``zcell ...`` runs there as ``python -m zcell ...`` with the
    tests' environment, and the mesh kills it at teardown."""

    def start(argv: list[str]) -> Any:
        return host.popen([sys.executable, "-m", *argv], env=child_env())

    return start


def start_beat_worker(
    procs: Callable[..., Any], name: str, cluster: str, peer: str | None = None
) -> tuple[Any, str]:
    """``zcell worker -B -A zcell_test_beat`` (0.3 s heartbeats) as a child process:
    a beat candidate that also works; its schedule comes from the environment
    (``ZCELL_TEST_BEAT_*``, see zcell_test_beat.py). Returns (proc, inbox)."""
    extra = ("-B", "-c", "4", "--heartbeat", "0.3")
    return start_zcell_worker(procs, name, cluster, *extra, peer=peer, app="zcell_test_beat")


@pytest.fixture
def task_app() -> Iterator[Callable[..., Any]]:
    """``task_app(peers=[inbox], cluster=c)``: the tests' task app (zcell_test_tasks.app)
    pointed at a mesh; closed (its node stopped) at teardown."""
    from zcell_test_tasks import app

    def point(**mesh: Any) -> Any:
        app.close(timeout=0.0)
        app.conf.update(discovery="static", **mesh)
        return app

    yield point
    app.close(timeout=0.0)


if TYPE_CHECKING:
    from zcell.tasks import Worker

#: ``workers(n, queues=None, **options)``: see the ``workers`` fixture.
Workers = Callable[..., "list[Worker]"]


@pytest.fixture
def workers(make_node: MakeNode, task_app: Any) -> Iterator[Workers]:
    """``workers(2, concurrency=1)``: in-process worker nodes in a cluster of their own,
    with the test app pointed at the first (``.cluster``: that cluster, for late joiners)."""
    import zcell_test_tasks as t

    from zcell.tasks import Worker

    cluster = unique_cluster()
    made: list[Worker] = []
    first: list[str] = []

    def start(n: int, queues: list[str] | None = None, **options: Any) -> list[Worker]:
        out = []
        for _ in range(n):
            peers = first[:1]
            node = make_node(f"w{len(made) + 1}", cluster=cluster, peers=peers)
            if not first:
                first.append(node.endpoints["inbox"])
                task_app(cluster=cluster, peers=first)
            worker = Worker(t.app, node, queues, **options).start()
            made.append(worker)
            out.append(worker)
        return out

    start.cluster = cluster  # type: ignore[attr-defined]
    yield start
    t.app.close(timeout=0)
    for worker in made:
        worker.stop(timeout=0.5)


# The dashboard's fixtures (`dashboard`: workers and a `zcell dashboard` process;
# `browser`: headless chromium), kept in their own module.
from dash_support import browser, dashboard  # noqa: E402, F401
