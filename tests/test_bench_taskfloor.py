"""Smoke test of the task floor: ``python -m bench.taskfloor --quick --json --zcell``.

Structure only; timings depend on the machine and are never asserted. The run
itself checks every task's value (a mixed-up reply fails it).
"""

from __future__ import annotations

from conftest import run_bench_json

LATENCIES = ("echo", "direct", "loop", "zcell_delay")
RATES = (
    "rate_slots_1",
    "rate_slots_2",
    "rate_prefetch_1",
    "rate_prefetch_2",
    "rate_open_1",
    "rate_open_2",
    "zcell_rate_1",
    "zcell_rate_2",
)


def test_taskfloor_quick_json_with_zcell() -> None:
    result = run_bench_json("bench.taskfloor", "--quick", "--json", "--zcell", timeout=120)
    assert set(result) == set(LATENCIES) | set(RATES), sorted(result)
    for name in LATENCIES:
        m = result[name]
        assert 0 < m["p50_us"] <= m["p99_us"], (name, m)
    for name in RATES:
        m = result[name]
        assert m["tasks_s"] > 0 and m["client_us"] >= 0, (name, m)
        assert m["runs"] and max(r["tasks_s"] for r in m["runs"]) == m["tasks_s"], (name, m)
