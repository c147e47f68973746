"""The worker's hooks on in-process worker nodes over real sockets: retries
(``self.retry``, ``autoretry_for``, backoff, ``max_retries``), time limits, rate
limits, and Celery's signals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zcell_test_tasks as t
from conftest import SLOW, Workers, wait_until

from zcell import MaxRetriesExceededError, RemoteError, TaskRevokedError, WorkerLostError
from zcell.tasks import signals

WAIT = 10 * SLOW


def _times(path: Path) -> list[float]:
    """When each run of a ``_stamp`` task started (one line per run)."""
    return [float(line.split()[1]) for line in path.read_text().splitlines()]


# -- retries ------------------------------------------------------------------------


def test_a_task_retrying_past_max_retries_fails_with_max_retries_exceeded(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1)
    path = tmp_path / "runs"
    result = t.always_retry.delay(str(path))
    with pytest.raises(RemoteError, match="max_retries") as raised:
        result.get(timeout=WAIT)
    assert raised.value.type_name == f"zcell.tasks.errors.{MaxRetriesExceededError.__name__}"
    assert len(_times(path)) == 3  # the first run and max_retries=2 retries
    assert (result.state, result.retries) == ("FAILURE", 2)


def test_a_retry_with_an_exception_fails_with_that_exception_at_the_end(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1)
    path = tmp_path / "runs"
    result = t.retry_with_exc.delay(str(path))
    with pytest.raises(ValueError, match="still broken"):
        result.get(timeout=WAIT)
    assert len(_times(path)) == 2 and result.retries == 1


def test_a_plain_retry_waits_the_task_s_default_retry_delay(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1)
    path = tmp_path / "runs"
    assert t.retry_default_delay.delay(str(path)).get(timeout=WAIT) == "second"
    first, second = _times(path)
    assert second - first >= 0.05


def test_the_state_is_retry_until_the_next_attempt_ends(workers: Workers, tmp_path: Path) -> None:
    workers(1)
    path = tmp_path / "runs"
    result = t.retry_later.delay(str(path), 1.0)
    wait_until(lambda: result.retries == 1, 5, "the retry")
    time.sleep(0.3)  # the worker holds the next attempt for its countdown meanwhile
    assert result.state == "RETRY"
    assert result.get(timeout=WAIT) == 1 and result.state == "SUCCESS"


def test_autoretry_for_backs_off_exponentially_then_fails_with_the_builtin_error(
    workers: Workers, tmp_path: Path
) -> None:
    workers(2)
    path = tmp_path / "runs"
    result = t.backoff.delay(str(path))
    with pytest.raises(ConnectionError, match="the service is down") as raised:
        result.get(timeout=WAIT)
    assert isinstance(raised.value, RemoteError)  # mirrored: except ConnectionError works
    runs = _times(path)
    assert len(runs) == 4 and result.retries == 3
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    # retry_backoff=0.1 without jitter: 0.1, 0.2 then 0.4 s at least before each retry.
    assert all(gap >= least for gap, least in zip(gaps, (0.1, 0.2, 0.4), strict=True)), gaps
    assert gaps[2] > gaps[0]


def test_retry_kwargs_give_autoretry_its_max_retries(workers: Workers, tmp_path: Path) -> None:
    workers(1)
    path = tmp_path / "runs"
    with pytest.raises(KeyError, match="missing"):
        t.auto_once.delay(str(path)).get(timeout=WAIT)
    assert len(_times(path)) == 2


def test_autoretry_for_catches_subclasses_and_then_succeeds(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1)
    path = tmp_path / "runs"
    result = t.auto_flaky.delay(str(path))
    assert result.get(timeout=WAIT) == "w1" and result.retries == 1


def test_retry_options_are_checked_where_the_task_is_declared() -> None:
    with pytest.raises(ValueError, match="retry_backoff"):
        t.app.task(retry_backoff=-1)(lambda: None)
    with pytest.raises(ValueError, match='"10/s"'):
        t.app.task(rate_limit="ten a second")(lambda: None)


# -- time limits ----------------------------------------------------------------------


def test_the_soft_time_limit_is_raised_inside_the_task(workers: Workers) -> None:
    workers(1)
    assert t.soft_limited.delay(5).get(timeout=WAIT) == "cleaned up"
    assert t.soft_limited.delay(0).get(timeout=WAIT) == "woke"


def test_apply_async_time_limit_kills_the_task_with_time_limit_exceeded(
    workers: Workers,
) -> None:
    workers(1)
    result = t.sleepy.apply_async((5,), time_limit=0.3)
    with pytest.raises(RemoteError, match="TimeLimitExceeded") as raised:
        result.get(timeout=2 * SLOW)  # well before the 5 s the task would take
    assert raised.value.type_name == "zcell.tasks.errors.TimeLimitExceeded"
    assert result.state == "FAILURE"
    soft = t.sleepy.apply_async((5,), soft_time_limit=0.2)
    with pytest.raises(RemoteError, match="SoftTimeLimitExceeded"):
        soft.get(timeout=2 * SLOW)


def test_a_task_that_swallows_its_time_limit_is_still_killed(workers: Workers) -> None:
    workers(1)
    with pytest.raises(RemoteError, match="TimeLimitExceeded"):
        t.stubborn.delay(5).get(timeout=3 * SLOW)


def test_the_conf_default_time_limits_apply_to_tasks_without_their_own(
    workers: Workers,
) -> None:
    workers(1)
    t.app.conf.update(task_time_limit=0.3)
    try:
        with pytest.raises(RemoteError, match="TimeLimitExceeded"):
            t.sleepy.delay(5).get(timeout=2 * SLOW)
        t.app.conf.update(task_time_limit=None, task_soft_time_limit=0.2)
        assert t.soft_limited.delay(5).get(timeout=WAIT) == "cleaned up"
        with pytest.raises(RemoteError, match="SoftTimeLimitExceeded"):
            t.sleepy.delay(5).get(timeout=2 * SLOW)
    finally:
        t.app.conf.update(task_time_limit=None, task_soft_time_limit=None)


def test_a_time_limit_counts_from_the_start_not_from_the_wait_for_a_slot(
    workers: Workers,
) -> None:
    workers(1, concurrency=1)
    busy = t.sleepy.delay(1.0)
    limited = t.sleepy.apply_async((0,), time_limit=0.3)  # waits ~1 s for the slot
    assert limited.get(timeout=WAIT) == "woke" and busy.get(timeout=WAIT) == "woke"


# -- rate limits ----------------------------------------------------------------------


def test_a_rate_limited_task_runs_no_faster_than_its_rate_and_all_complete(
    workers: Workers,
) -> None:
    workers(1, concurrency=10)
    sent = time.time()
    results = [t.rated.delay() for _ in range(6)]
    stamps = sorted(r.get(timeout=WAIT) for r in results)
    # 5/s from a bucket of one: the first at once, then one every 0.2 s. From the
    # send, not the first run: a first task that ran late (a loaded machine) made
    # the runs' own span look short.
    assert stamps[-1] - sent >= 5 * 0.2 * 0.95


def test_a_task_waiting_for_its_rate_holds_no_concurrency_slot(workers: Workers) -> None:
    workers(1, concurrency=1)
    limited = [t.slow_rated.delay(i) for i in range(3)]  # 1/s: the third waits 2 s
    assert t.add.delay(2, 2).get(timeout=1.5) == 4
    assert not limited[2].ready()
    assert [r.get(timeout=WAIT) for r in limited] == [0, 1, 2]


def test_the_conf_default_rate_limit_applies_to_tasks_without_their_own(
    workers: Workers,
) -> None:
    t.app.conf.update(task_default_rate_limit="5/s")
    try:
        workers(1, concurrency=10)
        start = time.monotonic()
        assert [r.get(timeout=WAIT) for r in [t.add.delay(i, i) for i in range(4)]] == [0, 2, 4, 6]
        assert time.monotonic() - start >= 3 * 0.2 * 0.95
    finally:
        t.app.conf.update(task_default_rate_limit=None)


# -- signals ----------------------------------------------------------------------------


class Heard:
    """Receivers for every signal, recording (signal name, sender, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def __call__(self, signal: Any, sender: Any = None, **kwargs: Any) -> None:
        self.calls.append((signal.name, sender, kwargs))

    def of(self, name: str) -> list[tuple[Any, dict[str, Any]]]:
        return [(sender, kw) for n, sender, kw in self.calls if n == name]


@pytest.fixture
def heard() -> Iterator[Heard]:
    receiver = Heard()
    every = [signals.signals.signal(name) for name in signals.signals]
    for signal in every:
        signal.connect(receiver, weak=False)
    yield receiver
    for signal in every:
        signal.disconnect(receiver)


def test_a_task_s_run_sends_prerun_success_and_postrun_with_celerys_arguments(
    workers: Workers, heard: Heard
) -> None:
    workers(1)
    result = t.add.delay(2, 2)
    assert result.get(timeout=WAIT) == 4
    wait_until(lambda: heard.of("task_postrun"), 5, "task_postrun")
    ((sender, pre),) = heard.of("task_prerun")
    assert sender is t.add and pre == {
        "task_id": result.id, "task": t.add, "args": [2, 2], "kwargs": {}
    }  # fmt: skip
    assert heard.of("task_success") == [(t.add, {"result": 4})]
    ((_, post),) = heard.of("task_postrun")
    assert (post["task_id"], post["retval"], post["state"]) == (result.id, 4, "SUCCESS")
    before, after = heard.of("before_task_publish"), heard.of("after_task_publish")
    assert [s for s, _ in before] == [t.add.name] and [s for s, _ in after] == [t.add.name]
    headers = before[0][1]["headers"]
    assert (headers["id"], headers["task"]) == (result.id, t.add.name)
    assert before[0][1]["routing_key"] == "celery" and before[0][1]["body"][0] == [2, 2]
    assert names(heard).index("before_task_publish") < names(heard).index("after_task_publish")


def names(heard: Heard) -> list[str]:
    return [name for name, _, _ in heard.calls]


def test_failure_and_retry_signals(workers: Workers, heard: Heard, tmp_path: Path) -> None:
    workers(1)
    with pytest.raises(ValueError, match="still broken"):
        t.retry_with_exc.delay(str(tmp_path / "runs")).get(timeout=WAIT)
    wait_until(lambda: heard.of("task_failure"), 5, "task_failure")
    ((sender, retry),) = heard.of("task_retry")
    assert sender is t.retry_with_exc and str(retry["reason"]) == "still broken"
    assert retry["request"].retries == 0 and "einfo" in retry
    ((_, failure),) = heard.of("task_failure")
    assert isinstance(failure["exception"], ValueError)
    assert failure["args"] == [str(tmp_path / "runs")] and "ValueError" in failure["einfo"]
    assert [kw["state"] for _, kw in heard.of("task_postrun")] == ["RETRY", "FAILURE"]


def test_task_revoked_is_sent_on_terminate_and_on_expiry(
    workers: Workers, heard: Heard, tmp_path: Path
) -> None:
    workers(1)
    result = t.sleepy.delay(30)
    wait_until(lambda: heard.of("task_prerun"), 5, "the task to start")
    result.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=WAIT)
    wait_until(lambda: heard.of("task_revoked"), 5, "task_revoked")
    ((sender, terminated),) = heard.of("task_revoked")
    assert sender is t.sleepy and terminated["terminated"] is True
    assert terminated["expired"] is False and terminated["request"].id == result.id
    expired = t.sleepy.apply_async((0,), countdown=0.3, expires=0.1)
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=WAIT)
    wait_until(lambda: len(heard.of("task_revoked")) == 2, 5, "the second task_revoked")
    _, second = heard.of("task_revoked")[1]
    assert second["expired"] is True and second["terminated"] is False


