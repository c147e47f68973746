"""Work-flows while workers are killed: every result must come.

    python -m bench.chaos [--seconds 60] [--clients 4] [--get-timeout 90] [--json]

Starts three ``zcell worker -A bench.taskapp -c 4`` children (static discovery, a
cluster of their own). ``--clients`` threads of this process apply, one after the
other, chords of 5-60 ``add``s into ``xsum``, chains of four ``add``s and plain
``add``s, and wait for each result; meanwhile every 2-4 s one worker is
SIGKILLed and started again 0.5-2 s later (with the same name: a start the mesh
refuses because the name is still taken is tried again a second later). Counts
each kind's outcomes: the right value, a typed error (``WorkerLostError``,
``ChordError``, ...), a wrong value, or no outcome within ``--get-timeout``
(``TaskTimeout``: a hang). The last two are the defects this looks for; the
process exits 1 when any is seen. Not a timing benchmark: the counts are
reported, and the random kills differ from run to run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from bench._proc import spawn_zcell

#: Seconds to wait for a worker to say it is ready.
READY_TIMEOUT = 30.0
#: Outcomes that are defects (the rest are values or typed errors).
DEFECTS = ("WRONG", "TaskTimeout")


class Workers:
    """The three worker children, killed and started again by name."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.pids: list[int] = []  # every worker process started
        self.refused = 0

    def start(self, name: str, peer: str | None) -> str:
        """Start ``name``; its inbox once it says it is ready."""
        args = ["worker", "-A", "bench.taskapp", "--no-mdns", "--name", name]
        args += ["--cluster", self.cluster, "-c", "4"]
        proc = spawn_zcell(args + (["--peer", peer] if peer else []))
        self.procs[name] = proc
        self.pids.append(proc.pid)
        assert proc.stdout is not None
        inbox, deadline = None, time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(r"inbox:\s+(\S+)", line)
            inbox = found[1] if found else inbox
            if line.strip() == "ready" and inbox:
                threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
                return inbox
        raise RuntimeError(f"worker {name} did not start")

    def restart(self, name: str, peer: str) -> None:
        """Start ``name`` again, until the mesh no longer refuses its name."""
        for _ in range(20):
            self.start(name, peer)
            time.sleep(1.0)
            if self.procs[name].poll() is None:
                return
            self.refused += 1
        raise RuntimeError(f"worker {name} could not join again")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def kill_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def _drain(stream: Any) -> None:
    """Read a child's output to its end (a full pipe would stop the child)."""
    for _ in stream:
        pass


def _client(k: int, until: float, get_timeout: float, outcomes: collections.Counter[Any]) -> None:
    import zcell
    from bench import taskapp

    add, xsum = taskapp.add, taskapp.xsum
    rng = random.Random(k)
    while time.monotonic() < until:
        kind = rng.choice(["chord", "chain", "plain"])
        try:
            if kind == "chord":
                n = rng.randint(5, 60)
                result = zcell.chord([add.s(i, i) for i in range(n)], xsum.s())()
                want = n * (n - 1)
            elif kind == "chain":
                result = (add.s(1, 1) | add.s(2) | add.s(3) | add.s(4))()
                want = 11
            else:
                result, want = add.delay(k, 1), k + 1
            got = result.get(timeout=get_timeout)
            outcome = "ok" if got == want else "WRONG"
        except Exception as exc:  # noqa: BLE001 - each kind of ending is counted
            outcome = type(exc).__name__
        outcomes[f"{kind} {outcome}"] += 1


def run(seconds: float, clients: int, get_timeout: float, seed: int) -> dict[str, Any]:
    from bench import taskapp

    cluster = f"bench-chaos-{uuid.uuid4().hex[:8]}"
    workers = Workers(cluster)
    app = taskapp.app
    outcomes: collections.Counter[str] = collections.Counter()
    kills = 0
    try:
        first = workers.start("w1", None)
        for name in ("w2", "w3"):
            workers.start(name, first)
        app.conf.update(cluster=cluster, peers=[first], discovery="static")
        deadline = time.monotonic() + READY_TIMEOUT
        while len(app.node.actors("zcell.queue.celery")) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers' consumers were not seen")
            time.sleep(0.05)
        me = app.node.endpoints["inbox"]  # restarted workers join here: it stays up
        until = time.monotonic() + seconds
        threads = [
            threading.Thread(target=_client, args=(k, until, get_timeout, outcomes))
            for k in range(clients)
        ]
        for thread in threads:
            thread.start()
        rng = random.Random(seed)
        while time.monotonic() < until:
            time.sleep(rng.uniform(2, 4))
            victim = rng.choice(["w1", "w2", "w3"])
            workers.kill(victim)
            kills += 1
            time.sleep(rng.uniform(0.5, 2))
            workers.restart(victim, me)
        for thread in threads:
            thread.join(get_timeout + 60)
        stats = app.node.statistics()
    finally:
        app.close(timeout=1.0)
        workers.kill_all()
    defects = sum(n for key, n in outcomes.items() if key.split()[1] in DEFECTS)
    return {
        "benchmark": "chaos", "seconds": seconds, "clients": clients, "seed": seed,
        "kills": kills, "refused_restarts": workers.refused,
        "outcomes": dict(sorted(outcomes.items())), "defects": defects,
        "counters": {k: v for k, v in stats.items() if k.startswith("canvas_") and v},
        "pids": workers.pids,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long workers are killed")
    parser.add_argument("--clients", type=int, default=4, help="threads applying work-flows")
    parser.add_argument("--get-timeout", type=float, default=90.0, help="seconds a get() waits")
    parser.add_argument("--seed", type=int, default=None, help="the kills' random seed")
    parser.add_argument("--json", action="store_true", help="print the JSON only")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    report = run(args.seconds, args.clients, args.get_timeout, seed)
    if not args.json:
        print(f"{report['kills']} kills in {args.seconds:g} s (seed {seed}):")
        for key, n in report["outcomes"].items():
            print(f"  {key:28} {n:6}")
        print(f"defects (wrong values, hangs): {report['defects']}")
    print(json.dumps(report))
    return 1 if report["defects"] else 0


if __name__ == "__main__":
    sys.exit(main())
