"""The worker's hooks and late joiners against real `zcell worker` processes:
retries that land on another worker, time and rate limits, signals received in a
task module, a consumer that joins after the task was sent, revoke with terminate."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import zcell_test_tasks as t
from conftest import SLOW, start_zcell_worker, unique_cluster, wait_until

from zcell import RemoteError, TaskRevokedError

WAIT = 15 * SLOW


def _runs(path: Path) -> list[str]:
    """The worker names that ran a task writing one line per run to ``path``."""
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def _workers(procs: Any, task_app: Any, n: int, *extra: str) -> list[Any]:
    cluster = unique_cluster()
    first, inbox = start_zcell_worker(procs, "w1", cluster, *extra)
    started = [first]
    for i in range(2, n + 1):
        started.append(start_zcell_worker(procs, f"w{i}", cluster, *extra, peer=inbox)[0])
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: len(app.node.actors("zcell.queue.celery")) == n, 10, "the consumers")
    return started


def test_an_autoretry_lands_on_the_other_worker(procs: Any, task_app: Any, tmp_path: Path) -> None:
    _workers(procs, task_app, 2)
    path = tmp_path / "runs"
    result = t.auto_flaky.delay(str(path))
    last = result.get(timeout=WAIT)
    first, second = _runs(path)
    assert {first, second} == {"w1", "w2"} and last == second and result.retries == 1


def test_backoff_retries_grow_and_the_builtin_error_comes_back_mirrored(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    _workers(procs, task_app, 2)
    path = tmp_path / "runs"
    result = t.backoff.delay(str(path))
    try:
        result.get(timeout=WAIT)
    except ConnectionError as exc:  # the task's own type, as Celery code catches it
        assert "the service is down" in str(exc)
    else:
        pytest.fail("the task should have failed with ConnectionError")
    stamps = [float(line.split()[1]) for line in path.read_text().splitlines()]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert len(stamps) == 4 and result.retries == 3 and set(_runs(path)) == {"w1", "w2"}
    assert all(gap >= least for gap, least in zip(gaps, (0.1, 0.2, 0.4), strict=True)), gaps


def test_a_worker_process_enforces_time_limits_and_keeps_serving(procs: Any, task_app: Any) -> None:
    _workers(procs, task_app, 1)
    hard = t.sleepy.apply_async((30,), time_limit=0.5)
    with pytest.raises(RemoteError, match="TimeLimitExceeded"):
        hard.get(timeout=5 * SLOW)  # not the 30 s the task asked for
    assert t.soft_limited.delay(30).get(timeout=5 * SLOW) == "cleaned up"
    assert t.add.delay(2, 3).get(timeout=WAIT) == 5


def test_a_rate_limited_task_on_a_worker_process_runs_no_faster_than_5_a_second(
    procs: Any, task_app: Any
) -> None:
    _workers(procs, task_app, 1, "-c", "10")
    results = [t.rated.delay() for _ in range(6)]
    stamps = sorted(r.get(timeout=WAIT) for r in results)
    assert len(stamps) == 6 and stamps[-1] - stamps[0] >= 5 * 0.2 * 0.95


def test_signals_reach_receivers_in_the_worker_s_task_module(
    procs: Any, task_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "signals"
    monkeypatch.setenv("ZCELL_TEST_SIGNAL_LOG", str(log))
    (worker,) = _workers(procs, task_app, 1)
    assert t.add.delay(2, 2).get(timeout=WAIT) == 4
    with pytest.raises(TypeError):
        t.fail.delay("TypeError").get(timeout=WAIT)
    worker.stop(signal.SIGTERM, timeout=15 * SLOW)
    lines = log.read_text().splitlines()
    assert lines[0] == "worker_ready Worker" and lines[-1] == "worker_shutdown Worker"
    assert lines[1:-1] == [
        "task_prerun zcell_test_tasks.add",
        "task_success zcell_test_tasks.add",
        "task_postrun zcell_test_tasks.add",
        "task_prerun zcell_test_tasks.fail",
        "task_failure zcell_test_tasks.fail",
        "task_postrun zcell_test_tasks.fail",
    ]


def test_a_task_sent_before_any_worker_runs_when_a_worker_process_joins(
    procs: Any, task_app: Any
) -> None:
    cluster = unique_cluster()
    app = task_app(cluster=cluster, peers=[])
    result = t.add.delay(20, 22)
    time.sleep(0.3)
    assert result.state == "PENDING"
    start_zcell_worker(procs, "late", cluster, peer=app.node.endpoints["inbox"])
    assert result.get(timeout=WAIT) == 42 and result.worker == "late"


def test_revoke_with_terminate_kills_a_task_running_in_a_worker_process(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    _workers(procs, task_app, 1)
    path = tmp_path / "runs"
    result = t.mark.delay(str(path), 30)
    wait_until(lambda: _runs(path), 10, "the task to start")
    result.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5 * SLOW)  # not the 30 s the task sleeps
    assert result.state == "REVOKED" and _runs(path) == ["w1"]
    assert t.add.delay(1, 1).get(timeout=WAIT) == 2  # the worker lives on
    assert t.app.AsyncResult(result.id).state == "REVOKED"
