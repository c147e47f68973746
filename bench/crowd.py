"""The task and call paths in a crowded mesh: does a cost grow with what else is there?

``python -m bench.crowd [--quick] [--json]`` starts one ``zcell worker -A bench.canvas``
child on loopback (static discovery, a cluster of its own) and, from this
program, measures each scenario at a small and a large size; a figure that does
not grow with the size is the point (bench/README.md, "A crowded mesh"):

- ``directory``: ``add.delay(2, 2).get()`` p50 and the rate of a burst of tasks,
  with no other actors in the mesh and with ``--actors`` idle actors (spawned on
  this program's node: every member's directory holds them);
- ``queues``: the same two figures before and after N queue names were each used
  once (their tasks waited, then were revoked);
- ``expiring``: the rate of a burst of tasks sent with ``expires=600``, of size
  N and 2N;
- ``revoke``: N and 2N tasks waiting for a queue nobody consumes; seconds to
  revoke the last ``singles`` of them one by one (``result.revoke()``), then the
  rest of the later half in one call (``app.control.revoke``);
- ``hosting``: a scatter to 3 actors of a node that hosts 0 or N idle actors
  besides (p50), and the seconds that node takes to drop a member that hosted as
  many and stopped (until its loop is free again);
- ``pending``: the CPU share of a process whose node awaits N calls (to a handler
  that sleeps, on another node of the process), and of the same with none.

A scenario that cannot finish is reported (``errors``; exit code 1) and the others
still run. Nothing here is asserted (tests/test_bench.py runs ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import uuid
from typing import Any

from bench.canvas import ROOT, WorkerProc, add, app
from zcell import Actor, CallTimeout, Node

FULL = {"actors": 100_000, "burst": 3000, "pings": 300, "expiring": 10_000,
        "waiting": 10_000, "singles": 1000, "queues": 10_000, "hosted": 20_000, "departure_limit_s": 60.0, "pending": 50_000, "window_s": 5.0}  # fmt: skip
QUICK = {"actors": 5000, "burst": 300, "pings": 50, "expiring": 500,
         "waiting": 500, "singles": 50, "queues": 300, "hosted": 2000, "departure_limit_s": 30.0, "pending": 2000, "window_s": 1.0}  # fmt: skip


class Idle(Actor):
    """What crowds the directory."""

    name = "bench.crowd.Idle"


class Gather(Actor):
    """What a scatter reaches."""

    name = "bench.crowd.Gather"

    class state(Actor.state):
        def ping(self) -> int:
            return 1


class Slow(Actor):
    """A handler that answers late: the calls to it stay pending."""

    name = "bench.crowd.Slow"

    class state(Actor.state):
        def wait(self, s: float = 30.0) -> int:
            import gevent

            gevent.sleep(s)
            return 1


def _log(msg: str) -> None:
    print(f"[bench.crowd] {msg}", file=sys.stderr, flush=True)


def _burst(n: int, **options: Any) -> float:
    """Tasks per second: ``n`` adds sent, then every result gathered."""
    start = time.perf_counter()
    results = [add.apply_async((i, 1), **options) for i in range(n)]
    for result in results:
        result.get(timeout=120)
    return n / (time.perf_counter() - start)


def _p50_us(n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        add.delay(2, 2).get(timeout=10)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e6, 1)


def directory(counts: dict[str, Any]) -> dict[str, Any]:
    node = app.node
    node.register(Idle)
    out = {"none": {"p50_us": _p50_us(counts["pings"]), "rate": round(_burst(counts["burst"]))}}
    n = counts["actors"]
    for _ in range(n):
        node.spawn(Idle, on=node.id, nowait=True)
    deadline = time.monotonic() + 120
    while node.directory.count_on(node.id) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    out[str(n)] = {"p50_us": _p50_us(counts["pings"]), "rate": round(_burst(counts["burst"]))}
    return out


def expiring(counts: dict[str, Any]) -> dict[str, Any]:
    n = counts["expiring"]
    return {str(k): {"rate": round(_burst(k, expires=600))} for k in (n, 2 * n)}


def revoke(counts: dict[str, Any]) -> dict[str, Any]:
    out = {}
    dispatcher = app._runtime().dispatcher
    for k in (counts["waiting"], 2 * counts["waiting"]):
        results = [add.apply_async((i, 1), queue="nobody") for i in range(k)]
        deadline = time.monotonic() + 60
        while app.node.call_in_loop(dispatcher.waiting_count) < k:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{k} tasks did not all wait within 60 s")
            time.sleep(0.05)
        singles = counts["singles"]
        start = time.perf_counter()
        for result in results[-singles:]:
            result.revoke()
        _wait_until_waiting(dispatcher, k - singles, deadline)
        took_singles = time.perf_counter() - start
        start = time.perf_counter()
        app.control.revoke([r.id for r in results[k // 2 : -singles]])
        _wait_until_waiting(dispatcher, k // 2, deadline)
        out[str(k)] = {
            "revoke_half_s": round(time.perf_counter() - start, 4),
            "revoke_singles_s": round(took_singles, 4),
        }
        app.control.revoke([r.id for r in results[: k // 2]])
        _wait_until_waiting(dispatcher, 0, deadline)
    return out


def _wait_until_waiting(dispatcher: Any, n: int, deadline: float) -> None:
    while app.node.call_in_loop(dispatcher.waiting_count) > n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"revoked tasks did not leave (more than {n} still wait)")
        time.sleep(0.001)


def queues(counts: dict[str, Any]) -> dict[str, Any]:
    """Before and after N queue names were each used once (and their tasks revoked)."""
    out = {"none": {"p50_us": _p50_us(counts["pings"]), "rate": round(_burst(counts["burst"]))}}
    n = counts["queues"]
    results = [add.apply_async((i, 1), queue=f"tenant-{i}") for i in range(n)]
    app.control.revoke([r.id for r in results])
    for result in results:
        result.get(timeout=60, propagate=False)
    out[str(n)] = {"p50_us": _p50_us(counts["pings"]), "rate": round(_burst(counts["burst"]))}
    return out


def _cpu_share(window: float) -> float:
    def used() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    start, cpu = time.monotonic(), used()
    time.sleep(window)
    return round((used() - cpu) / (time.monotonic() - start) * 100, 2)


def pending(counts: dict[str, Any]) -> dict[str, Any]:
    """In a process of its own nodes (after the app closed): N calls awaited."""
    cluster = f"bench-crowd-p-{uuid.uuid4().hex[:8]}"
    b = Node(cluster=cluster, discovery="static", peers=[], actors=[Slow])
    b.start()
    a = Node(cluster=cluster, discovery="static", peers=[b.endpoints["inbox"]])
    a.start()
    try:
        a.wait_for(nodes=2, timeout=10)
        slow = a.spawn(Slow, on=b.id)
        out = {"0": {"cpu_pct": _cpu_share(counts["window_s"])}}
        n = counts["pending"]
        a.call_in_loop(
            lambda: [slow.call.wait(s=120.0, timeout=300) for _ in range(n)], timeout=120
        )
        time.sleep(1.0)  # the handlers have started
        out[str(n)] = {"cpu_pct": _cpu_share(counts["window_s"])}
        return out
    finally:
        a.stop()
        b.stop()


def _host_idle(node: Node, n: int) -> None:
    """Start ``n`` idle actors in the node's loop (one spawn call each would take
    a round trip each)."""
    spawn = node.hosting._spawn
    for start in range(0, n, 2000):
        count = min(2000, n - start)
        node.call_in_loop(
            lambda c=count: [
                spawn({"type": Idle.name, "id": uuid.uuid4().hex}, node.id) for _ in range(c)
            ],  # fmt: skip
            timeout=60,
        )


def hosting(counts: dict[str, Any]) -> dict[str, Any]:
    """In a process of its own nodes: a scatter to 3 actors of a node that hosts N
    idle ones besides, and how long that node takes to drop a departed member
    that hosted N."""
    out: dict[str, Any] = {}
    for n in (0, counts["hosted"]):
        cluster = f"bench-crowd-h-{uuid.uuid4().hex[:8]}"
        a = Node(cluster=cluster, discovery="static", peers=[], actors=[Idle, Gather])
        a.start()
        b = Node(cluster=cluster, discovery="static", peers=[a.endpoints["inbox"]], actors=[Idle])
        b.start()
        try:
            a.wait_for(nodes=2, timeout=10)
            _host_idle(a, n)
            _host_idle(b, n)
            gathers = [a.spawn(Gather, on=a.id) for _ in range(3)]
            deadline = time.monotonic() + 60
            while a.directory.count_on(b.id) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            times = []
            for _ in range(counts["pings"]):
                start = time.perf_counter()
                if len(list(gathers[0].scatter.ping(timeout=10))) != 3:
                    raise RuntimeError("a scatter to 3 actors had another count of replies")
                times.append(time.perf_counter() - start)
            start = time.perf_counter()
            b.stop()
            deadline = time.monotonic() + counts["departure_limit_s"]
            while a.directory.count_on(b.id) and time.monotonic() < deadline:
                time.sleep(0.005)
            # Gone from the directory first, then each actor's bindings dropped: the
            # loop is free again once that is done.
            free = True
            try:
                a.call_in_loop(lambda: None, timeout=max(0.0, deadline - time.monotonic()))
            except CallTimeout:
                free = False
            left = a.directory.count_on(b.id)
            out[str(n)] = {"scatter_p50_us": round(statistics.median(times) * 1e6, 1)}
            if left or not free:
                why = f"{left} of {n} actors left" if left else "the loop still busy"
                out[str(n)]["departure_not_finished"] = f"{why} after the limit"
            else:
                out[str(n)]["departure_s"] = round(time.perf_counter() - start, 3)
        finally:
            a.stop()
            b.stop()
    return out


def _run_scenario(report: dict[str, Any], name: str, scenario: Any, counts: dict[str, Any]) -> None:
    """Run one scenario into the report; one that fails is reported as such
    (``errors``) and the others still run."""
    _log(name)
    try:
        report[name] = scenario(counts)
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        report.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")


def run(quick: bool) -> dict[str, Any]:
    counts = QUICK if quick else FULL
    cluster = f"bench-crowd-{uuid.uuid4().hex[:8]}"
    worker = WorkerProc("w1", cluster, 4, None)
    report: dict[str, Any] = {"benchmark": "crowd", "quick": quick, "counts": counts}
    report["worker_pid"] = worker.proc.pid
    try:
        inbox = worker.wait_for(r"inbox:\s+(\S+)", 30).group(1)
        worker.wait_for("^ready$", 30)
        app.conf.update(cluster=cluster, peers=[inbox], task_pending_wait=1.0)
        app.node.wait_for(type="zcell.queue.celery", timeout=30)
        _burst(counts["burst"])  # warm-up
        for name, scenario in (("expiring", expiring), ("revoke", revoke),
                               ("queues", queues), ("directory", directory)):  # fmt: skip
            _run_scenario(report, name, scenario, counts)
    finally:
        app.close(timeout=1.0)
        worker.kill()
    for name, scenario in (("hosting", hosting), ("pending", pending)):
        _run_scenario(report, name, scenario, counts)
    report["cpus"] = os.cpu_count()
    report["loadavg"] = os.getloadavg()
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"NOT FINISHED {e}" for e in report.get("errors", [])]
    lines.append("scenario    size     figure")
    for name in ("directory", "queues", "expiring", "revoke", "hosting", "pending"):
        for size, figures in report.get(name, {}).items():
            shown = ", ".join(f"{k} {v}" for k, v in figures.items())
            lines.append(f"{name:11s} {size:>8s} {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crowd", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (~15 s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    report = run(args.quick)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
