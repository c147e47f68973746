"""Retry rules of the task layer: Celery's defaults, backoff with a cap and jitter."""

from __future__ import annotations

import random

import pytest

from zcell.tasks.errors import MaxRetriesExceededError
from zcell.tasks.retry import (
    backoff_delay,
    backoff_factor,
    exhausted,
    retry_countdown,
    should_retry,
)


def test_max_retries_counts_retries_after_the_first_run_and_none_means_forever() -> None:
    assert [should_retry(3, n) for n in range(5)] == [True, True, True, False, False]
    assert should_retry(0, 0) is False
    assert should_retry(None, 10_000) is True


def test_retry_backoff_true_is_a_factor_of_one_and_a_number_is_the_factor() -> None:
    assert backoff_factor(True) == 1.0
    assert backoff_factor(5) == 5.0
    assert backoff_factor(False) is None
    assert backoff_factor(None) is None
    assert backoff_factor(0) is None
    with pytest.raises(ValueError, match="retry_backoff"):
        backoff_factor(-1)


def test_backoff_doubles_per_retry_and_stops_at_the_maximum() -> None:
    delays = [backoff_delay(n, 2.0, 600.0, jitter=False) for n in range(10)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 600.0]


def test_full_jitter_draws_uniformly_below_the_capped_delay() -> None:
    rng = random.Random(7)
    draws = [backoff_delay(4, 1.0, 10.0, jitter=True, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= 10.0 for d in draws)
    assert min(draws) < 1.0 and max(draws) > 9.0  # spread over the whole range
    assert len(set(draws)) > 400


def test_a_plain_retry_waits_the_default_retry_delay_of_180_seconds() -> None:
    assert retry_countdown({}, retries=0) == 180.0
    assert retry_countdown({"default_retry_delay": 5}, retries=2) == 5.0


def test_an_explicit_countdown_wins_over_the_default_delay() -> None:
    assert retry_countdown({"default_retry_delay": 5}, retries=0, countdown=1.5) == 1.5
    # Backoff is for automatic retries only, as in Celery's self.retry().
    assert retry_countdown({"retry_backoff": True}, retries=3, countdown=2) == 2.0


def test_an_automatic_retry_backs_off_with_celerys_defaults() -> None:
    options = {"retry_backoff": True, "retry_jitter": False}
    delays = [retry_countdown(options, n, autoretry=True) for n in (0, 3, 9, 10, 20)]
    assert delays == [1.0, 8.0, 512.0, 600.0, 600.0]  # retry_backoff_max defaults to 600
    capped = {"retry_backoff": 3, "retry_backoff_max": 20, "retry_jitter": False}
    assert retry_countdown(capped, 1, countdown=99, autoretry=True) == 6.0
    assert retry_countdown(capped, 5, autoretry=True) == 20.0


def test_an_automatic_retry_jitters_by_default() -> None:
    rng = random.Random(1)
    draws = {retry_countdown({"retry_backoff": 10}, 2, autoretry=True, rng=rng) for _ in range(50)}
    assert all(0.0 <= d <= 40.0 for d in draws) and len(draws) == 50


def test_an_automatic_retry_without_backoff_uses_the_countdown_or_the_default() -> None:
    assert retry_countdown({}, 4, countdown=3, autoretry=True) == 3.0
    assert retry_countdown({"default_retry_delay": 7}, 4, autoretry=True) == 7.0


def test_an_exhausted_task_fails_with_its_own_exception_or_max_retries_exceeded() -> None:
    original = OSError("disk gone")
    assert exhausted(original, "proj.tasks.fetch", "id-1") is original
    error = exhausted(None, "proj.tasks.fetch", "id-1", args=[1], kwargs={"x": 2})
    assert isinstance(error, MaxRetriesExceededError)
    assert "proj.tasks.fetch[id-1]" in str(error) and "max_retries" in str(error)
    assert error.task_args == [1] and error.task_kwargs == {"x": 2}
