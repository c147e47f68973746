"""A chord of 1000 ``add``s into ``xsum``: how long from apply to the body's result.

``python -m bench.canvas [--n 1000] [--reps 3] [--workers 2] [--concurrency 8]``
starts ``zcell worker -A bench.canvas`` processes on loopback (static discovery,
a cluster of their own), warms up with a chord of 10, then times ``--reps``
chords of ``--n`` header tasks from this (unpatched) program and prints JSON.
Nothing is asserted (tests/test_canvas.py checks that such a chord completes).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from bench._proc import die_with_parent
from zcell import App, chord

ROOT = Path(__file__).resolve().parent.parent

app = App("bench.canvas", discovery="static")


# Named explicitly: run as __main__, the functions' module would be "__main__".
@app.task(name="bench.canvas.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="bench.canvas.xsum")
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


class WorkerProc:
    """One ``zcell worker -A bench.canvas`` child, its output read by a thread."""

    def __init__(self, name: str, cluster: str, concurrency: int, peer: str | None) -> None:
        argv = [sys.executable, "-m", "zcell", "worker", "-A", "bench.canvas", "--no-mdns"]
        argv += ["-n", name, "--cluster", cluster, "-c", str(concurrency), "-l", "warning"]
        if peer:
            argv += ["--peer", peer]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        parent = os.getpid()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: die_with_parent(parent),  # killed with us, however we end
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if m := re.search(pattern, line):
                return m
        raise RuntimeError(f"worker did not print {pattern!r} within {timeout}s")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


def time_chord(n: int, timeout: float) -> float:
    """Seconds from applying a chord of ``n`` adds to having the body's result."""
    start = time.perf_counter()
    result = chord((add.s(i, i) for i in range(n)), xsum.s())().get(timeout=timeout)
    elapsed = time.perf_counter() - start
    if result != n * (n - 1):
        raise RuntimeError(f"the chord gave {result}, not {n * (n - 1)}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.canvas", description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="header tasks per chord")
    parser.add_argument("--reps", type=int, default=3, help="timed chords")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="-c of each worker")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on one chord")
    args = parser.parse_args(argv)
    cluster = f"bench-canvas-{uuid.uuid4().hex[:8]}"
    workers: list[WorkerProc] = []
    try:
        inbox = None
        for i in range(args.workers):
            worker = WorkerProc(f"w{i + 1}", cluster, args.concurrency, inbox)
            workers.append(worker)
            found = worker.wait_for(r"inbox:\s+(\S+)", 30).group(1)
            inbox = inbox or found
            worker.wait_for("^ready$", 30)
        app.conf.update(cluster=cluster, peers=[inbox])
        app.node.wait_for(type="zcell.queue.celery", timeout=30)
        time_chord(10, args.timeout)  # warm-up: connections, coordinator, caches
        runs = [time_chord(args.n, args.timeout) for _ in range(args.reps)]
    finally:
        app.close(timeout=1.0)
        for worker in workers:
            worker.kill()
    report = {
        "benchmark": "chord_add_xsum",
        "n": args.n,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "runs_s": [round(r, 4) for r in runs],
        "median_s": round(statistics.median(runs), 4),
        "tasks_per_s": round((args.n + 1) / statistics.median(runs), 1),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
