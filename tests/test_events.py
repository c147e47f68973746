"""Events: Celery's names and fields from `zcell worker` processes, published only
while someone subscribes; ``-E`` and ``enable_events``/``disable_events``;
zcell's actor and node events; the in-memory state model.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import zcell_test_tasks as t
from conftest import SLOW, start_zcell_worker, unique_cluster, wait_until
from zcell_test_actors import Echo

from zcell.monitor import EventStream, State

COMMON = {"type", "hostname", "timestamp", "clock", "pid"}


def _worker_app(procs: Any, task_app: Any, *extra: str, **conf: Any) -> tuple[Any, Any]:
    cluster = unique_cluster()
    proc, inbox = start_zcell_worker(procs, "w1", cluster, *extra)
    app = task_app(cluster=cluster, peers=[inbox], **conf)
    wait_until(lambda: app.node.actors("zcell.queue.celery"), 10 * SLOW, "the consumer")
    return app, proc


def _until(stream: Any, done: Any, timeout: float = 10 * SLOW) -> list[dict[str, Any]]:
    """Events from ``stream`` until ``done(event)`` (bounded)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = stream.next(0.2)
        if event is not None:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"no such event within {timeout}s; saw {[e['type'] for e in seen]}")


def _of(events: list[dict[str, Any]], task_id: str) -> dict[str, dict[str, Any]]:
    return {e["type"]: e for e in events if e.get("uuid") == task_id}


def _ready(stream: Any) -> None:
    """Wait until the worker's first heartbeat came: the subscription is in place."""
    _until(stream, lambda e: e["type"] == "worker-heartbeat" and e["hostname"] == "w1")


def test_a_tasks_whole_life_arrives_with_celerys_names_and_fields(procs, task_app, tmp_path):
    app, _ = _worker_app(procs, task_app, "-E", task_send_sent_event=True)
    try:
        with app.events() as stream:
            _ready(stream)
            ok = t.add.delay(2, 3)
            assert ok.get(timeout=10 * SLOW) == 5
            life = _of(_until(stream, lambda e: e["type"] == "task-succeeded"), ok.id)
            assert list(life) == ["task-sent", "task-received", "task-started", "task-succeeded"]
            for event in life.values():
                assert COMMON <= set(event) and event["pid"] > 0 and event["clock"] > 0
            assert life["task-sent"]["name"] == "zcell_test_tasks.add"
            assert life["task-sent"]["routing_key"] == "celery"
            assert life["task-received"]["hostname"] == "w1"
            assert life["task-received"]["args"] == "[2, 3]"
            succeeded = life["task-succeeded"]
            assert succeeded["result"] == "5" and succeeded["runtime"] >= 0

            bad = t.fail.delay("TypeError")
            failed = _of(_until(stream, lambda e: e["type"] == "task-failed"), bad.id)
            assert "TypeError" in failed["task-failed"]["exception"]
            assert "Traceback" in failed["task-failed"]["traceback"]

            flaky = t.flaky.delay(str(tmp_path / "flaky"))
            retried = _until(stream, lambda e: e["type"] == "task-retried")
            assert _of(retried, flaky.id)["task-retried"]["exception"]
            flaky.get(timeout=10 * SLOW)

            long = t.mark.delay(str(tmp_path / "runs"), 30)
            _until(stream, lambda e: e["type"] == "task-started" and e["uuid"] == long.id)
            app.control.revoke(long.id, terminate=True)
            revoked = _until(stream, lambda e: e["type"] == "task-revoked")
            assert _of(revoked, long.id)["task-revoked"]["terminated"] is True
    finally:
        app.conf.task_send_sent_event = False


def test_no_events_are_published_while_nobody_subscribes(procs, task_app):
    app, _ = _worker_app(procs, task_app, "-E")
    for i in range(5):
        assert t.add.delay(i, i).get(timeout=10 * SLOW) == 2 * i
    stats = app.control.inspect(timeout=3 * SLOW).stats()["w1"]
    assert stats["events"] == {"enabled": True, "subscribers": 0}
    assert stats["statistics"]["events_published"] == 0
    with app.events(types=["task-succeeded"]) as stream:
        done = t.add.delay(1, 1)
        _until(stream, lambda e: e["type"] == "task-succeeded" and e["uuid"] == done.id)
    published = app.control.inspect(timeout=3 * SLOW).stats()["w1"]["statistics"]
    assert published["events_published"] > 0


