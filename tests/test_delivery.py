"""throw, scatter, Next, first_reply and the outbox, across three nodes."""

from __future__ import annotations

import time

import pytest
from conftest import SLOW
from zcell_test_actors import Cache, Echo, Logger, Picky

from zcell import NoSuchActor, RemoteError, first_reply, forward, stop_forward

ACTORS = [Echo, Cache, Logger, Picky]


@pytest.fixture
def three(mesh):
    nodes = mesh(3, actors=ACTORS)
    return nodes


def spread(nodes, cls, per_node, **kwargs):
    """Spawn ``per_node`` actors of ``cls`` on each node; wait until all nodes see them."""
    refs = [
        nodes[0].spawn(cls, on=f"n{i}", **kwargs)
        for i in range(len(nodes))
        for _ in range(per_node)
    ]
    total = len(refs)
    end = time.monotonic() + 5 * SLOW
    for node in nodes:
        while len(node.actors(cls)) < total and time.monotonic() < end:
            time.sleep(0.01)
        assert len(node.actors(cls)) == total
    return refs


# -- directory -----------------------------------------------------------------


def test_a_spawn_is_seen_by_every_node_within_a_fraction_of_a_second(three):
    a, b, c = three
    started = time.monotonic()
    ref = a.spawn(Echo, on="n1")
    for node in (b, c):
        while ref not in node.actors(Echo) and time.monotonic() - started < 2:
            time.sleep(0.005)
        assert ref in node.actors(Echo)
    assert time.monotonic() - started < 0.5


def test_a_kill_is_seen_by_every_node(three):
    a, b, c = three
    ref = spread([a, b, c], Echo, 1)[1]
    a.kill(ref)
    end = time.monotonic() + 2
    while any(ref in node.actors(Echo) for node in (a, b, c)) and time.monotonic() < end:
        time.sleep(0.01)
    assert not any(ref in node.actors(Echo) for node in (a, b, c))
    assert all(len(node.actors(Echo)) == 2 for node in (a, b, c))


def test_a_joining_node_gets_a_full_snapshot(three, make_node):
    a, b, c = three
    refs = spread([a, b, c], Echo, 2)
    late = make_node("late", peers=[c.endpoints["inbox"]])
    late.wait_for(nodes=4, timeout=10 * SLOW)
    end = time.monotonic() + 5 * SLOW
    while len(late.actors(Echo)) < 6 and time.monotonic() < end:
        time.sleep(0.01)
    assert set(late.actors(Echo)) == set(refs)


# -- throw -----------------------------------------------------------------------


def test_throw_round_robins_over_every_actor_of_the_type(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 2)
    for _ in range(60):
        refs[0].throw.echo(value=1)
    counts = [ref.send.count() for ref in refs]
    assert counts == [10] * 6


def test_throw_nowait_spreads_too(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 2)
    for _ in range(60):
        assert refs[0].throw.echo(value=1, nowait=True) is None
    end = time.monotonic() + 5 * SLOW
    while sum(r.send.count() for r in refs) < 60 and time.monotonic() < end:
        time.sleep(0.02)
    assert [r.send.count() for r in refs] == [10] * 6


def test_throw_returns_the_value_and_raises_remote_errors(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 1)
    assert refs[0].throw.echo(value="x") == "x"
    with pytest.raises(KeyError):
        refs[0].throw.fail(kind="KeyError")


def test_throw_by_type_name_from_a_program_without_the_class(three):
    a, b, c = three
    spread([a, b, c], Echo, 1)
    ref = a.actors(Echo.name)[0]
    assert ref.throw("echo", {"value": 3}) == 3


def test_throw_with_no_actor_of_the_type_raises_no_such_actor(three):
    a, b, c = three
    ref = a.spawn(Echo, on="n1")
    a.kill(ref)
    with pytest.raises(NoSuchActor):
        ref.throw.echo(value=1)


def test_a_declined_throw_moves_on_to_an_actor_that_has_not_seen_it(three):
    a, b, c = three
    pickies = [a.spawn(Picky, on=f"n{i}", accept=i) for i in range(3)]
    spread([a, b, c], Echo, 0)
    end = time.monotonic() + 5
    while len(c.actors(Picky)) < 3 and time.monotonic() < end:
        time.sleep(0.01)
    for value in range(3):
        # Whichever actor the round-robin picks first, the one that accepts answers.
        assert pickies[0].throw.take(value=value) == pickies[value].id
    total_seen = sum(p.send.seen_count() for p in pickies)
    assert 3 <= total_seen <= 9


