"""Lifecycle reliability (issue 12, items 5, 6, 9, 11, 13, 14, 15): stopping from a
handler, draining with nested calls, a stuck loop, interpreter exit, timeouts that
are applied, fork, and stopped nodes being freed."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any

import gevent
import pytest
from conftest import SLOW, child_env, wait_until
from zcell_test_actors import Echo

from zcell import Actor, CallTimeout, Node, NodeStopped


class Life(Actor):
    """Handlers that act on their own node's lifecycle."""

    class state(Actor.state):
        def stop_node(self):
            self.node.stop(timeout=1.0)
            return "stopping"

        def later(self, other, delay: float):
            """Wait (as a handler being drained does), then make a nested call."""
            gevent.sleep(delay)
            return other.send.echo(value="nested")

        def on_stop(self) -> None:
            if getattr(self, "slow_stop", False):
                gevent.sleep(2)

        def make_slow_stop(self):
            self.slow_stop = True


def names(node: Node) -> set[str]:
    return {n["name"] for n in node.nodes()}


def run_script(script: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout * SLOW,
    )


# ---------------------------------------------------------------- 5: stop from a handler


def test_stop_called_from_a_handler_of_the_node_stops_it_for_real(make_node):
    b = make_node("b", actors=[Life])
    a = make_node("a", peers=[b.endpoints["inbox"]])
    a.wait_for(nodes=2, timeout=5 * SLOW)
    ref = a.spawn(Life, on="b")
    assert ref.call.stop_node().get(timeout=5 * SLOW) == "stopping"
    # Peers see it leave (a graceful LEFT, well before the ~2.7 s of a silent node).
    wait_until(lambda: "b" not in names(a), 2.0, "the peers to see b leave")
    assert b._loop.join(5 * SLOW), "the loop thread of b is still running"
    assert b._sockets.hb is not None and b._sockets.hb._pub.closed, (
        "the heartbeat thread of b still runs"
    )
    assert b._sockets.inbox.closed
    with pytest.raises(NodeStopped):
        b.nodes()


# ---------------------------------------------------------------- 6: draining allows nesting


def test_a_graceful_stop_lets_the_handlers_it_drains_make_nested_calls(make_node):
    b = make_node("b", actors=[Life, Echo])
    a = make_node("a", peers=[b.endpoints["inbox"]], actors=[Echo])
    a.wait_for(nodes=2, timeout=5 * SLOW)
    draining = a.spawn(Life, on="b")
    echo = a.spawn(Echo, on="a")
    local = b.spawn(Echo, on="b")
    pending = draining.call.later(other=echo, delay=0.5)
    wait_until(lambda: b.statistics()["in_flight"] == 1, 2, "the handler to start")
    stopper = threading.Thread(target=b.stop, kwargs={"timeout": 3.0})
    stopper.start()
    try:
        wait_until(lambda: b._state == "stopping", 2, "b to start stopping")
        # New work from b's own program is refused while it drains.
        with pytest.raises(NodeStopped):
            local.send.echo(value=1)
        assert pending.get(timeout=5 * SLOW) == "nested"
    finally:
        stopper.join(10 * SLOW)


# ---------------------------------------------------------------- 9: loop watchdog


def watched_echo(make_node: Any, name: str) -> tuple[Node, Any]:
    """Node ``name`` hosting Echo and a node ``watcher`` meshed with it, both with
    0.2 s heartbeats so that the watchdog acts within the test; returns (watcher,
    an Echo on ``name`` spawned from the watcher)."""
    b = make_node(name, heartbeat=0.2, actors=[Echo])
    a = make_node("watcher", heartbeat=0.2, peers=[b.endpoints["inbox"]])
    a.wait_for(nodes=2, timeout=5 * SLOW)
    return a, a.spawn(Echo, on=name)


def test_a_node_whose_loop_is_stuck_stops_being_routed_to_and_comes_back(make_node, caplog):
    caplog.set_level(logging.WARNING, logger="zcell")
    a, ref = watched_echo(make_node, "stuck")
    # time.sleep is not patched here: it blocks b's loop like a held threading.Lock.
    ref.send.block(seconds=4 * SLOW, nowait=True)
    wait_until(lambda: "stuck" not in names(a), 3, "the watcher to drop the stuck node")
    assert any("unhealthy" in r.getMessage() for r in caplog.records)
    # Once its loop is free again it rejoins, same node and same actors.
    wait_until(lambda: "stuck" in names(a), 4 * SLOW + 5, "the stuck node to come back")
    wait_until(lambda: a.actors(Echo), 3, "its actor to come back")
    assert ref.call.echo(value=7).get(timeout=5 * SLOW) == 7


