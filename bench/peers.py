"""Optional peers: the same two measurements with zerorpc, Celery + Redis and Ray.

    python -m bench --peers zerorpc,celery,ray
    python -m bench.peers [--quick] [--pin] [zerorpc celery ray]

None of them is a zcell dependency: each is measured only when it is installed
(else skipped with a message; bench/README.md says how to install them). Per
peer, a server and a client in separate processes on loopback:

- ``sync_p50_us``/``sync_p99_us``: one call at a time, ``ping(x) -> x``;
- ``pipelined_calls_per_s``: calls with up to 100 in flight (as zcell's
  ``call_pipelined["100"]``), the client collecting the oldest reply first.

zerorpc: ``zerorpc.Server`` in one process, ``zerorpc.Client`` (``async_=True``
for pipelining) in another. Celery: a Redis server this module starts on a
random loopback port and stops (``redis-server`` from Debian), broker and result
backend; one worker, ``--pool=solo``. Ray: ``ray.init()`` in the client (the
driver; it starts Ray's local processes) and a Ray actor; usage statistics off.
"""

from __future__ import annotations

# Only the standard library at import time (each peer's library is imported by
# the child that uses it).
import argparse
import collections
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

PEERS = ("zerorpc", "celery", "ray")
WINDOW = 100
# (warm-up, measured) calls; budget_s is per peer.
FULL: dict[str, Any] = {"sync": (200, 2000), "pipelined": (500, 5000), "budget_s": 120.0}
QUICK: dict[str, Any] = {"sync": (20, 200), "pipelined": (50, 500), "budget_s": 60.0}

INSTALL = {
    "zerorpc": "pip install zerorpc",
    "celery": "pip install 'celery[redis]' and apt-get install redis-server",
    "ray": "pip install ray",
}


def _log(msg: str) -> None:
    print(f"[bench.peers] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def missing(peer: str) -> str | None:
    """Why *peer* cannot be measured here (None: it can)."""
    modules = {"zerorpc": ["zerorpc"], "celery": ["celery", "redis"], "ray": ["ray"]}[peer]
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed ({INSTALL[peer]})"
    if peer == "celery" and shutil.which("redis-server") is None:
        return f"redis-server not found ({INSTALL[peer]})"
    return None


# --------------------------------------------------------------------------- measuring


def measure(
    sync_call: Callable[[int], Any],
    start_call: Callable[[int], Any],
    wait: Callable[[Any], Any],
    counts: dict[str, Any],
) -> dict[str, Any]:
    """Client side, common to all peers: sync RTT samples, then a pipelined run."""
    from bench.floor import _percentile, time_calls

    def check(i: int, got: Any) -> None:
        if got != i:
            raise RuntimeError(f"reply {got!r} to {i}")

    clock = time.perf_counter_ns
    warm, n = counts["sync"]
    samples = time_calls(sync_call, warm, n, check)
    rate = 0.0
    warm, n = counts["pipelined"]
    for count in (warm, n):
        q: collections.deque[Any] = collections.deque()
        t0 = clock()
        last = None
        for i in range(count):
            if len(q) >= WINDOW:
                last = wait(q.popleft())
            q.append(start_call(i))
        while q:
            last = wait(q.popleft())
        rate = count / ((clock() - t0) / 1e9)
        if last != count - 1:
            raise RuntimeError(f"last pipelined reply {last!r}, expected {count - 1}")
    return {
        "sync_p50_us": round(_percentile(samples, 0.5), 1),
        "sync_p99_us": round(_percentile(samples, 0.99), 1),
        "sync_n": len(samples),
        "pipelined_calls_per_s": round(rate),
        "pipelined_n": n,
        "window": WINDOW,
    }


# --------------------------------------------------------------------------- zerorpc


class _PingService:
    def ping(self, x: Any) -> Any:
        return x


def zerorpc_serve(port: int, limit: float) -> None:
    import gevent
    import zerorpc

    server = zerorpc.Server(_PingService())
    server.bind(f"tcp://127.0.0.1:{port}")
    print("READY " + json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    with gevent.Timeout(limit, TimeoutError(f"zerorpc server limit {limit}s")):
        server.run()


def zerorpc_client(port: int, counts: dict[str, Any]) -> dict[str, Any]:
    import zerorpc

    client = zerorpc.Client(timeout=30)
    client.connect(f"tcp://127.0.0.1:{port}")
    try:
        res = measure(
            lambda i: client.ping(i),
            lambda i: client.ping(i, **{"async": True}),  # zerorpc 0.6: `async`
            lambda r: r.get(timeout=30),
            counts,
        )
    finally:
        client.close()
    res["note"] = "zerorpc.Server / Client(async=True)"
    return res


# --------------------------------------------------------------------------- celery


def _celery_app(redis_port: int) -> Any:
    from celery import Celery

    url = f"redis://127.0.0.1:{redis_port}"
    app = Celery("bench_peer", broker=f"{url}/0", backend=f"{url}/1")
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,  # our READY line goes to the real stdout
        worker_prefetch_multiplier=WINDOW,
        result_expires=600,
        task_serializer="msgpack",
        result_serializer="msgpack",
        accept_content=["msgpack"],
    )

    @app.task(name="bench.ping")
    def ping(x: Any) -> Any:
        return x

    return app


def celery_serve(redis_port: int) -> None:
    from celery.signals import worker_ready

    app = _celery_app(redis_port)

    @worker_ready.connect
    def ready(**kw: Any) -> None:
        print("READY " + json.dumps({"pid": os.getpid()}), flush=True)

    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "--hostname=bench-peer@%h",
        ]
    )


