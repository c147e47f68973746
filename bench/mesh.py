"""zcell benchmarks: a client program against ``zcell node`` child processes.

    python -m bench.mesh [--quick] [--pin] [--json]      # zcell only, no floor, no ratios

``python -m bench`` runs this beside the floor (:mod:`bench.floor`) and quotes
the figures as ratios to it. Parties, each a separate process on loopback:

- ``s1``..``s4``: ``zcell node -A bench.actors`` (the server side; pinned to the
  server CPU with ``--pin``);
- ``c1``: ``zcell node -A bench.actors`` on the client CPU, hosting ``Pinger``,
  whose handler times ``send`` from inside an actor (actor to actor, s1's ``Ping``);
- the client: a plain, unpatched program (a ``Node`` in its main thread, as a
  user's script has), which spawns the actors it needs and runs the scenarios;
- for memory and spawn rate, a fresh cluster: one node ``m1`` and a client.

Everything goes through zcell's public API. Every wait has a deadline; children
are killed by pid when the run ends or fails. Times come from
``time.perf_counter_ns``/``perf_counter`` (monotonic).
"""

from __future__ import annotations

# Only the standard library at import time: the node child must let `zcell node`
# monkey-patch before gevent-using modules are loaded.
import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

SERVER_NODES = ("s1", "s2", "s3", "s4")
SCATTER_SIZES = (1, 16, 64)
WINDOWS = (1, 10, 100)
CHAIN_DEPTH = 10

# Counts per scenario: (warm-up, measured) or a plain count. The full run of both
# phases takes ~70-90 s on the 2-core dev VM; budget_s is a backstop for hangs.
FULL: dict[str, Any] = {
    "send": (2000, 20000),
    "actor_send": (2000, 20000),
    "call": (1000, 10000),  # per window size
    "nowait": (5000, 100000),
    "throw_sync": (200, 2000),
    "throw_nowait": (1000, 20000),
    "scatter": (20, 300),  # per fan-out
    "chain": (50, 1000),
    "idle_actors": 100000,
    "spawn_warm": 1000,
    "spawn_sync": 1000,
    "spawn_local": 10000,
    "reps": 3,  # repetitions of send, call and nowait: the median is reported
    "budget_s": {"mesh": 150.0, "memory": 60.0},  # per phase, times the run's scale
}
#: Seconds of a phase's budget kept for the client to stop its node and report.
REPORT_S = 4.0
QUICK: dict[str, Any] = {
    "send": (200, 2000),
    "actor_send": (200, 2000),
    "call": (100, 1000),
    "nowait": (500, 10000),
    "throw_sync": (50, 200),
    "throw_nowait": (100, 2000),
    "scatter": (5, 50),
    "chain": (10, 100),
    "idle_actors": 10000,
    "spawn_warm": 200,
    "spawn_sync": 200,
    "spawn_local": 2000,
    "reps": 1,
    "budget_s": {"mesh": 35.0, "memory": 20.0},
}


def _log(msg: str) -> None:
    print(f"[bench.mesh] {msg}", file=sys.stderr, flush=True)


def _percentiles(sorted_ns: list[int]) -> dict[str, Any]:
    from bench.floor import _percentile

    return {
        "p50_us": round(_percentile(sorted_ns, 0.50), 1),
        "p99_us": round(_percentile(sorted_ns, 0.99), 1),
        "mean_us": round(sum(sorted_ns) / len(sorted_ns) / 1000.0, 1),
        "n": len(sorted_ns),
    }


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (as the floor reports the median of its
    repetitions), with every run's ``key`` beside it."""
    ordered = sorted(runs, key=lambda run: run[key])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["reps"] = [run[key] for run in runs]
    return out


def _time_calls(call: Any, warm: int, n: int, check: Any) -> dict[str, Any]:
    """Warm up, then time ``n`` calls of ``call(i)`` one at a time; ``check(i, result)``
    raises on a wrong result. Returns the percentiles."""
    from bench.floor import time_calls

    return _percentiles(time_calls(call, warm, n, check))


