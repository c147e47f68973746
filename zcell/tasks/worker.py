"""The worker side: runs the tasks its queues' consumers receive.

A worker consumes queue Q by hosting one actor of type ``zcell.queue.Q`` on its
node; the mesh directory tells every submitter which live nodes consume what.
A submitter pushes a task with ``call("run", {"msg": ...})``; the reply is the
outcome. The worker holds at most ``concurrency x prefetch`` tasks (running,
waiting for a slot, or held for their ETA); beyond that it answers "full" at
once and, when a slot frees, sends each refused submitter's agent "room".

Before a task's code runs the worker claims it at its submitter's agent, so a
task is never started twice by a re-dispatch (docs/tasks.md, "The claim"),
unless the submitter granted it (``"go"`` in the message) and it gets a slot at
once or within ``HELD_AFTER`` (a task pushed ahead, "prefetched"): it then starts
with no claim, and the worker says so ("started") if it runs a while.
Each task runs in a greenlet of its own under ``concurrency`` slots; a task
waiting in ``TaskResult.get()`` lends its slot out meanwhile (and takes one
back after), so tasks that wait on tasks never deadlock the workers.

Hooks for cross-cutting behaviour (retries, limits, signals): ``_before_start``,
``_on_success``, ``_on_failure``, ``_on_retry``, ``_on_revoked``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
import traceback
from datetime import datetime
from sys import intern
from typing import TYPE_CHECKING, Any

import gevent
from gevent import GreenletExit
from gevent.event import Event
from gevent.lock import Semaphore
from greenlet import getcurrent

from .._wire.codec import Checked
from ..actors.actor import Actor
from ..actors.hosting import HandlerKilled
from ..errors import NodeStopped, ProtocolError, ZcellError, error_wire
from . import events as task_events
from . import signals
from .adrift import rejoin_wait
from .agent import attach
from .builtins import builtin
from .errors import NotRegistered, Retry, TaskRevokedError
from .followup import after
from .inspect import install as install_control_ops
from .limits import RateLimiter, TimeLimits, parse_rate
from .message import WIRE, check
from .records import Expiring
from .request import Request
from .routing import check_queue, queue_actor_name
from .runtime import DROPPED, DUPLICATES, Runtime, runtime_of
from .signals import send_safely
from .states import FAILURE, RECEIVED, RETRY, REVOKED, STARTED, SUCCESS

if TYPE_CHECKING:
    from ..actors.proxy import ActorProxy
    from ..node import Node
    from .app import App
    from .task import Task

__all__ = ["QueueConsumer", "Worker"]

log = logging.getLogger(__name__)

#: Seconds a worker waits for a submitter to answer a claim (then runs the task).
CLAIM_TIMEOUT = 5.0
#: Seconds a task started under its submitter's grant runs before the worker tells
#: the submitter so ("started"); one that ends sooner is told by its outcome.
STARTED_AFTER = 0.02
#: Seconds a granted task that found no slot free waits for one before the worker
#: tells its submitter it holds it ("held"; it then starts only after a claim).
HELD_AFTER = 0.02
#: Most submitters remembered as refused ("full") at once, for "room" notices.
MAX_REFUSED = 10_000
#: Seconds between looks whether a cancelled queue's held tasks have ended.
RETIRE_POLL = 0.1


class _Terminated(GreenletExit):  # type: ignore[misc]  # gevent is untyped
    """Thrown into a task's greenlet by ``revoke(terminate=True)``."""


class QueueConsumer(Actor):
    """Base of the consumer actors: ``zcell.queue.<Q>`` hosted by a worker."""

    name = "zcell.queue"

    class state:
        node: Any  # set by the hosting node before __init__

        def run(self, msg: Any) -> dict[str, Any]:
            """Run a task message; the reply is its outcome (or "full")."""
            runtime = runtime_of(self.node)
            if runtime is None or runtime.worker is None:
                return {"s": "full", "cap": 0}
            return runtime.worker.accept(msg)


