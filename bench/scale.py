"""Membership at scale: one network-namespace host per member (issue 22).

    python -m bench.scale --hosts 8,16,32,64 --png scale.png   # ~1.5-3 min per size
    python -m bench.scale --hosts 8 --idle 20 --json

For each size N it builds a mesh of N virtual hosts with ``tests/netns.py`` (a
bridge in a namespace of its own, one namespace per host: needs root and
iproute2), starts one ``zcell node`` per host (``bench._scale_member``: the CLI's
own node, mDNS discovery, default settings, a cluster name of its own per run)
and measures, on the clock all namespaces share:

- **converge**: from the last member's ``ready`` to the moment every member has
  logged every other one as joined;
- **idle CPU per member**: user+system CPU seconds from ``/proc/<pid>/stat`` over
  ``--idle`` seconds of an idle mesh, as % of one core (mean and max), and the
  whole mesh's sum; **false downs**: "is down" events during that window;
  ``cpu_pct_by_thread`` splits the mean by thread name (the loop is ``python``,
  libzmq's I/O thread ``ZMQbg/IO/0``);
- **RSS per member**: ``VmRSS`` at the end of the idle window (mean and max);
- **SIGKILL detection**: one member is SIGKILLed; the time until every other
  member has logged it down (max) and the median.

The hosts' ARP entries all count against the kernel's one neighbour table
(``net.ipv4.neigh.default.gc_thresh*``, 1024 entries by default, shared by every
namespace): a mesh of N hosts needs about N x (N - 1). Past ~32 hosts the table
overflows ("neighbor table overflow!" in the kernel log) and some hosts can reach
nobody, so for each size the thresholds are raised to fit while it runs and put
back afterwards (``neighbour_room``).

It asserts nothing and prints one table (or JSON). The machine is shared: other
programs' CPU shows up as slower convergence and detection, never as a member's
CPU (that is counted per process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # netns.py: the mesh recipe the tests use

from netns import Mesh, NetnsError, Proc, probe  # noqa: E402

_EVENT = re.compile(r"^@(\d+\.\d+) (ready|joined|down)(?: (\S+))?")
TICK = os.sysconf("SC_CLK_TCK")


def _log(msg: str) -> None:
    print(f"[bench.scale] {msg}", file=sys.stderr, flush=True)


class Member:
    """One ``zcell node`` in host *i* and the events it has printed."""

    def __init__(self, mesh: Mesh, i: int, cluster: str, env: dict[str, str]) -> None:
        self.name = f"m{i}"
        host = mesh.hosts[i]
        argv = [sys.executable, "-m", "bench._scale_member", "--cluster", cluster]
        argv += ["--name", self.name, "--host", host.address, "--loglevel", "warning"]
        self.proc: Proc = host.popen(argv, env=env)
        self.ready_at: float | None = None
        self.joined: dict[str, float] = {}  # first join of each peer
        self.downs: list[tuple[float, str]] = []
        self._seen = 0

    def poll(self) -> None:
        """Read the event lines printed since the last poll."""
        lines = self.proc.lines()
        for line in lines[self._seen :]:
            m = _EVENT.match(line)
            if m is None:
                continue
            t, kind, who = float(m.group(1)), m.group(2), m.group(3)
            if kind == "ready":
                self.ready_at = t
            elif kind == "joined":
                self.joined.setdefault(who, t)
            else:
                self.downs.append((t, who))
        self._seen = len(lines)

    def cpu_seconds(self) -> float:
        """User + system CPU of the node's process (all its threads)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def cpu_by_thread(self) -> dict[str, float]:
        """CPU seconds per thread name (``ZMQbg/IO/0``, the loop, the heartbeat...)."""
        out: dict[str, float] = {}
        task = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(task):
            try:
                with open(f"{task}/{tid}/stat") as f:
                    stat = f.read()
            except OSError:  # ended meanwhile
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
        return out

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


