"""The task layer's inspect and control operations on a worker's node.

`install` puts them on the node's op registry when a `Worker` starts, and adds
the running tasks to the node's ``active`` answer and the worker's counters to
``stats`` (``zcell/monitor/service.py`` answers the actor-level part). Each
operation is one small function whose docstring is its help text; entries use
Celery's field names (``id``, ``name``, ``args``, ``kwargs``, ``time_start``,
``hostname``, ``delivery_info``...). Operations run in the node's loop thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ZcellError
from .beat import periodic_schedule
from .limits import parse_rate
from .routing import check_queue

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["TASK_OPS", "install"]

#: The operations a worker's node answers besides the actor-level ones.
TASK_OPS = (
    "scheduled", "reserved", "revoked", "registered", "active_queues", "query_task",
    "rate_limit", "time_limit", "pool_grow", "pool_shrink", "add_consumer",
    "cancel_consumer",
)  # fmt: skip

Op = Callable[[dict[str, Any], str], Any]


def install(worker: Worker) -> None:
    """Answer the task operations on the worker's node (see the module doc)."""
    node = worker.node
    for name in TASK_OPS:
        node.control.remove(name)  # a worker started again on the same node
        node.control.add(_bound(globals()["_" + name], worker), name)
    monitor = node.monitor
    monitor.add_part("active", lambda: active(worker))
    monitor.add_part("stats", lambda: stats(worker))


def _bound(op: Callable[[Worker, dict[str, Any]], Any], worker: Worker) -> Op:
    """The registry's ``op(args, src)`` for a function of (worker, args)."""

    def run(args: dict[str, Any], src: str) -> Any:
        return op(worker, args)

    run.__doc__ = op.__doc__
    return run


def request_info(
    worker: Worker, msg: dict[str, Any], started: float | None = None
) -> dict[str, Any]:
    """A task as Celery's inspect lists it."""
    return {
        "id": msg["id"],
        "name": msg["name"],
        "type": msg["name"],
        "args": msg["args"],
        "kwargs": msg["kwargs"],
        "hostname": worker.node.name,
        "time_start": started,
        "acknowledged": started is not None,
        "delivery_info": {"routing_key": msg["queue"], "redelivered": msg["attempt"] > 0},
        "retries": msg["retries"],
        "eta": msg["eta"],
        "worker_pid": os.getpid(),
    }


# -- parts of the actor-level answers ------------------------------------------------


def active(worker: Worker) -> list[dict[str, Any]]:
    """The running tasks, each with its ``runtime`` so far."""
    now = time.time()
    entries = []
    for _, request in list(worker.running.values()):
        entry = request_info(worker, request.msg, request.time_start)
        entry["kind"] = "task"
        entry["runtime"] = None if request.time_start is None else now - request.time_start
        entries.append(entry)
    return entries


def stats(worker: Worker) -> dict[str, Any]:
    """The worker's share of ``stats``: pool, task counters, overrides."""
    return {
        "pool": {
            "max-concurrency": worker.concurrency,
            "prefetch": worker.prefetch,
            "capacity": worker.capacity,
        },
        "tasks": worker.statistics(),
        "total": dict(worker.totals),
        "overrides": worker.overrides,
    }


# -- inspect ---------------------------------------------------------------------------


