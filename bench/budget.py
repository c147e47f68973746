"""Time budgets that follow the machine's speed in this run.

A fixed budget is a backstop for hangs, but on a shared VM in a slow phase the
same work takes two or three times as long, and a fixed budget then kills a run
that would have finished (``ChildError: client[green-inline] ... no output
within 10.8s``). So the suite times a small piece of pure-Python and msgpack
work first (:func:`calibrate`, ~0.1 s) and multiplies every part's budget by how
much slower than :data:`REFERENCE_MS` it ran (never below 1).

:class:`Budget` is the deadline of one part: ``remaining()`` raises
:class:`PartTimeout`, which the part's caller reports as "not finished" while
the rest of the table is printed.
"""

from __future__ import annotations

import time

#: Milliseconds :func:`_work` takes on the 2-core dev VM in a quiet phase.
REFERENCE_MS = 25.0
#: A slow phase never stretches budgets more than this (a hang must still end).
MAX_FACTOR = 6.0
#: What a part's own progress may stretch its budget by, at most (:meth:`Budget.follow`).
STRETCH_MAX = 2.0


class PartTimeout(TimeoutError):
    """A benchmark part ran out of its time budget: report it, run the next part."""


def _work() -> None:
    import msgpack

    packb, unpackb = msgpack.packb, msgpack.unpackb
    total = 0
    for i in range(20000):
        total += unpackb(packb([i, b"x" * 16]))[0]


def calibrate(rounds: int = 3) -> dict[str, float]:
    """The best of *rounds* timings of :func:`_work` and the budget factor it gives."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        _work()
        best = min(best, (time.perf_counter() - start) * 1000)
    factor = min(MAX_FACTOR, max(1.0, best / REFERENCE_MS))
    return {"work_ms": round(best, 1), "reference_ms": REFERENCE_MS, "factor": round(factor, 2)}


class Budget:
    """The deadline of one part: *base_s* seconds times the run's *scale*."""

    def __init__(self, name: str, base_s: float, scale: float = 1.0) -> None:
        self.name = name
        self.total = base_s * scale
        self.scale = scale
        self.started = time.monotonic()
        self.deadline = self.started + self.total
        #: The total before :meth:`follow` stretched it (None: never stretched).
        self.stretched_from: float | None = None

    def follow(self, needed_s: float, at_most: float = STRETCH_MAX) -> float:
        """Stretch the deadline to *needed_s* seconds from the part's start, when
        the part's own progress says it needs that long (never more than
        *at_most* times its budget, never shorter). Returns the total now.

        The calibration times pure-Python work; a phase in which the machine's
        wake-ups, not its CPU, are slow (a round trip 2-3x its usual) passes it
        at full speed while every round trip of the part takes longer. The part
        then measures itself: its first round says what the rest will take."""
        cap = (self.stretched_from or self.total) * at_most
        total = min(max(self.total, needed_s), max(self.total, cap))
        if total > self.total:
            if self.stretched_from is None:
                self.stretched_from = self.total
            self.total = total
            self.deadline = self.started + total
        return self.total

    def remaining(self) -> float:
        """Seconds left; :class:`PartTimeout` when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PartTimeout(f"{self.name} exceeded its {self.total:.1f}s budget")
        return left

    def limit(self, base_s: float) -> float:
        """A step's own limit (*base_s* scaled), never past the part's deadline."""
        return min(self.remaining(), base_s * self.scale)