def test_a_throw_every_actor_declines_raises_no_such_actor(three):
    a, b, c = three
    pickies = [a.spawn(Picky, on=f"n{i}", accept="never") for i in range(3)]
    with pytest.raises(NoSuchActor, match="declined"):
        pickies[0].throw.take(value="x")
    assert [p.send.seen_count() for p in pickies] == [1, 1, 1]


def test_a_declined_send_raises_no_such_actor(three):
    a, b, c = three
    ref = a.spawn(Echo, on="n2")
    with pytest.raises(NoSuchActor):
        ref.send.decline()


# -- scatter ---------------------------------------------------------------------


def test_scatter_reaches_every_actor_and_streams_the_replies(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 2)
    replies = refs[0].scatter.whoami()
    ids = sorted(reply["id"] for reply in replies)
    assert ids == sorted(ref.id for ref in refs)


def test_scatter_ends_as_soon_as_everyone_answered(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 2)
    started = time.monotonic()
    assert len(list(refs[0].scatter.echo(value=1, timeout=10))) == 6
    assert time.monotonic() - started < 1.0


def test_scatter_sends_when_called_not_when_iterated(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 1)
    replies = refs[0].scatter.echo(value=1)
    end = time.monotonic() + 5 * SLOW
    while sum(r.send.count() for r in refs) < 3 and time.monotonic() < end:
        time.sleep(0.01)
    assert sum(r.send.count() for r in refs) == 3
    assert list(replies) == [1, 1, 1]


def test_scatter_stops_at_limit(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 2)
    assert len(list(refs[0].scatter.echo(value=1, limit=2))) == 2


def test_scatter_stops_at_timeout_without_raising(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 1)
    slow = refs[2]
    started = time.monotonic()
    # Two answer at once; the third sleeps past the timeout.
    replies = list(refs[0].scatter("sleep", {"seconds": 0.0}, timeout=0.5))
    assert len(replies) == 3
    slow_replies = []
    for ref in refs:
        ref.call.sleep(seconds=0)  # warm
    replies = refs[0].scatter.sleep(seconds=2, timeout=0.4)
    slow_replies = list(replies)
    assert slow_replies == []
    assert time.monotonic() - started < 2.0
    assert slow is not None


def test_a_scatter_error_raises_from_the_iterator_unless_propagate_false(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 1)
    with pytest.raises(KeyError):
        list(refs[0].scatter.fail(kind="KeyError"))
    errors = list(refs[0].scatter.fail(kind="KeyError", propagate=False))
    assert len(errors) == 3 and all(isinstance(e, RemoteError) for e in errors)


def test_scatter_with_no_actor_of_the_type_is_an_empty_iterator(three):
    a, b, c = three
    ref = a.spawn(Echo, on="n1")
    a.kill(ref)
    started = time.monotonic()
    assert list(ref.scatter.echo(value=1)) == []
    assert time.monotonic() - started < 0.5


def test_scatter_nowait_returns_none_and_delivers(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 1)
    assert refs[0].scatter.echo(value=1, nowait=True) is None
    end = time.monotonic() + 5 * SLOW
    while sum(r.send.count() for r in refs) < 3 and time.monotonic() < end:
        time.sleep(0.01)
    assert [r.send.count() for r in refs] == [1, 1, 1]


def test_declines_in_a_scatter_give_no_reply_and_end_it_early(three):
    a, b, c = three
    pickies = [a.spawn(Picky, on=f"n{i}", accept=i) for i in range(3)]
    end = time.monotonic() + 5
    while len(c.actors(Picky)) < 3 and time.monotonic() < end:
        time.sleep(0.01)
    started = time.monotonic()
    assert list(pickies[0].scatter.take(value=1, timeout=5)) == [pickies[1].id]
    assert time.monotonic() - started < 1.0


def test_a_scatter_issued_right_after_a_node_joins_reaches_it(three, make_node):
    a, b, c = three
    spread([a, b, c], Echo, 1)
    late = make_node("late", actors=ACTORS, peers=[a.endpoints["inbox"]])
    late.wait_for(nodes=4, timeout=10 * SLOW)
    fresh = late.spawn(Echo, on="late")
    a.wait_for(type=Echo)
    end = time.monotonic() + 5
    while fresh not in a.actors(Echo) and time.monotonic() < end:
        time.sleep(0.005)
    replies = list(a.actors(Echo)[0].scatter.whoami(timeout=3))
    assert fresh.id in {r["id"] for r in replies}
    assert len(replies) == 4


