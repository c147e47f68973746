"""Rate limits and time limits of tasks, as Celery has them.

``rate_limit="10/s" | "100/m" | "1000/h"`` is a token bucket per task per worker
node (:class:`RateLimiter`, Celery's ``rate()`` and kombu's ``TokenBucket``);
``soft_time_limit`` and ``time_limit`` are gevent timers on the greenlet that runs
the task (:class:`TimeLimits`). The worker plugs both in around its runner.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import gevent
import gevent.event
from greenlet import greenlet as RawGreenlet

from .errors import SoftTimeLimitExceeded, TimeLimitExceeded

#: Seconds per unit of a rate string ("10/m" is 10 per 60 s).
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE_FORMS = '"10/s", "100/m", "1000/h", a number (per second), or None/""/0 for no limit'
#: Seconds a task gets, after the TimeLimitExceeded thrown into it at its hard
#: limit, to end before it is killed with GreenletExit.
KILL_GRACE = 0.1


def parse_rate(value: str | float | None) -> float | None:
    """Tasks per second that a ``rate_limit`` allows, or None for no limit.

    Accepts Celery's forms: ``"10/s"``, ``"100/m"``, ``"1000/h"``, a bare number
    (``5``, ``"5"``, ``0.5``: per second); ``None``, ``""`` and 0 mean no limit.

    Raises:
        ValueError: For anything else, naming the accepted forms.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"rate limit {value!r} is not a rate: use {RATE_FORMS}")
    if isinstance(value, int | float):
        count, per = float(value), 1.0
    elif isinstance(value, str):
        count_text, _, unit = value.strip().partition("/")
        per = RATE_UNITS.get(unit.strip() or "s", 0.0)
        try:
            count = float(count_text)
        except ValueError:
            per = 0.0
    else:
        raise ValueError(f"rate limit {value!r} is not a rate: use {RATE_FORMS}")
    if not per or count != count or count < 0 or count == float("inf"):
        raise ValueError(f"rate limit {value!r} is not a rate: use {RATE_FORMS}")
    return count / per or None


class RateLimiter:
    """A token bucket: at most ``rate_per_s`` acquisitions a second, on average.

    Celery's rate limits are per task per worker node, and so is this: the worker
    keeps one per rate-limited task. The bucket starts full and holds
    ``capacity`` tokens (1 when None, as Celery's worker has it), so a burst of at
    most ``capacity`` goes through at once and the rest are spaced ``1/rate``
    apart. Waiting is cooperative (gevent), so other greenlets run meanwhile;
    use a limiter from one gevent hub's thread (the worker's loop), as it takes
    no lock.
    """

    def __init__(self, rate_per_s: float | None, capacity: float | None = None) -> None:
        self.capacity = 1.0 if capacity is None else float(capacity)
        if self.capacity < 1.0:
            raise ValueError(f"capacity must be at least 1 token, not {capacity!r}")
        self.rate: float | None = None
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._changed = gevent.event.Event()
        self.set_rate(rate_per_s)

    def set_rate(self, rate: str | float | None) -> None:
        """Change the rate at run time (``control.rate_limit``); waiters see it at once.

        Takes whatever :func:`parse_rate` takes; None or 0 lifts the limit.
        """
        self._refill()
        self.rate = parse_rate(rate)
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

    def delay(self) -> float:
        """Seconds the next :meth:`acquire` would wait now (0 if a token is there)."""
        self._refill()
        if self.rate is None or self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a token, waiting cooperatively until one is there.

        Args:
            timeout: The most seconds to wait; None waits as long as the rate asks.

        Returns:
            True with a token taken; False if none came within ``timeout`` (nothing
            is taken then: try again later, or run the task later).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self.delay()
            if wait <= 0.0:
                if self.rate is not None:
                    self._tokens -= 1.0
                return True
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0.0:
                    return False
                wait = min(wait, left)
            self._changed.wait(wait)  # woken early by set_rate

    def _refill(self) -> None:
        """Add the tokens earned since the last look, up to the capacity."""
        now = time.monotonic()
        if self.rate is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        else:
            self._tokens = self.capacity
        self._stamp = now


