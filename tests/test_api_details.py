"""Smaller promises of API.md, each held to a real node."""

from __future__ import annotations

import logging
import signal
import sys
import time

import pytest
from conftest import SLOW, start_zcell_node
from zcell_test_actors import Echo, Ready

from zcell import Actor, CallTimeout


def test_state_sees_agent_as_an_alias_of_node_and_on_agent_ready_runs(make_node):
    node = make_node(actors=[Ready])
    ref = node.spawn(Ready)
    end = time.monotonic() + 5 * SLOW
    while not ref.send.facts()["ready"] and time.monotonic() < end:
        time.sleep(0.01)
    assert ref.send.facts() == {"ready": True, "agent_is_node": True, "node": node.name}


def test_the_default_timeout_is_five_seconds_and_a_class_may_change_it(make_node):
    assert Actor.default_timeout == 5.0
    node = make_node(actors=[Ready])
    ref = node.spawn(Ready)  # Ready.default_timeout = 1.5
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        ref.send.slow(seconds=3)
    assert 1.3 < time.monotonic() - started < 2.5


def test_async_result_has_the_request_id(make_node):
    node = make_node(actors=[Echo])
    ref = node.spawn(Echo)
    first, second = ref.call.echo(value=1), ref.call.echo(value=2)
    assert isinstance(first.id, int) and first.id != second.id
    assert (first.get(), second.get()) == (1, 2)


def test_a_scatter_stops_waiting_for_actors_on_a_node_that_goes_down(make_node, procs):
    node = make_node("parent", heartbeat=0.3)
    child, _ = start_zcell_node(
        procs, "doomed", "--heartbeat", "0.3", "--peer", node.endpoints["inbox"]
    )
    node.wait_for(nodes=2, timeout=10 * SLOW)
    ref = node.spawn(Echo, on="doomed")
    replies = ref.scatter.sleep(seconds=30, timeout=20)  # sent now; no answer for 30 s
    time.sleep(0.2)
    started = time.monotonic()
    child.kill(signal.SIGKILL)
    assert list(replies) == []
    # It ended because the dead node's actor is no longer waited for, not at 20 s.
    assert time.monotonic() - started < 5 * SLOW


def test_a_handler_that_blocks_the_loop_is_logged(make_node, caplog):
    node = make_node(actors=[Echo], heartbeat=0.3)
    ref = node.spawn(Echo)
    with caplog.at_level(logging.WARNING, logger="zcell"):
        ref.send.block(seconds=1.5)  # time.sleep, unpatched: the loop is blocked
        end = time.monotonic() + 3
        while time.monotonic() < end and not any(
            "was blocked" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
    assert any("was blocked" in r.getMessage() for r in caplog.records)


def test_a_plain_script_may_import_zcell_without_monkey_patching(tmp_path):
    import subprocess

    code = (
        "import zcell, socket, time, threading\n"
        "from gevent import monkey\n"
        "assert not monkey.is_module_patched('socket')\n"
        "assert not monkey.is_module_patched('time')\n"
        "print('unpatched')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "unpatched" in out.stdout


def test_calls_from_greenlets_of_another_hub_work_and_keep_their_order(mesh):
    """A thread running its own gevent hub (here: this test's main thread) hands
    frames to the node's loop through per-destination queues."""
    import gevent

    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")

    def client(k: int) -> list:
        for i in range(50):
            ref.send.echo(value=i, nowait=True)
        pending = ref.call.echo(value=k)
        return [ref.send.echo(value=k), pending.get(), ref.send.count()]

    out: list = []

    def in_own_hub() -> None:
        # A thread of its own, so no hub is left behind in pytest's main thread.
        try:
            greenlets = [gevent.spawn(client, k) for k in range(4)]
            gevent.joinall(greenlets, timeout=30 * SLOW, raise_error=True)
            out.extend(g.value for g in greenlets)
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    import threading

    thread = threading.Thread(target=in_own_hub)
    thread.start()
    thread.join(40 * SLOW)
    results = out
    assert len(results) == 4
    assert [r[:2] for r in results] == [[k, k] for k in range(4)]
    # Each greenlet's 50 fire-and-forget echoes (and its call) ran before its
    # count(): the queue to a destination keeps the order.
    assert all(r[2] >= 51 for r in results)
    assert ref.send.count() == 4 * 51 + 4
