"""A program thread's calls: replies come back on the thread's own port.

The thread completes its results as it reads the replies (zcell/_mesh/threadport.py);
these tests pin down that nothing is lost when it does not come back to read:
link callbacks, waits from other threads, ``ready()`` polling, many calls never
read, a node that goes away or stops meanwhile.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import SLOW, wait_until
from zcell_test_actors import Echo, Logger

from zcell import NodeDown, NodeStopped
from zcell._mesh.threadport import ThreadPort


@pytest.fixture
def pair(mesh):
    a, b = mesh(2, actors=[Echo])
    return a, b, a.spawn(Echo, on="n1")


def test_a_link_callback_runs_while_the_calling_thread_sleeps(pair):
    a, b, ref = pair
    seen: list[tuple[object, int]] = []
    result = ref.call.sleep(seconds=0.05)
    result.link(lambda r: seen.append((r.get(), threading.get_ident())))
    end = time.monotonic() + 5 * SLOW
    while not seen and time.monotonic() < end:
        time.sleep(0.01)  # never touches the result or the node
    assert seen and seen[0][0] == 0.05
    assert seen[0][1] != threading.get_ident()  # callbacks run in the node's loop


def test_another_thread_can_wait_on_a_call_made_here(pair):
    a, b, ref = pair
    result = ref.call.sleep(seconds=0.05)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(result.get(timeout=5 * SLOW)))
    waiter.start()
    waiter.join(10 * SLOW)  # this thread only waits: it reads nothing
    assert not waiter.is_alive()
    assert got == [0.05]


def test_ready_and_state_read_the_reply_in(pair):
    a, b, ref = pair
    result = ref.call.echo(value=3)
    wait_until(result.ready, 5, "the result is ready")
    assert result.state == "SUCCESS" and result.successful() and result.get() == 3


def test_thousands_of_calls_never_read_all_complete(pair):
    a, b, ref = pair
    # Replies pile up at the port until the thread reads them in.
    results = [ref.call.echo(value=i, timeout=60) for i in range(6000)]
    assert [r.get() for r in results] == list(range(6000))
    stats = a.statistics()
    assert stats["late_replies"] == 0 and stats["pending_calls"] == 0


def test_a_call_a_thread_waits_on_fails_when_its_node_stops(pair):
    a, b, ref = pair
    outcome: list[object] = []

    def caller() -> None:
        result = ref.call.sleep(seconds=30, timeout=60)
        try:
            result.get()
        except NodeStopped as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    time.sleep(0.2)
    a.stop()
    thread.join(10 * SLOW)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], NodeStopped)


def test_a_burst_of_replies_arrives_whole(pair):
    """The peer coalesces the replies of one loop iteration into one message."""
    a, b, ref = pair
    window = [ref.call.echo(value=i) for i in range(300)]
    time.sleep(0.2 * SLOW)  # all replied meanwhile, in few messages
    assert all(r.ready() for r in window)
    assert [r.get() for r in window] == list(range(300))
    assert b.statistics()["messages_out"] >= 300


def history_from_another_thread(ref) -> list[str]:
    """Read a Logger's lines from another thread (its own port, not ours)."""
    got: list[list[list[str]]] = []
    reader = threading.Thread(target=lambda: got.append(ref.send.history()))
    reader.start()
    reader.join(10 * SLOW)
    assert got, "the history did not come"
    return [line for line, _ in got[0]]


def test_a_burst_of_fire_and_forget_messages_arrives_whole_though_the_thread_sleeps(mesh):
    """Frames sent in quick succession are coalesced; the node's loop sends the
    last of them when the thread does not come back to its port."""
    a, b = mesh(2, actors=[Logger])
    ref = a.spawn(Logger, on="n1")
    for i in range(1000):
        ref.send.log(msg=str(i), nowait=True)
    time.sleep(0.3 * SLOW)  # never touches the node: its loop must send the tail
    assert history_from_another_thread(ref) == [str(i) for i in range(1000)]


def test_fire_and_forget_then_a_blocking_send_keep_their_order(mesh):
    a, b = mesh(2, actors=[Logger])
    ref = a.spawn(Logger, on="n1")
    for i in range(300):
        ref.send.log(msg=str(i), nowait=True)
    assert [line for line, _ in ref.send.history()] == [str(i) for i in range(300)]


def test_calls_in_a_burst_complete_though_the_thread_sleeps(pair):
    a, b, ref = pair
    results = [ref.call.echo(value=i) for i in range(50)]
    seen: list[int] = []
    for r in results:
        r.link(lambda r: seen.append(r.get()))
    end = time.monotonic() + 5 * SLOW
    while len(seen) < 50 and time.monotonic() < end:
        time.sleep(0.01)  # never touches the node
    assert sorted(seen) == list(range(50))


def test_a_reply_whose_connection_is_gone_is_counted_not_lost_silently(pair):
    a, b, ref = pair
    assert b.statistics()["undeliverable_replies"] == 0
    ref.call.sleep(seconds=0.5 * SLOW)  # never read: the caller goes away first
    # The handler must be running on b before the caller leaves (not a sleep: under
    # load the request may take longer than any fixed pause to arrive).
    wait_until(lambda: b.statistics()["in_flight"] == 1, 5 * SLOW, "b runs the handler")
    a.stop()  # closes this thread's port: its connection to b is gone
    wait_until(
        lambda: b.statistics()["undeliverable_replies"] == 1,
        5 * SLOW,
        "b counts the reply it could not deliver",
    )
    assert b.statistics()["errors"] == 0


def test_a_port_needs_only_its_links_to_the_node(pair):
    """A port is built from ``NodeLinks`` (what it needs from its node), not the node."""
    a, b, _ = pair
    port = ThreadPort(a._messaging.port_links())
    try:
        assert not hasattr(port, "_node")
        assert port._socket(b.id) is port._socket(b.id)  # one connection per member
        with pytest.raises(NodeDown, match="not .or no longer. in the mesh"):
            port._socket("no-such-node")
    finally:
        assert port.close()
