"""Hostile bytes at a node's inbox: counted and dropped, never raised, never a blow-up.

The decoder alone is fuzzed with Hypothesis in tests/test_wire.py; here the bytes
go through real sockets into a running node, from raw pyzmq DEALERs that speak no
zcell at all. Where each kind of frame lands (``Node._read_inbox``,
``Node._on_frame``, ``Node._admit``; docs/protocol.md sections 9 and 10):

- counted in ``dropped_bad_frames``: random bytes, empty frames, truncated frames;
  msgpack of the wrong shape (version, kind, length, field types); msgpack tricks
  (nesting far too deep, lengths claiming gigabytes, unknown extension types,
  timestamps, trailing bytes, strings that are not UTF-8); a multipart message (the
  ROUTER sees something other than [identity, frame]; counted once per message);
  a frame over ``max_message_size`` but within ZeroMQ's 1 KiB of slack;
- counted in ``dropped_stale``: well-formed ``REQ``, ``SCATTER`` and ``CTRL`` from a
  non-member, and a well-formed ``HELLO`` of another cluster;
- counted in ``late_replies``: a well-formed ``REP`` that nobody waits for;
- ignored (only ``messages_in`` counts them): well-formed ``HEARTBEAT``,
  ``DIRECTORY``, ``LEAVING`` and ``LEFT`` from a non-member;
- never seen by the node: a message over ``max_message_size + 1 KiB``; ZeroMQ
  (``MAXMSGSIZE``) drops the connection on reading its size.

(Without a secret a well-formed ``HELLO`` of the node's own cluster makes the node
knock back on the inbox it claims, and the sender can join as itself if it answers:
that is what ``Node(secret=...)`` is for; see tests/test_security.py and
tests/test_stranger.py.)
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
import zmq
from conftest import SLOW, child_env, join_target_node, wait_until
from zcell_test_actors import Echo
from zmq.utils.monitor import recv_monitor_message

from zcell import NoNodeForType, SerializationError
from zcell._wire import (
    CTRL,
    DIRECTORY,
    EXT_PROXY,
    F_NOWAIT,
    HEARTBEAT,
    HELLO,
    LEAVING,
    LEFT,
    PROTOCOL_VERSION,
    REP,
    REQ,
    SCATTER,
    WELCOME,
    Codec,
)
from zcell.errors import ProtocolError

V = PROTOCOL_VERSION
SEED = 20240611
MIB = 1024 * 1024


def unique_cluster() -> str:
    return f"hostile-{uuid.uuid4().hex[:8]}"


@contextmanager
def raw_dealers(endpoint: str, n: int = 1) -> Iterator[list[zmq.Socket]]:
    """Plain pyzmq DEALERs in a context of their own, connected to ``endpoint``."""
    ctx = zmq.Context()
    socks = []
    try:
        for _ in range(n):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndtimeo = int(10_000 * SLOW)  # a node that stops reading fails the test
            sock.connect(endpoint)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


@contextmanager
def monitored_dealer(endpoint: str) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A raw DEALER and its socket monitor, attached before it connects."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = int(10_000 * SLOW)
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        yield sock, monitor
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


def wait_for_event(monitor: zmq.Socket, wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        if monitor.poll(50) and recv_monitor_message(monitor)["event"] == wanted:
            return
    raise AssertionError(f"no socket event {wanted!r} within {timeout * SLOW}s")


def is_bad(frame: bytes) -> bool:
    try:
        Codec(lambda *ref: ref).decode(frame)
    except ProtocolError:
        return True
    return False


def vm_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {
            line.split(":")[0]: int(line.split()[1])
            for line in f
            if line.startswith(("VmRSS:", "VmHWM:"))
        }


# ----------------------------------------------------------------------------- frames

STRANGER = "0123456789abcdef"  # a node id that is nobody's
INFO = {
    "id": STRANGER,
    "boot": "deadbeef",
    "name": "stranger",
    "cluster": "not-this-cluster",
    "inbox": "tcp://127.0.0.1:9",
    "pub": "tcp://127.0.0.1:9",
    "hb": "tcp://127.0.0.1:9",
}


def request(kind: int = REQ, kwargs: object = None, rid: int = 1) -> list:
    return [
        V,
        kind,
        rid,
        STRANGER,
        "deadbeef",
        7,
        5000,
        "some-actor",
        "echo",
        {"value": 1} if kwargs is None else kwargs,
        F_NOWAIT,
        None,
        None,
    ]


def packed(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def wrong_schema() -> list[bytes]:
    """Valid msgpack, but not a zcell message (each fails ``wire.check``)."""
    shapes: list[object] = [
        None,
        True,
        0,
        -1,
        1.5,
        "text",
        b"bytes",
        {},
        {"version": 1},
        [],
        [V],
        [V, None],
        [V + 1, *request()[1:]],  # another protocol version
        [True, *request()[1:]],  # a boolean is not a version
        [V, 0],
        [V, 99],
        [V, "REQ"],
        [V, REQ],
        [V, REQ, *[0] * 11],
        request()[:-1],
        [*request(), None],  # wrong length
        request(kwargs={1: 2}),
        request(kwargs=[1]),  # kwargs keys / type
        [*request()[:11], "plain data as origin", None],
        [*request()[:12], [1, 2]],  # seen ids must be str
        [V, REQ, "1", *request()[3:]],  # rid a str
        [V, REP, 1, STRANGER],
        [V, REP, "1", STRANGER, 0],
        [V, REP, 1, STRANGER, 0, 1, 2],
        [V, HELLO, {"id": "x"}],
        [V, HELLO, [INFO]],
        [V, HELLO, dict(INFO, id=5)],
        [V, WELCOME, INFO, 1, [["a"]], []],
        [V, WELCOME, INFO, 1, [], [{"id": 1}]],
        [V, CTRL, 1, STRANGER, "b", 100, "spawn", ["zcell_side_effect_actors.Intruder"]],
        [V, CTRL, 1, STRANGER, "b", 100, 5, {}],
        [V, HEARTBEAT, STRANGER, "b", "1", 0, 0],
        [V, DIRECTORY, STRANGER, "b", 1, "*", ["a", "T"]],
        [V, LEFT, 5, "b"],
        [V, LEAVING, STRANGER],
    ]
    tricks = [
        packed(request()) + b"\x00",  # trailing bytes
        b"\x91" * 200_000 + b"\xc0",  # nesting far beyond the limit
        b"\xdd\xff\xff\xff\xff" + b"\x01" * 8,  # array32 claiming 4G items
        b"\xdf\xff\xff\xff\xff" + b"\x01" * 8,  # map32 claiming 4G pairs
        b"\xdb\xff\xff\xff\xff" + b"abc",  # str32 claiming 4 GiB
        b"\xc6\x7f\xff\xff\xff" + b"abc",  # bin32 claiming 2 GiB
        b"\xa2\xff\xfe",  # a str that is not UTF-8
        b"\xc1",  # the reserved byte
        packed(request(kwargs={"x": msgpack.ExtType(5, b"code")})),  # unknown ext type
        packed(request(kwargs={"x": msgpack.ExtType(EXT_PROXY, packed([1, 2]))})),
        packed(request(kwargs={"x": msgpack.ExtType(EXT_PROXY, b"\xc1")})),
        packed(request(kwargs={"t": msgpack.Timestamp(0)})),  # timestamps refused
    ]
    return [packed(shape) for shape in shapes] + tricks


def well_formed_from_a_stranger(rng: random.Random) -> dict[str, list[bytes]]:
    """Frames that decode fine, grouped by the counter they land in."""
    codec = Codec(lambda *ref: ref)
    big = 10**15  # far above any request id the node itself uses
    return {
        "dropped_stale": [codec.encode(request(rid=big + i)) for i in range(200)]
        + [codec.encode(request(SCATTER, rid=big + i)) for i in range(100)]
        + [
            codec.encode([V, CTRL, big + i, STRANGER, "b", 1000, "snapshot", {}])
            for i in range(100)
        ]
        + [codec.encode([V, HELLO, INFO, "n" * 32, ""]) for _ in range(100)],
        "late_replies": [codec.encode([V, REP, big + i, STRANGER, 0, "late"]) for i in range(200)],
        "ignored": [codec.encode([V, HEARTBEAT, STRANGER, "b", 1, 0, 0]) for _ in range(100)]
        + [codec.encode([V, DIRECTORY, STRANGER, "b", 1, "+", ["a", "T"]]) for _ in range(100)]
        + [codec.encode([V, rng.choice((LEAVING, LEFT)), STRANGER, "b"]) for _ in range(100)],
    }


def malformed(rng: random.Random) -> list[bytes]:
    """9000 frames, each malformed."""
    codec = Codec(lambda *ref: ref)
    valid = [
        codec.encode(request(kwargs={"value": "x" * 50, "n": [1, 2.5, None, b"\x00"]})),
        codec.encode([V, HELLO, INFO, "n" * 32, ""]),
        codec.encode([V, WELCOME, INFO, 3, [["a" * 32, "mod.T"]], [INFO], ""]),
        codec.encode([V, REP, 1, STRANGER, 0, {"k": [1, 2, 3]}]),
        codec.encode([V, CTRL, 1, STRANGER, "b", 100, "spawn", {"type": "x.Y", "id": "i"}]),
    ]
    frames = [rng.randbytes(rng.randint(1, 300)) for _ in range(4000)]
    for _ in range(2500):
        whole = rng.choice(valid)
        frames.append(whole[: rng.randrange(len(whole))])  # includes b"" (cut at 0)
    frames += [b""] * 500
    shapes = wrong_schema()
    frames += [shapes[i % len(shapes)] for i in range(2000)]
    return frames


# ----------------------------------------------------------------------------- floods


@pytest.mark.timeout(60)
def test_ten_thousand_hostile_frames_are_counted_and_dropped_while_calls_keep_working(mesh):
    rng = random.Random(SEED)
    target, friend = mesh(2, actors=[Echo])
    ref = friend.spawn(Echo, on=target.name)
    bad = malformed(rng)
    assert all(is_bad(frame) for frame in bad)
    good = well_formed_from_a_stranger(rng)
    assert not any(is_bad(frame) for group in good.values() for frame in group)
    multipart = [
        [rng.randbytes(rng.randint(0, 50)) for _ in range(rng.randint(2, 5))] for _ in range(500)
    ]
    # Every part of a multipart message is a frame (a port coalesces its frames
    # that way), checked and counted on its own.
    assert all(is_bad(part) for message in multipart for part in message)
    # One message per entry; singles are frames, lists are multipart messages.
    messages: list[bytes | list[bytes]] = [*bad, *multipart]
    messages += [frame for group in good.values() for frame in group]
    rng.shuffle(messages)
    assert len(messages) >= 10_000
    before = target.statistics()

    calls = 0
    with raw_dealers(target.endpoints["inbox"], 4) as socks:
        for i, message in enumerate(messages):
            sock = socks[i % len(socks)]
            if isinstance(message, list):
                sock.send_multipart(message)
            else:
                sock.send(message)
            if i % 500 == 499:  # and meanwhile the node keeps serving
                assert ref.send.echo(value=i, timeout=5 * SLOW) == i
                calls += 1

        expected = {
            "dropped_bad_frames": len(bad) + sum(len(message) for message in multipart),
            "dropped_stale": len(good["dropped_stale"]),
            "late_replies": len(good["late_replies"]),
        }

        def delta() -> dict[str, int]:
            now = target.statistics()
            return {key: now[key] - before[key] for key in expected}

        wait_until(
            lambda: all(delta()[k] >= n for k, n in expected.items()),
            20,
            f"the counters to reach {expected} (at {delta()})",
        )
    assert delta() == expected
    assert calls == len(messages) // 500
    assert ref.send.echo(value="after") == "after"
    assert target.statistics()["members"] == friend.statistics()["members"] == 2
    assert ref.send.count() == calls + 1  # only the friend's calls ran the handler


# ----------------------------------------------------------------------------- size limits


def test_every_socket_refuses_oversized_messages_and_so_does_the_decoder(make_node):
    limit = 64 * 1024
    target = make_node("target", actors=[Echo], max_message_size=limit)
    friend = make_node("friend", peers=[target.endpoints["inbox"]], max_message_size=limit)
    friend.wait_for(nodes=2, timeout=10 * SLOW)
    ref = friend.spawn(Echo, on="target")
    for node in (target, friend):
        sockets = [s.raw for s in node._sockets.ctx.sockets if not s.closed]
        assert {s.getsockopt(zmq.MAXMSGSIZE) for s in sockets} == {limit + 1024}

    with pytest.raises(SerializationError, match="max_message_size"):
        ref.send.echo(value=b"x" * limit)  # refused at the sender, nothing sent

    before = target.statistics()
    with monitored_dealer(target.endpoints["inbox"]) as (sock, monitor):
        # Over max_message_size but within ZeroMQ's slack: the decoder refuses it.
        sock.send(b"\x00" * (limit + 512))
        wait_until(
            lambda: target.statistics()["dropped_bad_frames"] == before["dropped_bad_frames"] + 1,
            5,
            "the decoder to refuse the frame",
        )
        # Over MAXMSGSIZE: ZeroMQ drops the connection before the frame exists.
        sock.send(b"\x00" * (limit + 1025))
        wait_for_event(monitor, zmq.EVENT_DISCONNECTED, 5)
    assert target.statistics()["dropped_bad_frames"] == before["dropped_bad_frames"] + 1
    assert ref.send.echo(value="still here") == "still here"


@pytest.mark.timeout(60)
def test_a_200_MB_frame_is_refused_without_a_memory_blow_up_and_the_node_keeps_serving(
    make_node, echo_target
):
    child, inbox, me, ref, _ = echo_target
    assert ref.send.echo(value=1) == 1
    before = vm_kib(child.pid)

    huge = bytes(200 * MIB)
    with monitored_dealer(inbox) as (sock, monitor):
        wait_for_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED, 5)
        started = time.monotonic()
        sock.send(huge, copy=False)
        wait_for_event(monitor, zmq.EVENT_DISCONNECTED, 20)
        refused_in = time.monotonic() - started
    del huge

    after = vm_kib(child.pid)
    grew_rss = (after["VmRSS"] - before["VmRSS"]) / 1024
    grew_peak = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(
        f"node RSS {before['VmRSS'] / 1024:.1f} -> {after['VmRSS'] / 1024:.1f} MiB "
        f"(peak {before['VmHWM'] / 1024:.1f} -> {after['VmHWM'] / 1024:.1f} MiB); "
        f"connection dropped {refused_in * 1000:.0f} ms after the send"
    )
    assert grew_rss < 20 and grew_peak < 20  # MiB, against a 200 MiB frame
    assert ref.send.echo(value=2) == 2
    assert me.statistics()["members"] == 2


# ----------------------------------------------------------------------------- spawning


@pytest.mark.timeout(60)
def test_a_remote_spawn_names_only_registered_types_and_never_imports_code(
    make_node, procs, tmp_path: Path, monkeypatch
):
    marker = tmp_path / "imported"
    monkeypatch.setenv("ZCELL_TEST_IMPORT_MARKER", str(marker))
    # The marker works: importing the module leaves it.
    subprocess.run(
        [sys.executable, "-c", "import zcell_side_effect_actors"],
        env=child_env(),
        check=True,
        timeout=30 * SLOW,
    )
    assert marker.read_text().startswith("imported by ")
    marker.unlink()

    cluster = unique_cluster()
    child, inbox, me = join_target_node(make_node, procs, cluster)
    names = [
        "zcell_side_effect_actors.Intruder",
        "zcell_side_effect_actors:Intruder",
        "zcell_side_effect_actors",
        "os.system",
    ]
    for name in names:
        with pytest.raises(NoNodeForType, match="does not host actor type"):
            me.spawn(name, on="target")
    child.wait_for_line(
        r"refused to spawn unregistered type 'zcell_side_effect_actors\.Intruder'", 5 * SLOW
    )
    # Without on=, no node in the mesh offers the type: refused before sending.
    with pytest.raises(NoNodeForType, match="no node in the mesh hosts"):
        me.spawn("zcell_side_effect_actors.Intruder")

    assert me.spawn(Echo, on="target").send.echo(value="ok") == "ok"  # still serving
    assert not marker.exists(), "the target imported a module named in a message"
    assert "zcell_side_effect_actors" not in sys.modules


def test_frames_a_member_sends_back_on_our_connection_to_it_are_read_and_counted(mesh):
    """Nothing is expected on a node's DEALER to a member's inbox (replies come to
    its own inbox), but what comes is read in turn with the other members'
    DEALERs, counted, and never left to fill the connection's queue."""
    a, b, _ = mesh(3, actors=[Echo])
    dealer = b._run(lambda: b._membership._dealers[a.endpoints["inbox"]].raw)
    routing = dealer.getsockopt(zmq.ROUTING_ID)
    before = b.statistics()["dropped_bad_frames"]
    junk = [b"\xc1", b"not msgpack", msgpack.packb([2, 99, "x"])]

    def flood() -> None:
        for i in range(300):
            a._sockets.inbox.raw.send_multipart([routing, junk[i % 3]])

    a._run(flood)
    wait_until(
        lambda: b.statistics()["dropped_bad_frames"] - before >= 300,
        5,
        "b read and counted the 300 frames",
    )
    assert b.spawn(Echo, on=a.name).send.echo(value=1) == 1  # a is still a member
