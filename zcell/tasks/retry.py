"""When a task runs again: Celery's retry rules, as pure functions.

The worker calls :func:`should_retry` to decide whether a failed attempt may run
again, :func:`retry_countdown` for how long the next attempt waits, and
:func:`exhausted` for the error a task fails with once it may not. The rules and
defaults are Celery's (``celery/app/task.py:Task.retry``,
``celery/app/autoretry.py``, ``celery/utils/time.py:get_exponential_backoff_interval``),
so a ported task retries on the same schedule.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from .errors import MaxRetriesExceededError

#: Celery's ``Task.max_retries``: attempts after the first one.
DEFAULT_MAX_RETRIES = 3
#: Celery's ``Task.default_retry_delay``, in seconds: the wait of a plain ``self.retry()``.
DEFAULT_RETRY_DELAY = 180.0
#: Celery's ``Task.retry_backoff_max``, in seconds: exponential backoff stops growing here.
DEFAULT_RETRY_BACKOFF_MAX = 600.0
#: Celery's ``Task.retry_jitter``: backoff delays are drawn at random below the computed one.
DEFAULT_RETRY_JITTER = True


def should_retry(max_retries: int | None, retries: int) -> bool:
    """Whether an attempt that already retried ``retries`` times may retry once more.

    ``max_retries=None`` retries forever, as in Celery; ``max_retries=3`` allows
    three retries (four runs in all).
    """
    return max_retries is None or retries < max_retries


def backoff_factor(retry_backoff: bool | float | None) -> float | None:
    """The backoff factor a task's ``retry_backoff`` option asks for, or None for none.

    Celery's rule: ``True`` means a factor of 1 second; a number is the factor
    itself; ``False``, ``None`` or 0 turn backoff off.
    """
    if retry_backoff is None or retry_backoff is False:
        return None
    if retry_backoff is True:
        return 1.0
    if retry_backoff < 0:
        raise ValueError(
            f"retry_backoff must be True, False or a number >= 0, not {retry_backoff!r}"
        )
    return float(retry_backoff) or None


def backoff_delay(
    retries: int,
    factor: float,
    maximum: float,
    jitter: bool,
    rng: random.Random | None = None,
) -> float:
    """Seconds before the next attempt under exponential backoff.

    ``factor * 2**retries``, capped at ``maximum``; with ``jitter`` ("full
    jitter") a uniform value in [0, that], so that tasks which failed together do
    not all come back at the same instant. ``rng`` makes the draw reproducible.
    """
    countdown = min(maximum, factor * 2.0**retries)
    if jitter:
        countdown = (rng or random).uniform(0.0, countdown)
    return max(0.0, countdown)


def retry_countdown(
    options: Mapping[str, Any],
    retries: int,
    countdown: float | None = None,
    *,
    autoretry: bool = False,
    rng: random.Random | None = None,
) -> float:
    """Seconds the next attempt of a task waits, from the task's options.

    The worker's one entry point for the delay. As in Celery, backoff
    (``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``) applies to
    automatic retries (``autoretry_for``), where it wins over any ``countdown``
    in ``retry_kwargs``; otherwise an explicit ``countdown`` (from
    ``self.retry(countdown=...)`` or ``retry_kwargs``) wins, and
    ``default_retry_delay`` (180 s) is the fallback.

    Args:
        options: The task's options (``default_retry_delay``, ``retry_backoff``...);
            missing ones take Celery's defaults.
        retries: How many times the task has retried so far (``request.retries``).
        countdown: The countdown the retry asked for, if any.
        autoretry: True when the retry comes from ``autoretry_for``.
        rng: The random source for jitter (tests make it reproducible).
    """
    factor = backoff_factor(options.get("retry_backoff", False))
    if autoretry and factor is not None:
        return backoff_delay(
            retries,
            factor,
            float(options.get("retry_backoff_max", DEFAULT_RETRY_BACKOFF_MAX)),
            bool(options.get("retry_jitter", DEFAULT_RETRY_JITTER)),
            rng,
        )
    if countdown is not None:
        return max(0.0, float(countdown))
    return max(0.0, float(options.get("default_retry_delay", DEFAULT_RETRY_DELAY)))


def exhausted(
    exc: BaseException | None,
    name: str,
    task_id: str,
    args: Any = None,
    kwargs: Any = None,
) -> BaseException:
    """The error a task fails with when it may not retry again.

    Celery's rule: the exception that caused the retry, if there was one; else
    :class:`MaxRetriesExceededError` naming the task and its arguments.
    """
    if exc is not None:
        return exc
    return MaxRetriesExceededError(
        f"Can't retry {name}[{task_id}] args:{args} kwargs:{kwargs}: "
        "it used up max_retries; raise max_retries (None retries forever) or "
        "let the task fail",
        task_args=args,
        task_kwargs=kwargs,
    )
