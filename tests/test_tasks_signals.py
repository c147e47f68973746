"""Celery's signals on blinker: connecting as in Celery, and sending that survives receivers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import blinker
import pytest

from zcell.tasks import signals as signals_module
from zcell.tasks.signals import (
    send_safely,
    signals,
    task_failure,
    task_postrun,
    task_success,
)

CELERY_SIGNALS = {
    "before_task_publish": ["body", "exchange", "routing_key", "headers"],
    "after_task_publish": ["body", "exchange", "routing_key", "headers"],
    "task_prerun": ["task_id", "task", "args", "kwargs"],
    "task_postrun": ["task_id", "task", "args", "kwargs", "retval", "state"],
    "task_success": ["result"],
    "task_failure": ["task_id", "exception", "args", "kwargs", "traceback", "einfo"],
    "task_retry": ["request", "reason", "einfo"],
    "task_revoked": ["request", "terminated", "signum", "expired"],
    "worker_ready": [],
    "worker_shutdown": [],
}


def add(x: int, y: int) -> int:
    """The sender of the tests' task signals (Celery sends the task object)."""
    return x + y


def mul(x: int, y: int) -> int:
    """Another task, whose signals the receivers for ``add`` must not see."""
    return x * y


@pytest.fixture
def cleanup() -> Iterator[list[tuple[blinker.Signal, Any]]]:
    """Receivers the test connected, disconnected after it (the signals are module-wide)."""
    connected: list[tuple[blinker.Signal, Any]] = []
    yield connected
    for signal, receiver in connected:
        signal.disconnect(receiver)


@pytest.mark.parametrize("name", sorted(CELERY_SIGNALS))
def test_each_celery_signal_exists_and_documents_its_arguments(name: str) -> None:
    signal = getattr(signals_module, name)
    assert signals[name] is signal and signal.name == name
    assert "sender" in signal.__doc__
    for argument in CELERY_SIGNALS[name]:
        assert argument in signal.__doc__, f"{name}'s docstring lacks {argument}"


def test_the_signals_are_not_in_blinkers_process_wide_registry() -> None:
    assert blinker.signal("task_success") is not task_success


def test_a_celery_style_receiver_gets_the_sender_and_its_arguments_by_keyword(
    cleanup: list[tuple[blinker.Signal, Any]],
) -> None:
    seen: list[tuple[object, object, dict[str, Any]]] = []

    @task_success.connect
    def on_success(sender: Any = None, result: Any = None, **kwargs: Any) -> None:
        seen.append((sender, result, kwargs))

    cleanup.append((task_success, on_success))
    send_safely(task_success, add, result=4)
    assert seen == [(add, 4, {"signal": task_success})]


def test_a_receiver_connected_for_one_sender_hears_only_that_sender(
    cleanup: list[tuple[blinker.Signal, Any]],
) -> None:
    heard: list[object] = []

    def on_postrun(sender: Any = None, **kwargs: Any) -> None:
        heard.append((sender, kwargs["state"]))

    task_postrun.connect(on_postrun, sender=add)
    cleanup.append((task_postrun, on_postrun))
    send_safely(task_postrun, mul, task_id="1", state="SUCCESS")
    send_safely(task_postrun, add, task_id="2", state="FAILURE")
    assert heard == [(add, "FAILURE")]


def test_the_connect_decorator_takes_a_sender_as_in_celery(
    cleanup: list[tuple[blinker.Signal, Any]],
) -> None:
    heard: list[object] = []

    @signals_module.after_task_publish.connect(sender="proj.tasks.add")
    def on_sent(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        heard.append((sender, headers))

    cleanup.append((signals_module.after_task_publish, on_sent))
    send_safely(signals_module.after_task_publish, "proj.tasks.mul", headers={"id": "a"})
    send_safely(signals_module.after_task_publish, "proj.tasks.add", headers={"id": "b"})
    assert heard == [("proj.tasks.add", {"id": "b"})]


def test_a_receiver_that_raises_is_logged_and_the_others_still_run(
    cleanup: list[tuple[blinker.Signal, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(sender: Any = None, **kwargs: Any) -> None:
        calls.append("broken")
        raise RuntimeError("receiver bug")

    def fine(sender: Any = None, **kwargs: Any) -> str:
        calls.append("fine")
        return "ok"

    for receiver in (broken, fine):
        task_failure.connect(receiver)
        cleanup.append((task_failure, receiver))
    with caplog.at_level(logging.ERROR, logger="zcell.tasks.signals"):
        responses = send_safely(task_failure, add, task_id="1", exception=ValueError("x"))
    assert sorted(calls) == ["broken", "fine"]
    outcomes = dict(responses)
    assert isinstance(outcomes[broken], RuntimeError) and outcomes[fine] == "ok"
    [record] = caplog.records
    assert record.name == "zcell.tasks.signals" and record.exc_info is not None
    assert "task_failure" in record.getMessage() and "fix the receiver" in record.getMessage()


def test_sending_with_no_receiver_does_nothing() -> None:
    assert send_safely(signals_module.worker_shutdown, object()) == []
