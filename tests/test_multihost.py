"""Discovery, liveness and failure across real hosts (network namespaces).

Every host runs ``zcell node -A zcell_test_actors --host <its address>`` with mDNS
discovery over the bridge and a cluster name of its own per test. The test talks
to the mesh through a *driver*: a small script running a client ``Node`` inside a
namespace of its own (or, for the 8-host mesh, next to host 0's node), reading
JSON commands on stdin and answering one JSON line each. Faults: SIGKILL, SIGSTOP,
a switch port taken down (``mesh.cut``) and an nft drop between two hosts
(``mesh.partition``).

Run with ``-s`` to see the measured figures.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SLOW, child_env, process_state, wait_until
from netns import Host, Mesh, Proc, mesh_fixture, nft_available

pytestmark = pytest.mark.netns

mesh4 = mesh_fixture(4)  # hosts 0-2 run nodes, host 3 runs the driver
mesh8 = mesh_fixture(8)

PY = sys.executable
HB = 0.5  # heartbeat of the 3-host tests: a silent node is down after ~1.3 s

DRIVER = r"""
import json, sys, time
from zcell import Node
from zcell_test_actors import Echo

cluster, host, heartbeat = sys.argv[1], sys.argv[2], float(sys.argv[3])
node = Node("driver", cluster=cluster, host=host, heartbeat=heartbeat).start()
refs, calls = {}, {}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def outcome(fn, start=None):
    start = time.monotonic() if start is None else start
    try:
        return {"ok": fn(), "elapsed": time.monotonic() - start}
    except Exception as exc:
        return {"error": type(exc).__name__, "remote": getattr(exc, "type_name", None),
                "message": str(exc)[:200], "elapsed": time.monotonic() - start}


def members():
    return {n["name"]: {"id": n["id"], "inbox": n["endpoints"]["inbox"]} for n in node.nodes()}


def op_wait_members(names=(), absent=(), timeout=10.0):
    start = time.monotonic()
    while True:
        have = members()
        if all(n in have for n in names) and not any(n in have for n in absent):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"members {sorted(have)}; wanted {names}, not {absent}")
        time.sleep(0.01)


def op_spawn(on):
    ref = node.spawn(Echo, on=on)
    refs[ref.id] = ref
    return ref.id


def args(kwargs):
    # {"$ref": actor_id} stands for that actor's proxy.
    return {k: refs[v["$ref"]] if isinstance(v, dict) and "$ref" in v else v
            for k, v in (kwargs or {}).items()}


def op_send(actor, method, kwargs=None, timeout=5.0, nowait=False):
    return outcome(lambda: refs[actor].send(method, args(kwargs), nowait=nowait,
                                            timeout=timeout))


def op_call(tag, actor, method, kwargs=None, timeout=5.0):
    calls[tag] = (refs[actor].call(method, args(kwargs), timeout=timeout), time.monotonic())


def op_result(tag, timeout=30.0):
    result, start = calls.pop(tag)
    return outcome(lambda: result.get(timeout=timeout), start)


def op_probes(pairs, timeout=1.0):
    # Each [src, dst]: the actor src calls dst's whoami: proves src has dst as a member.
    started = [(refs[s].call("call_other", {"other": refs[d], "method": "whoami"},
                             timeout=timeout), time.monotonic()) for s, d in pairs]
    return [outcome(lambda r=r: r.get(timeout=timeout + 1)["node"], t) for r, t in started]


def op_actors():
    return [[p.id, p.node_id] for p in node.actors(Echo)]


OPS = {"members": members, "wait_members": op_wait_members, "spawn": op_spawn,
       "send": op_send, "call": op_call, "result": op_result, "probes": op_probes,
       "actors": op_actors}
emit({"ready": node.id})
for line in sys.stdin:
    cmd = json.loads(line)
    n, op = cmd.pop("id"), cmd.pop("op")
    try:
        emit({"id": n, "ok": OPS[op](**cmd)})
    except Exception as exc:
        emit({"id": n, "error": type(exc).__name__, "message": str(exc)[:500]})
node.stop(timeout=1)
"""


class DriverError(AssertionError):
    pass


class Driver:
    """The test's hands in the mesh: a client Node in a namespace, driven by JSON lines."""

    def __init__(self, host: Host, cluster: str, heartbeat: float) -> None:
        self.proc = Proc(
            [PY, "-c", DRIVER, cluster, host.address, str(heartbeat)],
            host,
            env=child_env(),
            stdin=subprocess.PIPE,
        )
        host.procs.append(self.proc)  # killed with the mesh
        self.proc.wait_for_line(r'^\{"ready"', 30 * SLOW)
        self._n = 0

    def __call__(self, op: str, wait: float = 15.0, **kwargs: Any) -> Any:
        self._n += 1
        n = self._n
        stdin = self.proc.popen.stdin
        assert stdin is not None
        stdin.write(json.dumps({"id": n, "op": op, **kwargs}) + "\n")
        stdin.flush()
        reply = json.loads(self.proc.wait_for_line(rf'^\{{"id": {n}, ', wait * SLOW).string)
        if "error" in reply:
            raise DriverError(f"{op}{kwargs}: {reply['error']}: {reply['message']}")
        return reply["ok"]

    def members(self) -> dict[str, dict[str, str]]:
        return self("members")


