"""Prometheus' text format for ``/metrics``, with Flower's metric names.

Written by hand (no client library): the values already live in the `Board`,
and the format is a few lines per series.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .board import BUCKETS

if TYPE_CHECKING:
    from .board import Board

__all__ = ["render"]


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _head(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def render(board: Board, now: float | None = None) -> str:
    """Every metric of the board, in Prometheus' text exposition format."""
    now = time.time() if now is None else now
    out = _head("flower_events_total", "counter", "Number of events")
    for (worker, type_, task), n in sorted(board.event_counts.items()):
        out.append(f"flower_events_total{_labels(worker=worker, type=type_, task=task)} {n}")
    out += _head("flower_task_runtime_seconds", "histogram", "Task runtime")
    for (worker, task), series in sorted(board.runtimes.items()):
        for bound, count in zip(BUCKETS, series, strict=False):
            le = _labels(worker=worker, task=task, le=repr(bound))
            out.append(f"flower_task_runtime_seconds_bucket{le} {count:g}")
        inf = _labels(worker=worker, task=task, le="+Inf")
        out.append(f"flower_task_runtime_seconds_bucket{inf} {series[-2]:g}")
        pair = _labels(worker=worker, task=task)
        out.append(f"flower_task_runtime_seconds_count{pair} {series[-2]:g}")
        out.append(f"flower_task_runtime_seconds_sum{pair} {series[-1]:g}")
    workers = board.workers(now)
    out += _head("flower_worker_online", "gauge", "Worker online status")
    for name, w in workers.items():
        out.append(f"flower_worker_online{_labels(worker=name)} {int(bool(w['status']))}")
    out += _head(
        "flower_worker_number_of_currently_executing_tasks",
        "gauge",
        "Number of tasks currently executing at a worker",
    )
    for name, w in workers.items():
        gauge = "flower_worker_number_of_currently_executing_tasks"
        out.append(f"{gauge}{_labels(worker=name)} {w['active'] if w['status'] else 0}")
    out += _head("zcell_dashboard_tasks", "gauge", "Tasks the dashboard remembers (capped)")
    out.append(f"zcell_dashboard_tasks {len(board.state.tasks)}")
    out += _head("zcell_dashboard_max_tasks", "gauge", "The cap on remembered tasks")
    out.append(f"zcell_dashboard_max_tasks {board.state.max_tasks}")
    return "\n".join(out) + "\n"
