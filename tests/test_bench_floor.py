"""Smoke test of the benchmark floor: runs `python -m bench.floor --quick --json`.

Structure only; timings depend on the machine and are never asserted.
"""

from __future__ import annotations

from conftest import run_bench_json

VARIANTS = {"green-inline", "green-spawn", "lean-inline", "lean-spawn"}


def test_floor_quick_json() -> None:
    result = run_bench_json("bench.floor", "--quick", "--json", timeout=60)

    assert set(result["variants"]) == VARIANTS
    assert result["placement"] == "unpinned"
    for role in ("client", "server"):
        assert result["affinity"][role], result["affinity"]
    for name, m in result["variants"].items():
        for key in ("rtt_p50_us", "rtt_p99_us", "oneway_msgs_per_s"):
            assert isinstance(m[key], int | float) and m[key] > 0, (name, key, m[key])
        assert m["rtt_p99_us"] >= m["rtt_p50_us"], (name, m)
        assert m["rtt_n"] > 0 and m["oneway_n"] > 0, (name, m)
        assert m["oneway_count"] == m["oneway_n"], (name, m)
        assert m["counts_matched"] is True, (name, m)
    floor = result["floor"]
    assert floor["rtt_p50_us"] > 0 and floor["oneway_msgs_per_s"] > 0
    inline = [m for n, m in result["variants"].items() if n.endswith("inline")]
    assert floor["rtt_p50_us"] == min(m["rtt_p50_us"] for m in inline)
    assert floor["oneway_msgs_per_s"] == max(m["oneway_msgs_per_s"] for m in inline)


def test_a_budget_follows_what_the_part_says_it_needs_within_its_cap() -> None:
    """The floor stretches its budget by its first repetition (a phase of slow
    wake-ups passes the CPU calibration at full speed and then cut the last
    repetitions): up to ``STRETCH_MAX`` times the budget, never shorter."""
    from bench.budget import STRETCH_MAX, Budget

    budget = Budget("floor", 10.0, scale=1.5)  # 15 s
    assert budget.follow(12.0) == 15.0 and budget.stretched_from is None  # it fits
    assert budget.follow(20.0) == 20.0 and budget.stretched_from == 15.0
    assert abs(budget.deadline - (budget.started + 20.0)) < 1e-9
    assert budget.follow(1000.0) == 15.0 * STRETCH_MAX  # capped by the first total
    assert budget.follow(18.0) == 15.0 * STRETCH_MAX  # never shorter
    assert budget.remaining() > 15.0 * STRETCH_MAX - 5
