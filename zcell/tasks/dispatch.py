"""The submitter's side: one ``Dispatcher`` per node owns each task it submits
until the outcome arrives (docs/tasks.md, "Delivery").

Every piece of its state is touched only in the node's loop thread: program
threads hand work over with ``node.call_in_loop``/``node.submit``; the agent's
handlers and the outcomes of dispatch calls already run there.

A task waits here until a consumer of its queue (an actor of type
``zcell.queue.<Q>``, hosted by a worker) has room; it is then pushed to it as
a call of ``run`` (``node.call_then``) whose reply is the outcome. A consumer
that answers "full" is skipped until its worker sends "room". Consumers with
room take turns.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from .._transport.loop import Flag
from .._wire.codec import Checked
from ..errors import (
    ActorStopped,
    NodeDown,
    NodeStopped,
    NoSuchActor,
    ProtocolError,
    ZcellError,
    error_from_wire,
    error_wire,
)
from . import events as task_events
from .adrift import Adrift
from .errors import ChordError, TaskRevokedError, WorkerLostError
from .followup import after, failure, has_followup
from .message import make, pack
from .routing import queue_actor_name
from .states import FAILURE, PENDING, READY_STATES, RECEIVED, RETRY, REVOKED, STARTED, SUCCESS
from .strays import Strays

if TYPE_CHECKING:
    from ..actors.proxy import ActorProxy
    from .runtime import Runtime

__all__ = ["Dispatcher", "Entry"]

log = logging.getLogger(__name__)

#: Seconds between re-checks of waiting tasks when nothing else wakes the pump
#: (a safety net: consumers joining and "room" notices wake it at once).
RECHECK = 0.2
#: What a push that failed where it stood fails with: the consumer's node is gone.
UNREACHABLE = (NodeDown, NoSuchActor, ActorStopped)
#: Seconds between looks for consumers gone from the mesh, whose entries in the
#: per-consumer tables (capacity, last heard, room, full) are then dropped.
FORGET_EVERY = 10.0
#: Tasks a program thread hands over before it waits for the loop to take them,
#: and what the loop takes per turn (``Dispatcher.hand_over``).
HAND_BATCH = 64
#: Queues whose round-robin turn is kept while nothing waits in them (the least
#: recently used go first beyond it).
TURNS_KEPT = 4096
#: Seconds a program thread waits at most for the loop to take what it handed over
#: (then it goes on: the loop may be busy or stopping).
HAND_WAIT = 1.0


class Entry:
    """A task this node submitted: its message, where it is, and its outcome.

    Written only in the loop thread; ``TaskResult`` reads it from anywhere.
    """

    def __init__(self, msg: dict[str, Any], queue: str, max_redeliveries: int) -> None:
        self.id: str = msg["id"]
        self.name: str = msg["name"]
        self.msg = msg
        self.queue = queue
        self.state = PENDING
        self.result: Any = None
        self.traceback: str | None = None
        self.date_done: float | None = None
        self.worker: str | None = None
        self.retries: int = msg["retries"]
        self.held = False  # a worker holds it (it cannot be lost by a flush)
        self.claimed = False  # its code may have started
        # Pushed with a grant: a worker that can start it at once does so without
        # a claim, and says "started"; one that holds it first says "held" and
        # claims it later. Until either notice, it may have started.
        self.granted = False
        self.consumer: str | None = None  # the consumer actor it was pushed to
        self.lent = False  # it waits in get() there: its place is lent out
        self.waits_there = False  # held there, not started: it takes no slot
        self.moved = False  # taken over from where it was held (once at most)
        self.waiting = False  # in its queue's deque here (not pushed yet)
        self.pushed_at = 0.0  # time.monotonic() of the last push
        self.redeliveries = 0
        self.max_redeliveries = max_redeliveries
        self.done = Flag()
        self.callbacks: list[Callable[[Entry], None]] = []
        self.reported = False  # its outcome came from a worker (which did the follow-up)
        # Nothing in its message needs the codec's walk (app.send_task decides).
        self.checked = False

    @property
    def ready(self) -> bool:
        return self.done.is_set()

    @property
    def may_have_started(self) -> bool:
        """Claimed, or granted with no word from the worker yet: a re-dispatch
        could run it twice."""
        return self.claimed or (self.granted and not self.held)


class Dispatcher:
    """Holds, pushes and follows this node's submitted tasks (see the module doc)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.node = runtime.node
        self.entries: dict[str, Entry] = {}  # not finished yet
        # root id -> those entries of its work-flow: a revoke of a root finds them
        # without a walk of every entry (one per revoke made many revokes in a row
        # cost the square of the tasks here).
        self.by_root: dict[str, dict[str, Entry]] = {}
        # Every entry a TaskResult of this process still holds (AsyncResult(id) here).
        self.known: weakref.WeakValueDictionary[str, Entry] = weakref.WeakValueDictionary()
        self.waiting: dict[str, collections.deque[Entry]] = {}
        # queue -> entries in its deque that no longer wait there (finished: revoked
        # or expired). They are dropped as the pump reaches them, or all at once
        # when they are half the deque: a remove() each made a burst of revokes or
        # expiries cost the square of the tasks waiting.
        self.stale: collections.Counter[str] = collections.Counter()
        # Handed over by program threads, not taken by the loop yet (hand_over).
        self.incoming: collections.deque[Entry] = collections.deque()
        self._take_scheduled = False  # a _take_incoming callback is scheduled
        self._taken = threading.Event()  # set by the loop each time it took some
        self.full: set[str] = set()  # consumer actor ids that answered "full"
        # Consumer actor ids whose worker (an older zcell) dropped a task pushed as
        # an array (message.pack): they are pushed the map.
        self.maps_only: set[str] = set()
        # consumer actor id -> time.monotonic() of the last push to it, reply or notice
        self.heard_at: dict[str, float] = {}
        # consumer actor id -> time.monotonic() of its worker's last "room" notice
        self.room_at: dict[str, float] = {}
        self.inflight: collections.Counter[str] = collections.Counter()
        # consumer actor id -> tasks of ours in flight there that wait in get() and
        # so lend their place at the worker out: they do not count against its room
        self.lent: collections.Counter[str] = collections.Counter()
        # consumer actor id -> tasks of ours its worker holds and has not started
        # (waiting for a slot, their ETA or their rate): they take no slot there
        self.holding: collections.Counter[str] = collections.Counter()
        # queue -> the tasks of ours a worker holds, not claimed, that could start
        # now if a slot were free (no later ETA): a consumer with a free slot and
        # nothing waiting here takes them over (``_take_over``), the oldest first.
        self.stealable: dict[str, dict[str, Entry]] = {}
        self.capacity: dict[str, int] = {}  # consumer actor id -> its worker's capacity
        self.slots: dict[str, int] = {}  # consumer actor id -> its worker's concurrency
        # A consumer's capacity and slots before its worker told them (its first
        # notice or "full"): those of a worker of this app's settings. Pushing
        # without a bound let a burst go out whole, to be refused whole and pushed
        # again.
        conf = runtime.app.conf
        self._settings = conf.live()  # read on every delay(): no method call a read
        self.first_slots = max(1, int(conf.worker_concurrency))
        self.first_guess = max(1, self.first_slots * int(conf.worker_prefetch_multiplier))
        # queue -> its round-robin turn, kept while the queue is idle (a queue that
        # gets one task at a time must still go round), the least recently used
        # first out beyond TURNS_KEPT (queue names may be made per tenant).
        self.turn: collections.OrderedDict[str, int] = collections.OrderedDict()
        # queue -> heap of (expires, n, entry) of the tasks with an expiry that wait
        # there (an entry pushed meanwhile is skipped when it comes up).
        self.expiring: dict[str, list[tuple[float, int, Entry]]] = {}
        self._seq = itertools.count()  # ties in those heaps
        self._wake: Event | None = None
        self._recheck: Any = None  # the hub timer that wakes the pump every RECHECK
        self._forgot_at = time.monotonic()  # the last look for consumers gone
        self._pump: gevent.Greenlet | None = None
        # Pushes that failed because this node was stopped (adrift.py).
        self.adrift = Adrift(self)
        # Watched steps of work-flows lost with the node to send them (strays.py).
        self.strays = Strays(self)

    # -- lifecycle (loop thread) ---------------------------------------------

    def start(self) -> None:
        """Start the pump greenlet in the node's loop."""
        self.node.call_in_loop(self._start)

    def _start(self) -> None:
        self._wake = Event()
        # A repeating timer wakes the pump, not a timeout on each wait: one
        # gevent Timeout made and cancelled per round was a share of every task.
        self._recheck = gevent.get_hub().loop.timer(RECHECK, RECHECK)
        self._recheck.start(self._wake.set)
        self._pump = gevent.spawn(self._run_pump)

    def stop(self) -> None:
        """End the pump (loop thread, the node stopping)."""
        timer, self._recheck = self._recheck, None
        if timer is not None:
            timer.close()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.kill(block=True, timeout=1.0)
        self.adrift.stop()
        self.strays.stop()

    def wake(self) -> None:
        """Have the pump look at the waiting tasks now (loop thread)."""
        if self._wake is not None:
            self._wake.set()

    def _run_pump(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.runtime.pull_revoked()
                self.adrift.look()
                self.strays.look()
                # A round's pushes to one worker leave together (Socket.send_soon).
                with self.node.corked():
                    self.pump()
                if time.monotonic() - self._forgot_at >= FORGET_EVERY:
                    self.forget_gone()
            except NodeStopped:
                return
            except Exception:
                log.exception("zcell: the task dispatcher failed a round (it goes on)")

    # -- submitting (loop thread) --------------------------------------------

    def waiting_count(self) -> int:
        """Tasks that wait here for a consumer (any thread: ``list()`` copies
        atomically under the GIL)."""
        return sum(map(len, list(self.waiting.values()))) - sum(list(self.stale.values()))

    def has_room(self) -> bool:
        """Fewer than ``task_pending_max`` tasks wait or are being handed over (any thread)."""
        waiting = self.waiting_count() + len(self.incoming)
        return waiting < int(self._settings["task_pending_max"])

    def can_hand_over(self) -> bool:
        """True in a program thread (not the loop's) while there is room."""
        return not self.node.in_loop() and self.has_room()

    def hand_over(self, entry: Entry) -> None:
        """From a program thread: queue *entry* for the loop and return at once,
        unless ``HAND_BATCH`` tasks are not taken yet: then wait until the loop
        took them (bounded).

        The loop takes what was handed over in one callback, not one per task.
        The wait keeps a thread calling delay() in a row from holding the GIL
        while the loop works: pyzmq lets go of it on every send and receive, and
        each time the loop then waited for the thread's next switch (its
        housekeeping ran late, and the two threads took turns per socket call).
        """
        incoming = self.incoming
        incoming.append(entry)
        if not self._take_scheduled:
            self._take_scheduled = True
            self.node.submit(self._take_incoming)
        if len(incoming) >= HAND_BATCH:
            taken = self._taken
            taken.clear()
            deadline = time.monotonic() + HAND_WAIT
            while len(incoming) >= HAND_BATCH // 2 and time.monotonic() < deadline:
                taken.wait(0.05)
                taken.clear()

    def _take_incoming(self) -> None:
        """(Loop) take what program threads handed over, ``HAND_BATCH`` at a time."""
        self._take_scheduled = False  # before reading: a task appended now schedules anew
        incoming = self.incoming
        for _ in range(HAND_BATCH):
            if not incoming:
                break
            self._take(incoming.popleft())
        if incoming and not self._take_scheduled:
            self._take_scheduled = True
            self.node.submit(self._take_incoming)  # the rest after the loop's other work
        self._taken.set()

    def add(self, entry: Entry) -> bool:
        """Take a new task; False when ``task_pending_max`` tasks already wait."""
        if not self.has_room():
            return False
        self._take(entry)
        return True

    def _take(self, entry: Entry) -> None:
        # The weak dict's own get() raises and catches a KeyError for a new id
        # (the usual case): a twentieth of the loop's time a task. Its table
        # holds weak references; a dead one is no entry.
        ref = self.known.data.get(entry.id)  # type: ignore[attr-defined]
        watched = ref() if ref is not None else None
        if watched is not None and watched is not entry and not watched.ready:
            # A work-flow's task this node watched and now sends itself.
            entry.callbacks.append(lambda done: self._mirror(done, watched))
        self.entries[entry.id] = self.known[entry.id] = entry
        self.by_root.setdefault(entry.msg["root_id"], {})[entry.id] = entry
        self._enqueue(entry)
        task_events.sent(self.node, entry.msg)

    def _mirror(self, done: Entry, watched: Entry) -> None:
        watched.reported = True
        watched.worker, watched.traceback = done.worker, done.traceback
        self.finish(watched, done.state, done.result)

    def _enqueue(self, entry: Entry, front: bool = False) -> None:
        self._unhold(entry)
        self._unsteal(entry)  # it waits here now: only the pump may push it
        entry.held = entry.claimed = entry.granted = False
        entry.consumer = None
        queue = self.waiting.setdefault(entry.queue, collections.deque())
        expires = entry.msg["expires"]
        if expires is not None:
            heap = self.expiring.setdefault(entry.queue, [])
            heapq.heappush(heap, (expires, next(self._seq), entry))
        if front:
            queue.appendleft(entry)
        else:
            queue.append(entry)
        entry.waiting = True
        self.wake()

    def unhanded(self) -> int:
        """Tasks no worker holds yet (what a flush waits for)."""
        return sum(1 for e in self.entries.values() if not (e.held or e.claimed))

    # -- pushing (loop thread) ------------------------------------------------

    def pump(self) -> None:
        """Push waiting tasks to consumers with room; expire the overdue; where
        nothing of a queue waits here, let consumers with a free slot take over
        its tasks held at other workers."""
        now = time.time()
        for queue, tasks in list(self.waiting.items()):
            self._expire(queue, now)
            self._drop_stale(queue, tasks)
            if not tasks:
                # Nothing waits there: forget the queue (names may be made per
                # tenant or per job; every round would look at each one ever used).
                del self.waiting[queue]
                self.expiring.pop(queue, None)
                continue
            candidates = self.node.actors(queue_actor_name(queue))
            consumers = [p for p in candidates if self._has_room(p.id)]
            while tasks and consumers:
                index = self._next_turn(queue) % len(consumers)
                consumer = consumers[index]
                entry = tasks.popleft()
                entry.waiting = False
                self._push(entry, consumer, _later(entry, now))
                if not self._has_room(consumer.id):
                    consumers.remove(consumer)
                self._drop_stale(queue, tasks)
        for queue in [q for q in self.stealable if not self.waiting.get(q)]:
            self._take_over(queue, self.node.actors(queue_actor_name(queue)))

    def _take_over(self, queue: str, candidates: list[ActorProxy]) -> None:
        """No worker idles while another holds tasks of this queue that wait there
        for a slot (TASKS.md): a consumer with a slot free of our tasks takes over
        held ones, not claimed, from the others. The copy left behind asks its
        claim and is refused (the attempt moved on): it never runs twice."""
        held = self.stealable[queue]
        for consumer in candidates:
            while held and consumer.id not in self.full and self._has_free_slot(consumer.id):
                entry = next((e for e in held.values() if e.consumer != consumer.id), None)
                if entry is None:
                    break
                self._unsteal(entry)
                self._unhold(entry)
                entry.moved = True
                entry.held = entry.claimed = entry.granted = False
                self._push(entry, consumer)
        if not held:
            del self.stealable[queue]

    def _has_free_slot(self, consumer: str) -> bool:
        """Whether ``consumer``'s worker has, by our count, a slot free of our tasks."""
        taking = self._taking(consumer) - self.holding[consumer]
        return taking < self.slots.get(consumer, self.first_slots)

    def _unsteal(self, entry: Entry) -> None:
        """The entry can no longer be taken over (it starts, ends or moves)."""
        held = self.stealable.get(entry.queue)
        if held is not None and held.pop(entry.id, None) is not None and not held:
            del self.stealable[entry.queue]

    def _next_turn(self, queue: str) -> int:
        """The queue's round-robin turn, then one on."""
        turn = self.turn
        index = turn.get(queue, 0)
        turn[queue] = index + 1
        turn.move_to_end(queue)
        if len(turn) > TURNS_KEPT:
            turn.popitem(last=False)
        return index

    def _expire(self, queue: str, now: float) -> None:
        """Finish the tasks waiting in ``queue`` whose expiry has passed."""
        heap = self.expiring.get(queue)
        if heap is None:
            return
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if entry.waiting and entry.queue == queue:
                self.finish(entry, REVOKED, TaskRevokedError(f"task {entry.id} expired"))
        if not heap:
            del self.expiring[queue]
        elif len(heap) > 64 + 2 * len(self.waiting.get(queue, ())):
            # Mostly tasks pushed since: keep those that still wait.
            heap[:] = [item for item in heap if item[2].waiting and item[2].queue == queue]
            heapq.heapify(heap)

    def _unqueue(self, entry: Entry) -> None:
        """``entry`` no longer waits in its queue's deque (it finished there)."""
        entry.waiting = False
        queue = entry.queue
        self.stale[queue] += 1
        tasks = self.waiting[queue]
        if self.stale[queue] * 2 > len(tasks):
            keep = [e for e in tasks if e.waiting]
            tasks.clear()  # in place: the pump may hold this deque
            tasks.extend(keep)
            del self.stale[queue]

    def _drop_stale(self, queue: str, tasks: collections.deque[Entry]) -> None:
        """Drop the finished entries at the head of ``queue``'s deque."""
        while tasks and not tasks[0].waiting:
            tasks.popleft()
            self.stale[queue] -= 1
            if self.stale[queue] <= 0:
                del self.stale[queue]

    def _has_room(self, consumer: str) -> bool:
        """Whether to push a task to ``consumer`` now: while our tasks there take
        fewer places than its worker's capacity (``concurrency x prefetch``).

        A task that finds no slot free there waits for one under its grant and
        starts with no round trip to this node when one frees (or, after
        ``worker.HELD_AFTER``, is told held and claimed): a burst keeps every
        slot busy while outcomes travel back and new tasks come in.
        """
        taking = self._taking(consumer)
        if consumer not in self.full and taking < self.capacity.get(consumer, self.first_guess):
            return True
        # Full, or at its capacity by our count. A "room" notice can be lost (and our
        # count can lag the worker's), so after RECHECK with nothing heard from it,
        # one push asks again; a worker still full refuses it and sends "room" later.
        return time.monotonic() - self.heard_at.get(consumer, 0.0) >= RECHECK

    def forget_gone(self) -> None:
        """Drop what the per-consumer tables hold of consumers no longer in the
        mesh with nothing of ours in flight there (workers come and go: the
        tables must not grow with every consumer ever seen)."""
        self._forgot_at = time.monotonic()
        live = self.node.directory.actors
        for table in (self.heard_at, self.room_at, self.capacity, self.slots):
            for consumer in [c for c in table if c not in live and not self.inflight[c]]:
                del table[consumer]
        self.full.intersection_update(live)
        self.maps_only.intersection_update(live)

    def _taking(self, consumer: str) -> int:
        """Places at ``consumer``'s worker that our tasks in flight there take."""
        busy = self.inflight[consumer]
        return busy - self.lent[consumer] if self.lent else busy

    def _push(self, entry: Entry, consumer: ActorProxy, later: bool = False) -> None:
        msg = entry.msg
        msg["attempt"] += 1
        # The grant: a worker that can start it at once needs no claim (one round
        # trip less); a re-dispatch then treats it as started until told otherwise.
        # A task for a later ETA cannot start at once: no grant, so it stays exact.
        msg["go"] = entry.granted = not later
        attempt = msg["attempt"]
        entry.consumer = consumer.id
        entry.pushed_at = self.heard_at[consumer.id] = time.monotonic()
        self.inflight[consumer.id] += 1
        if later:  # its worker will hold it, without a slot (its "held" comes later)
            entry.waits_there = True
            self.holding[consumer.id] += 1
        cid = consumer.id
        packed = msg if cid in self.maps_only else pack(msg)
        kwargs = Checked(msg=packed) if entry.checked else {"msg": packed}
        try:
            # The outcome comes as the reply, with no deadline: it may take as long
            # as the task waits at the worker (for its ETA, a slot, its rate) and
            # runs; the worker enforces the time limits and answers, and a dead
            # worker fails the call at once (NodeDown). _on_reply never blocks
            # (what may is spawned): it runs as the reply is read (Node.call_then).
            self.node.call_then(
                consumer, "run", kwargs, lambda v, e: self._on_reply(entry, attempt, cid, v, e)
            )
        except UNREACHABLE:
            self._not_sent(entry, cid)
        except ZcellError as exc:
            self._landed(cid)
            self._unhold(entry)
            self.finish(entry, FAILURE, exc)

    def _not_sent(self, entry: Entry, consumer: str) -> None:
        """The push failed where it stood: the directory still lists ``consumer`` on
        a node that is gone (it lags the membership). The task never left, so it
        waits again, granted or not; the consumer counts as full, so it is asked
        again once a ``RECHECK`` (pushed there again at once, a round never ended)."""
        self._landed(consumer)
        self.full.add(consumer)
        self.heard_at[consumer] = time.monotonic()
        self._enqueue(entry, front=True)

    def _landed(self, consumer: str) -> None:
        """A push to ``consumer`` is no longer in flight there."""
        self.inflight[consumer] -= 1
        if self.inflight[consumer] <= 0:
            del self.inflight[consumer]

    # -- following (loop thread) ----------------------------------------------

    def _on_reply(
        self, entry: Entry, attempt: int, consumer: str, value: Any, error: BaseException | None
    ) -> None:
        if entry.msg["attempt"] == attempt:
            self._unhold(entry)
        self.heard_at[consumer] = time.monotonic()
        self._landed(consumer)
        if entry.lent and entry.msg["attempt"] == attempt:
            self._lend(entry, consumer, False)
        if entry.ready or entry.msg["attempt"] != attempt:
            return  # finished meanwhile (revoked, expired) or pushed again
        if error is not None:
            self._on_error(entry, error)
        elif not isinstance(value, dict):
            self.finish(entry, FAILURE, ProtocolError(f"bad task reply {value!r}"))
        else:
            self._on_outcome(entry, consumer, value)
        if any(self.waiting.values()):  # the room it freed is for them
            self.wake()

    def _on_error(self, entry: Entry, exc: BaseException) -> None:
        if isinstance(exc, NodeStopped):
            return  # this node stops: nobody waits here any more
        if isinstance(exc, UNREACHABLE):
            if self.adrift.came_back_since(entry):
                self._unsteal(entry)
                self.adrift.add(entry, exc)  # this node's stop, maybe not its worker's
            else:
                self.lost(entry, exc)
        else:
            self.finish(entry, FAILURE, exc)

    def lost(self, entry: Entry, exc: BaseException) -> None:
        """The consumer went away with the task: re-dispatch what provably never
        started; what did is at most once (WorkerLostError) unless acks_late."""
        if not entry.may_have_started:
            self._enqueue(entry, front=True)
        elif entry.msg["acks_late"] and entry.redeliveries < entry.max_redeliveries:
            entry.redeliveries += 1
            log.warning("zcell: task %s lost with its worker; redelivering (acks_late)", entry.id)
            self._enqueue(entry, front=True)
        else:
            how = (
                f"after {entry.redeliveries} redeliveries"
                if entry.msg["acks_late"]
                else "(give it acks_late=True to have it run again)"
            )
            self.finish(
                entry,
                FAILURE,
                WorkerLostError(f"worker {entry.worker} died running task {entry.id} {how}: {exc}"),
            )

    def _on_outcome(self, entry: Entry, consumer: str, value: dict[str, Any]) -> None:
        status = value.get("s")
        if status == "full":
            # A "room" notice sent after this refusal may overtake the reply (another
            # path): then the worker has room again and will send no other notice.
            if self.room_at.get(consumer, -1.0) <= entry.pushed_at:
                self.full.add(consumer)
            self._learn(consumer, value, always=True)
            self._enqueue(entry, front=True)
        elif status == "refused":
            pass  # its claim was refused: it ended here already (revoked, expired)
        elif status == "dropped" and consumer not in self.maps_only:
            # A worker of an older zcell takes a task message only as a map: it
            # refused the array before anything ran, so the task is pushed again,
            # in that form (a map it drops too fails the task, below).
            self.maps_only.add(consumer)
            self._enqueue(entry, front=True)
        elif status == RETRY:
            self.retry(entry, value)
        elif status in READY_STATES:
            self._learn(consumer, value)
            self.settle(entry, value)
        else:
            self.finish(entry, FAILURE, ProtocolError(f"bad task reply status {status!r}"))

    def _learn(self, consumer: str, value: dict[str, Any], always: bool = False) -> None:
        """A worker's reply may say its capacity and slots (``full``, and the
        outcome of a task started under the grant): learn them (``always``: even
        when known, a ``full`` says how many it holds now)."""
        cap, slots = positive(value.get("cap")), positive(value.get("slots"))
        if cap is not None and (always or consumer not in self.capacity):
            self.capacity[consumer] = cap
        if slots is not None:
            self.slots[consumer] = slots

    def settle(self, entry: Entry, value: dict[str, Any]) -> None:
        """Finish the entry with a worker's final outcome record."""
        status = value.get("s")
        entry.reported = True
        self._record(entry, value)
        if status == REVOKED:
            self.finish(entry, REVOKED, TaskRevokedError(f"task {entry.id} was revoked"))
        elif status == FAILURE:
            self.finish(entry, FAILURE, _error(value.get("e")))
        else:
            self.finish(entry, SUCCESS, value.get("v"))

    def _record(self, entry: Entry, value: dict[str, Any]) -> None:
        entry.worker = value.get("worker") if isinstance(value.get("worker"), str) else None
        tb = value.get("tb")
        entry.traceback = tb if isinstance(tb, str) else None

    def retry(self, entry: Entry, value: dict[str, Any]) -> None:
        """The worker's outcome says: retry (``countdown`` seconds from now)."""
        countdown = value.get("countdown")
        entry.retries += 1
        entry.msg["retries"] = entry.retries
        entry.msg["eta"] = (
            time.time() + float(countdown) if isinstance(countdown, int | float) else None
        )
        entry.state = RETRY
        entry.result = _error(value.get("e"))
        self._enqueue(entry)

    def finish(self, entry: Entry, state: str, result: Any) -> None:
        """Set the outcome once, wake every waiter, run ``then`` callbacks."""
        if entry.ready:
            return
        self._unhold(entry)
        self._unsteal(entry)
        if self.entries.pop(entry.id, None) is not None:
            family = self.by_root.get(entry.msg["root_id"])
            if family is not None:
                family.pop(entry.id, None)
                if not family:
                    del self.by_root[entry.msg["root_id"]]
        if entry.waiting:  # finished before it was pushed (revoked, expired)
            self._unqueue(entry)
        entry.state = state
        entry.result = result
        entry.date_done = time.time()
        entry.done.set()
        if not entry.reported and state != SUCCESS and has_followup(entry.msg):
            # Decided here (a worker lost, revoked, expired): the work-flow learns it too.
            after(self.runtime, entry.msg, failure(result, self.runtime, entry.name, state))
        callbacks, entry.callbacks = entry.callbacks, []
        for callback in callbacks:
            gevent.spawn(_run_callback, callback, entry)

    # -- the agent's side (loop thread, called by TaskAgent handlers) ----------

    def held(
        self, task_id: str, attempt: int, cap: int | None = None, slots: int | None = None
    ) -> None:
        """A worker holds the task (waiting for a slot, its ETA or its rate); ``cap``:
        the most it holds, ``slots``: the most it runs at once (learnt here)."""
        entry = self.entries.get(task_id)
        if entry is not None and entry.msg["attempt"] == attempt:
            self._notice(entry, cap, slots)
            consumer = entry.consumer
            if consumer is not None and not entry.claimed:
                if not entry.waits_there:
                    entry.waits_there = True  # it takes no slot there until it starts
                    self.holding[consumer] += 1
                # Another worker may start it sooner, unless it is for a later ETA or
                # was taken over once already (a task held at worker after worker
                # would move for ever when others' tasks, which this submitter does
                # not count, fill their slots; kept out, it costs no pump a look).
                if not entry.moved and not _later(entry, time.time()):
                    self.stealable.setdefault(entry.queue, {})[entry.id] = entry
                self.wake()
            if entry.state == PENDING:  # a retry stays RETRY until it ends, as in Celery
                entry.state = RECEIVED

    def _notice(self, entry: Entry, cap: int | None, slots: int | None) -> None:
        """Its worker holds or runs the entry: what it says of its room."""
        entry.held = True
        consumer = entry.consumer
        if consumer is not None:
            self.full.discard(consumer)  # it took a task: it had room
            if cap is not None and consumer not in self.capacity:
                self.capacity[consumer] = cap
                self.wake()
            if slots is not None and self.slots.get(consumer) != slots:
                self.slots[consumer] = slots
                self.wake()

    def _unhold(self, entry: Entry) -> None:
        """The entry no longer waits at its worker without a slot."""
        if entry.waits_there:
            entry.waits_there = False
            consumer = entry.consumer
            if consumer is not None:
                self.holding[consumer] -= 1
                if self.holding[consumer] <= 0:
                    del self.holding[consumer]

    def started(
        self,
        task_id: str,
        attempt: int,
        worker: str,
        cap: int | None = None,
        slots: int | None = None,
    ) -> None:
        """A worker started the task under its grant (no claim); ``cap`` and
        ``slots`` as for ``held``."""
        entry = self.entries.get(task_id)
        if entry is None or entry.ready or entry.msg["attempt"] != attempt:
            return
        self._notice(entry, cap, slots)
        self._started(entry, worker)

    def claim(self, task_id: str, attempt: int, worker: str) -> bool:
        """May this attempt of the task start now? Records that it did."""
        entry = self.entries.get(task_id)
        if entry is None or entry.ready or entry.msg["attempt"] != attempt:
            return False
        if task_id in self.runtime.revoked or entry.msg["root_id"] in self.runtime.revoked:
            self.finish(entry, REVOKED, TaskRevokedError(f"task {task_id} was revoked"))
            return False
        expires = entry.msg["expires"]
        if expires is not None and expires <= time.time():
            self.finish(entry, REVOKED, TaskRevokedError(f"task {task_id} expired"))
            return False
        self._started(entry, worker)
        return True

    def _started(self, entry: Entry, worker: str) -> None:
        self._unhold(entry)  # it takes a slot there now
        self._unsteal(entry)
        entry.claimed = entry.held = True
        entry.worker = worker
        if entry.msg["track_started"]:
            entry.state = STARTED
        elif entry.state != RETRY:
            entry.state = RECEIVED

    def room(self, consumers: list[str]) -> None:
        """The worker of these consumers has room again."""
        now = time.monotonic()
        for consumer in consumers:
            self.full.discard(consumer)
            self.room_at[consumer] = self.heard_at[consumer] = now
            # Slots freed there: up to "cap" pushes more than our tasks take there now
            # (those waiting in get() take none: `lending`). Not forgetting the
            # capacity: that let this submitter push every waiting task at once,
            # each refused with "full", then "room" again, a storm that held a
            # burst to ~100 tasks/s.
            cap = self.capacity.get(consumer)
            if cap is not None:
                self.capacity[consumer] = self._taking(consumer) + cap
        self.wake()

    def lending(self, task_id: str, attempt: int, lent: bool) -> None:
        """A task of ours waits in ``get()`` at its worker (``lent``: its place there
        is lent out), or waits no more."""
        entry = self.entries.get(task_id)
        if entry is None or entry.consumer is None or entry.msg["attempt"] != attempt:
            return
        if entry.lent != lent:
            self._lend(entry, entry.consumer, lent)
            if lent:
                self.wake()

    def _lend(self, entry: Entry, consumer: str, lent: bool) -> None:
        entry.lent = lent
        self.lent[consumer] += 1 if lent else -1
        if self.lent[consumer] <= 0:
            del self.lent[consumer]

    def update_state(self, task_id: str, state: str, meta: Any) -> None:
        """``self.update_state(...)`` in the running task."""
        entry = self.entries.get(task_id)
        if entry is not None and not entry.ready:
            entry.state = state
            entry.result = meta

    def query(self, task_ids: list[str]) -> dict[str, Any]:
        """What this submitter knows of ``task_ids``: the state of those it sent
        not finished, and the outcome record of those finished whose results a
        program here still holds (a watched step another node sends is not
        named before it ends) (a chord's coordinator asks for these when a
        member's report was lost and its worker is gone too)."""
        found: dict[str, Any] = {}
        for task_id in task_ids:
            entry = self.entries.get(task_id) or self.known.get(task_id)
            if entry is None or (not entry.ready and task_id not in self.entries):
                continue  # (a watched step not ended: another node sends it)
            if not entry.ready:
                found[task_id] = {"s": entry.state, "name": entry.name, "retries": entry.retries}
                continue
            error = entry.result if isinstance(entry.result, BaseException) else None
            found[task_id] = {
                "s": entry.state,
                "v": None if error is not None else entry.result,
                "e": error_wire(error) if error is not None else None,
                "tb": entry.traceback,
                "done": entry.date_done,
                "name": entry.name,
                "worker": entry.worker,
                "retries": entry.retries,
            }
        return found

    def revoke(self, task_ids: list[str]) -> None:
        """Revoked: what has not started ends REVOKED now (a claim would be refused)."""
        found: dict[str, Entry] = {}
        for task_id in task_ids:
            entry = self.entries.get(task_id)
            if entry is not None:
                found[task_id] = entry
            found.update(self.by_root.get(task_id, {}))
        for entry in list(found.values()):
            if not entry.may_have_started:
                self.finish(entry, REVOKED, TaskRevokedError(f"task {entry.id} was revoked"))

    # -- watched tasks: sent by others, their outcome pushed here (docs/canvas.md)

    def watch(self, task_id: str, name: str) -> Entry:
        """The entry of a work-flow's task that another node will send; its
        worker pushes the outcome here (``pushed``)."""
        entry = self.known.get(task_id)
        if entry is None:
            msg = make(id=task_id, name=name, args=[], kwargs={}, queue="")
            entry = self.known[task_id] = Entry(msg, "", 0)
        return entry

    def pushed(self, task_id: str, record: dict[str, Any]) -> None:
        """A worker pushed the final outcome of a watched task."""
        entry = self.known.get(task_id)
        if entry is not None and not entry.ready and record.get("s") in READY_STATES:
            self.settle(entry, record)


def _error(value: Any) -> BaseException | None:
    """A task's error from its wire form, mirrored as the actor core does."""
    if value is None:
        return None
    error = error_from_wire(value) or ProtocolError(f"malformed task error {value!r}")
    # The outcomes the task layer decides itself (pushed by a worker for a
    # work-flow) keep their type; a task's own exception stays mirrored.
    for own in (WorkerLostError, ChordError, TaskRevokedError):
        if value[0] == f"{own.__module__}.{own.__qualname__}":
            return own(str(value[1]))
    return error


def positive(value: Any) -> int | None:
    """A positive int from the wire (a worker's capacity or slots), else None."""
    return value if type(value) is int and value > 0 else None


def _later(entry: Entry, now: float) -> bool:
    """Whether the task is to be held by its worker until a later ETA."""
    eta = entry.msg["eta"]
    return eta is not None and eta > now


def _run_callback(callback: Callable[[Entry], None], entry: Entry) -> None:
    try:
        callback(entry)
    except BaseException:  # noqa: BLE001 - nothing may escape into the hub
        log.exception("zcell: task result callback %r failed", callback)
