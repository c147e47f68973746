"""Node.submit / Node.call_in_loop / Node.in_loop: work handed to the node's loop thread."""

from __future__ import annotations

import threading

import gevent
import pytest
from conftest import MakeNode, wait_until

from zcell import NodeStopped


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
