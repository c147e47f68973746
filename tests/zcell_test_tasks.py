"""Tasks for the task-layer tests: imported by `zcell worker -A zcell_test_tasks`
child processes and by the tests themselves (which point the app at their mesh)."""

from __future__ import annotations

import os
from typing import Any

import gevent

from zcell import App

app = App("zcell_test_tasks", discovery="static")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task(bind=True)
def whoami(self: Any) -> dict[str, Any]:
    request = self.request
    return {
        "id": request.id,
        "hostname": request.hostname,
        "retries": request.retries,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "args": request.args,
        "queue": request.delivery_info["routing_key"],
    }


@app.task(bind=True)
def where(self: Any) -> str:
    """The name of the node that runs it."""
    return str(self.request.hostname)


def _mark(hostname: str, path: str, seconds: float, value: Any) -> Any:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{hostname} {os.getpid()}\n")
    gevent.sleep(seconds)
    return value


@app.task(bind=True)
def mark(self: Any, path: str, seconds: float = 0.0, value: Any = None) -> Any:
    """Append the worker's name to ``path`` (counts the runs), then sleep."""
    return _mark(self.request.hostname, path, seconds, value)


@app.task
def fail(kind: str) -> None:
    errors: dict[str, BaseException] = {
        "SystemExit": SystemExit(3),
        "KeyboardInterrupt": KeyboardInterrupt(),
        "TypeError": TypeError("bad type"),
    }
    raise errors[kind]


@app.task
def child(i: int) -> int:
    gevent.sleep(0.05)
    return i


@app.task
def parent(n: int) -> int:
    """Waits on its children: with every slot taken, this must not deadlock."""
    results = [child.delay(i) for i in range(n)]
    return sum(r.get(timeout=30) for r in results)


@app.task(bind=True, max_retries=2)
def flaky(self: Any, path: str) -> str:
    """Fails on its first run (noted in ``path``), retries at once, then succeeds."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{self.request.hostname}\n")
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return str(self.request.hostname)


@app.task(bind=True, acks_late=True)
def mark_late(self: Any, path: str, seconds: float = 0.0) -> Any:
    """``mark`` with acks_late: redelivered if its worker dies."""
    return _mark(self.request.hostname, path, seconds, "done")


@app.task
def unserialisable() -> object:
    return object()


@app.task(bind=True)
def progress(self: Any) -> str:
    self.update_state(state="PROGRESS", meta={"done": 1})
    gevent.sleep(0.5)
    return "ok"


#: Task ids ``noted`` saw (in this process: for in-process workers).
NOTED: list[str] = []


@app.task
def noted(task_id: Any) -> None:
    """A ``link_error`` target: records the failed task's id."""
    NOTED.append(task_id)


@app.task
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task
def multiply(a: int, b: int) -> int:
    """The intro post's task."""
    return a * b


@app.task
def slow_add(x: int, y: int, seconds: float = 0.0) -> int:
    gevent.sleep(seconds)
    return x + y
