"""The canvas against real `zcell worker` processes, where a process matters: a
worker SIGKILLed under a chain (with and without acks_late), a chord whose
submitter exits before it completes, a chord whose coordinator dies."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import zcell_test_tasks as t
from conftest import SLOW, run_script, start_zcell_worker, unique_cluster, wait_until
from test_tasks_workers import _runs, _two_workers

from zcell import ChordError, WorkerLostError, chord
from zcell.tasks.runtime import AGENT_TYPE, Runtime, runtime_of

T = 10 * SLOW


def test_a_worker_killed_under_a_chain_fails_the_chain_with_worker_lost(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    workers = _two_workers(procs, task_app)
    path = tmp_path / "runs"
    res = (t.mark.si(str(path), 30, 1) | t.add.si(1, 1) | t.add.s(1))()
    wait_until(lambda: _runs(path), T, "the chain's first task to start")
    (ran_on,) = _runs(path)
    workers[ran_on].kill(signal.SIGKILL)
    with pytest.raises(WorkerLostError, match="acks_late"):
        res.get(timeout=T)
    assert res.parent is not None and res.parent.state == "FAILURE"


def test_a_chain_of_acks_late_tasks_finishes_when_its_worker_is_killed(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    workers = _two_workers(procs, task_app)
    path = tmp_path / "runs"
    res = (t.mark_late.si(str(path), 1.5) | t.add.si(20, 22) | t.add.s(0))()
    wait_until(lambda: _runs(path), T, "the chain's first task to start")
    (first,) = _runs(path)
    workers[first].kill(signal.SIGKILL)
    assert res.get(timeout=15 * SLOW) == 42
    assert _runs(path) == [first, "w2" if first == "w1" else "w1"]


def test_a_chain_whose_next_task_died_with_the_worker_that_sent_it_fails_instead_of_hanging(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    # A chain's next task is sent by the worker that ran the one before: waiting
    # there for a worker of its queue (none yet), it dies with that worker, and no
    # submitter is left to say so.
    second = _lose_the_chains_next_step(procs, task_app, tmp_path)
    assert second.state == "FAILURE"
    assert t.app.node.statistics()["canvas_steps_lost"] == 2  # the lost task and the last


def test_a_chain_step_lost_with_a_worker_whose_revokes_were_not_pulled_still_fails(
    procs: Any, task_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker's leaving was counted only if this program had pulled the revokes
    # its agent remembers: a pull that failed, or was on its way when the worker
    # died, hid the departure, and the chain's lost step was waited for for ever
    # (seen under load). Here every pull fails.
    def failed_pull(self: Runtime, agent: Any) -> None:
        self.pulled.discard(agent.id)  # what a pull that fails does

    monkeypatch.setattr(Runtime, "_pull_from", failed_pull)
    _lose_the_chains_next_step(procs, task_app, tmp_path)


def _lose_the_chains_next_step(procs: Any, task_app: Any, tmp_path: Path) -> Any:
    """A chain of three on two workers whose second step waits, at the worker of
    the first, for a worker of its queue; that worker is killed: the chain must
    fail with ``WorkerLostError`` naming the step and the worker. Returns the
    second step's result."""
    workers = _two_workers(procs, task_app)
    path = tmp_path / "runs"
    res = (t.mark.si(str(path)) | t.add.si(1, 1).set(queue="later") | t.add.s(1))()
    second = res.parent
    assert second is not None and second.parent is not None
    wait_until(second.parent.ready, T, "the chain's first task to end")
    (ran_on,) = _runs(path)
    workers[ran_on].kill(signal.SIGKILL)
    with pytest.raises(WorkerLostError, match=f"{second.id}.*{ran_on}"):
        res.get(timeout=T)
    return second


def _w1_for_bodies(procs: Any, task_app: Any) -> tuple[str, Any, str]:
    """w1 consuming queue ``bodies`` only, w2 the default queue, the tests' app
    meshed with them and seeing w1's task agent (a chord of a ``bodies`` body is
    coordinated there); returns (cluster, w1, w2's inbox)."""
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster, "-Q", "bodies")
    _, w2_inbox = start_zcell_worker(procs, "w2", cluster, peer=inbox)
    app = task_app(cluster=cluster, peers=[inbox])
    for queue in ("celery", "bodies"):
        name = f"zcell.queue.{queue}"
        wait_until(lambda n=name: len(app.node.actors(n)) == 1, T, f"a {queue} consumer")
    (body_worker,) = {ref.node_id for ref in app.node.actors("zcell.queue.bodies")}
    listed = lambda: body_worker in {a.node_id for a in app.node.actors(AGENT_TYPE)}  # noqa: E731
    wait_until(listed, T, "w1's task agent")
    return cluster, w1, w2_inbox


