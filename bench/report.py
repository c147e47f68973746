"""Ratios to the floor, the issue's targets, the printed table and the PNG plots.

Pure functions over the result dicts of :func:`bench.floor.run_floor`,
:func:`bench.mesh.run_mesh` and :func:`bench.peers.run_peers`; only
:func:`write_plots` needs matplotlib (the optional ``bench`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# (key, description, value getter, goal, "<=" or ">=", unit of value and goal).
# Ratio targets are ratios to the floor of the same run; the last two are absolute.
TARGETS: tuple[tuple[str, str, str, float, str, str], ...] = (
    ("send_rtt_p50", "send RTT p50 <= 1.3x floor RTT", "ratio", 1.3, "<=", "x"),
    ("actor_send_rtt_p50", "actor-to-actor send p50 <= 1.3x floor RTT", "ratio", 1.3, "<=", "x"),
    (
        "chain_per_hop_p50",
        "per hop of a 10-deep call chain <= 1.5x floor RTT",
        "ratio",
        1.5,
        "<=",
        "x",
    ),
    ("nowait_oneway", "nowait one-way >= 0.45x floor one-way", "ratio", 0.45, ">=", "x"),
    ("call_100", "pipelined call, 100 in flight >= 0.25x floor one-way", "ratio", 0.25, ">=", "x"),
    (
        "scatter_64_p50",
        "scatter to 64 actors on 4 nodes p50 <= 20x floor RTT",
        "ratio",
        20,
        "<=",
        "x",
    ),
    ("idle_100k_mib", "100k idle actors <= 1 GiB (RSS growth)", "abs", 1024, "<=", "MiB"),
    # The task layer (bench.tasks): ratios to zcell's own send, the floor, the best peer.
    ("task_delay_p50_vs_send", "delay().get() p50 <= 1.5x zcell send p50", "ratio", 1.5, "<=", "x"),
    ("task_throughput", "task throughput >= 0.1x floor one-way", "ratio", 0.1, ">=", "x"),
    ("task_throughput_vs_peer", "task throughput >= 10x the best peer", "ratio", 10, ">=", "x"),
    ("task_chord_p50", "chord of 1000 adds into xsum <= 500x floor RTT", "ratio", 500, "<=", "x"),
    (
        "results_100k_mib",
        "100k finished results <= 200 MiB (worker RSS growth)",
        "abs",
        200,
        "<=",
        "MiB",
    ),
    # 10k actors/s was the goal when the floor's one-way rate was ~300k msg/s: as a
    # ratio to the same run's floor, a slow phase of the machine does not turn it red.
    (
        "spawn_nowait",
        "spawn (nowait, from a client, one node) >= 0.033x floor one-way (10k/s at 300k)",
        "ratio",
        0.033,
        ">=",
        "x",
    ),
)


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _div(a: Any, b: Any, digits: int = 3) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return round(a / b, digits)


def compute_ratios(floor: dict[str, Any], metrics: dict[str, Any]) -> dict[str, float | None]:
    """zcell figures over the floor of the same run.

    Latencies are divided by the floor RTT p50 (lower is better; 1.0 = the floor);
    rates by the floor one-way rate (higher is better; 1.0 = the floor).
    """
    rtt = floor["floor"]["rtt_p50_us"]
    oneway = floor["floor"]["oneway_msgs_per_s"]
    best = floor["variants"].get(floor["floor"]["rtt_p50_from"], {})
    m = metrics
    ratios = {
        "send_rtt_p50": _div(_get(m, "send_rtt", "p50_us"), rtt),
        "send_rtt_p99": _div(_get(m, "send_rtt", "p99_us"), best.get("rtt_p99_us")),
        "actor_send_rtt_p50": _div(_get(m, "actor_send_rtt", "p50_us"), rtt),
        "nowait_oneway": _div(_get(m, "nowait_oneway", "msgs_per_s"), oneway),
        "throw_sync_p50": _div(_get(m, "throw", "sync_p50_us"), rtt),
        "throw_nowait": _div(_get(m, "throw", "nowait_msgs_per_s"), oneway),
        "chain_p50": _div(_get(m, "chain", "p50_us"), rtt),
        "chain_per_hop_p50": _div(_get(m, "chain", "per_hop_p50_us"), rtt),
        "spawn_nowait": _div(_get(m, "spawn_memory", "nowait_actors_per_s"), oneway, 4),
    }
    for window in ("1", "10", "100"):
        ratios[f"call_{window}"] = _div(_get(m, "call_pipelined", window, "calls_per_s"), oneway)
    for size in ("1", "16", "64"):
        ratios[f"scatter_{size}_p50"] = _div(_get(m, "scatter", size, "p50_us"), rtt)
    return ratios


def evaluate_targets(
    ratios: dict[str, float | None], metrics: dict[str, Any]
) -> list[dict[str, Any]]:
    """One entry per target: measured value, goal, met (None: not measured)."""
    absolute = {
        "idle_100k_mib": _get(metrics, "spawn_memory", "per_100k_mib"),
        "results_100k_mib": _get(metrics, "tasks", "memory", "per_100k_mib"),
    }
    out = []
    for key, text, kind, goal, op, unit in TARGETS:
        value = ratios.get(key) if kind == "ratio" else absolute.get(key)
        met = None
        if isinstance(value, int | float):
            met = value <= goal if op == "<=" else value >= goal
        out.append(
            {
                "key": key,
                "target": text,
                "value": value,
                "unit": unit,
                "goal": goal,
                "op": op,
                # >= 1 means met, for either direction: how far from the goal.
                "headroom": _div(goal, value) if op == "<=" else _div(value, goal),
                "met": met,
            }
        )
    return out


def zcell_errors(metrics: dict[str, Any]) -> list[str]:
    """Scenario errors reported by the client (empty when everything ran)."""
    errors = []
    for name, res in metrics.items():
        if not isinstance(res, dict):
            continue
        if "error" in res:
            errors.append(f"{name}: {res['error']}")
        for sub, val in res.items():
            if isinstance(val, dict) and "error" in val:
                errors.append(f"{name}[{sub}]: {val['error']}")
    return errors


# --------------------------------------------------------------------------- table


def _fmt(v: Any, spec: str = ",.0f", unit: str = "") -> str:
    if not isinstance(v, int | float):
        return "-"
    return f"{v:{spec}}{unit}"


def _x(v: Any) -> str:
    return _fmt(v, ".3g", "x")


def _rows(metrics: dict[str, Any], ratios: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    m, r = metrics, ratios or {}

    def vs(ratio: str, of: str) -> str:
        return f"{_x(r.get(ratio))} {of}" if ratios else ""

    def lat(name: str, path: tuple[str, ...], ratio: str) -> None:
        d = _get(m, *path) or {}
        value = f"{_fmt(d.get('p50_us'), '.1f')} / {_fmt(d.get('p99_us'), '.1f')} us"
        rows.append((name, value, vs(ratio, "RTT")))

    def rate(name: str, v: Any, unit: str, ratio: str | None) -> None:
        rows.append((name, f"{_fmt(v)} {unit}", vs(ratio, "one-way") if ratio else ""))

    rows: list[tuple[str, str, str]] = []
    lat("send RTT p50 / p99, program thread", ("send_rtt",), "send_rtt_p50")
    lat("send RTT p50 / p99, actor to actor", ("actor_send_rtt",), "actor_send_rtt_p50")
    for w in ("1", "10", "100"):
        rate(
            f"call, {w} in flight",
            _get(m, "call_pipelined", w, "calls_per_s"),
            "calls/s",
            f"call_{w}",
        )
    rate("send nowait, one-way", _get(m, "nowait_oneway", "msgs_per_s"), "msgs/s", "nowait_oneway")
    t = _get(m, "throw") or {}
    rows.append(
        (
            "throw p50 / p99, one at a time",
            f"{_fmt(t.get('sync_p50_us'), '.1f')} / {_fmt(t.get('sync_p99_us'), '.1f')} us",
            vs("throw_sync_p50", "RTT"),
        )
    )
    spread = t.get("per_actor")
    rate(
        "throw nowait over 4 nodes",
        t.get("nowait_msgs_per_s"),
        "msgs/s" + (f" (per node {sorted(spread.values())})" if spread else ""),
        "throw_nowait",
    )
    for size in ("1", "16", "64"):
        lat(f"scatter to {size}, to last reply", ("scatter", size), f"scatter_{size}_p50")
    lat(f"call chain {_get(m, 'chain', 'depth') or 10} deep", ("chain",), "chain_p50")
    rows.append(
        (
            "  per hop p50",
            f"{_fmt(_get(m, 'chain', 'per_hop_p50_us'), '.1f')} us",
            vs("chain_per_hop_p50", "RTT"),
        )
    )
    sm = _get(m, "spawn_memory") or {}
    rate(
        f"spawn, nowait from a client ({_fmt(sm.get('idle_actors'))})",
        sm.get("nowait_actors_per_s"),
        "actors/s",
        None,
    )
    rate(
        "spawn, one at a time from a client",
        _get(m, "spawn_sync", "actors_per_s"),
        "actors/s",
        None,
    )
    rate(
        "spawn, in a handler on the node", _get(m, "spawn_local", "actors_per_s"), "actors/s", None
    )
    rows.append(
        (
            "idle actor memory (RSS growth)",
            f"{_fmt(sm.get('bytes_per_actor'))} B/actor, {_fmt(sm.get('per_100k_mib'), '.1f')} MiB/100k",
            f"RSS {_fmt(sm.get('rss_before_mib'), '.1f')} -> {_fmt(sm.get('rss_after_mib'), '.1f')} MiB",
        )
    )
    return rows


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def format_zcell(mesh: dict[str, Any], ratios: dict[str, Any] | None = None) -> str:
    """The zcell metrics table (ratios when a floor was measured)."""
    header = ("zcell metric", "value", "ratio to floor" if ratios else "")
    lines = _table(header, _rows(mesh["metrics"], ratios))
    for err in zcell_errors(mesh["metrics"]):
        lines.append(f"ERROR {err}")
    anomalies = {}
    for key in ("node_stats", "node_stats_memory"):
        anomalies.update(_get(mesh["metrics"], key, "anomalies") or {})
    lines.append(
        "node counters: "
        + (
            ", ".join(f"{k}={v}" for k, v in anomalies.items())
            or "no drops, late replies or failures"
        )
    )
    aff = mesh.get("affinity") or {}
    if aff:
        lines.append(
            "affinity: " + ", ".join(f"{k} {','.join(map(str, v))}" for k, v in aff.items())
        )
    return "\n".join(lines)


def format_targets(targets: list[dict[str, Any]]) -> str:
    rows = []
    for t in targets:
        unit = t["unit"]
        if unit == "x":
            value, goal = _x(t["value"]), f"{t['op']} {t['goal']}x"
        else:
            value = _fmt(t["value"], ",.0f" if unit == "actors/s" else ",.1f", " " + unit)
            goal = f"{t['op']} {t['goal']:,} {unit}"
        status = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        rows.append((t["target"], value, goal, status))
    return "\n".join(_table(("target (issue)", "measured", "goal", "status"), rows))


def format_peers(peers: dict[str, Any], floor_rtt: float | None) -> str:
    rows = []
    for name, res in peers.items():
        if "skipped" in res or "error" in res:
            why = res.get("skipped") or "ERROR " + str(res.get("error")).splitlines()[0]
            rows.append((name, "-", "-", "-", why))
            continue
        rows.append(
            (
                name,
                f"{_fmt(res.get('sync_p50_us'), '.1f')} / {_fmt(res.get('sync_p99_us'), '.1f')} us",
                _x(_div(res.get("sync_p50_us"), floor_rtt)) + " RTT",
                f"{_fmt(res.get('pipelined_calls_per_s'))} calls/s",
                res.get("note", ""),
            )
        )
    header = ("peer", "sync call p50 / p99", "ratio", "pipelined", "notes")
    return "\n".join(_table(header, rows))


def format_report(result: dict[str, Any]) -> str:
    from bench.floor import format_table

    f = result["floor"]
    lines = [
        f"zcell benchmarks {result['started']} on {result['host']}, "
        f"{'quick' if result['quick'] else 'full'} run, placement {result['placement']}",
        f"load average before {_load(result['loadavg']['before'])}, after "
        f"{_load(result['loadavg']['after'])}; other programs used "
        f"{result.get('other_cpu_s')} CPU-s during the run",
        "",
        format_table(f),
        "",
        format_zcell(result["zcell"], result["ratios"]),
    ]
    if result.get("tasks"):
        from bench.tasks import format_tasks

        lines += ["", format_tasks(result["tasks"]["metrics"], result["ratios"])]
    lines += ["", format_targets(result["targets"])]
    if result.get("task_peers"):
        from bench.taskpeers import format_task_peers

        lines += ["", format_task_peers(result["task_peers"], result["tasks"]["metrics"])]
    if result.get("peers"):
        lines += ["", format_peers(result["peers"], f["floor"]["rtt_p50_us"])]
    phases = ", ".join(
        f"{k} {v['elapsed_s']}s (load {_load(v['loadavg']['before'])} -> "
        f"{_load(v['loadavg']['after'])}, others {v.get('other_cpu_s')} CPU-s)"
        for k, v in result["phases"].items()
    )
    lines += ["", f"elapsed {result['elapsed_s']}s ({phases})"]
    return "\n".join(lines)


def _load(load: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


# --------------------------------------------------------------------------- files


def save_result(
    result: dict[str, Any],
    stem: Path,
    plots: Callable[[dict[str, Any], Path], list[str]],
    no_plots: bool,
) -> dict[str, Any]:
    """Write ``result`` to ``stem.json`` with its plots beside it; returns the files.

    One place for both ``python -m bench`` and ``python -m bench.soak``, so a run
    without matplotlib still writes its JSON and says why the plots are missing
    (``result["files"]`` records it too).
    """
    files: dict[str, Any] = {"json": f"{stem}.json", "plots": []}
    if no_plots:
        files["plots_skipped"] = "--no-plots"
    else:
        try:
            files["plots"] = plots(result, stem)
        except ImportError as exc:
            files["plots_skipped"] = (
                f"matplotlib is not installed ({exc}); pip install -e '.[bench]' for plots"
            )
    result["files"] = files
    with open(files["json"], "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return files


def print_files(files: dict[str, Any]) -> None:
    """Say where :func:`save_result` wrote, and why plots are missing if they are."""
    for path in [files["json"], *files["plots"]]:
        print(f"wrote {path}")
    if "plots_skipped" in files:
        print(f"plots skipped: {files['plots_skipped']}")


# --------------------------------------------------------------------------- plots


def write_plots(result: dict[str, Any], stem: Path) -> list[str]:
    """PNG plots beside the JSON; returns their paths.

    Raises:
        ImportError: matplotlib (the ``bench`` extra) is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, f = result["zcell"]["metrics"], result["floor"]
    peers = {k: v for k, v in (result.get("peers") or {}).items() if "sync_p50_us" in v}
    title = f"{result['started']} {result['host']}, {result['placement']}" + (
        ", quick" if result["quick"] else ""
    )
    paths = []

    # Latency: p50 bars, p99 as a tick.
    lat: list[tuple[str, Any, Any, str]] = []
    for name in ("lean-inline", "green-inline", "lean-spawn", "green-spawn"):
        v = f["variants"].get(name)
        if v:
            lat.append((f"floor {name}", v["rtt_p50_us"], v["rtt_p99_us"], "tab:gray"))
    for label, path in (
        ("zcell send (thread)", ("send_rtt",)),
        ("zcell send (actor)", ("actor_send_rtt",)),
        ("zcell scatter 1", ("scatter", "1")),
        ("zcell scatter 16", ("scatter", "16")),
        ("zcell scatter 64", ("scatter", "64")),
        ("zcell chain 10", ("chain",)),
    ):
        d = _get(m, *path) or {}
        lat.append((label, d.get("p50_us"), d.get("p99_us"), "tab:blue"))
    t = m.get("throw") or {}
    lat.append(("zcell throw", t.get("sync_p50_us"), t.get("sync_p99_us"), "tab:blue"))
    for name, res in peers.items():
        lat.append((f"{name} call", res["sync_p50_us"], res.get("sync_p99_us"), "tab:orange"))
    paths.append(_barh(plt, lat, "round trip, us (p50 bar, p99 tick; log)", title, stem, "latency"))

    rates: list[tuple[str, Any, Any, str]] = []
    for name in ("lean-inline", "green-inline", "lean-spawn", "green-spawn"):
        v = f["variants"].get(name)
        if v:
            rates.append((f"floor {name} one-way", v["oneway_msgs_per_s"], None, "tab:gray"))
    rates.append(("zcell send nowait", _get(m, "nowait_oneway", "msgs_per_s"), None, "tab:blue"))
    for w in ("1", "10", "100"):
        v = _get(m, "call_pipelined", w, "calls_per_s")
        rates.append((f"zcell call x{w}", v, None, "tab:blue"))
    rates.append(("zcell throw nowait", t.get("nowait_msgs_per_s"), None, "tab:blue"))
    rates.append(
        ("zcell spawn nowait", _get(m, "spawn_memory", "nowait_actors_per_s"), None, "tab:green")
    )
    rates.append(("zcell spawn in node", _get(m, "spawn_local", "actors_per_s"), None, "tab:green"))
    for name, res in peers.items():
        rates.append((f"{name} pipelined", res.get("pipelined_calls_per_s"), None, "tab:orange"))
    paths.append(_barh(plt, rates, "per second (log)", title, stem, "throughput"))

    # Targets: headroom >= 1 means met, whatever the direction of the target.
    tg = [
        (t["target"], t["headroom"], None, "tab:green" if t["met"] else "tab:red")
        for t in result["targets"]
    ]
    paths.append(
        _barh(plt, tg, "headroom (>= 1: target met; log)", title, stem, "targets", line=1.0)
    )
    return paths


def _barh(
    plt: Any,
    bars: list[tuple[str, Any, Any, str]],
    xlabel: str,
    title: str,
    stem: Path,
    suffix: str,
    line: float | None = None,
) -> str:
    bars = [b for b in bars if isinstance(b[1], int | float) and b[1] > 0]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(bars) + 1.6))
    y = list(range(len(bars)))[::-1]
    ax.barh(y, [b[1] for b in bars], color=[b[3] for b in bars])
    for yi, b in zip(y, bars, strict=True):
        if isinstance(b[2], int | float):
            ax.plot([b[2]], [yi], marker="|", color="black", markersize=12)
        label = f" {b[1]:,.0f}" if b[1] >= 100 else f" {b[1]:.3g}"
        ax.text(b[1], yi, label, va="center", fontsize=8)
    ax.set_yticks(y, [b[0] for b in bars], fontsize=8)
    ax.set_xscale("log")
    if line is not None:
        ax.axvline(line, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_title(f"zcell {suffix}: {title}", fontsize=9)
    fig.tight_layout()
    path = f"{stem}-{suffix}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