def test_first_reply(three):
    a, b, c = three
    refs = spread([a, b, c], Echo, 2)
    assert first_reply(refs[0].scatter.echo(value=5)) == 5
    with pytest.raises(KeyError) as info:
        first_reply(iter([]), key="missing")
    assert info.value.args == ("missing",)


def test_the_cache_pattern(three):
    """Values set by throw, read back by scatter; actors lacking the key decline."""
    a, b, c = three
    caches = spread([a, b, c], Cache, 2)
    holders = {caches[0].throw.set(key=f"k{i}", value=i) for i in range(12)}
    assert holders == {ref.id for ref in caches}  # spread over all six
    for i in range(12):
        assert first_reply(caches[0].scatter.get(key=f"k{i}"), key=f"k{i}") == i
    started = time.monotonic()
    with pytest.raises(KeyError):
        first_reply(caches[0].scatter.get(key="missing", timeout=5), key="missing")
    # Every actor declined: the scatter ended long before its 5 s timeout.
    assert time.monotonic() - started < 1.0


# -- outbox ----------------------------------------------------------------------


def history(ref):
    return [line for line, _ in ref.send.history()]


def wait_for_lines(ref, n, seconds=5.0):
    end = time.monotonic() + seconds * SLOW
    while len(ref.send.history()) < n and time.monotonic() < end:
        time.sleep(0.01)
    return ref.send.history()


def test_the_cell_guide_logger_forward_example(three):
    a, b, c = three
    logger1 = a.spawn(Logger, {"prefix": "1: "}, on="n1")
    logger2 = a.spawn(Logger, {"prefix": "2: "}, on="n2")
    logger1 | forward | logger2
    logger1.emit("log", {"msg": "printed by logger2"})
    assert [line for line, _ in wait_for_lines(logger2, 1)] == ["2: printed by logger2"]
    logger1 | stop_forward | logger2
    logger1.emit("log", {"msg": "printed by logger1"})
    assert [line for line, _ in wait_for_lines(logger1, 1)] == ["1: printed by logger1"]
    assert history(logger2) == ["2: printed by logger2"]


def test_an_outbox_without_bindings_delivers_to_its_own_actor(three):
    a, b, c = three
    logger = a.spawn(Logger, on="n2")
    logger.emit("log", {"msg": "self"})
    assert wait_for_lines(logger, 1) == [["self", logger.id]]


def test_emitted_messages_keep_the_original_emitter_as_origin(three):
    a, b, c = three
    src = a.spawn(Logger, on="n0")
    dst = a.spawn(Logger, on="n1")
    src.add_binding(dst)
    src.send.emit_from_inside(msg="from a handler")
    src.emit("log", {"msg": "from a proxy"})
    lines = wait_for_lines(dst, 2)
    assert sorted(lines) == sorted([["from a handler", src.id], ["from a proxy", src.id]])


def test_round_robin_and_scatter_bindings(three):
    a, b, c = three
    src = a.spawn(Logger, on="n0")
    echoes = spread([a, b, c], Echo, 1)
    src.add_binding(echoes[0], kind="round-robin")
    for _ in range(6):
        src.emit("echo", {"value": 1})
    end = time.monotonic() + 5 * SLOW
    while sum(e.send.count() for e in echoes) < 6 and time.monotonic() < end:
        time.sleep(0.01)
    assert [e.send.count() for e in echoes] == [2, 2, 2]
    src.remove_binding(echoes[0])
    src.add_binding(Echo, kind="scatter")
    src.emit("echo", {"value": 1})
    end = time.monotonic() + 5 * SLOW
    while sum(e.send.count() for e in echoes) < 9 and time.monotonic() < end:
        time.sleep(0.01)
    assert [e.send.count() for e in echoes] == [3, 3, 3]


def test_bindings_live_on_the_hosting_node_and_outlive_their_maker(three, make_node):
    a, b, c = three
    logger1 = a.spawn(Logger, on="n1")
    logger2 = a.spawn(Logger, on="n2")
    maker = make_node("maker", peers=[a.endpoints["inbox"]])
    maker.wait_for(nodes=4, timeout=10 * SLOW)
    maker.lookup(logger1.id) | forward | maker.lookup(logger2.id)
    maker.stop()
    logger1.emit("log", {"msg": "still forwarded"})
    assert [line for line, _ in wait_for_lines(logger2, 1)] == ["still forwarded"]


def test_invalid_binding_kind_is_a_value_error(three):
    a, b, c = three
    ref = a.spawn(Logger, on="n1")
    with pytest.raises(ValueError):
        ref.add_binding(ref, kind="sideways")
