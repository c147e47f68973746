"""Tasks for the task-layer tests: imported by `zcell worker -A zcell_test_tasks`
child processes and by the tests themselves (which point the app at their mesh)."""

from __future__ import annotations

import os
import time
from typing import Any

import gevent

from zcell import App
from zcell.tasks import signals
from zcell.tasks.errors import SoftTimeLimitExceeded

app = App("zcell_test_tasks", discovery="static")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task(bind=True)
def whoami(self: Any) -> dict[str, Any]:
    request = self.request
    return {
        "id": request.id,
        "hostname": request.hostname,
        "retries": request.retries,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "args": request.args,
        "queue": request.delivery_info["routing_key"],
    }


@app.task(bind=True)
def where(self: Any) -> str:
    """The name of the node that runs it."""
    return str(self.request.hostname)


def _mark(hostname: str, path: str, seconds: float, value: Any) -> Any:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{hostname} {os.getpid()}\n")
    gevent.sleep(seconds)
    return value


@app.task(bind=True)
def mark(self: Any, path: str, seconds: float = 0.0, value: Any = None) -> Any:
    """Append the worker's name to ``path`` (counts the runs), then sleep."""
    return _mark(self.request.hostname, path, seconds, value)


@app.task
def fail(kind: str) -> None:
    errors: dict[str, BaseException] = {
        "SystemExit": SystemExit(3),
        "KeyboardInterrupt": KeyboardInterrupt(),
        "TypeError": TypeError("bad type"),
        "GreenletExit": gevent.GreenletExit(),  # a task's own, not its handler killed
    }
    raise errors[kind]


@app.task
def child(i: int) -> int:
    gevent.sleep(0.05)
    return i


@app.task
def parent(n: int) -> int:
    """Waits on its children: with every slot taken, this must not deadlock."""
    results = [child.delay(i) for i in range(n)]
    return sum(r.get(timeout=30) for r in results)


@app.task
def grandparent(n: int) -> int:
    """Waits on ``n`` parents, each waiting on its children: two levels of nested get()."""
    results = [parent.delay(2) for _ in range(n)]
    return sum(r.get(timeout=30) for r in results)


@app.task(bind=True, max_retries=2)
def flaky(self: Any, path: str) -> str:
    """Fails on its first run (noted in ``path``), retries at once, then succeeds."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{self.request.hostname}\n")
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return str(self.request.hostname)


@app.task(bind=True, acks_late=True)
def mark_late(self: Any, path: str, seconds: float = 0.0) -> Any:
    """``mark`` with acks_late: redelivered if its worker dies."""
    return _mark(self.request.hostname, path, seconds, "done")


@app.task
def unserialisable() -> object:
    return object()


def _wait_for_file(path: str, limit: float = 10.0) -> None:
    """Sleep (cooperatively) until ``path`` exists, at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        gevent.sleep(0.01)


@app.task(bind=True)
def progress(self: Any, gate: str) -> str:
    """Show a custom state until the test creates the file ``gate``."""
    self.update_state(state="PROGRESS", meta={"done": 1})
    _wait_for_file(gate)
    return "ok"


@app.task
def gated(gate: str) -> str:
    """Run until the test creates the file ``gate``."""
    _wait_for_file(gate)
    return "ok"


#: Task ids ``noted`` saw (in this process: for in-process workers).
NOTED: list[str] = []


@app.task
def noted(task_id: Any) -> None:
    """A ``link_error`` target: records the failed task's id."""
    NOTED.append(task_id)


# -- retries, limits and signals (the worker's hooks) ---------------------------


