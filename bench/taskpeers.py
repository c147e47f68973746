"""The brokered task queues a user would otherwise pick, on the same tasks as ``bench.tasks``.

    python -m bench.taskpeers [--quick] [celery dramatiq]

Each peer gets a ``redis-server`` of its own (random loopback port, no
persistence, killed afterwards: ``bench.peers._Redis``), a worker process and a
client process: ``add.delay(2, 2).get()`` one at a time (p50/p99), N ``add``s
sent then every result gathered (tasks/s), and for Celery a chord of
``chord_size`` ``add``s into ``xsum``. Neither peer is a dependency of zcell;
one that is not installed is skipped with a message.

- Celery 5: Redis broker and result backend, msgpack, one worker ``--pool=solo``
  (one process, like a zcell worker node).
- Dramatiq 2: ``RedisBroker`` and the ``Results`` middleware on Redis, one worker
  process with 4 threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

TASK_PEERS = ("celery", "dramatiq")
INSTALL = {
    "celery": "pip install 'celery[redis]' and apt-get install redis-server",
    "dramatiq": "pip install 'dramatiq[redis]' and apt-get install redis-server",
}
FULL = {"delay": (100, 1000), "throughput": 20000, "chord": (1, 3), "chord_size": 1000}
QUICK = {"delay": (20, 100), "throughput": 1000, "chord": (1, 2), "chord_size": 100}
BUDGET_S = {"full": 240.0, "quick": 60.0}


def _log(msg: str) -> None:
    print(f"[bench.taskpeers] {msg}", file=sys.stderr, flush=True)


def missing(peer: str) -> str | None:
    """Why *peer* cannot run here (a message for the report), or None."""
    for module in (peer, "redis"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({INSTALL[peer]})"
    if shutil.which("redis-server") is None:
        return f"redis-server not found ({INSTALL[peer]})"
    return None


# --------------------------------------------------------------------------- the peers' apps


def _celery(port: int) -> Any:
    from celery import Celery

    url = f"redis://127.0.0.1:{port}"
    app = Celery("bench_taskpeer", broker=f"{url}/0", backend=f"{url}/1")
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        result_expires=600,
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
    )

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="xsum")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    return app


def _dramatiq(port: int) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=f"redis://127.0.0.1:{port}/0")
    broker.add_middleware(Results(backend=RedisBackend(url=f"redis://127.0.0.1:{port}/1")))
    dramatiq.set_broker(broker)

    @dramatiq.actor(store_results=True, actor_name="add")
    def add(x: int, y: int) -> int:
        return x + y

    return broker, add


def serve(peer: str, port: int) -> None:
    """Child: the peer's worker; prints READY when it consumes."""
    if peer == "celery":
        from celery.signals import worker_ready

        app = _celery(port)
        worker_ready.connect(lambda **_: print("READY {}", flush=True), weak=False)
        app.worker_main(["worker", "--pool=solo", "--loglevel=WARNING", "--without-heartbeat",
                         "--without-gossip", "--without-mingle", "--hostname=bench-tp@%h"])  # fmt: skip
        return
    from dramatiq import Worker

    broker, _ = _dramatiq(port)
    worker = Worker(broker, worker_threads=4)
    worker.start()
    print("READY {}", flush=True)
    while True:
        time.sleep(3600)


def client(peer: str, port: int, counts: dict[str, Any]) -> dict[str, Any]:
    """Child: the measurements, through the peer's own calling API."""
    from bench.mesh import _percentiles

    if peer == "celery":
        app = _celery(port)
        add, xsum = app.tasks["add"], app.tasks["xsum"]

        def send(i: int) -> Any:
            return add.delay(i, 1)

        def get(r: Any) -> Any:
            return r.get(timeout=60)
    else:
        _, add = _dramatiq(port)

        def send(i: int) -> Any:
            return add.send(i, 1)

        def get(r: Any) -> Any:
            return r.get_result(block=True, timeout=60000)

    def timed(fn: Callable[[], Any], warm: int, n: int) -> dict[str, Any]:
        for _ in range(warm):
            fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            times.append(time.perf_counter_ns() - t0)
        return _percentiles(sorted(times))

    out: dict[str, Any] = {"delay_rtt": timed(lambda: get(send(1)), *counts["delay"])}
    n = counts["throughput"]
    t0 = time.perf_counter()
    got = [get(r) for r in [send(i) for i in range(n)]]
    out["tasks_per_s"] = round(n / (time.perf_counter() - t0))
    if got != [i + 1 for i in range(n)]:
        raise RuntimeError("wrong or missing results")
    if peer == "celery":
        from celery import chord

        size = counts["chord_size"]
        run = lambda: chord(add.s(i, i) for i in range(size))(xsum.s()).get(timeout=120)  # noqa: E731
        out["chord"] = {**timed(run, *counts["chord"]), "size": size}
    return out


