"""Protocol versions between real nodes (issue 14, "Extensible protocol").

Frames carry the major version; node info says which minors a node speaks
(docs/protocol.md §1). A node of a newer minor meshes with this one, and a kind
this code lacks is dropped and counted apart; a node of another major is refused,
with a message that names both versions. The other major runs in a child process,
from a copy of zcell whose version is changed: nothing in this process changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import SLOW, child_env, wait_until
from test_hostile import raw_dealers
from test_stranger import fake_info, packed, received, stranger_inbox
from test_wire import SAMPLES
from zcell_test_actors import Echo

import zcell
from zcell import IncompatibleProtocol, Node, NodeStopped, ProtocolError
from zcell import _wire as wire
from zcell._mesh.directory import Member

FUTURE_KIND = max(wire.KINDS) + 1  # a kind some later minor adds


class NewerNode(Node):
    """A node of the next minor: it says so in its node info (the kind it adds
    is sent by hand below: this code has no row for it)."""

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        info["proto"] = [wire.MIN_MINOR, wire.PROTOCOL_MINOR + 1]
        return info


def send_raw(node: Node, to: Node, frame: list[Any]) -> None:
    """Send ``frame`` to ``to`` through ``node``'s own DEALER to it (its loop's)."""
    data = msgpack.packb(frame, use_bin_type=True)
    dealer = node._members[to.id].dealer
    node._run(lambda: dealer.send(data, time.monotonic() + 2.0))


def test_a_node_of_a_newer_minor_meshes_and_its_new_kind_is_dropped_and_counted(make_node):
    older = make_node("older", actors=[Echo])
    newer = NewerNode("newer", discovery="static", peers=[older.endpoints["inbox"]]).start()
    try:
        newer.wait_for(nodes=2, timeout=10 * SLOW)
        older.wait_for(nodes=2, timeout=10 * SLOW)
        # Each knows which minors the other speaks, from its HELLO / WELCOME.
        assert older._members[newer.id].minors == (0, wire.PROTOCOL_MINOR + 1)
        assert newer._members[older.id].minors == (0, wire.PROTOCOL_MINOR)
        assert older._info()["proto"] == [wire.MIN_MINOR, wire.PROTOCOL_MINOR]

        before = older.statistics()
        send_raw(newer, older, [wire.PROTOCOL_VERSION, FUTURE_KIND, newer.id, "news"])
        wait_until(
            lambda: older.statistics()["dropped_newer_kinds"] == 1, 5, "the new kind counted"
        )
        after = older.statistics()
        assert after["dropped_bad_frames"] == before["dropped_bad_frames"]
        assert after["dropped_forged"] == before["dropped_forged"]
        # Not hostile: the member stays, and the mesh works both ways.
        ref = older.spawn(Echo)
        newer.wait_for(type=Echo, timeout=5 * SLOW)
        assert newer.lookup(ref.id).send.echo(value="still meshed", timeout=5) == "still meshed"

        # The same unknown kind from a member that does not speak a newer minor
        # is a malformed frame, as from a stranger.
        before = newer.statistics()
        send_raw(older, newer, [wire.PROTOCOL_VERSION, FUTURE_KIND, older.id, "news"])
        wait_until(
            lambda: newer.statistics()["dropped_bad_frames"] > before["dropped_bad_frames"],
            5,
            "the unknown kind counted as a bad frame",
        )
        assert newer.statistics()["dropped_newer_kinds"] == before["dropped_newer_kinds"]
    finally:
        newer.stop(timeout=0.5)


def test_a_kind_is_sent_only_to_members_whose_minor_has_it():
    for kind in wire.KINDS.values():
        assert wire.sendable(kind.number, kind.since)
        assert not wire.sendable(kind.number, kind.since - 1)
        assert len(kind.fields) + 2 == kind.lengths[-1]
    # A node of this major from before the "proto" key speaks minor 0.
    info = {k: "x" for k in ("id", "boot", "name", "cluster", "inbox", "pub", "hb")}
    assert Member.from_info(info).minors == (0, 0)
    assert Member.from_info({**info, "proto": [0, 3]}).minors == (0, 3)
    # Its heartbeat interval, when stated ("beat", seconds; 0.0: not stated).
    assert Member.from_info(info).beat == 0.0
    assert Member.from_info({**info, "beat": 2}).beat == 2.0


def test_every_kind_of_the_table_refuses_a_wrong_number_of_items():
    """Rows that count their own items (requests, replies: the hot path) refuse
    what the table's lengths refuse, like the others."""
    refusal = [wire.PROTOCOL_VERSION, wire.REFUSED, "0" * 16, "0" * 8, "taken"]
    samples = [*SAMPLES.values(), refusal]
    assert {msg[1] for msg in samples} == set(wire.KINDS)
    for msg in samples:
        lengths = wire.KINDS[msg[1]].lengths
        assert len(msg) in lengths
        wire.check(msg)
        too_long = msg + [None] * (max(lengths) + 1 - len(msg))
        for wrong in too_long, msg[: min(lengths) - 1]:
            with pytest.raises(ProtocolError):
                wire.check(wrong)


