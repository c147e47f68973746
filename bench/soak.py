"""Soak: hours of mixed traffic against one long-lived node, to see what leaks.

    python -m bench.soak --minutes 60       # the soak of issue 12 (1 hour)
    python -m bench.soak --minutes 1        # smoke run
    python -m bench.soak --minutes 5 --peers 3 --churn-every 3 --out DIR --no-plots

Parties, each a separate process on loopback with static discovery (no mDNS):

- the **subject**: ``zcell node -A bench.actors`` (``bench.mesh``'s node child),
  alive for the whole run; it is what is measured;
- the **client**: a plain program with a ``Node`` in its main thread. Its main
  thread runs rounds of ``send``/``call``/``throw``/``scatter``/``nowait`` to actors
  on the subject, spawns an actor each round (on the subject, or wherever placement
  puts it) and kills the oldest beyond a pool; each round it also starts
  short-lived threads that each make a few calls and end. Every ``--interval`` it
  reads the subject's ``statistics()`` through a ``Probe`` actor and prints them
  with its own counters;
- **churning peers**: ``zcell node`` children that join and leave every
  ``--churn-every`` seconds, at most ``--peers`` at once, leaving alternately with
  SIGTERM (graceful) and SIGKILL (a crash).

This process samples ``/proc/<pid>`` of the subject and the client (RSS, fds by
kind, threads) whenever the client reports, and after the run fits a line to each
metric past the warm-up: see :func:`verdicts`. It asserts nothing: it prints a
table and writes ``<out>/soak-<timestamp>.json`` (samples, churn events, verdicts),
plus a PNG plot when matplotlib (the ``bench`` extra) is installed. Exit code 0 when
the run completed, 1 when it could not (the subject or the client failed).

ZeroMQ sockets are not in ``statistics()`` and no control op counts them, so they are
counted from ``/proc/<pid>/fd``: each ZeroMQ socket owns one eventfd (its mailbox),
as do the context's I/O and reaper threads (a constant); ``sockets`` counts the
kernel sockets (TCP connections and listeners).
"""

from __future__ import annotations

# Only the standard library at import time, as in bench.mesh.
import argparse
import collections
import functools
import json
import os
import random
import signal
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# What the verdict judges, per process, and the stated tolerance of "flat": the growth
# from the first to the last post-warm-up window must stay within it. Peers that come
# and go move the fd and socket counts by a few per live peer, hence the per-peer terms.
PROC_METRICS = ("rss_mib", "fds", "sockets", "eventfds", "threads")


def _log(msg: str) -> None:
    print(f"[bench.soak] {msg}", file=sys.stderr, flush=True)


def tolerance(metric: str, first: float, peers: int) -> float:
    """The largest growth that still counts as flat for *metric* (first window *first*).

    RSS: +5% or +10 MiB, whichever is larger. fds and kernel sockets: 4 + 6 per
    churning peer (each live peer holds ~6 kernel sockets on the subject: 514-532
    with 0-3 peers in a 5-minute run). eventfds (ZeroMQ sockets): 2 + 2 per peer (a
    DEALER to it, a SUB to it). Threads: 2.
    """
    if metric.endswith("rss_mib"):
        return max(0.05 * first, 10.0)
    if metric.endswith(("fds", "sockets")) and not metric.endswith("eventfds"):
        return 4.0 + 6.0 * peers
    if metric.endswith("eventfds"):
        return 2.0 + 2.0 * peers
    return 2.0


# --------------------------------------------------------------------------- /proc


def proc_sample(pid: int) -> dict[str, Any] | None:
    """RSS, threads and open fds by kind of process *pid*; None once it is gone."""
    out: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_mib"] = round(int(line.split()[1]) / 1024, 2)
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
        kinds: collections.Counter[str] = collections.Counter()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                kinds[_fd_kind(os.readlink(f"/proc/{pid}/fd/{fd}"))] += 1
            except OSError:  # closed meanwhile
                continue
    except (OSError, ValueError):
        return None
    out["fds"] = sum(kinds.values())
    out["sockets"] = kinds["socket"]
    out["eventfds"] = kinds["eventfd"]
    out["other_fds"] = out["fds"] - out["sockets"] - out["eventfds"]
    return out


def _fd_kind(target: str) -> str:
    if target.startswith("socket:"):
        return "socket"
    if target == "anon_inode:[eventfd]":
        return "eventfd"
    return "other"


