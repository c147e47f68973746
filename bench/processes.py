"""CPU-bound tasks on ``zcell worker --processes 1`` vs ``--processes 2``.

    python -m bench.processes [--tasks 200] [--ms 20] [--reps 3] [--json]

A node is one process, so pure-Python tasks use one core; ``--processes P`` runs
P worker nodes under a supervisor. Each run starts a worker (a child process,
static discovery, a cluster of its own), joins it from this process, warms up,
then times ``--tasks`` tasks of about ``--ms`` milliseconds of pure Python each,
all sent at once and awaited. Prints throughput per P (median of ``--reps``
runs) and the ratio P=2 / P=1. The issue's target is >= 1.7x on 2 cores;
reported, never asserted. Every child is killed by its process group at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from bench._proc import spawn_zcell

TASK = "bench.cpu_tasks.spin"
#: Seconds to wait for a worker's children to be ready and seen by the client.
READY_TIMEOUT = 30.0


def calibrate(ms: float) -> int:
    """The ``n`` for which ``spin(n)`` takes about ``ms`` milliseconds here."""
    from bench.cpu_tasks import spin

    n = 100_000
    start = time.perf_counter()
    spin(n)
    took = time.perf_counter() - start
    return max(1000, int(n * (ms / 1000.0) / took))


def start_worker(processes: int, cluster: str) -> tuple[subprocess.Popen[str], list[str]]:
    """``zcell worker -A bench.cpu_tasks --processes P``; its children's inboxes."""
    args = ["worker", "-A", "bench.cpu_tasks", "--no-mdns", "--cluster", cluster]
    proc = spawn_zcell(args + ["--name", "cpu", "--processes", str(processes), "-c", "1"])
    inboxes: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT
    assert proc.stdout is not None
    while len(inboxes) < processes and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"inbox:\s+(\S+)", line)
        if found:
            inboxes.append(found[1])
    if len(inboxes) < processes:
        stop(proc)
        raise RuntimeError(f"worker --processes {processes}: only {len(inboxes)} ready")
    return proc, inboxes


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill the worker's process group (the supervisor and its children's own groups
    follow: each child gets SIGTERM when its supervisor dies)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def one_run(processes: int, tasks: int, n: int) -> float:
    """Tasks per second of one worker with ``processes`` children."""
    from zcell import App

    cluster = f"bench-proc-{uuid.uuid4().hex[:8]}"
    proc, inboxes = start_worker(processes, cluster)
    app = App("bench-processes", cluster=cluster, peers=inboxes, discovery="static")
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while len(app.node.actors("zcell.queue.celery")) < processes:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker's consumers were not seen")
            time.sleep(0.05)
        for result in [app.send_task(TASK, [n]) for _ in range(4 * processes)]:
            result.get(timeout=60)  # warm-up
        start = time.perf_counter()
        results = [app.send_task(TASK, [n]) for _ in range(tasks)]
        for result in results:
            result.get(timeout=120)
        return tasks / (time.perf_counter() - start)
    finally:
        app.close(timeout=1.0)
        stop(proc)


def run(tasks: int, ms: float, reps: int) -> dict[str, Any]:
    """Median throughput for P = 1 and 2, interleaved run by run, and their ratio."""
    n = calibrate(ms)
    runs: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(reps):
        for processes in runs:
            runs[processes].append(one_run(processes, tasks, n))
    median = {p: statistics.median(v) for p, v in runs.items()}
    return {
        "benchmark": "processes", "tasks": tasks, "task_ms": ms, "spin_n": n,
        "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
        "runs": {str(p): [round(x, 1) for x in v] for p, v in runs.items()},
        "median_tasks_per_s": {str(p): round(x, 1) for p, x in median.items()},
        "ratio": round(median[2] / median[1], 2), "target_ratio": 1.7,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__)
    parser.add_argument("--tasks", type=int, default=200, help="timed tasks per run")
    parser.add_argument("--ms", type=float, default=20.0, help="milliseconds per task")
    parser.add_argument("--reps", type=int, default=3, help="runs per P (the median is kept)")
    parser.add_argument("--json", action="store_true", help="print the JSON only")
    args = parser.parse_args(argv)
    report = run(args.tasks, args.ms, args.reps)
    if not args.json:
        for p, rate in report["median_tasks_per_s"].items():
            print(f"--processes {p}: {rate:8.1f} tasks/s  (runs: {report['runs'][p]})")
        print(f"ratio: {report['ratio']}x (target >= {report['target_ratio']}x)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