def test_events_are_off_by_default_and_switched_by_control(procs, task_app):
    app, _ = _worker_app(procs, task_app)
    with app.events(types=["task-succeeded"]) as stream:
        wait_until(
            lambda: app.control.inspect(timeout=3 * SLOW).stats()["w1"]["events"]["subscribers"],
            10 * SLOW,
            "the subscription",
        )
        t.add.delay(1, 2).get(timeout=10 * SLOW)
        assert stream.next(0.5) is None  # off: nothing
        assert app.control.enable_events(timeout=3 * SLOW) == {"w1": {"ok": "task events enabled"}}
        on = t.add.delay(2, 2)
        on.get(timeout=10 * SLOW)
        _until(stream, lambda e: e.get("uuid") == on.id)
        app.control.disable_events(timeout=3 * SLOW)
        t.add.delay(3, 3).get(timeout=10 * SLOW)
        assert stream.next(0.5) is None


def test_actor_events_and_node_down_from_a_plain_actor_mesh(mesh):
    a, b, c = mesh(3, actors=[Echo])
    for node in (a, b):
        node.monitor.events.enable()
    with EventStream(c, types=["actor-spawned", "actor-stopped", "node-down"]) as stream:
        wait_until(lambda: a.monitor.events.count() and b.monitor.events.count(), 5 * SLOW, "subs")
        ref = c.spawn(Echo, on="n1")
        spawned = _until(stream, lambda e: e["type"] == "actor-spawned")[-1]
        assert (spawned["actor_id"], spawned["hostname"]) == (ref.id, "n1")
        c.kill(ref)
        stopped = _until(stream, lambda e: e["type"] == "actor-stopped")[-1]
        assert stopped["actor_id"] == ref.id
        b.stop(timeout=0.5)
        down = _until(stream, lambda e: e["type"] == "node-down")[-1]
        assert (down["hostname"], down["node"]) == ("n0", "n1")


def test_a_subscriber_whose_node_left_is_dropped(mesh):
    a, b = mesh(2)
    a.monitor.events.enable()
    stream = EventStream(b).open()
    wait_until(lambda: a.monitor.events.count() == 1, 5 * SLOW, "the subscription")
    b.stop(timeout=0.5)
    stream.close()
    wait_until(lambda: a.monitor.events.count() == 0, 10 * SLOW, "the subscriber dropped")


def test_the_state_model_folds_events_into_workers_and_bounded_tasks():
    state = State(max_tasks=2)
    now = time.time()
    state.event({"type": "worker-heartbeat", "hostname": "w1", "timestamp": now, "active": 1,
                 "processed": 7, "loadavg": [0.1, 0.2, 0.3], "freq": 2.0, "pid": 9})  # fmt: skip
    for i, kind in enumerate(["task-received", "task-started"]):
        state.event({"type": kind, "uuid": "a", "hostname": "w1", "name": "add",
                     "timestamp": now + i})  # fmt: skip
    assert [x.uuid for x in state.running()] == ["a"]
    state.event({"type": "task-succeeded", "uuid": "a", "hostname": "w1", "result": "3",
                 "runtime": 0.5, "timestamp": now + 2})  # fmt: skip
    task = state.tasks["a"]
    assert (task.state, task.name, task.result, task.runtime) == ("SUCCESS", "add", "3", 0.5)
    assert state.running() == []
    state.event({"type": "task-sent", "uuid": "a", "timestamp": now + 3})  # late: no undo
    assert state.tasks["a"].state == "SUCCESS"
    for uuid in ("b", "c"):
        state.event({"type": "task-received", "uuid": uuid, "hostname": "w1", "timestamp": now})
    assert list(state.tasks) == ["b", "c"]  # bounded: the oldest went
    worker = state.workers["w1"]
    assert (worker.active, worker.processed, worker.alive(now + 1)) == (1, 7, True)
    assert worker.alive(now + 60) is False
    state.event({"type": "node-down", "node": "w1", "hostname": "w2", "timestamp": now})
    assert state.workers["w1"].online is False
    assert state.rate(now + 3) > 0


def test_a_signal_stopped_worker_goes_offline_in_the_stream(procs, task_app):
    app, proc = _worker_app(procs, task_app, "-E")
    with app.events(types=["worker-heartbeat", "worker-offline"]) as stream:
        _ready(stream)
        proc.send_signal(signal.SIGTERM)
        _until(stream, lambda e: e["type"] == "worker-offline" and e["hostname"] == "w1")