# --------------------------------------------------------------------------- client child


class _Traffic:
    """The client's counters: operations done and errors by ``op:ExceptionType``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.last_error: dict[str, str] = {}
        self.threads = {"started": 0, "ended": 0, "stuck": 0}

    def attempt(self, op: str, fn: Callable[[], Any]) -> Any:
        """Run one operation; count it, or count its error (the soak goes on)."""
        try:
            res = fn()
        except Exception as exc:  # counted and reported, never fatal to the soak
            key = f"{op}:{type(exc).__name__}"
            with self.lock:
                self.errors[key] += 1
                self.last_error[key] = str(exc)[:300]
            return None
        with self.lock:
            self.ops[op] += 1
        return res

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ops": dict(self.ops),
                "errors": dict(self.errors),
                "last_error": dict(self.last_error),
                "threads": dict(self.threads),
            }


def _check(got: Any, want: Any) -> None:
    if got != want:
        raise RuntimeError(f"reply {got!r}, expected {want!r}")


def client_main(cluster: str, peer: str, seconds: float, cfg: dict[str, Any]) -> dict[str, Any]:
    """The traffic of the soak for *seconds*; prints ``STATS`` lines every interval."""
    from bench import actors as A
    from zcell import Node

    node = Node("soak-client", cluster=cluster, discovery="static", peers=[peer])
    node.start()
    try:
        node.wait_for(nodes=2, timeout=20)
        return _client_rounds(node, A, seconds, cfg)
    finally:
        node.stop(timeout=2)


def _client_rounds(node: Any, A: Any, seconds: float, cfg: dict[str, Any]) -> dict[str, Any]:
    tr = _Traffic()
    timeout = cfg["op_timeout"]
    ping = node.spawn(A.Ping, on="subject")
    sink = node.spawn(A.Sink, on="subject")
    probe = node.spawn(A.Probe, on="subject")
    worker = node.spawn(A.Worker, on="subject")
    gather = node.spawn(A.Gather, on="subject")
    pool: collections.deque[Any] = collections.deque()
    kinds = (A.Idle, A.Worker, A.Gather)
    rng = random.Random(cfg["seed"])
    end = time.monotonic() + seconds
    next_stats = 0.0
    i = 0

    def echo(x: int, timeout: float | None = None) -> None:
        _check(ping.send.ping(x=x, timeout=timeout), x)

    def short_lived(base: int) -> None:
        """A thread that makes a few calls and ends (its port should go with it)."""
        for k in range(cfg["thread_calls"]):
            tr.attempt("thread.send", functools.partial(echo, base + k))
        tr.attempt("thread.call", lambda: ping.call.ping(x=base).get(timeout=timeout))
        tr.attempt("thread.nowait", lambda: sink.send.hit(x=base, nowait=True))
        with tr.lock:
            tr.threads["ended"] += 1

    def main_ops(i: int) -> None:
        """One round of the main thread: every primitive once, a spawn, kills past the pool."""
        tr.attempt("send", functools.partial(echo, i, timeout))
        calls = [ping.call.ping(x=i + k) for k in range(cfg["calls"])]
        tr.attempt("call", lambda: [r.get(timeout=timeout) for r in calls])
        tr.attempt("throw", lambda: _check(worker.throw.work(x=i, timeout=timeout), i))
        tr.attempt("scatter", lambda: list(gather.scatter.ping(x=i, timeout=timeout)))
        for k in range(cfg["nowait"]):
            tr.attempt("nowait", functools.partial(sink.send.hit, x=k, nowait=True))
        where = "subject" if i % 2 else None  # None: wherever placement puts it
        kind = rng.choice(kinds)
        ref = tr.attempt("spawn", lambda: node.spawn(kind, on=where, timeout=timeout))
        if ref is not None:
            pool.append(ref)
        while len(pool) > cfg["pool"]:
            old = pool.popleft()
            tr.attempt("kill", functools.partial(node.kill, old, timeout=timeout))

    while time.monotonic() < end:
        i += 1
        threads = [
            threading.Thread(target=short_lived, args=(i * 100 + t,), daemon=True)
            for t in range(cfg["threads_per_round"])
        ]
        for t in threads:
            t.start()
        with tr.lock:
            tr.threads["started"] += len(threads)
        main_ops(i)
        for t in threads:
            t.join(timeout=timeout * 3)
            if t.is_alive():
                with tr.lock:
                    tr.threads["stuck"] += 1
        if time.monotonic() >= next_stats:
            next_stats = time.monotonic() + cfg["interval"]
            stats = tr.attempt("stats", lambda: probe.send.stats(timeout=timeout))
            report = {"subject": stats, "client": node.statistics(), **tr.snapshot()}
            report["live_threads"] = threading.active_count()
            print("STATS " + json.dumps(report), flush=True)
        time.sleep(cfg["pause"])
    return tr.snapshot()


# --------------------------------------------------------------------------- verdict


def least_squares_slope(xs: list[float], ys: list[float]) -> float | None:
    """Slope of the least-squares line through (xs, ys); None for < 2 distinct xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def metric_series(samples: list[dict[str, Any]], metric: str) -> list[tuple[float, float]]:
    """(t, value) of ``"who.metric"`` (e.g. ``"subject.fds"``) over the samples that have it."""
    who, key = metric.split(".", 1)
    out = []
    for s in samples:
        value = (s.get(who) or {}).get(key)
        if isinstance(value, int | float):
            out.append((s["t"], float(value)))
    return out


