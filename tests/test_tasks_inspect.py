"""Inspect and control of `zcell worker` processes: ``app.control`` in Python.

Each inspect operation (active with runtimes, scheduled, reserved, revoked,
registered, stats, active_queues, query_task, actors) and each control operation
(rate_limit, time_limit, pool_grow/shrink, add/cancel_consumer, shutdown), with
``destination``; a worker that is stopped (slow) or killed is named, not left out.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import zcell_test_tasks as t
from conftest import SLOW, start_zcell_worker, unique_cluster, wait_until

T = 3 * SLOW  # the replies' timeout in these tests


def _runs(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _workers(procs: Any, task_app: Any, *names: str, extra: tuple[str, ...] = ()) -> Any:
    """Worker processes ``names`` and the app pointed at them (all consumers seen)."""
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, names[0], cluster, *extra)
    for name in names[1:]:
        start_zcell_worker(procs, name, cluster, *extra, peer=inbox)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(
        lambda: len(app.node.actors("zcell.queue.celery")) == len(names), 10 * SLOW, "consumers"
    )
    return app


def test_inspect_active_lists_a_running_task_with_its_runtime(procs, task_app, tmp_path):
    app = _workers(procs, task_app, "w1")
    path = tmp_path / "runs"
    result = t.mark.delay(str(path), 3 * SLOW)
    wait_until(lambda: _runs(path), 10 * SLOW, "the task to start")
    active = app.control.inspect(timeout=T).active()
    assert list(active) == ["w1"] and active.missing == []  # workers only: not this client
    tasks = [e for e in active["w1"] if e["kind"] == "task"]
    assert [(e["id"], e["name"]) for e in tasks] == [(result.id, "zcell_test_tasks.mark")]
    assert tasks[0]["runtime"] > 0 and tasks[0]["hostname"] == "w1"
    assert tasks[0]["args"] == [str(path), 3 * SLOW] and tasks[0]["acknowledged"] is True
    handlers = [e for e in active["w1"] if e["kind"] == "actor"]
    assert any(e["type"] == "zcell.queue.celery" and e["method"] == "run" for e in handlers)
    (known,) = app.control.inspect(timeout=T).query_task(result.id)["w1"].items()
    assert known[0] == result.id and known[1][0] == "active"
    app.control.revoke(result.id, terminate=True)


def test_scheduled_reserved_revoked_registered_queues_stats_and_actors(procs, task_app, tmp_path):
    app = _workers(procs, task_app, "w1", extra=("-c", "1"))
    inspect = app.control.inspect(timeout=T)
    path = tmp_path / "runs"
    later = t.add.apply_async((1, 2), countdown=60)
    # Held for its ETA, then, the only slot taken, held waiting for it: reserved.
    waiting = t.add.apply_async((2, 2), countdown=0.5)
    wait_until(lambda: waiting.state == "RECEIVED", 5 * SLOW, "w1 to hold it")
    running = t.mark.delay(str(path), 3 * SLOW)
    wait_until(lambda: _runs(path), 10 * SLOW, "the task to start")
    wait_until(lambda: inspect.reserved()["w1"], 5 * SLOW, "a reserved task")
    assert [r["id"] for r in inspect.reserved()["w1"]] == [waiting.id]
    assert [(s["request"]["id"], s["eta"] > 0) for s in inspect.scheduled()["w1"]] == [
        (later.id, True)
    ]
    app.control.revoke(later.id)
    assert later.id in inspect.revoked()["w1"]
    assert {"zcell_test_tasks.add", "zcell_test_tasks.mark"} <= set(inspect.registered()["w1"])
    assert [q["name"] for q in inspect.active_queues()["w1"]] == ["celery"]
    stats = inspect.stats()["w1"]
    assert stats["pool"]["max-concurrency"] == 1 and stats["statistics"]["members"] >= 2
    types = {a["type"] for a in inspect.actors()["w1"]}
    assert {"zcell.tasks.agent", "zcell.queue.celery"} <= types
    assert running.get(timeout=10 * SLOW) is None and waiting.get(timeout=10 * SLOW) == 4
    assert inspect.stats()["w1"]["total"]["zcell_test_tasks.add"] >= 1


def test_control_limits_pool_and_consumers_change_the_worker(procs, task_app):
    app = _workers(procs, task_app, "w1", extra=("-c", "2"))
    control = app.control
    ok = control.rate_limit("zcell_test_tasks.add", "10/s", timeout=T)
    assert "ok" in ok["w1"]
    assert "error" in control.rate_limit("nope.task", "1/s", timeout=T)["w1"]
    assert "error" in control.rate_limit("zcell_test_tasks.add", "fast", timeout=T)["w1"]
    assert "ok" in control.time_limit("zcell_test_tasks.add", soft=5, hard=10, timeout=T)["w1"]
    assert control.inspect(timeout=T).stats()["w1"]["overrides"] == {
        "zcell_test_tasks.add": {"rate_limit": "10/s", "soft_time_limit": 5, "time_limit": 10}
    }
    assert "concurrency 5" in control.pool_grow(3, timeout=T)["w1"]["ok"]
    assert "concurrency 4" in control.pool_shrink(1, timeout=T)["w1"]["ok"]
    assert control.inspect(timeout=T).stats()["w1"]["pool"]["max-concurrency"] == 4
    assert "ok" in control.add_consumer("extra", timeout=T)["w1"]
    queues = control.inspect(timeout=T).active_queues()["w1"]
    assert sorted(q["name"] for q in queues) == ["celery", "extra"]
    assert t.add.apply_async((5, 5), queue="extra").get(timeout=10 * SLOW) == 10
    assert "ok" in control.cancel_consumer("extra", timeout=T)["w1"]
    wait_until(lambda: not app.node.actors("zcell.queue.extra"), 5 * SLOW, "consumer gone")
    assert [q["name"] for q in control.inspect(timeout=T).active_queues()["w1"]] == ["celery"]
    assert "error" in control.cancel_consumer("extra", timeout=T)["w1"]


def test_destination_asks_only_the_named_workers(procs, task_app):
    app = _workers(procs, task_app, "w1", "w2")
    assert set(app.control.ping(timeout=T)) == {"w1", "w2"}
    only = app.control.inspect(destination=["w2"], timeout=T).registered()
    assert list(only) == ["w2"] and only.missing == []
    assert list(app.control.ping(destination="w1", timeout=T)) == ["w1"]


def test_a_stopped_worker_is_named_within_the_timeout_and_a_killed_one_when_asked(procs, task_app):
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster)
    w2, _ = start_zcell_worker(procs, "w2", cluster, peer=inbox)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: len(app.node.actors("zcell.queue.celery")) == 2, 10 * SLOW, "consumers")
    w2.kill(signal.SIGSTOP)  # alive but silent: too slow to answer
    try:
        replies = app.control.inspect(timeout=1.0 * SLOW).ping()  # < the ~3 s to "down"
        assert dict(replies) == {"w1": {"ok": "pong"}} and replies.missing == ["w2"]
    finally:
        w2.kill(signal.SIGCONT)
    w2.kill(signal.SIGKILL)
    wait_until(lambda: len(app.node.nodes()) == 2, 15 * SLOW, "w2 declared down")
    replies = app.control.ping(destination="w1,w2", timeout=T)  # w2 is named at once
    assert list(replies) == ["w1"] and replies.missing == ["w2"]


def test_shutdown_stops_the_named_worker_process_gracefully(procs, task_app):
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster)
    w2, _ = start_zcell_worker(procs, "w2", cluster, peer=inbox)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: len(app.node.actors("zcell.queue.celery")) == 2, 10 * SLOW, "consumers")
    assert app.control.shutdown(destination="w2", timeout=T) == {"w2": {"ok": "shutting down"}}
    assert w2.wait(10 * SLOW) == 0
    assert list(app.control.ping(timeout=T)) == ["w1"]
