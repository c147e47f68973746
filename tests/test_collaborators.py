"""The node's collaborators, each built alone: who a frame is from (``Roster``),
where a reply is matched (``PendingCalls``), directory news (``DirectoryNews``),
where a reply leaves (``Messaging``), what a joining node sent before its WELCOME
(``HeldFrames``).

No sockets: each is given what a node would give it.
"""

from __future__ import annotations

from typing import Any

import pytest

from zcell import _wire as wire
from zcell._mesh import held
from zcell._mesh.directory import PREFIX, Directory, Member, Roster
from zcell._mesh.held import HeldFrames
from zcell._mesh.membership import DirectoryNews
from zcell._mesh.messaging import Messaging
from zcell._mesh.result import AsyncResult, PendingCalls, ScatterResult
from zcell._mesh.state import Lifecycle, Shared, Sockets
from zcell._transport.loop import LoopThread
from zcell.errors import CallTimeout, NodeDown, NoSuchActor, RemoteError

P = wire.PROTOCOL_VERSION


def _member(roster: Roster, node_id: str) -> tuple[Member, bytes]:
    """A member of ``roster`` and the routing id of its connection to us."""
    member = Member(node_id, "b00t", f"n-{node_id}", "c", f"tcp://{node_id}:1", "p", "h")
    roster.members[node_id] = member
    routing = Roster(node_id, member.name).routing_id("tcp://me:1")
    roster.claim_prefix(member, routing)
    return member, routing


def _rep(rid: int, src: str, status: int = wire.OK, value: Any = "v") -> list[Any]:
    return [P, wire.REP, rid, src, status, value]


@pytest.fixture
def calls() -> tuple[PendingCalls, Roster, dict[str, int], bytes, bytes]:
    roster = Roster("me", "me-node")
    _, from_a = _member(roster, "a")
    _, from_b = _member(roster, "b")
    stats = dict.fromkeys(
        ("late_replies", "dropped_forged", "dropped_stale", "dropped_bad_frames"), 0
    )
    return PendingCalls(roster, stats), roster, stats, from_a, from_b


def test_a_reply_completes_the_call_only_from_the_node_asked_over_its_own_connection(calls):
    pending, _, stats, from_a, from_b = calls
    result = AsyncResult(7, None)
    pending.add(7, result, "a", None)
    pending.on_reply(_rep(7, "a", value="forged"), from_b)  # b's connection claims a
    pending.on_reply(_rep(7, "b", value="not asked"), from_b)  # b was not asked
    assert stats["dropped_forged"] == 2 and not result.ready()
    pending.on_reply(_rep(7, "a"), from_a)
    assert result.get(timeout=0) == "v" and 7 not in pending.table
    pending.on_reply(_rep(7, "a"), from_a)
    assert stats["late_replies"] == 1


def test_a_stranger_reply_is_stale_and_a_throw_may_be_answered_by_any_member(calls):
    pending, roster, stats, _, from_b = calls
    result = AsyncResult(8, None)
    pending.add(8, result, "a", None)
    pending.add_throw(8)
    pending.on_reply(_rep(8, "x"), b"z" + bytes(PREFIX))  # nobody's connection
    assert stats["dropped_stale"] == 1 and not result.ready()
    pending.on_reply(_rep(8, "b", value="from b"), from_b)
    assert result.get(timeout=0) == "from b"


def test_error_replies_become_typed_errors(calls):
    pending, _, _, from_a, _ = calls
    zerror, error = AsyncResult(1, None), AsyncResult(2, None)
    pending.add(1, zerror, "a", None)
    pending.add(2, error, "a", None)
    pending.on_reply(_rep(1, "a", wire.ZERROR, ["NoSuchActor", "gone"]), from_a)
    pending.on_reply(_rep(2, "a", wire.ERROR, ["ValueError", "bad", "tb", "ValueError"]), from_a)
    with pytest.raises(NoSuchActor, match="gone"):
        zerror.get(timeout=0)
    with pytest.raises(RemoteError):
        error.get(timeout=0)


def test_calls_fail_at_their_deadline_and_when_their_node_goes_down(calls):
    pending, _, _, _, _ = calls
    late, on_b, scatter = (
        AsyncResult(1, 10.0),
        AsyncResult(2, None),
        ScatterResult(3, {"x": "b", "y": "a"}, 99.0, None, True, pending.forget),
    )
    pending.add(1, late, "a", 10.0)
    pending.add(2, on_b, "b", None)
    pending.add(3, scatter, "", 99.0)
    pending.expire(now=11.0)
    with pytest.raises(CallTimeout, match="n-a"):
        late.get(timeout=0)
    pending.node_down("b", NodeDown("b is gone"), spared=set())
    with pytest.raises(NodeDown):
        on_b.get(timeout=0)
    assert list(pending.table) == [3]  # the scatter waits for a's actor only


def test_a_scatter_reply_must_name_its_actor(calls):
    pending, _, stats, from_a, _ = calls
    scatter = ScatterResult(4, {"x": "a"}, 99.0, None, True, pending.forget)
    pending.add(4, scatter, "", 99.0)
    pending.on_reply(_rep(4, "a", value="no actor id"), from_a)
    assert stats["dropped_bad_frames"] == 1
    pending.on_reply(_rep(4, "a", value=["x", 42]), from_a)
    assert list(scatter) == [42]


