"""The dashboard's JSON API (Flower's shape), actions, /metrics, its memory cap and
basic auth, over plain HTTP against `zcell worker` and `zcell dashboard` processes."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from conftest import SLOW, run_cli, wait_until
from dash_support import Dash

ADD = "zcell_test_tasks.add"
SLEEPY = "zcell_test_tasks.sleepy"


def apply(dash: Dash, name: str, args: list[Any], **options: Any) -> str:
    """Send a task through ``POST /api/task/async-apply/<name>``; its id."""
    body = {"args": args, "kwargs": {}, "options": options}
    reply = dash.json(f"/api/task/async-apply/{name}", "POST", body)
    assert reply["state"] == "PENDING"
    return str(reply["task-id"])


def state_of(dash: Dash, task_id: str) -> str | None:
    status, text = dash.request(f"/api/task/info/{task_id}")
    return json.loads(text)["state"] if status == 200 else None


def test_workers_tasks_and_task_info(dashboard: Any) -> None:
    dash = dashboard(["w1"])
    wait_until(lambda: dash.json("/api/workers").get("w1", {}).get("status"), 5, "w1 listed")
    worker = dash.json("/api/workers")["w1"]
    assert worker["queues"] == ["celery"] and worker["concurrency"] >= 1
    ok = apply(dash, ADD, [2, 3])
    bad = apply(dash, "zcell_test_tasks.fail", ["TypeError"])
    wait_until(lambda: state_of(dash, ok) == "SUCCESS", 5, "add succeeded")
    wait_until(lambda: state_of(dash, bad) == "FAILURE", 5, "fail failed")
    info = dash.json(f"/api/task/info/{ok}")
    assert (info["name"], info["result"], info["worker"]) == (ADD, "5", "w1")
    assert info["received"] and info["started"] and info["runtime"] is not None
    failed = dash.json(f"/api/task/info/{bad}")
    assert "TypeError" in failed["exception"] and "Traceback" in failed["traceback"]
    assert list(dash.json("/api/tasks?state=SUCCESS")) == [ok]
    assert list(dash.json("/api/tasks?state=FAILURE")) == [bad]
    assert list(dash.json("/api/tasks?name=add")) == [ok]
    assert list(dash.json("/api/tasks?worker=w1&limit=1")) == [bad]  # newest first
    assert dash.json("/api/tasks?worker=nobody") == {}
    status, text = dash.request("/api/task/info/no-such-task")
    assert status == 404 and "Unknown task" in text
    assert dash.request("/api/tasks?limit=many")[0] == 400
    wait_until(lambda: dash.json("/api/workers")["w1"]["processed"] == 2, 5, "counts")
    assert dash.json("/api/workers")["w1"]["failed"] == 1


def test_apply_and_revoke_with_terminate(dashboard: Any) -> None:
    dash = dashboard(["w1"])
    running = apply(dash, SLEEPY, [30])
    wait_until(lambda: state_of(dash, running) == "STARTED", 5, "sleepy started")
    reply = dash.json(f"/api/task/revoke/{running}?terminate=true", "POST")
    assert running in reply["message"]
    wait_until(lambda: state_of(dash, running) == "REVOKED", 5 * SLOW, "sleepy revoked")
    assert dash.request(f"/api/task/async-apply/{ADD}", "POST", ["not", "an object"])[0] == 400
    status, text = dash.request(f"/api/task/async-apply/{ADD}", "POST", {"options": {"nope": 1}})
    assert status == 400 and "unknown apply_async option" in text


def test_worker_actions(dashboard: Any) -> None:
    dash = dashboard(["w1"], worker_args=("-c", "2"))
    wait_until(lambda: dash.json("/api/workers").get("w1", {}).get("concurrency") == 2, 5, "pool")
    dash.json("/api/worker/pool/grow/w1?n=2", "POST")
    wait_until(lambda: dash.json("/api/workers")["w1"]["concurrency"] == 4, 5, "pool grown")
    dash.json("/api/worker/pool/shrink/w1?n=1", "POST")
    wait_until(lambda: dash.json("/api/workers")["w1"]["concurrency"] == 3, 5, "pool shrunk")
    dash.json("/api/worker/queue/add-consumer/w1?queue=hipri", "POST")
    wait_until(lambda: "hipri" in dash.json("/api/workers")["w1"]["queues"], 5, "hipri added")
    dash.json("/api/worker/queue/cancel-consumer/w1?queue=hipri", "POST")
    wait_until(lambda: "hipri" not in dash.json("/api/workers")["w1"]["queues"], 5, "cancelled")
    assert dash.request("/api/worker/pool/grow/nobody", "POST")[0] == 404
    assert dash.request("/api/worker/queue/add-consumer/w1", "POST")[0] == 400
    dash.json("/api/worker/shutdown/w1", "POST")
    assert dash.workers["w1"].wait(10 * SLOW) == 0
    wait_until(lambda: not dash.json("/api/workers")["w1"]["status"], 5, "w1 offline")


def test_metrics_use_flowers_names(dashboard: Any) -> None:
    dash = dashboard(["w1"])
    task = apply(dash, ADD, [1, 1])
    wait_until(lambda: state_of(dash, task) == "SUCCESS", 5, "add succeeded")
    wait_until(
        lambda: 'flower_worker_online{worker="w1"} 1' in dash.request("/metrics")[1], 5, "up"
    )
    text = dash.request("/metrics")[1]
    assert f'flower_events_total{{worker="w1",type="task-succeeded",task="{ADD}"}} 1' in text
    assert f'flower_task_runtime_seconds_count{{worker="w1",task="{ADD}"}} 1' in text
    assert f'flower_task_runtime_seconds_bucket{{worker="w1",task="{ADD}",le="+Inf"}} 1' in text
    assert 'flower_worker_number_of_currently_executing_tasks{worker="w1"} 0' in text
    assert "# TYPE flower_task_runtime_seconds histogram" in text


def test_remembered_tasks_are_capped_oldest_first(dashboard: Any) -> None:
    dash = dashboard(["w1"], "--max-tasks", "5")
    ids = []
    for i in range(12):  # one at a time: the order they are last heard of is known
        ids.append(apply(dash, ADD, [i, i]))
        wait_until(lambda: state_of(dash, ids[-1]) == "SUCCESS", 5, f"task {i} done")
    kept = dash.json("/api/tasks")
    assert set(kept) == set(ids[-5:])
    assert state_of(dash, ids[0]) is None  # forgotten: 404
    assert "zcell_dashboard_max_tasks 5" in dash.request("/metrics")[1]


def test_basic_auth_refuses_wrong_credentials(dashboard: Any) -> None:
    dash = dashboard(["w1"], "--basic-auth", "admin:s3cret")
    for path in ("/workers", "/api/workers", "/metrics", "/api/events"):
        assert dash.request(path)[0] == 401
        assert dash.request(path, auth=("admin", "wrong"))[0] == 401
    assert dash.request("/api/task/revoke/x", "POST", auth=("root", "s3cret"))[0] == 401
    assert dash.request("/api/workers", auth=("admin", "s3cret"))[0] == 200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-tasks", "0"], "--max-tasks must be at least 1"),
        (["--basic-auth", "nocolon"], "--basic-auth takes USER:PASSWORD"),
    ],
)
def test_bad_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "dashboard", "--no-mdns", "--peer", "tcp://127.0.0.1:9", *argv)
    assert code == 2 and message in err


def test_an_offline_worker_is_greyed_then_forgotten(dashboard: Any) -> None:
    # Greyed for 3 s: long enough that a slow poll of the API does not miss it.
    dash = dashboard(["w1", "w2"], "--forget-offline", "3", worker_args=("--heartbeat", "0.3"))
    beating = lambda: [w["heartbeat"] for w in dash.json("/api/workers").values()]  # noqa: E731
    wait_until(lambda: len(beating()) == 2 and all(beating()), 10, "both workers beating")
    dash.workers["w2"].kill(signal.SIGKILL)
    # Grey when its event heartbeats stop or the mesh declares it down, whichever
    # comes first (both take a few seconds).
    wait_until(lambda: dash.json("/api/workers").get("w2", {}).get("status") is False, 10, "grey")
    wait_until(lambda: "w2" not in dash.json("/api/workers"), 8, "w2 forgotten")
    assert dash.json("/api/workers")["w1"]["status"] is True
