"""Node.submit / Node.call_in_loop / Node.in_loop / Node.call_then: work handed to,
or calls made from, the node's loop thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import gevent
import pytest
from conftest import SLOW, MakeNode, start_zcell_node, wait_until
from zcell_test_actors import Echo

from zcell import Node, NodeDown, NodeStopped, RemoteError, SerializationError


def test_call_in_loop_runs_in_the_loop_thread_and_returns_its_value(make_node: MakeNode) -> None:
    node = make_node()
    ident = node.call_in_loop(threading.get_ident)
    assert ident != threading.get_ident()
    assert node.call_in_loop(lambda a, b: a + b, 2, 3) == 5


def test_call_in_loop_raises_the_functions_error_in_the_caller(make_node: MakeNode) -> None:
    node = make_node()
    with pytest.raises(ZeroDivisionError):
        node.call_in_loop(lambda: 1 / 0)


def test_submit_returns_at_once_and_runs_the_function_in_the_loop(make_node: MakeNode) -> None:
    node = make_node()
    seen: list[int] = []
    node.submit(lambda: seen.append(threading.get_ident()))
    wait_until(lambda: seen, 5, "the submitted function to run")
    assert seen[0] == node.call_in_loop(threading.get_ident)


def test_submit_on_a_stopped_node_raises_node_stopped(make_node: MakeNode) -> None:
    node = make_node()
    node.stop(timeout=0.5)
    with pytest.raises(NodeStopped):
        node.submit(print)
    with pytest.raises(NodeStopped):
        node.call_in_loop(print)


def test_in_loop_is_true_in_any_greenlet_of_the_loop_thread_only(make_node: MakeNode) -> None:
    node, other = make_node(), make_node()
    assert not node.in_loop()
    assert node.call_in_loop(node.in_loop)
    assert node.call_in_loop(lambda: gevent.spawn(node.in_loop).get(timeout=5))
    assert not other.call_in_loop(node.in_loop)  # another node's loop thread
    seen: list[bool] = []
    thread = threading.Thread(target=lambda: seen.append(node.in_loop()))
    thread.start()
    thread.join(5)
    assert seen == [False]


# -- Node.call_then: a call made in the loop, its outcome handed to a function ----


def _call_then(node: Node, ref: Any, method: str, kwargs: dict[str, Any]) -> list[tuple]:
    """Make the call in ``node``'s loop; the list fills with (value, error, in the loop)."""
    outcomes: list[tuple] = []

    def then(value: Any, error: BaseException | None) -> None:
        outcomes.append((value, error, node.in_loop()))

    node.call_in_loop(node.call_then, ref, method, kwargs, then)
    return outcomes


def test_call_then_hands_the_reply_to_the_function_once_in_the_loop(mesh: Any) -> None:
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on=b.name)
    outcomes = _call_then(a, ref, "echo", {"value": 42})
    wait_until(lambda: outcomes, 10 * SLOW, "the outcome")
    assert outcomes == [(42, None, True)]
    assert a.statistics()["pending_calls"] == 0
    time.sleep(0.2)
    assert len(outcomes) == 1


def test_call_then_hands_over_the_handlers_error(mesh: Any) -> None:
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on=b.name)
    outcomes = _call_then(a, ref, "fail", {"kind": "KeyError", "message": "gone"})
    wait_until(lambda: outcomes, 10 * SLOW, "the outcome")
    value, error, in_loop = outcomes[0]
    assert value is None and in_loop
    assert isinstance(error, RemoteError) and error.type_name == "KeyError"
    assert "gone" in error.remote_message


def test_call_then_hands_over_node_down_when_the_node_asked_dies(
    make_node: MakeNode, procs: Any
) -> None:
    a = make_node("a", heartbeat=0.3)
    proc, inbox = start_zcell_node(procs, "b", "--peer", a.endpoints["inbox"], "--heartbeat", "0.3")
    a.wait_for(nodes=2, timeout=10 * SLOW)
    ref = a.spawn(Echo, on="b")
    outcomes = _call_then(a, ref, "sleep", {"seconds": 30})
    time.sleep(0.2)
    assert not outcomes  # still running there
    proc.kill()  # SIGKILL: no goodbye, its silence tells
    wait_until(lambda: outcomes, 10 * SLOW, "the outcome")
    value, error, _ = outcomes[0]
    assert value is None and isinstance(error, NodeDown)
    assert a.statistics()["pending_calls"] == 0


def test_call_then_hands_over_node_stopped_when_this_node_stops(mesh: Any) -> None:
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on=b.name)
    outcomes = _call_then(a, ref, "sleep", {"seconds": 30})
    time.sleep(0.2)
    a.stop(timeout=0.5)
    assert len(outcomes) == 1
    assert outcomes[0][0] is None and isinstance(outcomes[0][1], NodeStopped)


def test_call_then_raises_and_awaits_nothing_when_the_call_cannot_leave(mesh: Any) -> None:
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on=b.name)
    with pytest.raises(SerializationError):
        _call_then(a, ref, "echo", {"value": object()})
    b.stop(timeout=0.5)
    wait_until(lambda: b.id not in {n["id"] for n in a.nodes()}, 10 * SLOW, "b to leave")
    with pytest.raises(NodeDown):
        _call_then(a, ref, "echo", {"value": 1})
    assert a.statistics()["pending_calls"] == 0


def test_a_function_given_an_outcome_that_fails_keeps_no_other_from_its_own(mesh: Any) -> None:
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on=b.name)
    a.call_in_loop(a.call_then, ref, "echo", {"value": 1}, lambda v, e: 1 / 0)
    outcomes = _call_then(a, ref, "echo", {"value": 2})
    wait_until(lambda: outcomes, 10 * SLOW, "the second outcome")
    assert outcomes == [(2, None, True)]
    # Failed all at once (this node stops): the first function fails, the next still runs.
    a.call_in_loop(a.call_then, ref, "sleep", {"seconds": 30}, lambda v, e: 1 / 0)
    outcomes = _call_then(a, ref, "sleep", {"seconds": 30})
    time.sleep(0.2)
    a.stop(timeout=0.5)
    assert len(outcomes) == 1 and isinstance(outcomes[0][1], NodeStopped)
