"""The errors of the task layer, with Celery's names.

Each is a :class:`~zcell.errors.ZcellError`, and also the built-in type its meaning
matches, so Celery code's ``except`` clauses keep working. A task's own exception
is not wrapped: ``TaskResult.get()`` re-raises it mirrored (see ``zcell.errors``).
The classes marked ``@mirrored`` keep their class when they come back from a
worker: ``except TimeLimitExceeded:`` around ``get()`` works, as in Celery.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import CallTimeout, NodeDown, ZcellError, mirrored

__all__ = [
    "TaskError",
    "NotRegistered",
    "UnknownSetting",
    "SettingLocked",
    "TaskPendingFull",
    "WorkerLostError",
    "TaskRevokedError",
    "TaskTimeout",
    "Retry",
    "MaxRetriesExceededError",
    "SoftTimeLimitExceeded",
    "TimeLimitExceeded",
    "NoBrokerNeeded",
    "ChordError",
]


class TaskError(ZcellError):
    """Root of the task layer's own errors."""


@mirrored
class NotRegistered(TaskError, KeyError):
    """No task of this name is registered where it was asked for.

    Raised by ``app.tasks[name]`` and as the failure of a task whose worker does
    not know its name. Check the name (``"<module>.<function>"`` unless the task
    sets ``name=``) and that the worker was started with ``-A`` on the app that
    includes the task's module.
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class UnknownSetting(TaskError, AttributeError, KeyError):
    """``app.conf`` has no setting of this name (the message names the closest one).

    zcell refuses unknown names so that a typo does not pass silently.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SettingLocked(TaskError):
    """A mesh setting (``cluster``, ``peers``, ``discovery``, ``host``, ``secret``)
    was changed while the app's node runs: call ``app.close()`` first; the next use
    starts a node with the new settings."""


class TaskPendingFull(TaskError):
    """More than ``task_pending_max`` tasks wait at this submitter for a worker.

    ``apply_async`` waited (bounded) for room and gave up. Start more workers for
    the queue, raise ``task_pending_max``, or submit more slowly.
    """


@mirrored
class WorkerLostError(TaskError, NodeDown):
    """The worker running this task died (or left) while it ran.

    By default a task that had started is not run again (at most once). Give the
    task ``acks_late=True`` to have it re-dispatched to another worker instead
    (at least once, up to ``max_redeliveries``).
    """


@mirrored
class TaskRevokedError(TaskError):
    """The task was revoked (or it expired) before it finished: it never started,
    or it was terminated. Its state is ``REVOKED``."""


class TaskTimeout(TaskError, CallTimeout):
    """``TaskResult.get(timeout=...)`` ran out of time before the outcome arrived.

    The task may still run and finish; call ``get()`` again to keep waiting.
    """


class Retry(TaskError):
    """Raised by ``self.retry(...)`` inside a task: the task will run again.

    Re-raise it (``raise self.retry(...)``); do not catch it in the task.

    Attributes:
        exc: The exception that caused the retry, if any.
        when: Seconds (countdown) or the ``datetime`` of the next attempt.
    """

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        super().__init__(message or (f"Retry in {when}" if when is not None else "Retry"))


@mirrored
class MaxRetriesExceededError(TaskError):
    """The task asked to retry more than ``max_retries`` times (and gave no
    exception of its own to fail with)."""

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None) -> None:
        super().__init__(*args)
        self.task_args = task_args
        self.task_kwargs = task_kwargs


@mirrored
class SoftTimeLimitExceeded(TaskError):
    """Raised inside a task at its ``soft_time_limit``: catch it to clean up.

    Code that never yields to gevent (a tight CPU loop) cannot be interrupted in
    a greenlet; run such tasks on a worker with ``--processes``.
    """


@mirrored
class TimeLimitExceeded(TaskError):
    """The task ran past its ``time_limit`` and was killed; it failed with this."""


class NoBrokerNeeded(UserWarning):
    """Warned (once per app) for ``broker=``/``backend=``: zcell needs neither,
    so they are ignored. Remove the argument to silence it."""


class ChordError(TaskError):
    """A chord's header member failed (or was revoked, or lost with its worker),
    so the body does not run; the message names the member. Also raised when the
    chord's coordinator (a worker) was lost before the chord completed.

    The body's ``link_error`` is sent with the body's task id. Fix the failing
    member (its own result says why) and apply the chord again.
    """