# --------------------------------------------------------------------------- orchestration


def _run_one(peer: str, quick: bool, budget_s: float) -> dict[str, Any]:
    from bench._proc import Child, ChildError
    from bench.budget import Budget
    from bench.peers import _Redis

    why = missing(peer)
    if why:
        return {"skipped": why}
    budget = Budget(f"bench.taskpeers {peer}", budget_s)
    redis = _Redis(None)
    children: list[Child] = []
    try:
        redis.wait_ready(min(budget.remaining(), 15))
        worker = Child(
            f"{peer}-worker", "bench.taskpeers", ["--serve", peer, "--port", str(redis.port)]
        )
        children.append(worker)
        while not worker.readline(timeout=min(budget.remaining(), 60)).startswith("READY"):
            pass  # the peer's own banner lines
        counts = json.dumps(QUICK if quick else FULL)
        args = ["--client", peer, "--port", str(redis.port), "--counts", counts]
        cl = Child(f"{peer}-client", "bench.taskpeers", args)
        children.append(cl)
        res: dict[str, Any] = json.loads(cl.readline(timeout=budget.remaining()))
        return res
    except (ChildError, TimeoutError, RuntimeError, ValueError) as exc:
        return {"error": f"not finished: {exc}".splitlines()[0]}
    finally:
        for child in children:
            child.kill()
        redis.stop()


def run_task_peers(
    peers: list[str], quick: bool = False, verbose: bool = False, scale: float = 1.0
) -> dict[str, Any]:
    """``{peer: metrics | {"skipped": why} | {"error": ...}}``, one peer after the other."""
    out = {}
    for peer in peers:
        if verbose:
            _log(f"{peer}...")
        out[peer] = _run_one(peer, quick, BUDGET_S["quick" if quick else "full"] * scale)
    return out


def format_task_peers(peers: dict[str, Any], zcell_tasks: dict[str, Any]) -> str:
    """The peers' figures beside zcell's on the same tasks."""
    from bench.report import _fmt, _get, _table

    def lat(d: Any) -> str:
        return f"{_fmt(_get(d, 'p50_us'), '.1f')} / {_fmt(_get(d, 'p99_us'), '.1f')} us"

    zt = zcell_tasks
    best = max((_get(zt, "throughput", w, "tasks_per_s") or 0 for w in ("1", "2")), default=0)
    rows = [("zcell", lat(zt.get("delay_rtt")), f"{_fmt(best)} tasks/s", lat(zt.get("chord")), "")]
    for name, res in peers.items():
        if "skipped" in res or "error" in res:
            rows.append((name, "-", "-", "-", str(res.get("skipped") or res.get("error"))))
            continue
        chord = lat(res["chord"]) if "chord" in res else "-"
        rows.append((name, lat(res["delay_rtt"]), f"{_fmt(res['tasks_per_s'])} tasks/s", chord, ""))
    header = ("task queue", "delay().get() p50 / p99", "throughput", "chord p50 / p99", "notes")
    return "\n".join(_table(header, rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.taskpeers", description=__doc__.split("\n")[0]
    )
    p.add_argument("peers", nargs="*", default=list(TASK_PEERS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--serve", choices=TASK_PEERS, help=argparse.SUPPRESS)
    p.add_argument("--client", choices=TASK_PEERS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--counts", help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve or a.client:
        from bench._proc import die_with_parent

        die_with_parent(a.parent)
        if a.serve:
            serve(a.serve, a.port)
            return 0
        print(json.dumps(client(a.client, a.port, json.loads(a.counts))), flush=True)
        os._exit(0)  # the peers' client threads would hold the exit
    print(json.dumps(run_task_peers(a.peers, quick=a.quick, verbose=True), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
