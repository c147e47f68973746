"""Rate limits and time limits of tasks, on real gevent greenlets and real time."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import pytest
from conftest import SLOW

from zcell.tasks.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from zcell.tasks.limits import RateLimiter, TimeLimits, parse_rate


def test_rates_are_read_per_second_minute_or_hour_and_bare_numbers_per_second() -> None:
    assert parse_rate("10/s") == 10.0
    assert parse_rate("120/m") == 2.0
    assert parse_rate("1800/h") == 0.5
    assert parse_rate(" 3 / m ") == 0.05
    assert parse_rate("5") == 5.0
    assert parse_rate(2.5) == 2.5
    assert parse_rate(7) == 7.0


@pytest.mark.parametrize("no_limit", [None, "", 0, 0.0, "0", "0/m"])
def test_none_empty_and_zero_mean_no_rate_limit(no_limit: object) -> None:
    assert parse_rate(no_limit) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", ["ten/s", "10/d", "10/s/x", "/s", "-1/s", -3, "nan", "inf", True, [10]]
)
def test_anything_else_is_refused_naming_the_accepted_forms(bad: object) -> None:
    with pytest.raises(ValueError, match=r'"10/s", "100/m", "1000/h"'):
        parse_rate(bad)  # type: ignore[arg-type]


def _in_greenlet(fn: Callable[[], object], timeout: float = 5.0) -> object:
    """Run ``fn`` in its own greenlet and return (or raise) its outcome, bounded."""
    glet = gevent.spawn(fn)
    glet.join(timeout=timeout * SLOW)
    assert glet.dead, f"{fn.__name__} still running after {timeout * SLOW} s"
    return glet.get()


def test_a_token_bucket_lets_one_through_then_spaces_the_rest_by_the_rate() -> None:
    limiter = RateLimiter(20.0)
    assert limiter.delay() == 0.0
    assert limiter.acquire(timeout=0) is True
    assert 0.0 < limiter.delay() <= 0.05
    start = time.monotonic()
    assert all(limiter.acquire(timeout=5 * SLOW) for _ in range(3))
    assert time.monotonic() - start >= 3 / 20 * 0.9  # three more at 20/s wait ~0.15 s


def test_a_larger_capacity_allows_a_burst_of_that_size() -> None:
    limiter = RateLimiter(1.0, capacity=3)
    assert [limiter.acquire(timeout=0) for _ in range(4)] == [True, True, True, False]
    assert limiter.delay() > 0.5


def test_acquire_gives_up_at_its_timeout_without_taking_a_token() -> None:
    limiter = RateLimiter(parse_rate("1/m"))
    assert limiter.acquire(timeout=0) is True
    start = time.monotonic()
    assert limiter.acquire(timeout=0.05) is False
    assert time.monotonic() - start < 1.0  # not the 60 s the rate would ask for
    assert limiter.delay() > 50.0


def test_waiting_for_a_token_lets_other_greenlets_run() -> None:
    limiter = RateLimiter(10.0)
    limiter.acquire(timeout=0)
    ticks: list[int] = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01) or 1) for _ in range(5)])
    assert _in_greenlet(lambda: limiter.acquire(timeout=2 * SLOW)) is True
    ticker.join(timeout=2 * SLOW)
    assert ticks, "the ticker never ran while acquire waited"


def test_changing_the_rate_at_run_time_wakes_a_waiting_acquire() -> None:
    limiter = RateLimiter(parse_rate("1/h"))
    limiter.acquire(timeout=0)
    waiter = gevent.spawn(limiter.acquire, timeout=10 * SLOW)
    gevent.sleep(0.05)
    assert not waiter.dead
    start = time.monotonic()
    limiter.set_rate("100/s")
    waiter.join(timeout=2 * SLOW)
    assert waiter.dead and waiter.value is True
    assert time.monotonic() - start < 1.0  # not the hour the old rate asked for


def test_no_rate_limit_never_waits_and_set_rate_can_add_one() -> None:
    limiter = RateLimiter(None)
    assert all(limiter.acquire(timeout=0) for _ in range(1000))
    limiter.set_rate("1/m")
    assert limiter.acquire(timeout=0) is True
    assert limiter.acquire(timeout=0) is False
    limiter.set_rate(0)
    assert limiter.delay() == 0.0 and limiter.acquire(timeout=0) is True


def test_the_soft_limit_raises_inside_the_task_which_may_clean_up_and_return() -> None:
    def task() -> str:
        try:
            gevent.sleep(5)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "finished"

    def run() -> str:
        with TimeLimits(soft=0.05, hard=0.5) as limits:
            outcome = task()
        assert limits.soft_expired and not limits.hard_expired
        return outcome

    assert _in_greenlet(run) == "cleaned up"


def test_the_hard_limit_ends_the_task_with_time_limit_exceeded() -> None:
    def run() -> None:
        with TimeLimits(soft=None, hard=0.05):
            gevent.sleep(5)

    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded, match="time_limit"):
        _in_greenlet(run)
    assert time.monotonic() - start < 1.0  # not the task's 5 s


def test_the_hard_limit_holds_in_the_main_greenlet_too() -> None:
    with pytest.raises(TimeLimitExceeded):
        with TimeLimits(soft=None, hard=0.05):
            gevent.sleep(5)


def test_a_task_that_swallows_every_exception_still_ends_with_time_limit_exceeded() -> None:
    caught: list[str] = []

    def stubborn() -> None:
        for _ in range(3):
            try:
                gevent.sleep(5)
            except BaseException as exc:  # the point of the test
                caught.append(type(exc).__name__)

    def run() -> None:
        with TimeLimits(soft=0.05, hard=0.1, grace=0.05):
            stubborn()

    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        _in_greenlet(run)
    assert time.monotonic() - start < 2.0
    assert caught == ["SoftTimeLimitExceeded", "TimeLimitExceeded", "GreenletExit"]


def test_a_task_that_swallows_the_hard_limit_and_returns_still_fails() -> None:
    def run() -> str:
        with TimeLimits(soft=None, hard=0.05):
            try:
                gevent.sleep(5)
            except TimeLimitExceeded:
                pass
            return "pretends all is well"

    with pytest.raises(TimeLimitExceeded):
        _in_greenlet(run)


def test_limits_armed_on_another_greenlet_kill_it_and_report_it() -> None:
    glet = gevent.spawn(gevent.sleep, 5)
    limits = TimeLimits(soft=None, hard=0.05, greenlet=glet).start()
    glet.join(timeout=2 * SLOW)
    limits.cancel()
    assert glet.dead
    with pytest.raises(TimeLimitExceeded):
        limits.check()


def test_leaving_the_block_cancels_the_timers() -> None:
    def run() -> str:
        with TimeLimits(soft=0.05, hard=0.1):
            gevent.sleep(0.01)
        gevent.sleep(0.25)  # past both limits: nothing may be thrown now
        return "untouched"

    assert _in_greenlet(run) == "untouched"


def test_a_soft_limit_at_or_past_the_hard_one_is_never_raised() -> None:
    limits = TimeLimits(soft=0.2, hard=0.1)
    assert limits.soft is None and limits.hard == 0.1
