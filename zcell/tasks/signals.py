"""Celery's task and worker signals, on blinker.

Connect receivers as in Celery::

    from zcell.tasks.signals import task_success

    @task_success.connect
    def on_success(sender=None, result=None, **kwargs):
        ...

    task_failure.connect(on_failure, sender=add)  # only for that task
    @after_task_publish.connect(sender="proj.tasks.add")  # publish signals: the name
    def on_sent(sender=None, headers=None, **kwargs):
        ...

The worker sends them with :func:`send_safely`, which calls every receiver with
keyword arguments (``signal``, ``sender`` and the ones each signal documents, as
Celery does) and logs and swallows a receiver's exception: a bad receiver never
breaks a task or the worker. Receivers are held weakly unless connected with
``weak=False``, as in Celery. The signals live in their own blinker
:class:`Namespace` (:data:`signals`), not in blinker's process-wide registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

import blinker

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class Signal(blinker.NamedSignal):
    """A blinker signal whose ``connect`` is also Celery's decorator with arguments.

    ``@sig.connect``, ``sig.connect(fn, sender=...)`` and
    ``@sig.connect(sender=...)`` all work.
    """

    @overload
    def connect(self, receiver: F, sender: Any = blinker.ANY, weak: bool = True) -> F: ...

    @overload
    def connect(
        self, receiver: None = None, sender: Any = blinker.ANY, weak: bool = True
    ) -> Callable[[F], F]: ...

    def connect(
        self, receiver: F | None = None, sender: Any = blinker.ANY, weak: bool = True
    ) -> F | Callable[[F], F]:
        """Connect ``receiver`` for ``sender`` (any sender by default); bare, a decorator."""
        if receiver is not None:
            return super().connect(receiver, sender, weak)

        def decorate(fn: F) -> F:
            return super(Signal, self).connect(fn, sender, weak)

        return decorate


class Namespace(blinker.Namespace):
    """zcell's own signal namespace, making :class:`Signal` (Celery's connect)."""

    def signal(self, name: str, doc: str | None = None) -> Signal:
        """The signal named ``name`` in this namespace, made on first use."""
        if name not in self:
            self[name] = Signal(name, doc)
        return cast(Signal, self[name])


#: Every task-layer signal, by its Celery name.
signals = Namespace()

before_task_publish = signals.signal(
    "before_task_publish",
    """Sent before a task message leaves the submitter.

    sender: the task's name. Arguments: body, exchange, routing_key, headers,
    properties, declare, retry_policy (zcell: exchange is "" and routing_key the
    queue; declare and retry_policy are empty: there is no broker).
    """,
)
after_task_publish = signals.signal(
    "after_task_publish",
    """Sent once a task message was handed to a worker (or queued at the submitter).

    sender: the task's name. Arguments: body, exchange, routing_key, headers.
    """,
)
task_prerun = signals.signal(
    "task_prerun",
    """Sent before a task runs, in the greenlet that will run it.

    sender: the task. Arguments: task_id, task, args, kwargs.
    """,
)
task_postrun = signals.signal(
    "task_postrun",
    """Sent after a task ran, whatever its outcome.

    sender: the task. Arguments: task_id, task, args, kwargs, retval (the return
    value or the exception), state (SUCCESS, FAILURE, RETRY...).
    """,
)
task_success = signals.signal(
    "task_success",
    """Sent when a task succeeded.

    sender: the task. Arguments: result (its return value).
    """,
)
task_failure = signals.signal(
    "task_failure",
    """Sent when a task failed.

    sender: the task. Arguments: task_id, exception, args, kwargs, traceback,
    einfo (the formatted traceback).
    """,
)
task_retry = signals.signal(
    "task_retry",
    """Sent when a task will be retried.

    sender: the task. Arguments: request (the task's request), reason (the
    exception that caused the retry), einfo.
    """,
)
task_revoked = signals.signal(
    "task_revoked",
    """Sent when a task is revoked or expires, started or not.

    sender: the task. Arguments: request, terminated (True if it was killed while
    running), signum (None on zcell: greenlets get no signals), expired (True if it
    passed its ``expires``).
    """,
)
worker_ready = signals.signal(
    "worker_ready",
    """Sent when a worker is ready to take tasks.

    sender: the worker.
    """,
)
worker_shutdown = signals.signal(
    "worker_shutdown",
    """Sent when a worker is about to stop.

    sender: the worker.
    """,
)


def send_safely(signal: blinker.Signal, sender: Any, **kwargs: Any) -> list[tuple[Any, Any]]:
    """Call every receiver of ``signal`` for ``sender``; log and swallow their errors.

    Receivers are called Celery's way, with keywords only:
    ``receiver(signal=signal, sender=sender, **kwargs)``. A receiver that raises
    is logged with its traceback and the others still run, so a bad receiver
    never breaks a task or the worker (Celery does the same).

    Returns:
        ``(receiver, its return value or the exception it raised)`` for each.
    """
    responses: list[tuple[Any, Any]] = []
    if not signal.receivers:  # the common case, several times a task: nobody listens
        return responses
    for receiver in signal.receivers_for(sender):
        try:
            responses.append((receiver, receiver(signal=signal, sender=sender, **kwargs)))
        except Exception as exc:
            logger.exception(
                "receiver %r of signal %s raised %r; ignored, the task and the worker go "
                "on: fix the receiver",
                receiver,
                getattr(signal, "name", signal),
                exc,
            )
            responses.append((receiver, exc))
    return responses
