"""The CPU-bound task of ``bench.processes``: pure Python, no I/O, no sleeping."""

from __future__ import annotations

from zcell import App

app = App("bench_cpu", discovery="static")


@app.task
def spin(n: int) -> int:
    """Sum of squares below ``n``: about 20 ms of one core for the ``n`` the bench picks."""
    total = 0
    for i in range(n):
        total += i * i
    return total
