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
        self.deadline = time.monotonic() + self.total

    def remaining(self) -> float:
        """Seconds left; :class:`PartTimeout` when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise PartTimeout(f"{self.name} exceeded its {self.total:.1f}s budget")
        return left

    def limit(self, base_s: float) -> float:
        """A step's own limit (*base_s* scaled), never past the part's deadline."""
        return min(self.remaining(), base_s * self.scale)
