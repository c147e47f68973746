"""The dashboard's memory stays bounded however many events it folds (found by
bench/dashboard.py: RSS grew after the task cap was reached)."""

from __future__ import annotations

from zcell.monitor.state import RATE_WINDOW, State


def test_the_state_forgets_event_stamps_older_than_the_rate_window() -> None:
    # A reader that never asks for rate() (the dashboard samples its own rates)
    # must not keep a stamp per event for ever: 20 events a second for 1000 s.
    state = State(max_tasks=10)
    for i in range(20_000):
        state.event({"type": "task-succeeded", "uuid": f"t{i % 50}", "timestamp": 1 + i / 20})
    assert len(state.tasks) == 10
    assert len(state._recent) <= 20 * RATE_WINDOW + 1
    assert state.rate(now=1001.0) == 20.0
