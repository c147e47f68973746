"""The builtin tasks every worker runs without registering them: ``task.map``
and ``task.starmap`` run as one task that calls the task for each item
(``chunks`` are a group of starmaps), as Celery's ``celery.map``/``celery.starmap``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .canvas import MAP_TASK, STARMAP_TASK
from .task import Task

if TYPE_CHECKING:
    from .app import App

__all__ = ["MAP_TASK", "STARMAP_TASK", "builtin"]


def _run(app: App, sig: Any, items: Any, star: bool) -> list[Any]:
    if not isinstance(sig, dict) or not isinstance(items, list):
        raise TypeError("map/starmap take a signature (map) and a list of items")
    task = app.tasks[str(sig.get("task"))]
    return [task(*item) if star else task(item) for item in items]


def builtin(app: App, name: str) -> Task | None:
    """The builtin task ``name`` bound to ``app``, or None."""
    if name not in (MAP_TASK, STARMAP_TASK):
        return None
    star = name == STARMAP_TASK

    def run(sig: Any, items: Any) -> list[Any]:
        return _run(app, sig, items, star)

    return Task(app, run, name=name)