def _wait(members: list[Member], done: Any, timeout: float, what: str) -> None:
    """Poll every member until ``done()``; raise TimeoutError after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        for m in members:
            m.poll()
            if m.proc.returncode is not None:
                tail = "\n".join(m.proc.lines()[-20:])
                raise RuntimeError(f"{m.name} exited ({m.proc.returncode}):\n{tail}")
        if done():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s; {_lagging(members)}")
        time.sleep(0.05)


def _lagging(members: list[Member]) -> str:
    """Who is not ready or has not seen everyone yet, and the last lines of one."""
    late = [m for m in members if m.ready_at is None or len(m.joined) < len(members) - 1]
    said = [f"{m.name}: ready={m.ready_at is not None} sees {len(m.joined)}" for m in late]
    tail = "\n".join(late[0].proc.lines()[-15:]) if late else ""
    return "; ".join(said[:8]) + ("\n" + tail if tail else "")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    return env


def _idle(members: list[Member], seconds: float) -> dict[str, Any]:
    """CPU per member over *seconds* of an idle mesh, RSS after it, false downs."""
    downs_before = sum(len(m.downs) for m in members)
    t0 = time.monotonic()
    cpu0 = [m.cpu_seconds() for m in members]
    threads0 = [m.cpu_by_thread() for m in members]
    _wait_quietly(members, seconds)
    wall = time.monotonic() - t0
    by_thread: dict[str, float] = {}
    for m, before in zip(members, threads0, strict=True):
        for name, cpu in m.cpu_by_thread().items():
            spent = 100 * (cpu - before.get(name, 0.0)) / wall / len(members)
            by_thread[name] = by_thread.get(name, 0.0) + spent  # rounded at the end
    pct = [100 * (m.cpu_seconds() - c) / wall for m, c in zip(members, cpu0, strict=True)]
    rss = [m.rss_mib() for m in members]
    return {
        "idle_s": round(wall, 1),
        "cpu_pct_mean": round(statistics.fmean(pct), 2),
        "cpu_pct_max": round(max(pct), 2),
        "cpu_pct_mesh": round(sum(pct), 1),
        "rss_mib_mean": round(statistics.fmean(rss), 1),
        "rss_mib_max": round(max(rss), 1),
        "false_downs": sum(len(m.downs) for m in members) - downs_before,
        "cpu_pct_by_thread": {k: round(v, 2) for k, v in sorted(by_thread.items()) if v},
    }


def _wait_quietly(members: list[Member], seconds: float) -> None:
    """Sleep *seconds*, reading events now and then (a few wake-ups, little CPU)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        for m in members:
            m.poll()


