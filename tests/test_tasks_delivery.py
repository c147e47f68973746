"""Delivery without a broker, on in-process worker nodes over real sockets:
calling, routing, fair push with back-pressure, waiting for consumers, expiry,
ETA, revoke, results, bad input, nested get()."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zcell_test_tasks as t
from conftest import SLOW, MakeNode, Unwalkable, Workers, count_walks, wait_until

from zcell import (
    Actor,
    NotRegistered,
    RemoteError,
    SerializationError,
    TaskRevokedError,
    TaskTimeout,
)
from zcell.errors import NodeDown, ProtocolError
from zcell.tasks import dispatch
from zcell.tasks import worker as worker_module
from zcell.tasks.message import WIRE, make, new_id, pack
from zcell.tasks.request import current_request
from zcell.tasks.routing import queue_actor_name
from zcell.tasks.runtime import DROPPED


def test_delay_and_apply_async_return_results_with_state_and_worker(workers: Workers) -> None:
    (w,) = workers(1)
    result = t.add.delay(2, 2)
    assert result.get(timeout=10 * SLOW) == 4
    assert (result.state, result.successful(), result.ready(), result.worker) == (
        "SUCCESS", True, True, w.node.name,
    )  # fmt: skip
    assert result.date_done is not None and result.name == "zcell_test_tasks.add"
    assert t.mul.apply_async((3, 4)).get(timeout=10 * SLOW) == 12
    assert t.app.send_task("zcell_test_tasks.add", args=[1, 2]).get(timeout=10 * SLOW) == 3


def test_a_bound_task_sees_its_request(workers: Workers) -> None:
    (w,) = workers(1)
    result = t.whoami.apply_async(task_id="my-id")
    request = result.get(timeout=10 * SLOW)
    assert request == {
        "id": "my-id", "hostname": w.node.name, "retries": 0, "root_id": "my-id",
        "parent_id": None, "args": [], "queue": "celery",
    }  # fmt: skip


def test_a_task_error_is_re_raised_mirrored_with_its_traceback(workers: Workers) -> None:
    workers(1)
    result = t.fail.delay("TypeError")
    with pytest.raises(TypeError, match="bad type"):
        result.get(timeout=10 * SLOW)
    assert result.failed() and "TypeError" in (result.traceback or "")
    assert isinstance(result.get(propagate=False), RemoteError)


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "GreenletExit"])
def test_a_task_raising_system_exit_or_keyboard_interrupt_fails_only_that_task(
    workers: Workers, kind: str
) -> None:
    workers(1)
    with pytest.raises(RemoteError, match=kind):
        t.fail.delay(kind).get(timeout=10 * SLOW)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2


def test_an_unknown_task_name_fails_with_not_registered_and_the_worker_lives(
    workers: Workers,
) -> None:
    workers(1)
    result = t.app.send_task("zcell_test_tasks.nope", args=[1])
    with pytest.raises(RemoteError, match="NotRegistered") as caught:
        result.get(timeout=10 * SLOW)
    # Caught by its class too (``except NotRegistered:``), and by KeyError, as in Celery.
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, NotRegistered)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2


def test_a_malformed_task_message_from_the_wire_is_a_counted_drop(workers: Workers) -> None:
    (w,) = workers(1)
    consumer = t.app.node.actors("zcell.queue.celery")
    wait_until(lambda: t.app.node.actors("zcell.queue.celery"), 10, "the consumer")
    consumer = t.app.node.actors("zcell.queue.celery")
    # Maps, and arrays (the form a submitter pushes, message.WIRE): too short,
    # and of the right length with values of the wrong types.
    for bad in ({"id": 1}, "junk", {"id": "x", "name": "n"}, [1, 2, 3], ["x"] * len(WIRE)):
        assert consumer[0].send("run", {"msg": bad}) == {"s": "dropped"}
    assert w.node.statistics()[DROPPED] == 5
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2


def test_a_task_message_is_taken_as_a_map_or_as_the_array_a_submitter_pushes(
    workers: Workers,
) -> None:
    (w,) = workers(1)
    wait_until(lambda: t.app.node.actors("zcell.queue.celery"), 10, "the consumer")
    (consumer,) = t.app.node.actors("zcell.queue.celery")
    runtime = t.app._runtime()  # the submitter's side: its agent answers the worker
    for n, form in enumerate(("map", "array")):
        msg = make(
            id=new_id(), name="zcell_test_tasks.add", args=[n, 3], kwargs={}, queue="celery",
            reply_to=runtime.agent, go=True,
        )  # fmt: skip
        wire = msg if form == "map" else pack(msg)
        assert isinstance(wire, dict if form == "map" else list)
        reply = consumer.send("run", {"msg": wire})
        assert (reply["s"], reply["v"], reply["worker"]) == ("SUCCESS", n + 3, w.node.name)
    assert w.node.statistics()[DROPPED] == 0


def test_a_worker_that_takes_task_messages_only_as_maps_is_pushed_maps(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker of an older zcell refuses the array a submitter pushes (its check
    took a map only): the submitter pushes that task again as the map, and every
    later task to that worker as maps; nothing fails, nothing runs twice."""
    (w,) = workers(1)
    takes_maps = worker_module.check

    def older_check(raw: object) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ProtocolError(f"a task message is a map, not {type(raw).__name__}")
        return takes_maps(raw)

    monkeypatch.setattr(worker_module, "check", older_check)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2
    assert w.node.statistics()[DROPPED] == 1
    results = [t.add.delay(i, 1) for i in range(5)]
    assert [r.get(timeout=10 * SLOW) for r in results] == [1, 2, 3, 4, 5]
    assert w.node.statistics()[DROPPED] == 1