def start_node(host: Host, name: str, cluster: str, heartbeat: float) -> Proc:
    argv = [PY, *"-m zcell node -A zcell_test_actors".split(), "--host", host.address]
    argv += ["--cluster", cluster, "--name", name, "--heartbeat", str(heartbeat)]
    return host.popen(argv, env=child_env())


def cluster_name() -> str:
    return f"mh-{secrets.token_hex(4)}"


class World:
    """Nodes h0..h{n-1} on the mesh's first n hosts and a driver; Echo on each node."""

    def __init__(self, mesh: Mesh, n: int, driver_host: int, heartbeat: float = HB) -> None:
        self.mesh = mesh
        self.cluster = cluster_name()
        self.heartbeat = heartbeat
        self.driver = Driver(mesh.hosts[driver_host], self.cluster, heartbeat)
        self.names = [f"h{i}" for i in range(n)]
        self.launched_at = time.monotonic()
        self.procs = [
            start_node(mesh.hosts[i], self.names[i], self.cluster, heartbeat) for i in range(n)
        ]
        for proc in self.procs:
            proc.wait_for_line(r"^ready$", 30 * SLOW)
        self.ready_at = time.monotonic()
        self.driver("wait_members", names=self.names, timeout=10 * SLOW)
        self.echo = [self.driver("spawn", on=name) for name in self.names]

    def probe(self, pairs: list[tuple[int, int]], timeout: float = 1.0) -> list[dict]:
        return self.driver(
            "probes", pairs=[[self.echo[a], self.echo[b]] for a, b in pairs], timeout=timeout
        )

    def pairs(self, among: list[int]) -> list[tuple[int, int]]:
        return [(a, b) for a in among for b in among if a != b]

    def until_probes(
        self,
        pairs: list[tuple[int, int]],
        want: Callable[[dict], bool],
        timeout: float,
        what: str,
        probe_timeout: float = 0.5,
    ) -> float:
        """Probe ``pairs`` until every outcome satisfies ``want``; seconds it took."""
        start = time.monotonic()
        todo = list(pairs)
        while True:
            outcomes = self.probe(todo, probe_timeout)
            todo = [p for p, o in zip(todo, outcomes, strict=True) if not want(o)]
            if not todo:
                return time.monotonic() - start
            if time.monotonic() - start > timeout * SLOW:
                raise AssertionError(f"{what}: still failing for {todo}: {outcomes}")
            time.sleep(0.05)


def ok(o: dict) -> bool:
    return "ok" in o


def node_down_at_once(o: dict) -> bool:
    """The probing node raised NodeDown at once: it has no such member."""
    return o.get("remote") == "zcell.errors.NodeDown" and o["elapsed"] < 0.4 * SLOW


# ---------------------------------------------------------------------------- tests


def test_three_hosts_discover_each_other_over_the_bridge(mesh4):
    world = World(mesh4, 3, driver_host=3)
    members = world.driver.members()
    assert sorted(members) == ["driver", "h0", "h1", "h2"]
    for i, name in enumerate(world.names):  # each reached at its own host's address
        assert members[name]["inbox"].startswith(f"tcp://{mesh4.hosts[i].address}:")
    # Every node comes to have every other as a member: each Echo calls every other
    # one. (The driver seeing all three does not mean they see each other yet: under
    # load, h0 and h1 once had not met when the first probe went out.)
    pairs = world.pairs([0, 1, 2])
    world.until_probes(pairs, lambda o: "ok" in o, 10, "every node calling every other")
    outcomes = world.probe(pairs)
    assert [o.get("ok") for o in outcomes] == [world.names[b] for _, b in pairs]


