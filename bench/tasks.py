"""Task-layer benchmarks: a client program against ``zcell worker`` child processes.

    python -m bench.tasks [--quick] [--json]      # tasks only: no floor, no ratios

``python -m bench`` runs this after the actor benchmarks (:mod:`bench.mesh`) and
quotes the figures as ratios to the floor of the same run. Parties, each its own
process on loopback, one cluster per run, static discovery:

- ``w1``: ``zcell worker -A bench.taskapp -Q solo,celery`` (queue ``solo``: the
  one-worker runs);
- ``w2``: ``zcell worker -A bench.taskapp -Q celery`` (queue ``celery``: the
  two-worker runs, spread over ``w1`` and ``w2``);
- ``m1``: ``zcell worker -A bench.taskapp -Q mem``, the worker whose RSS is read
  before and after it ran (and keeps the records of) N tasks;
- the client: a plain program with the app (its node started on first use);
- CPU-bound tasks: ``python -m bench.processes`` as a child, which starts its own
  ``zcell worker --processes 1`` and ``2``.

Scenarios (see bench/README.md for the counts): ``delay_rtt``
(``add.delay(2, 2).get()`` one at a time), ``throughput`` (N ``delay``s, then
every result gathered; one worker and two), ``chain`` (a chain 10 deep when
``zcell.chain`` exists, else 10 sequential ``delay().get()``), ``chord`` (1000
``add``s into ``xsum``: ``bench.canvas`` when it exists, else ``zcell.chord``,
else "not available"), ``fanout`` (parents each ``get()`` 100 children inside
the task), ``memory`` and ``processes``.
"""

from __future__ import annotations

# Only the standard library at import time: the worker child must let `zcell worker`
# monkey-patch before gevent-using modules are loaded.
import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

CHAIN_DEPTH = 10
FANOUT_CHILDREN = 100
#: (name, queues, concurrency) of the worker nodes.
WORKERS = (("w1", "solo,celery", 4), ("w2", "celery", 4), ("m1", "mem", 4))

FULL: dict[str, Any] = {
    "delay": (500, 5000),
    "throughput": (1000, 20000),
    "chain": (20, 200),
    "chord": (1, 5),
    "chord_size": 1000,
    "fanout_parents": 8,
    "results": 100000,
    "processes": {"tasks": 100, "ms": 20.0},
    # ~100 s for the 100k results alone at ~1k tasks/s on the shared 2-core VM
    "budget_s": {"tasks": 420.0, "processes": 90.0},
}
QUICK: dict[str, Any] = {
    "delay": (50, 500),
    "throughput": (100, 2000),
    "chain": (5, 20),
    "chord": (1, 2),
    "chord_size": 100,
    "fanout_parents": 2,
    "results": 5000,
    "processes": {"tasks": 10, "ms": 5.0},
    "budget_s": {"tasks": 45.0, "processes": 40.0},
}


