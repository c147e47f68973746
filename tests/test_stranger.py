"""A stranger on the LAN (no secret): at most it joins as itself.

The stranger here is made of raw pyzmq sockets and msgpack frames, as in
tests/test_hostile.py: a DEALER that talks to a node's inbox, and a ROUTER it
binds to play the inbox it claims. Each test is one attack of issue 13; see
docs/security.md section 5 for what a stranger can and cannot do.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import pytest
import zmq
from conftest import SLOW, wait_until
from test_hostile import raw_dealers, unique_cluster, vm_kib
from zcell_test_actors import Echo

from zcell import _wire as wire
from zcell._wire import CTRL, F_NOWAIT, HELLO, LEAVING, LEFT, REP, REQ, WELCOME

V = wire.PROTOCOL_VERSION
HB = 0.3  # fast heartbeats: fake members are declared down within a second


def packed(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def hello(info: dict[str, Any]) -> bytes:
    """A HELLO as a stranger sends it (a challenge of its own, answering none)."""
    extra = ["5" * 16, ""][: wire.KINDS[HELLO].lengths[-1] - 3]
    return packed([V, HELLO, info, *extra])


def welcome(info: dict[str, Any], seq: int, actors: list, members: list) -> bytes:
    extra = [""][: wire.KINDS[WELCOME].lengths[-1] - 6]
    return packed([V, WELCOME, info, seq, actors, members, *extra])


def info_of(node: Any, **changes: Any) -> dict[str, Any]:
    info = dict(node._info())
    info.update(changes)
    return info


def fake_info(i: int, cluster: str, port: int) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{port}"
    return {
        "id": f"{i:016x}",
        "boot": "b00710ad",
        "name": f"fake-{i}",
        "cluster": cluster,
        "inbox": endpoint,
        "pub": endpoint,
        "hb": endpoint,
    }


@contextmanager
def stranger_inbox() -> Iterator[tuple[zmq.Socket, str]]:
    """A raw ROUTER the stranger binds: whatever a node sends it lands here."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield sock, f"tcp://127.0.0.1:{port}"
    finally:
        sock.close(linger=0)
        ctx.term()


def received(sock: zmq.Socket, seconds: float) -> list[bytes]:
    """Every frame that reaches ``sock`` within ``seconds``."""
    frames: list[bytes] = []
    deadline = time.monotonic() + seconds * SLOW
    while time.monotonic() < deadline:
        if sock.poll(20):
            frames += sock.recv_multipart()[1:]
    return frames


def delivered(node: Any, before: int, n: int) -> None:
    """Wait until the node has read ``n`` more well-formed frames."""
    wait_until(
        lambda: node.statistics()["messages_in"] >= before + n, 5, f"{n} frames at {node.name}"
    )


def open_sockets(node: Any) -> int:
    return sum(1 for sock in node._sockets.ctx.sockets if not sock.closed)


# ----------------------------------------------------------------------------- membership news


def test_a_forged_LEFT_or_LEAVING_does_not_drop_or_drain_a_member(mesh):
    target, friend = mesh(2, actors=[Echo], heartbeat=HB)
    ref = friend.spawn(Echo, on=target.name)
    before = target.statistics()["messages_in"]
    with raw_dealers(target.endpoints["inbox"]) as (sock,):
        sock.send(packed([V, LEAVING, friend.id, friend.boot]))
        sock.send(packed([V, LEFT, friend.id, friend.boot]))
        delivered(target, before, 2)
    time.sleep(3 * HB)  # longer than it takes to drop a member for good
    assert friend.id in target._members
    assert not target._members[friend.id].leaving
    assert target.statistics()["members"] == 2
    assert target.spawn(Echo, on=friend.name).send.echo(value=1) == 1
    assert ref.send.echo(value=2) == 2


def test_a_forged_WELCOME_does_not_replace_a_members_directory(mesh):
    target, friend = mesh(2, actors=[Echo], heartbeat=HB)
    ref = friend.spawn(Echo, on=friend.name)
    target.wait_for(type=Echo, timeout=5 * SLOW)
    before = target.statistics()["messages_in"]
    with raw_dealers(target.endpoints["inbox"]) as (sock,):
        sock.send(welcome(info_of(friend), 10**6, [], []))
        delivered(target, before, 1)
    time.sleep(0.2)
    assert target.directory.actors.get(ref.id) == (Echo.name, friend.id)
    assert target.select(Echo).send.echo(value="still") == "still"


def test_a_HELLO_claiming_a_member_does_not_take_it_over_or_get_its_requests(mesh):
    target, friend = mesh(2, actors=[Echo], heartbeat=HB)
    ref = target.spawn(Echo, on=friend.name)
    with stranger_inbox() as (inbox, endpoint), raw_dealers(target.endpoints["inbox"]) as (sock,):
        claim = info_of(friend, boot="0badb007", inbox=endpoint, pub=endpoint, hb=endpoint)
        before = target.statistics()["messages_in"]
        sock.send(hello(info_of(friend, boot="0badb007")))
        sock.send(hello(claim))
        delivered(target, before, 2)
        time.sleep(0.1)
        assert ref.send.echo(value="the secret payload", timeout=2) == "the secret payload"
        frames = received(inbox, 0.5)
    assert not any(b"the secret payload" in frame for frame in frames)
    member = target._members[friend.id]
    assert (member.boot, member.inbox) == (friend.boot, friend.endpoints["inbox"])