def test_a_killed_host_fails_calls_in_flight_and_leaves_every_directory(mesh4):
    world = World(mesh4, 3, driver_host=3)
    d, victim = world.driver, world.echo[1]
    d("call", tag="direct", actor=victim, method="sleep", kwargs={"seconds": 60}, timeout=30)
    # In flight from another host, too: h0's actor waits on h1's.
    d(
        "call",
        tag="nested",
        actor=world.echo[0],
        method="call_other",
        timeout=30,
        kwargs={"other": {"$ref": victim}, "method": "sleep", "kwargs": {"seconds": 60}},
    )
    time.sleep(0.2)  # both handlers on h1 are now sleeping

    world.procs[1].kill()  # SIGKILL
    killed_at = time.monotonic()
    direct = d("result", tag="direct", wait=40)
    print(
        f"\nSIGKILL: call in flight failed with {direct.get('error')} after "
        f"{time.monotonic() - killed_at:.2f}s (heartbeat {HB}s)"
    )
    assert direct["error"] == "NodeDown"
    assert time.monotonic() - killed_at < (3 * HB + 1) * SLOW
    nested = d("result", tag="nested", wait=40)  # h0 failed its own call the same way
    assert nested.get("remote") == "zcell.errors.NodeDown", nested
    assert nested["elapsed"] < (3 * HB + 1.5) * SLOW
    assert "h1" not in d.members()
    assert all(node_id != world.echo[1] for _, node_id in d("actors"))
    assert {a for a, _ in d("actors")} == {world.echo[0], world.echo[2]}
    # The other hosts dropped it too: their calls to it fail at once with NodeDown.
    world.until_probes([(0, 1), (2, 1)], node_down_at_once, 5, "h0 and h2 drop h1")
    # And the survivors still talk.
    assert all(ok(o) for o in world.probe([(0, 2), (2, 0)]))


def test_a_cut_host_is_detected_and_rejoins_after_the_heal(mesh4):
    world = World(mesh4, 3, driver_host=3)
    d, victim = world.driver, world.echo[1]
    assert d("send", actor=victim, method="echo", kwargs={"value": 1})["ok"] == 1
    d("call", tag="inflight", actor=victim, method="sleep", kwargs={"seconds": 60}, timeout=30)
    time.sleep(0.2)

    world.mesh.cut(1)  # silent: no FIN, no RST, nothing
    cut_at = time.monotonic()
    inflight = d("result", tag="inflight", wait=40)
    detected = time.monotonic() - cut_at
    print(f"\ncut: call in flight failed with {inflight.get('error')} after {detected:.2f}s")
    assert inflight["error"] == "NodeDown"
    assert detected < (3 * HB + 1) * SLOW
    again = d("send", actor=victim, method="echo", kwargs={"value": 2}, timeout=10)
    assert again["error"] == "NodeDown" and again["elapsed"] < 0.3 * SLOW
    world.until_probes([(0, 1), (2, 1)], node_down_at_once, 5, "h0 and h2 drop h1")
    assert d("actors") and victim not in {a for a, _ in d("actors")}

    world.mesh.heal(1)  # mDNS says nothing new: the others knock on h1's inbox
    healed_at = time.monotonic()
    d("wait_members", names=["h1"], timeout=15 * SLOW)
    full = world.until_probes(world.pairs([0, 1, 2]), ok, 15, "full mesh after the heal")
    print(
        f"heal: h1 back in the driver's view and the full mesh again after "
        f"{time.monotonic() - healed_at:.2f}s (probing {full:.2f}s)"
    )
    # Its actor survived the cut (same process) and is reachable again.
    assert victim in {a for a, _ in d("actors")}
    assert d("send", actor=victim, method="echo", kwargs={"value": 3})["ok"] == 3
    assert d("send", actor=victim, method="count")["ok"] == 2


@pytest.mark.parametrize("monitors", ["default", "1"])
def test_a_pairwise_partition_splits_only_that_pair_and_heals(mesh4, monitors, monkeypatch):
    """With ``ZCELL_MONITORS=1`` each node watches one member, so h0 and h1 may
    watch neither each other: they then find the cut by probing (monitors.py)."""
    reason = nft_available()
    if reason is not None:
        pytest.skip(f"nft unavailable: {reason}")
    if monitors != "default":
        monkeypatch.setenv("ZCELL_MONITORS", monitors)  # the children inherit it
    world = World(mesh4, 3, driver_host=3)
    d = world.driver

    world.mesh.partition(0, 1)
    parted_at = time.monotonic()
    took = world.until_probes([(0, 1), (1, 0)], node_down_at_once, 5, "h0 and h1 part")
    print(
        f"\npartition h0|h1: each side sees the other down after "
        f"{time.monotonic() - parted_at:.2f}s (probing {took:.2f}s)"
    )
    # h2 and the driver still hear both.
    assert all(ok(o) for o in world.probe([(2, 0), (2, 1), (0, 2), (1, 2)]))
    assert {"h0", "h1", "h2"} <= set(d.members())

    # Gossip on purpose: a newcomer on h2's host joins everyone and tells h0 about
    # h1 and h1 about h0. Liveness is first-hand: they must stay apart.
    newcomer = start_node(world.mesh.hosts[2], "h2b", world.cluster, world.heartbeat)
    newcomer.wait_for_line(r"^ready$", 30 * SLOW)
    d("wait_members", names=["h2b"], timeout=10 * SLOW)
    end = time.monotonic() + 6 * HB
    while time.monotonic() < end:
        outcomes = world.probe([(0, 1), (1, 0)])
        assert all(node_down_at_once(o) for o in outcomes), outcomes
        time.sleep(0.1)

    world.mesh.unpartition(0, 1)
    healed_at = time.monotonic()
    world.until_probes(world.pairs([0, 1, 2]), ok, 15, "the mesh is whole again")
    print(f"unpartition: whole again after {time.monotonic() - healed_at:.2f}s")
    assert {"h0", "h1", "h2", "h2b"} <= set(d.members())