def _log(msg: str) -> None:
    print(f"[bench.tasks] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- worker child


def worker_main(name: str, cluster: str, peer: str | None, parent: int) -> int:
    """Child: ``zcell worker -A bench.taskapp`` through the CLI's own ``main``."""
    from bench._proc import die_with_parent

    die_with_parent(parent)
    from zcell.cli import main

    queues, concurrency = next((q, c) for n, q, c in WORKERS if n == name)
    argv = ["worker", "-A", "bench.taskapp", "-n", name, "--cluster", cluster, "-Q", queues]
    argv += ["-c", str(concurrency), "--no-mdns", "--json", "-l", "warning"]
    return main(argv + (["--peer", peer] if peer else []))


# --------------------------------------------------------------------------- client child


def client_main(cluster: str, peer: str, counts: dict[str, Any], mem_pid: int) -> dict[str, Any]:
    """Child: every scenario in sequence; a scenario that raises is reported as an error."""
    from bench import taskapp
    from bench.mesh import _percentiles

    app = taskapp.app
    app.conf.update(cluster=cluster, peers=[peer], discovery="static")
    try:
        _wait_for_queues(app, {"solo": 1, "celery": 2, "mem": 1})
        return _run_scenarios(_scenarios(taskapp, counts, mem_pid, _percentiles))
    finally:
        app.close(timeout=1.0)


def _wait_for_queues(app: Any, wanted: dict[str, int], timeout: float = 30.0) -> None:
    """Until this client sees every queue's consumers (the workers' queue actors)."""
    deadline = time.monotonic() + timeout
    while any(len(app.node.actors(f"zcell.queue.{q}")) < n for q, n in wanted.items()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers' queues {wanted} were not seen within {timeout}s")
        time.sleep(0.05)


def _run_scenarios(scenarios: list[tuple[str, Callable[[], dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in scenarios:
        print(f"PROGRESS {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as exc:  # reported in the JSON, the run goes on
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["elapsed_s"] = round(time.perf_counter() - t0, 2)
        out[name] = res
    return out


def _gather(results: list[Any], timeout: float = 60.0) -> list[Any]:
    return [r.get(timeout=timeout) for r in results]


def _scenarios(
    t: Any, counts: dict[str, Any], mem_pid: int, percentiles: Callable[[list[int]], Any]
) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    import zcell
    from bench.mesh import rss_kib

    add, xsum, clock = t.add, t.xsum, time.perf_counter_ns

    def timed(fn: Callable[[], Any], warm: int, n: int) -> dict[str, Any]:
        for _ in range(warm):
            fn()
        times = []
        for _ in range(n):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        return percentiles(sorted(times))

    def delay_rtt() -> dict[str, Any]:
        def one() -> None:
            if add.delay(2, 2).get(timeout=10) != 4:
                raise RuntimeError("add(2, 2) != 4")

        return timed(one, *counts["delay"])

    def rate(queue: str, n: int) -> float:
        t0 = time.perf_counter()
        got = _gather([add.apply_async((i, 1), queue=queue) for i in range(n)], 120.0)
        took = time.perf_counter() - t0
        if got != [i + 1 for i in range(n)]:
            raise RuntimeError(f"{queue}: wrong or missing results")
        return n / took

    def throughput() -> dict[str, Any]:
        warm, n = counts["throughput"]
        out: dict[str, Any] = {"n": n}
        for workers, queue in (("1", "solo"), ("2", "celery")):
            rate(queue, warm)
            out[workers] = {"tasks_per_s": round(rate(queue, n)), "queue": queue}
        return out

    chain_fn = getattr(zcell, "chain", None)

    def chain() -> dict[str, Any]:
        if chain_fn is not None:
            sig = [add.s(1, 1)] + [add.s(1)] * (CHAIN_DEPTH - 1)

            def one() -> None:
                chain_fn(*sig).apply_async().get(timeout=20)

            how = "zcell.chain"
        else:

            def one() -> None:
                for i in range(CHAIN_DEPTH):
                    add.delay(i, 1).get(timeout=10)

            how = "10 sequential delay().get() (no zcell.chain)"
        res = timed(one, *counts["chain"])
        res.update(depth=CHAIN_DEPTH, how=how, per_step_p50_us=round(res["p50_us"] / 10, 1))
        return res

    def chord() -> dict[str, Any]:
        size = counts["chord_size"]
        run = _chord_runner(zcell, add, xsum, size)
        if run is None:
            return {"not_available": "no bench.canvas and no zcell.chord on this branch"}
        res = timed(run, *counts["chord"])
        res["size"] = size
        return res

    def fanout() -> dict[str, Any]:
        parents = counts["fanout_parents"]
        expected = sum(2 * i for i in range(FANOUT_CHILDREN))
        t.fanout.delay(FANOUT_CHILDREN).get(timeout=60)  # warm-up
        t0 = time.perf_counter()
        got = _gather([t.fanout.delay(FANOUT_CHILDREN) for _ in range(parents)], 120.0)
        took = time.perf_counter() - t0
        if got != [expected] * parents:
            raise RuntimeError(f"fan-out results {got} != {expected}")
        return {
            "parents": parents,
            "children_per_parent": FANOUT_CHILDREN,
            "elapsed_ms": round(took * 1000, 1),
            "children_per_s": round(parents * FANOUT_CHILDREN / took),
        }

    def memory() -> dict[str, Any]:
        n = counts["results"]
        rate("mem", 1000)
        before = rss_kib(mem_pid)
        for start in range(0, n, 10000):  # in slices: the submitter's window stays small
            _gather(
                [add.apply_async((i, 1), queue="mem") for i in range(start, min(n, start + 10000))]
            )
        time.sleep(0.5)  # the last records settle
        after = rss_kib(mem_pid)
        per = (after - before) * 1024 / n
        return {
            "results": n,
            "rss_before_mib": round(before / 1024, 1),
            "rss_after_mib": round(after / 1024, 1),
            "bytes_per_result": round(per),
            "per_100k_mib": round(per * 100000 / 2**20, 1),
        }

    return [
        ("delay_rtt", delay_rtt),
        ("throughput", throughput),
        ("chain", chain),
        ("chord", chord),
        ("fanout", fanout),
        ("memory", memory),
    ]


def _chord_runner(zcell: Any, add: Any, xsum: Any, size: int) -> Callable[[], None] | None:
    """One chord of *size* ``add``s into ``xsum``, awaited: ``bench.canvas`` when it is
    there (the canvas engineers' own), else ``zcell.chord``; None when neither is."""
    import importlib.util

    if importlib.util.find_spec("bench.canvas") is not None:
        import bench.canvas as canvas

        runner = getattr(canvas, "chord_runner", None)
        if runner is not None:
            return runner(add, xsum, size)  # type: ignore[no-any-return]
    chord = getattr(zcell, "chord", None)
    if chord is None:
        return None
    expected = sum(i + i for i in range(size))

    def run() -> None:
        got = chord(add.s(i, i) for i in range(size))(xsum.s()).get(timeout=60)
        if got != expected:
            raise RuntimeError(f"chord: {got} != {expected}")

    return run


# --------------------------------------------------------------------------- orchestrator


def run_tasks(quick: bool = False, verbose: bool = False, scale: float = 1.0) -> dict[str, Any]:
    """Run the task scenarios and the CPU-bound ``--processes`` runs.

    Returns ``{"metrics": {...}, "phases": {...}, "counts": ...}``; a phase that
    cannot finish within its budget (times *scale*) is ``{"error": "not finished: ..."}``.
    """
    cfg = QUICK if quick else FULL
    metrics: dict[str, Any] = {}
    phases: dict[str, Any] = {}
    for name, body in (("tasks", _tasks_phase), ("processes", _processes_phase)):
        t0 = time.monotonic()
        budget = cfg["budget_s"][name] * scale
        try:
            metrics.update(body(cfg, budget, verbose))
        except Exception as exc:  # the next phase and the table go on
            metrics[f"{name}_phase"] = {"error": f"not finished: {type(exc).__name__}: {exc}"}
        phases[name] = {"elapsed_s": round(time.monotonic() - t0, 1), "budget_s": round(budget, 1)}
    counts = {k: v for k, v in cfg.items() if k != "budget_s"}
    return {
        "benchmark": "tasks",
        "quick": quick,
        "counts": counts,
        "metrics": metrics,
        "phases": phases,
    }


def _tasks_phase(cfg: dict[str, Any], budget_s: float, verbose: bool) -> dict[str, Any]:
    from bench._proc import Child, ChildError
    from bench.budget import Budget

    budget = Budget("bench.tasks", budget_s)
    cluster = f"bench-tasks-{uuid.uuid4().hex[:8]}"
    children: list[Child] = []

    def start(name: str, peer: str | None) -> dict[str, Any]:
        child = Child(
            f"worker[{name}]",
            "bench.tasks",
            ["--worker", name, "--cluster", cluster] + (["--peer", peer] if peer else []),
        )
        children.append(child)
        line = child.readline(timeout=min(budget.remaining(), 30.0))
        info: dict[str, Any] = json.loads(line) if line.startswith("{") else {}
        if info.get("event") != "ready":
            raise ChildError(f"{child.name}: unexpected output {line!r}\n{child.stderr_tail()}")
        return info

    try:
        first = start(WORKERS[0][0], None)
        peer = first["endpoints"]["inbox"]
        pids = {WORKERS[0][0]: first["pid"]}
        for name, _, _ in WORKERS[1:]:
            pids[name] = start(name, peer)["pid"]
        args = ["--client", "--cluster", cluster, "--peer", peer, "--counts", json.dumps(cfg)]
        client = Child("client[tasks]", "bench.tasks", args + ["--mem-pid", str(pids["m1"])])
        children.append(client)
        while True:
            line = client.readline(timeout=budget.remaining())
            if line.startswith("PROGRESS ") and verbose:
                _log(line[len("PROGRESS ") :])
            elif line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return result
    finally:
        for child in children:
            child.kill()


def _processes_phase(cfg: dict[str, Any], budget_s: float, verbose: bool) -> dict[str, Any]:
    """``python -m bench.processes`` as a child (it starts and kills its own workers)."""
    from bench._proc import ROOT

    p = cfg["processes"]
    argv = [sys.executable, "-m", "bench.processes", "--tasks", str(p["tasks"])]
    argv += ["--ms", str(p["ms"]), "--reps", "1", "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if verbose:
        _log("processes: --processes 1 and 2")
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget_s)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.processes exited {proc.returncode}: {proc.stderr[-500:]}")
    return {"processes": json.loads(proc.stdout.strip().splitlines()[-1])}


# --------------------------------------------------------------------------- ratios, targets, table


def compute_ratios(
    floor: dict[str, Any], mesh: dict[str, Any], tasks: dict[str, Any], peers: dict[str, Any]
) -> dict[str, float | None]:
    """Task figures over the floor (and zcell's own send, and the best peer) of the run."""
    from bench.report import _div, _get

    f = floor["floor"]
    rtt, oneway = f["rtt_p50_us"], f["oneway_msgs_per_s"]
    p99 = _get(floor, "variants", f.get("rtt_p50_from") or "", "rtt_p99_us")
    best = _best_task_rate(tasks)
    peer = max((_get(r, "tasks_per_s") or 0 for r in peers.values()), default=0) or None
    return {
        "task_delay_p50": _div(_get(tasks, "delay_rtt", "p50_us"), rtt),
        "task_delay_p99": _div(_get(tasks, "delay_rtt", "p99_us"), p99),
        "task_delay_p50_vs_send": _div(
            _get(tasks, "delay_rtt", "p50_us"), _get(mesh, "send_rtt", "p50_us")
        ),
        "task_throughput_1": _div(_get(tasks, "throughput", "1", "tasks_per_s"), oneway, 4),
        "task_throughput_2": _div(_get(tasks, "throughput", "2", "tasks_per_s"), oneway, 4),
        "task_throughput": _div(best, oneway, 4),
        "task_throughput_vs_peer": _div(best, peer),
        "task_chain_p50": _div(_get(tasks, "chain", "p50_us"), rtt),
        "task_chord_p50": _div(_get(tasks, "chord", "p50_us"), rtt),
        "task_fanout_child": _div(_get(tasks, "fanout", "children_per_s"), oneway, 4),
    }


def _best_task_rate(tasks: dict[str, Any]) -> float | None:
    from bench.report import _get

    rates = [_get(tasks, "throughput", w, "tasks_per_s") for w in ("1", "2")]
    return max((r for r in rates if isinstance(r, int | float)), default=None)


def format_tasks(tasks: dict[str, Any], ratios: dict[str, Any]) -> str:
    """The task metrics table: value and ratio to the floor of the same run."""
    from bench.report import _fmt, _get, _table, _x

    m, r = tasks, ratios

    def lat(path: tuple[str, ...]) -> str:
        d = _get(m, *path) or {}
        if "not_available" in d:
            return "not available"
        return f"{_fmt(d.get('p50_us'), '.1f')} / {_fmt(d.get('p99_us'), '.1f')} us"

    def rate(v: Any, unit: str) -> str:
        return f"{_fmt(v)} {unit}"

    p = _get(m, "processes") or {}
    mem = _get(m, "memory") or {}
    rows = [
        ("add.delay(2, 2).get() p50 / p99", lat(("delay_rtt",)),
         f"{_x(r.get('task_delay_p50'))} RTT, {_x(r.get('task_delay_p50_vs_send'))} zcell send"),
        ("throughput, 1 worker (delay all, gather all)",
         rate(_get(m, "throughput", "1", "tasks_per_s"), "tasks/s"), f"{_x(r.get('task_throughput_1'))} one-way"),
        ("throughput, 2 workers", rate(_get(m, "throughput", "2", "tasks_per_s"), "tasks/s"),
         f"{_x(r.get('task_throughput_2'))} one-way"),
        (f"chain {CHAIN_DEPTH} deep ({_get(m, 'chain', 'how') or '-'})", lat(("chain",)),
         f"{_x(r.get('task_chain_p50'))} RTT"),
        (f"chord of {_get(m, 'chord', 'size') or 1000} add into xsum", lat(("chord",)),
         f"{_x(r.get('task_chord_p50'))} RTT"),
        (f"get() inside tasks: {_get(m, 'fanout', 'parents')} parents x {FANOUT_CHILDREN}",
         rate(_get(m, "fanout", "children_per_s"), "children/s"),
         f"{_fmt(_get(m, 'fanout', 'elapsed_ms'), '.1f')} ms"),
        (f"worker holding {_fmt(mem.get('results'))} results (RSS growth)",
         f"{_fmt(mem.get('bytes_per_result'))} B/result, {_fmt(mem.get('per_100k_mib'), '.1f')} MiB/100k",
         f"RSS {_fmt(mem.get('rss_before_mib'), '.1f')} -> {_fmt(mem.get('rss_after_mib'), '.1f')} MiB"),
        ("CPU-bound tasks, --processes 1 / 2",
         f"{_fmt(_get(p, 'median_tasks_per_s', '1'), '.1f')} / {_fmt(_get(p, 'median_tasks_per_s', '2'), '.1f')} tasks/s",
         f"{_x(p.get('ratio'))} (P=2 / P=1)"),
    ]  # fmt: skip
    from bench.report import zcell_errors

    lines = _table(("task metric", "value", "ratio"), rows)
    return "\n".join(lines + [f"ERROR {err}" for err in zcell_errors(m)])


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply the time budgets")
    # child modes (used by the orchestrator)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cluster", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--counts", help=argparse.SUPPRESS)
    p.add_argument("--mem-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        assert a.parent is not None and a.cluster
        return worker_main(a.worker, a.cluster, a.peer, a.parent)
    if a.client:
        from bench._proc import die_with_parent

        die_with_parent(a.parent)
        result = client_main(a.cluster, a.peer, json.loads(a.counts), a.mem_pid)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    result = run_tasks(quick=a.quick, verbose=True, scale=a.budget_scale)
    print(json.dumps(result, indent=2) if a.json else format_tasks(result["metrics"], {}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