def test_one_HELLO_does_not_reveal_the_other_members(mesh):
    target, friend = mesh(2, heartbeat=HB)
    with stranger_inbox() as (inbox, endpoint), raw_dealers(target.endpoints["inbox"]) as (sock,):
        me = fake_info(1, target.cluster, 0)
        me.update(inbox=endpoint, pub=endpoint, hb=endpoint)
        sock.send(hello(me))
        frames = received(inbox, 1.0)
    assert frames, "the node answered nothing at all"
    assert not any(friend.id.encode() in f or friend.boot.encode() in f for f in frames)


def test_mdns_ads_carry_no_boot_id(make_node):
    node = make_node("adv", discovery="mdns", cluster=unique_cluster())
    props = node._disc._info.properties
    assert b"boot" not in props and node.boot.encode() not in props.values()


# ----------------------------------------------------------------------------- requests and replies


def test_a_REQ_or_CTRL_claiming_the_nodes_own_id_is_dropped(make_node):
    target = make_node("target", actors=[Echo], heartbeat=HB)
    ref = target.spawn(Echo)
    assert ref.send.echo(value=0) == 0
    before = target.statistics()["messages_in"]
    with raw_dealers(target.endpoints["inbox"]) as (sock,):
        sock.send(packed([V, CTRL, 7, target.id, target.boot, 5000, "kill", {"id": ref.id}]))
        req = [V, REQ, 8, target.id, target.boot, 1, 5000, ref.id, "echo", {}, F_NOWAIT]
        sock.send(packed([*req, None, None]))
        delivered(target, before, 2)
    time.sleep(0.2)
    assert ref.send.count() == 1  # only our own echo ran
    assert target.statistics()["dropped_forged"] == 2


def test_a_reply_from_another_connection_does_not_complete_a_call(mesh):
    target, friend = mesh(2, actors=[Echo], heartbeat=HB)
    ref = target.spawn(Echo, on=friend.name)
    result = ref.call.sleep(seconds=0.6)
    rids = list(target._pending)
    assert rids
    with raw_dealers(target.endpoints["inbox"]) as (sock,):
        # The real request id, and the first thousand a counter would use.
        for rid in [*rids, *range(1, 1000)]:
            sock.send(packed([V, REP, rid, friend.id, wire.OK, "forged"]))
        assert result.get(timeout=5 * SLOW) == 0.6


# ----------------------------------------------------------------------------- resources


def test_fake_members_at_closed_addresses_expire_and_their_sockets_close(mesh):
    target, friend = mesh(2, heartbeat=HB)
    baseline = {node.name: open_sockets(node) for node in (target, friend)}
    before = target.statistics()["messages_in"]
    with raw_dealers(target.endpoints["inbox"]) as (sock,):
        for i in range(100):
            sock.send(hello(fake_info(i, target.cluster, 1 + i)))
        delivered(target, before, 100)
    for node in (target, friend):
        wait_until(
            lambda node=node: open_sockets(node) <= baseline[node.name],
            10,
            f"{node.name}'s sockets back to {baseline[node.name]} (at {open_sockets(node)})",
        )
        assert node.statistics()["members"] == 2


def test_a_departed_peers_dealers_close_including_a_program_threads(mesh):
    first, second, third = mesh(3, actors=[Echo], heartbeat=HB)
    baseline = open_sockets(first)
    ref = first.spawn(Echo, on=third.name)
    assert ref.send.echo(value=1) == 1  # this thread's port now has a DEALER to it
    port = first._messaging._thread_ports.port
    assert third.id in port._sockets
    third.stop()
    wait_until(lambda: first.statistics()["members"] == 2, 5, "the third node to leave")
    wait_until(
        lambda: open_sockets(first) < baseline, 5, f"its DEALER to close (at {open_sockets(first)})"
    )
    time.sleep(1.5)  # knocking on its old address does not keep a socket open
    assert open_sockets(first) < baseline
    assert third.id not in port._sockets
    assert second.spawn(Echo, on=first.name).send.echo(value=2) == 2


# ----------------------------------------------------------------------------- a flood


def _flood(inbox: str, cluster: str, n: int, done: threading.Event) -> None:
    with raw_dealers(inbox, 4) as socks:
        for i in range(n):
            socks[i % 4].send(hello(fake_info(10**6 + i, cluster, 1 + i % 1000)))
        done.set()