def celery_client(redis_port: int, counts: dict[str, Any]) -> dict[str, Any]:
    app = _celery_app(redis_port)
    ping = app.tasks["bench.ping"]
    res = measure(
        lambda i: ping.delay(i).get(timeout=30),
        lambda i: ping.delay(i),
        lambda r: r.get(timeout=30),
        counts,
    )
    res["note"] = "Redis broker + backend, one worker --pool=solo"
    return res


# --------------------------------------------------------------------------- ray


def ray_client(counts: dict[str, Any], server_cpu: int | None) -> dict[str, Any]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="error",
        configure_logging=False,
    )
    try:

        @ray.remote(num_cpus=0)
        class Ping:
            def ping(self, x: Any) -> Any:
                return x

            def pin(self, cpu: int | None) -> int:
                if cpu is not None:
                    os.sched_setaffinity(0, {cpu})
                return os.getpid()

        actor = Ping.remote()  # type: ignore[attr-defined]
        ray.get(actor.pin.remote(server_cpu), timeout=60)
        res = measure(
            lambda i: ray.get(actor.ping.remote(i), timeout=30),
            lambda i: actor.ping.remote(i),
            lambda r: ray.get(r, timeout=30),
            counts,
        )
    finally:
        ray.shutdown()
    res["note"] = "ray.init() local cluster, one actor"
    return res


# --------------------------------------------------------------------------- orchestration


