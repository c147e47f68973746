"""``zcell inspect``, ``zcell control`` and ``zcell events`` against `zcell worker`
processes: replies merged per node, ``--destination``, ``--json``, a node that does
not answer named (exit 1), event lines, and the live view in a pseudo-terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pexpect
import zcell_test_tasks as t
from conftest import ROOT, SLOW, child_env, run_cli, start_zcell_worker, unique_cluster, wait_until


def _mesh(procs: Any, task_app: Any, *extra: str) -> tuple[Any, list[str]]:
    """A worker ``w1`` and the app; returns (app, the mesh options for the CLI)."""
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster, *extra)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: app.node.actors("zcell.queue.celery"), 10 * SLOW, "the consumer")
    return app, ["--cluster", cluster, "--no-mdns", "--peer", inbox]


def test_inspect_prints_each_nodes_reply_as_json_or_text(procs, task_app, capsys):
    _, opts = _mesh(procs, task_app)
    code, out, err = run_cli(capsys, "inspect", "registered", "--json", "--timeout", "3", *opts)
    assert code == 0, (out, err)
    reply = json.loads(out)
    assert "zcell_test_tasks.add" in reply["replies"]["w1"] and reply["missing"] == []
    code, out, _ = run_cli(capsys, "-A", "zcell_test_tasks", "inspect", "active_queues", *opts)
    assert code == 0 and out.startswith("-> w1: OK\n") and '"name": "celery"' in out
    code, out, _ = run_cli(capsys, "inspect", "actors", "--destination", "w1", *opts)
    assert code == 0 and "zcell.queue.celery" in out


def test_a_destination_that_does_not_answer_is_named_and_fails_the_command(procs, task_app, capsys):
    _, opts = _mesh(procs, task_app)
    code, out, _ = run_cli(capsys, "inspect", "ping", "-d", "w1,ghost", "--timeout", "1", *opts)
    assert code == 1
    assert "-> w1: OK" in out and "-> ghost: no reply within 1s" in out


def test_control_commands_change_the_worker(procs, task_app, capsys):
    app, opts = _mesh(procs, task_app)
    code, out, _ = run_cli(capsys, "control", "pool_grow", "2", "--json", *opts)
    assert code == 0 and "concurrency" in json.loads(out)["replies"]["w1"]["ok"]
    code, out, _ = run_cli(
        capsys, "-A", "zcell_test_tasks", "control", "rate_limit", "zcell_test_tasks.add", "5/s",
        *opts,
    )  # fmt: skip
    assert code == 0 and "new rate limit set" in out
    code, _, err = run_cli(capsys, "control", "rate_limit", *opts)
    assert code == 2 and "missing TASK" in err
    assert run_cli(capsys, "control", "enable_events", *opts)[0] == 0
    stats = app.control.inspect(timeout=3 * SLOW).stats()["w1"]
    assert stats["events"]["enabled"] is True and stats["pool"]["max-concurrency"] > 2


def test_events_dump_prints_a_json_line_per_event(procs, task_app):
    app, opts = _mesh(procs, task_app, "-E")
    dump = procs(["zcell", "events", "--dump", "--json", "--types", "task-succeeded", *opts])
    wait_until(
        lambda: app.control.inspect(timeout=3 * SLOW).stats()["w1"]["events"]["subscribers"],
        10 * SLOW,
        "the subscription",
    )
    result = t.add.delay(20, 22)
    line = dump.wait_for_line(r"^(\{.*task-succeeded.*\})$", 10 * SLOW).group(1)
    event = json.loads(line)
    assert (event["uuid"], event["result"], event["hostname"]) == (result.id, "42", "w1")


def test_the_live_view_shows_a_running_task_in_a_terminal(procs, task_app, tmp_path: Path):
    app, opts = _mesh(procs, task_app, "-E")
    view = pexpect.spawn(
        "zcell", ["events", *opts], cwd=str(ROOT), env=child_env(), dimensions=(40, 160),
        encoding="utf-8", timeout=15 * SLOW,
    )  # fmt: skip
    try:
        view.expect("workers")
        view.expect("w1")  # its heartbeat came: subscribed
        result = t.mark.delay(str(tmp_path / "runs"), 5 * SLOW)
        view.expect("zcell_test_tasks.mark")
        view.expect(result.id[:8])
        view.sendintr()
        view.expect(pexpect.EOF)
    finally:
        view.close(force=True)
    assert view.exitstatus == 0
    app.control.revoke(result.id, terminate=True)