def test_a_result_that_does_not_serialise_fails_the_task(workers: Workers) -> None:
    workers(1)
    with pytest.raises(RemoteError, match="SerializationError"):
        t.unserialisable.delay().get(timeout=10 * SLOW)


@pytest.mark.parametrize(
    "options",
    [{"headers": {"h": {(1, 2): "tuple key"}}}, {"time_limit": msgpack.Timestamp(5)}],
    ids=["headers", "time-limit"],
)
def test_a_task_whose_options_cannot_travel_fails_with_serialization_error(
    workers: Workers, options: dict[str, Any]
) -> None:
    """Pushes of plain messages skip the codec's walk (``codec.Checked``): a
    message holding what the worker's decoder would refuse must still fail here,
    typed, not leave to be dropped there while ``get()`` waits."""
    (w,) = workers(1)
    with pytest.raises(SerializationError):
        t.add.apply_async((1, 1), **options).get(timeout=10 * SLOW)
    assert w.node.statistics()["dropped_bad_frames"] == 0
    assert t.add.delay(1, 2).get(timeout=10 * SLOW) == 3


def test_routing_sends_each_task_to_a_consumer_of_its_queue(workers: Workers) -> None:
    (hi,) = workers(1, queues=["hipri"])
    (lo,) = workers(1, queues=["celery"])
    t.app.conf.task_routes = {"zcell_test_tasks.where": {"queue": "hipri"}}
    try:
        assert t.where.delay().get(timeout=10 * SLOW) == hi.node.name
        assert t.where.apply_async(queue="celery").get(timeout=10 * SLOW) == lo.node.name
    finally:
        t.app.conf.task_routes = None


def test_two_workers_take_consecutive_tasks_in_turn(workers: Workers) -> None:
    w1, w2 = workers(2)
    t.app.node.wait_for(type="zcell.queue.celery", timeout=10 * SLOW)
    wait_until(lambda: len(t.app.node.actors("zcell.queue.celery")) == 2, 10, "two consumers")
    names = [t.where.delay().get(timeout=10 * SLOW) for _ in range(6)]
    assert Counter(names) == {w1.node.name: 3, w2.node.name: 3}
    assert all(a != b for a, b in zip(names, names[1:], strict=False))


def test_a_worker_is_pushed_up_to_its_places_and_a_task_waiting_there_is_claimed(
    workers: Workers, tmp_path: Path
) -> None:
    """A submitter pushes a worker up to concurrency x prefetch tasks (Celery's
    prefetch); the rest wait at the submitter. A task that waits at the worker for a
    slot longer than 20 ms is told held and claimed before it starts. Tasks held for
    their ETA take places too."""
    (w,) = workers(1, concurrency=1, prefetch=2)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2  # the submitter learns its room
    dispatcher = t.app._runtime().dispatcher

    def waiting() -> int:
        return int(t.app.node.call_in_loop(dispatcher.waiting_count))

    path = str(tmp_path / "runs")
    claimed = w.claimed
    results = [t.mark.delay(path, 0.3, i) for i in range(5)]
    wait_until(lambda: w.held == 2 and waiting() == 3, 10, "1 to run, 1 to wait at w, 3 here")
    assert [r.get(timeout=20 * SLOW) for r in results] == [0, 1, 2, 3, 4]
    assert len(Path(path).read_text().splitlines()) == 5
    # Every task but the first waited at w about 0.3 s for the slot: held, then claimed.
    assert w.claimed - claimed >= 3
    later = [t.add.apply_async((i, 1), countdown=60) for i in range(3)]
    wait_until(lambda: w.held == 2 and waiting() == 1, 10, "w to hold 2 ETA tasks")
    for result in later:
        result.revoke()


