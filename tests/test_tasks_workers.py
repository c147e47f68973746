"""Tasks against real `zcell worker` processes: a worker SIGKILLed before or while
it runs a task (with and without acks_late, counting the runs), results found
from another program, nested get() across workers, and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zcell_test_tasks as t
from conftest import ROOT, SLOW, child_env, start_zcell_worker, unique_cluster, wait_until

from zcell import WorkerLostError
from zcell.tasks.runtime import AGENT_TYPE


def _runs(path: Path) -> list[str]:
    """The worker names that ran a `mark` task (one line per run)."""
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def _two_workers(procs: Any, task_app: Any, *extra: str) -> dict[str, Any]:
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster, *extra)
    w2, _ = start_zcell_worker(procs, "w2", cluster, *extra, peer=inbox)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: len(app.node.actors("zcell.queue.celery")) == 2, 10, "both consumers")
    return {"w1": w1, "w2": w2}


def test_a_worker_killed_mid_task_fails_it_with_worker_lost_and_it_ran_once(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    workers = _two_workers(procs, task_app)
    path = tmp_path / "runs"
    result = t.mark.delay(str(path), 30)
    wait_until(lambda: _runs(path), 10, "the task to start")
    (ran_on,) = _runs(path)
    workers[ran_on].kill(signal.SIGKILL)
    with pytest.raises(WorkerLostError, match="acks_late"):
        result.get(timeout=10 * SLOW)
    assert result.state == "FAILURE"
    assert _runs(path) == [ran_on]


def test_with_acks_late_a_task_whose_worker_died_runs_again_on_the_other(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    workers = _two_workers(procs, task_app)
    path = tmp_path / "runs"
    result = t.mark_late.delay(str(path), 1.5)
    wait_until(lambda: _runs(path), 10, "the task to start")
    (first,) = _runs(path)
    workers[first].kill(signal.SIGKILL)
    assert result.get(timeout=15 * SLOW) == "done"
    other = "w2" if first == "w1" else "w1"
    assert _runs(path) == [first, other]
    assert result.worker == other


def _w1_holding_three(procs: Any, task_app: Any, held: Path) -> tuple[Any, Any, str, list[Any]]:
    """A worker w1 (``-c 1``) holding three ``mark`` tasks (writing to ``held``)
    for their ETA; returns w1, the app, the cluster and the three results."""
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster, "-c", "1")
    app = task_app(cluster=cluster, peers=[inbox])
    # Held for their ETA (a submitter pushes other tasks only to free slots).
    waiting = [t.mark.apply_async((str(held), 0, i), countdown=1) for i in range(3)]
    wait_until(lambda: all(r.state == "RECEIVED" for r in waiting), 10, "w1 to hold them")
    return w1, app, cluster, waiting


def test_tasks_never_started_on_a_killed_worker_run_elsewhere_exactly_once(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    blocker, held = tmp_path / "blocker", tmp_path / "held"
    w1, app, cluster, waiting = _w1_holding_three(procs, task_app, held)
    running = t.mark.delay(str(blocker), 30)
    # Started is not enough: its mark (the proof it ran on w1) must be written.
    wait_until(lambda: _runs(blocker) == ["w1"], 10, "the blocker to run on w1")
    w1.kill(signal.SIGKILL)
    with pytest.raises(WorkerLostError):
        running.get(timeout=10 * SLOW)
    start_zcell_worker(procs, "w2", cluster, peer=app.node.endpoints["inbox"])
    assert [r.get(timeout=15 * SLOW) for r in waiting] == [0, 1, 2]
    assert _runs(held) == ["w2", "w2", "w2"] and _runs(blocker) == ["w1"]


def test_tasks_held_by_a_worker_paused_until_thought_dead_run_once_elsewhere(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    # A stop long enough to be declared down (SIGSTOP: a long GC, a stalled VM) is
    # a crash to the submitter, which sends the tasks held there to another worker;
    # back, the paused worker must not run its copies, though its claims cannot
    # reach the submitter at first (each side dropped the other).
    held = tmp_path / "held"
    w1, app, cluster, waiting = _w1_holding_three(procs, task_app, held)
    w1.send_signal(signal.SIGSTOP)
    try:
        start_zcell_worker(procs, "w2", cluster, peer=app.node.endpoints["inbox"])
        assert [r.get(timeout=15 * SLOW) for r in waiting] == [0, 1, 2]
    finally:
        w1.send_signal(signal.SIGCONT)

    def w1_holds() -> Any:
        replies = app.control.inspect(destination=["w1"], timeout=1.0).stats()
        return replies.get("w1", {}).get("tasks", {}).get("held")

    wait_until(lambda: w1_holds() == 0, 20 * SLOW, "w1 back, holding none of its copies")
    assert _runs(held) == ["w2", "w2", "w2"]


def test_a_worker_back_from_a_pause_learns_the_revokes_made_meanwhile(
    procs: Any, task_app: Any
) -> None:
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: app.node.actors("zcell.queue.celery"), 10 * SLOW, "w1's consumer")
    app.control.revoke("before")
    time.sleep(1.0)  # w1 asks the submitter's agent for its revokes (every 0.2 s)
    w1.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not app.node.actors("zcell.queue.celery"), 10 * SLOW, "w1 down")
        app.control.revoke("meanwhile")  # w1 is not a member: it does not hear it
    finally:
        w1.send_signal(signal.SIGCONT)

    def revoked_at_w1() -> set[str]:
        return set(app.control.inspect(destination=["w1"], timeout=1.0).revoked().get("w1", []))

    wait_until(lambda: "meanwhile" in revoked_at_w1(), 10 * SLOW, "w1 to learn the revoke")
    assert {"before", "meanwhile"} <= revoked_at_w1()


def test_a_submitter_whose_loop_was_stuck_until_thought_dead_gets_each_outcome(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    # A loop blocked on something gevent does not see (an unpatched sleep, a lock)
    # stops its node's heartbeats (the watchdog): the peers drop the node, as they
    # drop a stopped process, and what they send it meanwhile is lost.
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster, "-c", "1")
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: app.node.actors("zcell.queue.celery"), 10 * SLOW, "w1's consumer")
    running, held = tmp_path / "running", tmp_path / "held"
    first = t.mark.delay(str(running), 2.0, "done")
    second = t.mark.apply_async((str(held), 0, 1), countdown=1)
    wait_until(lambda: _runs(running), 10 * SLOW, "the first task to start")
    app.node.submit(time.sleep, 9.0)  # the loop thread waits on nothing gevent sees
    time.sleep(0.5)
    assert [first.get(timeout=30 * SLOW), second.get(timeout=30 * SLOW)] == ["done", 1]
    assert (_runs(running), _runs(held)) == (["w1"], ["w1"])


_SUBMITTER = """
import json, sys, time
import zcell_test_tasks as t
app = t.app
app.conf.update(discovery="static", cluster=sys.argv[1], peers=[sys.argv[2]])
deadline = time.monotonic() + 20
while len(app.node.actors("zcell.queue.celery")) < int(sys.argv[4]) and time.monotonic() < deadline:
    time.sleep(0.05)