@pytest.mark.timeout(60)
def test_ten_thousand_forged_HELLOs_neither_abort_nor_bloat_a_node_and_a_genuine_node_joins(
    make_node, echo_target
):
    child, inbox, me, ref, cluster = echo_target
    assert ref.send.echo(value=0) == 0

    done = threading.Event()
    flood = threading.Thread(target=_flood, args=(inbox, cluster, 10_000, done), daemon=True)
    flood.start()
    late = make_node("late", cluster=cluster, peers=[inbox])
    calls = 0
    while not done.is_set() or calls < 5:
        assert ref.send.echo(value=calls, timeout=5 * SLOW) == calls
        calls += 1
        time.sleep(0.05)
    flood.join(30 * SLOW)
    late.wait_for(nodes=3, timeout=10 * SLOW)
    assert late.spawn(Echo, on="target").send.echo(value="late") == "late"
    assert child.returncode is None, "the node died under the flood"
    rss = vm_kib(child.pid)["VmRSS"] / 1024
    print(
        f"node RSS after 10k forged HELLOs: {rss:.1f} MiB; fds {len(os.listdir(f'/proc/{child.pid}/fd'))}"
    )
    assert rss < 200
    assert ref.send.echo(value="after") == "after"
    assert me.statistics()["members"] == 3


# ----------------------------------------------------------------------------- joined as itself


def knock_and_answer(inbox: zmq.Socket, dealer: zmq.Socket, me: dict[str, Any]) -> list:
    """Knock as ``me`` and answer the node's challenge (docs/protocol.md §8);
    returns the WELCOME that admits us, or [] when none came within a second."""
    nonce = "7" * 32
    dealer.send(packed([V, HELLO, me, nonce, ""]))
    answered = False
    deadline = time.monotonic() + 1.0 * SLOW
    while time.monotonic() < deadline:
        if not inbox.poll(20):
            continue
        msg = msgpack.unpackb(inbox.recv_multipart()[-1], raw=False)
        if msg[1] == HELLO and msg[4] == nonce and not answered:
            dealer.send(packed([V, HELLO, me, nonce, msg[3]]))  # answer its challenge
            answered = True
        elif msg[1] == WELCOME and msg[6] == nonce:
            return msg
    return []


@contextmanager
def joined_stranger(node: Any) -> Iterator[tuple[zmq.Socket, zmq.Socket, dict[str, Any]]]:
    """A stranger that answers the knocks (protocol §8) and becomes a member as
    itself; yields (its DEALER to ``node``'s inbox, its XPUB, its info)."""
    ctx = zmq.Context()
    inbox, pub, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.XPUB), ctx.socket(zmq.DEALER)
    for sock in (inbox, pub, dealer):
        sock.linger = 0
    try:
        in_port = inbox.bind_to_random_port("tcp://127.0.0.1")
        pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
        me = fake_info(7, node.cluster, in_port)
        me.update(pub=f"tcp://127.0.0.1:{pub_port}", hb=f"tcp://127.0.0.1:{pub_port}")
        dealer.connect(node.endpoints["inbox"])
        knock_and_answer(inbox, dealer, me)
        wait_until(lambda: me["id"] in node._members, 5, "the stranger to join as itself")
        assert pub.poll(5000 * SLOW), "the node never subscribed to the stranger"
        pub.recv()
        yield dealer, pub, me
    finally:
        for sock in (inbox, pub, dealer):
            sock.close(linger=0)
        ctx.term()


def test_a_stranger_that_joined_as_itself_cannot_speak_for_another_member(mesh):
    target, friend = mesh(2, actors=[Echo], heartbeat=1.0)
    ref = friend.spawn(Echo, on=friend.name)
    target.wait_for(type=Echo, timeout=5 * SLOW)
    before = target.statistics()["dropped_forged"]
    with joined_stranger(target) as (dealer, pub, me):
        news = [V, wire.DIRECTORY, friend.id, friend.boot, 10**6, "-", [ref.id, Echo.name]]
        pub.send(packed(news))
        pub.send(packed([V, LEFT, friend.id, friend.boot]))
        dealer.send(packed([V, LEFT, friend.id, friend.boot]))
        req = [V, REQ, 9, friend.id, friend.boot, 1, 5000, ref.id, "echo", {}, F_NOWAIT]
        dealer.send(packed([*req, None, None]))
        wait_until(
            lambda: target.statistics()["dropped_forged"] >= before + 4,
            5,
            "the four forgeries to be dropped",
        )
        assert me["id"] in target._members  # it is a member: as itself
    assert friend.id in target._members
    assert target.directory.actors.get(ref.id) == (Echo.name, friend.id)
    assert ref.send.count() == 0


def test_a_stranger_that_answers_its_knocks_still_cannot_take_a_live_members_id(mesh):
    target, friend = mesh(2, actors=[Echo], heartbeat=HB)
    ref = target.spawn(Echo, on=friend.name)
    before = target.statistics()["dropped_forged"]
    with stranger_inbox() as (inbox, endpoint), raw_dealers(target.endpoints["inbox"]) as (sock,):
        claim = info_of(friend, boot="0badb007", inbox=endpoint, pub=endpoint, hb=endpoint)
        assert knock_and_answer(inbox, sock, claim) == []  # no WELCOME: refused
        assert ref.send.echo(value="the secret payload") == "the secret payload"
        frames = received(inbox, 0.3)
    assert not any(b"the secret payload" in frame for frame in frames)
    assert target.statistics()["dropped_forged"] > before
    member = target._members[friend.id]
    assert (member.boot, member.inbox) == (friend.boot, friend.endpoints["inbox"])
