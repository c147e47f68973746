"""Reliability of handlers, errors, link callbacks and the node's own tasks (issue 12).

A handler may raise anything, an error may cross many hops, a value may be one the
far side refuses, a link callback may block, and the node's own greenlets may hit
a bug: in every case the caller gets a typed error at once and the node keeps
serving and stops cleanly.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import gevent
import msgpack
import pytest
from conftest import SLOW, wait_until

from zcell import Actor, Node, NoSuchMethod, RemoteError, SerializationError


class Custom(BaseException):
    """A BaseException that is none of the built-in control-flow ones."""


RAISED: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "GreenletExit": gevent.GreenletExit,
    "Custom": Custom,
}


class Raiser(Actor):
    name = "test_reliability_errors.Raiser"

    class state(Actor.state):
        def raise_(self, kind: str):
            raise RAISED[kind]("from a handler")

        def echo(self, value=None):
            return value

        def chain(self, refs: list):
            """Pass the call along ``refs``; the last one raises ValueError."""
            if not refs:
                raise ValueError("deep down")
            return refs[0].send.chain(refs=refs[1:], timeout=10)

        def call_missing(self, other):
            return other.send("nope", {})

        def tuple_keys(self):
            return {(1, 2): 3}

        def sleep(self, seconds: float):
            gevent.sleep(seconds)
            return seconds


class Picky(Actor):
    name = "test_reliability_errors.Picky"

    class state(Actor.state):
        def default_receive(self, method, kwargs):
            if method == "maybe":
                return "handled"
            raise NoSuchMethod(f"Picky does not take {method!r} either")


class ExitsOnStart(Actor):
    name = "test_reliability_errors.ExitsOnStart"

    class state(Actor.state):
        def on_start(self) -> None:
            raise SystemExit("from on_start")

        def on_stop(self) -> None:
            raise SystemExit("from on_stop")

        def ping(self):
            return "pong"


class ExitsInInit(Actor):
    name = "test_reliability_errors.ExitsInInit"

    class state(Actor.state):
        def __init__(self) -> None:
            raise SystemExit("from __init__")


def stops_cleanly(node: Node) -> None:
    """The node stops within a bound and its loop thread ends."""
    started = time.monotonic()
    node.stop(timeout=1)
    assert node._loop.join(5 * SLOW), "the node's loop thread is still running"
    assert time.monotonic() - started < 6 * SLOW


# -- 1. any BaseException from user code ------------------------------------------


@pytest.mark.parametrize("kind", sorted(RAISED))
def test_a_handler_raising_any_base_exception_fails_that_message_with_a_remote_error(mesh, kind):
    a, b = mesh(2, actors=[Raiser])
    ref = a.spawn(Raiser, on="n1")
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        ref.send.raise_(kind=kind, timeout=10 * SLOW)
    assert time.monotonic() - started < 3 * SLOW  # at once, not at the timeout
    assert info.value.type_name.endswith(RAISED[kind].__name__)
    assert info.value.remote_message == "from a handler"
    assert ref.send.echo(value=1) == 1  # the actor and its node keep serving
    local = b.spawn(Raiser, on="n1")  # and the same from a handler's own node
    with pytest.raises(RemoteError):
        local.send.raise_(kind=kind, timeout=10 * SLOW)
    assert local.send.echo(value=2) == 2
    stops_cleanly(b)


def test_hooks_and_constructors_raising_system_exit_leave_the_node_serving(mesh):
    a, b = mesh(2, actors=[ExitsOnStart, ExitsInInit])
    ref = a.spawn(ExitsOnStart, on="n1")
    assert ref.send.ping() == "pong"
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        a.spawn(ExitsInInit, on="n1", timeout=10 * SLOW)
    assert time.monotonic() - started < 3 * SLOW
    assert info.value.type_name == "SystemExit"
    a.kill(ref)  # on_stop raises SystemExit
    assert a.spawn(ExitsOnStart, on="n1").send.ping() == "pong"
    stops_cleanly(b)


def test_a_loop_callback_raising_system_exit_does_not_end_the_loop(make_node):
    node = make_node(actors=[Raiser])
    ref = node.spawn(Raiser)

    def bad() -> None:
        raise SystemExit("from a loop callback")

    node._loop.submit(bad)
    assert ref.send.echo(value=3, timeout=5 * SLOW) == 3
    stops_cleanly(node)


# -- 2. errors through a chain of calls ---------------------------------------------


def test_an_error_through_a_chain_of_16_calls_keeps_its_type_and_one_traceback_per_hop(mesh):
    a, b = mesh(2, actors=[Raiser])
    refs = [a.spawn(Raiser, on=f"n{i % 2}") for i in range(16)]
    with pytest.raises(RemoteError) as info:
        refs[0].send.chain(refs=refs[1:], timeout=10 * SLOW)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.type_name == "ValueError"
    assert err.remote_message == "deep down"
    assert len(err.remote_tracebacks) == 16
    assert all("Traceback" in tb for tb in err.remote_tracebacks)
    assert len(str(err)) < 256 * 1024


def test_one_hop_traceback_is_truncated_but_keeps_its_end(mesh):
    a, b = mesh(2, actors=[Raiser])
    ref = a.spawn(Raiser, on="n1")
    with pytest.raises(RemoteError) as info:
        ref.send.chain(refs=[], timeout=10 * SLOW)
    assert info.value.remote_tracebacks[-1].rstrip().endswith("ValueError: deep down")


# -- 3. NoSuchMethod ----------------------------------------------------------------


def test_a_nested_no_such_method_comes_back_wrapped_in_a_remote_error(mesh):
    a, b = mesh(2, actors=[Raiser])
    outer, inner = a.spawn(Raiser, on="n1"), a.spawn(Raiser, on="n0")
    with pytest.raises(RemoteError) as info:
        outer.send.call_missing(other=inner)
    err = info.value
    assert not isinstance(err, NoSuchMethod)  # the outer method exists
    assert err.type_name == "zcell.errors.NoSuchMethod"
    assert "nope" in err.remote_message
    assert "Traceback" in err.remote_traceback


def test_a_default_receive_that_declines_a_name_gives_no_such_method(mesh):
    a, b = mesh(2, actors=[Raiser, Picky])
    picky = a.spawn(Picky, on="n1")
    assert picky.send("maybe", {}) == "handled"
    with pytest.raises(NoSuchMethod, match="either"):
        picky.send("other", {})
    outer = a.spawn(Raiser, on="n0")
    with pytest.raises(RemoteError) as info:  # but a nested call's stays the handler's error
        outer.send.call_missing(other=picky)
    assert info.value.type_name == "zcell.errors.NoSuchMethod"


def test_the_typed_and_string_forms_raise_the_same_class_for_a_missing_method(mesh):
    a, b = mesh(2, actors=[Raiser])
    ref = a.spawn(Raiser, on="n1")
    with pytest.raises(NoSuchMethod) as typed:
        ref.send.nope()
    with pytest.raises(NoSuchMethod) as string:
        ref.send("nope", {})
    assert type(typed.value) is type(string.value) is NoSuchMethod


# -- 4. values the receiver would refuse --------------------------------------------


@pytest.mark.parametrize(
    "value",
    [{(1, 2): 3}, {"nested": [{(1,): "x"}]}, msgpack.ExtType(5, b"x"), msgpack.Timestamp(1)],
    ids=["tuple-key", "nested-tuple-key", "ext-type", "timestamp"],
)
def test_a_value_the_receiver_refuses_raises_serialization_error_at_the_sender(mesh, value):
    a, b = mesh(2, actors=[Raiser])
    ref = a.spawn(Raiser, on="n1")
    started = time.monotonic()
    with pytest.raises(SerializationError):
        ref.send.echo(value=value, timeout=10 * SLOW)
    with pytest.raises(SerializationError):
        ref.send.echo(value=value, nowait=True)
    with pytest.raises(SerializationError):
        ref.call.echo(value=value, timeout=10 * SLOW)
    assert time.monotonic() - started < 3 * SLOW
    assert ref.send.echo(value=1) == 1


def test_keyword_names_that_are_not_strings_raise_serialization_error_at_the_sender(mesh):
    a, b = mesh(2, actors=[Raiser])
    ref = a.spawn(Raiser, on="n1")
    with pytest.raises(SerializationError):
        ref.send("echo", {1: 2}, timeout=10 * SLOW)


def test_a_return_value_the_caller_would_refuse_fails_as_serialization_error(mesh):
    a, b = mesh(2, actors=[Raiser])
    ref = a.spawn(Raiser, on="n1")
    started = time.monotonic()
    with pytest.raises(SerializationError):
        ref.send.tuple_keys(timeout=10 * SLOW)
    assert time.monotonic() - started < 3 * SLOW


# -- 7. link callbacks ----------------------------------------------------------------


def test_a_blocking_call_in_a_link_callback_does_not_freeze_the_node(mesh):
    a, b = mesh(2, actors=[Raiser])
    remote = a.spawn(Raiser, on="n1")
    local = a.spawn(Raiser, on="n0")
    outcome: list[Any] = []
    done = threading.Event()

    def callback(result: Any) -> None:
        try:
            outcome.append(local.send.echo(value="from the callback", timeout=5 * SLOW))
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)
        done.set()

    result = remote.call.sleep(seconds=0.2)
    result.link(callback)
    assert result.get(timeout=5 * SLOW) == 0.2
    assert done.wait(4 * SLOW)
    assert outcome == ["from the callback"]


# -- 8. supervision of the node's own tasks -------------------------------------------


class FlakyHousekeeping(Node):
    """A node whose housekeeping hits a bug once (the bug stands in for any)."""

    runs = 0

    def _housekeeping(self) -> None:
        type(self).runs += 1
        if type(self).runs == 1:
            raise RuntimeError("a bug in housekeeping")
        super()._housekeeping()


class BuggyDispatch(Node):
    """A node whose heartbeat handling hits a bug on every heartbeat."""

    def _on_heartbeat(self, msg: list[Any], via: Any) -> None:
        raise RuntimeError("a bug in dispatch")


def test_a_failed_internal_task_is_logged_and_restarted(caplog):
    caplog.set_level(logging.ERROR, logger="zcell")
    node = FlakyHousekeeping("flaky", discovery="static").start()
    try:
        wait_until(lambda: FlakyHousekeeping.runs >= 2, 5, "housekeeping to restart")
        assert any("_housekeeping failed" in r.getMessage() for r in caplog.records)
        assert node.statistics()["internal_errors"] == 1
    finally:
        stops_cleanly(node)


def test_a_bug_in_dispatch_is_counted_as_an_internal_error_not_a_bad_frame(caplog):
    caplog.set_level(logging.ERROR, logger="zcell")
    first = Node("ok", discovery="static").start()
    buggy = BuggyDispatch("buggy", discovery="static", peers=[first.endpoints["inbox"]]).start()
    try:
        wait_until(
            lambda: any("a bug in dispatch" in str(r.exc_info) for r in caplog.records),
            5,
            "the bug's traceback in the log",
        )
        assert buggy.statistics()["internal_errors"] > 0
        assert buggy.statistics()["dropped_bad_frames"] == 0
    finally:
        stops_cleanly(buggy)
        stops_cleanly(first)


def test_a_zmq_error_in_a_socket_reader_is_logged(make_node, caplog):
    caplog.set_level(logging.ERROR, logger="zcell")
    node = make_node()
    sub = node._sockets.pub  # the XPUB, read by _read_pub for subscriptions

    def break_socket() -> None:
        # The socket breaks under its parked reader (not a stop), which then wakes.
        sub.raw.close()
        watcher = sub._watcher
        sub.hub.loop.run_callback(watcher.callback, *watcher.args)

    node._run(break_socket)

    def logged(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    wait_until(lambda: logged("reading a XPUB socket failed"), 5, "the failure's log")
    wait_until(lambda: logged("_read_pub ended unexpectedly"), 5, "the reader's restart")


def test_the_wire_form_of_a_long_relay_keeps_the_first_and_the_latest_tracebacks() -> None:
    from zcell.errors import MAX_HOPS, MAX_TRACEBACK, error_from_wire, error_wire

    relayed = RemoteError("ValueError", "deep down", [f"hop {i}\n" * 5000 for i in range(40)])
    relayed.remote_ancestor = "ValueError"
    try:
        raise relayed
    except RemoteError as exc:
        wire_form = error_wire(exc)
    err = error_from_wire(wire_form)
    assert err is not None and isinstance(err, ValueError)
    assert (err.type_name, err.remote_message) == ("ValueError", "deep down")
    assert len(err.remote_tracebacks) == MAX_HOPS
    assert err.remote_tracebacks[0].startswith("hop 0")
    assert "hops cut" in err.remote_tracebacks[1]
    assert err.remote_tracebacks[-1].rstrip().endswith("relayed ValueError")
    assert all(len(tb) < MAX_TRACEBACK + 100 for tb in err.remote_tracebacks)