class _Redis:
    """A redis-server of our own on a random loopback port, killed by pid."""

    def __init__(self, cpu: int | None) -> None:
        self.port = _free_port()
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ]
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"redis-server not ready within {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _run_one(peer: str, quick: bool, pin: bool, verbose: bool) -> dict[str, Any]:
    from bench._proc import Child

    cfg = QUICK if quick else FULL
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu = server_cpu = None
    if pin:
        client_cpu, server_cpu = cpus[0], cpus[1]
    deadline = time.monotonic() + cfg["budget_s"]

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{peer} exceeded its {cfg['budget_s']:.0f}s budget")
        return left

    def cpu_args(cpu: int | None) -> list[str]:
        return [] if cpu is None else ["--cpu", str(cpu)]

    children: list[Child] = []
    redis: _Redis | None = None
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    try:
        args: list[str] = []
        if peer == "zerorpc":
            port = _free_port()
            server = Child(
                "zerorpc-server",
                "bench.peers",
                ["--serve", peer, "--port", str(port)]
                + ["--limit", str(int(cfg["budget_s"]))]
                + cpu_args(server_cpu),
                env,
            )
            children.append(server)
            args = ["--port", str(port)]
        elif peer == "celery":
            redis = _Redis(server_cpu)
            redis.wait_ready(min(remaining(), 15))
            server = Child(
                "celery-worker",
                "bench.peers",
                ["--serve", peer, "--port", str(redis.port)] + cpu_args(server_cpu),
                env,
            )
            children.append(server)
            args = ["--port", str(redis.port)]
        if children:  # a server: wait for its READY (Celery prints a banner first)
            ready_by = time.monotonic() + min(remaining(), 60)
            while not children[0].readline(timeout=ready_by - time.monotonic()).startswith("READY"):
                pass
        if peer == "ray" and server_cpu is not None:
            args += ["--server-cpu", str(server_cpu)]
        args += ["--counts", json.dumps(cfg)] + cpu_args(client_cpu)
        client = Child(f"{peer}-client", "bench.peers", ["--client", peer, *args], env)
        children.append(client)
        while True:
            line = client.readline(timeout=remaining())
            if line.startswith("RESULT "):
                res: dict[str, Any] = json.loads(line[len("RESULT ") :])
                break
    finally:
        for child in children:
            child.kill()
            if peer == "ray":
                # The Ray driver made its own process group for the processes
                # ray.init() started; take down whatever of it is left.
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if redis is not None:
            redis.stop()
    return res


def run_peers(
    names: list[str], quick: bool = False, pin: bool = False, verbose: bool = False
) -> dict[str, Any]:
    """Measure each peer in *names*; a peer not installed is ``{"skipped": why}``, one
    that fails is ``{"error": ...}`` (the others still run)."""
    out: dict[str, Any] = {}
    for name in names:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}")
        why = missing(name)
        if why:
            if verbose:
                _log(f"{name}: skipped: {why}")
            out[name] = {"skipped": why}
            continue
        if verbose:
            _log(f"{name}...")
        t0, load0 = time.monotonic(), os.getloadavg()
        try:
            res = _run_one(name, quick, pin, verbose)
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["elapsed_s"] = round(time.monotonic() - t0, 1)
        res["loadavg"] = {"before": list(load0), "after": list(os.getloadavg())}
        if verbose:
            _log(f"{name}: {res}")
        out[name] = res
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    p.add_argument("peers", nargs="*", default=list(PEERS), help="peers to run (default all)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--pin", action="store_true")
    p.add_argument("--serve", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--client", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=120.0, help=argparse.SUPPRESS)
    p.add_argument("--counts", help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--server-cpu", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.serve or a.client:
        from bench._proc import die_with_parent, pin_to

        if a.client == "ray":
            os.setpgid(0, 0)  # Ray's processes join this group: killable as one
        die_with_parent(a.parent)
        pin_to(a.cpu)
        if a.serve == "zerorpc":
            zerorpc_serve(a.port, a.limit)
        elif a.serve == "celery":
            celery_serve(a.port)
        elif a.serve:
            raise SystemExit(f"no server process for {a.serve}")
        else:
            counts = json.loads(a.counts)
            if a.client == "zerorpc":
                res = zerorpc_client(a.port, counts)
            elif a.client == "celery":
                res = celery_client(a.port, counts)
            else:
                res = ray_client(counts, a.server_cpu)
            print("RESULT " + json.dumps(res), flush=True)
        return 0

    from bench.report import format_peers

    result = run_peers(a.peers, quick=a.quick, pin=a.pin, verbose=True)
    print(format_peers(result, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
