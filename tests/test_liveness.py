"""Liveness and failure on loopback: nodes in this process and in child processes.

Most tests use 0.3 s heartbeats (a silent peer is down after ~0.8 s) to stay fast;
one runs the default 1 s heartbeat end to end. Child nodes are `zcell node`
processes, frozen with SIGSTOP, killed with SIGKILL or stopped with SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time

import gevent
import pytest
import zmq
from conftest import SLOW, process_state, wait_until
from zcell_test_actors import Echo

from zcell import Node, NodeDown, ProtocolError
from zcell import _wire as wire
from zcell._transport.sockets import PING_EVERY

FAST_HB = 0.3


# ---------------------------------------------------------------------------- helpers


def ids(node: Node) -> set[str]:
    return {n["id"] for n in node.nodes()}


def echo_pair(make_node):
    """Nodes a (hosting an Echo) and b joined to it, 0.3 s heartbeats; (a, b,
    a proxy of that Echo as b sees it)."""
    a = make_node("a", heartbeat=FAST_HB, actors=[Echo])
    b = make_node("b", heartbeat=FAST_HB, peers=[a.endpoints["inbox"]])
    b.wait_for(nodes=2, timeout=10 * SLOW)
    return a, b, b.spawn(Echo, on="a")


def start_child(procs, parent: Node, name: str, heartbeat: float = FAST_HB, *extra: str):
    """A `zcell node` child hosting the test actors, joined to ``parent``.

    Returns (proc, node id). The child uses static discovery (no multicast).
    """
    argv = [sys.executable, *"-m zcell node -A zcell_test_actors --no-mdns".split()]
    argv += ["--name", name, "--peer", parent.endpoints["inbox"], "--heartbeat", str(heartbeat)]
    argv += extra
    proc = procs(argv)
    node_id = proc.wait_for_line(r"zcell node \S+ \(id (\w+)", 20 * SLOW).group(1)
    proc.wait_for_line(r"^ready$", 10 * SLOW)
    wait_until(lambda: node_id in ids(parent), 10, f"{name} joins the parent")
    return proc, node_id


def outcome(result, timeout: float) -> tuple[str, float]:
    """("ok" or the exception class name, seconds from now until it was ready)."""
    start = time.monotonic()
    try:
        result.get(timeout=timeout)
        kind = "ok"
    except Exception as exc:  # noqa: BLE001 - the class is the answer
        kind = type(exc).__name__
    return kind, time.monotonic() - start


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("heartbeat", [FAST_HB, 1.0], ids=["hb0.3", "hb1.0-default"])
def test_a_silent_peer_is_declared_down_and_calls_in_flight_fail_at_once(
    make_node, procs, heartbeat
):
    kw = {} if heartbeat == 1.0 else {"heartbeat": heartbeat}  # 1.0 is the default
    parent = make_node("parent", **kw)
    child, child_id = start_child(procs, parent, "frozen", heartbeat)
    ref = parent.spawn(Echo, on="frozen")
    assert ref.send.echo(value=1) == 1
    in_flight = ref.call.sleep(seconds=60, timeout=30)

    child.send_signal(signal.SIGSTOP)  # silent: no FIN, no LEAVING, nothing
    frozen_at = time.monotonic()
    kind, _ = outcome(in_flight, 30)
    detected = time.monotonic() - frozen_at
    print(f"\nheartbeat {heartbeat}s: frozen peer declared down after {detected:.2f}s")
    assert kind == "NodeDown", kind
    # "Within about 3 heartbeats" (2.6 since the last one heard), far before the
    # call's own 30 s timeout.
    assert detected < (3 * heartbeat + 0.3) * SLOW
    assert child_id not in ids(parent)
    assert parent.actors(Echo) == []
    # New calls to it fail at once, without waiting for their timeout.
    start = time.monotonic()
    with pytest.raises(NodeDown):
        ref.send.echo(value=2, timeout=10)
    assert time.monotonic() - start < 0.5 * SLOW
    child.send_signal(signal.SIGCONT)


def test_a_graceful_stop_is_announced_and_peers_drop_the_node_at_once(make_node, procs):
    parent = make_node("parent")  # default 1 s heartbeat: silence would take ~2.6 s
    child, child_id = start_child(procs, parent, "leaver", 1.0)
    ref = parent.spawn(Echo, on="leaver")
    in_flight = ref.call.sleep(seconds=0.3, timeout=10)
    time.sleep(0.05)  # let the handler start
    child.send_signal(signal.SIGTERM)  # `zcell node` stops gracefully
    start = time.monotonic()
    gone = wait_until(lambda: child_id not in ids(parent), 5, "the leaver is dropped")
    print(f"\ngraceful stop: peer dropped after {gone:.2f}s")
    assert gone < 1.0 * SLOW
    # The handler that was running finished; its reply came back.
    assert in_flight.get(timeout=5) == 0.3
    assert parent.actors(Echo) == []
    assert child.wait(10 * SLOW) == 0
    assert time.monotonic() - start < 3 * SLOW


def test_a_restarted_node_is_a_new_member_even_on_the_same_port(make_node, procs):
    parent = make_node("parent", heartbeat=FAST_HB)
    port = free_port()
    old, old_id = start_child(procs, parent, "worker", FAST_HB, "--port", str(port))
    old_ref = parent.spawn(Echo, on="worker")
    assert old_ref.send.echo(value="old") == "old"
    in_flight = old_ref.call.sleep(seconds=60, timeout=30)

    old.kill()  # SIGKILL, then restart on the same inbox address at once
    new, new_id = start_child(procs, parent, "worker", FAST_HB, "--port", str(port))
    assert new_id != old_id

    assert outcome(in_flight, 30)[0] == "NodeDown"
    wait_until(lambda: old_id not in ids(parent), 5, "the old incarnation is gone")
    workers = [n for n in parent.nodes() if n["name"] == "worker"]
    assert [n["id"] for n in workers] == [new_id]
    assert workers[0]["endpoints"]["inbox"] == f"tcp://127.0.0.1:{port}"
    # The old actor died with its process; the new process is empty.
    assert parent.actors(Echo) == []
    with pytest.raises(NodeDown):
        old_ref.send.echo(value="stale")
    new_ref = parent.spawn(Echo, on="worker")
    assert new_ref.node_id == new_id
    assert new_ref.send.whoami()["node"] == "worker"
    assert new_ref.send.count() == 0


class _Deaf:
    """A codec wrapper that makes a node deaf to one peer (a one-way cut)."""

    def __init__(self, codec, peer_id: str) -> None:
        self._codec = codec
        self._peer = peer_id

    def __getattr__(self, name):
        return getattr(self._codec, name)

    def decode(self, frame):
        msg = self._codec.decode(frame)
        kind = msg[1]
        if kind in (wire.HELLO, wire.WELCOME):
            src = msg[2].get("id")
        elif kind in (wire.REQ, wire.SCATTER, wire.REP, wire.CTRL):
            src = msg[3]
        else:
            src = msg[2]
        if src == self._peer:
            raise ProtocolError("dropped by the test's partition")
        return msg


def test_liveness_is_first_hand_gossip_never_revives_a_peer_we_cannot_hear(make_node):
    hb = FAST_HB
    a = make_node("a", heartbeat=hb)
    b = make_node("b", heartbeat=hb, peers=[a.endpoints["inbox"]], actors=[Echo])
    c = make_node("c", heartbeat=hb, peers=[a.endpoints["inbox"]], actors=[Echo])
    for n in (a, b, c):
        n.wait_for(nodes=3, timeout=10 * SLOW)
    on_c = a.spawn(Echo, on="c")
    assert on_c.send.echo(value=1) == 1

    # Partition a <-> c (each deaf to the other); b still hears both.
    a._codec = _Deaf(a._codec, c.id)
    c._codec = _Deaf(c._codec, a.id)
    wait_until(lambda: c.id not in ids(a) and a.id not in ids(c), 3 * hb + 1, "a and c part")
    assert {a.id, c.id} <= ids(b)
    assert a.actors(Echo) == []  # c's actor left a's directory

    # Gossip: a newcomer joins through b; everyone hears of everyone (b's and d's
    # welcomes list c to a and a to c), and a and c keep knocking on each other.
    d = make_node("d", heartbeat=hb, peers=[b.endpoints["inbox"]])
    d.wait_for(nodes=4, timeout=10 * SLOW)
    end = time.monotonic() + 10 * hb
    while time.monotonic() < end:
        assert c.id not in ids(a), "gossip re-introduced a peer that a cannot hear"
        assert a.id not in ids(c), "gossip re-introduced a peer that c cannot hear"
        time.sleep(0.02)
    assert {a.id, c.id, d.id} <= ids(b)
    assert {a.id, c.id} <= ids(d)
    with pytest.raises(NodeDown):
        on_c.send.echo(value=2)

    # Heal: the knocking brings them back together.
    a._codec = a._codec._codec
    c._codec = c._codec._codec
    wait_until(lambda: c.id in ids(a) and a.id in ids(c), 5, "a and c rejoin after the heal")
    wait_until(lambda: a.actors(Echo), 5, "c's actor is back in a's directory")
    assert on_c.send.echo(value=3) == 3


def test_peers_with_different_heartbeats_never_declare_each_other_down(make_node):
    # A node judges a member by the member's own heartbeat interval (node info
    # "beat"), not its own: a 0.3 s node must not drop a 1 s one between beats.
    fast = make_node("fast", heartbeat=FAST_HB, actors=[Echo])
    slow = make_node("slow", heartbeat=1.0, peers=[fast.endpoints["inbox"]])
    for n in (fast, slow):
        n.wait_for(nodes=2, timeout=10 * SLOW)
    echo = slow.spawn(Echo, on="fast")
    start = time.monotonic()
    calls = 0
    while (now := time.monotonic()) < start + 4.0:
        assert slow.id in ids(fast), "the 0.3 s node dropped the 1 s node between its beats"
        assert fast.id in ids(slow)
        if now > start + 1.5 * calls:  # seldom: a request also counts as a sign of life
            assert echo.send.echo(value=calls, timeout=2.0) == calls
            calls += 1
        time.sleep(0.01)
    assert calls >= 3


@pytest.mark.slow
def test_a_handler_hogging_the_cpu_for_10s_does_not_get_its_node_declared_down(make_node, procs):
    parent = make_node("parent")  # default heartbeat: 1 s
    child, child_id = start_child(procs, parent, "hogger", 1.0)
    ref = parent.spawn(Echo, on="hogger")
    hog = ref.call.hog(seconds=10, timeout=30)
    end = time.monotonic() + 10.5
    while time.monotonic() < end:
        assert child_id in ids(parent), "a busy node was declared down"
        time.sleep(0.05)
    assert hog.get(timeout=10) > 0
    assert ref.send.echo(value="after") == "after"
    assert child_id in ids(parent)
    # The child noticed, and said, that its loop was blocked.
    child.wait_for_line(r"loop was blocked", 5 * SLOW)


def test_requests_that_expire_while_a_node_is_frozen_never_run(make_node, procs):
    parent = make_node("parent", heartbeat=FAST_HB)
    child, child_id = start_child(procs, parent, "sleeper", FAST_HB)
    ref = parent.spawn(Echo, on="sleeper")
    assert ref.send.echo(value=0) == 0
    assert ref.send.count() == 1

    child.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    # A signal takes effect a moment after kill() returns: a frame sent at once
    # could still be handled. Wait until the kernel shows the process stopped.
    wait_until(lambda: process_state(child.pid) == "T", 2, "the child is stopped")
    # Sent before the parent notices the silence: these reach the frozen child's
    # socket buffers and wait there.
    for i in range(5):
        ref.send.echo(value=i, nowait=True, timeout=0.3)
    calls = [ref.call.echo(value=i, timeout=0.3) for i in range(3)]
    for call in calls:
        kind, _ = outcome(call, 5)
        assert kind == "CallTimeout", kind
    assert time.monotonic() - frozen_at < 2.6 * FAST_HB, "too slow to test what we meant"
    wait_until(lambda: child_id not in ids(parent), 5, "the frozen child is declared down")
    # Well past every deadline (0.3 s) and the down threshold (0.78 s).
    time.sleep(max(0.0, frozen_at + 1.5 - time.monotonic()))
    child.send_signal(signal.SIGCONT)

    rejoined = wait_until(lambda: child_id in ids(parent), 10, "the child rejoins")
    print(f"\nfrozen child rejoined {rejoined:.2f}s after SIGCONT")
    wait_until(lambda: parent.actors(Echo), 5, "its actor is back in the directory")
    # Only the first echo ever ran: nothing sent while it was frozen.
    assert ref.send.count() == 1
    assert ref.send.echo(value="fresh") == "fresh"
    assert ref.send.count() == 2


def test_a_stop_noticed_while_the_loop_yields_admits_none_of_the_backlog(make_node):
    # The frozen-node race, made deterministic. Waking from a process stop, the
    # node's housekeeping notices it and logs; a log handler may wait (for a lock
    # that the heartbeat thread holds), and the loop then runs other greenlets.
    # Requests read from the inbox meanwhile must be dropped, not run.
    a, b, ref = echo_pair(make_node)
    assert ref.send.echo(value=0) == 0

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if a._loop.in_loop():
                gevent.sleep(0.5)  # yields to a's other greenlets

    waits = Waits(logging.WARNING)
    log = logging.getLogger("zcell._mesh.membership")
    log.addHandler(waits)
    try:
        # As if the process had just been stopped for 5 s (the heartbeat
        # thread's record of its own silence), noticed within 0.06 s.
        a._sockets.hb.stalled_since = time.monotonic() - 5.0
        time.sleep(0.15)
        for i in range(5):
            ref.send.echo(value=i, nowait=True, timeout=0.3)
        time.sleep(0.6)
    finally:
        log.removeHandler(waits)
    wait_until(lambda: b.id in ids(a), 10, "a re-admits b")
    assert ref.send.count() == 1, "a request read during the wake-up ran"


def test_a_request_carrying_a_stale_boot_id_is_dropped(make_node):
    a, b, ref = echo_pair(make_node)
    assert ref.send.echo(value=1) == 1

    def forge(boot: str, ttl: int) -> bytes:
        # What an earlier incarnation of b (same id, other boot) might have sent.
        # [version, kind, rid, src, boot, chain, ttl, target, method, kwargs, flags, ...]
        head = [wire.PROTOCOL_VERSION, wire.REQ, 10**9, b.id, boot, 1, ttl, ref.id, "echo"]
        return b._codec.encode([*head, {"value": "stale"}, wire.F_NOWAIT, None, None])

    before = a.statistics()
    b._run(b._messaging.send_frame, a.id, forge("0ldb00t0", 5000), time.monotonic() + 1)
    b._run(
        b._messaging.send_frame, a.id, forge(b.boot, 0), time.monotonic() + 1
    )  # expired on arrival
    wait_until(
        lambda: (
            a.statistics()["dropped_stale"] > before["dropped_stale"]
            and a.statistics()["dropped_expired"] > before["dropped_expired"]
        ),
        5,
        "both forged requests are dropped",
    )
    assert ref.send.count() == 1


OPTIONS = ["LINGER", "HEARTBEAT_IVL", "HEARTBEAT_TIMEOUT", "HEARTBEAT_TTL", "CONNECT_TIMEOUT"]
OPTIONS += ["RECONNECT_IVL_MAX"]


def socket_options(raw) -> tuple[int, dict[str, int]]:
    names = OPTIONS + (["IMMEDIATE"] if raw.type == zmq.DEALER else [])
    return raw.type, {n: raw.getsockopt(getattr(zmq, n)) for n in names}


def test_zeromq_failure_detection_options_are_set_on_every_socket(make_node):
    a = make_node("a", heartbeat=0.5, actors=[Echo])
    b = make_node("b", heartbeat=0.5, peers=[a.endpoints["inbox"]])
    b.wait_for(nodes=2, timeout=10 * SLOW)

    # The node's live sockets, read in its own loop thread.
    found = b._run(lambda: [socket_options(sock.raw) for sock in b._sockets.ctx.sockets])
    assert {zmq.ROUTER, zmq.XPUB, zmq.SUB, zmq.DEALER} <= {kind for kind, _ in found}
    # This (program) thread's own DEALER to a: its port, made by a call from here.
    assert b.spawn(Echo, on="a").send.echo(value=1) == 1
    (port,) = b._messaging.ports
    found += [socket_options(sock) for _, sock in port._sockets.values()]
    sparse = 0
    for kind, opts in found:
        assert opts["LINGER"] == 0, (kind, opts)
        # The heartbeat interval; sockets that bind send no pings of their own
        # (libzmq's abort on a stopped connection: docs/failure.md). A member's
        # connections (our DEALERs to its inbox, the loop's and a program thread's,
        # and our SUB to its PUBs) ping every PING_EVERY heartbeats: liveness is the
        # heartbeats' (monitors.py). Their pongs may wait as long as the TTL: a
        # member working through a backlog reads no ping meanwhile, and a shorter
        # wait closed a live connection with what it carried (bench/README.md).
        if opts["HEARTBEAT_IVL"] == 500 * PING_EVERY and kind in (zmq.DEALER, zmq.SUB):
            sparse += 1
            assert opts["HEARTBEAT_TTL"] == 3 * 500 * PING_EVERY, (kind, opts)  # the peer's
            assert opts["HEARTBEAT_TIMEOUT"] == 3 * 500 * PING_EVERY, (kind, opts)
        else:
            expected = 0 if kind in (zmq.ROUTER, zmq.XPUB) else 500
            assert opts["HEARTBEAT_IVL"] == expected, (kind, opts)
            assert opts["HEARTBEAT_TTL"] == 1500, (kind, opts)  # what the peer is told
            assert opts["HEARTBEAT_TIMEOUT"] == 1500, (kind, opts)
        assert 0 < opts["CONNECT_TIMEOUT"] <= 5000, (kind, opts)
        assert 0 < opts["RECONNECT_IVL_MAX"] <= 5000, (kind, opts)
        if kind == zmq.DEALER:
            assert opts["IMMEDIATE"] == 1, opts
    assert sparse == 3  # b's DEALERs to a's inbox (the loop's, this thread's) and its SUB of a


def test_calls_to_a_killed_peer_fail_fast_once_it_is_declared_down(make_node, procs):
    parent = make_node("parent", heartbeat=FAST_HB)
    child, child_id = start_child(procs, parent, "dead", FAST_HB)
    ref = parent.spawn(Echo, on="dead")
    child.kill()
    wait_until(lambda: child_id not in ids(parent), 5, "the killed child is declared down")
    for _ in range(3):
        start = time.monotonic()
        with pytest.raises(NodeDown):
            ref.send.echo(value=1, timeout=10)
        assert time.monotonic() - start < 0.5 * SLOW
    assert parent.actors(Echo) == []


def test_a_send_waiting_for_room_at_a_peer_declared_down_fails_with_node_down(make_node, procs):
    # A send from the node's loop (a handler's, the task dispatcher's push) waits
    # while the peer is past its high-water mark. The peer declared down, its
    # socket is closed: the wait must end then with NodeDown, not at its deadline
    # (never, for the dispatcher's pushes, which have none).
    parent = make_node("parent")
    child, child_id = start_child(procs, parent, "full", 1.0)
    ref = parent.spawn(Echo, on="full")
    assert ref.send.echo(value=1) == 1
    child.send_signal(signal.SIGSTOP)
    blob, sent, out = b"x" * 16384, [0], []

    def flood():
        try:
            while True:
                ref.send.echo(value=blob, nowait=True, timeout=60)
                sent[0] += 1
        except Exception as exc:  # noqa: BLE001 - what ended the wait is the point
            out.append(exc)

    parent.call_in_loop(gevent.spawn, flood)
    wait_until(lambda: child_id not in ids(parent), 10, "the frozen child is declared down")
    before = sent[0]
    wait_until(lambda: out, 5, "the waiting send to end")
    assert isinstance(out[0], NodeDown), repr(out[0])
    assert sent[0] == before  # it had stopped on the full peer, not sent on