def rss_kib(pid: int) -> int:
    """VmRSS of process *pid* in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


# --------------------------------------------------------------------------- node child


def node_main(name: str, cluster: str, peer: str | None, cpu: int | None, parent: int) -> int:
    """Child: ``zcell node -A bench.actors`` through the CLI's own ``main``."""
    from bench._proc import die_with_parent, pin_to

    die_with_parent(parent)
    pin_to(cpu)
    from zcell.cli import main

    argv = ["node", "-A", "bench.actors", "--name", name, "--cluster", cluster]
    argv += ["--no-mdns", "--json", "--loglevel", "warning"]
    if peer:
        argv += ["--peer", peer]
    return main(argv)


# --------------------------------------------------------------------------- client child


class _Client:
    """The client program: one ``Node`` in a plain thread, scenarios in sequence."""

    def __init__(
        self, cluster: str, peer: str, counts: dict[str, Any], within: float | None = None
    ) -> None:
        from zcell import Node

        self.counts = counts
        # The phase's budget, less time to stop and report: no wait goes past it, so
        # a scenario that cannot finish fails with what it reached and the rest of
        # the phase is still reported (a 120 s poll in a 60 s phase was killed
        # with nothing printed).
        self.deadline = None if within is None else time.monotonic() + within
        self.node = Node("bench-client", cluster=cluster, discovery="static", peers=[peer])
        self.node.start()

    def progress(self, msg: str) -> None:
        print("PROGRESS " + msg, flush=True)

    def run(self, scenarios: list[tuple[str, Callable[[], dict[str, Any]]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fn in scenarios:
            self.progress(name)
            t0 = time.perf_counter()
            try:
                res = fn()
            except Exception as exc:  # reported in the JSON, the run goes on
                import traceback

                res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            res["elapsed_s"] = round(time.perf_counter() - t0, 2)
            out[name] = res
        return out

    def stop(self) -> None:
        self.node.stop(timeout=2)

    # -- helpers -----------------------------------------------------------

    def left(self, cap: float) -> float:
        """A wait's timeout: *cap* seconds, or what the phase's budget leaves (at
        least a moment, so that a scenario past the budget fails at once)."""
        if self.deadline is None:
            return cap
        return max(0.1, min(cap, self.deadline - time.monotonic()))

    def poll(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Call *check* until it is true; a few ms between calls; RuntimeError at
        *timeout* or at the end of the phase's budget, whichever is first."""
        timeout = self.left(timeout)
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{what}: not reached within {timeout:.0f}s")
            time.sleep(0.005)


def client_main(
    mode: str,
    cluster: str,
    peer: str,
    counts: dict[str, Any],
    mem_pid: int | None,
    within: float | None = None,
) -> dict[str, Any]:
    c = _Client(cluster, peer, counts, within)
    try:
        if mode == "mesh":
            return _mesh_scenarios(c)
        return _memory_scenarios(c, mem_pid)
    finally:
        c.stop()


def _mesh_scenarios(c: _Client) -> dict[str, Any]:
    import collections

    from bench import actors as A

    node, counts = c.node, c.counts
    node.wait_for(nodes=len(SERVER_NODES) + 2, timeout=20)  # + c1 + this client
    ping = node.spawn(A.Ping, on="s1")
    sink = node.spawn(A.Sink, on="s1")
    pinger = node.spawn(A.Pinger, on="c1")
    workers = [node.spawn(A.Worker, on=s) for s in SERVER_NODES]
    chain = [node.spawn(A.Chain, on=SERVER_NODES[i % 4]) for i in range(CHAIN_DEPTH)]
    clock = time.perf_counter_ns

    def send_rtt() -> dict[str, Any]:
        warm, n = counts["send"]
        p = ping.send.ping

        def check(i: int, got: Any) -> None:
            if got != i:
                raise RuntimeError(f"reply {got!r} to ping {i}")

        runs = [_time_calls(lambda i: p(x=i), warm, n, check) for _ in range(counts["reps"])]
        return _median_run(runs, "p50_us")

    def actor_send_rtt() -> dict[str, Any]:
        warm, n = counts["actor_send"]
        res = pinger.send.rtt(target=ping, warm=warm, n=n, timeout=c.left(120))
        out = _percentiles(res["sorted_ns"])
        out["caller"] = "Pinger handler on node c1"
        return out

    def call_pipelined() -> dict[str, Any]:
        warm, n = counts["call"]
        out: dict[str, Any] = {}
        for window in WINDOWS:
            p = ping.call.ping
            runs = []
            for count in (warm, *[n] * counts["reps"]):
                q: collections.deque[Any] = collections.deque()
                t0 = time.perf_counter()
                for i in range(count):
                    if len(q) >= window:
                        q.popleft().get()
                    q.append(p(x=i))
                last = None
                while q:
                    last = q.popleft().get()
                t1 = time.perf_counter()
                if last != count - 1:
                    raise RuntimeError(f"last reply {last!r}, expected {count - 1}")
                runs.append({"calls_per_s": round(count / (t1 - t0)), "n": count})
            out[str(window)] = _median_run(runs[1:], "calls_per_s")
        return out

    def nowait_oneway() -> dict[str, Any]:
        warm, n = counts["nowait"]
        hit = sink.send.hit
        runs = []
        for count in (warm, *[n] * counts["reps"]):
            sink.send.reset()
            t0 = time.perf_counter()
            for i in range(count):
                hit(x=i, nowait=True)
            got = [0]

            def arrived(count: int = count, got: list[int] = got) -> bool:
                got[0] = sink.send.count(timeout=c.left(30))
                return got[0] >= count

            c.poll(arrived, 60, f"nowait: {count} sent, {got[0]} counted")
            rate = count / (time.perf_counter() - t0)
            if got[0] != count:
                raise RuntimeError(f"nowait: sent {count}, actor counted {got[0]}")
            runs.append({"msgs_per_s": round(rate), "n": count, "count": got[0]})
        return _median_run(runs[1:], "msgs_per_s")

    def throw() -> dict[str, Any]:
        warm, n = counts["throw_sync"]
        w = workers[0].throw.work

        def check(i: int, got: Any) -> None:
            if got != i:
                raise RuntimeError(f"throw reply {got!r} to {i}")

        sync = _time_calls(lambda i: w(x=i), warm, n, check)
        warm, n = counts["throw_nowait"]
        rate = 0.0
        per_actor: list[dict[str, Any]] = []
        for count in (warm, n):
            for wk in workers:
                wk.send.reset()
            t0 = time.perf_counter()
            for i in range(count):
                w(x=i, nowait=True)
            total = [0]

            def arrived(count: int = count, total: list[int] = total) -> bool:
                per_actor[:] = [wk.send.count(timeout=c.left(30)) for wk in workers]
                total[0] = sum(r["n"] for r in per_actor)
                return total[0] >= count

            c.poll(arrived, 60, f"throw nowait: {count} sent, {total[0]} counted")
            rate = count / (time.perf_counter() - t0)
            if total[0] != count:
                raise RuntimeError(f"throw nowait: sent {count}, actors counted {total[0]}")
        got = [r["n"] for r in per_actor]
        return {
            "sync_p50_us": sync["p50_us"],
            "sync_p99_us": sync["p99_us"],
            "sync_n": sync["n"],
            "nowait_msgs_per_s": round(rate),
            "nowait_n": n,
            "actors": len(workers),
            "nodes": len({r["node"] for r in per_actor}),
            "per_actor": {r["node"]: r["n"] for r in per_actor},
            # N throws over k actors give N/k each (API.md): spread is max - min.
            "spread": max(got) - min(got),
            "spreads": max(got) - min(got) <= 1 and min(got) > 0,
        }

    def scatter() -> dict[str, Any]:
        warm, n = counts["scatter"]
        out: dict[str, Any] = {}
        spawned = 0
        first = None
        for size in SCATTER_SIZES:
            while spawned < size:
                ref = node.spawn(A.Gather, on=SERVER_NODES[spawned % 4])
                first = first or ref
                spawned += 1
            assert first is not None
            sc = first.scatter.ping
            short = 0
            samples = [0] * n
            for i in range(warm):
                list(sc(x=i, timeout=5))
            for i in range(n):
                t0 = clock()
                replies = list(sc(x=i, timeout=5))
                samples[i] = clock() - t0
                if len(replies) != size:
                    short += 1
            samples.sort()
            res = _percentiles(samples)
            res["actors"] = size
            res["nodes"] = min(size, 4)
            res["short"] = short
            if short:
                res["error"] = f"{short} of {n} scatters ended with fewer than {size} replies"
            out[str(size)] = res
        return out

    def chain10() -> dict[str, Any]:
        warm, n = counts["chain"]
        head, rest = chain[0], chain[1:]

        def check(i: int, depth: Any) -> None:
            if depth != CHAIN_DEPTH:
                raise RuntimeError(f"chain returned depth {depth}")

        res = _time_calls(lambda i: head.send.chain(refs=rest), warm, n, check)
        res["depth"] = CHAIN_DEPTH
        res["per_hop_p50_us"] = round(res["p50_us"] / CHAIN_DEPTH, 1)
        res["nodes"] = 4
        return res

    def node_stats() -> dict[str, Any]:
        """Counters of every node after the scenarios: drops, late replies, failures."""
        out = {"client": node.statistics()}
        for name in (*SERVER_NODES, "c1"):
            probe = node.spawn(A.Probe, on=name)
            out[name] = probe.send.stats()
        return _with_anomalies(out)

    return c.run(
        [
            ("send_rtt", send_rtt),
            ("actor_send_rtt", actor_send_rtt),
            ("call_pipelined", call_pipelined),
            ("nowait_oneway", nowait_oneway),
            ("throw", throw),
            ("scatter", scatter),
            ("chain", chain10),
            ("node_stats", node_stats),
        ]
    )


def _memory_scenarios(c: _Client, mem_pid: int | None) -> dict[str, Any]:
    from bench import actors as A
    from zcell import CallTimeout

    node, counts = c.node, c.counts
    assert mem_pid is not None
    node.wait_for(nodes=2, timeout=20)
    spawner = node.spawn(A.Spawner, on="m1")
    hosted = [0]

    def hosted_at_least(n: int) -> Callable[[], bool]:
        def check() -> bool:
            # The question waits at m1 behind the spawns sent before it: in a slow
            # phase longer than one call's timeout. Asked again until the poll's
            # own deadline (a run of 3 full runs lost spawn_memory to it).
            try:
                hosted[0] = spawner.send.hosted(timeout=c.left(30))
            except CallTimeout:
                return False
            return hosted[0] >= n

        return check

    def spawn_and_memory() -> dict[str, Any]:
        warm, n = counts["spawn_warm"], counts["idle_actors"]
        spawn = node.spawn
        for _ in range(warm):
            spawn(A.Idle, on="m1", nowait=True)
        c.poll(hosted_at_least(1 + warm), 60, "warm-up spawns")
        time.sleep(0.2)
        rss0, own0 = rss_kib(mem_pid), rss_kib(os.getpid())
        t0 = time.perf_counter()
        for _ in range(n):
            spawn(A.Idle, on="m1", nowait=True)
        sent = time.perf_counter() - t0
        c.poll(hosted_at_least(1 + warm + n), 120, f"{n} nowait spawns (hosted {hosted[0]})")
        elapsed = time.perf_counter() - t0
        time.sleep(0.2)
        rss1, own1 = rss_kib(mem_pid), rss_kib(os.getpid())
        per_actor = (rss1 - rss0) * 1024 / n
        return {
            "idle_actors": n,
            "nowait_actors_per_s": round(n / elapsed),
            "nowait_issue_s": round(sent, 2),
            "rss_before_mib": round(rss0 / 1024, 1),
            "rss_after_mib": round(rss1 / 1024, 1),
            "bytes_per_actor": round(per_actor),
            "per_100k_mib": round(per_actor * 100000 / 2**20, 1),
            # The client is a member too: its copy of the directory grew with the spawns.
            "client_rss_delta_mib": round((own1 - own0) / 1024, 1),
            "hosted": hosted[0],
        }

    def spawn_sync() -> dict[str, Any]:
        n = counts["spawn_sync"]
        t0 = time.perf_counter()
        for _ in range(n):
            node.spawn(A.Idle, on="m1")
        return {"actors_per_s": round(n / (time.perf_counter() - t0)), "n": n}

    def spawn_local() -> dict[str, Any]:
        n = counts["spawn_local"]
        seconds = spawner.send.spawn_idle(n=n, timeout=c.left(120))
        return {"actors_per_s": round(n / seconds), "n": n}

    def node_stats() -> dict[str, Any]:
        probe = node.spawn(A.Probe, on="m1")
        return _with_anomalies({"client": node.statistics(), "m1": probe.send.stats()})

    return c.run(
        [
            ("spawn_memory", spawn_and_memory),
            ("spawn_sync", spawn_sync),
            ("spawn_local", spawn_local),
            ("node_stats_memory", node_stats),
        ]
    )


# Counters that should stay at zero in a healthy run on loopback.
ANOMALY_COUNTERS = (
    "dropped_bad_frames",
    "dropped_stale",
    "dropped_expired",
    "late_replies",
    "nowait_failures",
    "send_failures",
    "errors",
)


def _with_anomalies(stats: dict[str, Any]) -> dict[str, Any]:
    """Node counters, plus ``anomalies``: the non-zero ones that should be zero."""
    anomalies = {
        f"{who}.{key}": s[key] for who, s in stats.items() for key in ANOMALY_COUNTERS if s.get(key)
    }
    return {"nodes": stats, "anomalies": anomalies}


# --------------------------------------------------------------------------- orchestration


def run_mesh(
    quick: bool = False, pin: bool = False, verbose: bool = False, scale: float = 1.0
) -> dict[str, Any]:
    """Run the zcell scenarios; see the module docstring.

    Returns ``{"metrics": {...}, "placement": ..., "phases": {...}, ...}``. A
    scenario that fails has ``"error"`` in its entry; a phase whose child dies or
    misses its deadline (each phase's budget times *scale*) is reported as
    ``"<phase>_phase": {"error": "not finished: ..."}`` and the next phase runs.
    Children are killed on return.
    """
    from bench._proc import Child, ChildError
    from bench.budget import Budget

    cfg = QUICK if quick else FULL
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu = server_cpu = None
    if pin:
        if len(cpus) < 2:
            raise RuntimeError(f"--pin needs two CPUs, have {cpus}")
        client_cpu, server_cpu = cpus[0], cpus[1]
    placement = f"cpu{client_cpu}/cpu{server_cpu}" if pin else "unpinned"
    t_start = time.monotonic()
    budget = Budget("bench.mesh", 0.0)

    def remaining() -> float:
        return budget.remaining()

    def cpu_args(cpu: int | None) -> list[str]:
        return [] if cpu is None else ["--cpu", str(cpu)]

    children: list[Child] = []

    def start_node(name: str, cluster: str, peer: str | None, cpu: int | None) -> Child:
        args = ["--node", name, "--cluster", cluster] + (["--peer", peer] if peer else [])
        child = Child(f"node[{name}]", "bench.mesh", args + cpu_args(cpu))
        children.append(child)
        return child

    def banner(child: Child) -> dict[str, Any]:
        line = child.readline(timeout=min(remaining(), 30.0))
        try:
            info = json.loads(line)
        except ValueError:
            info = {}
        if info.get("event") != "ready":
            raise ChildError(f"{child.name}: unexpected output {line!r}\n{child.stderr_tail()}")
        affinity[info["name"]] = sorted(os.sched_getaffinity(info["pid"]))
        return info

    def run_client(mode: str, cluster: str, peer: str, mem_pid: int | None) -> dict[str, Any]:
        args = ["--client", mode, "--cluster", cluster, "--peer", peer]
        args += ["--counts", json.dumps(cfg)] + cpu_args(client_cpu)
        # The child stops its waits this long before the phase's end, to report.
        args += ["--within", f"{max(1.0, remaining() - REPORT_S):.1f}"]
        if mem_pid is not None:
            args += ["--mem-pid", str(mem_pid)]
        child = Child(f"client[{mode}]", "bench.mesh", args)
        children.append(child)
        while True:
            line = child.readline(timeout=remaining())
            if line.startswith("PROGRESS "):
                if verbose:
                    _log(f"{mode}: {line[len('PROGRESS ') :]}")
            elif line.startswith("RESULT "):
                res: dict[str, Any] = json.loads(line[len("RESULT ") :])
                affinity[f"client[{mode}]"] = res.pop("affinity")
                return res
            else:
                raise ChildError(f"{child.name}: unexpected output {line!r}")

    def phase(name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        nonlocal budget
        budget = Budget(f"bench.mesh {name}", cfg["budget_s"][name], scale)
        load0, t0 = os.getloadavg(), time.monotonic()
        try:
            metrics = body()
        except (ChildError, TimeoutError) as exc:
            metrics = {f"{name}_phase": {"error": f"not finished: {exc}".splitlines()[0]}}
        finally:
            for child in children:
                child.kill()
            children.clear()
        phases[name] = {
            "elapsed_s": round(time.monotonic() - t0, 1),
            "loadavg": {"before": list(load0), "after": list(os.getloadavg())},
            "budget_s": round(budget.total, 1),
        }
        return metrics

    def mesh_phase() -> dict[str, Any]:
        cluster = f"bench-{uuid.uuid4().hex[:8]}"
        s1 = start_node("s1", cluster, None, server_cpu)
        peer = banner(s1)["endpoints"]["inbox"]
        others = [start_node(s, cluster, peer, server_cpu) for s in SERVER_NODES[1:]]
        others.append(start_node("c1", cluster, peer, client_cpu))
        for child in others:
            banner(child)
        return run_client("mesh", cluster, peer, None)

    def memory_phase() -> dict[str, Any]:
        cluster = f"bench-{uuid.uuid4().hex[:8]}"
        m1 = start_node("m1", cluster, None, server_cpu)
        info = banner(m1)
        return run_client("memory", cluster, info["endpoints"]["inbox"], info["pid"])

    phases: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    affinity: dict[str, list[int]] = {}
    try:
        metrics.update(phase("mesh", mesh_phase))
        metrics.update(phase("memory", memory_phase))
    finally:
        for child in children:
            child.kill()
    return {
        "benchmark": "zcell",
        "quick": quick,
        "placement": placement,
        "cpus": {"client": client_cpu, "server": server_cpu, "available": cpus},
        "affinity": affinity,
        "counts": {k: v for k, v in cfg.items() if k != "budget_s"},
        "metrics": metrics,
        "phases": phases,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mesh", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    p.add_argument("--pin", action="store_true", help="client and servers on different CPUs")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply the time budgets")
    # child modes (used by the orchestrator)
    p.add_argument("--node", help=argparse.SUPPRESS)
    p.add_argument("--client", choices=("mesh", "memory"), help=argparse.SUPPRESS)
    p.add_argument("--cluster", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--counts", help=argparse.SUPPRESS)
    p.add_argument("--mem-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--within", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.node:
        assert a.parent is not None and a.cluster
        return node_main(a.node, a.cluster, a.peer, a.cpu, a.parent)
    if a.client:
        from bench._proc import die_with_parent, pin_to

        die_with_parent(a.parent)
        pin_to(a.cpu)
        counts = json.loads(a.counts)
        result = client_main(a.client, a.cluster, a.peer, counts, a.mem_pid, a.within)
        result["affinity"] = sorted(os.sched_getaffinity(0))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    result = run_mesh(quick=a.quick, pin=a.pin, verbose=True, scale=a.budget_scale)
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        from bench.report import format_zcell

        print(format_zcell(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