def _stamp(path: str, hostname: Any) -> None:
    """Append ``<hostname> <time>`` to ``path``: one line per run."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{hostname} {time.time()!r}\n")


@app.task(bind=True, max_retries=2)
def always_retry(self: Any, path: str) -> None:
    """Asks to retry every time: fails with MaxRetriesExceededError after 3 runs."""
    _stamp(path, self.request.hostname)
    raise self.retry(countdown=0)


@app.task(bind=True, max_retries=1)
def retry_with_exc(self: Any, path: str) -> None:
    """Retries with its own exception: fails with it (a ValueError) after 2 runs."""
    _stamp(path, self.request.hostname)
    raise self.retry(exc=ValueError("still broken"), countdown=0)


@app.task(bind=True, default_retry_delay=0.05, max_retries=1)
def retry_default_delay(self: Any, path: str) -> str:
    """A plain ``self.retry()`` waits ``default_retry_delay``."""
    _stamp(path, self.request.hostname)
    if self.request.retries == 0:
        raise self.retry()
    return "second"


@app.task(bind=True, max_retries=1)
def retry_later(self: Any, path: str, countdown: float) -> int:
    """Retries once, ``countdown`` seconds later."""
    _stamp(path, self.request.hostname)
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return int(self.request.retries)


@app.task(bind=True, max_retries=1)
def slow_retry(self: Any, path: str, seconds: float) -> int:
    """Sleeps ``seconds``, then retries once at once; returns its retry count."""
    _stamp(path, self.request.hostname)
    if self.request.retries == 0:
        gevent.sleep(seconds)
        raise self.retry(countdown=0)
    return int(self.request.retries)


@app.task(
    bind=True,
    autoretry_for=(ConnectionError,),
    max_retries=3,
    retry_backoff=0.1,
    retry_jitter=False,
)
def backoff(self: Any, path: str) -> None:
    """Always raises ConnectionError: retried with backoff 0.1, 0.2, 0.4 s, then fails."""
    _stamp(path, self.request.hostname)
    raise ConnectionError("the service is down")


@app.task(bind=True, autoretry_for=(KeyError,), retry_kwargs={"max_retries": 1, "countdown": 0})
def auto_once(self: Any, path: str) -> None:
    """``retry_kwargs`` sets max_retries 1: fails with its KeyError after 2 runs."""
    _stamp(path, self.request.hostname)
    raise KeyError("missing")


@app.task(bind=True, autoretry_for=(OSError,), max_retries=2, retry_kwargs={"countdown": 0})
def auto_flaky(self: Any, path: str) -> str:
    """Raises ConnectionError (an OSError) on its first run, then succeeds."""
    _stamp(path, self.request.hostname)
    if self.request.retries == 0:
        raise ConnectionError("first run fails")
    return str(self.request.hostname)


@app.task
def sleepy(seconds: float) -> str:
    gevent.sleep(seconds)
    return "woke"


@app.task(soft_time_limit=0.2)
def soft_limited(seconds: float) -> str:
    """Catches its soft time limit to clean up, and says so."""
    try:
        gevent.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "woke"


@app.task(time_limit=0.3)
def stubborn(seconds: float) -> str:
    """Swallows every Exception, TimeLimitExceeded included: it must still end, failed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            gevent.sleep(0.05)
        except Exception:  # noqa: BLE001, S112 - the test's point
            continue
    return "survived"


@app.task(rate_limit="5/s")
def rated() -> float:
    """Rate limited to 5 a second on each worker: returns when it ran."""
    return time.time()


@app.task(rate_limit="1/s")
def slow_rated(i: int) -> int:
    return i


#: Where the signal receivers of a worker process write (one line per signal);
#: they are connected only where it is set (the test's worker processes).
SIGNAL_LOG = os.environ.get("ZCELL_TEST_SIGNAL_LOG")


def _log_signal(signal: Any, sender: Any = None, **kwargs: Any) -> None:
    """A receiver in a task module, as a Celery project has them."""
    name = getattr(sender, "name", None)
    with open(str(SIGNAL_LOG), "a", encoding="utf-8") as f:
        f.write(f"{signal.name} {name if isinstance(name, str) else type(sender).__name__}\n")


if SIGNAL_LOG:
    for _signal in (
        signals.task_prerun,
        signals.task_postrun,
        signals.task_success,
        signals.task_failure,
        signals.task_revoked,
        signals.worker_ready,
        signals.worker_shutdown,
    ):
        _signal.connect(_log_signal)


@app.task
def unlimited_stamp() -> float:
    """No rate limit of its own (``control rate_limit`` gives it one): when it ran."""
    return time.time()


@app.task
def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task
def multiply(a: int, b: int) -> int:
    """The intro post's task."""
    return a * b


@app.task
def slow_add(x: int, y: int, seconds: float = 0.0) -> int:
    gevent.sleep(seconds)
    return x + y