def test_a_cpu_hogging_handler_is_busy_not_stuck(make_node, caplog):
    caplog.set_level(logging.WARNING, logger="zcell")
    a, ref = watched_echo(make_node, "hog")
    hog = ref.call.hog(seconds=2.0, timeout=10)  # ten heartbeats of pure CPU in b's loop
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        assert "hog" in names(a), "a busy node was dropped"
        time.sleep(0.05)
    assert hog.get(timeout=5 * SLOW) > 0
    assert not [r for r in caplog.records if "unhealthy" in r.getMessage()]


# ---------------------------------------------------------------- 11: interpreter exit

LEAVER = """
    import sys
    from zcell import Node
    node = Node("leaver", discovery="static", peers=[sys.argv[1]]).start()
    node.wait_for(nodes=2, timeout=10)
    print("joined", flush=True)
    # no stop(): the script just ends
"""


def test_a_program_that_exits_without_stop_leaves_gracefully(make_node, caplog):
    caplog.set_level(logging.INFO, logger="zcell")
    a = make_node("a")
    done = run_script(LEAVER, a.endpoints["inbox"])
    assert done.returncode == 0, done.stderr
    assert "joined" in done.stdout
    wait_until(lambda: "leaver" not in names(a), 5, "the leaver to be dropped")
    reasons = [r.getMessage() for r in caplog.records if "leaver is down" in r.getMessage()]
    assert reasons == ["zcell: leaver is down (left)"], reasons


STUCK_EXIT = """
    import sys, time
    from zcell import Node
    from zcell_test_actors import Echo
    node = Node("stuck", discovery="static", actors=[Echo]).start()
    ref = node.spawn(Echo)
    ref.send.block(seconds=30, nowait=True)  # the loop is blocked when the program ends
    time.sleep(0.3)
    print("exiting", flush=True)
"""


def test_the_exit_does_not_hang_on_a_node_whose_loop_is_blocked():
    start = time.monotonic()
    done = run_script(STUCK_EXIT)
    assert "exiting" in done.stdout, done.stderr
    assert time.monotonic() - start < 15 * SLOW


# ---------------------------------------------------------------- 13: timeouts applied


def test_a_nowait_spawn_unanswered_within_its_own_timeout_is_logged_as_maybe_started(
    make_node, caplog
):
    # No answer is not a failure: b may start it once free (and does here).
    caplog.set_level(logging.WARNING, logger="zcell")
    b = make_node("b", actors=[Echo])
    a = make_node("a", peers=[b.endpoints["inbox"]])
    a.wait_for(nodes=2, timeout=5 * SLOW)
    ref = a.spawn(Echo, on="b")
    ref.send.block(seconds=2 * SLOW, nowait=True)  # b cannot answer the spawn for 2 s
    time.sleep(0.1)
    late = a.spawn(Echo, on="b", nowait=True, timeout=0.3)

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "nowait spawn of" in r.getMessage()]

    wait_until(lambda: logged(), 1.8, "the nowait spawn's timeout to be logged")
    (record,) = logged()
    assert record.levelno == logging.WARNING
    assert "no answer in time; it may have started" in record.getMessage()
    assert "node b" in record.getMessage()
    assert late.send.count(timeout=5 * SLOW) == 0  # it did start, once b was free


def test_a_nowait_spawn_refused_by_its_node_is_logged_as_failed(make_node, caplog):
    caplog.set_level(logging.ERROR, logger="zcell")
    b = make_node("b", actors=[Echo])
    a = make_node("a", peers=[b.endpoints["inbox"]])
    a.wait_for(nodes=2, timeout=5 * SLOW)
    a.spawn(Echo, on="b", nowait=True, kwargs={"unexpected": 1})
    wait_until(
        lambda: any(
            "nowait spawn of" in r.getMessage() and "failed" in r.getMessage()
            for r in caplog.records
        ),
        5 * SLOW,
        "the refused nowait spawn to be logged as failed",
    )


def test_kill_with_timeout_zero_does_not_wait_five_seconds(make_node):
    b = make_node("b", actors=[Life])
    ref = b.spawn(Life)
    ref.call.make_slow_stop().get(timeout=5 * SLOW)  # its on_stop takes 2 s
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        b.kill(ref, timeout=0)
    assert time.monotonic() - start < 1.5


def busy_node(make_node: Any, seconds: float, echoes: int = 1) -> tuple[Node, list[Any]]:
    """Node ``b`` with ``echoes`` Echo actors, its loop blocked for ``seconds`` (times
    SLOW) by the first one: nothing sent to b is answered until then. Returns (b, the
    Echo refs)."""
    b = make_node("b", actors=[Echo])
    refs = [b.spawn(Echo) for _ in range(echoes)]
    refs[0].send.block(seconds=seconds * SLOW, nowait=True)
    time.sleep(0.1)
    return b, refs