def test_a_task_pushed_ahead_that_gets_a_slot_soon_starts_under_the_grant_unclaimed(
    workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefetched tasks wait at the worker for its one slot and start there under
    their submitter's grant, with no notice and no claim (``HELD_AFTER`` raised so
    that a loaded machine cannot make one wait past it)."""
    monkeypatch.setattr(worker_module, "HELD_AFTER", 30.0)
    (w,) = workers(1, concurrency=1, prefetch=4)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2
    granted, claimed = w.granted, w.claimed
    path = str(tmp_path / "runs")
    results = [t.mark.delay(path, 0.01, i) for i in range(20)]
    most, deadline = 0, time.monotonic() + 20 * SLOW
    while not all(r.ready() for r in results) and time.monotonic() < deadline:
        most = max(most, w.held)
        time.sleep(0.001)
    assert [r.get(timeout=10 * SLOW) for r in results] == list(range(20))
    assert most == 4, "the worker held its capacity: tasks waited there for the slot"
    assert (w.granted - granted, w.claimed - claimed) == (20, 0)


def test_a_task_that_expires_while_waiting_at_its_worker_for_a_slot_never_runs(
    workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prefetched task waits at the worker unclaimed (``HELD_AFTER`` raised: no
    claim will check it at its submitter); it expires meanwhile: it never starts."""
    monkeypatch.setattr(worker_module, "HELD_AFTER", 30.0)
    (w,) = workers(1, concurrency=1, prefetch=2)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2
    busy = t.mark.delay(str(tmp_path / "busy"), 0.6, "busy")
    wait_until(lambda: w.running, 10, "the first task to run")
    path = tmp_path / "late"
    late = t.mark.apply_async((str(path), 0.0, "late"), expires=0.2)
    wait_until(lambda: w.held == 2, 10, "the second task to wait at w for the slot")
    assert busy.get(timeout=10 * SLOW) == "busy"
    with pytest.raises(TaskRevokedError, match="revoked"):
        late.get(timeout=10 * SLOW)
    assert late.state == "REVOKED" and not path.exists()


