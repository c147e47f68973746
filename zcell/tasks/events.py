"""The task layer's events, with Celery's names and fields (docs/monitoring.md).

One function per event; the worker's hook points and the dispatcher call them.
Each first asks the node's publisher whether anyone would receive the event,
so nothing is built (no ``repr`` of arguments) while nobody subscribes.
Arguments travel as bounded ``repr`` strings, as in Celery.
"""

from __future__ import annotations

import os
import reprlib
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..monitor.events import EventPublisher
    from ..node import Node
    from .request import Request
    from .worker import Worker

__all__ = [
    "failed", "heartbeat_fields", "received", "rejected", "retried", "revoked", "sent",
    "started", "succeeded", "worker_offline", "worker_online",
]  # fmt: skip

#: Bounded reprs of arguments and results (as Celery's ``saferepr``).
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 256
_repr.maxlist = _repr.maxdict = 32


def _publisher(node: Node, type_: str) -> EventPublisher | None:
    """The node's publisher when an event of ``type_`` would go anywhere now."""
    events = node.monitor.events
    return events if events.wants(type_) else None


def _message_fields(msg: dict[str, Any]) -> dict[str, Any]:
    return {
        "uuid": msg["id"],
        "name": msg["name"],
        "args": _repr.repr(msg["args"]),
        "kwargs": _repr.repr(msg["kwargs"]),
        "retries": msg["retries"],
        "eta": msg["eta"],
        "expires": msg["expires"],
        "root_id": msg["root_id"],
        "parent_id": msg["parent_id"],
    }


def sent(node: Node, msg: dict[str, Any]) -> None:
    """``task-sent``: the submitter took the task (``task_send_sent_event``)."""
    events = _publisher(node, "task-sent")
    if events is not None:
        queue = msg["queue"]
        events.publish(
            "task-sent", queue=queue, exchange="", routing_key=queue, **_message_fields(msg)
        )


def received(node: Node, msg: dict[str, Any]) -> None:
    """``task-received``: a worker holds the task."""
    events = _publisher(node, "task-received")
    if events is not None:
        events.publish("task-received", **_message_fields(msg))


def started(node: Node, request: Request) -> None:
    """``task-started``: its code is about to run."""
    events = _publisher(node, "task-started")
    if events is not None:
        events.publish("task-started", uuid=request.id)


def succeeded(node: Node, request: Request, value: Any) -> None:
    """``task-succeeded`` with ``result`` (a repr) and ``runtime`` (seconds)."""
    events = _publisher(node, "task-succeeded")
    if events is not None:
        events.publish(
            "task-succeeded", uuid=request.id, result=_repr.repr(value), runtime=_runtime(request)
        )


def failed(node: Node, request: Request, exc: BaseException, traceback: str | None) -> None:
    """``task-failed`` with ``exception`` (a repr) and ``traceback``."""
    events = _publisher(node, "task-failed")
    if events is not None:
        events.publish(
            "task-failed", uuid=request.id, exception=repr(exc), traceback=traceback,
            runtime=_runtime(request),
        )  # fmt: skip


def retried(node: Node, request: Request, exc: BaseException, traceback: str | None) -> None:
    """``task-retried`` with ``exception`` and ``traceback``."""
    events = _publisher(node, "task-retried")
    if events is not None:
        events.publish("task-retried", uuid=request.id, exception=repr(exc), traceback=traceback)


def revoked(node: Node, task_id: str, terminated: bool, expired: bool = False) -> None:
    """``task-revoked`` with ``terminated``, ``signum`` and ``expired``."""
    events = _publisher(node, "task-revoked")
    if events is not None:
        events.publish(
            "task-revoked", uuid=task_id, terminated=terminated, signum=None, expired=expired
        )


def rejected(node: Node, task_id: str | None, reason: str) -> None:
    """``task-rejected``: a task message this worker cannot take (malformed)."""
    events = _publisher(node, "task-rejected")
    if events is not None:
        events.publish("task-rejected", uuid=task_id, requeue=False, reason=reason)


def worker_online(worker: Worker) -> None:
    """``worker-online``: the worker took its queues."""
    events = _publisher(worker.node, "worker-online")
    if events is not None:
        events.publish("worker-online", **_worker_fields())


def worker_offline(worker: Worker) -> None:
    """``worker-offline``: the worker stops."""
    events = _publisher(worker.node, "worker-offline")
    if events is not None:
        events.publish("worker-offline", **_worker_fields())
        events.flush()  # now: the node stops next, and then sends nothing


def heartbeat_fields(worker: Worker) -> dict[str, Any]:
    """``worker-heartbeat``'s ``active``, ``processed`` and ``loadavg`` for a worker."""
    return {
        "active": len(worker.running),
        "processed": sum(worker.counts.values()),
        "loadavg": list(os.getloadavg()),
        **_worker_fields(),
    }


def _worker_fields() -> dict[str, Any]:
    return {"sw_ident": "zcell", "sw_ver": _version(), "sw_sys": os.uname().sysname}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zcell")
    except PackageNotFoundError:  # pragma: no cover - a source tree
        return "unknown"


def _runtime(request: Request) -> float | None:
    started_at = request.time_start
    return None if started_at is None else max(0.0, time.time() - started_at)
