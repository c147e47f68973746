"""The raw request/reply floor: ZeroMQ DEALER/ROUTER + msgpack between two processes.

    python -m bench.floor [--quick] [--json] [--pin] [--reps N]

Four variants (client and server in separate processes, loopback, random port):

- ``green-inline``: ``zmq.green`` sockets; the server decodes and replies inline
  in its reader greenlet.
- ``green-spawn``: ``zmq.green``; the server spawns a greenlet per message.
- ``lean-inline``: plain pyzmq sockets with NOBLOCK, parking on a gevent io
  watcher on ``zmq.FD`` (see :mod:`bench._lean`); server inline.
- ``lean-spawn``: lean integration, a greenlet per message.

Metrics per variant: synchronous ping-pong RTT (p50/p99, one request in flight)
and one-way rate (client floods, the server counts; the count must match).
Each repetition runs a fresh client process against the variant's server; the
reported figure is the median over repetitions. :func:`run_floor` is the entry
point for other benchmark modules.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

VARIANTS = ("green-inline", "green-spawn", "lean-inline", "lean-spawn")
PAYLOAD = b"x" * 16

# (warm-up, measured) message counts per repetition. A full run takes 95-115 s on
# the 2-core dev VM; budget_s is the hard deadline for the whole run (a backstop for hangs).
FULL: dict[str, Any] = {
    "rtt": (2000, 20000),
    "oneway": (5000, 200000),
    "reps": 3,
    "budget_s": 150.0,
}
QUICK: dict[str, Any] = {"rtt": (200, 2000), "oneway": (500, 20000), "reps": 1, "budget_s": 45.0}


# --------------------------------------------------------------------------- server


def serve(variant: str, port: int, limit: float) -> None:
    """Run the ROUTER server for *variant*; print ``READY {json}`` once bound."""
    import gevent
    import msgpack
    import zmq

    from bench._lean import drain, lean_send

    green = variant.startswith("green")
    spawn_mode = variant.endswith("spawn")
    if green:
        import zmq.green as zg

        ctx: Any = zg.Context()
    else:
        ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    if port:
        sock.bind(f"tcp://127.0.0.1:{port}")
    else:
        port = sock.bind_to_random_port("tcp://127.0.0.1")

    packb, unpackb = msgpack.packb, msgpack.unpackb
    if green:
        send = sock.send_multipart
    else:

        def send(frames: list[bytes]) -> None:
            lean_send(sock, frames)

    oneway = False
    count = 0

    def handle(ident: bytes, data: bytes) -> None:
        nonlocal oneway, count
        msg = unpackb(data)
        if type(msg[0]) is int:  # [i, payload]: the hot path
            if oneway:
                count += 1
            else:
                send([ident, packb(msg)])
            return
        kind = msg[0]
        if kind == "oneway":
            oneway, count = True, 0
            send([ident, packb(["ok"])])
        elif kind == "done":
            oneway = False
            send([ident, packb(["count", count])])
        elif kind == "hello":
            send([ident, packb(["hello", os.getpid()])])

    spawn = gevent.spawn
    ready = {
        "port": port,
        "pid": os.getpid(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "track_greenlet_tree": bool(gevent.config.track_greenlet_tree),
    }
    print("READY " + json.dumps(ready), flush=True)
    with gevent.Timeout(limit, TimeoutError(f"server lifetime limit {limit}s")):
        if green:
            recv = sock.recv_multipart
            if spawn_mode:
                while True:
                    ident, data = recv()
                    spawn(handle, ident, data)
            else:
                while True:
                    ident, data = recv()
                    handle(ident, data)
        elif spawn_mode:
            for ident, data in drain(sock):
                spawn(handle, ident, data)
        else:
            for ident, data in drain(sock):
                handle(ident, data)


# --------------------------------------------------------------------------- client


def _percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted samples (ns), in µs."""
    k = max(0, min(len(sorted_ns) - 1, int(q * len(sorted_ns) + 0.999999) - 1))
    return sorted_ns[k] / 1000.0


