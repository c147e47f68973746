"""The canvas on in-process worker nodes over real sockets: the seeds' examples,
nesting, failures (ChordError, a failing chain), GroupResult, map/starmap/chunks,
revoking a work-flow by its root id, bad chord reports, a chord of 1000."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zcell_test_tasks as t
from conftest import SLOW, Workers, child_env, unique_cluster, wait_until

from zcell import (
    ChordError,
    GroupResult,
    RemoteError,
    TaskRevokedError,
    TaskTimeout,
    chain,
    chord,
    group,
    signature,
)
from zcell.tasks import followup
from zcell.tasks.agent import TaskAgent
from zcell.tasks.chord import DROPPED_PARTS
from zcell.tasks.followup import UNDELIVERED
from zcell.tasks.runtime import AGENT_TYPE, runtime_of

T = 10 * SLOW


# -- the seeds, verbatim but for the imports ---------------------------------------


def test_the_guides_chains_give_64(workers: Workers) -> None:
    workers(1)
    add, mul = t.add, t.mul
    # (4 + 4) * 8
    assert chain(add.s(4, 4) | mul.s(8))().get(timeout=T) == 64
    # (? + 4) * 8
    g = chain(add.s(4) | mul.s(8))
    assert g(4).get(timeout=T) == 64
    assert (add.s(4, 4) | mul.s(8))().get(timeout=T) == 64


def test_the_chain_steps_a_program_watches_for_strays_are_bounded(workers: Workers) -> None:
    # Each chain applied here is remembered (strays.py) until its steps end; the
    # ended ones are dropped as they pile up, not only when a node leaves.
    workers(1)
    results = [(t.add.s(i, 1) | t.add.s(1))() for i in range(2100)]
    assert [r.get(timeout=T) for r in results] == [i + 2 for i in range(2100)]
    node = t.app.node
    runtime = runtime_of(node)
    assert runtime is not None
    wait_until(lambda: len(runtime.dispatcher.strays.before) < 1024, T, "ended steps dropped")


def test_a_chain_may_repeat_one_signature_object(workers: Workers) -> None:
    """``chain(*[add.s(1)] * 9)`` holds one object nine times: each step must get its
    own id and options, as in Celery (which clones the steps)."""
    workers(1)
    step = t.add.s(1)
    assert chain(t.add.s(1, 1), *[step] * 9)().get(timeout=T) == 11
    assert chain(t.add.s(1, 1), *[step] * 9).apply_async().get(timeout=T) == 11


def test_the_guides_groups_give_their_results_in_order(workers: Workers) -> None:
    workers(2)
    add = t.add
    assert group(add.s(i, i) for i in range(10))().get(timeout=T) == [
        0, 2, 4, 6, 8, 10, 12, 14, 16, 18,
    ]  # fmt: skip
    g = group(add.s(i) for i in range(10))
    assert g(10).get(timeout=T) == [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]


def test_the_guides_chord_in_both_spellings_gives_90(workers: Workers) -> None:
    workers(2)
    add, xsum = t.add, t.xsum
    assert chord((add.s(i, i) for i in range(10)), xsum.s())().get(timeout=T) == 90
    assert (group(add.s(i, i) for i in range(10)) | xsum.s())().get(timeout=T) == 90


def test_the_intro_posts_partials_chains_and_group_of_chains(workers: Workers) -> None:
    workers(2)
    multiply = t.multiply
    promise = multiply.delay(4, 5)
    assert promise.get(timeout=T) == 20
    duplicate = multiply.s(2)
    task = chain(multiply.s(4, 5), multiply.s(2))
    assert task.delay().get(timeout=T) == 40
    task = multiply.s(4, 5) | multiply.s(2)
    assert task.delay().get(timeout=T) == 40
    task = group(
        multiply.s(4, 5) | multiply.s(2),
        multiply.s(9, 2) | multiply.s(4),
        multiply.s(9, 7) | duplicate,
    )
    assert task.delay().get(timeout=T) == [40, 72, 126]


def test_an_immutable_signature_ignores_the_previous_result_and_partial_args(
    workers: Workers,
) -> None:
    workers(1)
    multiply = t.multiply
    assert (multiply.s(4, 5) | multiply.si(2, 3))().get(timeout=T) == 6
    assert multiply.si(2, 3).delay(5).get(timeout=T) == 6
    # The post's `multiply.si(2).delay(5)`: as in Celery, 5 is ignored, so the
    # task misses an argument.
    with pytest.raises(TypeError, match="missing"):
        multiply.si(2).delay(5).get(timeout=T)


def test_a_signature_by_name_is_sent_with_the_app_that_registered_it(workers: Workers) -> None:
    workers(1)
    assert signature("zcell_test_tasks.add", args=(2, 2)).delay().get(timeout=T) == 4
    s3 = t.add.s(2, 2)
    assert s3.delay().get(timeout=T) == 4
    assert t.add.s(2).delay(8).get(timeout=T) == 10
    assert t.add.signature((2, 2), countdown=0).apply_async().get(timeout=T) == 4


# -- chains ---------------------------------------------------------------------


def test_a_chains_parent_walks_back_through_its_tasks(workers: Workers) -> None:
    workers(2)
    res = (t.add.s(4, 4) | t.mul.s(8) | t.add.s(1))()
    assert res.get(timeout=T) == 65
    assert res.parent is not None and res.parent.get(timeout=T) == 64
    assert res.parent.parent is not None and res.parent.parent.get(timeout=T) == 8
    assert res.parent.parent.parent is None
    # Every task of the chain carries the root id: the first task's.
    assert len({res.id, res.parent.id, res.parent.parent.id}) == 3


def test_a_failing_task_fails_the_rest_of_its_chain_at_once(workers: Workers) -> None:
    workers(1)
    res = (t.add.s(1, 1) | t.fail.si("TypeError") | t.add.s(1) | t.add.s(2))()
    with pytest.raises(TypeError, match="bad type"):
        res.get(timeout=T)
    assert res.state == "FAILURE"
    assert res.parent is not None and res.parent.failed()


def test_a_step_run_by_a_worker_that_has_not_met_the_submitter_yet_reaches_it(
    workers: Workers,
) -> None:
    """A chain's step is sent by the worker of the step before; the worker that runs
    it may not have met the work-flow's submitter yet (a newcomer: the news of the
    submitter is on its way). Its outcome must wait for that meeting, not be dropped
    (seen in CI: the submitter's ``get()`` timed out on a finished step)."""
    workers(1, queues=["a"])
    res = chain(t.add.s(1, 1).set(queue="a"), t.mul.s(3).set(queue="b"))()
    assert res.parent is not None and res.parent.get(timeout=T) == 2
    # The second step waits at w1 for a consumer of "b". The submitter's loop is busy
    # for a while: it answers nobody's knock, so a newcomer cannot meet it meanwhile.
    submitter = t.app.node
    submitter.submit(time.sleep, 2.0)
    (late,) = workers(1, queues=["b"])  # joins w1 only; w1 sends it the step at once
    wait_until(lambda: late.statistics().get("tasks_success"), 5, "the step to run there")
    assert submitter.id not in {n["id"] for n in late.node.nodes()}  # they have not met
    assert res.get(timeout=T) == 6


def test_an_outcome_for_a_submitter_that_is_gone_is_logged_and_counted(
    workers: Workers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    workers(1, queues=["a"])
    res = chain(t.add.s(1, 1).set(queue="a"), t.mul.s(3).set(queue="b"))()
    assert res.parent is not None and res.parent.get(timeout=T) == 2
    t.app.close(timeout=1)  # the submitter goes; its second step waits at w1
    monkeypatch.setattr(followup, "MEET_WAIT", 0.5)
    (late,) = workers(1, queues=["b"])
    wait_until(lambda: late.node.statistics().get(UNDELIVERED), 5, "the report to be given up")
    assert late.statistics()["tasks_success"] == 1
    assert "could not tell" in caplog.text and "has not joined this one within 0.5s" in caplog.text


def test_a_chain_ending_in_a_group_gives_a_group_result(workers: Workers) -> None:
    workers(2)
    res = chain(t.add.s(1, 1), group(t.mul.s(2), t.mul.s(3)))()
    assert isinstance(res, GroupResult)
    assert res.get(timeout=T) == [4, 6]


# -- nesting ----------------------------------------------------------------------


def test_nested_canvases_chains_of_chords_chords_in_chains_groups_of_groups(
    workers: Workers,
) -> None:
    workers(2)
    add, mul, xsum = t.add, t.mul, t.xsum
    # a chain of a chord: (2 + 4) * 10
    assert chain(chord([add.s(1, 1), add.s(2, 2)], xsum.s()), mul.s(10))().get(timeout=T) == 60
    # a chord in the middle of a chain (a group followed by a task), sent by a worker
    assert chain(add.s(1, 1), group(add.s(1), add.s(2)), xsum.s())().get(timeout=T) == 7
    # chains as chord header members
    assert chord([add.s(1, 1) | mul.s(2), add.s(2, 2) | mul.s(3)], xsum.s())().get(timeout=T) == 16
    # a chord as a chord header member: its body's result counts
    inner = chord([add.s(1, 1), add.s(2, 2)], xsum.s())
    assert chord([inner, add.s(10, 10)], xsum.s())().get(timeout=T) == 26
    # groups of groups
    assert group(group(add.s(1, 1), add.s(2, 2)), add.s(3, 3))().get(timeout=T) == [[2, 4], 6]


def test_a_group_directly_in_a_chord_header_is_refused_before_anything_runs(
    workers: Workers,
) -> None:
    workers(1)
    with pytest.raises(TypeError, match="chord header member"):
        chord([group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)], t.xsum.s())()


def test_a_chord_with_an_empty_header_calls_the_body_with_an_empty_list(
    workers: Workers,
) -> None:
    workers(1)
    assert chord([], t.xsum.s())().get(timeout=T) == 0


# -- chord failures ----------------------------------------------------------------


def test_a_failing_header_member_fails_the_chord_naming_it_and_calls_link_error(
    workers: Workers,
) -> None:
    workers(2)
    t.NOTED.clear()
    body = t.xsum.s()
    body.on_error(t.noted.s())
    res = chord([t.add.s(1, 1), t.fail.s("TypeError"), t.add.s(2, 2)], body)()
    with pytest.raises(ChordError, match=r"member 1 \(zcell_test_tasks.fail\[") as info:
        res.get(timeout=T)
    assert "bad type" in str(info.value)
    wait_until(lambda: res.id in t.NOTED, T, "the body's link_error runs with its id")
    t.NOTED.clear()  # shared with test_tasks_delivery's link tests
    # The member's own outcome reaches this program apart from the chord's
    # failure (which came through the coordinator): it may be a moment later.
    assert res.parent is not None
    wait_until(res.parent.failed, T, "the header's GroupResult to show the failure")


def test_a_malformed_or_unknown_chord_report_is_a_counted_drop(workers: Workers) -> None:
    (w,) = workers(1)
    agent = next(a for a in w.node.actors(AGENT_TYPE) if a.node_id == w.node.id)
    agent.send("chord_part", {"id": "nope", "i": 0, "task_id": "x", "s": "SUCCESS"})
    agent.send("chord_part", {"id": "nope", "i": "zero", "task_id": "x", "s": "SUCCESS"})
    assert w.node.statistics()[DROPPED_PARTS] == 2
    assert t.add.delay(1, 1).get(timeout=T) == 2  # the worker lives on


def test_the_members_a_worker_ends_in_one_turn_report_to_the_coordinator_together(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # followup.Parts: one chord_parts message for the members that ended in one
    # turn of the worker's loop, not one chord_part each.
    together: list[int] = []
    alone: list[int] = []
    real_parts, real_part = TaskAgent.state.chord_parts, TaskAgent.state.chord_part

    def counting_parts(self: Any, parts: list[Any]) -> None:
        together.append(len(parts))
        real_parts(self, parts)

    def counting_part(self: Any, **report: Any) -> None:
        alone.append(1)
        real_part(self, **report)

    monkeypatch.setattr(TaskAgent.state, "chord_parts", counting_parts)
    monkeypatch.setattr(TaskAgent.state, "chord_part", counting_part)
    workers(2, concurrency=8)
    members = [t.add.s(i, i) for i in range(64)]
    assert chord(members)(t.xsum.s()).get(timeout=T) == sum(range(64)) * 2
    assert sum(together) + len(alone) == 64
    assert max(together) > 1


# A gevent-monkey-patched process (``zcell worker`` is one): threading.get_ident()
# there is the running greenlet's, not the loop thread's.
_PATCHED_CHORD = """
from gevent import monkey

monkey.patch_all()
import json, sys
import gevent
import zcell_test_tasks as t
from zcell import Node, chord
from zcell.tasks import Worker
from zcell.tasks.agent import TaskAgent
from zcell.tasks.runtime import runtime_of

together, alone = [], []
real_parts, real_part = TaskAgent.state.chord_parts, TaskAgent.state.chord_part
def counting_parts(self, parts):
    together.append(len(parts))
    real_parts(self, parts)
def counting_part(self, **report):
    alone.append(1)
    real_part(self, **report)
TaskAgent.state.chord_parts, TaskAgent.state.chord_part = counting_parts, counting_part
cluster = sys.argv[1]
w1 = Node("w1", cluster=cluster, discovery="static").start()
inbox = w1.endpoints["inbox"]
w2 = Node("w2", cluster=cluster, discovery="static", peers=[inbox]).start()
t.app.conf.update(cluster=cluster, peers=[inbox], discovery="static")
workers = [Worker(t.app, node, None, concurrency=8).start() for node in (w1, w2)]
total = chord([t.add.s(i, i) for i in range(64)])(t.xsum.s()).get(timeout=30)
dispatcher = runtime_of(w1).dispatcher
in_loop = w1.call_in_loop(lambda: gevent.spawn(dispatcher.can_hand_over).get())
print(json.dumps({"total": total, "together": together, "alone": len(alone), "in_loop": in_loop}))
t.app.close(timeout=0)
for worker in workers:
    worker.stop(timeout=0.5)
"""


def test_in_a_monkey_patched_worker_the_loop_is_told_by_its_thread_not_its_greenlet() -> None:
    # A task's greenlet in the loop thread took itself for a program thread there:
    # the chord reports of a ``zcell worker`` never went together, and its tasks'
    # delay() handed over to the loop from the loop.
    run = subprocess.run(
        [sys.executable, "-c", _PATCHED_CHORD, unique_cluster()],
        env=child_env(), capture_output=True, text=True, timeout=60 * SLOW,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["total"] == sum(range(64)) * 2
    assert sum(seen["together"]) + seen["alone"] == 64
    assert seen["together"] and max(seen["together"]) > 1, seen
    assert seen["in_loop"] is False


def test_a_coordinator_asked_after_its_chord_completed_gives_the_outcome(
    workers: Workers,
) -> None:
    # The submitter watches the coordinator (chord_wait) and asks again when the
    # coordinator's node comes back after it was taken for dead. Asked after the
    # chord completed, it answered "unknown", and the submitter failed and revoked
    # the body it had sent (a CI run of the paused-coordinator test saw it).
    (w,) = workers(1)
    res = chord((t.add.s(i, i) for i in range(3)), t.xsum.s())()
    assert res.get(timeout=T) == 6
    agent = next(a for a in w.node.actors(AGENT_TYPE) if a.node_id == w.node.id)
    assert agent.send.chord_wait(id=res.parent.id, timeout=T)["s"] == "SUCCESS"
    assert agent.send.chord_wait(id="never-opened", timeout=T)["s"] == "unknown"


def test_chord_reports_too_big_together_go_one_by_one(workers: Workers) -> None:
    w1, w2 = workers(2)

    def w1_agent() -> Any:
        return next((a for a in w2.node.actors(AGENT_TYPE) if a.node_id == w1.node.id), None)

    wait_until(lambda: w1_agent() is not None, T, "w2 to know w1's task agent")
    agent = w1_agent()
    runtime = runtime_of(w2.node)
    assert runtime is not None
    w2.node._codec.max_message_size = 100_000  # four of these parts in one message: too big
    reports = [
        {"id": "nope", "i": i, "task_id": f"t{i}", "s": "SUCCESS", "v": "x" * 30_000}
        for i in range(4)
    ]

    def report() -> None:
        for r in reports:
            followup.parts_of(runtime).add(agent, r)

    w2.node.call_in_loop(report)
    # Each reached the coordinator alone (and was dropped there: no such chord).
    wait_until(lambda: w1.node.statistics().get(DROPPED_PARTS) == 4, T, "four reports")
    assert w2.node.statistics().get(UNDELIVERED, 0) == 0


def test_a_chord_start_with_malformed_member_ids_is_refused(workers: Workers) -> None:
    (w,) = workers(1)
    agent = next(a for a in w.node.actors(AGENT_TYPE) if a.node_id == w.node.id)
    start = {"id": "c1", "n": 2, "body": {"task": "zcell_test_tasks.xsum"}, "root_id": "c1"}
    for ids in (["only-one"], "ab", [1, 2]):
        with pytest.raises(RemoteError, match="one task id per member"):
            agent.send("chord_start", dict(start, ids=ids), timeout=T)
    assert agent.send("chord_start", dict(start, ids=["a", "b"]), timeout=T) is None


# -- groups ---------------------------------------------------------------------------


def test_a_group_result_counts_and_reports_its_members(workers: Workers) -> None:
    workers(2)
    res = group(t.add.s(1, 1), t.fail.si("TypeError"), t.add.s(2, 2))()
    wait_until(res.ready, T, "every member ends")
    assert (res.completed_count(), res.failed(), res.successful()) == (2, True, False)
    values = res.get(timeout=T, propagate=False)
    assert values[0] == 2 and isinstance(values[1], TypeError) and values[2] == 4
    with pytest.raises(TypeError):
        res.get(timeout=T)
    assert len(res) == 3 and [r.id for r in res] == [r.id for r in res.results]


def test_revoking_a_group_stops_its_members_that_have_not_started(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1, concurrency=1)
    path = str(tmp_path / "runs")
    running = t.mark.si(path, 1.0, 1).delay()  # holds the only slot for a second
    g = group(t.mark.si(path, 0, 2), t.mark.si(path, 0, 3))()
    g.revoke()
    assert running.get(timeout=T) == 1
    for r in g.results:
        with pytest.raises(TaskRevokedError):
            r.get(timeout=T)
    assert Path(path).read_text().count("\n") == 1  # only the first task ran


def test_revoking_a_work_flows_root_id_stops_its_later_tasks(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1)
    path = tmp_path / "runs"
    flow = (t.mark.si(str(path), 1.0, 4) | t.mark.si(str(path), 0, 5) | t.add.si(1, 1))()
    first = flow.parent.parent  # type: ignore[union-attr]
    assert first is not None
    wait_until(path.exists, T, "the first task to start")
    t.app.control.revoke(first.id)  # the root id: every task of the chain carries it
    assert first.get(timeout=T) == 4  # it was running: it finishes
    with pytest.raises(TaskRevokedError):
        flow.get(timeout=T)
    assert path.read_text().count("\n") == 1  # the second task never started


# -- map, starmap, chunks -----------------------------------------------------------


def test_map_starmap_and_chunks(workers: Workers) -> None:
    workers(2)
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=T) == [3, 7]
    assert t.xsum.map([[1, 2], [3]]).delay().get(timeout=T) == [3, 3]
    expected = [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]
    assert t.add.chunks(zip(range(10), range(10), strict=True), 3)().get(timeout=T) == expected
    assert (
        t.add.chunks(zip(range(10), range(10), strict=True), 3).group()().get(timeout=T) == expected
    )


# -- scale --------------------------------------------------------------------------


def test_a_chord_of_1000_adds_into_xsum_completes(workers: Workers) -> None:
    workers(2, concurrency=8)
    res = chord((t.add.s(i, i) for i in range(1000)), t.xsum.s())()
    assert res.get(timeout=40 * SLOW) == 999 * 1000


def test_a_lost_room_notice_does_not_stall_the_submitter(workers: Workers) -> None:
    """A worker's "room" notice can overtake the "full" reply it answers (seen
    under a chord of 1000 on worker processes): the consumer then stays marked
    full with nothing of ours in flight. The periodic re-check must retry it."""
    (w,) = workers(1)
    assert t.add.delay(1, 1).get(timeout=T) == 2  # the submitter knows the consumer
    dispatcher = runtime_of(t.app.node).dispatcher
    t.app.node.call_in_loop(dispatcher.full.add, w.consumers["celery"].id)
    assert t.add.delay(2, 2).get(timeout=5 * SLOW) == 4


def test_link_and_on_error_of_a_signature_are_sent_with_the_outcome(workers: Workers) -> None:
    workers(1)
    t.NOTED.clear()
    s = t.add.s(2, 3)
    s.link(t.noted.s())
    assert s.delay().get(timeout=T) == 5
    wait_until(lambda: t.NOTED == [5], T, "the linked signature to run with the result")
    t.NOTED.clear()
    failing = t.fail.s("TypeError")
    failing.on_error(t.noted.s())
    res = failing.delay()
    with pytest.raises(TypeError):
        res.get(timeout=T)
    wait_until(lambda: t.NOTED == [res.id], T, "the errback to run with the failed id")
    t.NOTED.clear()


def test_a_coordinator_refuses_chords_beyond_result_max_records(workers: Workers) -> None:
    workers(1)
    saved = t.app.conf.result_max_records
    t.app.conf.result_max_records = 1
    try:
        first = chord([t.slow_add.s(1, 1, seconds=1.0)], t.xsum.s())()
        with pytest.raises(RemoteError, match="open chords"):
            chord([t.add.s(1, 1)], t.xsum.s())()
        assert first.get(timeout=T) == 2
    finally:
        t.app.conf.result_max_records = saved


def test_a_timeout_on_a_later_step_of_a_chain_is_a_task_timeout_saying_why(
    workers: Workers,
) -> None:
    """The chain's last step is sent by the worker of the step before it: a get()
    that times out on it says so (it once raised ValueError building the hint)."""
    workers(1)
    res = (t.slow_add.s(1, 1, seconds=3) | t.add.s(1))()
    with pytest.raises(TaskTimeout, match="a step of a work-flow"):
        res.get(timeout=0.5)
    assert res.get(timeout=T) == 3
