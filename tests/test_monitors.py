"""Who watches whom (``zcell/_mesh/monitors.py``, issue 22): each node takes
heartbeats from its k ring predecessors only (3 by default; ``ZCELL_MONITORS=1``
here, so that a few nodes show it), a suspicion is checked first-hand by everyone
else before anyone declares the member down, and members not watched are probed
in turn."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
from conftest import SLOW, MakeNode, start_zcell_node, unique_cluster, wait_until
from zcell_test_actors import Echo

from zcell import Node, NodeDown


@pytest.fixture
def ring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes made (and children started) in this test watch one member each."""
    monkeypatch.setenv("ZCELL_MONITORS", "1")


def members(node: Node) -> dict[str, Any]:
    return node._membership._members


def hearing(node: Node) -> set[str]:
    """Names of the members whose heartbeats this node takes."""
    return {m.name for m in members(node).values() if m.hb_connected}


def test_each_node_watches_its_ring_predecessor_only(ring: None, mesh: Any) -> None:
    nodes = mesh(5, heartbeat=0.3)
    ring_ids = sorted(n.id for n in nodes)
    by_id = {n.id: n for n in nodes}
    for node in nodes:
        before = by_id[ring_ids[ring_ids.index(node.id) - 1]]
        assert hearing(node) == {before.name}, node.name
    # Idle for 10 heartbeats: nobody is dropped, nobody suspected.
    time.sleep(3.0)
    for node in nodes:
        assert len(node.nodes()) == 5, node.name
        assert node.statistics()["suspicions"] == 0, node.name


def test_a_rumour_about_a_live_member_is_refuted_first_hand(ring: None, mesh: Any) -> None:
    nodes = mesh(4, heartbeat=0.3)
    teller, listener, live = nodes[0], nodes[1], nodes[2]
    if live.name in hearing(listener):  # the listener must not be the one watching it
        listener, live = live, listener
    assert live.name not in hearing(listener)
    teller._ctrl(listener.id, "suspect", {"id": live.id, "boot": live.boot}, 2.0)
    wait_until(lambda: listener.statistics()["suspicions_refuted"] == 1, 5, "the rumour refuted")
    assert live.name in {n["name"] for n in listener.nodes()}
    assert live.name not in hearing(listener)  # back to its one watched member
    # Nonsense about a member is ignored, never a crash.
    for args in ({"id": ["x"]}, {"id": live.id, "boot": 3}, {}):
        teller._ctrl(listener.id, "suspect", args, 2.0)
    assert listener.statistics()["suspicions"] == 1


def test_sigkill_is_seen_through_a_watchers_suspicion(
    ring: None, make_node: MakeNode, procs: Any
) -> None:
    """The test's node watches one child; another child is SIGKILLed with a call in
    flight to it: the call fails with NodeDown well within the call's timeout,
    learned through its watcher's suspicion and checked first-hand."""
    cluster = unique_cluster()
    me = make_node("me", cluster=cluster)
    children = {}
    for i in range(4):
        proc, _ = start_zcell_node(
            procs, f"c{i}", "--cluster", cluster, "--peer", me.endpoints["inbox"]
        )
        children[f"c{i}"] = proc
    me.wait_for(nodes=5, timeout=10 * SLOW)
    wait_until(lambda: len(hearing(me)) == 1, 5, "the ring settled")
    victim = next(name for name in children if name not in hearing(me))
    ref = me.spawn(Echo, on=victim)
    result = ref.call.sleep(seconds=30, timeout=20)
    time.sleep(0.2)  # the call is in flight
    children[victim].kill(signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(NodeDown):
        result.get(timeout=20)
    assert time.monotonic() - start < 4.0 * SLOW  # default heartbeat: ~3 s, not 20
    assert victim not in {n["name"] for n in me.nodes()}
    assert me.statistics()["suspicions"] == 1
    assert me.statistics()["suspicions_refuted"] == 0
    # A graceful leave of a member it does not watch is seen at once.
    leaver = next(name for name in children if name != victim and name not in hearing(me))
    children[leaver].send_signal(signal.SIGTERM)
    wait_until(lambda: leaver not in {n["name"] for n in me.nodes()}, 1.5, "the leave seen")


def test_members_not_watched_are_probed_in_turn(ring: None, mesh: Any) -> None:
    """A node hears no heartbeat of the members it does not watch: their load
    (``nodes()``, ``zcell status``) comes from its probes, one member a heartbeat."""
    nodes = mesh(4, heartbeat=0.3, actors=[Echo])
    target = nodes[3]
    others = [n for n in nodes if n is not target and target.name not in hearing(n)]
    assert len(others) == 2  # one watches it; two probe it
    ref = nodes[0].spawn(Echo, on=target.name)
    busy = ref.call.sleep(seconds=5, timeout=10)

    def load_seen(node: Node) -> int:
        return next(m["load"] for m in node.nodes() if m["name"] == target.name)

    for node in others:
        wait_until(lambda n=node: load_seen(n) >= 1, 3, f"{node.name} probed {target.name}")
    busy.get(timeout=10)
    for node in nodes:
        assert node.statistics()["probes_unanswered"] == 0, node.name
        assert node.statistics()["suspicions"] == 0, node.name


def test_an_unanswered_probe_is_checked_first_hand_and_refuted(ring: None, mesh: Any) -> None:
    """A member that does not answer a probe (a busy loop, a lost frame) is only
    suspected: the prober and the others listen to its heartbeats themselves, hear
    them, and keep it."""
    import gevent

    nodes = mesh(4, heartbeat=0.3)
    slow = nodes[0]

    def stalled_probe(args: dict[str, Any], src: str) -> list[int]:
        gevent.sleep(5)
        return [0, 0, 0]

    slow.control.remove("probe")
    slow.control.add(stalled_probe, "probe")
    others = [n for n in nodes if n is not slow]
    wait_until(
        lambda: sum(n.statistics()["probes_unanswered"] for n in others) >= 2,
        5,
        "probes of the stalled member time out",
    )
    wait_until(
        lambda: sum(n.statistics()["suspicions_refuted"] for n in others) >= 2,
        5,
        "the suspicion refuted first-hand",
    )
    for node in others:
        assert slow.name in {m["name"] for m in node.nodes()}, node.name


def test_a_bad_zcell_monitors_setting_is_refused_with_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZCELL_MONITORS", "three")
    with pytest.raises(ValueError, match="ZCELL_MONITORS must be a non-negative integer"):
        Node("bad", discovery="static")
