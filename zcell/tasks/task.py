"""``Task``: a function the app's workers run by name (``@app.task``).

Kept light: calling sends a message through the app (``app.py``); running it
happens in the worker (``worker.py``). The options given to ``@app.task`` are
checked here, where the task is declared, so a typo fails at import.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .canvas import Signature, chunks, xmap, xstarmap
from .errors import Retry
from .limits import parse_rate
from .request import Request, current_request
from .retry import backoff_factor, exhausted, retry_countdown, should_retry

if TYPE_CHECKING:
    from .app import App
    from .result import TaskResult

__all__ = ["OPTIONS", "Task"]

#: The options ``@app.task(...)`` takes, with their defaults (None: the app's setting).
OPTIONS: dict[str, Any] = {
    "name": None,
    "bind": False,
    "queue": None,
    "max_retries": 3,
    "default_retry_delay": 180.0,
    "autoretry_for": (),
    "retry_backoff": False,
    "retry_backoff_max": 600.0,
    "retry_jitter": True,
    "retry_kwargs": None,
    "rate_limit": None,
    "time_limit": None,
    "soft_time_limit": None,
    "acks_late": None,
    "ignore_result": None,
    "track_started": None,
    "max_redeliveries": None,
}


class Task:
    """A task: ``task(*a)`` runs it here; ``delay``/``apply_async`` send it.

    Attributes:
        name: ``"<module>.<function>"`` unless ``name=`` was given.
        run: The function itself.
        app: The app it belongs to.
    """

    def __init__(self, app: App, fn: Callable[..., Any], **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown task option(s) {', '.join(unknown)} for {fn.__qualname__}; "
                f"the options are {', '.join(sorted(OPTIONS))}"
            )
        opts = dict(OPTIONS, **options)
        self.app = app
        self.run = fn
        self.name: str = opts.pop("name") or f"{fn.__module__}.{fn.__name__}"
        self.bind: bool = bool(opts.pop("bind"))
        self.queue: str | None = opts["queue"]
        self.max_retries: int | None = opts["max_retries"]
        self.default_retry_delay: float = opts["default_retry_delay"]
        self.autoretry_for: tuple[type[BaseException], ...] = tuple(opts["autoretry_for"])
        self.retry_backoff: bool | float = opts["retry_backoff"]
        self.retry_backoff_max: float = opts["retry_backoff_max"]
        self.retry_jitter: bool = opts["retry_jitter"]
        self.retry_kwargs: dict[str, Any] = dict(opts["retry_kwargs"] or {})
        self.rate_limit: str | None = opts["rate_limit"]
        self.time_limit: float | None = opts["time_limit"]
        self.soft_time_limit: float | None = opts["soft_time_limit"]
        self.acks_late: bool | None = opts["acks_late"]
        self.ignore_result: bool | None = opts["ignore_result"]
        self.track_started: bool | None = opts["track_started"]
        self.max_redeliveries: int | None = opts["max_redeliveries"]
        # Checked here, where the task is declared: a typo fails at import.
        backoff_factor(self.retry_backoff)
        parse_rate(self.rate_limit)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, now, like the plain function (no message)."""
        if self.bind:
            return self.run(self, *args, **kwargs)
        return self.run(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> TaskResult:
        """Send the task with these arguments; returns its ``TaskResult`` at once."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> TaskResult:
        """Send the task (options: task_id, countdown, eta, expires, queue, link,
        link_error, ignore_result, time_limit, soft_time_limit, headers).

        Raises:
            SerializationError: an argument cannot travel (msgpack types and proxies).
            TaskPendingFull: ``task_pending_max`` tasks wait here already.
        """
        return self.app.send_task(self.name, args, kwargs, _task=self, **options)

    # -- the canvas (docs/canvas.md) --------------------------------------------

    def signature(
        self, args: Any = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A signature of this task: ``add.signature((2, 2), countdown=10)``."""
        return Signature(self, args, kwargs, options)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """``add.s(2, 2)``: a signature with star arguments (a partial if incomplete)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it ignores the previous result."""
        return self.signature(args, kwargs).set(immutable=True)

    def map(self, it: Any) -> xmap:
        """One task that runs this task on each item of ``it``."""
        return xmap(self.s(), it)

    def starmap(self, it: Any) -> xstarmap:
        """One task that runs this task with each argument tuple of ``it``."""
        return xstarmap(self.s(), it)

    def chunks(self, it: Any, n: int) -> chunks:
        """The argument tuples of ``it`` split into tasks of ``n`` calls each."""
        return chunks(self.s(), it, n)

    @property
    def request(self) -> Request:
        """The running task's request (``bind=True`` tasks: ``self.request``)."""
        request = current_request()
        if request is None or request.task != self.name:
            return Request({"id": "", "name": self.name, "args": [], "kwargs": {}}, is_eager=True)
        return request

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Run the task again later: raises ``Retry`` (``raise self.retry(...)``).

        The next attempt waits ``countdown`` seconds (or until ``eta``; else the
        task's ``default_retry_delay``). Beyond ``max_retries`` (the task's unless
        given) it raises ``exc``, or ``MaxRetriesExceededError`` without one.
        ``args``, ``kwargs`` and other options are accepted for Celery code and
        ignored: the next attempt runs with the same arguments.
        """
        return self._retry(exc, countdown, eta, max_retries, autoretry=False)

    def autoretry(self, exc: BaseException) -> Retry:
        """``autoretry_for`` caught ``exc``: retry with ``retry_kwargs`` and backoff
        (raises ``Retry``, or ``exc`` once ``max_retries`` is used up)."""
        kw = self.retry_kwargs
        return self._retry(
            exc, kw.get("countdown"), kw.get("eta"), kw.get("max_retries"), autoretry=True
        )

    def _retry(
        self,
        exc: BaseException | None,
        countdown: float | None,
        eta: datetime | float | None,
        max_retries: int | None,
        *,
        autoretry: bool,
    ) -> Retry:
        request = self.request
        limit = self.max_retries if max_retries is None else max_retries
        if not should_retry(limit, request.retries):
            raise exhausted(exc, self.name, request.id, request.args, request.kwargs)
        when: float | datetime = (
            eta
            if eta is not None
            else retry_countdown(
                self.retry_options, request.retries, countdown, autoretry=autoretry
            )
        )
        raise Retry(exc=exc, when=when)

    @property
    def retry_options(self) -> dict[str, Any]:
        """The options ``retry.retry_countdown`` reads, from this task's."""
        return {
            "default_retry_delay": self.default_retry_delay,
            "retry_backoff": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
            "retry_jitter": self.retry_jitter,
        }

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None
    ) -> None:
        """Report a custom state (and meta) of the running task to its submitter."""
        request = self.request
        if request.is_eager or state is None:
            return
        reply_to = request.msg.get("reply_to")
        if reply_to is not None:
            reply_to.send(
                "update_state",
                {"id": task_id or request.id, "state": state, "meta": meta},
                nowait=True,
            )

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"
