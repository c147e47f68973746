"""The tasks of ``bench.tasks``: Celery's ``add`` and ``xsum``, and a fan-out parent.

Workers run ``zcell worker -A bench.taskapp``; the benchmark's client imports
the same module and points the app at its cluster before first use.
"""

from __future__ import annotations

from zcell import App

app = App("bench_tasks", discovery="static")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task
def fanout(n: int) -> int:
    """``n`` children sent at once, then every one awaited with ``get()`` inside this
    task: the worker gives the slot back while it waits, so parents cannot starve
    their own children of slots."""
    children = [add.delay(i, i) for i in range(n)]
    return sum(child.get(timeout=60) for child in children)