def verdict(series: list[tuple[float, float]], metric: str, peers: int) -> dict[str, Any]:
    """Slope per hour (least squares) and growth between the medians of the first and
    the last window (each a tenth of the samples, at least 3); flat when the growth
    is within :func:`tolerance`."""
    n = len(series)
    if n < 4:
        return {"verdict": "n/a", "n": n, "why": "fewer than 4 samples after the warm-up"}
    w = max(3, n // 10)
    w = min(w, n // 2)
    first = statistics.median(v for _, v in series[:w])
    last = statistics.median(v for _, v in series[-w:])
    slope = least_squares_slope([t / 3600 for t, _ in series], [v for _, v in series])
    growth = last - first
    tol = tolerance(metric, first, peers)
    word = "flat" if abs(growth) <= tol else ("GROWS" if growth > 0 else "shrinks")
    return {
        "verdict": word,
        "n": n,
        "window": w,
        "first": round(first, 2),
        "last": round(last, 2),
        "growth": round(growth, 2),
        "tolerance": round(tol, 2),
        "slope_per_hour": None if slope is None else round(slope, 2),
        "min": round(min(v for _, v in series), 2),
        "max": round(max(v for _, v in series), 2),
    }


def verdicts(samples: list[dict[str, Any]], warmup_s: float, peers: int) -> dict[str, Any]:
    """One verdict per process metric of the subject and the client, past the warm-up."""
    after = [s for s in samples if s["t"] >= warmup_s]
    out = {}
    for who in ("subject", "client"):
        for key in PROC_METRICS:
            metric = f"{who}.{key}"
            out[metric] = verdict(metric_series(after, metric), metric, peers)
    return out


def traffic_after_warmup(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """The client's operations and errors (by kind) between the first sample past the
    warm-up and the last: a soak whose levels stay flat because its traffic fails
    is not a healthy one."""
    after = [s for s in samples if s["t"] >= warmup_s]
    if len(after) < 2:
        return {"ops": None, "errors": None, "errors_by_kind": {}}
    first, last = after[0], after[-1]
    kinds0, kinds1 = (
        first.get("client_errors_by_kind") or {},
        last.get("client_errors_by_kind") or {},
    )
    by_kind = {k: v - kinds0.get(k, 0) for k, v in sorted(kinds1.items()) if v - kinds0.get(k, 0)}
    return {
        "ops": last["client_ops"] - first["client_ops"],
        "errors": last["client_errors"] - first["client_errors"],
        "errors_by_kind": by_kind,
    }


def warmup_seconds(duration_s: float, fraction: float, minimum_s: float = 60.0) -> float:
    """*fraction* of the run, at least *minimum_s*, at most half the run (short runs)."""
    return min(max(fraction * duration_s, minimum_s), duration_s / 2)


# --------------------------------------------------------------------------- orchestration


def _wait(child: Any, timeout: float) -> int | None:
    """*child*'s exit code once it exits by itself within *timeout* s, else None."""
    import subprocess

    try:
        return int(child.proc.wait(timeout=timeout))
    except subprocess.TimeoutExpired:
        return None


def terminate(child: Any, timeout: float) -> int | None:
    """SIGTERM *child* (a graceful stop for ``zcell node``) and wait up to *timeout*
    seconds; its exit code, or None if it is still running (the caller kills it)."""
    import subprocess

    try:
        os.kill(child.pid, signal.SIGTERM)
        return int(child.proc.wait(timeout=timeout))
    except ProcessLookupError:
        return child.proc.poll()
    except subprocess.TimeoutExpired:
        return None


class _Churn(threading.Thread):
    """Peers that join and leave the subject's mesh every *every* seconds."""

    def __init__(self, cluster: str, peer: str, most: int, every: float, seed: int) -> None:
        super().__init__(name="soak-churn", daemon=True)
        self.cluster, self.peer, self.most, self.every = cluster, peer, most, every
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.alive: collections.deque[Any] = collections.deque()
        self.children: list[Any] = []
        self.events: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.started = 0
        self.stops = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            try:
                self.step()
            except Exception as exc:  # recorded; churn goes on
                self.record("error", "-", None, error=f"{type(exc).__name__}: {exc}"[:500])

    def step(self) -> None:
        n = len(self.alive)
        if n == 0 or (n < self.most and self.rng.random() < 0.5):
            self.join_one()
        else:
            self.leave_one()

    def record(self, action: str, name: str, pid: int | None, **extra: Any) -> None:
        self.events.append(
            {"t": round(time.monotonic() - self.t0, 2), "action": action, "name": name}
            | {"pid": pid, **extra}
        )

    def join_one(self) -> None:
        from bench._proc import Child

        self.started += 1
        name = f"churn-{self.started}"
        args = ["--node", name, "--cluster", self.cluster, "--peer", self.peer]
        child = Child(name, "bench.mesh", args)
        self.children.append(child)
        t0 = time.monotonic()
        child.readline(timeout=30)  # the ready banner; ChildError otherwise
        self.alive.append(child)
        self.record("join", name, child.pid, seconds=round(time.monotonic() - t0, 2))

    def leave_one(self) -> None:
        child = self.alive.popleft()
        self.stops += 1
        graceful = self.stops % 2 == 1
        t0 = time.monotonic()
        rc = terminate(child, 15.0) if graceful else None
        child.kill()
        if not graceful:
            rc = child.proc.returncode
        action = "leave(SIGTERM)" if graceful else "crash(SIGKILL)"
        self.record(action, child.name, child.pid, rc=rc, seconds=round(time.monotonic() - t0, 2))

    def finish(self) -> None:
        """Stop churning and kill the peers still alive (idempotent)."""
        self.stop_event.set()
        if self.ident is not None:  # started (not with --peers 0)
            self.join(timeout=40)
        for child in self.children:
            child.kill()


def run_soak(
    minutes: float,
    interval: float | None = None,
    peers: int = 3,
    churn_every: float = 3.0,
    warmup_fraction: float = 0.2,
    seed: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the soak; returns the result dict (written as JSON by :func:`main`)."""
    from bench._proc import Child, ChildError

    duration = minutes * 60.0
    interval = interval or max(0.5, min(5.0, duration / 20))
    cfg = {
        "interval": interval,
        "op_timeout": 3.0,
        "threads_per_round": 2,
        "thread_calls": 3,
        "calls": 5,
        "nowait": 20,
        "pool": 20,
        "pause": 0.05,
        "seed": seed,
    }
    cluster = f"soak-{uuid.uuid4().hex[:8]}"
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    t0 = time.monotonic()
    children: list[Child] = []
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    final: dict[str, Any] = {}
    churn: _Churn | None = None
    try:
        subject = Child("subject", "bench.mesh", ["--node", "subject", "--cluster", cluster])
        children.append(subject)
        info = json.loads(subject.readline(timeout=30))
        inbox = info["endpoints"]["inbox"]
        args = ["--client", "--cluster", cluster, "--peer", inbox]
        args += ["--seconds", str(duration), "--cfg", json.dumps(cfg)]
        client = Child("client", "bench.soak", args)
        children.append(client)
        churn = _Churn(cluster, inbox, peers, churn_every, seed)
        if peers > 0:
            churn.start()
        t0 = time.monotonic()
        _sample_loop(subject, client, churn, samples, final, t0, duration, interval, verbose)
        # A clean end: churn stops, the client stops its node and exits, the subject
        # stops on SIGTERM.
        churn.finish()
        final["client_exit"] = _wait(client, 15.0)
        final["subject_exit_on_sigterm"] = terminate(subject, 15.0)
    except (ChildError, TimeoutError, ValueError, KeyError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: report what was sampled so far
        errors.append("interrupted")
    finally:
        if churn is not None:
            churn.finish()
            children.extend(churn.children)
        for child in children:
            child.kill()
    warmup = warmup_seconds(duration, warmup_fraction)
    from bench.floor import _versions

    return {
        "benchmark": "soak",
        "schema": 1,
        "started": started,
        "host": socket.gethostname(),
        "argv": sys.argv[1:],
        "versions": _versions(),
        "config": cfg | {"minutes": minutes, "peers": peers, "churn_every_s": churn_every},
        "warmup_s": round(warmup, 1),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "samples": samples,
        "verdicts": verdicts(samples, warmup, peers),
        "after_warmup": traffic_after_warmup(samples, warmup),
        "churn": churn.events if churn is not None else [],
        "client": final,
        "children": [
            {"name": c.name, "pid": c.pid, "returncode": c.proc.returncode} for c in children
        ],
        "errors": errors,
    }


def _sample_loop(
    subject: Any,
    client: Any,
    churn: _Churn,
    samples: list[dict[str, Any]],
    final: dict[str, Any],
    t0: float,
    duration: float,
    interval: float,
    verbose: bool,
) -> None:
    """Take a sample at every ``STATS`` line of the client (or every 3 intervals without
    one) until the client prints its ``RESULT``. *final* holds the client's latest
    counters (its ``RESULT`` at the end; its last report if the run is cut short)."""
    from bench._proc import ChildError

    deadline = t0 + duration + 60.0  # the client's start-up and stop, with room to spare
    next_log = t0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the client did not finish within {duration + 60:.0f}s")
        try:
            line = client.readline(timeout=min(left, 3 * interval))
        except ChildError as exc:
            if "no output within" not in str(exc):
                raise
            line = "STATS null"  # the client is silent: /proc still tells
        if line.startswith("RESULT "):
            final.update(json.loads(line[len("RESULT ") :]))
            return
        if not line.startswith("STATS "):
            continue
        report = json.loads(line[len("STATS ") :])
        for key in ("ops", "errors", "last_error", "threads"):
            if report and key in report:
                final[key] = report[key]
        sample = _sample(report, subject, client, churn, t0)
        samples.append(sample)
        if sample["subject"] is None:
            raise ChildError(f"the subject (pid {subject.pid}) is gone\n{subject.stderr_tail()}")
        if verbose and time.monotonic() >= next_log:
            next_log = time.monotonic() + 30
            s = sample["subject"]
            _log(
                f"t={sample['t']:.0f}s subject rss {s['rss_mib']} MiB, fds {s['fds']} "
                f"(sockets {s['sockets']}, eventfds {s['eventfds']}), members "
                f"{(sample.get('stats') or {}).get('members')}, peers {sample['churn_alive']}, "
                f"client errors {sample['client_errors']} {_top(sample['client_errors_by_kind'])}"
            )


def _top(counts: dict[str, int], n: int = 3) -> str:
    """The *n* largest counts, for a progress line."""
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {v}" for k, v in top)


def _sample(report: Any, subject: Any, client: Any, churn: _Churn, t0: float) -> dict[str, Any]:
    report = report or {}
    stats = report.get("subject")
    keys = ("members", "actors_hosted", "messages_in", "errors", "pending_calls", "in_flight")
    return {
        "t": round(time.monotonic() - t0, 2),
        "subject": proc_sample(subject.pid),
        "client": proc_sample(client.pid),
        "stats": {k: stats.get(k) for k in keys} if isinstance(stats, dict) else None,
        "churn_alive": len(churn.alive),
        "client_ops": sum((report.get("ops") or {}).values()),
        "client_errors": sum((report.get("errors") or {}).values()),
        "client_errors_by_kind": report.get("errors") or {},
        "threads_started": (report.get("threads") or {}).get("started"),
    }


# --------------------------------------------------------------------------- report


def format_report(result: dict[str, Any]) -> str:
    """The verdict table, with the run's context beneath it."""
    from bench.report import _fmt, _table

    rows: list[tuple[str, ...]] = []
    for metric, v in result["verdicts"].items():
        if v["verdict"] == "n/a":
            rows.append((metric, "-", "-", "-", "-", "n/a"))
            continue
        rows.append(
            (
                metric,
                f"{_fmt(v['first'], ',.1f')} -> {_fmt(v['last'], ',.1f')}",
                f"{v['growth']:+,.1f}",
                f"+/-{_fmt(v['tolerance'], ',.1f')}",
                f"{_fmt(v['slope_per_hour'], '+,.1f')}/h",
                v["verdict"],
            )
        )
    header = ("metric", "first -> last window", "growth", "tolerance", "slope", "verdict")
    cfg = result["config"]
    lines = [
        f"zcell soak {result['started']} on {result['host']}: {cfg['minutes']} min, "
        f"{len(result['samples'])} samples, warm-up {result['warmup_s']}s, "
        f"up to {cfg['peers']} churning peers",
        "",
        *_table(header, rows),
        "",
    ]
    lines += _context(result)
    return "\n".join(lines)


def _context(result: dict[str, Any]) -> list[str]:
    client = result.get("client") or {}
    ops, errs = client.get("ops") or {}, client.get("errors") or {}
    actions = collections.Counter(e["action"] for e in result["churn"])
    aw = result.get("after_warmup") or {}
    last = next((s["stats"] for s in reversed(result["samples"]) if s.get("stats")), None)
    lines = [
        f"client: {sum(ops.values()):,} ops ({', '.join(f'{k} {v:,}' for k, v in ops.items())})",
        f"client threads: {client.get('threads')}",
        f"exit codes: client {client.get('client_exit')} (None: did not exit within 15 s), "
        f"subject on SIGTERM {client.get('subject_exit_on_sigterm')}",
        "client errors: " + (", ".join(f"{k} {v:,}" for k, v in sorted(errs.items())) or "none"),
        f"client after the warm-up: {aw.get('ops')} ops, {aw.get('errors')} errors "
        + str(aw.get("errors_by_kind") or ""),
        f"churn: {dict(actions) or 'none'}",
        f"subject at the end: {last}",
    ]
    lines += [f"ERROR {e}" for e in result["errors"]]
    return lines


def write_plot(result: dict[str, Any], stem: Path) -> str:
    """One PNG: each process metric over time, warm-up shaded.

    Raises:
        ImportError: matplotlib (the ``bench`` extra) is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PROC_METRICS), 1, figsize=(9, 2.2 * len(PROC_METRICS)))
    for ax, key in zip(axes, PROC_METRICS, strict=True):
        for who, color in (("subject", "tab:blue"), ("client", "tab:orange")):
            series = metric_series(result["samples"], f"{who}.{key}")
            if series:
                ax.plot([t / 60 for t, _ in series], [v for _, v in series], color=color, label=who)
        ax.axvspan(0, result["warmup_s"] / 60, color="0.9")
        ax.set_ylabel(key, fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel("minutes (grey: warm-up)")
    axes[0].set_title(f"zcell soak {result['started']} {result['host']}", fontsize=9)
    fig.tight_layout()
    path = f"{stem}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="length of the run (default 60)")
    p.add_argument(
        "--interval", type=float, default=None, help="seconds between samples (default 5)"
    )
    p.add_argument("--peers", type=int, default=3, help="most churning peers at once (3)")
    p.add_argument("--churn-every", type=float, default=3.0, help="seconds between churn steps")
    p.add_argument(
        "--warmup", type=float, default=0.2, help="warm-up fraction (0.2; at least 1 min)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory ({DEFAULT_OUT})"
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNG plot")
    # child mode (used by the orchestrator)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cluster", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--cfg", help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.client:
        from bench._proc import die_with_parent

        die_with_parent(a.parent)
        result = client_main(a.cluster, a.peer, a.seconds, json.loads(a.cfg))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    from bench.report import print_files, save_result

    # SIGTERM ends the run as Ctrl-C does: children are killed on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = run_soak(a.minutes, a.interval, a.peers, a.churn_every, a.warmup, a.seed, verbose=True)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / f"soak-{time.strftime('%Y-%m-%d-%H%M%S')}"
    files = save_result(result, stem, lambda r, s: [write_plot(r, s)], a.no_plots)
    print(format_report(result))
    print()
    print_files(files)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