def test_the_roster_tells_members_apart_by_their_connections():
    roster = Roster("me", "me-node")
    member, routing = _member(roster, "a")
    assert roster.sender(routing, None) is member
    assert roster.sender(routing[:PREFIX] + b"\x00\x00\x00\x09", None) is member  # another of a's
    assert roster.sender(b"z" + bytes(15), None) is None
    assert roster.routing_id("tcp://x:1")[:PREFIX] == roster.routing_id("tcp://x:1")[:PREFIX]
    assert roster.routing_id("tcp://x:1")[:PREFIX] != roster.routing_id("tcp://y:1")[:PREFIX]
    assert (roster.label("me"), roster.label("a"), roster.label("gone")) == (
        "me-node",
        "n-a",
        "gone",
    )
    roster.release_prefix(member)
    assert roster.sender(routing, None) is None


def test_directory_news_numbers_each_change_and_keeps_the_directory():
    published: list[list[Any]] = []
    directory = Directory()
    news = DirectoryNews("me", "b00t", directory, lambda msg, timeout: published.append(msg))
    news.announce("+", "actor-1", "T")
    news.announce("-", "actor-1", "T")
    assert [msg[4:6] for msg in published] == [[1, "+"], [2, "-"]]
    assert news.last_seq() == 2 and directory.actors == {}


def test_messaging_alone_sends_a_reply_that_pending_calls_match():
    """Where a reply leaves (``Messaging.reply``) and where it is matched
    (``PendingCalls.on_reply``), wired by hand: a frame to this node itself is
    received at once, so no socket is needed."""
    roster = Roster("me", "me-node")
    stats = {"messages_out": 0, "late_replies": 0}
    pending = PendingCalls(roster, stats)
    codec = wire.Codec()
    received: list[list[Any]] = []
    shared = Shared(
        node_id="me", boot="b00t", name="me-node",
        roster=roster, pending=pending, stats=stats,
        sockets=Sockets(), life=Lifecycle(state="running"), loop=LoopThread("unused"),
        codec=codec, directory=Directory(),
    )  # fmt: skip
    messaging = Messaging(
        shared,
        make_proxy=lambda actor_id, name, node_id: None,  # no proxies travel here
        on_frame=lambda frame: received.append(codec.decode(frame)),
        check_running=lambda nested: None,
        max_message_size=wire.DEFAULT_MAX_MESSAGE_SIZE,
    )
    result = AsyncResult(11, None)
    pending.add(11, result, "me", None)
    messaging.reply("me", 11, wire.OK, {"answer": 42}, None)
    assert stats["messages_out"] == 1 and received[0][1] == wire.REP
    pending.on_reply(received[0])  # from this node itself: no connection to check
    assert result.get(timeout=0) == {"answer": 42}


def _held_stats() -> dict[str, int]:
    return dict.fromkeys(("held_early", "held_replayed", "held_expired", "dropped_stale"), 0)


def test_frames_are_held_only_for_a_joining_node_and_given_back_in_arrival_order():
    stats = _held_stats()
    frames = HeldFrames(stats)
    joiner = Roster("j", "joiner").routing_id("tcp://me:1")
    stranger = Roster("s", "stranger").routing_id("tcp://me:1")
    assert not frames.hold(joiner, b"early", now=0.0)  # nobody is expected yet
    frames.expect(joiner[:PREFIX], until=2.0)
    # Another connection of the same node (a program thread's) has the same prefix.
    thread = joiner[:PREFIX] + b"\x00\x00\x00\x09"
    assert frames.hold(joiner, b"one", now=0.5) and frames.hold(thread, b"two", now=0.6)
    assert not frames.hold(stranger, b"x", now=0.6)
    assert not frames.hold(joiner, b"late", now=2.0)  # the join's knock is over
    assert frames.release(joiner[:PREFIX]) == [(joiner, b"one"), (thread, b"two")]
    assert frames.release(joiner[:PREFIX]) == [] and len(frames) == 0
    assert not frames.hold(joiner, b"after", now=0.7)  # a member now: admitted, not held
    assert stats == {"held_early": 2, "held_replayed": 2, "held_expired": 0, "dropped_stale": 0}


def test_held_frames_are_bounded_per_node_and_in_all_and_expire_as_stale(monkeypatch):
    monkeypatch.setattr(held, "MAX_HELD", 100)
    stats = _held_stats()
    frames = HeldFrames(stats)
    routings = [Roster(f"n{i}", "n").routing_id("tcp://me:1") for i in range(3)]
    for routing in routings:
        frames.expect(routing[:PREFIX], until=2.0)
    kept = [sum(frames.hold(r, b"f", now=0.0) for _ in range(80)) for r in routings]
    assert kept == [held.MAX_HELD_PER_PREFIX, 100 - held.MAX_HELD_PER_PREFIX, 0]
    assert frames.expire(now=1.9) == 0
    assert frames.expire(now=2.0) == 100 and len(frames) == 0
    assert frames.release(routings[0][:PREFIX]) == []
    assert stats == {
        "held_early": 100,
        "held_replayed": 0,
        "held_expired": 100,
        "dropped_stale": 100,
    }
    # And in bytes: a big frame that would not fit is dropped, the small ones kept.
    monkeypatch.setattr(held, "MAX_HELD_BYTES", 10)
    frames.expect(routings[0][:PREFIX], until=4.0)
    assert frames.hold(routings[0], b"x" * 6, now=3.0)
    assert not frames.hold(routings[0], b"x" * 5, now=3.0)
    assert frames.hold(routings[0], b"x" * 4, now=3.0)