def test_a_push_that_cannot_leave_this_node_waits_and_is_retried_not_spun_or_failed(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory may still list a consumer on a node that is no longer a member:
    a push there fails where it stands (NodeDown, before anything is sent). Such a
    task never left: it waits for a consumer as before (a granted one too: it did not
    start), and that consumer is asked again only every ``RECHECK`` seconds. (The
    pump pushed the same task there again at once, in one round without end: the
    node's loop spun, and nothing else of it ran.) The gone member is simulated at
    the one place a send fails so, on real nodes."""
    from zcell._mesh.messaging import Messaging

    (w,) = workers(1)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2
    send_frame = Messaging.send_frame
    attempts = [0]

    def gone(self: Any, node_id: str, *args: Any, **kwargs: Any) -> Any:
        if node_id == w.node.id:
            attempts[0] += 1
            raise NodeDown(f"node {node_id} is not (or no longer) in the mesh")
        return send_frame(self, node_id, *args, **kwargs)

    monkeypatch.setattr(Messaging, "send_frame", gone)
    now = t.add.delay(1, 2)
    later = t.add.apply_async((2, 2), countdown=0.3)
    time.sleep(1.0)
    assert 2 <= attempts[0] <= 2 * (1.0 / dispatch.RECHECK + 2), attempts[0]
    assert now.state == "PENDING" and later.state == "PENDING"
    monkeypatch.setattr(Messaging, "send_frame", send_frame)
    assert now.get(timeout=10 * SLOW) == 3
    assert later.get(timeout=10 * SLOW) == 4


def test_a_worker_with_a_free_slot_takes_over_tasks_held_at_a_busy_one(
    workers: Workers, tmp_path: Path
) -> None:
    """No worker idles while another consumer of the same queue has tasks waiting
    (TASKS.md): tasks pushed ahead to a worker stuck on a long task, held there and
    not claimed, are taken back and pushed to the worker with a free slot; the copy
    left behind is refused at its claim, so each runs once."""
    w1, w2 = workers(2, concurrency=1, prefetch=4)
    for _ in range(2):  # the submitter learns both consumers' room
        assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2
    long = t.mark.delay(str(tmp_path / "long"), 2.0, "long")
    shorts = [t.mark.delay(str(tmp_path / f"short{i}"), 0.1, i) for i in range(7)]
    assert [r.get(timeout=10 * SLOW) for r in shorts] == list(range(7))
    assert not long.ready(), "the short tasks waited for the long one"
    assert long.get(timeout=10 * SLOW) == "long"
    busy = long.worker
    assert any(r.worker != busy for r in shorts)
    # The copies left at the busy worker claimed once it was free, and were refused.
    wait_until(lambda: not (w1.holding or w2.holding), 10, "the left copies to end")
    for i in range(7):
        assert len((tmp_path / f"short{i}").read_text().splitlines()) == 1


def test_a_worker_takes_a_later_attempt_from_the_same_submitter_not_as_a_duplicate(
    workers: Workers, tmp_path: Path
) -> None:
    """A submitter that took a task over may push it again to a worker holding an
    older copy (the attempt moved on): that is no duplicate delivery; the older
    copy is refused at its claim. The same attempt again stays a duplicate."""
    from zcell.tasks.message import make

    (w,) = workers(1, concurrency=1)
    assert t.add.delay(1, 1).get(timeout=10 * SLOW) == 2
    (consumer,) = t.app.node.actors("zcell.queue.celery")
    agent = t.app._runtime().agent
    path = tmp_path / "runs"
    busy = t.mark.delay(str(tmp_path / "busy"), 0.5, "busy")  # holds the one slot
    wait_until(lambda: w.running, 10, "the slot to be taken")

    def push(attempt: int) -> Any:
        msg = make(id="twice", name="zcell_test_tasks.mark", args=[str(path)], kwargs={},
                   queue="celery", reply_to=agent, attempt=attempt, go=True)  # fmt: skip
        return consumer.call("run", {"msg": msg}, timeout=10 * SLOW)

    first = push(1)
    wait_until(lambda: "twice" in w.holding, 10, "the first copy to wait for the slot")
    assert push(1).get(timeout=10 * SLOW)["s"] == "REVOKED"  # the same attempt: a duplicate
    later = push(2)
    assert busy.get(timeout=10 * SLOW) == "busy"
    # Both copies waited past HELD_AFTER, so each claims; this submitter knows no
    # task "twice": each claim is refused, and neither runs (no duplicate answer).
    assert first.get(timeout=10 * SLOW)["s"] == "refused"
    assert later.get(timeout=10 * SLOW)["s"] == "refused"
    assert not path.exists()


def test_a_task_sent_before_any_consumer_runs_when_one_joins(
    workers: Workers, make_node: MakeNode
) -> None:
    (w,) = workers(1, queues=["other"])
    result = t.add.apply_async((5, 5), queue="late")
    with pytest.raises(TaskTimeout):
        result.get(timeout=0.3)
    assert result.state == "PENDING"
    w.add_consumer("late")
    assert result.get(timeout=10 * SLOW) == 10


def test_a_task_that_expires_while_waiting_is_revoked_and_never_runs(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1, queues=["other"])
    path = tmp_path / "runs"
    result = t.mark.apply_async((str(path),), queue="nobody", expires=0.3)
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=5 * SLOW)
    assert result.state == "REVOKED" and not path.exists()


def test_thousands_waiting_expire_and_are_revoked_among_the_rest_which_then_run(
    workers: Workers,
) -> None:
    # Expired and revoked tasks leave the waiting line without a scan of it each
    # (that cost the square of the tasks waiting); the count of waiting tasks,
    # which task_pending_max bounds, follows them.
    (w,) = workers(1, queues=["other"])
    n = 1500
    dated = [t.add.apply_async((i, 0), queue="late", expires=0.5) for i in range(n)]
    plain = [t.add.apply_async((i, 1), queue="late") for i in range(n)]
    dispatcher = t.app._runtime().dispatcher
    for result in dated:
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=10 * SLOW)
    assert t.app.node.call_in_loop(dispatcher.waiting_count) == n
    t.app.control.revoke([r.id for r in plain[: n // 2]])
    for result in plain[: n // 2]:
        with pytest.raises(TaskRevokedError, match="revoked"):
            result.get(timeout=10 * SLOW)
    assert t.app.node.call_in_loop(dispatcher.waiting_count) == n - n // 2
    assert all(r.state == "PENDING" for r in plain[n // 2 :])
    w.add_consumer("late")
    assert [r.get(timeout=20 * SLOW) for r in plain[n // 2 :]] == list(range(n // 2 + 1, n + 1))
    assert t.app.node.call_in_loop(dispatcher.waiting_count) == 0
    assert not dispatcher.stale and not dispatcher.expiring


def test_revoking_a_task_or_a_work_flow_does_not_walk_every_task_here(workers: Workers) -> None:
    # A revoke looked at every task this node follows: revoking them one by one
    # cost the square of the tasks here.
    from zcell import group

    workers(1, queues=["other"])
    waiting = [t.add.apply_async((i, 0), queue="late") for i in range(300)]
    flow = group(t.add.s(i, 1).set(queue="late") for i in range(5)).apply_async()
    dispatcher = t.app._runtime().dispatcher
    wait_until(lambda: t.app.node.call_in_loop(dispatcher.waiting_count) == 305, 5, "all to wait")
    count_walks(t.app.node, dispatcher, "entries")
    waiting[7].revoke()
    t.app.control.revoke(flow.id)  # the group's id: the root id of its tasks
    with pytest.raises(TaskRevokedError):
        waiting[7].get(timeout=5 * SLOW)
    for member in flow.results:
        with pytest.raises(TaskRevokedError):
            member.get(timeout=5 * SLOW)
    assert Unwalkable.walks == 0
    assert t.app.node.call_in_loop(dispatcher.waiting_count) == 299
    assert waiting[6].state == waiting[8].state == "PENDING"


def test_queues_nothing_waits_in_any_more_leave_the_submitters_tables(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per-tenant queue names come and go: each pump round looked at every queue
    # ever used here, and the tables kept them all. Round-robin turns are kept
    # (a queue that gets one task at a time must still go round), up to a bound.
    monkeypatch.setattr(dispatch, "TURNS_KEPT", 50)
    workers(1, queues=["other"])
    sent = [
        t.add.apply_async((i, 0), queue=f"tenant-{i}", expires=60 if i % 2 else None)
        for i in range(200)
    ]
    dispatcher = t.app._runtime().dispatcher
    wait_until(lambda: t.app.node.call_in_loop(dispatcher.waiting_count) == 200, 5, "all wait")
    t.app.control.revoke([r.id for r in sent])
    for result in sent:
        with pytest.raises(TaskRevokedError):
            result.get(timeout=5 * SLOW)

    def tenants() -> list[str]:
        tables = (dispatcher.waiting, dispatcher.expiring, dispatcher.stale)
        return [q for table in tables for q in table if q.startswith("tenant-")]

    wait_until(lambda: not t.app.node.call_in_loop(tenants), 2 * SLOW, "the queues to go")
    assert t.add.apply_async((1, 1), queue="other").get(timeout=5 * SLOW) == 2
    assert len(dispatcher.turn) <= 50


def test_tasks_sent_one_at_a_time_still_go_round_the_consumers(workers: Workers) -> None:
    # Each task leaves its queue empty before the next is sent: the queue's turn
    # must outlive that (beat's ticks found one worker only when it did not).
    workers(3)
    wait_until(lambda: len(t.app.node.actors(queue_actor_name("celery"))) == 3, 5, "consumers")
    ran = []
    for i in range(6):
        result = t.add.apply_async((i, 0))
        assert result.get(timeout=5 * SLOW) == i
        ran.append(result.worker)
        time.sleep(2 * dispatch.RECHECK)  # the pump's idle rounds run meanwhile
    assert sorted(Counter(ran).values()) == [2, 2, 2], ran


def test_a_countdown_task_is_held_by_the_worker_until_its_eta(workers: Workers) -> None:
    (w,) = workers(1)
    sent = time.time()
    result = t.add.apply_async((1, 2), countdown=3 * SLOW)
    wait_until(lambda: w.scheduled, 5 * SLOW, "the worker to hold the ETA task")
    # The worker's notice that it holds the task reaches the submitter a moment later.
    wait_until(lambda: result.state == "RECEIVED", 2 * SLOW, "the submitter to see it held")
    assert w.scheduled
    assert result.get(timeout=10 * SLOW) == 3
    assert result.date_done is not None and result.date_done.timestamp() - sent >= 3 * SLOW


def test_revoke_before_start_means_it_never_runs(workers: Workers, tmp_path: Path) -> None:
    (w,) = workers(1)
    path = tmp_path / "runs"
    result = t.mark.apply_async((str(path),), countdown=30)
    wait_until(lambda: w.scheduled, 5, "the worker to hold the ETA task")
    result.revoke()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5 * SLOW)
    wait_until(lambda: not w.scheduled, 5, "the worker to drop it")
    assert not path.exists()


def test_revoke_with_terminate_kills_a_running_task(workers: Workers, tmp_path: Path) -> None:
    (w,) = workers(1)
    path = tmp_path / "runs"
    result = t.mark.delay(str(path), 30)
    wait_until(path.exists, 10, "the task to start")
    result.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5 * SLOW)
    assert result.state == "REVOKED" and not w.running


class RequestProbe(Actor):
    """Hosted on a worker node: whether its handler's greenlet thinks it runs a task."""

    name = "test.request_probe"

    class state:
        def in_task(self) -> bool:
            return current_request() is not None


def test_a_task_runs_in_its_handler_which_then_serves_other_work_soundly(
    workers: Workers, tmp_path: Path
) -> None:
    """A task runs in its consumer's handler greenlet, which the node reuses for
    other messages: a terminated task leaves it sound, and neither it nor a task that
    ended leaves its request behind for the next handler."""
    (w,) = workers(1, concurrency=1)
    probe = w.node.spawn(RequestProbe)
    killed = t.mark.delay(str(tmp_path / "killed"), 30)
    wait_until((tmp_path / "killed").exists, 10, "the task to start")
    killed.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        killed.get(timeout=5 * SLOW)
    assert not any(probe.call("in_task").get(timeout=5 * SLOW) for _ in range(5))
    assert t.mark.delay(str(tmp_path / "next"), 0, "ok").get(timeout=5 * SLOW) == "ok"
    assert not any(probe.call("in_task").get(timeout=5 * SLOW) for _ in range(5))
    # A terminate for a task that has ended ends no other.
    slow = t.mark.delay(str(tmp_path / "slow"), 0.3, "slow")
    wait_until((tmp_path / "slow").exists, 10, "the task to start")
    t.app.control.revoke(killed.id, terminate=True)
    assert slow.get(timeout=5 * SLOW) == "slow"


def test_a_worker_that_joins_later_knows_an_earlier_revoke(
    workers: Workers, tmp_path: Path
) -> None:
    workers(1, queues=["other"])
    path = tmp_path / "runs"
    t.app.control.revoke("revoked-early")
    (late,) = workers(1, queues=["celery"])
    revoked = late.runtime.revoked  # type: ignore[union-attr]
    wait_until(lambda: late.node.call_in_loop(revoked.__contains__, "revoked-early"), 5, "it")
    # Its worker refuses it even when the submitter (another program) forgot it.
    msg_result = t.mark.apply_async((str(path),), task_id="revoked-early")
    with pytest.raises(TaskRevokedError):
        msg_result.get(timeout=10 * SLOW)
    assert not path.exists()


def test_async_result_finds_a_finished_task_and_an_unknown_id_is_pending(
    workers: Workers,
) -> None:
    workers(1)
    result = t.add.delay(20, 22)
    assert result.get(timeout=10 * SLOW) == 42
    t.app.close(timeout=0)  # a new program: a new node that sent nothing
    found = t.app.AsyncResult(result.id)
    wait_until(lambda: found.ready(), 10, "the record to be found")
    assert (found.state, found.result, found.get(timeout=1)) == ("SUCCESS", 42, 42)
    assert found.worker is not None and found.name == "zcell_test_tasks.add"
    assert t.app.AsyncResult("no-such-id").state == "PENDING"


def test_nested_get_with_every_slot_taken_completes(workers: Workers) -> None:
    workers(2, concurrency=2, prefetch=1)
    parents = [t.parent.delay(3) for _ in range(6)]  # more parents than the 4 slots
    assert [p.get(timeout=30 * SLOW) for p in parents] == [3] * 6


def test_a_room_notice_that_overtakes_the_full_reply_strands_nothing(
    make_node: MakeNode, task_app: Any
) -> None:
    """The worker refuses a push, a slot frees at once, and its "room" notice reaches
    the submitter before the "full" reply does. The submitter must not then take
    the reply's capacity for the truth: its parents waiting in get() at the worker
    hold no place there, so counting them would keep their children from it for good."""
    import gevent

    from zcell.tasks import Worker

    class Overtaken(Worker):
        def _refuse(self, agent: Any) -> None:
            super()._refuse(agent)
            gevent.spawn(self._room)  # a slot frees as the refusal leaves

        def accept(self, raw: Any) -> dict[str, Any]:
            outcome = super().accept(raw)
            if outcome.get("s") == "full":
                gevent.sleep(0.2)  # the reply comes after the notice
            return outcome

    node = make_node("w1", cluster=(cluster := f"overtaken-{time.monotonic_ns()}"))
    task_app(cluster=cluster, peers=[node.endpoints["inbox"]])
    worker = Overtaken(t.app, node, concurrency=1, prefetch=1).start()
    try:
        parents = [t.parent.delay(2) for _ in range(2)]  # the second is refused at first
        assert [p.get(timeout=20 * SLOW) for p in parents] == [1, 1]
    finally:
        t.app.close(timeout=0)
        worker.stop(timeout=0.5)


def test_a_retrying_task_runs_again_with_retries_plus_one(workers: Workers, tmp_path: Path) -> None:
    workers(1)
    path = tmp_path / "runs"
    result = t.flaky.delay(str(path))
    assert result.get(timeout=10 * SLOW)
    assert result.retries == 1 and len(path.read_text().splitlines()) == 2


def test_close_flushes_tasks_to_a_worker_before_stopping_the_node(
    workers: Workers, tmp_path: Path
) -> None:
    (w,) = workers(1, concurrency=1, prefetch=1)
    path = tmp_path / "runs"
    for _ in range(3):
        t.mark.delay(str(path), 0.2)
    t.app.close(timeout=10 * SLOW)  # returns once a worker holds each
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 3, 10, "3 runs")


def test_update_state_and_track_started_show_while_the_task_runs(
    workers: Workers, tmp_path: Path
) -> None:
    # Each task runs until the test has seen its state and creates its gate file
    # (a fixed sleep let a loaded machine miss the state).
    workers(1)
    result = t.progress.delay(str(tmp_path / "seen-progress"))
    wait_until(lambda: result.state == "PROGRESS", 10, "the custom state")
    assert result.result == {"done": 1}
    (tmp_path / "seen-progress").touch()
    assert result.get(timeout=10 * SLOW) == "ok"
    started = t.gated.apply_async((str(tmp_path / "seen-started"),), track_started=True)
    wait_until(lambda: started.state == "STARTED", 10, "STARTED")
    (tmp_path / "seen-started").touch()
    assert started.get(timeout=10 * SLOW) == "ok"


def test_then_link_and_link_error_follow_the_outcome(workers: Workers) -> None:
    workers(1)
    seen: list[Any] = []
    result = t.add.delay(1, 1)
    result.then(lambda r: seen.append(r.result))
    assert result.get(timeout=10 * SLOW) == 2
    wait_until(lambda: seen == [2], 5, "the then() callback")
    linked = t.add.apply_async((2, 3), link="zcell_test_tasks.noted")  # noted(5)
    linked.get(timeout=10 * SLOW)
    wait_until(lambda: t.NOTED == [5], 10, "the linked task to run")
    t.NOTED.clear()
    failing = t.fail.apply_async(("TypeError",), link_error=t.noted)
    with pytest.raises(TypeError):
        failing.get(timeout=10 * SLOW)
    wait_until(lambda: t.NOTED == [failing.id], 10, "the link_error task to run")


def test_a_task_that_can_start_at_once_starts_without_a_claim(
    workers: Workers, tmp_path: Path
) -> None:
    """Each push carries its submitter's grant: a worker with a free slot starts the
    task at once and says so ("started", no claim round trip); a task it must hold
    first (here for its ETA) is claimed before it starts, so re-dispatch stays exact."""
    (w,) = workers(1, concurrency=1, prefetch=4)
    path = tmp_path / "runs"
    later = [t.mark.apply_async((str(path), 0, i), countdown=0.5) for i in range(2)]
    wait_until(lambda: all(r.state == "RECEIVED" for r in later), 10, "w to hold them")
    assert all(r.worker is None for r in later)  # held, not started: no claim yet
    first = t.mark.delay(str(path), 1.0, "first")
    wait_until(path.exists, 10, "the first task to start")
    # The worker's notice is the submitter's only news of it until the outcome.
    wait_until(lambda: first.worker == w.node.name, 5, "the submitter to hear it started")
    assert first.state == "RECEIVED" and not first.ready()
    assert first.get(timeout=10 * SLOW) == "first"
    assert [r.get(timeout=10 * SLOW) for r in later] == [0, 1]
    stats = w.node.call_in_loop(w.statistics)
    assert (stats["started_granted"], stats["started_claimed"]) == (1, 2)


def test_a_task_started_under_the_grant_is_told_started_only_if_it_runs_a_while(
    workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker tells the submitter that a task it started under the grant started
    only once it has run ``STARTED_AFTER``: one that ends sooner costs no notice (its
    outcome says it all); a longer one is seen started (``RECEIVED``) while it runs."""
    monkeypatch.setattr(worker_module, "STARTED_AFTER", 0.5)
    (w,) = workers(1)
    dispatcher = t.app._runtime().dispatcher
    heard: list[str] = []
    started = dispatcher.started

    def spy(task_id: str, *args: Any) -> None:
        heard.append(task_id)
        started(task_id, *args)

    monkeypatch.setattr(dispatcher, "started", spy)
    quick = [t.add.delay(i, 1) for i in range(10)]
    assert [r.get(timeout=10 * SLOW) for r in quick] == [i + 1 for i in range(10)]
    slow = t.mark.delay(str(tmp_path / "runs"), 1.5, "slow")
    wait_until(lambda: slow.state == "RECEIVED", 5, "the submitter to hear it started")
    assert not slow.ready() and slow.worker == w.node.name
    assert slow.get(timeout=10 * SLOW) == "slow"
    assert heard == [slow.id]


def test_a_submitter_forgets_consumers_gone_from_the_mesh(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a submitter learnt of a consumer (its capacity, when it was last heard
    from) goes once it left the mesh: workers and their consumers come and go, and
    the tables must not keep every consumer ever seen."""
    monkeypatch.setattr(dispatch, "FORGET_EVERY", 0.1)
    w1, w2 = workers(2)
    dispatcher = t.app._runtime().dispatcher
    gone, stays = w2.consumers["celery"].id, w1.consumers["celery"].id
    consumers = queue_actor_name("celery")
    wait_until(lambda: len(t.app.node.actors(consumers)) == 2, 10, "both consumers known")
    results = [t.add.delay(i, 1) for i in range(8)]  # both consumers take some, in turn
    assert [r.get(timeout=10 * SLOW) for r in results] == [i + 1 for i in range(8)]
    assert {gone, stays} <= set(dispatcher.capacity)
    assert w2.node.call_in_loop(w2.cancel_consumer, "celery")  # its consumer leaves
    wait_until(lambda: gone not in dispatcher.capacity, 10, "the submitter to forget it")
    assert gone not in dispatcher.heard_at
    assert stays in dispatcher.capacity  # a live consumer is remembered


def test_a_stopping_worker_gives_held_tasks_back_to_run_elsewhere(
    workers: Workers, tmp_path: Path
) -> None:
    (w1,) = workers(1, concurrency=1, prefetch=4)
    path = tmp_path / "runs"
    running = t.mark.delay(str(path), 1.0, "first")
    wait_until(path.exists, 10, "the first task to start")
    # Held for their ETA (told held at once; not to be taken over by another worker).
    held = [t.mark.apply_async((str(path), 0, i), countdown=0.5) for i in range(3)]
    wait_until(lambda: w1.held == 4, 10, "w1 to hold all four")
    (w2,) = workers(1)
    assert w1.stop(timeout=10 * SLOW) == 0  # the running one finished
    assert running.get(timeout=10 * SLOW) == "first"
    assert [r.get(timeout=10 * SLOW) for r in held] == [0, 1, 2]
    assert {r.worker for r in held} == {w2.node.name}


def test_held_tasks_a_stopping_worker_gives_back_are_pushed_again_once_each(
    workers: Workers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks held at a stopping worker come back to their submitter's queue: from
    there only the pump pushes them again, once each. (Kept among the tasks to take
    over as well, one in flight at a worker with one slot was pushed a second time
    to a worker with free slots, and ran twice.) ``HELD_AFTER`` and ``STARTED_AFTER``
    are raised so that no notice from w2 tells the submitter where they are."""
    (w1,) = workers(1, concurrency=1, prefetch=4)
    (w2,) = workers(1, queues=["other"], concurrency=1)
    (w3,) = workers(1, queues=["other"], concurrency=4)
    busy = t.mark.delay(str(tmp_path / "busy"), 1.0, "busy")
    wait_until(lambda: w1.running, 10, "w1 busy")
    shorts = [t.mark.delay(str(tmp_path / f"short{i}"), 0.3, i) for i in range(3)]
    wait_until(lambda: w1.held == 4, 10, "w1 to hold the three")
    assert w1.stop(timeout=10 * SLOW) == 0  # the held three are given back
    assert busy.get(timeout=10 * SLOW) == "busy"
    monkeypatch.setattr(worker_module, "HELD_AFTER", 30.0)
    monkeypatch.setattr(worker_module, "STARTED_AFTER", 30.0)
    w2.add_consumer("celery")
    wait_until(lambda: w2.held or w2.running, 10, "w2 to take some")
    w3.add_consumer("celery")
    assert [r.get(timeout=10 * SLOW) for r in shorts] == [0, 1, 2]
    wait_until(lambda: not (w2.holding or w3.holding), 10, "the copies to end")
    assert [len((tmp_path / f"short{i}").read_text().splitlines()) for i in range(3)] == [1] * 3


def test_a_timeout_on_a_task_for_a_queue_nobody_consumes_says_so(workers: Workers) -> None:
    workers(1)  # consumes "celery" only
    result = t.add.apply_async((1, 1), queue="nobody-consumes-this")
    with pytest.raises(TaskTimeout, match="no worker in the mesh consumes its queue") as raised:
        result.get(timeout=0.3)
    assert "-Q nobody-consumes-this" in str(raised.value)
    assert result.state == "PENDING"
    result.revoke()


def test_a_burst_to_a_new_worker_is_not_pushed_whole_to_be_refused(workers: Workers) -> None:
    """Before a submitter knows a worker's room, it pushes what a worker of its app's
    settings holds, not the whole burst (which was refused but for the first few, and
    pushed again: 500 tasks cost ~1000 pushes, and 20 000 held the loop 1.7 s)."""
    (w,) = workers(1)  # the app's own concurrency x prefetch
    results = [t.add.delay(i, 1) for i in range(500)]
    assert [r.get(timeout=20 * SLOW) for r in results] == [i + 1 for i in range(500)]
    refused = w.node.call_in_loop(lambda: w.statistics()["refused_full"])
    assert refused <= w.capacity, f"{refused} pushes refused for a worker holding {w.capacity}"


def test_a_burst_far_beyond_the_workers_room_all_completes(workers: Workers) -> None:
    """2 000 tasks sent at once to a worker holding 8: "room" notices that overtake
    the "full" replies they answer must not leave the submitter waiting forever
    (it stalled after a few hundred tasks)."""
    workers(1, concurrency=2)
    results = [t.add.delay(i, 1) for i in range(2000)]
    deadline = time.monotonic() + 20 * SLOW
    got = [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in results]
    assert got == [i + 1 for i in range(2000)]