def _scheduled(worker: Worker, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Tasks held here for their ETA/countdown (eta, priority, request), then, on
    a beat candidate, each periodic entry (eta: its next run; periodic: its name,
    task, schedule, last and next run; leader: whether this node sends them)."""
    held = [
        {"eta": msg["eta"], "priority": 0, "request": request_info(worker, msg)}
        for msg in list(worker.scheduled.values())
    ]
    return held + periodic_schedule(worker.node)


def _reserved(worker: Worker, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Tasks held here that have not started (waiting for a slot or a claim)."""
    return [request_info(worker, msg) for msg in reserved_messages(worker)]


def reserved_messages(worker: Worker) -> list[dict[str, Any]]:
    """Held task messages neither running nor waiting for their ETA."""
    busy = worker.running.keys() | worker.scheduled.keys()
    return [msg for task_id, msg in list(worker.holding.items()) if task_id not in busy]


def _revoked(worker: Worker, args: dict[str, Any]) -> list[str]:
    """The task ids this node remembers as revoked."""
    assert worker.runtime is not None
    return [task_id for task_id, _, _ in worker.runtime.revoked.items()]


def _registered(worker: Worker, args: dict[str, Any]) -> list[str]:
    """The task names this worker can run."""
    return sorted(worker.app.tasks)


def _active_queues(worker: Worker, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The queues this worker consumes (name, routing key, consumer actor)."""
    return [
        {"name": queue, "routing_key": queue, "consumer": worker.consumers[queue].id}
        for queue in worker.queues
        if queue in worker.consumers
    ]


def _query_task(worker: Worker, args: dict[str, Any]) -> dict[str, Any]:
    """What this worker knows of task ids: {id: [state, request]} (Celery's shape)."""
    ids = [str(i) for i in args.get("ids") or []]
    found: dict[str, Any] = {}
    for task_id in ids:
        running = worker.running.get(task_id)
        if running is not None:
            found[task_id] = ["active", request_info(worker, running[1].msg, running[1].time_start)]
        elif task_id in worker.scheduled:
            found[task_id] = ["scheduled", request_info(worker, worker.scheduled[task_id])]
        elif task_id in worker.holding:
            found[task_id] = ["reserved", request_info(worker, worker.holding[task_id])]
    for task_id, record in worker.query([i for i in ids if i not in found]).items():
        found[task_id] = [str(record.get("s", "")).lower() or "done", record]
    return found


# -- control ---------------------------------------------------------------------------


def _rate_limit(worker: Worker, args: dict[str, Any]) -> dict[str, str]:
    """Set a task's rate limit on this worker: {"task": name, "rate": "10/s" or None}."""
    name, rate = str(args.get("task")), args.get("rate")
    if name not in worker.app.tasks:
        return {"error": f"unknown task {name!r}"}
    try:
        parse_rate(rate)
    except ValueError as exc:
        return {"error": str(exc)}
    worker.override(name, rate_limit=rate)
    return {"ok": f"new rate limit set successfully: {name} {rate}"}


def _time_limit(worker: Worker, args: dict[str, Any]) -> dict[str, str]:
    """Set a task's time limits on this worker: {"task": name, "soft": s, "hard": s}."""
    name = str(args.get("task"))
    if name not in worker.app.tasks:
        return {"error": f"unknown task {name!r}"}
    limits = {"soft_time_limit": args.get("soft"), "time_limit": args.get("hard")}
    if any(v is not None and not isinstance(v, int | float) for v in limits.values()):
        return {"error": "time limits are seconds (numbers) or null"}
    worker.override(name, **limits)
    return {"ok": f"time limits set successfully: {name} soft={limits['soft_time_limit']} "
            f"hard={limits['time_limit']}"}  # fmt: skip


def _pool_grow(worker: Worker, args: dict[str, Any]) -> dict[str, str]:
    """Run ``n`` more tasks at once here: {"n": 1}."""
    return {"ok": f"pool will grow: concurrency {worker.resize(_count(args))}"}


def _pool_shrink(worker: Worker, args: dict[str, Any]) -> dict[str, str]:
    """Run ``n`` fewer tasks at once here (at least one): {"n": 1}."""
    return {"ok": f"pool will shrink: concurrency {worker.resize(-_count(args))}"}


def _add_consumer(worker: Worker, args: dict[str, Any]) -> dict[str, str]:
    """Consume one more queue here: {"queue": name}."""
    queue = _queue(args)
    if queue in worker.queues:
        return {"ok": f"already consuming from {queue!r}"}
    worker.add_consumer(queue)
    return {"ok": f"add consumer {queue}"}


def _cancel_consumer(worker: Worker, args: dict[str, Any]) -> dict[str, str]:
    """Stop consuming a queue here (tasks already held still run): {"queue": name}."""
    queue = _queue(args)
    if not worker.cancel_consumer(queue):
        return {"error": f"not consuming from {queue!r}"}
    return {"ok": f"no longer consuming from {queue}"}


def _count(args: dict[str, Any]) -> int:
    n = args.get("n", 1)
    if not isinstance(n, int) or n < 0:
        raise ZcellError(f"n must be a whole number of slots, not {n!r}")
    return n


def _queue(args: dict[str, Any]) -> str:
    try:
        return check_queue(str(args.get("queue", "")))
    except (TypeError, ValueError) as exc:
        raise ZcellError(f"bad queue name: {exc}") from exc