class TimeLimits:
    """A task's soft and hard time limits, as gevent timers on the greenlet running it.

    At ``soft`` seconds :class:`SoftTimeLimitExceeded` is raised inside the task,
    which may catch it to clean up. At ``hard`` seconds :class:`TimeLimitExceeded`
    is thrown into it; if it is still running ``grace`` seconds later (it caught
    that too), it is killed with ``GreenletExit``, again every ``grace`` seconds
    until it ends. Either way the task ends with :class:`TimeLimitExceeded`:
    leaving the ``with`` block (or :meth:`check`) raises it once the hard limit
    has passed, even if the task swallowed every exception and returned.

    Use it around running a task, in the greenlet that runs it::

        with TimeLimits(soft=20, hard=30):
            result = task(*args, **kwargs)

    or arm it on another greenlet of the same thread with ``greenlet=`` and
    :meth:`start`, then :meth:`cancel` and :meth:`check` once that greenlet ended.
    The timers run on the hub of the thread that calls :meth:`start`.

    Code that never yields to gevent (a tight CPU loop, a C call that holds the
    GIL) cannot be interrupted in a greenlet: no timer runs until it yields. Run
    such tasks on a worker with ``--processes``.
    """

    def __init__(
        self,
        soft: float | None,
        hard: float | None,
        *,
        greenlet: RawGreenlet | None = None,
        grace: float = KILL_GRACE,
    ) -> None:
        self.soft = soft or None
        self.hard = hard or None
        if self.soft is not None and self.hard is not None and self.soft >= self.hard:
            self.soft = None  # the hard limit comes first: a soft one would never be seen
        self.grace = grace
        self.soft_expired = False
        self.hard_expired = False
        self._target = greenlet
        self._timers: list[Any] = []
        self._armed = False

    def start(self) -> TimeLimits:
        """Arm the timers, on the given greenlet or else the current one."""
        if self._target is None:
            self._target = gevent.getcurrent()
        self._armed = True
        if self.soft is not None:
            self._arm(self.soft, self._on_soft)
        if self.hard is not None:
            self._arm(self.hard, self._on_hard)
        return self

    def cancel(self) -> None:
        """Stop every timer: nothing more is thrown into the task."""
        self._armed = False
        for timer in self._timers:
            timer.close()
        self._timers.clear()

    def check(self) -> None:
        """Raise :class:`TimeLimitExceeded` if the hard limit has passed."""
        if self.hard_expired:
            raise TimeLimitExceeded(
                f"the task ran past its time_limit of {self.hard} s and was killed; "
                "raise time_limit, or make the task yield (gevent) so it can stop sooner"
            )

    def __enter__(self) -> TimeLimits:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
        if self.hard_expired and not isinstance(exc, TimeLimitExceeded):
            try:
                self.check()
            except TimeLimitExceeded as limit:
                raise limit from exc

    def _arm(self, seconds: float, callback: Any) -> None:
        if not self._armed:
            return
        self._timers = [timer for timer in self._timers if timer.active]
        timer = gevent.get_hub().loop.timer(seconds)
        timer.start(callback)
        self._timers.append(timer)

    def _on_soft(self) -> None:
        self.soft_expired = True
        self._throw(
            SoftTimeLimitExceeded(
                f"soft_time_limit of {self.soft} s exceeded: clean up and return or raise"
            )
        )

    def _on_hard(self) -> None:
        self.hard_expired = True
        # Armed before the throw: throwing switches into the task, which may
        # leave its `with` block (and cancel) before this callback resumes.
        self._arm(self.grace, self._on_grace)
        self._throw(TimeLimitExceeded(f"time_limit of {self.hard} s exceeded"))

    def _on_grace(self) -> None:
        """The task outlived its grace after the hard limit: kill it, and again later."""
        self._arm(self.grace, self._on_grace)
        self._throw(gevent.GreenletExit())

    def _throw(self, error: BaseException) -> None:
        """Raise ``error`` inside the target greenlet (this runs in the hub)."""
        target = self._target
        if target is None or target.dead:
            self.cancel()
            return
        if isinstance(target, gevent.Greenlet):
            target.kill(error, block=False)
        else:
            target.throw(error)
