"""Smoke test of the benchmark suite: `python -m bench --quick --out <tmp>`.

It checks the shape of the JSON report only: every metric present, numbers
positive, ratios and targets computed. Timings depend on the machine (and on
whatever else runs on it) and are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

LATENCIES = ["send_rtt", "actor_send_rtt", "chain"]
RATIOS = [
    "send_rtt_p50",
    "send_rtt_p99",
    "actor_send_rtt_p50",
    "nowait_oneway",
    "throw_sync_p50",
    "throw_nowait",
    "chain_p50",
    "chain_per_hop_p50",
    "call_1",
    "call_10",
    "call_100",
    "scatter_1_p50",
    "scatter_16_p50",
    "scatter_64_p50",
]
TARGETS = {
    "send_rtt_p50",
    "nowait_oneway",
    "call_100",
    "scatter_64_p50",
    "idle_100k_mib",
    "spawn_nowait",
    "actor_send_rtt_p50",
    "chain_per_hop_p50",
    "task_delay_p50_vs_send",
    "task_throughput",
    "task_throughput_vs_peer",
    "task_chord_p50",
    "results_100k_mib",
}
#: Targets with nothing to measure in a quick run without peers (or without canvas).
UNMEASURED_OK = {"task_throughput_vs_peer", "task_chord_p50"}


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def check_latency(m: dict[str, Any], where: str) -> None:
    assert "error" not in m, (where, m)
    for key in ("p50_us", "p99_us", "mean_us", "n"):
        assert positive(m[key]), (where, key, m)
    assert m["p99_us"] >= m["p50_us"], (where, m)


def check_loadavg(load: dict[str, Any], where: str) -> None:
    for when in ("before", "after"):
        assert len(load[when]) == 3, (where, load)
        assert all(isinstance(x, int | float) and x >= 0 for x in load[when]), (where, load)


def run_bench(
    argv: list[str], out: Path, pattern: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """``python -m *argv --out OUT`` as a child; returns the finished process and the
    one JSON report it wrote (matching ``pattern``). Shared by the quick run and the
    soak run, which both must exit 0 and leave exactly one report."""
    proc = subprocess.run(
        [sys.executable, "-m", *argv, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(out.glob(pattern))
    assert len(files) == 1, list(out.iterdir())
    return proc, files


def run_json(argv: list[str], timeout: float, codes: tuple[int, ...] = (0,)) -> tuple[int, Any]:
    """``python -m *argv`` (a bench module run with ``--json``) as a child; its exit
    code (one of ``codes``) and the JSON report it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode in codes, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    out = tmp_path_factory.mktemp("bench")
    proc, files = run_bench(["bench", "--quick"], out, "*-quick.json", timeout=150)
    return json.loads(files[0].read_text()), out, proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_smoke_quick_run_reports_every_zcell_metric(
    quick_run: tuple[dict[str, Any], Path, str],
) -> None:
    result, _, _ = quick_run
    assert result["quick"] is True
    assert result["errors"] == []
    m = result["zcell"]["metrics"]
    for name in LATENCIES:
        check_latency(m[name], name)
    assert m["chain"]["depth"] == 10
    for window in ("1", "10", "100"):
        entry = m["call_pipelined"][window]
        assert positive(entry["calls_per_s"]) and positive(entry["n"]), (window, entry)
    nowait = m["nowait_oneway"]
    assert positive(nowait["msgs_per_s"]) and nowait["count"] == nowait["n"], nowait
    throw = m["throw"]
    check_latency(
        {
            "p50_us": throw["sync_p50_us"],
            "p99_us": throw["sync_p99_us"],
            "mean_us": 1,
            "n": throw["sync_n"],
        },
        "throw",
    )
    assert positive(throw["nowait_msgs_per_s"]), throw
    assert throw["nodes"] == 4 and len(throw["per_actor"]) == 4, throw
    assert sum(throw["per_actor"].values()) == throw["nowait_n"], throw
    assert isinstance(throw["spreads"], bool), throw
    for size in ("1", "16", "64"):
        check_latency(m["scatter"][size], f"scatter {size}")
        assert m["scatter"][size]["actors"] == int(size)
        assert m["scatter"][size]["short"] == 0, m["scatter"][size]
    sm = m["spawn_memory"]
    for key in ("nowait_actors_per_s", "rss_before_mib", "rss_after_mib", "per_100k_mib"):
        assert positive(sm[key]), (key, sm)
    assert sm["idle_actors"] == 10000, sm  # quick mode
    assert sm["hosted"] >= sm["idle_actors"], sm
    assert positive(m["spawn_sync"]["actors_per_s"]), m["spawn_sync"]
    assert positive(m["spawn_local"]["actors_per_s"]), m["spawn_local"]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_smoke_quick_run_quotes_zcell_as_ratios_to_the_floor_of_the_same_run(
    quick_run: tuple[dict[str, Any], Path, str],
) -> None:
    result, _, stdout = quick_run
    floor = result["floor"]["floor"]
    assert positive(floor["rtt_p50_us"]) and positive(floor["oneway_msgs_per_s"])
    assert set(result["floor"]["variants"]) == {
        "green-inline",
        "green-spawn",
        "lean-inline",
        "lean-spawn",
    }
    ratios = result["ratios"]
    for key in RATIOS:
        assert positive(ratios[key]), (key, ratios)
    m = result["zcell"]["metrics"]
    assert ratios["send_rtt_p50"] == pytest.approx(
        m["send_rtt"]["p50_us"] / floor["rtt_p50_us"], rel=1e-2
    )
    assert ratios["nowait_oneway"] == pytest.approx(
        m["nowait_oneway"]["msgs_per_s"] / floor["oneway_msgs_per_s"], rel=1e-2
    )
    assert {t["key"] for t in result["targets"]} == TARGETS
    for t in result["targets"]:
        if t["key"] in UNMEASURED_OK and t["value"] is None:
            assert t["met"] is None, t
            continue
        assert positive(t["value"]) and positive(t["goal"]), t
        assert isinstance(t["met"], bool), t
        assert t["op"] in ("<=", ">="), t
    assert "MISSED" in stdout or "met" in stdout


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_smoke_quick_run_measures_the_task_layer_against_the_floor(
    quick_run: tuple[dict[str, Any], Path, str],
) -> None:
    """bench.tasks in the quick run: every task metric present and positive, ratios to
    the floor and to zcell's own send computed, the table printed. No timings asserted."""
    result, _, stdout = quick_run
    m = result["tasks"]["metrics"]
    check_latency(m["delay_rtt"], "delay_rtt")
    check_latency(m["chain"], "task chain")
    assert m["chain"]["depth"] == 10
    for workers in ("1", "2"):
        assert positive(m["throughput"][workers]["tasks_per_s"]), m["throughput"]
    assert "not_available" in m["chord"] or positive(m["chord"]["p50_us"]), m["chord"]
    fanout = m["fanout"]
    assert fanout["children_per_parent"] == 100 and positive(fanout["children_per_s"]), fanout
    assert m["memory"]["results"] == 5000 and positive(m["memory"]["per_100k_mib"]), m["memory"]
    for p in ("1", "2"):
        assert positive(m["processes"]["median_tasks_per_s"][p]), m["processes"]
    ratios = result["ratios"]
    for key in ("task_delay_p50", "task_delay_p50_vs_send", "task_throughput", "task_chain_p50"):
        assert positive(ratios[key]), (key, ratios)
    assert ratios["task_delay_p50_vs_send"] == pytest.approx(
        m["delay_rtt"]["p50_us"] / result["zcell"]["metrics"]["send_rtt"]["p50_us"], rel=1e-2
    )
    assert "add.delay(2, 2).get()" in stdout and "--processes 1 / 2" in stdout
    assert result["task_peers"] == {}


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_smoke_quick_run_records_placement_load_and_output_files(
    quick_run: tuple[dict[str, Any], Path, str],
) -> None:
    result, out, _ = quick_run
    assert result["placement"] == "unpinned"
    assert result["zcell"]["placement"] == "unpinned"
    check_loadavg(result["loadavg"], "run")
    for name, phase in result["phases"].items():
        check_loadavg(phase["loadavg"], name)
        assert positive(phase["elapsed_s"]), (name, phase)
    for name, part in result["phases"]["zcell"]["parts"].items():
        check_loadavg(part["loadavg"], name)
    assert positive(result["elapsed_s"])
    for key in ("python", "pyzmq", "libzmq", "gevent", "msgpack", "zcell"):
        assert result["versions"][key], key
    assert result["peers"] == {}
    files = result["files"]
    assert Path(files["json"]).parent == out
    if files["plots"]:
        assert all(Path(p).is_file() and p.endswith(".png") for p in files["plots"])
    else:
        assert "matplotlib" in files["plots_skipped"], files


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_crowd_quick_run_measures_each_scenario_at_both_sizes_and_reaps_its_worker() -> None:
    """``python -m bench.crowd --quick --json``: every scenario at its small and
    large size, with figures; its worker child is gone. How the figures compare
    is what the benchmark shows, not what this test asserts."""
    _, report = run_json(["bench.crowd", "--quick", "--json"], timeout=80)
    counts = report["counts"]
    sizes = {
        "directory": {"none", str(counts["actors"])},
        "queues": {"none", str(counts["queues"])},
        "expiring": {str(counts["expiring"]), str(2 * counts["expiring"])},
        "revoke": {str(counts["waiting"]), str(2 * counts["waiting"])},
        "hosting": {"0", str(counts["hosted"])},
        "pending": {"0", str(counts["pending"])},
    }
    for scenario, expected in sizes.items():
        assert set(report[scenario]) == expected, (scenario, report[scenario])
        for figures in report[scenario].values():
            ok = (
                (lambda v: v == 0 or positive(v))
                if scenario in ("pending", "hosting")
                else positive
            )
            assert figures and all(ok(v) for v in figures.values()), (scenario, figures)
    assert not Path(f"/proc/{report['worker_pid']}").exists()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_beat_run_times_the_takeover_of_a_killed_leader_and_reaps_its_candidates() -> None:
    """``python -m bench.beat --reps 1 --json``: one takeover timed, in seconds and in
    heartbeats; its three candidates are gone. How long it took is not asserted."""
    _, report = run_json(["bench.beat", "--reps", "1", "--json"], timeout=80)
    (took,) = report["takeover_s"]
    assert positive(took) and report["median_s"] == took
    assert report["takeover_heartbeats"] == [pytest.approx(took / 0.3, abs=0.01)]
    assert len(report["pids"]) == 3
    assert not [pid for pid in report["pids"] if Path(f"/proc/{pid}").exists()]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chaos_run_counts_every_outcome_while_workers_are_killed() -> None:
    """``python -m bench.chaos --seconds 6 --json``: work-flows applied while a worker
    is killed and started again; every outcome counted by kind. Which ones come
    is what the run shows, not what this test asserts."""
    argv = ["bench.chaos", "--seconds", "6", "--get-timeout", "30", "--json"]
    code, report = run_json(argv, timeout=110, codes=(0, 1))
    assert report["kills"] >= 1 and report["seconds"] == 6
    kinds = {key.split()[0] for key in report["outcomes"]}
    assert kinds == {"chord", "chain", "plain"}, report["outcomes"]
    assert all(isinstance(n, int) and n > 0 for n in report["outcomes"].values())
    defects = sum(
        n for k, n in report["outcomes"].items() if k.split()[1] in ("WRONG", "TaskTimeout")
    )
    assert report["defects"] == defects and code == (1 if defects else 0)
    assert not [pid for pid in report["pids"] if Path(f"/proc/{pid}").exists()]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_soak_smoke_run_reaps_its_children_and_writes_a_well_formed_report(
    tmp_path: Path,
) -> None:
    """``python -m bench.soak --minutes 0.3``: it ends, every child it started (subject,
    client, churning peers) is gone, and the JSON has samples and a verdict per metric.
    Flatness is what the soak measures, not what this test asserts."""
    from bench.soak import PROC_METRICS

    proc, files = run_bench(
        ["bench.soak", "--minutes", "0.3", "--churn-every", "1.5", "--no-plots"],
        tmp_path,
        "soak-*.json",
        timeout=80,
    )
    result = json.loads(files[0].read_text())
    assert result["benchmark"] == "soak" and result["errors"] == [], result["errors"]

    names = [c["name"] for c in result["children"]]
    assert {"subject", "client"} <= set(names) and any(n.startswith("churn-") for n in names)
    for child in result["children"]:
        assert child["returncode"] is not None, child  # reaped by the runner
        assert not Path(f"/proc/{child['pid']}").exists(), child
    assert any(e["action"] == "join" for e in result["churn"]), result["churn"]

    samples = result["samples"]
    assert len(samples) >= 4, samples
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    for s in samples:
        for who in ("subject", "client"):
            for key in PROC_METRICS:
                assert positive(s[who][key]), (who, key, s)
    assert any(s["stats"] and s["stats"]["members"] >= 2 for s in samples), samples

    ops = result["client"]["ops"]
    for op in ("send", "call", "throw", "scatter", "nowait", "spawn", "thread.send"):
        assert ops.get(op, 0) > 0, (op, ops)
    assert result["client"]["threads"]["started"] > 0, result["client"]
    assert {"client_exit", "subject_exit_on_sigterm"} <= set(result["client"]), result["client"]
    after = result["after_warmup"]
    assert after["ops"] > 0 and isinstance(after["errors"], int), after
    assert sum(after["errors_by_kind"].values()) == after["errors"], after

    expected = {f"{who}.{key}" for who in ("subject", "client") for key in PROC_METRICS}
    assert set(result["verdicts"]) == expected
    for metric, v in result["verdicts"].items():
        assert v["verdict"] in ("flat", "GROWS", "shrinks"), (metric, v)
        for key in ("first", "last", "growth", "tolerance", "slope_per_hour"):
            assert isinstance(v[key], int | float), (metric, key, v)
        assert v["growth"] == pytest.approx(v["last"] - v["first"], abs=0.02), (metric, v)
    assert "verdict" in proc.stdout and str(files[0]) in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_parts_that_run_out_of_their_budget_are_reported_and_the_table_still_prints(
    tmp_path: Path,
) -> None:
    """Budgets scaled down 50x (as a machine 50x slower than the calibration would
    see it): parts cannot finish, each is reported as "not finished", the rest of the
    table and the JSON are still written, and the exit code says a part failed."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-plots", "--budget-scale", "0.02"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not finished" in proc.stdout, proc.stdout
    assert "target (issue)" in proc.stdout, proc.stdout
    (report,) = tmp_path.glob("*-quick.json")
    result = json.loads(report.read_text())
    assert result["budget_scale"] == 0.02
    assert any("not finished" in e for e in result["errors"]), result["errors"]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_memory_client_past_its_budget_reports_every_scenario_before_it_is_killed() -> None:
    """The memory phase's client gets what its phase's budget leaves (``--within``):
    its waits stop there, so the spawns it cannot see hosted in time fail with the
    count reached, the scenarios after them are still reported, and the client
    prints its result before the phase would kill it. (Its poll once waited 120 s
    in a 60 s phase, and the whole phase was reported as "not finished".)"""
    import time

    from bench._proc import Child
    from bench.mesh import QUICK

    cluster = f"budget-{uuid.uuid4().hex[:8]}"
    node = Child("node[m1]", "bench.mesh", ["--node", "m1", "--cluster", cluster])
    client = None
    try:
        info = json.loads(node.readline(timeout=30))
        # 60 000 nowait spawns: a few seconds to send, far more than 2 s to host.
        counts = {**QUICK, "idle_actors": 60000}
        args = ["--client", "memory", "--cluster", cluster, "--peer", info["endpoints"]["inbox"]]
        args += ["--counts", json.dumps(counts), "--mem-pid", str(info["pid"]), "--within", "2"]
        started = time.monotonic()
        client = Child("client[memory]", "bench.mesh", args)
        line = client.readline(timeout=60)
        while line.startswith("PROGRESS "):
            line = client.readline(timeout=60)
        took = time.monotonic() - started
        assert line.startswith("RESULT "), line
        result = json.loads(line[len("RESULT ") :])
        assert set(result) >= {"spawn_memory", "spawn_sync", "spawn_local", "node_stats_memory"}
        assert "not reached within" in result["spawn_memory"]["error"], result["spawn_memory"]
        assert "hosted" in result["spawn_memory"]["error"]
        assert took < 60, took  # not the 120 s poll (slower beside other tests)
    finally:
        for child in (client, node):
            if child is not None:
                child.kill()
