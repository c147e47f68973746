"""send, call and AsyncResult: the forms, the checks, the errors, the deadlines."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import SLOW
from greenlet import getcurrent
from zcell_test_actors import Counter, Echo, Fallback

from zcell import (
    ActorProxy,
    AsyncResult,
    CallTimeout,
    NoReplyError,
    NoSuchActor,
    NoSuchMethod,
    RemoteError,
    SerializationError,
)


@pytest.fixture
def pair(mesh):
    """Two nodes; an Echo hosted on the second, called from the first."""
    a, b = mesh(2, actors=[Echo, Counter, Fallback])
    return a, b, a.spawn(Echo, on="n1")


def test_the_three_forms_are_the_same_message(pair):
    a, b, ref = pair
    assert ref.send("echo", {"value": 1}) == 1
    assert ref.send.echo(value=2) == 2
    assert ref.send.echo({"value": 3}) == 3


def test_values_travel_through_msgpack_even_locally(make_node):
    node = make_node(actors=[Echo])
    ref = node.spawn(Echo)  # same node
    assert ref.send.echo(value=(1, 2)) == [1, 2]
    assert ref.send.echo(value={"k": (1, b"x")}) == {"k": [1, b"x"]}


def test_send_nowait_returns_none_and_the_handler_runs(pair):
    a, b, ref = pair
    assert ref.send.echo(value=1, nowait=True) is None
    end = time.monotonic() + 5 * SLOW
    while ref.send.count() < 1 and time.monotonic() < end:
        time.sleep(0.01)
    assert ref.send.count() == 1


def test_call_returns_an_async_result_at_once(pair):
    a, b, ref = pair
    result = ref.call.sleep(seconds=0.2)
    assert isinstance(result, AsyncResult)
    assert result.state == "PENDING" and not result.ready()
    assert result.get() == 0.2
    assert result.ready() and result.successful() and not result.failed()
    assert result.state == "SUCCESS"
    assert result.result() == 0.2
    assert result.wait() == 0.2


def test_async_result_link_is_called_once_ready(pair):
    a, b, ref = pair
    seen = []
    result = ref.call.echo(value=7)
    result.link(lambda r: seen.append(r.get()))
    result.get()
    end = time.monotonic() + 2
    while not seen and time.monotonic() < end:
        time.sleep(0.01)
    assert seen == [7]
    late = []
    result.link(late.append)  # already ready: called at once
    assert late == [result]


def test_async_result_rawlink_runs_where_the_reply_is_read_with_no_greenlet_of_its_own(
    pair, caplog
):
    """rawlink: for callbacks that never block (the task dispatcher's). They run in
    the node's loop as the result completes, before the link callbacks, which get
    a greenlet of their own; one that raises is logged and the others still run."""
    a, b, ref = pair
    seen = []

    def note(kind):
        return lambda r: seen.append((kind, r.get(), threading.get_ident(), getcurrent()))

    def bad(r):
        raise RuntimeError("a broken callback")

    def in_loop():
        result = ref.call.echo(value=7)
        result.rawlink(bad)
        result.rawlink(note("raw"))
        result.link(note("link"))
        return result

    result = a.call_in_loop(in_loop)
    assert result.get() == 7
    end = time.monotonic() + 2 * SLOW
    while len(seen) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    (raw, value, raw_thread, raw_greenlet), (link, _, link_thread, link_greenlet) = seen
    assert (raw, value, link) == ("raw", 7, "link")
    assert raw_thread == link_thread != threading.get_ident()  # the node's loop
    assert raw_greenlet is not link_greenlet
    assert "a broken callback" in caplog.text
    late = []
    result.rawlink(late.append)  # already ready: called at once, here
    assert late == [result]


def test_async_result_of_a_failure(pair):
    a, b, ref = pair
    result = ref.call.fail(kind="ValueError", message="bad")
    with pytest.raises(ValueError):
        result.get()
    assert result.failed() and result.state == "FAILURE"
    error = result.get(propagate=False)
    assert isinstance(error, RemoteError) and error.type_name == "ValueError"


def test_a_short_get_timeout_leaves_the_call_pending(pair):
    a, b, ref = pair
    result = ref.call.sleep(seconds=0.5)
    with pytest.raises(CallTimeout):
        result.get(timeout=0.05)
    assert result.state == "PENDING"
    assert result.get() == 0.5


def test_remote_errors_carry_type_message_and_traceback(pair):
    a, b, ref = pair
    with pytest.raises(RemoteError) as info:
        ref.send.fail(kind="KeyError", message="missing")
    err = info.value
    assert err.type_name == "KeyError"
    assert "missing" in err.remote_message
    assert "Traceback" in err.remote_traceback and "fail" in err.remote_traceback
    assert isinstance(err, KeyError)
    with pytest.raises(LookupError):  # the built-in tree holds
        ref.send.fail(kind="IndexError", message="x")


def test_a_stdlib_subclass_is_caught_by_its_builtin_ancestor(pair):
    a, b, ref = pair

    class Parser(Echo):
        pass

    # json.JSONDecodeError is a ValueError subclass defined in the stdlib.
    with pytest.raises(ValueError) as info:
        ref.send.call_other(other=ref, method="fail", kwargs={"kind": "ValueError"})
    assert isinstance(info.value, RemoteError)
    with pytest.raises(ValueError):
        json.loads("{")  # sanity: the real one is a ValueError too


def test_a_handler_that_raises_keeps_its_actor_and_node_running(pair):
    a, b, ref = pair
    for _ in range(3):
        with pytest.raises(RemoteError):
            ref.send.fail()
    assert ref.send.echo(value="alive") == "alive"
    assert b.statistics()["errors"] == 3


def test_a_fire_and_forget_failure_is_counted_on_the_hosting_node(pair):
    a, b, ref = pair
    ref.send.fail(nowait=True)
    end = time.monotonic() + 5 * SLOW
    while b.statistics()["nowait_failures"] < 1 and time.monotonic() < end:
        time.sleep(0.01)
    assert b.statistics()["nowait_failures"] == 1


def test_unknown_method_in_string_form_raises_no_such_method(pair):
    a, b, ref = pair
    with pytest.raises(NoSuchMethod) as info:
        ref.send("nope", {})
    assert isinstance(info.value, AttributeError)
    with pytest.raises(NoSuchMethod):
        ref.send("_private", {})  # private names are never dispatched
    with pytest.raises(NoSuchMethod):
        ref.send("on_start", {})  # nor hooks


def test_typed_form_checks_the_method_name_locally(pair):
    a, b, ref = pair
    before = b.statistics()["messages_in"]
    with pytest.raises(AttributeError, match="no handler"):
        _ = ref.send.nope
    with pytest.raises(AttributeError):
        _ = ref.send._private
    assert b.statistics()["messages_in"] == before  # nothing was sent


def test_typed_form_checks_the_signature_locally(pair):
    a, b, ref = pair
    before = b.statistics()["messages_in"]
    with pytest.raises(TypeError):
        ref.send.echo(wrong=1)
    with pytest.raises(TypeError):
        ref.send.sleep()  # missing required argument
    with pytest.raises(TypeError):
        ref.send.echo(1, 2)
    assert b.statistics()["messages_in"] == before  # nothing was sent


def test_a_proxy_without_the_class_skips_the_local_check(pair):
    a, b, ref = pair
    bare = ActorProxy(a, ref.id, "some.Unknown", ref.node_id)
    bare._cls = None
    with pytest.raises(NoSuchMethod):
        bare.send.nope()


def test_options_are_never_passed_to_handlers_but_the_dict_form_can(pair):
    a, b, ref = pair
    # "timeout" here is the call option, not a handler argument.
    assert ref.send.echo(value=1, timeout=2) == 1
    with pytest.raises(TypeError, match="unexpected option"):
        ref.call.echo(value=1, nowait=True)
    with pytest.raises(TypeError):
        ref.send("echo", {}, limit=3)


def test_default_receive_gets_unknown_methods(mesh):
    a, b = mesh(2, actors=[Fallback])
    ref = a.spawn(Fallback, on="n1")
    assert ref.send.known() == "known"
    assert ref.send("anything", {"x": 1}) == ["default", "anything", {"x": 1}]
    assert ref.send.whatever(y=2) == ["default", "whatever", {"y": 2}]


def test_client_side_helpers_on_the_outer_class(pair):
    a, b, ref = pair
    counter = a.spawn(Counter, on="n1")
    assert counter.incr_twice() == 2


def test_values_that_cannot_travel_raise_serialization_error_before_sending(pair):
    a, b, ref = pair
    before = b.statistics()["messages_in"]
    with pytest.raises(SerializationError) as info:
        ref.send.echo(value={1, 2})
    assert isinstance(info.value, TypeError)
    with pytest.raises(SerializationError):
        ref.send.echo(value=object(), nowait=True)
    assert b.statistics()["messages_in"] == before


def test_a_message_over_the_size_limit_raises_serialization_error(mesh):
    a, b = mesh(2, actors=[Echo], max_message_size=10_000)
    ref = a.spawn(Echo, on="n1")
    with pytest.raises(SerializationError, match="max_message_size"):
        ref.send.echo(value=b"x" * 20_000)
    assert ref.send.echo(value=b"x" * 5_000) == b"x" * 5_000


def test_a_return_value_that_cannot_travel_is_an_error_for_the_caller(pair):
    a, b, ref = pair
    with pytest.raises(SerializationError):
        ref.send.bad_return()


def test_timeout_bounds_the_wait(pair):
    a, b, ref = pair
    start = time.monotonic()
    with pytest.raises(CallTimeout) as info:
        ref.send.sleep(seconds=3, timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 < elapsed < 2.0
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, NoReplyError)


def test_call_result_becomes_a_failure_at_its_deadline(pair):
    a, b, ref = pair
    result = ref.call.sleep(seconds=3, timeout=0.3)
    with pytest.raises(CallTimeout):
        result.get()
    assert result.state == "FAILURE"


def test_a_message_whose_deadline_passed_before_it_started_is_dropped(make_node):
    # concurrency=1: the second call waits for the first; its deadline passes meanwhile.
    node = make_node(actors=[Echo], concurrency=1)
    a = node.spawn(Echo)
    busy = a.call.sleep(seconds=0.6)
    with pytest.raises(CallTimeout):
        a.send.echo(value="late", timeout=0.2)
    assert busy.get() == 0.6
    end = time.monotonic() + 2
    while node.statistics()["dropped_expired"] < 1 and time.monotonic() < end:
        time.sleep(0.01)
    assert node.statistics()["dropped_expired"] == 1
    assert a.send.count() == 0  # "echo" never ran


def test_nested_calls_inherit_what_is_left_of_the_deadline(pair):
    a, b, ref = pair
    other = a.spawn(Echo, on="n0")
    start = time.monotonic()
    # The outer call allows 0.4 s. The handler's nested call asks for the
    # default 5 s, but inherits what is left of 0.4 s.
    with pytest.raises((CallTimeout, RemoteError)):
        ref.send.call_other(other=other, method="sleep", kwargs={"seconds": 3}, timeout=0.4)
    assert time.monotonic() - start < 2.0
    # The handler itself gave up at the inherited deadline, not after 5 s.
    end = time.monotonic() + 2.0
    while b.statistics()["in_flight"] and time.monotonic() < end:
        time.sleep(0.02)
    assert b.statistics()["in_flight"] == 0
    assert time.monotonic() - start < 2.5


def test_proxies_travel_as_arguments_and_come_back_as_values(pair):
    a, b, ref = pair
    other = a.spawn(Echo, {"tag": "other"}, on="n0")
    assert ref.send.call_other(other=other, method="whoami")["tag"] == "other"
    back = ref.send.make_proxy_value()
    assert isinstance(back, ActorProxy) and back == ref and back.node_id == b.id
    assert back.send.echo(value=9) == 9
    assert ref.send.echo(value=[other]) == [other]


def test_proxies_compare_equal_by_id_and_hash(pair):
    a, b, ref = pair
    same = a.lookup(ref.id)
    assert same == ref and hash(same) == hash(ref) and len({same, ref}) == 1


def test_origin_is_none_from_a_program_and_the_caller_inside_a_chain(pair):
    a, b, ref = pair
    other = a.spawn(Echo, on="n0")
    assert ref.send.origin() is None
    assert ref.send.call_other(other=other, method="origin") == ref.id


def test_send_to_a_killed_actor_fails(pair):
    from zcell import ActorStopped

    a, b, ref = pair
    a.kill(ref)
    with pytest.raises((ActorStopped, NoSuchActor)):
        ref.send.echo(value=1)


def test_calls_waiting_on_a_killed_actor_fail_with_actor_stopped(pair):
    from zcell import ActorStopped

    a, b, ref = pair
    waiting = ref.call.sleep(seconds=5)
    time.sleep(0.1)
    a.kill(ref)
    with pytest.raises(ActorStopped):
        waiting.get(timeout=3)