def time_calls(call: Any, warm: int, n: int, check: Any) -> list[int]:
    """Warm up, then time ``n`` calls of ``call(i)`` one at a time; ``check(i, result)``
    raises on a wrong result. Returns the sorted samples (ns)."""
    clock = time.perf_counter_ns
    for i in range(warm):
        call(i)
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        got = call(i)
        samples[i] = clock() - t0
        check(i, got)
    samples.sort()
    return samples


def client(variant: str, port: int, counts: dict[str, Any], limit: float) -> dict[str, Any]:
    """Measure RTT and one-way rate against the server on *port*; return one rep."""
    import gevent
    import msgpack
    import zmq

    from bench._lean import lean_recv, lean_send

    green = variant.startswith("green")
    if green:
        import zmq.green as zg

        ctx: Any = zg.Context()
    else:
        ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{port}")
    if green:
        send, recv = sock.send_multipart, sock.recv_multipart
    else:

        def send(frames: list[bytes]) -> None:
            lean_send(sock, frames)

        def recv() -> list[bytes]:
            return lean_recv(sock)

    packb, unpackb = msgpack.packb, msgpack.unpackb
    clock = time.perf_counter_ns

    def call(msg: list[Any]) -> list[Any]:
        send([packb(msg)])
        return unpackb(recv()[0])

    def rtt(n: int) -> list[int]:
        out = [0] * n
        for i in range(n):
            t0 = clock()
            send([packb([i, PAYLOAD])])
            reply = unpackb(recv()[0])
            t1 = clock()
            if reply[0] != i:
                raise RuntimeError(f"reply {reply[0]!r} to request {i}")
            out[i] = t1 - t0
        return out

    def oneway(n: int) -> tuple[float, int]:
        if call(["oneway"]) != ["ok"]:
            raise RuntimeError("server did not enter one-way mode")
        t0 = clock()
        for i in range(n):
            send([packb([i, PAYLOAD])])
        send([packb(["done"])])
        reply = unpackb(recv()[0])
        t1 = clock()
        if reply[:1] != ["count"] or reply[1] != n:
            raise RuntimeError(f"one-way: sent {n}, server counted {reply!r}: messages lost")
        return n / ((t1 - t0) / 1e9), reply[1]

    (warm_rtt, n_rtt), (warm_ow, n_ow) = counts["rtt"], counts["oneway"]
    with gevent.Timeout(limit, TimeoutError(f"client limit {limit}s exceeded")):
        call(["hello"])
        rtt(warm_rtt)
        samples = sorted(rtt(n_rtt))
        oneway(warm_ow)
        rate, got = oneway(n_ow)
    sock.close()
    ctx.term()
    return {
        "rtt_p50_us": _percentile(samples, 0.50),
        "rtt_p99_us": _percentile(samples, 0.99),
        "rtt_mean_us": sum(samples) / len(samples) / 1000.0,
        "rtt_n": n_rtt,
        "oneway_msgs_per_s": rate,
        "oneway_n": n_ow,
        "oneway_count": got,
        "affinity": sorted(os.sched_getaffinity(0)),
    }


# --------------------------------------------------------------------------- orchestration


def _versions() -> dict[str, str]:
    import gevent
    import msgpack
    import zmq

    return {
        "python": sys.version.split()[0],
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "gevent": gevent.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
    }


def _cpu_counters() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its
    reaped children), for estimating how much CPU *other* programs used during a run."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...
    busy = sum(fields[:8]) - fields[3] - fields[4]
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own += ru.ru_utime + ru.ru_stime
    return busy / os.sysconf("SC_CLK_TCK"), own


def _log(msg: str) -> None:
    print(f"[bench.floor] {msg}", file=sys.stderr, flush=True)


