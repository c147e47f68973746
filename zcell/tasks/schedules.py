"""When periodic tasks fall due: intervals and Celery's ``crontab``.

Every beat candidate must agree, without talking, on when each tick falls due
(a tick's id is its entry's name and its time), so a schedule is a pure
function of the clock: intervals are multiples of their period counted from the
epoch, and ``crontab`` is evaluated by croniter in the app's time zone.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

__all__ = ["Schedule", "crontab", "schedule", "to_schedule"]

#: Most due times one call lists (a bound on catch-up after a long gap).
MAX_DUE = 10_000


class Schedule:
    """Base of the schedules: the POSIX times a tick falls due."""

    def next_after(self, t: float, tz: str = "UTC") -> float:
        """The first due time strictly after ``t``."""
        raise NotImplementedError

    def due(self, since: float, until: float, tz: str = "UTC") -> list[float]:
        """Due times in ``(since, until]``, oldest first (at most ``MAX_DUE``)."""
        times: list[float] = []
        t = self.next_after(since, tz)
        while t <= until and len(times) < MAX_DUE:
            times.append(t)
            t = self.next_after(t, tz)
        return times


class schedule(Schedule):  # noqa: N801 - Celery's name
    """Every ``run_every`` seconds (a number or a ``timedelta``), at the
    multiples of the period since the epoch, so that every candidate agrees."""

    def __init__(self, run_every: float | timedelta) -> None:
        seconds = run_every.total_seconds() if isinstance(run_every, timedelta) else run_every
        if not isinstance(seconds, int | float) or not seconds > 0:
            raise ValueError(f"a schedule's period must be a positive number, not {run_every!r}")
        self.seconds = float(seconds)

    def next_after(self, t: float, tz: str = "UTC") -> float:
        return (math.floor(t / self.seconds) + 1) * self.seconds

    def __repr__(self) -> str:
        return f"<schedule every {self.seconds:g}s>"


class crontab(Schedule):  # noqa: N801 - Celery's name
    """Celery's ``crontab``: the fields take cron syntax (``"*/15"``, ``"1-5"``,
    ``"mon-fri"``, ``"0,30"``; day 0 is Sunday), evaluated in the app's
    ``timezone``. A wall-clock time that a DST change skips runs at the first
    minute after it; one that occurs twice runs once, the first time."""

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
    ) -> None:
        fields = (minute, hour, day_of_month, month_of_year, day_of_week)
        self.expr = " ".join(str(f).replace(" ", "") for f in fields)
        if not croniter.is_valid(self.expr):
            raise ValueError(
                f"invalid crontab {self.expr!r} (minute hour day_of_month month_of_year "
                "day_of_week): see Celery's crontab fields"
            )

    def next_after(self, t: float, tz: str = "UTC") -> float:
        zone = ZoneInfo(tz)
        start = datetime.fromtimestamp(t, zone)
        found: datetime = croniter(self.expr, start).get_next(datetime)
        # Fall back: the same wall-clock time again an hour later runs once.
        if found.replace(tzinfo=None) == start.replace(tzinfo=None, microsecond=0) and (
            found.utcoffset() != start.utcoffset()
        ):
            found = croniter(self.expr, found).get_next(datetime)
        return found.timestamp()

    def __repr__(self) -> str:
        return f"<crontab: {self.expr}>"


def to_schedule(value: Any) -> Schedule:
    """A ``beat_schedule`` entry's ``schedule``: seconds, a timedelta, or a Schedule."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | float | timedelta) and not isinstance(value, bool):
        return schedule(value)
    raise TypeError(
        f"a periodic task's schedule is seconds, a timedelta or zcell.schedules.crontab, "
        f"not {value!r}"
    )
