"""What a newcomer hits first: name clashes, secrets, hints, ids and versions.

Issue 12, items 10 (a second node under a taken name must exit, not split the
mesh), 19 (a missing or wrong secret says so), 20 (hints that lead somewhere) and
21 (id prefixes, node names in reprs and timeouts, consistent JSON, --version).
Nodes are real, on 127.0.0.1; ``zcell node`` runs as a child process where its
exit code is the point.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import time
from collections import Counter

import msgpack
import pytest
import zmq
from conftest import SLOW, child_env, run_cli, start_zcell_node, unique_cluster, wait_until
from test_hostile import raw_dealers
from test_stranger import fake_info, packed, received, stranger_inbox
from zcell_test_actors import Echo

from zcell import CallTimeout, Node, NodeStopped
from zcell import _wire as wire
from zcell.errors import NameTaken, ZcellError

ECHO = "zcell_test_actors.Echo"


def zcell(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["zcell", *argv], capture_output=True, text=True, timeout=timeout * SLOW, env=child_env()
    )


# ------------------------------------------------------------- 10. a name already taken


def test_a_second_zcell_node_under_a_taken_name_exits_non_zero_saying_why(make_node, procs):
    cluster = unique_cluster()
    hub = make_node("hub", cluster=cluster)
    peer = ("--cluster", cluster, "--peer", hub.endpoints["inbox"])
    first, _ = start_zcell_node(procs, "twin", *peer)
    hub.wait_for(nodes=2, timeout=10 * SLOW)

    second = procs(
        ["zcell", "node", "-A", "zcell_test_actors", "--no-mdns", "--name", "twin", *peer]
    )
    assert second.wait(15 * SLOW) == 1
    out = "\n".join(second.lines())
    assert "already used" in out and "--name" in out, out
    # The first keeps its name and its place; the mesh is not split.
    assert first.returncode is None
    assert [n["name"] for n in hub.nodes()] == ["hub", "twin"]
    assert hub.statistics()["name_clashes"] >= 1


def test_a_node_refused_for_its_name_raises_name_taken_or_stops_itself(make_node):
    hub = make_node("hub")
    make_node("twin", peers=[hub.endpoints["inbox"]])
    hub.wait_for(nodes=2, timeout=10 * SLOW)

    second = Node("twin", discovery="static", peers=[hub.endpoints["inbox"]])
    try:
        second.start()
    except NameTaken as exc:  # refused before start() returned
        assert "already used" in str(exc)
    else:
        wait_until(lambda: second.failure is not None, 5, "the refusal")
        wait_until(lambda: repr(second).endswith("stopped>"), 5, "the node to stop itself")
        with pytest.raises(NodeStopped):
            second.nodes()
    finally:
        second.stop(timeout=0.5)
    assert isinstance(second.failure, NameTaken) and isinstance(second.failure, ZcellError)
    assert "already used" in str(second.failure) and "name=" in str(second.failure)


def test_two_zcell_nodes_started_at_once_under_one_name_do_not_both_stay(procs):
    cluster = unique_cluster()
    argv = ["zcell", "node", "-A", "zcell_test_actors", "--cluster", cluster, "--name", "twin"]
    pair = [procs(argv), procs(argv)]  # mDNS: they find each other at once
    wait_until(lambda: any(p.returncode is not None for p in pair), 20, "one of the twins to exit")
    time.sleep(1.0 * SLOW)  # the other one, if it stays, stays
    codes = [p.returncode for p in pair]
    assert 1 in codes, codes
    assert all(c in (None, 1) for c in codes), codes


def test_a_newer_twin_knocked_on_by_the_older_one_goes_at_once(make_node):
    """Of two nodes under one name, the newer goes, whichever of them knocks first.

    Here the older knocks (it has the newer's address before the newer runs), so
    the newer is the side that verifies the knock and finds the clash: it must go
    itself then, not wait for a refusal that only a knock the other way brings
    (with mDNS twins both knock at once, and which one verifies first is luck:
    the refusal came round seconds later, near the end of the newer's window,
    and past it neither went)."""
    from test_liveness import free_port

    cluster = unique_cluster()
    port = free_port()
    older = make_node("twin", cluster=cluster, peers=[f"tcp://127.0.0.1:{port}"])
    time.sleep(0.2)
    newer = Node("twin", cluster=cluster, discovery="static", port=port)
    started = time.monotonic()
    try:
        try:
            newer.start()
            wait_until(lambda: newer.failure is not None, 4 * SLOW, "the newer twin to go")
        except NameTaken:
            pass
        took = time.monotonic() - started
    finally:
        newer.stop(timeout=0.5)
    assert isinstance(newer.failure, NameTaken), newer.failure
    assert "already used" in str(newer.failure) and "name=" in str(newer.failure)
    assert took < 4 * SLOW  # well within its window (5 s): no knock had to come round
    assert older.failure is None
    assert older.nodes()[0]["name"] == "twin"  # the older keeps its name


def test_a_refusal_that_does_not_come_from_the_node_knocked_on_is_counted_and_ignored(
    make_node,
):
    node = make_node("victim")
    ctx = zmq.Context.instance()
    stranger = ctx.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    try:
        stranger.connect(node.endpoints["inbox"])
        refusal = [wire.PROTOCOL_VERSION, wire.REFUSED, node.id, node.boot, "the name is taken"]
        before = node.statistics()["dropped_stale"]
        stranger.send(msgpack.packb(refusal))
        wait_until(
            lambda: node.statistics()["dropped_stale"] > before, 5, "the refusal to be counted"
        )
        time.sleep(0.2)
        assert node.failure is None
        assert node.nodes()[0]["name"] == "victim"  # still running
    finally:
        stranger.close()


def test_a_refusal_answered_to_a_stale_hello_is_counted_and_ignored(make_node):
    """A peer address that answers a HELLO with a refusal for another node (an
    earlier incarnation, or a forgery) does not stop this one."""
    ctx = zmq.Context.instance()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    port = fake.bind_to_random_port("tcp://127.0.0.1")
    try:
        node = make_node("knocker", peers=[f"tcp://127.0.0.1:{port}"])
        assert fake.poll(5000 * SLOW)
        routing, _hello = fake.recv_multipart()
        before = node.statistics()["dropped_stale"]
        stale = [wire.PROTOCOL_VERSION, wire.REFUSED, "0" * 16, node.boot, "taken"]
        fake.send_multipart([routing, msgpack.packb(stale)])
        wait_until(
            lambda: node.statistics()["dropped_stale"] > before, 5, "the refusal to be counted"
        )
        assert node.failure is None
    finally:
        fake.close()


def test_a_taken_name_is_refused_only_to_a_verified_joiner_on_its_own_connection(make_node):
    """Issue 13 meets item 10: a HELLO under a taken name learns nothing until its
    sender answered the challenge sent to the inbox it claims; then the refusal
    comes back on the connection of that HELLO, and no WELCOME follows."""
    hub = make_node("hub")
    make_node("twin", peers=[hub.endpoints["inbox"]])
    hub.wait_for(nodes=2, timeout=10 * SLOW)
    nonce = "7" * 32
    with stranger_inbox() as (inbox, endpoint), raw_dealers(hub.endpoints["inbox"]) as (dealer,):
        me = fake_info(1, hub.cluster, 0)
        me.update(name="twin", inbox=endpoint, pub=endpoint, hb=endpoint, started=time.time())
        dealer.send(packed([wire.PROTOCOL_VERSION, wire.HELLO, me, nonce, ""]))
        assert inbox.poll(5000 * SLOW), "the hub did not knock on the inbox we claim"
        knock = msgpack.unpackb(inbox.recv_multipart()[-1], raw=False)
        assert knock[1] == wire.HELLO and knock[4] == nonce
        assert not dealer.poll(300), "refused before it answered the challenge"
        dealer.send(packed([wire.PROTOCOL_VERSION, wire.HELLO, me, nonce, knock[3]]))
        assert dealer.poll(5000 * SLOW), "no refusal on the HELLO's connection"
        refusal = msgpack.unpackb(dealer.recv(), raw=False)
        assert refusal[:4] == [wire.PROTOCOL_VERSION, wire.REFUSED, me["id"], me["boot"]]
        assert "already used by node twin" in refusal[4], refusal
        later = [msgpack.unpackb(f, raw=False)[1] for f in received(inbox, 0.3)]
    assert wire.WELCOME not in later
    assert me["id"] not in hub._members
    assert hub.statistics()["name_clashes"] >= 1


def test_in_its_first_seconds_the_node_knocked_on_can_refuse_a_node_other_frames_are_bad(
    make_node,
):
    """What comes back on a knock's DEALER is drained: a REFUSED for this node goes
    to the refusal check (docs/security.md: the node knocked on can refuse a
    node in its first seconds), anything else is counted as a bad frame."""
    with stranger_inbox() as (fake, endpoint):
        node = Node("knocker", discovery="static", peers=[endpoint])
        try:
            node.start()
            assert fake.poll(5000 * SLOW)
            routing, _hello = fake.recv_multipart()
            refusal = [wire.PROTOCOL_VERSION, wire.REFUSED, node.id, node.boot, "name taken"]
            fake.send_multipart([routing, b"\xc1garbage", packed(refusal)])
            wait_until(lambda: node.failure is not None, 5, "the refusal")
        finally:
            node.stop(timeout=0.5)
    assert node.statistics()["dropped_bad_frames"] >= 1
    assert isinstance(node.failure, NameTaken)
    assert "refused by the node at " + endpoint in str(node.failure)


def test_past_its_first_seconds_a_node_only_logs_a_refusal_from_the_node_knocked_on(
    make_node, caplog
):
    """Nobody can stop an established node by refusing its knock (issue 13): a
    static peer's address keeps being knocked on, whoever sits there."""
    with stranger_inbox() as (fake, endpoint):
        node = make_node("old", peers=[endpoint], heartbeat=0.2)
        time.sleep(5.2)  # past max(5 s, 5 heartbeats): the refusal window
        received(fake, 0.05)  # the knocks so far
        assert fake.poll(5000 * SLOW), "no knock on the static peer"
        routing, _hello = fake.recv_multipart()
        refusal = [wire.PROTOCOL_VERSION, wire.REFUSED, node.id, node.boot, "name taken"]
        with caplog.at_level(logging.ERROR, logger="zcell"):
            fake.send_multipart([routing, packed(refusal)])
            wait_until(
                lambda: any("past its start" in r.getMessage() for r in caplog.records),
                5,
                "the refusal to be logged",
            )
    assert node.failure is None
    assert node.nodes()[0]["name"] == "old"  # still running


# ------------------------------------------------------------- 19. secrets


def test_a_client_without_the_secret_of_a_secure_cluster_is_told_to_pass_one(
    make_node, capsys, monkeypatch
):
    monkeypatch.delenv("ZCELL_SECRET", raising=False)
    cluster = unique_cluster()
    make_node("locked", cluster=cluster, discovery="mdns", secret="s3cret")
    code, out, err = run_cli(capsys, "status", "--cluster", cluster, "--wait", "1")
    assert code == 1
    assert "no zcell node found" not in err, err
    assert "secret" in err and "--secret-file" in err and "ZCELL_SECRET" in err, err


def test_a_client_with_a_wrong_secret_is_told_its_secret_is_not_the_clusters(
    make_node, capsys, tmp_path
):
    cluster = unique_cluster()
    make_node("locked", cluster=cluster, discovery="mdns", secret="s3cret")
    wrong = tmp_path / "secret"
    wrong.write_text("not-the-secret\n")
    code, out, err = run_cli(
        capsys, "status", "--cluster", cluster, "--wait", "1", "--secret-file", str(wrong)
    )
    assert code == 1
    assert "no zcell node found" not in err, err
    assert "secret" in err and "not the cluster's" in err, err


# ------------------------------------------------------------- 20. hints


def test_spawning_a_bare_class_name_suggests_its_full_type_name_not_a_module_called_so(
    make_node, capsys
):
    hub = make_node("hub", actors=[Echo])
    argv = ("--no-mdns", "--peer", hub.endpoints["inbox"], "--wait", "0.3")
    code, out, err = run_cli(capsys, "spawn", "Echo", *argv)
    assert code == 1
    assert "zcell node -A Echo" not in err, err
    assert f"did you mean {ECHO}" in err and "MODULE.CLASS" in err, err


def test_spawning_a_misspelt_type_says_did_you_mean(make_node, capsys):
    hub = make_node("hub", actors=[Echo])
    argv = ("--no-mdns", "--peer", hub.endpoints["inbox"], "--wait", "0.3")
    code, out, err = run_cli(capsys, "spawn", "zcell_test_actors.Ekho", *argv)
    assert code == 1
    assert f"did you mean {ECHO}" in err, err
    code, out, err = run_cli(capsys, "throw", "zcell_test_actors.Ekho", "echo", *argv)
    assert code == 1
    assert f"did you mean {ECHO}" in err, err


def test_a_file_path_given_to_dash_a_gets_a_hint_to_use_the_dotted_module_name():
    done = zcell("node", "-A", "examples/hello.py", "--no-mdns")
    assert done.returncode == 2
    assert "-A examples.hello" in done.stderr, done.stderr


def test_a_misspelt_class_in_module_colon_class_is_said_to_be_missing_with_did_you_mean():
    with pytest.raises(ValueError, match="has no Ekho; did you mean Echo"):
        Node(actors=["zcell_test_actors:Ekho"]).start()
    with pytest.raises(TypeError, match="is not an Actor class"):
        Node(actors=["zcell_test_actors:Next"]).start()  # a class, not an Actor


# ------------------------------------------------------------- 21. ids, names, JSON, version


def test_the_cli_accepts_a_unique_id_prefix_and_refuses_an_ambiguous_one(make_node, capsys):
    hub = make_node("hub", actors=[Echo])
    refs = [hub.spawn(Echo) for _ in range(17)]  # 17 ids over 16 hex digits: two share one
    argv = ("--no-mdns", "--peer", hub.endpoints["inbox"], "--wait", "1")
    code, out, err = run_cli(capsys, "send", refs[0].id[:8], "echo", "value=7", *argv)
    assert code == 0, err
    assert out.strip() == "7"
    first, _ = Counter(r.id[0] for r in refs).most_common(1)[0]
    code, out, err = run_cli(capsys, "kill", first, *argv)
    assert code == 2
    assert f"id prefix {first!r} is ambiguous" in err, err
    assert len(hub.actors()) == 17


def test_reprs_and_timeouts_name_the_node_by_its_name(mesh):
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")
    assert "on n1" in repr(ref), repr(ref)
    pending = ref.call.sleep(seconds=2)
    assert "n1" in repr(pending), repr(pending)
    with pytest.raises(CallTimeout, match="n1"):
        ref.send.sleep(seconds=2, timeout=0.2)
    with pytest.raises(CallTimeout, match="n1"):
        ref.call.sleep(seconds=2, timeout=0.2).get()


def test_actors_json_and_spawn_json_describe_an_actor_with_the_same_keys(make_node, capsys):
    hub = make_node("hub", actors=[Echo])
    argv = ("--no-mdns", "--peer", hub.endpoints["inbox"], "--json")
    code, out, err = run_cli(capsys, "spawn", ECHO, *argv)
    assert code == 0, err
    spawned = json.loads(out)
    code, out, err = run_cli(capsys, "actors", *argv)
    assert code == 0, err
    [listed] = json.loads(out)
    assert listed == spawned
    assert spawned["type"] == ECHO and spawned["node"] == "hub"


def test_zcell_version_prints_the_installed_version(capsys):
    code, out, err = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"zcell {importlib.metadata.version('zcell')}"
