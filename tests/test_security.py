"""A cluster secret: CURVE on every socket, and only holders of the secret are members.

Real nodes on loopback, no mocks. Keys come from the secret through scrypt salted
with the cluster name (``zcell._transport.security.derive_keys``); every member holds the same
CURVE keypair, and each node's ZAP handler admits only clients presenting it.
Strangers are shown out at the ZeroMQ handshake, below the frame layer: not one
of their frames reaches a node's decoder, so they are not even counted as bad
frames. Raw pyzmq sockets play the strangers that do not run zcell at all; their
socket monitors tell when the handshake has failed, which is what the tests wait
on instead of sleeping.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq
from conftest import SLOW, start_zcell_node, wait_until
from zcell_test_actors import Echo
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from zcell import Node
from zcell._transport.security import ClusterKeys, ZapHandler, derive_keys, role_of
from zcell._wire import F_NOWAIT, HELLO, PROTOCOL_VERSION, REQ, Codec

SECRET = "correct horse battery staple"
OTHER_SECRET = "incorrect horse"

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

HANDSHAKE_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
}


def unique_cluster() -> str:
    return f"sec-{uuid.uuid4().hex[:8]}"


def member_names(node: Node) -> set[str]:
    return {m["name"] for m in node.nodes()}


def intruder_frames(cluster: str, actor_id: str) -> list[bytes]:
    """A well-formed HELLO (a node without a secret knocks back on the inbox it
    claims) followed by a fire-and-forget REQ to ``actor_id``'s ``echo``."""
    codec = Codec()
    nowhere = "tcp://127.0.0.1:9"
    info = {
        "id": f"intruder-{uuid.uuid4().hex[:6]}",
        "boot": "b0075",
        "name": "intruder",
        "cluster": cluster,
        "inbox": nowhere,
        "pub": nowhere,
        "hb": nowhere,
    }
    hello = codec.encode([PROTOCOL_VERSION, HELLO, info, "c" * 32, ""])
    request = codec.encode(
        [
            PROTOCOL_VERSION,
            REQ,
            1,
            info["id"],
            info["boot"],
            1,
            5000,
            actor_id,
            "echo",
            {"value": "pwned"},
            F_NOWAIT,
            None,
            None,
        ]
    )
    return [hello, request]


