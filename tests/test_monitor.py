"""Inspect and control for a plain actor program: ``zcell.monitor.Control(node)``.

Real nodes in one process over loopback: every node answers the actor-level
operations (ping, active, actors, stats, shutdown); replies from several nodes
are merged by name; a node that is slow, down or unknown is named in
``missing``, never silently left out.
"""

from __future__ import annotations

import gevent
import pytest
from conftest import SLOW, wait_until
from zcell_test_actors import Counter, Echo

from zcell.monitor import Control


def test_ping_from_a_plain_actor_program_answers_pong_from_every_node(mesh):
    a, b, c = mesh(3, actors=[Echo])
    replies = Control(a).ping(timeout=5 * SLOW)
    assert replies == {n.name: {"ok": "pong"} for n in (a, b, c)}
    assert replies.missing == [] and replies.errors == {}


def test_active_lists_a_running_actor_handler_with_its_runtime(mesh):
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")
    pending = ref.call.sleep(seconds=3 * SLOW)
    wait_until(lambda: Control(a).inspect(timeout=2 * SLOW).active()["n1"], 5 * SLOW, "handler")
    gevent.sleep(0.2)
    running = Control(a).inspect(destination=["n1"], timeout=2 * SLOW).active()["n1"]
    assert [(e["kind"], e["id"], e["method"]) for e in running] == [("actor", ref.id, "sleep")]
    assert running[0]["type"] == Echo.name and running[0]["runtime"] >= 0.2
    pending.get(timeout=10 * SLOW)
    assert Control(a).inspect(timeout=2 * SLOW).active()["n1"] == []


def test_actors_lists_hosted_actors_with_message_counts(mesh):
    a, b = mesh(2, actors=[Counter])
    ref = a.spawn(Counter, on="n1")
    for _ in range(3):
        ref.send.incr()
    listed = Control(a).inspect(timeout=2 * SLOW).actors()
    assert listed["n0"] == []
    assert [(x["id"], x["type"], x["handled"]) for x in listed["n1"]] == [(ref.id, Counter.name, 3)]


def test_stats_carry_the_node_counters_pid_and_uptime(mesh):
    a, b = mesh(2)
    stats = Control(a).inspect(timeout=2 * SLOW).stats()
    assert set(stats) == {"n0", "n1"}
    assert stats["n1"]["statistics"]["members"] == 2 and stats["n1"]["pid"] > 0
    assert stats["n1"]["uptime"] > 0 and stats["n1"]["events"]["enabled"] is False


def test_destination_asks_only_the_named_nodes_and_names_unknown_ones(mesh):
    a, b, c = mesh(3)
    replies = Control(a).ping(destination="n1,nowhere", timeout=2 * SLOW)
    assert list(replies) == ["n1"]
    assert replies.missing == ["nowhere"]
    by_id = Control(a).ping(destination=[c.id], timeout=2 * SLOW)
    assert list(by_id) == ["n2"]


def test_a_slow_node_is_named_missing_within_the_timeout(mesh):
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")
    ref.send.block(seconds=3 * SLOW, nowait=True)  # blocks n1's loop (no gevent yield)
    gevent.sleep(0.2)
    replies = Control(a).ping(timeout=1.0 * SLOW)
    assert list(replies) == ["n0"] and replies.missing == ["n1"]


def test_a_node_that_left_is_named_when_asked_for(mesh):
    a, b = mesh(2)
    b.stop(timeout=0.5)
    wait_until(lambda: len(a.nodes()) == 1, 10 * SLOW, "n1 gone")
    replies = Control(a).inspect(destination="n1", timeout=0.5).ping()
    assert dict(replies) == {} and replies.missing == ["n1"]


def test_shutdown_stops_the_named_node_only(mesh):
    a, b, c = mesh(3)
    assert Control(a).shutdown(destination="n2", timeout=2 * SLOW) == {
        "n2": {"ok": "shutting down"}
    }
    wait_until(lambda: {n["name"] for n in a.nodes()} == {"n0", "n1"}, 10 * SLOW, "n2 gone")


def test_an_operation_a_node_lacks_is_an_error_for_that_node_not_a_hang(mesh):
    a, b = mesh(2)
    replies = Control(a).inspect(timeout=2 * SLOW).scheduled()
    assert dict(replies) == {} and set(replies.errors) == {"n0", "n1"}
    assert "unknown control operation 'scheduled'" in replies.errors["n1"]


@pytest.mark.parametrize("op", ["ping", "active", "actors", "stats", "shutdown"])
def test_every_actor_level_operation_has_help_text(make_node, op):
    assert make_node().control.help()[op]
