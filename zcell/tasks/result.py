"""``TaskResult``: a task's state and outcome, wherever it is asked from.

The submitter holds the task's ``Entry`` (``dispatch.py``): the outcome comes
back to it as the reply of the dispatch call, so ``get()`` there needs no
backend. Any other program (``app.AsyncResult(id)``) asks the task agents of
the mesh (a scatter): the node that ran the task keeps its record for
``result_expires``; an id nobody knows is ``PENDING``, as in Celery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._transport.loop import Flag
from ..errors import error_from_wire
from .errors import TaskRevokedError, TaskTimeout
from .request import current_request
from .routing import queue_actor_name
from .states import FAILURE, PENDING, READY_STATES, REVOKED, SUCCESS

if TYPE_CHECKING:
    from .app import App
    from .dispatch import Entry

__all__ = ["TaskResult"]

#: Longest single sleep of a waiting program thread (so that Ctrl-C interrupts).
WAIT_SLICE = 1.0
#: Seconds a lookup waits for the mesh's task agents to answer.
LOOKUP_TIMEOUT = 1.0
#: Seconds between lookups while waiting for a task this program did not send.
POLL_INTERVAL = 0.1


class TaskResult:
    """The state and outcome of a task (Celery's ``AsyncResult``).

    Attributes:
        id: The task id.
        parent: The result of the task that sent this one, when known.
    """

    def __init__(
        self, task_id: str, app: App, entry: Entry | None = None, parent: TaskResult | None = None
    ) -> None:
        self.id = task_id
        self.app = app
        self.parent = parent
        self._entry = entry
        self._record: dict[str, Any] | None = None  # a remote lookup's final record

    # -- where the state comes from -------------------------------------------

    def _look(self) -> dict[str, Any] | None:
        """A remote record (final ones are cached)."""
        if self._record is None:
            record = self.app._lookup(self.id)
            if record is not None and record.get("s") in READY_STATES:
                self._record = record
            return record
        return self._record

    @property
    def state(self) -> str:
        """PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED or a custom state."""
        if self._entry is not None:
            return self._entry.state
        record = self._look()
        state = record.get("s") if record else None
        return state if isinstance(state, str) else PENDING

    status = state

    @property
    def result(self) -> Any:
        """The value once it succeeded; the exception once it failed (else the meta
        of its last ``update_state``, or None)."""
        if self._entry is not None:
            return self._entry.result
        record = self._look()
        if not record:
            return None
        if record.get("s") == FAILURE:
            return error_from_wire(record.get("e"))
        if record.get("s") == REVOKED:
            return TaskRevokedError(f"task {self.id} was revoked")
        return record.get("v")

    info = result

    def _field(self, name: str, key: str) -> Any:
        if self._entry is not None:
            return getattr(self._entry, name)
        record = self._look()
        return record.get(key) if record else None

    @property
    def traceback(self) -> str | None:
        """The task's traceback (as text) when it failed."""
        tb = self._field("traceback", "tb")
        return tb if isinstance(tb, str) else None

    @property
    def date_done(self) -> datetime | None:
        """When the outcome came in (UTC), or None."""
        done = self._field("date_done", "done")
        return datetime.fromtimestamp(done, UTC) if isinstance(done, float) else None

    @property
    def name(self) -> str | None:
        """The task's name, when known."""
        name = self._field("name", "name")
        return name if isinstance(name, str) else None

    @property
    def worker(self) -> str | None:
        """The name of the node that ran it, when known."""
        worker = self._field("worker", "worker")
        return worker if isinstance(worker, str) else None

    @property
    def retries(self) -> int:
        """How many times it was retried."""
        retries = self._field("retries", "retries")
        return retries if isinstance(retries, int) else 0

    def ready(self) -> bool:
        """True once the outcome is in (SUCCESS, FAILURE or REVOKED)."""
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    # -- waiting --------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True, **_: Any) -> Any:
        """Wait for the outcome and return the value.

        Inside a task it gives the task's worker slot back while it waits, so
        that tasks waiting on other tasks cannot deadlock the workers.

        Args:
            timeout: Seconds to wait; None waits until the outcome arrives
                (interruptible with Ctrl-C).
            propagate: Raise the task's exception (mirrored: ``except
                TypeError:`` works) rather than return it.

        Raises:
            TaskTimeout: No outcome within ``timeout`` (the task goes on).
            TaskRevokedError: The task was revoked or expired.
        """
        request = current_request()
        if (
            request is None
            or request.owner is None
            or (self._entry is not None and self._entry.ready)
        ):
            ready = self._wait(timeout)  # no slot to lend, or nothing to wait for
        else:
            request.owner.pause(request)
            try:
                ready = self._wait(timeout)
            finally:
                request.owner.resume(request)
        if not ready:
            raise TaskTimeout(
                f"task {self.id} has no outcome within {timeout}s (state {self.state}); "
                f"{self._why_waiting()}get() again, or give a larger timeout="
            )
        result = self.result
        if self.state in (FAILURE, REVOKED) and isinstance(result, BaseException):
            if propagate:
                raise result
        return result

    wait = get

    def _why_waiting(self) -> str:
        """A hint for a timeout: a task that waits for a consumer nobody runs."""
        entry = self._entry
        if entry is None or entry.state != PENDING:
            return "it may still run: "
        if not entry.queue:  # a work-flow's step, sent by the node of the step before
            return "it is a step of a work-flow that another node sends when its turn comes: "
        node = self.app.node
        if node.directory.of_type(queue_actor_name(entry.queue)):
            return "it waits for a worker of its queue to have room: "
        return (
            f"no worker in the mesh consumes its queue {entry.queue!r} (start one with "
            f"`zcell worker -A <app> -Q {entry.queue}`); it waits for one: "
        )

    def _wait(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return self.ready()
            if self._entry is not None:
                step = WAIT_SLICE if remaining is None else min(WAIT_SLICE, remaining)
                if self._entry.done.wait(step):
                    return True
            elif self.ready():
                return True
            else:
                step = POLL_INTERVAL if remaining is None else min(POLL_INTERVAL, remaining)
                Flag().wait(step)

    def then(self, callback: Callable[[TaskResult], Any]) -> None:
        """Call ``callback(self)`` once the outcome is in (in the node's loop;
        at once when it already is)."""
        entry = self._entry
        if entry is None:
            raise TypeError("then() needs the result the submitter got from apply_async")

        def add() -> bool:
            if entry.ready:
                return False
            entry.callbacks.append(lambda _: callback(self))
            return True

        if not self.app.node.call_in_loop(add):
            callback(self)

    # -- acting ---------------------------------------------------------------

    def revoke(self, terminate: bool = False) -> None:
        """Revoke the task everywhere (see ``app.control.revoke``)."""
        self.app.control.revoke(self.id, terminate=terminate)

    def forget(self) -> None:
        """Forget the outcome here (the worker's record expires on its own)."""
        self._record = None
        if self._entry is not None and self._entry.ready:
            self._entry = None

    def __repr__(self) -> str:
        return f"<TaskResult: {self.id} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)