@pytest.fixture
def other_major(tmp_path: Path) -> dict[str, Any]:
    """How to run a child whose zcell is a copy speaking major version 3 (from its
    own directory: ``python -c`` puts the current one first on the path)."""
    copy = tmp_path / "zcell"
    shutil.copytree(Path(zcell.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    version = copy / "_wire" / "version.py"
    text = version.read_text()
    assert "PROTOCOL_VERSION = 2\n" in text
    version.write_text(text.replace("PROTOCOL_VERSION = 2\n", "PROTOCOL_VERSION = 3\n"))
    env = child_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    return {"env": env, "cwd": tmp_path}


JOIN = """
import sys
from zcell import Node, NodeStopped, _wire
assert _wire.PROTOCOL_VERSION == 3, _wire.__file__
node = Node("future", cluster=sys.argv[1], discovery="static", peers=[sys.argv[2]])
try:
    node.start()
    node._loop.join(8)  # refused after start() returned: the node stops itself
    error = node.failure
except NodeStopped as exc:
    error = exc
finally:
    node.stop(timeout=0.5)
print(type(error).__name__, error, flush=True)
sys.exit(1 if error is not None else 0)
"""


def test_a_joiner_of_another_major_is_refused_with_both_versions_named(make_node, other_major):
    hub = make_node("hub")
    child = subprocess.run(
        [sys.executable, "-c", JOIN, hub.cluster, hub.endpoints["inbox"]],
        capture_output=True,
        text=True,
        timeout=30 * SLOW,
        **other_major,
    )
    assert child.returncode == 1, (child.stdout, child.stderr)
    assert child.stdout.startswith("IncompatibleProtocol "), child.stdout
    assert "3.0" in child.stdout and "2.0" in child.stdout, child.stdout
    assert hub.statistics()["refused_versions"] >= 1
    assert hub.nodes()[0]["name"] == "hub" and len(hub.nodes()) == 1


SERVE = """
import sys
from zcell import Node
node = Node("future", cluster=sys.argv[1], discovery="static").start()
print(node.endpoints["inbox"], flush=True)
sys.stdin.read()  # until the test closes our stdin
node.stop(timeout=0.5)
"""


def test_a_node_refused_by_a_node_of_another_major_raises_naming_both(other_major):
    cluster = f"v-{time.monotonic_ns()}"
    child = subprocess.Popen(
        [sys.executable, "-c", SERVE, cluster],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **other_major,
    )
    try:
        assert child.stdout is not None
        inbox = child.stdout.readline().strip()
        assert inbox.startswith("tcp://"), inbox
        node = Node("current", cluster=cluster, discovery="static", peers=[inbox])
        try:
            node.start()
        except IncompatibleProtocol as exc:  # refused before start() returned
            error: NodeStopped | None = exc
        else:
            wait_until(lambda: node.failure is not None, 8, "the refusal")
            error = node.failure
        finally:
            node.stop(timeout=0.5)
        assert isinstance(error, IncompatibleProtocol) and isinstance(error, NodeStopped)
        assert "3.0" in str(error) and "2.0" in str(error), error
    finally:
        child.communicate("", timeout=10 * SLOW)


def test_a_hello_of_another_major_is_answered_on_its_connection_only_in_its_cluster(make_node):
    hub = make_node("hub")
    ours = {**fake_info(1, hub.cluster, 1), "proto": [0, 0]}
    theirs = fake_info(2, "another-cluster", 2)
    with raw_dealers(hub.endpoints["inbox"]) as (dealer,):
        before = hub.statistics()["dropped_bad_frames"]
        dealer.send(packed([3, wire.HELLO, theirs, "n" * 32, ""]))
        dealer.send(packed([3, wire.HELLO, ours, "n" * 32, ""]))
        assert dealer.poll(5000 * SLOW), "no refusal on the HELLO's connection"
        refusal = msgpack.unpackb(dealer.recv(), raw=False)
        assert not dealer.poll(200), "the other cluster's HELLO was answered too"
    assert refusal[:4] == [wire.PROTOCOL_VERSION, wire.REFUSED, ours["id"], ours["boot"]]
    assert "protocol 2.0 and the joiner 3.0" in refusal[4], refusal
    stats = hub.statistics()
    assert stats["dropped_bad_frames"] == before + 2  # counted as today
    assert stats["refused_versions"] == 1


def test_a_hello_that_no_longer_speaks_our_minors_or_garbles_them_is_not_knocked_back(make_node):
    hub = make_node("hub")
    with stranger_inbox() as (inbox, endpoint), raw_dealers(hub.endpoints["inbox"]) as (dealer,):
        gone = {**fake_info(1, hub.cluster, 0), "inbox": endpoint, "pub": endpoint}
        gone["proto"] = [wire.PROTOCOL_MINOR + 1, wire.PROTOCOL_MINOR + 2]
        garbled = {**gone, "id": "2" * 16, "proto": [1, 0]}
        before = hub.statistics()
        dealer.send(packed([wire.PROTOCOL_VERSION, wire.HELLO, gone, "n" * 32, ""]))
        dealer.send(packed([wire.PROTOCOL_VERSION, wire.HELLO, garbled, "n" * 32, ""]))
        wait_until(
            lambda: (
                hub.statistics()["refused_versions"] == 1
                and hub.statistics()["dropped_bad_frames"] == before["dropped_bad_frames"] + 1
            ),
            5,
            "both HELLOs counted",
        )
        assert received(inbox, 0.3) == []  # no knock on the inbox they claim
        assert not dealer.poll(0)  # and no answer
    assert len(hub.nodes()) == 1
