"""How long beat takes to replace a leader that dies.

    python -m bench.beat [--reps 5] [--heartbeat 0.3] [--json]

Each rep starts three beat candidates ``b1``, ``b2``, ``b3`` (``zcell worker -B -A
bench.beat``: child processes, static discovery, a cluster of their own, 0.3 s
heartbeats by default, one periodic task every half second), waits for ``b1`` to
lead, SIGKILLs ``b1`` and times until ``b2`` says it leads (its
``zcell.beat.candidate`` status, asked every 10 ms from this process's node).
TASKS.md: a dead leader is replaced "within ~2 heartbeat intervals". Prints each
rep and the median, in seconds and in heartbeats; reported, never asserted. Every
child is killed by its process group at the end of its rep.
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
from zcell import App
from zcell.tasks.beat import CANDIDATE_TYPE

#: Seconds to wait for a candidate to start, for the mesh to form, for a leader.
READY_TIMEOUT = 30.0
#: Seconds after the kill past which a rep counts as "no takeover".
TAKEOVER_TIMEOUT = 20.0

# The candidates' app: one periodic task, which they also run.
app = App("bench_beat", discovery="static")


@app.task
def tick() -> None:
    """Nothing: the ticks only keep the leader busy sending."""


app.add_periodic_task(0.5, tick, name="tick")


def _start(name: str, cluster: str, heartbeat: float, peer: str | None) -> tuple[Any, str]:
    """``zcell worker -B -A bench.beat``; the process and its inbox."""
    args = ["worker", "-B", "-A", "bench.beat", "-c", "1", "--no-mdns", "--cluster", cluster]
    args += ["--name", name, "--heartbeat", str(heartbeat)]
    proc = spawn_zcell(args + (["--peer", peer] if peer else []))
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = re.search(r"inbox:\s+(\S+)", line)
        if found:
            return proc, found[1]
    _kill(proc)
    raise RuntimeError(f"candidate {name} did not start")


def _kill(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _leading(node: Any, name: str) -> bool:
    """Whether candidate ``name`` says it leads (False while it cannot be asked)."""
    ids = {n["id"]: n["name"] for n in node.nodes()}
    for ref in node.actors(CANDIDATE_TYPE):
        if ids.get(ref.node_id) == name:
            try:
                return bool(ref.send("status", {}, timeout=1.0)["leading"])
            except Exception:  # noqa: BLE001 - not answering is "not leading"
                return False
    return False


def _wait(what: str, predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def one_rep(heartbeat: float, pids: list[int]) -> float:
    """Seconds from ``b1``'s SIGKILL until ``b2`` leads; the candidates' pids are
    added to ``pids``."""
    from zcell import Node

    cluster = f"bench-beat-{uuid.uuid4().hex[:8]}"
    procs: dict[str, subprocess.Popen[str]] = {}
    node = None
    try:
        procs["b1"], inbox = _start("b1", cluster, heartbeat, None)
        for name in ("b2", "b3"):
            procs[name], _ = _start(name, cluster, heartbeat, inbox)
        pids += [proc.pid for proc in procs.values()]
        node = Node(
            "bench-beat", cluster=cluster, peers=[inbox], discovery="static", heartbeat=heartbeat
        ).start()
        seen = lambda: len(node.actors(CANDIDATE_TYPE)) == 3  # noqa: E731
        _wait("the three candidates", seen, READY_TIMEOUT)
        _wait("b1 to lead", lambda: _leading(node, "b1"), READY_TIMEOUT)
        time.sleep(4 * heartbeat)  # a few lease renewals
        procs["b1"].send_signal(signal.SIGKILL)
        return _wait("b2 to lead", lambda: _leading(node, "b2"), TAKEOVER_TIMEOUT)
    finally:
        if node is not None:
            node.stop(timeout=1.0)
        for proc in procs.values():
            _kill(proc)


def run(reps: int, heartbeat: float) -> dict[str, Any]:
    pids: list[int] = []
    took = [one_rep(heartbeat, pids) for _ in range(reps)]
    median = statistics.median(took)
    return {
        "benchmark": "beat", "heartbeat_s": heartbeat, "reps": reps,
        "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
        "takeover_s": [round(x, 3) for x in took],
        "takeover_heartbeats": [round(x / heartbeat, 2) for x in took],
        "median_s": round(median, 3), "median_heartbeats": round(median / heartbeat, 2),
        "target_heartbeats": 2.0, "pids": pids,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.beat", description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="leaders killed (one mesh each)")
    parser.add_argument("--heartbeat", type=float, default=0.3, help="seconds between heartbeats")
    parser.add_argument("--json", action="store_true", help="print the JSON only")
    args = parser.parse_args(argv)
    report = run(args.reps, args.heartbeat)
    if not args.json:
        for s, hb in zip(report["takeover_s"], report["takeover_heartbeats"], strict=True):
            print(f"b2 leads {s * 1000:7.1f} ms after b1's SIGKILL ({hb:.2f} heartbeats)")
        print(
            f"median: {report['median_s'] * 1000:.1f} ms = {report['median_heartbeats']:.2f} "
            f"heartbeats (TASKS.md: ~{report['target_heartbeats']:g})"
        )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
