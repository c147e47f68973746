"""The beat tests' app: `zcell worker -B -A zcell_test_beat` child processes.

Its schedule comes from the environment: ZCELL_TEST_BEAT_FILE (each tick appends
its due time and the worker's name there) and ZCELL_TEST_BEAT_EVERY (seconds); ZCELL_TEST_BEAT_SKIP=1 skips the ticks missed
in a hand-over, ZCELL_TEST_BEAT_QUORUM sets beat_quorum."""

from __future__ import annotations

import os
from typing import Any

from zcell import App

app = App("zcell_test_beat", discovery="static")
if os.environ.get("ZCELL_TEST_BEAT_QUORUM"):
    app.conf.beat_quorum = int(os.environ["ZCELL_TEST_BEAT_QUORUM"])


@app.task(bind=True)
def tick(self: Any, path: str) -> None:
    """Append this tick's id and the worker's name to ``path`` (counts the runs)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{self.request.id} {self.request.hostname}\n")


if os.environ.get("ZCELL_TEST_BEAT_FILE"):
    app.add_periodic_task(
        float(os.environ.get("ZCELL_TEST_BEAT_EVERY", "0.5")),
        tick,
        args=(os.environ["ZCELL_TEST_BEAT_FILE"],),
        name="tick",
        catch_up=not os.environ.get("ZCELL_TEST_BEAT_SKIP"),
    )

if os.environ.get("ZCELL_TEST_BEAT_BAD"):
    app.conf.beat_schedule = {"bad": {"task": "zcell_test_beat.tick", "every": 1}}
