"""``self.request``: what a running task knows about itself.

One ``Request`` per running task, set on the task's greenlet, so that
``Task.request`` and ``TaskResult.get`` (which gives the task's worker slot
back while it waits) find it from inside the task's code.
"""

from __future__ import annotations

from typing import Any, Protocol

from greenlet import getcurrent

__all__ = ["Request", "SlotOwner", "current_request"]


class SlotOwner(Protocol):
    """The worker side of a request: what lends and takes back its slot."""

    def pause(self, request: Request) -> None: ...

    def resume(self, request: Request) -> None: ...


class Request:
    """Celery's ``self.request``: id, args, kwargs, retries, root_id, parent_id,
    hostname, eta, delivery_info (and ``is_eager`` for a local call)."""

    def __init__(
        self,
        msg: dict[str, Any],
        hostname: str | None = None,
        owner: SlotOwner | None = None,
        is_eager: bool = False,
    ) -> None:
        self.id: str = msg["id"]
        self.task: str = msg["name"]
        self.args: list[Any] = msg["args"]
        self.kwargs: dict[str, Any] = msg["kwargs"]
        self.retries: int = msg.get("retries", 0)
        self.root_id: str = msg.get("root_id") or msg["id"]
        self.parent_id: str | None = msg.get("parent_id")
        self.eta: float | None = msg.get("eta")
        self.expires: float | None = msg.get("expires")
        self.headers: dict[str, Any] = msg.get("headers") or {}
        self.hostname = hostname
        self.delivery_info = {"routing_key": msg.get("queue"), "redelivered": False}
        self.is_eager = is_eager
        self.msg = msg
        self.owner = owner
        self.has_slot = False  # holds one of its worker's concurrency slots
        self.killable = False  # its own code runs (revoke's terminate may end it)
        self.kill_asked = False  # revoked with terminate
        self.time_start: float | None = None  # when its code started (inspect, events)

    def __repr__(self) -> str:
        return f"<Request {self.task}[{self.id}]>"


def current_request() -> Request | None:
    """The request of the task running in this greenlet, if any."""
    request: Request | None = getattr(getcurrent(), "zcell_task_request", None)
    return request