def run_floor(
    quick: bool = False,
    pin: bool = False,
    reps: int | None = None,
    variants: tuple[str, ...] = VARIANTS,
    track_greenlet_tree: bool | None = None,
    verbose: bool = False,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Measure the floor; see the module docstring.

    Returns ``{"variants": {name: metrics}, "floor": {"rtt_p50_us", "oneway_msgs_per_s"},
    "placement": "unpinned" | "cpuA/cpuB" (client/server), ...}``. Metrics are
    medians over *reps* (default 3; quick: 1). Raises on lost messages, a failing
    server. *scale* multiplies the time budgets (``bench.budget.calibrate``): a
    client that misses its limit or fails is recorded as ``"error"`` in its
    variant (not finished) and the other variants go on; the floor figures come
    from the variants that finished (``None`` when no inline one did). Children
    are killed on return.
    *track_greenlet_tree*: ``None`` inherits ``GEVENT_TRACK_GREENLET_TREE`` from
    the environment (gevent's default is on); ``False`` turns it off in both
    children (~+30-50% one-way rate for the spawn variants here).
    """
    from bench._proc import Child
    from bench.budget import STRETCH_MAX, Budget

    cfg = QUICK if quick else FULL
    reps = cfg["reps"] if reps is None else reps
    if reps < 1:
        raise ValueError("reps must be >= 1")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}")
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu = server_cpu = None
    if pin:
        if len(cpus) < 2:
            raise RuntimeError(f"--pin needs two CPUs, have {cpus}")
        client_cpu, server_cpu = cpus[0], cpus[1]
        placement = f"cpu{client_cpu}/cpu{server_cpu}"
    else:
        placement = "unpinned"
    budget = Budget("bench.floor", cfg["budget_s"] * max(1.0, reps / cfg["reps"]), scale)
    load_before = os.getloadavg()
    cpu_before = _cpu_counters()
    t_start = time.monotonic()
    remaining = budget.remaining

    env = dict(os.environ)
    if track_greenlet_tree is not None:
        env["GEVENT_TRACK_GREENLET_TREE"] = "1" if track_greenlet_tree else "0"

    def cpu_args(cpu: int | None) -> list[str]:
        return [] if cpu is None else ["--cpu", str(cpu)]

    children: list[Child] = []
    servers: dict[str, tuple[int, dict[str, Any]]] = {}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        started = []
        for v in variants:
            limit = int(budget.total * STRETCH_MAX) + 30  # the longest the budget may get
            args = ["--serve", v, "--port", "0", "--limit", str(limit)]
            child = Child(f"server[{v}]", "bench.floor", args + cpu_args(server_cpu), env)
            children.append(child)
            started.append((v, child))
        failed = _start_servers(started, servers, remaining)
        counts = {"rtt": cfg["rtt"], "oneway": cfg["oneway"]}
        per_client = 20.0 if quick else 60.0
        first_rep_at = time.monotonic()
        for rep in range(reps):
            if rep == 1:
                # The budget follows the first repetition: in a phase of slow
                # wake-ups each takes longer than the calibration foresaw, and
                # the last ones were cut (a median of 2 instead of 3).
                took = time.monotonic() - first_rep_at
                budget.follow((first_rep_at - budget.started) + took * reps * 1.15)
            for v in variants:
                if v not in servers:  # its server did not start within the budget
                    runs[v].append({"error": failed})
                    continue
                res = _client_run(
                    v,
                    servers[v][0],
                    counts,
                    budget,
                    per_client,
                    env,
                    cpu_args(client_cpu),
                    children,
                )
                runs[v].append(res)
                if verbose:
                    _log(f"rep {rep + 1}/{reps} {v}: " + _run_line(res))
    finally:
        for child in children:
            child.kill()

    elapsed = time.monotonic() - t_start
    cpu_after = _cpu_counters()
    other_cpu_s = None
    if cpu_before and cpu_after:
        busy = cpu_after[0] - cpu_before[0]
        own = cpu_after[1] - cpu_before[1]
        other_cpu_s = round(max(0.0, busy - own), 1)

    no_server: dict[str, Any] = {"affinity": [], "track_greenlet_tree": None}
    out_variants = {
        v: _variant_summary(runs[v], servers.get(v, (0, no_server))[1]) for v in variants
    }
    finished = {v: m for v, m in out_variants.items() if "error" not in m}
    inline = [v for v in finished if v.endswith("inline")] or list(finished)
    best_rtt = min(inline, key=lambda v: finished[v]["rtt_p50_us"], default=None)
    best_ow = max(inline, key=lambda v: finished[v]["oneway_msgs_per_s"], default=None)
    return {
        "benchmark": "floor",
        "quick": quick,
        "reps": reps,
        "placement": placement,
        "affinity": {
            "client": out_variants[variants[0]]["affinity"]["client"],
            "server": out_variants[variants[0]]["affinity"]["server"],
        },
        "variants": out_variants,
        "floor": {
            "rtt_p50_us": finished[best_rtt]["rtt_p50_us"] if best_rtt else None,
            "oneway_msgs_per_s": finished[best_ow]["oneway_msgs_per_s"] if best_ow else None,
            "rtt_p50_from": best_rtt,
            "oneway_from": best_ow,
        },
        "budget": {
            "scale": scale,
            "total_s": round(budget.total, 1),
            # Stretched by the first repetition (Budget.follow), from this total:
            "stretched_from_s": None
            if budget.stretched_from is None
            else round(budget.stretched_from, 1),
        },
        "gevent_track_greenlet_tree": servers.get(variants[0], (0, no_server))[1][
            "track_greenlet_tree"
        ],
        "versions": _versions(),
        "loadavg": {"before": list(load_before), "after": list(os.getloadavg())},
        # CPU seconds used by other programs during the run (shared machines):
        "other_cpu_s": other_cpu_s,
        "elapsed_s": round(elapsed, 1),
    }


def _start_servers(started: list[Any], servers: dict[str, Any], remaining: Any) -> str:
    """Wait for each server's READY line; on a failure or the budget running out, the
    servers not ready stay out of *servers* and the reason is returned (else "")."""
    from bench._proc import ChildError

    for v, child in started:
        try:
            line = child.readline(timeout=min(remaining(), 30.0))
        except (ChildError, TimeoutError) as exc:
            return f"not finished: {exc}".splitlines()[0]
        if not line.startswith("READY "):
            raise ChildError(f"{child.name}: unexpected output {line!r}")
        info = json.loads(line[len("READY ") :])
        servers[v] = (info["port"], info)
    return ""


def _client_run(
    variant: str,
    port: int,
    counts: dict[str, Any],
    budget: Any,
    per_client: float,
    env: dict[str, str],
    cpu_args: list[str],
    children: list[Any],
) -> dict[str, Any]:
    """One client repetition against *variant*'s server: its metrics, or ``{"error"}``
    when it fails or misses its (scaled) limit, so that the other variants still run."""
    from bench._proc import Child, ChildError
    from bench.budget import PartTimeout

    try:
        limit = budget.limit(per_client)
    except PartTimeout as exc:
        return {"error": f"not finished: {exc}"}
    args = ["--client", variant, "--port", str(port), "--limit", f"{max(limit - 2.0, 1.0):.1f}"]
    child = Child(
        f"client[{variant}]", "bench.floor", args + ["--counts", json.dumps(counts)] + cpu_args, env
    )
    children.append(child)
    try:
        res: dict[str, Any] = json.loads(child.readline(timeout=limit))
    except ChildError as exc:
        return {"error": f"not finished: {exc}".splitlines()[0], "affinity": []}
    finally:
        child.kill()
    return res


def _run_line(res: dict[str, Any]) -> str:
    if "error" in res:
        return str(res["error"])
    return (
        f"p50 {res['rtt_p50_us']:.0f} us, p99 {res['rtt_p99_us']:.0f} us, "
        f"{res['oneway_msgs_per_s'] / 1000:.0f}k msg/s"
    )


def _variant_summary(runs: list[dict[str, Any]], server: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repetitions that finished; ``{"error"}`` when none did."""
    rs = [r for r in runs if "error" not in r]
    affinity = {"client": rs[0]["affinity"] if rs else [], "server": server["affinity"]}
    if not rs:
        return {"error": runs[-1]["error"] if runs else "not run", "affinity": affinity}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rs)

    return {
        "rtt_p50_us": round(med("rtt_p50_us"), 1),
        "rtt_p99_us": round(med("rtt_p99_us"), 1),
        "rtt_mean_us": round(med("rtt_mean_us"), 1),
        "oneway_msgs_per_s": round(med("oneway_msgs_per_s")),
        "rtt_n": rs[0]["rtt_n"],
        "oneway_n": rs[0]["oneway_n"],
        "oneway_count": min(r["oneway_count"] for r in rs),
        "counts_matched": all(r["oneway_count"] == r["oneway_n"] for r in rs),
        "reps": len(rs),
        "not_finished": len(runs) - len(rs),
        "affinity": affinity,
        "runs": [
            {
                "rtt_p50_us": round(r["rtt_p50_us"], 1),
                "rtt_p99_us": round(r["rtt_p99_us"], 1),
                "oneway_msgs_per_s": round(r["oneway_msgs_per_s"]),
            }
            for r in rs
        ],
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"floor: placement {result['placement']}, median of {result['reps']} "
        f"(client cpus {result['affinity']['client']}, server cpus {result['affinity']['server']}, "
        f"gevent greenlet tree {'on' if result['gevent_track_greenlet_tree'] else 'off'})",
        f"{'variant':<14}{'rtt p50 us':>12}{'rtt p99 us':>12}{'one-way msg/s':>15}",
    ]
    for name, m in result["variants"].items():
        if "error" in m:
            lines.append(f"{name:<14}  {m['error']}")
            continue
        lines.append(
            f"{name:<14}{m['rtt_p50_us']:>12.1f}{m['rtt_p99_us']:>12.1f}"
            f"{m['oneway_msgs_per_s']:>15,}"
        )
    f = result["floor"]
    if f["rtt_p50_us"] is None:
        lines.append("floor: NOT MEASURED (no inline variant finished); no ratios this run")
    else:
        lines.append(
            f"floor: rtt p50 {f['rtt_p50_us']:.1f} us ({f['rtt_p50_from']}), "
            f"one-way {f['oneway_msgs_per_s']:,} msg/s ({f['oneway_from']}); "
            f"{result['elapsed_s']}s, other programs used {result['other_cpu_s']} CPU-s"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts, one repetition")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.add_argument("--pin", action="store_true", help="pin client and server to different CPUs")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    p.add_argument("--variant", action="append", choices=VARIANTS, help="run only these")
    p.add_argument(
        "--no-tree",
        action="store_true",
        help="run the children with GEVENT_TRACK_GREENLET_TREE=0",
    )
    p.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply the time budgets (python -m bench sets it from a calibration)",
    )
    # child modes (used by the orchestrator)
    p.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--client", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--counts",
        default=json.dumps({"rtt": FULL["rtt"], "oneway": FULL["oneway"]}),
        help=argparse.SUPPRESS,
    )
    a = p.parse_args(argv)

    if a.serve or a.client:
        from bench._proc import die_with_parent, pin_to

        die_with_parent(a.parent)
        pin_to(a.cpu)
        if a.serve:
            serve(a.serve, a.port, a.limit)
            return 0
        res = client(a.client, a.port, json.loads(a.counts), a.limit)
        print(json.dumps(res), flush=True)
        return 0

    variants = tuple(a.variant) if a.variant else VARIANTS
    result = run_floor(
        scale=a.budget_scale,
        quick=a.quick,
        pin=a.pin,
        reps=a.reps,
        variants=variants,
        track_greenlet_tree=False if a.no_tree else None,
        verbose=True,
    )
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
