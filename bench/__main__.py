"""The benchmark suite: the floor and zcell side by side, and optional peers.

    python -m bench [--quick] [--pin] [--peers zerorpc,celery,ray] [--out DIR]

Runs :func:`bench.floor.run_floor`, then :func:`bench.mesh.run_mesh`, then the
peers asked for (:mod:`bench.peers`); prints a table of zcell's figures as
ratios to the floor of the same run and the issue's targets (met/missed), and
writes ``<out>/<date>-<host>[-quick].json`` plus PNG plots (matplotlib, the
``bench`` extra; skipped with a message without it). Exit code 0 when every
scenario ran (targets are reported, never asserted), 1 when one failed.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _other_cpu(before: Any, after: Any) -> float | None:
    """CPU seconds that programs other than this one and its children used between two
    ``bench.floor._cpu_counters()`` readings (the machine may be shared)."""
    if not before or not after:
        return None
    return round(max(0.0, (after[0] - before[0]) - (after[1] - before[1])), 1)


def run(
    quick: bool = False,
    pin: bool = False,
    peers: list[str] | None = None,
    floor_reps: int | None = None,
    verbose: bool = True,
    budget_scale: float | None = None,
) -> dict[str, Any]:
    """The whole suite; returns the result dict that is written as JSON.

    Every part's time budget is multiplied by *budget_scale* (default: measured
    by :func:`bench.budget.calibrate` at the start of the run), so that a slow
    phase of the machine stretches the budgets instead of failing the run.
    """
    from bench import report
    from bench.budget import calibrate
    from bench.floor import _cpu_counters, _versions, run_floor
    from bench.mesh import run_mesh
    from bench.peers import PEERS
    from bench.taskpeers import TASK_PEERS
    from bench.tasks import compute_ratios as task_ratios
    from bench.tasks import run_tasks

    calibration = calibrate()
    scale = calibration["factor"] if budget_scale is None else budget_scale
    if verbose:
        _log(
            f"calibration: {calibration['work_ms']} ms (reference {calibration['reference_ms']}); budgets x{scale}"
        )

    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    load0, cpu0, t0 = os.getloadavg(), _cpu_counters(), time.monotonic()
    phases: dict[str, Any] = {}

    def timed(name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        if verbose:
            _log(f"{name}...")
        l0, s0, c0 = os.getloadavg(), time.monotonic(), _cpu_counters()
        res = fn(*args, **kw)
        phases[name] = {
            "elapsed_s": round(time.monotonic() - s0, 1),
            "loadavg": {"before": list(l0), "after": list(os.getloadavg())},
            "other_cpu_s": _other_cpu(c0, _cpu_counters()),
        }
        if verbose:
            _log(f"{name}: {phases[name]['elapsed_s']}s")
        return res

    floor = timed(
        "floor", run_floor, quick=quick, pin=pin, reps=floor_reps, verbose=verbose, scale=scale
    )
    mesh = timed("zcell", run_mesh, quick=quick, pin=pin, verbose=verbose, scale=scale)
    phases["zcell"]["parts"] = mesh["phases"]
    tasks = timed("tasks", run_tasks, quick=quick, verbose=verbose, scale=scale)
    phases["tasks"]["parts"] = tasks["phases"]
    peer_results: dict[str, Any] = {}
    task_peer_results: dict[str, Any] = {}
    call_peers = [x for x in peers or [] if x in PEERS]
    if call_peers:
        from bench.peers import run_peers

        peer_results = timed("peers", run_peers, call_peers, quick=quick, pin=pin, verbose=verbose)
    queue_peers = [x for x in peers or [] if x in TASK_PEERS]
    if queue_peers:
        from bench.taskpeers import run_task_peers

        task_peer_results = timed(
            "task peers", run_task_peers, queue_peers, quick=quick, verbose=verbose, scale=scale
        )

    other_cpu_s = _other_cpu(cpu0, _cpu_counters())
    ratios = report.compute_ratios(floor, mesh["metrics"])
    ratios.update(task_ratios(floor, mesh["metrics"], tasks["metrics"], task_peer_results))
    all_metrics = {**mesh["metrics"], "tasks": tasks["metrics"]}
    import zcell

    versions = _versions()
    versions["zcell"] = zcell.__version__
    return {
        "benchmark": "bench",
        "schema": 1,
        "started": started,
        "host": socket.gethostname(),
        "quick": quick,
        "placement": floor["placement"],
        "cpus": mesh["cpus"],
        "nproc": os.cpu_count(),
        "versions": versions,
        "argv": sys.argv[1:],
        "loadavg": {"before": list(load0), "after": list(os.getloadavg())},
        "other_cpu_s": other_cpu_s,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "calibration": calibration,
        "budget_scale": scale,
        "phases": phases,
        "floor": floor,
        "zcell": mesh,
        "ratios": ratios,
        "tasks": tasks,
        "targets": report.evaluate_targets(ratios, all_metrics),
        "errors": report.zcell_errors(mesh["metrics"]) + report.zcell_errors(tasks["metrics"]),
        "peers": peer_results,
        "task_peers": task_peer_results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run (~30 s)")
    p.add_argument(
        "--pin", action="store_true", help="pin client and server processes to different CPUs"
    )
    p.add_argument(
        "--peers",
        default="",
        metavar="LIST",
        help="comma-separated peers to measure too: zerorpc, celery, ray, dramatiq (each "
        "optional; celery and dramatiq also run the task benchmarks with their own Redis)",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory ({DEFAULT_OUT})"
    )
    p.add_argument(
        "--floor-reps", type=int, default=None, help="floor repetitions (default 3; quick 1)"
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument(
        "--budget-scale",
        type=float,
        default=None,
        help="multiply every time budget by this (default: from a calibration of the run)",
    )
    a = p.parse_args(argv)

    from bench import report
    from bench.peers import PEERS
    from bench.taskpeers import TASK_PEERS

    peers = [x.strip() for x in a.peers.split(",") if x.strip()]
    known = sorted(set(PEERS) | set(TASK_PEERS))
    unknown = [x for x in peers if x not in known]
    if unknown:
        p.error(f"unknown peer(s) {unknown}; choose from {', '.join(known)}")

    result = run(
        quick=a.quick,
        pin=a.pin,
        peers=peers,
        floor_reps=a.floor_reps,
        budget_scale=a.budget_scale,
    )

    a.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    stem = a.out / f"{stamp}-{result['host']}{'-quick' if a.quick else ''}"
    files = report.save_result(result, stem, report.write_plots, a.no_plots)
    print(report.format_report(result))
    print()
    report.print_files(files)
    if result["errors"]:
        print(f"{len(result['errors'])} scenario(s) failed; see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