def _detect(members: list[Member], timeout: float) -> dict[str, Any]:
    """SIGKILL the middle member; time until each other member logs it down."""
    victim = members[len(members) // 2]
    others = [m for m in members if m is not victim]
    start = {id(m): len(m.downs) for m in others}
    killed_at = time.monotonic()
    victim.proc.kill(signal.SIGKILL)

    def seen(m: Member) -> float | None:
        return next((t for t, who in m.downs[start[id(m)] :] if who == victim.name), None)

    _wait(others, lambda: all(seen(m) is not None for m in others), timeout, "SIGKILL seen")
    delays = [seen(m) - killed_at for m in others]  # type: ignore[operator]
    return {
        "kill_detect_s_max": round(max(delays), 2),
        "kill_detect_s_p50": round(statistics.median(delays), 2),
    }


_NEIGH = "/proc/sys/net/ipv4/neigh/default/gc_thresh{}"


@contextlib.contextmanager
def neighbour_room(n: int) -> Iterator[None]:
    """Let the kernel's neighbour table (shared by all namespaces) hold the ARP
    entries of a mesh of *n* hosts, each of which talks to all the others; the
    old thresholds are restored afterwards."""
    need = n * (n - 1) + 256
    old = {}
    for i in (1, 2, 3):
        with open(_NEIGH.format(i)) as f:
            old[i] = int(f.read())
    try:
        # Raised from the top down (gc_thresh1 <= gc_thresh2 <= gc_thresh3).
        for i in (3, 2, 1):
            with open(_NEIGH.format(i), "w") as f:
                f.write(str(max(old[i], need)))
        yield
    finally:
        for i in (1, 2, 3):
            with open(_NEIGH.format(i), "w") as f:
                f.write(str(old[i]))


def run_size(n: int, idle_s: float, timeout: float) -> dict[str, Any]:
    """Build a mesh of *n* hosts, one member each, and measure it."""
    cluster = f"scale-{secrets.token_hex(4)}"
    env = _child_env()
    with neighbour_room(n), Mesh(n) as mesh:
        t0 = time.monotonic()
        members = [Member(mesh, i, cluster, env) for i in range(n)]
        _wait(members, lambda: all(m.ready_at for m in members), timeout, "members ready")
        started = time.monotonic() - t0
        names = {m.name for m in members}

        def converged() -> bool:
            return all(names - {m.name} <= m.joined.keys() for m in members)

        _wait(members, converged, timeout, "convergence")
        last_ready = max(m.ready_at for m in members)  # type: ignore[type-var]
        full = max(max(m.joined[o] for o in names - {m.name}) for m in members)
        out: dict[str, Any] = {
            "hosts": n,
            "start_all_s": round(started, 2),
            "converge_s": round(max(full - last_ready, 0.0), 2),
        }
        out.update(_idle(members, idle_s))
        out.update(_detect(members, timeout))
        out["loadavg"] = os.getloadavg()
        return out


COLUMNS = [
    ("hosts", "hosts"),
    ("converge_s", "converge s"),
    ("kill_detect_s_max", "SIGKILL by all s"),
    ("cpu_pct_mean", "idle CPU/member %"),
    ("cpu_pct_max", "max %"),
    ("cpu_pct_mesh", "mesh %"),
    ("rss_mib_mean", "RSS/member MiB"),
    ("false_downs", "false downs"),
]


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the figures (what bench/README.md quotes)."""
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(str(r.get(k, "-")) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--hosts", default="8,16,32", help="sizes, comma-separated (default 8,16,32)"
    )
    parser.add_argument(
        "--idle", type=float, default=60.0, help="idle window in seconds (default 60)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of every wait (s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--png", type=Path, help="also plot the figures by size into this PNG")
    parser.add_argument(
        "--baseline", type=Path, help="a JSON of an earlier run (--json) to plot beside them"
    )
    parser.add_argument(
        "--plot-from", type=Path, help="plot this JSON of an earlier run (--json); run nothing"
    )
    args = parser.parse_args(argv)
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    if args.plot_from is not None:
        if args.png is None:
            parser.error("--plot-from needs --png")
        plot(json.loads(args.plot_from.read_text()), args.png, baseline)
        return 0
    # SIGTERM ends the run as Ctrl-C does: the mesh (processes, namespaces) is closed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    reason = probe()
    if reason is not None:
        _log(f"cannot run: {reason}")
        return 1
    rows = []
    for n in [int(x) for x in args.hosts.split(",") if x.strip()]:
        _log(f"{n} hosts ...")
        try:
            rows.append(run_size(n, args.idle, args.timeout))
        except (TimeoutError, RuntimeError, NetnsError) as exc:
            _log(f"{n} hosts failed: {exc}")
            rows.append({"hosts": n, "error": str(exc)[:500]})
        _log(json.dumps(rows[-1]))
    print(json.dumps(rows, indent=1) if args.json else table(rows))
    if args.png is not None:
        plot(rows, args.png, baseline)
    return 0 if all("error" not in r for r in rows) else 1


#: What each panel of the plot shows: (key, title, issue 22's target).
PANELS = [
    ("cpu_pct_mean", "idle CPU per member, % of a core", 1.0),
    ("converge_s", "every member sees all, s after the last start", 2.0),
    ("kill_detect_s_max", "SIGKILL dropped by all, s", 3.0),
    ("rss_mib_mean", "RSS per member, MiB", None),
]


def plot(
    rows: list[dict[str, Any]], png: Path, baseline: list[dict[str, Any]] | None = None
) -> None:
    """The figures by mesh size, one panel each, with issue 22's targets (dashed)
    and an earlier run beside them (matplotlib: ``pip install -e '.[bench]'``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    runs = [("this run", rows, "tab:blue")]
    if baseline:
        runs.insert(0, ("baseline", baseline, "tab:gray"))
    for ax, (key, title, target) in zip(axes, PANELS, strict=True):
        for label, data, color in runs:
            points = [(r["hosts"], r[key]) for r in data if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", color=color, label=label)
        if target is not None:
            ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, label="target")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("hosts")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    _log(f"wrote {png}")


if __name__ == "__main__":
    sys.exit(main())
