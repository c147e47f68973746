"""Dashboard soak: N tasks through a worker while `zcell dashboard` watches; the
dashboard's RSS against its task cap.

    python -m bench.dashboard                    # 200 000 tasks, --max-tasks 10000
    python -m bench.dashboard --tasks 20000 --max-tasks 2000 --json

Parties, each a separate process on loopback (static discovery): a ``zcell
worker -A bench.dashboard -c 300`` running `noop` (a pool that takes a whole batch at
once: with a backlog held at the submitter, delivery stalls now and then, see
bench/README.md), a ``zcell dashboard --max-tasks
CAP`` subscribed to every event (4 per task), and this process submitting the
tasks in batches (each batch waited for). After each batch it reads the
dashboard's RSS from ``/proc/<pid>/status`` and its ``/api/summary``. It asserts
nothing: it prints the RSS when the cap was first reached and at the end (flat
means bounded), the peak, the tasks kept, and the rate. Exit code 0 when the run
completed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from typing import Any

from zcell import App, ZcellError

app = App("bench.dashboard", discovery="static")

#: Tasks submitted before waiting for the last of them.
BATCH = 1000


@app.task(name="bench.dashboard.noop")
def noop(i: int) -> int:
    """The soaked task: as cheap as a task gets, so the dashboard's share shows."""
    return i


def _start(argv: list[str], pattern: str) -> tuple[subprocess.Popen[bytes], str]:
    """A child process (its output to a temporary file, so that it never blocks on
    a full pipe) and the first match of ``pattern`` in that output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out.seek(0)
        match = re.search(pattern, out.read().decode(errors="replace"))
        if match:
            return proc, match.group(1)
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{' '.join(argv[:3])} did not start")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def _summary(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/summary", timeout=10) as response:
        data: dict[str, Any] = json.load(response)
        return data


def run(tasks: int, max_tasks: int) -> dict[str, Any]:
    """Soak ``tasks`` tasks; the dashboard's RSS samples and summary."""
    cluster = f"bench-dash-{uuid.uuid4().hex[:8]}"
    mesh = ["--no-mdns", "--cluster", cluster]
    worker, inbox = _start(
        ["zcell", "worker", "-A", "bench.dashboard", "-c", "300", "--name", "w1", *mesh],
        r"inbox:\s+(\S+)",
    )
    dash, url = _start(
        [
            "zcell",
            "dashboard",
            "--port",
            "0",
            "--max-tasks",
            str(max_tasks),
            "--peer",
            inbox,
            *mesh,
        ],
        r"url:\s+(\S+)",
    )
    try:
        app.conf.update(cluster=cluster, peers=[inbox])
        noop.delay(-1).get(timeout=30)  # the client has found the worker's queue
        time.sleep(2.0)  # the dashboard subscribes and enables events
        start, at_cap, peak, samples = time.monotonic(), None, 0.0, []
        stalled = None
        for first in range(0, tasks, BATCH):
            results = [noop.delay(i) for i in range(first, min(first + BATCH, tasks))]
            try:
                results[-1].get(timeout=60)
            except ZcellError as exc:  # a delivery stall: report what was measured
                stalled = f"batch at {first}: {exc}"
                print(f"[bench.dashboard] stalled: {stalled}", file=sys.stderr, flush=True)
                break
            if first // BATCH % 20 == 0:
                print(f"[bench.dashboard] {first + BATCH} sent", file=sys.stderr, flush=True)
            rss = _rss_mb(dash.pid)
            peak = max(peak, rss)
            kept = _summary(url)["tasks"]
            samples.append({"sent": first + len(results), "rss_mb": round(rss, 1), "kept": kept})
            if at_cap is None and kept >= max_tasks:
                at_cap = rss
        elapsed = time.monotonic() - start
        time.sleep(1.0)
        summary = _summary(url)
        end = _rss_mb(dash.pid)
    finally:
        app.close()
        for proc in (dash, worker):
            proc.terminate()
            proc.wait(10)
    return {
        "tasks": samples[-1]["sent"] if samples else 0,
        "stalled": stalled,
        "max_tasks": max_tasks,
        "seconds": round(elapsed, 1),
        "tasks_per_s": round((samples[-1]["sent"] if samples else 0) / elapsed),
        "rss_at_cap_mb": None if at_cap is None else round(at_cap, 1),
        "rss_end_mb": round(end, 1),
        "rss_peak_mb": round(peak, 1),
        "kept": summary["tasks"],
        "events_seen": summary["events"],
        "samples": samples[:: max(1, len(samples) // 20)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000, help="tasks to soak (default 200000)")
    parser.add_argument("--max-tasks", type=int, default=10_000, help="the dashboard's cap")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = run(args.tasks, args.max_tasks)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key != "samples":
                print(f"{key:>14}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