def test_add_and_remove_binding_take_a_timeout(make_node):
    _, (source, target) = busy_node(make_node, 2, echoes=2)  # b's loop cannot answer
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        source.add_binding(target, timeout=0.3)
    with pytest.raises(CallTimeout):
        source.remove_binding(target, timeout=0.3)
    assert time.monotonic() - start < 1.8


def test_a_scatter_from_a_program_thread_fails_within_its_timeout(make_node):
    _, (ref,) = busy_node(make_node, 3)
    start = time.monotonic()
    with pytest.raises(CallTimeout):
        ref.scatter.echo(value=1, timeout=0.3)
    assert time.monotonic() - start < 2.5


def test_stop_is_bounded_even_when_the_loop_is_blocked(make_node):
    b, _ = busy_node(make_node, 5)
    start = time.monotonic()
    b.stop(timeout=0.2)
    assert time.monotonic() - start < 4 * SLOW
    assert b._loop.join(10 * SLOW), "the node closed once its loop was free"


# ---------------------------------------------------------------- 14: fork guard

FORK = """
    import os, sys, time
    from zcell import Node, NodeStopped
    from zcell_test_actors import Echo
    node = Node("forker", discovery="static", actors=[Echo]).start()
    ref = node.spawn(Echo)
    pid = os.fork()
    if pid == 0:
        try:
            ref.send.echo(value=1, timeout=2)
            print("child: no error", flush=True)
        except Exception as exc:
            print("child:", type(exc).__name__, exc, flush=True)
        try:
            node.stop()
            print("child: stop ok", flush=True)
        except BaseException as exc:
            print("child: stop failed", exc, flush=True)
        os._exit(0)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        print("parent: child hung", flush=True)
    print("parent:", ref.send.echo(value=2), flush=True)
    node.stop()
"""


def test_a_forked_child_gets_a_clear_error_from_the_parents_node():
    done = run_script(FORK)
    out = done.stdout
    assert "parent: child hung" not in out, out + done.stderr
    assert "create a new Node in the child" in out, out + done.stderr
    assert "child: stop ok" in out
    assert "parent: 2" in out, out + done.stderr


# ---------------------------------------------------------------- 15: stopped nodes are freed


def test_a_stopped_node_is_freed(make_node):
    peer = make_node("peer", actors=[Echo])
    node = Node("temp", discovery="static", peers=[peer.endpoints["inbox"]], actors=[Echo])
    node.start()
    node.wait_for(nodes=2, timeout=5 * SLOW)
    ref = node.spawn(Echo, on="peer")
    assert ref.send.echo(value=1) == 1
    local = node.spawn(Echo, on="temp")
    assert local.send.echo(value=2) == 2
    node.stop()
    assert node._loop.join(5 * SLOW)
    gone = weakref.ref(node)
    hub = weakref.ref(node._loop.hub)
    del node, ref, local
    for _ in range(3):
        gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
    assert hub() is None


def test_a_stopped_node_that_ran_tasks_is_freed(make_node: Any, task_app: Any) -> None:
    """Its task runtime (dispatcher, agent, worker, control operations) goes with it."""
    import zcell_test_tasks as t

    from zcell.tasks import Worker

    def run_and_stop() -> tuple[weakref.ref[Node], weakref.ref[Worker]]:
        cluster = f"freed-{time.monotonic_ns()}"
        node = Node("worker", discovery="static", cluster=cluster).start()
        worker = Worker(t.app, node).start()
        task_app(cluster=cluster, peers=[node.endpoints["inbox"]])
        assert t.add.delay(1, 2).get(timeout=10 * SLOW) == 3
        t.app.close(timeout=1.0)
        worker.stop(timeout=1.0)
        node.stop()
        assert node._loop.join(5 * SLOW)
        return weakref.ref(node), weakref.ref(worker)

    gone, worker_gone = run_and_stop()
    for _ in range(3):
        gc.collect()
    assert worker_gone() is None
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]


@pytest.mark.parametrize("beat_stopped", [True, False], ids=["beat-stopped", "node-stopped"])
def test_a_stopped_node_that_ran_beat_is_freed(beat_stopped: bool) -> None:
    """A beat candidate goes with its node, whether the beat was stopped first or
    the node was stopped under it."""
    import zcell_test_tasks as t

    from zcell.tasks.beat import Beat

    def run_and_stop() -> weakref.ref[Node]:
        node = Node("beat", discovery="static", cluster=f"beat-{time.monotonic_ns()}").start()
        beat = Beat(t.app, node).start()
        wait_until(lambda: beat.status()["leading"], 10, "the lone candidate to lead")
        if beat_stopped:
            beat.stop()
        node.stop()
        assert node._loop.join(5 * SLOW)
        return weakref.ref(node)

    gone = run_and_stop()
    for _ in range(3):
        gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
