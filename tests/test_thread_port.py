"""A program thread's calls: replies come back on the thread's own port.

The thread completes its results as it reads the replies (zcell/threadport.py);
these tests pin down that nothing is lost when it does not come back to read:
link callbacks, waits from other threads, ``ready()`` polling, many calls never
read, a node that goes away or stops meanwhile.
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import SLOW, wait_until
from zcell_test_actors import Echo

from zcell import NodeStopped


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