@contextmanager
def raw_dealer(endpoint: str, keys: tuple[bytes, bytes, bytes] | None) -> Iterator[zmq.Socket]:
    """A plain pyzmq DEALER (own context); ``keys``: (server key, public, secret)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def send_and_wait_for_handshake(sock: zmq.Socket, endpoint: str, frames: list[bytes]) -> int:
    """Connect, queue ``frames``, and return the first handshake verdict the socket sees."""
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        for frame in frames:
            sock.send(frame)
        deadline = time.monotonic() + 5 * SLOW
        while time.monotonic() < deadline:
            if monitor.poll(100):
                event = recv_monitor_message(monitor)["event"]
                if event in HANDSHAKE_FAILED or event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return int(event)
        raise AssertionError("no handshake verdict within 5 s")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


# ----------------------------------------------------------------------------- keys


def test_keys_are_scrypt_of_the_secret_salted_with_the_cluster_and_deterministic():
    keys = derive_keys(SECRET, "prod")
    expected = hashlib.scrypt(
        SECRET.encode(), salt=b"zcell-curve:prod", n=2**14, r=8, p=1, dklen=32
    )
    assert z85.decode(keys.secret) == expected
    assert keys.public == zmq.curve_public(keys.secret)
    assert len(keys.public) == len(keys.secret) == 40  # z85
    assert keys.domain == b"prod"
    assert derive_keys(SECRET, "prod") == keys  # every member derives the same pair
    assert derive_keys(SECRET, "staging").public != keys.public  # salted by the cluster
    assert derive_keys(OTHER_SECRET, "prod").public != keys.public
    assert keys.secret.decode() not in repr(keys)
    with pytest.raises(ValueError):
        derive_keys("", "prod")


def test_sockets_that_bind_are_curve_servers_and_sockets_that_connect_are_clients():
    assert [role_of(k) for k in (zmq.ROUTER, zmq.XPUB, zmq.PUB)] == ["server"] * 3
    assert [role_of(k) for k in (zmq.DEALER, zmq.SUB)] == ["client"] * 2
    with pytest.raises(ValueError):
        role_of(zmq.PAIR)


def test_the_zap_handler_admits_only_the_cluster_key_and_counts_refusals():
    keys = derive_keys(SECRET, "prod")
    stats = {"refused_auth": 0}
    zap = ZapHandler(None, None, keys, stats)  # answer() touches no socket
    envelope = [b"peer", b""]

    def ask(*, version=b"1.0", domain=b"prod", mechanism=b"CURVE", key=keys.public_raw):
        request = [version, b"7", domain, b"10.0.0.9", b"", mechanism, key]
        return zap.answer([*envelope, *request])

    assert ask() == [*envelope, b"1.0", b"7", b"200", b"OK", b"member", b""]
    stranger = derive_keys(OTHER_SECRET, "prod").public_raw
    for refused in (
        ask(key=stranger),
        ask(key=z85.decode(zmq.curve_keypair()[0])),
        ask(domain=b"staging"),
        ask(mechanism=b"PLAIN"),
        ask(version=b"2.0"),
    ):
        assert refused[2:5] == [b"1.0", b"7", b"400"]
        assert refused[6:] == [b"", b""]  # no user id, no metadata
    assert zap.answer([*envelope, b"1.0"])[4] == b"400"  # malformed: still answered
    assert zap.answer([b"no envelope"]) is None
    assert stats["refused_auth"] == 6


# ----------------------------------------------------------------------------- members


def test_a_friend_with_the_same_secret_joins_over_mdns_and_every_socket_is_encrypted(make_node):
    cluster = unique_cluster()
    a = make_node(
        "a", cluster=cluster, secret=SECRET, actors=[Echo], heartbeat=0.2, discovery="mdns"
    )
    b = make_node(
        "b", cluster=cluster, secret=SECRET, actors=[Echo], heartbeat=0.2, discovery="mdns"
    )
    for node in (a, b):
        node.wait_for(nodes=2, timeout=10 * SLOW)
    on_a, on_b = b.spawn(Echo, on="a"), a.spawn(Echo, on="b")
    assert b.lookup(on_a.id).send.echo(value=[1, "x"]) == [1, "x"]  # DEALER -> ROUTER
    assert a.lookup(on_b.id).send.echo(value=b"\x00") == b"\x00"
    wait_until(lambda: len(a.actors(Echo)) == 2, 5, "a to see both actors (XPUB -> SUB)")
    assert sorted(a.lookup(on_a.id).scatter.echo(value=7, timeout=5 * SLOW)) == [7, 7]
    # Membership lives on heartbeats (encrypted PUB, in its own thread): still
    # members after many heartbeat periods.
    time.sleep(1.0)
    assert member_names(a) == member_names(b) == {"a", "b"}
    for node in (a, b):
        sockets = [s.raw for s in node._sockets.ctx.sockets if not s.closed]
        assert len(sockets) >= 5  # ZAP, inbox, XPUB, SUB, a DEALER
        tcp = [s for s in sockets if s.getsockopt(zmq.MECHANISM) != zmq.NULL]
        assert len(tcp) == len(sockets) - 1  # every one but the inproc ZAP socket
        assert all(s.getsockopt(zmq.MECHANISM) == zmq.CURVE for s in tcp)
        assert node._sockets.inbox.raw.getsockopt(zmq.CURVE_SERVER) == 1
        assert node.statistics()["refused_auth"] == 0
        # The mDNS ad says only that a secret is in use: no key, no fingerprint.
        txt = {k.decode(): (v or b"").decode() for k, v in node._disc._info.properties.items()}
        assert txt["secure"] == "1"
        assert set(txt) == {
            "cluster",
            "id",
            "name",
            "inbox",
            "pub",
            "hb",
            "secure",
            "proto",
        }
        keys: ClusterKeys = node._curve
        text = " ".join(txt.values())
        for leak in (keys.public.decode(), keys.public_raw.hex(), keys.secret.decode()):
            assert leak[:8] not in text


def test_strangers_never_become_members_in_either_direction(make_node):
    """Another secret, no secret, or the same secret in another cluster: in both
    directions their handshakes fail, so nothing they send is even decoded."""
    cluster = unique_cluster()
    stranger = make_node("stranger", cluster=cluster, secret=OTHER_SECRET, actors=[Echo])
    plain = make_node("plain", cluster=cluster, actors=[Echo])
    home = make_node(
        "home",
        cluster=cluster,
        secret=SECRET,
        actors=[Echo],
        peers=[stranger.endpoints["inbox"], plain.endpoints["inbox"]],
    )
    inbox = [home.endpoints["inbox"]]
    knockers = [
        make_node("stranger2", cluster=cluster, secret=OTHER_SECRET, peers=inbox),
        make_node("plain2", cluster=cluster, peers=inbox),
        make_node("elsewhere", cluster=cluster + "-b", secret=SECRET, peers=inbox),
    ]
    friend = make_node("friend", cluster=cluster, secret=SECRET, peers=inbox)
    friend.wait_for(nodes=2, timeout=10 * SLOW)
    # Knocks repeat every second: give every one of them two more rounds.
    time.sleep(2.2 * SLOW)
    assert member_names(home) == {"home", "friend"}
    assert member_names(friend) == {"home", "friend"}
    for other in (stranger, plain, *knockers):
        assert member_names(other) == {other.name}, other.name
    stats = home.statistics()
    # A HELLO of another cluster that got through would count as dropped_stale:
    # these never got past the handshake.
    assert stats["dropped_stale"] == 0
    assert stats["dropped_bad_frames"] == 0


def test_a_raw_socket_without_the_keys_gets_nothing_processed(make_node):
    cluster = unique_cluster()
    plain = make_node("plain", cluster=cluster, actors=[Echo])
    home = make_node("home", cluster=cluster, secret=SECRET, actors=[Echo])
    friend = make_node("friend", cluster=cluster, secret=SECRET, peers=[home.endpoints["inbox"]])
    friend.wait_for(nodes=2, timeout=10 * SLOW)

    # Control: without a secret these very frames get through and are decoded
    # (well-formed); the REQ is dropped only because its sender never answered
    # the knock on the inbox it claims (tests/test_stranger.py).
    exposed = plain.spawn(Echo)
    with raw_dealer(plain.endpoints["inbox"], None) as sock:
        verdict = send_and_wait_for_handshake(
            sock, plain.endpoints["inbox"], intruder_frames(cluster, exposed.id)
        )
        assert verdict == zmq.EVENT_HANDSHAKE_SUCCEEDED
        wait_until(
            lambda: plain.statistics()["dropped_stale"] == 1, 5, "the plain node to read both"
        )
        assert plain.statistics()["dropped_bad_frames"] == 0

    guarded = friend.spawn(Echo, on="home")
    stranger = derive_keys(OTHER_SECRET, cluster)
    elsewhere = derive_keys(SECRET, cluster + "-b")
    home_public = home._curve.public
    random_public, random_secret = zmq.curve_keypair()
    # What libzmq reports for the plain and the wrong-server-key clients varies
    # (NO_DETAIL or PROTOCOL); the one that knows the cluster's public key but not
    # its secret key gets as far as ZAP, which refuses it (AUTH).
    attempts = {
        "no keys": (None, HANDSHAKE_FAILED),
        "wrong client keys": (
            (home_public, random_public, random_secret),
            {zmq.EVENT_HANDSHAKE_FAILED_AUTH},
        ),
        "another secret": ((stranger.public, stranger.public, stranger.secret), HANDSHAKE_FAILED),
        "same secret, other cluster": (
            (elsewhere.public, elsewhere.public, elsewhere.secret),
            HANDSHAKE_FAILED,
        ),
    }
    for what, (keys, expected) in attempts.items():
        with raw_dealer(home.endpoints["inbox"], keys) as sock:
            verdict = send_and_wait_for_handshake(
                sock, home.endpoints["inbox"], intruder_frames(cluster, guarded.id)
            )
        assert verdict in expected, what

    stats = home.statistics()
    assert stats["refused_auth"] == 1  # only the client that knew the public key got to ZAP
    assert stats["dropped_bad_frames"] == stats["dropped_stale"] == 0
    assert stats["members"] == 2
    assert friend.lookup(guarded.id).send.count() == 0  # the handler never ran
    assert member_names(home) == {"home", "friend"}


def test_the_secret_can_come_from_the_ZCELL_SECRET_environment_variable(make_node, monkeypatch):
    cluster = unique_cluster()
    home = make_node("home", cluster=cluster, secret=SECRET, actors=[Echo])
    monkeypatch.setenv("ZCELL_SECRET", SECRET)
    from_env = make_node("env", cluster=cluster, peers=[home.endpoints["inbox"]])
    assert from_env.secret == SECRET
    assert from_env._curve == home._curve
    from_env.wait_for(nodes=2, timeout=10 * SLOW)
    ref = from_env.spawn(Echo, on="home")
    assert ref.send.echo(value="via env") == "via env"


def test_zcell_node_secret_file_with_surrounding_whitespace_joins_a_node_with_the_secret(
    make_node, procs, tmp_path
):
    cluster = unique_cluster()
    home = make_node("home", cluster=cluster, secret=SECRET, actors=[Echo])
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"\n  \t{SECRET} \n\n")
    start_zcell_node(
        procs,
        "cli",
        "--cluster",
        cluster,
        "--peer",
        home.endpoints["inbox"],
        "--secret-file",
        str(secret_file),
    )
    home.wait_for(nodes=2, timeout=10 * SLOW)
    ref = home.spawn(Echo, on="cli")
    assert ref.send.echo(value="over curve") == "over curve"
    assert home.statistics()["refused_auth"] == 0