out = sys.argv[3]
running = t.mark.delay(out + "/running", 3.0, "done")
held = [t.mark.apply_async((out + "/held", 0, i), countdown=2) for i in range(3)]
ignored = t.mark.apply_async((out + "/ignored", 0, 9), countdown=2, ignore_result=True)
# A work-flow whose last step's outcome a worker pushes here while this is stopped.
# And a task whose worker asks for its retry while this is stopped.
flows = [
    (t.slow_add.si(1, 1, seconds=1) | t.add.s(1))(), t.slow_retry.delay(out + "/retried", 1.0)
] if sys.argv[5:] == ["flow"] else []
print("sent", app.node.endpoints["inbox"], flush=True)
outcomes = []
for result in [running, *held, ignored, *flows]:
    try:
        outcomes.append(result.get(timeout=30))
    except Exception as exc:
        outcomes.append(type(exc).__name__)
print("outcomes", json.dumps(outcomes), flush=True)
print("found", app.node.statistics().get("tasks_found_after_stop", 0), flush=True)
app.close(timeout=1)
"""


def test_a_submitter_paused_until_thought_dead_gets_each_outcome_of_tasks_run_once(
    procs: Any, tmp_path: Path
) -> None:
    # The submitter stopped (SIGSTOP, Ctrl-Z, a stalled VM) long enough that its
    # workers took it for dead: they ran what they held without its word, and,
    # back, it dropped them as they dropped it. Its tasks are neither lost with a
    # worker that did not die nor sent again to run twice.
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster, "-c", "1")
    start_zcell_worker(procs, "w2", cluster, "-c", "1", peer=inbox)
    submitter, _ = _submit_then_pause(procs, cluster, inbox, tmp_path, "flow")
    try:
        time.sleep(5.0)
    finally:
        submitter.send_signal(signal.SIGCONT)
    line = submitter.wait_for_line(r"^outcomes (.*)$", 40 * SLOW)
    outcomes = ["done", 0, 1, 2, None, 3, 1]  # the work-flow's, the retried task's
    assert (json.loads(line.group(1)), _counts(tmp_path)) == (outcomes, (1, 3, 1))
    assert len(_runs(tmp_path / "retried")) == 2
    # Found by asking the mesh: at least the five in flight through the pause
    # (the running task, the three held and the ignored one).
    assert int(submitter.wait_for_line(r"^found (\d+)$", 5 * SLOW).group(1)) >= 5


def test_tasks_of_a_paused_submitter_whose_worker_died_meanwhile_are_lost_with_it(
    procs: Any, tmp_path: Path
) -> None:
    # As above, but the worker died too: once the mesh is met again nobody knows
    # of those tasks, and they are lost with their worker as after any death.
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster, "-c", "1")
    submitter, its_inbox = _submit_then_pause(procs, cluster, inbox, tmp_path, "", workers=1)
    try:
        w1.kill(signal.SIGKILL)  # before the held tasks' ETA: none of them ran
        start_zcell_worker(procs, "w2", cluster, "-c", "1", peer=its_inbox)
        time.sleep(4.0)
    finally:
        submitter.send_signal(signal.SIGCONT)
    line = submitter.wait_for_line(r"^outcomes (.*)$", 40 * SLOW)
    outcomes = ["WorkerLostError", 0, 1, 2, None]
    assert (json.loads(line.group(1)), _counts(tmp_path)) == (outcomes, (1, 3, 1))
    assert _runs(tmp_path / "held") == ["w2", "w2", "w2"]


def _submit_then_pause(
    procs: Any, cluster: str, inbox: str, out: Path, flow: str, workers: int = 2
) -> tuple[Any, str]:
    """The submitter of _SUBMITTER (``flow``: "flow" to apply its work-flow too),
    stopped (SIGSTOP) half a second after it sent; and its inbox."""
    argv = [sys.executable, "-c", _SUBMITTER, cluster, inbox, str(out), str(workers), flow]
    submitter = procs(argv)
    its_inbox = submitter.wait_for_line(r"^sent (\S+)$", 25 * SLOW).group(1)
    time.sleep(0.5)
    submitter.send_signal(signal.SIGSTOP)
    return submitter, its_inbox


def _counts(out: Path) -> tuple[int, int, int]:
    """How many times the running, held and ignored tasks of _SUBMITTER ran."""
    return tuple(len(_runs(out / name)) for name in ("running", "held", "ignored"))  # type: ignore[return-value]


def test_nested_get_fan_out_completes_on_two_workers_with_two_slots_each(
    procs: Any, task_app: Any
) -> None:
    _two_workers(procs, task_app, "-c", "2")
    parents = [t.parent.delay(4) for _ in range(8)]
    assert [p.get(timeout=30 * SLOW) for p in parents] == [6] * 8


def test_two_levels_of_nested_get_complete_with_every_slot_taken(procs: Any, task_app: Any) -> None:
    """Grandparents wait on parents that wait on children: each worker also sends
    tasks to itself, and its own parents waiting there hold no place it counts."""
    _two_workers(procs, task_app, "-c", "2")
    grandparents = [t.grandparent.delay(3) for _ in range(4)]
    assert [g.get(timeout=30 * SLOW) for g in grandparents] == [3] * 4


def test_a_retry_lands_on_the_other_worker(procs: Any, task_app: Any, tmp_path: Path) -> None:
    _two_workers(procs, task_app)
    path = tmp_path / "runs"
    result = t.flaky.delay(str(path))
    last = result.get(timeout=15 * SLOW)
    first, second = _runs(path)
    assert result.retries == 1 and {first, second} == {"w1", "w2"} and last == second


def _zcell(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zcell", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * SLOW,
        env=child_env(),
    )


def test_call_and_result_commands_and_async_result_from_another_program(procs: Any) -> None:
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster)
    mesh = ["--cluster", cluster, "--no-mdns", "--peer", inbox]
    waited = _zcell("call", "zcell_test_tasks.add", "--args", "[2, 2]", "--wait", *mesh)
    assert (waited.returncode, waited.stdout.strip()) == (0, "4"), waited.stderr
    sent = _zcell("call", "zcell_test_tasks.mul", "--args", "[6, 7]", *mesh)
    task_id = sent.stdout.strip()
    assert sent.returncode == 0 and len(task_id) == 36, sent.stderr
    found = _zcell("result", task_id, "--timeout", "10", "--json", *mesh)
    assert found.returncode == 0, found.stderr
    assert '"state": "SUCCESS", "result": 42' in found.stdout
    unknown = _zcell("result", "no-such-id", *mesh)
    assert (unknown.returncode, unknown.stdout.strip()) == (0, "PENDING")
    failed = _zcell("call", "zcell_test_tasks.fail", "--args", '["TypeError"]', "--wait", *mesh)
    assert failed.returncode == 1 and "bad type" in failed.stderr


def test_a_submitter_answers_query_with_the_outcome_of_a_task_whose_result_it_holds(
    procs: Any, task_app: Any, make_node: Any
) -> None:
    # What a chord's coordinator asks when a member's report was lost with its worker.
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: app.node.actors("zcell.queue.celery"), 10 * SLOW, "the consumer")
    ok, bad = t.add.delay(2, 2), t.fail.delay("TypeError")
    assert ok.get(timeout=10 * SLOW) == 4
    with pytest.raises(TypeError):
        bad.get(timeout=10 * SLOW)
    observer = make_node("observer", cluster=cluster, peers=[inbox])

    def submitters_agent() -> list[Any]:
        return [a for a in observer.actors(AGENT_TYPE) if a.node_id == app.node.id]

    wait_until(submitters_agent, 10 * SLOW, "the submitter's task agent")
    found = submitters_agent()[0].send("query", {"ids": [ok.id, bad.id]}, timeout=10 * SLOW)
    assert (found[ok.id]["s"], found[ok.id]["v"]) == ("SUCCESS", 4)
    assert found[bad.id]["s"] == "FAILURE" and "TypeError" in found[bad.id]["e"][0]


def test_the_worker_banner_lists_app_mesh_queues_concurrency_and_tasks(procs: Any) -> None:
    cluster = unique_cluster()
    w1, _ = start_zcell_worker(procs, "w1", cluster, "-Q", "hipri,celery", "-c", "3")
    text = "\n".join(w1.lines())
    for expected in ("app:         zcell_test_tasks", f"cluster:     {cluster}",
                     "queues:      hipri, celery", "concurrency: 3", "zcell_test_tasks.add"):  # fmt: skip
        assert expected in text
    w1.kill(signal.SIGTERM)
    w1.wait_for_line("stopped", 15 * SLOW)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("no_such_module", "cannot import"), ("json", "tried json.app, json.celery")],
)
def test_a_worker_without_an_app_is_a_usage_error(spec: str, message: str) -> None:
    done = _zcell("worker", "-A", spec, "--no-mdns")
    assert done.returncode == 2 and message in done.stderr


def test_a_program_that_exits_without_close_hands_its_tasks_over_first(
    procs: Any, tmp_path: Path
) -> None:
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster, "-c", "1")
    path = tmp_path / "runs"
    script = (
        "import zcell_test_tasks as t\n"
        f"t.app.conf.update(cluster={cluster!r}, peers=[{inbox!r}])\n"
        f"for i in range(3):\n    t.mark.delay({str(path)!r}, 0.2)\n"
    )  # no close(): the exit hook flushes
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True,
        timeout=30 * SLOW, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    wait_until(lambda: len(_runs(path)) == 3, 10, "the three tasks to run")