def test_a_chord_applied_while_its_coordinator_is_dead_but_listed_goes_to_another(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    # The only worker of the body's queue was killed and is not declared down yet:
    # opening the chord there fails with NodeDown. Nothing was opened or sent, so
    # the chord goes to another coordinator (none left: this program) instead.
    cluster, w1, w2_inbox = _w1_for_bodies(procs, task_app)
    w1.kill(signal.SIGKILL)
    body = t.xsum.s().set(queue="bodies")
    first_id = body.freeze()
    res = chord([t.add.s(i, i) for i in range(3)], body)()
    start_zcell_worker(procs, "w3", cluster, "-Q", "bodies", peer=w2_inbox)
    assert res.get(timeout=T) == 6
    # w1 may only have been stopped with the chord open: the body it would send, under
    # its first id, is revoked; the body that ran had another.
    runtime = runtime_of(t.app.node)
    assert runtime is not None and res.id != first_id and first_id in runtime.revoked


def test_a_chord_body_lost_with_its_coordinator_after_the_chord_completed_fails(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    # The coordinator completed the chord and sent the body (which waits there for
    # its ETA), then died: no worker ever held the body, so it fails instead of
    # being waited for.
    _, w1, _ = _w1_for_bodies(procs, task_app)
    body = t.xsum.s().set(queue="bodies", countdown=60)
    res = chord([t.add.s(i, i) for i in range(3)], body)()
    header = res.parent
    assert header is not None
    wait_until(header.ready, T, "the header")
    time.sleep(0.5)  # the coordinator sends the body, and says the chord completed
    w1.kill(signal.SIGKILL)
    with pytest.raises(WorkerLostError, match=res.id):
        res.get(timeout=T)


SUBMIT_AND_EXIT = """
import zcell_test_tasks as t
from zcell import chord

t.app.conf.update(discovery="static", cluster={cluster!r}, peers=[{inbox!r}])
res = chord((t.slow_add.s(i, i, seconds=1.5) for i in range(4)), t.xsum.s())()
print(res.id, flush=True)
t.app.close()
"""


def test_a_chord_completes_after_its_submitter_exited(
    procs: Any, task_app: Any, tmp_path: Path
) -> None:
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster, "-c", "4")
    script = tmp_path / "submit.py"
    script.write_text(SUBMIT_AND_EXIT.format(cluster=cluster, inbox=inbox))
    child = run_script(script)
    assert child.returncode == 0, child.stderr
    body_id = child.stdout.split()[-1]
    app = task_app(cluster=cluster, peers=[inbox])
    assert app.AsyncResult(body_id).get(timeout=20 * SLOW) == 12


def test_a_chord_whose_coordinator_dies_fails_with_chord_error_instead_of_hanging(
    procs: Any, task_app: Any
) -> None:
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster)  # the body's queue: coordinates
    start_zcell_worker(procs, "w2", cluster, "-Q", "slow", peer=inbox)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: app.node.actors("zcell.queue.slow"), T, "the slow queue's consumer")
    res = chord([t.slow_add.s(1, 1, seconds=30).set(queue="slow")], t.xsum.s())()
    wait_until(
        lambda: res.parent is not None and res.parent.results[0].state != "PENDING",
        T,
        "w2 to take the member",
    )
    w1.kill(signal.SIGKILL)
    with pytest.raises(ChordError, match="coordinator"):
        res.get(timeout=T + 10)  # the coordinator is given 10 s to come back


def test_a_chord_whose_coordinator_was_paused_until_thought_dead_completes(
    procs: Any, task_app: Any
) -> None:
    # Stopped a while (SIGSTOP, a long GC, a stalled VM), the coordinator is taken
    # for dead, but comes back with the chord open: the chord completes.
    cluster = unique_cluster()
    w1, inbox = start_zcell_worker(procs, "w1", cluster)  # the body's queue: coordinates
    start_zcell_worker(procs, "w2", cluster, "-Q", "slow", "-c", "4", peer=inbox)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: app.node.actors("zcell.queue.slow"), T, "the slow queue's consumer")
    header = [t.slow_add.s(i, i, seconds=1).set(queue="slow") for i in range(4)]
    res = chord(header, t.xsum.s())()
    w1.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: "w1" not in {n["name"] for n in app.node.nodes()}, T, "w1 taken for dead"
        )
    finally:
        w1.send_signal(signal.SIGCONT)
    assert res.get(timeout=2 * T) == 12