def test_a_frozen_node_rejoins_and_requests_that_expired_meanwhile_never_run(mesh4):
    world = World(mesh4, 3, driver_host=3)
    d, victim = world.driver, world.echo[1]
    assert d("send", actor=victim, method="echo", kwargs={"value": 0})["ok"] == 0

    world.procs[1].send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    # A signal takes effect a moment after kill() returns: a request sent at once
    # could still be handled. Wait until the kernel shows the process stopped.
    wait_until(lambda: process_state(world.procs[1].pid) == "T", 2, "h1 is stopped")
    for i in range(5):  # these wait in h1's socket buffers, past their deadlines
        assert (
            d("send", actor=victim, method="echo", kwargs={"value": i}, nowait=True, timeout=0.3)[
                "ok"
            ]
            is None
        )
    for i in range(3):
        d("call", tag=f"c{i}", actor=victim, method="echo", kwargs={"value": i}, timeout=0.3)
    for i in range(3):
        assert d("result", tag=f"c{i}")["error"] == "CallTimeout"
    assert time.monotonic() - frozen_at < 2.6 * HB, "too slow to test what we meant"
    d("wait_members", absent=["h1"], timeout=5 * SLOW)
    detected = time.monotonic() - frozen_at
    # Frozen well past every deadline and the peers' patience.
    time.sleep(max(0.0, frozen_at + 2.5 - time.monotonic()))
    world.procs[1].send_signal(signal.SIGCONT)
    thawed_at = time.monotonic()

    d("wait_members", names=["h1"], timeout=10 * SLOW)
    world.until_probes(world.pairs([0, 1, 2]), ok, 10, "h1 rejoins everyone")
    print(
        f"\nSIGSTOP: h1 declared down after {detected:.2f}s; after SIGCONT the mesh was "
        f"whole again in {time.monotonic() - thawed_at:.2f}s"
    )
    # Not one of the 8 requests sent while it was frozen ran.
    assert d("send", actor=victim, method="count")["ok"] == 1
    assert d("send", actor=victim, method="echo", kwargs={"value": "fresh"})["ok"] == "fresh"
    assert d("send", actor=victim, method="count")["ok"] == 2


def test_eight_hosts_converge_fast_and_a_killed_host_is_detected_fast(mesh8):
    # Default heartbeat (1 s). The driver lives next to h0's node.
    world = World(mesh8, 8, driver_host=0, heartbeat=1.0)
    d, everyone = world.driver, list(range(8))
    # Converged: every node has every other as a member (56 cross-host calls, one
    # per ordered pair, all succeed). Measured from the last node's "ready" (the
    # discovery part) and from the launch of the 8 processes (with Python startup).
    world.until_probes(world.pairs(everyone), ok, 10, "8 hosts converge")
    now = time.monotonic()
    after_ready, after_launch = now - world.ready_at, now - world.launched_at
    print(
        f"\n8 hosts: discovery converged (full mesh, 56 pairs verified) {after_ready:.2f}s "
        f"after the last node was ready; {after_launch:.2f}s after launching all 8 "
        f"processes (all ready after {world.ready_at - world.launched_at:.2f}s)"
    )
    assert after_ready < 5 * SLOW
    assert after_launch < 15 * SLOW

    world.procs[7].kill()
    killed_at = time.monotonic()
    d("wait_members", absent=["h7"], timeout=10 * SLOW)
    by_driver = time.monotonic() - killed_at
    world.until_probes(
        [(i, 7) for i in range(7)], node_down_at_once, 10, "every host drops h7", probe_timeout=0.3
    )
    by_all = time.monotonic() - killed_at
    print(
        f"8 hosts: SIGKILLed h7 detected by the driver after {by_driver:.2f}s and by "
        f"all 7 other nodes after {by_all:.2f}s (heartbeat 1.0s)"
    )
    assert by_all < 6 * SLOW
    assert all(node_id != world.echo[7] for _, node_id in d("actors"))
