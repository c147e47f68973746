"""The mesh as events tell it: workers and tasks, in memory, bounded. Pure data.

`State.event` folds one event (a dict with Celery's fields) into `workers`
(hostname -> `WorkerState`) and `tasks` (id -> `TaskState`, the newest
``max_tasks`` kept); ``zcell events`` and the dashboard read the same model.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["State", "TaskState", "WorkerState"]

#: Tasks kept by default (the oldest are forgotten first).
MAX_TASKS = 10_000
#: Workers kept by default.
MAX_WORKERS = 1_000
#: Seconds over which `State.rate` counts events.
RATE_WINDOW = 10.0
#: A worker silent this many heartbeat periods counts as offline.
HEARTBEAT_MISSES = 3

#: Task event type -> the state it leaves the task in (Celery's names).
TASK_STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}
#: Fields copied from a task event onto its `TaskState` when present.
TASK_FIELDS = (
    "name", "args", "kwargs", "retries", "eta", "expires", "result", "exception",
    "traceback", "runtime", "root_id", "parent_id",
)  # fmt: skip


@dataclass
class TaskState:
    """One task as its events describe it."""

    uuid: str
    state: str = "PENDING"
    name: str | None = None
    hostname: str | None = None
    args: Any = None
    kwargs: Any = None
    retries: int = 0
    eta: Any = None
    expires: Any = None
    result: Any = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    succeeded: float | None = None
    failed: float | None = None
    revoked: float | None = None
    timestamp: float | None = None


@dataclass
class WorkerState:
    """One node as its events describe it."""

    hostname: str
    pid: int | None = None
    freq: float = 2.0
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    last_heartbeat: float | None = None
    online: bool = True

    def alive(self, now: float | None = None) -> bool:
        """Online and heard from within a few heartbeat periods."""
        if not self.online or self.last_heartbeat is None:
            return self.online
        now = time.time() if now is None else now
        return now - self.last_heartbeat < HEARTBEAT_MISSES * max(self.freq, 0.1)


class State:
    """Workers and tasks, from events (see the module doc).

    Args:
        max_tasks: Most tasks kept (the least recently seen go first).
        max_workers: Most workers kept.
    """

    def __init__(self, max_tasks: int = MAX_TASKS, max_workers: int = MAX_WORKERS) -> None:
        self.max_tasks = max_tasks
        self.max_workers = max_workers
        self.tasks: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self.workers: collections.OrderedDict[str, WorkerState] = collections.OrderedDict()
        self.event_count = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[float] = collections.deque()

    def event(self, event: dict[str, Any]) -> None:
        """Fold one event in (unknown types are counted, nothing else)."""
        type_ = str(event.get("type", ""))
        stamp = float(event.get("timestamp") or time.time())
        self.event_count += 1
        self.counts[type_] += 1
        self._recent.append(stamp)
        self._forget_before(stamp - RATE_WINDOW)
        if type_.startswith("task-"):
            self._task_event(type_, event, stamp)
        elif type_.startswith("worker-"):
            self._worker_event(type_, event, stamp)
        elif type_ == "node-down":
            worker = self.workers.get(str(event.get("node")))
            if worker is not None:
                worker.online = False

    def _task_event(self, type_: str, event: dict[str, Any], stamp: float) -> None:
        uuid = event.get("uuid")
        if not isinstance(uuid, str):
            return
        task = self.tasks.get(uuid) or TaskState(uuid)
        self.tasks[uuid] = task
        self.tasks.move_to_end(uuid)
        while len(self.tasks) > self.max_tasks:
            self.tasks.popitem(last=False)
        state = TASK_STATES.get(type_)
        if state is not None and not (type_ == "task-sent" and task.state != "PENDING"):
            task.state = state  # a late task-sent never undoes a later state
        for name in TASK_FIELDS:
            if event.get(name) is not None:
                setattr(task, name, event[name])
        if type_ != "task-sent":
            task.hostname = event.get("hostname", task.hostname)
        attr = type_.removeprefix("task-")
        if hasattr(task, attr) and attr not in ("retried", "rejected"):
            setattr(task, attr, stamp)
        task.timestamp = stamp

    def _worker_event(self, type_: str, event: dict[str, Any], stamp: float) -> None:
        hostname = str(event.get("hostname", ""))
        worker = self.workers.get(hostname) or WorkerState(hostname)
        self.workers[hostname] = worker
        while len(self.workers) > self.max_workers:
            self.workers.popitem(last=False)
        worker.pid = event.get("pid", worker.pid)
        worker.freq = float(event.get("freq") or worker.freq)
        worker.online = type_ != "worker-offline"
        if type_ == "worker-heartbeat":
            worker.last_heartbeat = stamp
            worker.active = int(event.get("active") or 0)
            worker.processed = int(event.get("processed") or 0)
            worker.loadavg = list(event.get("loadavg") or [])

    def running(self) -> list[TaskState]:
        """Tasks started and not finished, oldest first."""
        return [t for t in self.tasks.values() if t.state == "STARTED"]

    def rate(self, now: float | None = None, window: float = RATE_WINDOW) -> float:
        """Events per second over the last ``window`` seconds (at most `RATE_WINDOW`:
        older stamps are dropped as events come)."""
        now = time.time() if now is None else now
        self._forget_before(now - window)
        return len(self._recent) / window

    def _forget_before(self, stamp: float) -> None:
        """Drop the event stamps older than ``stamp``: also as events come, so a
        reader that never asks for `rate` (the dashboard) keeps one window's worth,
        not one stamp per event for ever."""
        while self._recent and self._recent[0] < stamp:
            self._recent.popleft()