def consumer_class(queue: str) -> type[Actor]:
    """The consumer actor type of ``queue`` (made on demand, by queue name)."""
    name = queue_actor_name(queue)
    return type(f"QueueConsumer[{queue}]", (QueueConsumer,), {"name": name, "__module__": __name__})


class Worker:
    """Runs tasks of ``queues`` on ``node`` (see the module doc).

    Args:
        app: The app whose tasks it runs.
        node: The worker's started node.
        queues: Queues to consume (default ``task_default_queue``).
        concurrency: Tasks running at once (default ``worker_concurrency``).
        prefetch: ``worker_prefetch_multiplier``: held tasks per slot.
    """

    def __init__(
        self,
        app: App,
        node: Node,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
    ) -> None:
        conf = app.conf
        self._settings = conf.live()  # read a task: no method call a read
        self.app = app
        self.node = node
        self.queues = [check_queue(q) for q in (queues or [conf.task_default_queue])]
        self.concurrency = int(concurrency or conf.worker_concurrency)
        self.prefetch = int(prefetch or conf.worker_prefetch_multiplier)
        if self.concurrency < 1 or self.prefetch < 1:
            raise ValueError("concurrency and prefetch must be at least 1")
        self.capacity = self.concurrency * self.prefetch
        self.held = 0
        self.refusals = 0  # pushes answered "full"
        self.granted = 0  # tasks started at once under their submitter's grant
        self.claimed = 0  # tasks started after a claim (they were held first)
        self.closing = False
        self.holding: dict[str, dict[str, Any]] = {}  # held task messages (inspect)
        #: Per-node overrides of task options by task name, set by the control
        #: operations ``rate_limit`` and ``time_limit``: {"rate_limit": "10/s",
        #: "soft_time_limit": s, "time_limit": s}. The rate limiter and the time
        #: limits read them before the task's own options (docs/monitoring.md).
        self.overrides: dict[str, dict[str, Any]] = {}
        self.totals: collections.Counter[str] = collections.Counter()  # ended, by task name
        self.running: dict[str, tuple[Any, Request]] = {}  # id -> (its greenlet, request)
        self.waits: dict[str, Event] = {}  # held tasks not started: woken by revoke/stop
        self.scheduled: dict[str, dict[str, Any]] = {}  # held for their ETA
        self.refused: collections.OrderedDict[str, ActorProxy] = collections.OrderedDict()
        self.records = Expiring(
            lambda: float(conf.result_expires), lambda: int(conf.result_max_records)
        )
        # Task id -> (retries, attempt, submitter's agent id) of the tasks taken
        # here: the same delivery twice (a beat tick sent by two leaders in a
        # hand-over) runs once.
        self.seen = Expiring(
            lambda: float(conf.result_expires), lambda: int(conf.result_max_records)
        )
        self.consumers: dict[str, ActorProxy] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.limiters: dict[str, RateLimiter] = {}  # task name -> its rate limit here
        self._slots: Semaphore | None = None
        self.runtime: Runtime | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Worker:
        """Host the agent and a consumer per queue (``zcell worker`` also makes
        this node the app's: ``app.use_node``)."""
        self.runtime = attach(self.app, self.node)
        self.runtime.worker = self
        self._slots = self.node.call_in_loop(Semaphore, self.concurrency)
        for queue in self.queues:
            self.add_consumer(queue)
        self.node.call_in_loop(self._watchable)
        send_safely(signals.worker_ready, self)
        return self

    def _watchable(self) -> None:
        """Answer the task inspect/control operations; publish a worker's events."""
        install_control_ops(self)
        events = self.node.monitor.events
        events.heartbeat_fields = lambda: task_events.heartbeat_fields(self)
        if self.app.conf.worker_send_task_events:
            events.enable()
        task_events.worker_online(self)

    def add_consumer(self, queue: str) -> None:
        """Start consuming ``queue`` (spawns its consumer actor here)."""
        cls = consumer_class(queue)
        self.node.register(cls)
        self.consumers[queue] = self.node.spawn(cls, on=self.node.id)
        if queue not in self.queues:
            self.queues.append(queue)

    def stop(self, timeout: float = 10.0) -> int:
        """Take no more tasks, give held ones back to their submitters, and let
        running ones finish for up to ``timeout`` seconds. Returns how many still run."""
        send_safely(signals.worker_shutdown, self)
        try:
            self.node.call_in_loop(self._close)
        except NodeStopped:
            return len(self.running)  # its node stopped first: nothing runs on
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.running)

    def _close(self) -> None:
        task_events.worker_offline(self)
        self.closing = True
        for wake in self.waits.values():
            wake.set()

    # -- taking a task (loop thread: the consumer's handler) ---------------------

    def accept(self, raw: Any) -> dict[str, Any]:
        """Hold, then run, a task message from the wire; returns its outcome."""
        try:
            msg = check(raw)
        except ProtocolError as exc:
            self.node.stats[DROPPED] += 1
            log.warning("zcell: dropped a malformed task message: %s", exc)
            task_events.rejected(self.node, _raw_id(raw), str(exc))
            return {"s": "dropped"}
        if self.closing or self.held >= self.capacity or msg["queue"] not in self.queues:
            self.refusals += 1
            self._refuse(msg["reply_to"])
            return self._full()
        if self._seen_before(msg):
            return self._duplicate(msg)
        # The agent's id interned: one string per submitter, not one per task.
        self.seen.put(msg["id"], (msg["retries"], msg["attempt"], intern(msg["reply_to"].id)))
        self.held += 1
        self.holding[msg["id"]] = msg
        came = time.monotonic()
        try:
            granted = queued = False
            if msg.get("go") is True:
                granted = self._starts_at_once(msg)
                queued = not granted and self._waits_for_a_slot_only(msg)
            if not (granted or queued):
                _tell(msg, "held", self._room_of(msg))
            task_events.received(self.node, msg)
            return self._process(msg, came, granted, queued)
        finally:
            self.held -= 1
            if self.holding.get(msg["id"]) is msg:  # not a later copy's (taken over)
                del self.holding[msg["id"]]
            self._room()

    def _seen_before(self, msg: dict[str, Any]) -> bool:
        """This delivery was taken here already: the same retry, from another
        submitter (a beat tick sent by two leaders) or not a later attempt.

        A later attempt from the same submitter is it taking over a copy held here
        unclaimed (and pushed here again): that copy's claim is refused, so the
        task runs once."""
        seen: tuple[int, int, str] | None = self.seen.get(msg["id"])
        if seen is None or seen[0] != msg["retries"]:
            return False
        return bool(seen[2] != msg["reply_to"].id or msg["attempt"] <= seen[1])

    def _duplicate(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A delivery taken here already: its outcome if known, else REVOKED
        (it runs or waits here; it is not run twice)."""
        self.node.stats[DUPLICATES] += 1
        record: dict[str, Any] | None = self.records.get(msg["id"])
        if record is not None:
            return record
        exc = TaskRevokedError(f"task {msg['id']} was delivered twice: it runs once, here")
        return {"s": REVOKED, "e": error_wire(exc), "name": msg["name"], "worker": self.node.name}

    def _refuse(self, agent: ActorProxy) -> None:
        self.refused.pop(agent.id, None)
        self.refused[agent.id] = agent
        while len(self.refused) > MAX_REFUSED:
            self.refused.popitem(last=False)

    def _room(self) -> None:
        """A slot freed: tell every submitter refused meanwhile."""
        if self.closing or not self.refused:
            return
        refused, self.refused = self.refused, collections.OrderedDict()
        consumers = [p.id for p in self.consumers.values()]
        for agent in refused.values():
            try:
                agent.send("room", {"consumers": consumers}, nowait=True)
            except ZcellError:
                pass

    def _full(self) -> dict[str, Any]:
        """The reply to a push this worker cannot take (it was never started)."""
        return {"s": "full", "cap": self.capacity, "slots": self.concurrency}

    def _room_of(self, msg: dict[str, Any]) -> dict[str, Any]:
        """A notice's task and what this worker holds: ``cap`` tasks, ``slots`` running."""
        return {
            "id": msg["id"],
            "attempt": msg["attempt"],
            "cap": self.capacity,
            "slots": self.concurrency,
        }

    def _tell_started(self, msg: dict[str, Any]) -> None:
        """(A hub timer) the granted task ``msg`` runs a while: tell its submitter."""
        gevent.spawn(_tell, msg, "started", {**self._room_of(msg), "worker": self.node.name})

    def _starts_at_once(self, msg: dict[str, Any]) -> bool:
        """Whether the task can start now: a slot is free, and it has no ETA to
        wait for and no rate limit here."""
        assert self._slots is not None
        return not self._slots.locked() and self._waits_for_a_slot_only(msg)

    def _waits_for_a_slot_only(self, msg: dict[str, Any]) -> bool:
        """Whether nothing but a slot stands between the task and its start: no
        ETA to wait for, no rate limit here."""
        if msg["eta"] is not None and msg["eta"] > time.time():
            return False
        task = self.app.tasks.get(msg["name"])
        return task is None or not self._rate_of(task)

    def _slot_under_grant(self, msg: dict[str, Any], request: Request) -> bool:
        """Wait for a slot for a granted task that found none free (prefetched):
        True when it got one within ``HELD_AFTER`` (it starts under the grant, no
        notice); else its submitter was told "held" meanwhile and it needs a claim."""
        told: list[bool] = []

        def hold() -> None:  # a hub timer: it cannot send itself
            told.append(True)
            gevent.spawn(_tell, msg, "held", self._room_of(msg))

        timer = gevent.get_hub().loop.timer(HELD_AFTER)
        timer.start(hold)
        try:
            self._take_slot(request)
        finally:
            timer.close()
        return not told

    def _process(
        self, msg: dict[str, Any], came: float, granted: bool = False, queued: bool = False
    ) -> dict[str, Any]:
        """Hold, claim and run the task that came at ``came`` (``time.monotonic()``).
        ``granted``: its submitter let it start without a claim, and it can start at
        once; ``queued``: granted, but it waits for a slot first (docs/tasks.md,
        "The claim")."""
        self._hold_until_eta(msg)
        if self.closing:
            return self._full()  # given back: never started
        ended = self._ended_before_start(msg)
        if ended is not None:
            return ended
        task = self.app.tasks.get(msg["name"]) or builtin(self.app, msg["name"])
        if task is None:
            return self._outcome(msg, FAILURE, exc=NotRegistered(
                f"task {msg['name']!r} is not registered on worker {self.node.name}; start "
                "the worker with -A on the app that includes its module"
            ))  # fmt: skip
        request = Request(msg, self.node.name, self)
        if queued:
            granted = self._slot_under_grant(msg, request)
        else:
            if not granted:  # a granted task has no rate limit here (_starts_at_once)
                self._wait_for_rate(task)
            self._take_slot(request)
        try:
            if self.closing:
                return self._full()
            if queued and granted:
                # It waited for the slot with no claim to check it: it may have
                # expired, or been revoked, meanwhile.
                ended = self._ended_before_start(msg)
                if ended is not None:
                    return ended
            if granted and self.node.woke_at() > came:
                # This node was stopped since the task came, long enough to be
                # taken for dead: its submitter failed or re-sent the task.
                granted = False
            if not granted and not self._claim(msg, came):
                return {"s": "refused"}
            if granted:
                self.granted += 1
            else:
                self.claimed += 1
            if self._is_revoked(msg):
                self._on_revoked(task, request, terminated=False)
                return self._outcome(msg, REVOKED)
            if not granted:
                return self._run(task, request)
            # Its submitter hears that it started only if it runs a while: a task
            # that ends sooner is told by its outcome alone (one message less).
            notice = gevent.get_hub().loop.timer(STARTED_AFTER)
            notice.start(self._tell_started, msg)
            try:
                outcome = self._run(task, request)
            finally:
                notice.close()
            # The reply teaches the submitter this worker's room (it may have had
            # no notice): not kept in the record. Its value was checked as the
            # task returned it (``Runtime.encodable``); the rest is ours.
            return Checked(outcome, cap=self.capacity, slots=self.concurrency)
        finally:
            self._give_slot(request)

    def _hold_until_eta(self, msg: dict[str, Any]) -> None:
        """Hold the task here until its ETA (woken early by revoke or stop)."""
        eta = msg["eta"]
        if eta is None or eta <= time.time():
            return
        task_id = msg["id"]
        wake = self.waits[task_id] = Event()
        self.scheduled[task_id] = msg
        try:
            while not wake.is_set() and time.time() < eta:
                wake.wait(max(0.0, eta - time.time()))
        finally:
            self.waits.pop(task_id, None)
            self.scheduled.pop(task_id, None)

    def _revoked_ids(self) -> Expiring:
        assert self.runtime is not None
        return self.runtime.revoked

    def _is_revoked(self, msg: dict[str, Any]) -> bool:
        """Revoked by its id, or by its work-flow's root id."""
        revoked = self._revoked_ids()
        return msg["id"] in revoked or msg["root_id"] in revoked

    def _ended_before_start(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """REVOKED when revoked or expired (it then never starts)."""
        expires = msg["expires"]
        revoked = self._is_revoked(msg)
        expired = not revoked and expires is not None and expires <= time.time()
        if not (revoked or expired):
            return None
        task = self.app.tasks.get(msg["name"])
        self._on_revoked(task, Request(msg, self.node.name), terminated=False, expired=expired)
        return self._outcome(msg, REVOKED)

    def _wait_for_rate(self, task: Task) -> None:
        """Wait for the task's rate limit (per task, on this node), holding its
        place here but no concurrency slot, so other tasks run meanwhile."""
        limiter = self.limiters.get(task.name)
        if limiter is None:
            rate = self._rate_of(task)
            if not rate:
                return
            limiter = self.limiters[task.name] = RateLimiter(parse_rate(rate))
        limiter.acquire()

    def _rate_of(self, task: Task) -> Any:
        """The task's rate limit here (None or "" when it has none)."""
        override = self.overrides.get(task.name, {})
        if "rate_limit" in override:  # control rate_limit: this node's rate wins
            return override["rate_limit"]
        return task.rate_limit or self._settings["task_default_rate_limit"]

    def _claim(self, msg: dict[str, Any], came: float) -> bool:
        """Ask the submitter whether this attempt may start. A submitter out of
        reach cannot re-dispatch it: the task runs. Unless this node was stopped
        since the task came (SIGSTOP, a paused VM) long enough to be taken for
        dead: then the submitter may have sent it elsewhere, and it is out of reach
        because the two dropped each other; the claim is asked again until they
        meet again (``adrift.rejoin_wait``)."""
        args = {"id": msg["id"], "attempt": msg["attempt"], "worker": self.node.name}
        deadline = None
        pause = 0.05
        while True:
            try:
                return bool(msg["reply_to"].send("claim", args, timeout=CLAIM_TIMEOUT))
            except NodeStopped:
                return False  # this node stops: give it back
            except ZcellError as exc:
                now = time.monotonic()
                if self.node.woke_at() > came:
                    if deadline is None:
                        deadline = now + rejoin_wait(self.node)
                    if now < deadline:
                        gevent.sleep(pause)
                        pause = min(2 * pause, 0.5)
                        continue
                log.info(
                    "zcell: cannot claim task %s at its submitter (%s): running it",
                    msg["id"],
                    exc,
                )
                return True

    # -- slots (the request's owner: TaskResult.get lends the slot out) ---------

    def pause(self, request: Request) -> None:
        """The task waits (``TaskResult.get``): lend its slot and its place out."""
        self._give_slot(request)
        self.held -= 1
        _tell(request.msg, "lending", _lent(request.msg, True))
        self._room()

    def resume(self, request: Request) -> None:
        """The wait is over: take a slot back (the held count may run over briefly)."""
        self.held += 1
        _tell(request.msg, "lending", _lent(request.msg, False))
        self._take_slot(request)

    def _give_slot(self, request: Request) -> None:
        if request.has_slot:
            request.has_slot = False
            assert self._slots is not None
            self._slots.release()

    def _take_slot(self, request: Request) -> None:
        if not request.has_slot:
            assert self._slots is not None
            self._slots.acquire()
            request.has_slot = True

    # -- running ------------------------------------------------------------------

    def _run(self, task: Task, request: Request) -> dict[str, Any]:
        """Run the task in this greenlet (the consumer's handler): a greenlet of its
        own cost two turns of the loop per task. ``revoked`` with terminate throws
        into it only while the task's own code runs (``_terminate``)."""
        me = getcurrent()
        me.zcell_task_request = request
        self.running[request.id] = (me, request)
        try:
            return self._execute(task, request)
        finally:
            self.running.pop(request.id, None)
            me.zcell_task_request = None  # the handler greenlet is reused

    def _execute(self, task: Task, request: Request) -> dict[str, Any]:
        msg = request.msg
        try:
            self._before_start(task, request)
            if request.kill_asked:  # revoked with terminate before its code started
                raise _Terminated
            request.killable = True
            try:
                value = self._call(task, request)
            finally:
                request.killable = False
            assert self.runtime is not None
            self.runtime.encodable(value)
        except Retry as exc:
            self._on_retry(task, request, exc)
            return self._outcome(msg, RETRY, exc=exc.exc or exc, countdown=_countdown(exc.when))
        except _Terminated:
            self._on_revoked(task, request)
            return self._outcome(msg, REVOKED)
        except HandlerKilled:
            # The handler itself is killed (its consumer stopped): the task ends
            # revoked here and the handler goes on ending (its caller is told).
            self._on_revoked(task, request)
            self._outcome(msg, REVOKED)
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: it fails this task only
            self._on_failure(task, request, exc)
            return self._outcome(msg, FAILURE, exc=exc)
        self._on_success(task, request, value)
        return self._outcome(msg, SUCCESS, value=value)

    def _call(self, task: Task, request: Request) -> Any:
        """Run the task's code under its time limits (this node's ``time_limit``
        override, else the message's); an error the task lists in
        ``autoretry_for`` becomes a retry (or, retries used up, the failure)."""
        msg = request.msg
        override = self.overrides.get(task.name, {})
        soft = override.get("soft_time_limit", msg["soft_time_limit"])
        hard = override.get("time_limit", msg["time_limit"])
        with TimeLimits(soft, hard) if soft or hard else _NO_LIMITS:
            try:
                return task(*msg["args"], **msg["kwargs"])
            except Retry:
                raise
            except task.autoretry_for as exc:
                raise task.autoretry(exc) from exc

    def _outcome(
        self,
        msg: dict[str, Any],
        state: str,
        value: Any = None,
        exc: BaseException | None = None,
        countdown: float | None = None,
    ) -> dict[str, Any]:
        """The reply to the submitter, also kept here as the task's record."""
        self.counts[state] += 1
        self.totals[msg["name"]] += 1
        outcome: dict[str, Any] = {
            "s": state,
            "v": None if msg["ignore_result"] else value,
            "e": error_wire(exc) if exc is not None else None,
            "tb": _traceback(exc),
            "done": time.time(),
            "name": msg["name"],
            "worker": self.node.name,
            "retries": msg["retries"],
            "countdown": countdown,
        }
        if state == REVOKED and exc is None:
            outcome["e"] = error_wire(TaskRevokedError(f"task {msg['id']} was revoked"))
        if not msg["ignore_result"]:
            self.records.put(msg["id"], outcome)
        if state != RETRY and self.runtime is not None:
            after(self.runtime, msg, outcome)  # the canvas: chain, chord, watchers
        return outcome

    # -- hooks: where retries, limits and signals plug in ------------------------

    def _before_start(self, task: Task, request: Request) -> None:
        """About to run ``task`` (the claim succeeded; a slot is held)."""
        request.time_start = time.time()
        task_events.started(self.node, request)
        if request.msg["track_started"]:
            _tell(request.msg, "update_state", {"id": request.id, "state": STARTED})
        send_safely(
            signals.task_prerun,
            task,
            task_id=request.id,
            task=task,
            args=request.args,
            kwargs=request.kwargs,
        )

    def _on_success(self, task: Task, request: Request, value: Any) -> None:
        """The task returned ``value``."""
        send_safely(signals.task_success, task, result=value)
        task_events.succeeded(self.node, request, value)
        self._postrun(task, request, value, SUCCESS)

    def _on_failure(self, task: Task, request: Request, exc: BaseException) -> None:
        """The task raised ``exc`` (anything, SystemExit included)."""
        task_events.failed(self.node, request, exc, _traceback(exc))
        log.error("zcell: task %s[%s] raised %r", task.name, request.id, exc)
        send_safely(
            signals.task_failure,
            task,
            task_id=request.id,
            exception=exc,
            args=request.args,
            kwargs=request.kwargs,
            traceback=exc.__traceback__,
            einfo=_traceback(exc),
        )
        self._postrun(task, request, exc, FAILURE)

    def _on_retry(self, task: Task, request: Request, exc: Retry) -> None:
        """The task asked to run again (``self.retry`` or ``autoretry_for``)."""
        task_events.retried(self.node, request, exc.exc or exc, _traceback(exc.exc or exc))
        log.info("zcell: task %s[%s] will retry: %s", task.name, request.id, exc)
        reason = exc.exc or exc
        send_safely(
            signals.task_retry, task, request=request, reason=reason, einfo=_traceback(reason)
        )
        self._postrun(task, request, exc, RETRY)

    def _on_revoked(
        self,
        task: Task | None,
        request: Request,
        terminated: bool = True,
        expired: bool = False,
    ) -> None:
        """The task was revoked: terminated while it ran (``revoke(terminate=True)``),
        or ended before it started (revoked, or ``expired``). ``task`` is None when
        this worker does not know the task's name."""
        task_events.revoked(self.node, request.id, terminated=terminated, expired=expired)
        if terminated:
            log.warning("zcell: task %s[%s] terminated (revoked)", request.task, request.id)
        send_safely(
            signals.task_revoked,
            task if task is not None else request.task,
            request=request,
            terminated=terminated,
            signum=None,
            expired=expired,
        )

    @staticmethod
    def _postrun(task: Task, request: Request, retval: Any, state: str) -> None:
        """``task_postrun``: the task ran, whatever its outcome."""
        send_safely(
            signals.task_postrun,
            task,
            task_id=request.id,
            task=task,
            args=request.args,
            kwargs=request.kwargs,
            retval=retval,
            state=state,
        )

    # -- the agent's side -----------------------------------------------------------

    def revoked(self, task_ids: list[str], terminate: bool) -> int:
        """Revoked: held ones end now (never started); with ``terminate``, running
        ones are killed. Returns how many of them ran here."""
        killed = 0
        ids = set(task_ids)
        for task_id in task_ids:
            wake = self.waits.get(task_id)
            if wake is not None:
                wake.set()
        for runner, request in list(self.running.values()):
            if terminate and (request.id in ids or request.root_id in ids):
                request.kill_asked = True
                gevent.get_hub().loop.run_callback(self._terminate, runner, request)
                killed += 1
        return killed

    def _terminate(self, runner: Any, request: Request) -> None:
        """(A hub callback) end the task with ``_Terminated`` if its code still
        runs in ``runner``, which is then suspended inside it (the handler
        greenlet goes on to other work once the task ended)."""
        running = self.running.get(request.id)
        if request.killable and running is not None and running[0] is runner:
            runner.throw(_Terminated)

    def query(self, task_ids: list[str]) -> dict[str, Any]:
        """Records of ``task_ids`` known here (running ones as STARTED, held
        ones as RECEIVED)."""
        found: dict[str, Any] = {}
        for task_id in task_ids:
            record = self.records.get(task_id)
            if record is not None:
                found[task_id] = record
            elif task_id in self.running:
                request = self.running[task_id][1]
                found[task_id] = {"s": STARTED, "name": request.task, "worker": self.node.name}
            elif (seen := self.seen.get(task_id)) is not None:
                # Held here, or ended with no record kept (ignore_result, a
                # refused claim, the record evicted): which attempt, and which.
                found[task_id] = {
                    "s": RECEIVED, "worker": self.node.name, "attempt": seen[1],
                    "ended": task_id not in self.holding,
                }  # fmt: skip
        return found

    # -- control (loop thread: the operations in inspect.py) -------------------------

    def override(self, task_name: str, **settings: Any) -> None:
        """Set per-node overrides of a task's options (see ``overrides``); a new
        rate applies from the task's next wait (its limiter is made afresh)."""
        self.overrides.setdefault(task_name, {}).update(settings)
        if "rate_limit" in settings:
            self.limiters.pop(task_name, None)

    def resize(self, n: int) -> int:
        """Run ``n`` more (or, negative, fewer) tasks at once; never fewer than one.
        Slots taken away are taken as running tasks give theirs back. Returns the
        new concurrency."""
        n = max(n, 1 - self.concurrency)
        self.concurrency += n
        self.capacity = self.concurrency * self.prefetch
        assert self._slots is not None
        for _ in range(n):
            self._slots.release()
        for _ in range(-n):
            gevent.spawn(self._slots.acquire)
        if n > 0:
            self._room()
        return self.concurrency

    def cancel_consumer(self, queue: str) -> bool:
        """Stop consuming ``queue``: new tasks of it are refused now; its consumer
        actor leaves once the tasks of it held here have ended. False if not consumed."""
        consumer = self.consumers.pop(queue, None)
        if consumer is None or queue not in self.queues:
            return False
        self.queues.remove(queue)
        gevent.spawn(self._retire, queue, consumer)
        return True

    def _retire(self, queue: str, consumer: ActorProxy) -> None:
        while any(m["queue"] == queue for m in list(self.holding.values())):
            gevent.sleep(RETIRE_POLL)
        try:
            self.node.kill(consumer)
        except ZcellError as exc:
            log.info("zcell: consumer of %s already gone: %s", queue, exc)

    def statistics(self) -> dict[str, int]:
        """Counters: held, running, scheduled, pushes refused for want of room
        (``refused_full``), tasks started at once under their submitter's grant
        (``started_granted``) or after a claim (``started_claimed``), and
        outcomes by state."""
        stats = {
            "held": self.held,
            "running": len(self.running),
            "scheduled": len(self.scheduled),
            "refused_full": self.refusals,
            "started_granted": self.granted,
            "started_claimed": self.claimed,
        }
        stats.update({f"tasks_{k.lower()}": v for k, v in self.counts.items()})
        stats[DROPPED] = self.node.stats.get(DROPPED, 0)
        stats[DUPLICATES] = self.node.stats.get(DUPLICATES, 0)
        return stats


#: A task with no time limit runs in this (no timers, nothing made a task).
_NO_LIMITS = contextlib.nullcontext()


def _tell(msg: dict[str, Any], method: str, kwargs: dict[str, Any]) -> None:
    """Fire and forget to the task's submitter (it may be gone: nothing to do)."""
    try:
        msg["reply_to"].send(method, kwargs, nowait=True)
    except ZcellError:
        pass


def _lent(msg: dict[str, Any], lent: bool) -> dict[str, Any]:
    """The submitter's notice that the task lends its place here out (or not)."""
    return {"id": msg["id"], "attempt": msg["attempt"], "lent": lent}


def _raw_id(raw: Any) -> str | None:
    """The id of a malformed task message, when it has a readable one."""
    if isinstance(raw, list) and len(raw) == len(WIRE):
        task_id = raw[WIRE.index("id")]
    else:
        task_id = raw.get("id") if isinstance(raw, dict) else None
    return task_id if isinstance(task_id, str) else None


def _countdown(when: float | datetime | None) -> float | None:
    if isinstance(when, datetime):
        return max(0.0, when.timestamp() - time.time())
    return None if when is None else max(0.0, float(when))


def _traceback(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
