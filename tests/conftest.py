"""Shared fixtures: real nodes on loopback, always stopped with a deadline."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from zcell import Node  # noqa: E402

#: One factor scales every timing in the suite (slow CI machines: ZCELL_TEST_SLOW=2).
SLOW = float(os.environ.get("ZCELL_TEST_SLOW", "1"))


def child_env() -> dict[str, str]:
    """Environment for child processes: the tests' actor modules importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


MakeNode = Callable[..., Node]


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On CI (CI=true) a skipped network-namespace test is a failure: CI runs as root
    and installs iproute2 and nftables, so these tests must run there."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") == "true" and item.get_closest_marker("netns"):
        report.outcome = "failed"
        report.longrepr = f"network-namespace test skipped on CI: {report.longrepr}"