def test_a_task_still_running_when_its_node_stops_is_revoked_there_and_lost_here(
    workers: Workers, heard: Heard
) -> None:
    """The node's stop kills the handler the task runs in: the task ends revoked
    (``task_revoked``, terminated) and its submitter learns that the worker is lost."""
    (worker,) = workers(1)
    result = t.sleepy.delay(30)
    wait_until(lambda: worker.running, 5, "the task to start")
    assert worker.stop(timeout=0.2) == 1
    worker.node.stop(timeout=0.5)
    with pytest.raises(WorkerLostError):
        result.get(timeout=WAIT)
    ((sender, revoked),) = heard.of("task_revoked")
    assert sender is t.sleepy and revoked["terminated"] is True
    assert revoked["request"].id == result.id


def test_worker_ready_and_worker_shutdown_are_sent(workers: Workers, heard: Heard) -> None:
    (worker,) = workers(1)
    assert heard.of("worker_ready") == [(worker, {})]
    worker.stop(timeout=0.5)
    assert heard.of("worker_shutdown") == [(worker, {})]


def test_a_receiver_that_raises_breaks_neither_the_task_nor_the_worker(
    workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(sender: Any = None, **kwargs: Any) -> None:
        raise RuntimeError("a broken receiver")

    signals.task_prerun.connect(bad)
    try:
        workers(1)
        assert t.add.delay(1, 2).get(timeout=WAIT) == 3
    finally:
        signals.task_prerun.disconnect(bad)
    assert "a broken receiver" in caplog.text


def test_control_rate_limit_limits_a_task_on_the_workers_from_its_next_run(
    workers: Workers,
) -> None:
    workers(1, concurrency=10)
    name = "zcell_test_tasks.unlimited_stamp"
    assert t.unlimited_stamp.delay().get(timeout=WAIT)  # ran once without a limit
    replies = t.app.control.rate_limit(name, "5/s", timeout=2 * SLOW)
    assert all("ok" in r for r in replies.values()) and replies
    sent = time.time()
    stamps = sorted(r.get(timeout=WAIT) for r in [t.unlimited_stamp.delay() for _ in range(6)])
    # 5/s from a bucket of one: the first at once, then one every 0.2 s. Measured
    # from the send: a first run that starts late under load (its claim's round
    # trip) shortens the runs' own span, not the time the rate allows them.
    assert stamps[-1] - sent >= 5 * 0.2 * 0.95
    t.app.control.rate_limit(name, "1000/s", timeout=2 * SLOW)  # raised again: fast
    stamps = sorted(r.get(timeout=WAIT) for r in [t.unlimited_stamp.delay() for _ in range(6)])
    assert stamps[-1] - stamps[0] < 0.8


def test_control_time_limit_kills_a_task_that_runs_past_it(workers: Workers) -> None:
    workers(1)
    assert t.add.delay(1, 1).get(timeout=WAIT) == 2  # the app's node sees the worker
    replies = t.app.control.time_limit("zcell_test_tasks.sleepy", hard=0.3, timeout=2 * SLOW)
    assert replies and all("ok" in r for r in replies.values())
    with pytest.raises(RemoteError, match="TimeLimitExceeded"):
        t.sleepy.delay(5).get(timeout=2 * SLOW)  # well before the 5 s it would take
    t.app.control.time_limit("zcell_test_tasks.sleepy", soft=0.2, hard=None, timeout=2 * SLOW)
    with pytest.raises(RemoteError, match="SoftTimeLimitExceeded"):
        t.sleepy.delay(5).get(timeout=2 * SLOW)


def test_the_task_layers_errors_keep_their_class_at_get(workers: Workers) -> None:
    """``except TimeLimitExceeded:`` around ``get()`` works, as in Celery; the error is
    still a ``RemoteError`` that carries the worker's traceback."""
    from zcell import TimeLimitExceeded

    workers(1)
    with pytest.raises(TimeLimitExceeded) as raised:
        t.sleepy.apply_async((5,), time_limit=0.3).get(timeout=2 * SLOW)
    assert isinstance(raised.value, RemoteError)
    assert raised.value.type_name == "zcell.tasks.errors.TimeLimitExceeded"
    assert "sleepy" in raised.value.remote_traceback


def test_max_retries_exceeded_is_caught_by_its_class_at_get(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1)
    with pytest.raises(MaxRetriesExceededError):
        t.always_retry.delay(str(tmp_path / "runs")).get(timeout=WAIT)
