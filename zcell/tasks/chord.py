"""Chords: the header's results are pushed to a coordinator on a worker.

``start_chord`` (the submitter's side) picks a worker that consumes the body's
queue, opens the chord at that worker's task agent (``chord_start``; another
worker's if that node is declared down before it answers), then
sends the header members with a ``chord`` report address in their messages.
Each member's worker pushes its outcome there as soon as it has one
(``followup.py``); no one polls. With every member in, the coordinator sends
the body with the members' results in order. A member that fails (or is
revoked, or lost with its worker) fails the chord at once: the body fails
with ``ChordError`` naming the member, and the body's ``link_error`` is sent.

A report can be lost: the member's worker cut off from the coordinator for
longer than a report waits to be sent (``followup.MEET_WAIT``). So a chord that
has heard nothing for ``RECHECK`` seconds asks the mesh's task agents for the
outcomes of the members it misses (the submitter sent their task ids with
``chord_start``); the worker that ran one keeps its record (``result_expires``).

The submitter also holds one long call, ``chord_wait``, at the coordinator: if
the coordinator's node goes down, the call fails at once (``NodeDown``); unless
it comes back within ``adrift.rejoin_wait`` (it was only stopped a while) and the
call is made again, the body fails with ``ChordError`` saying so, instead of
hanging, and is revoked. Since the coordinator is a worker, a chord completes
after its submitter has exited.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from ..errors import CallTimeout, NodeDown, NodeStopped, ZcellError, error_from_wire
from .adrift import rejoin_wait
from .errors import ChordError
from .followup import fail_signature, failure
from .groupresult import GroupResult
from .message import new_id
from .routing import queue_actor_name, route
from .runtime import AGENT_TYPE
from .states import FAILURE, READY_STATES, SUCCESS

if TYPE_CHECKING:
    from ..actors.proxy import ActorProxy
    from .app import App
    from .canvas import Result, Signature, chord
    from .result import TaskResult
    from .runtime import Runtime

__all__ = ["Chords", "chords_of", "start_chord"]

log = logging.getLogger(__name__)

#: Seconds the submitter waits for the coordinator to open the chord.
START_TIMEOUT = 10.0
#: Coordinators tried for one chord whose nodes went down before they answered.
OPEN_TRIES = 3
#: The deadline of the ``chord_wait`` call: none to speak of (a dead
#: coordinator fails it at once).
WAIT_DEADLINE = 10 * 365 * 86400.0
#: Seconds between two looks whether a coordinator gone down came back (it is
#: given ``adrift.rejoin_wait``: it may only have been stopped a while).
COME_BACK_POLL = 0.25
#: Seconds the submitter waits to learn of a consumer of the body's queue.
CONSUMER_WAIT = 2.0
#: Node statistics() counter of chord reports that were dropped (unknown chord,
#: bad index, malformed).
DROPPED_PARTS = "chord_parts_dropped"
#: Completed chords a coordinator still answers ``chord_wait`` for (the oldest
#: forgotten first): a submitter that took the coordinator for dead asks again
#: when it comes back, maybe just after the chord completed.
CLOSED_KEPT = 256
#: Seconds an open chord hears no report before it asks the mesh for the outcomes
#: of the members it misses; an ask that finds none doubles the wait for the next
#: (members that run long), up to ``RECHECK_MAX``.
RECHECK = 5.0
RECHECK_MAX = 60.0
#: Seconds to wait for the task agents' answers to one ask.
ASK_TIMEOUT = 5.0
#: Member ids asked about in one ``query`` to each agent.
ASK_BATCH = 500
#: Node statistics() counter of members a coordinator learnt by asking the mesh
#: (their reports were lost).
ASKED_PARTS = "chord_parts_asked"


# -- the submitter's side ---------------------------------------------------------


def start_chord(
    sig: chord,
    app: App,
    runtime: Runtime,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> Result:
    """Apply ``sig`` through ``runtime``; returns the body's result (its
    ``parent`` is the header's ``GroupResult``)."""
    from .canvas import _root

    header, body = sig.header, sig.body
    rest, report = options.pop("chain", None) or [], options.pop("chord", None)
    root = _root(options)
    sig.freeze(root)
    gid = str(header.id)
    root = root or gid
    body.options["chain"] = list(rest)
    if report is not None:
        body.last().options["chord"] = report
    body.watch_by(runtime.agent)
    members = header.tasks
    if not members:  # Celery: the body gets the empty list at once
        return body.apply(app, runtime, ([],), {}, {"root_id": root})
    lasts = [member.last() for member in members]  # a group member raises TypeError here
    ids = [last.freeze() for last in lasts]  # the reporting task of each member
    start = {"id": gid, "n": len(members), "body": dict(body), "root_id": root, "ids": ids}
    coordinator = _open(app, runtime, body, start)
    body_result = body.result(app, runtime)  # after _open, which may give it a new id
    _watch_coordinator(runtime, coordinator, gid, body, ids[-1] if ids else None)
    results: list[TaskResult | GroupResult] = []
    for i, (member, last) in enumerate(zip(members, lasts, strict=True)):
        last.options["chord"] = {"id": gid, "i": i, "to": coordinator}
        results.append(member.apply(app, runtime, args, kwargs, {"root_id": root}))
    header_result = GroupResult(gid, results, app)
    header_result.parent = body_result.parent
    body_result.parent = header_result
    return body_result


def _open(app: App, runtime: Runtime, body: Signature, start: dict[str, Any]) -> ActorProxy:
    """Open the chord at a coordinator (``chord_start``); returns it.

    One whose node is declared down before it answered (the directory still
    listed it: it died a moment ago) is replaced by another (at most
    ``OPEN_TRIES``; then ``NodeDown`` is raised: apply the chord again). It may
    have opened the chord and been stopped a while rather than killed: back, it
    would find the members' outcomes in the mesh and send the body. So the body
    (a single task; a work-flow body is not retried) gets a new id, and the old
    one is revoked: a body sent by that coordinator does not run."""
    gone: set[str] = set()
    while True:
        coordinator = _coordinator(app, runtime, body, gone)
        try:
            coordinator.send("chord_start", start, timeout=START_TIMEOUT)
            return coordinator
        except NodeDown:
            if (
                coordinator.node_id == runtime.node.id
                or len(gone) + 1 >= OPEN_TRIES
                or body.leaves() != [body]
            ):
                raise
            gone.add(coordinator.node_id)
            old = body.freeze()
            body.options["task_id"] = new_id()
            start["body"] = dict(body)
            app.control.revoke([old])
            log.warning(
                "zcell: chord %s: its coordinator's node went down before it answered; "
                "opening it at another", start["id"],
            )  # fmt: skip


def _coordinator(
    app: App, runtime: Runtime, body: Signature, gone: set[str] | frozenset[str] = frozenset()
) -> ActorProxy:
    """The task agent of a worker consuming the body's queue (this node's when
    it is one), not on the nodes ``gone``; with none in the mesh, this node's
    (the chord then completes only while this program runs)."""
    conf = app.conf
    body_task = body.task
    task = app.tasks.get(body_task)
    queue = route(
        body_task,
        queue=body.options.get("queue"),
        routes=conf.task_routes,
        task_queue=task.queue if task is not None else None,
        default=conf.task_default_queue,
    )
    node = runtime.node
    try:  # a program that just joined may not have heard of the workers yet
        node.wait_for(type=queue_actor_name(queue), timeout=CONSUMER_WAIT)
    except CallTimeout:
        pass
    consumers = {p.node_id for p in node.actors(queue_actor_name(queue))} - gone
    assert runtime.agent is not None
    if runtime.worker is not None and node.id in consumers:
        return runtime.agent
    agents = [a for a in node.actors(AGENT_TYPE) if a.node_id in consumers]
    if agents:
        return random.choice(agents)
    log.warning(
        "zcell: no worker consumes queue %r yet: this program coordinates the chord, "
        "which completes only while it runs (start a worker first)",
        queue,
    )
    return runtime.agent


def _watch_coordinator(
    runtime: Runtime,
    coordinator: ActorProxy,
    gid: str,
    body: Signature,
    member: str | None = None,
    until: float | None = None,
) -> None:
    """Fail the body if the coordinator's node dies (or forgets the chord).

    A node taken for dead may only have been stopped a while (SIGSTOP, a long
    GC, a stalled VM): it comes back with the chord still open, and completes
    it. So a coordinator gone down is given ``adrift.rejoin_wait`` to come
    back (``until``); past it the body fails with ``ChordError`` and is revoked, so
    that a coordinator that comes back later does not run it after all (unless
    it sends the body before it learns the revoke, as it meets this node again).
    Once the chord completed, the body (a single task) is left to ``strays``:
    the coordinator sent it, and may die before a worker held it.
    """
    if coordinator == runtime.agent:
        return
    waiting = coordinator.call("chord_wait", {"id": gid}, timeout=WAIT_DEADLINE)

    def done(result: Any) -> None:  # a link callback: a greenlet of its own
        value = result.get(propagate=False)
        if result.failed() and isinstance(value, NodeDown):
            now = time.monotonic()
            deadline = now + rejoin_wait(runtime.node) if until is None else until
            if now < deadline:
                gevent.sleep(COME_BACK_POLL)
                _watch_coordinator(runtime, coordinator, gid, body, member, deadline)
                return
        if result.failed() or not isinstance(value, dict) or value.get("s") == "unknown":
            why = value if result.failed() else "it does not know the chord"
            error = ChordError(
                f"chord {gid}: its coordinator {coordinator} was lost ({why}); the body "
                f"{body.task}[{body.id}] does not run (it is revoked): apply the chord again"
            )
            fail_signature(runtime, body, failure(error, runtime, body.task))
            if not isinstance(value, NodeStopped):
                runtime.app.control.revoke([leaf.freeze() for leaf in body.leaves()])
        elif member is not None and body.leaves() == [body]:
            pair = (body.freeze(), member)
            runtime.dispatcher.strays.follows([pair], sender=coordinator.node_id)

    waiting.link(done)


# -- the coordinator's side (a worker's task agent) ---------------------------------


class _Chord:
    """One open chord: its body and the header results so far."""

    def __init__(
        self, n: int, body: dict[str, Any], root_id: str, ids: list[str] | None = None
    ) -> None:
        self.n = n
        self.body = body
        self.root_id = root_id
        self.ids = ids  # each member's reporting task id (None: its submitter did not say)
        self.values: list[Any] = [None] * n
        self.got: set[int] = set()
        self.done = Event()
        self.outcome: dict[str, Any] = {"s": SUCCESS}
        self.heard = time.monotonic()  # the last report, or the last ask
        self.wait = RECHECK  # seconds from ``heard`` to the next ask

    def settled(self) -> None:
        """Its outcome is final: let go of the members' results and ids (it is
        kept among the ``CLOSED_KEPT`` closed chords for its outcome only)."""
        self.values = []
        self.ids = None
        self.got = set()


class Chords:
    """The chords a node coordinates (see the module doc)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.open: dict[str, _Chord] = {}
        self.closed: collections.OrderedDict[str, _Chord] = collections.OrderedDict()
        self._asker: gevent.Greenlet | None = None

    def start(
        self,
        chord_id: str,
        n: int,
        body: dict[str, Any],
        root_id: str,
        ids: list[str] | None = None,
    ) -> None:
        """Open a chord of ``n`` members whose body is ``body`` (``ids``: the
        members' reporting task ids, to ask the mesh for outcomes not reported).

        Raises:
            ChordError: This node already coordinates ``result_max_records``
                open chords (memory stays bounded whatever members send).
        """
        limit = int(self.runtime.app.conf.result_max_records)
        if chord_id not in self.open and len(self.open) >= limit:
            raise ChordError(
                f"node {self.runtime.node.name} coordinates {len(self.open)} open chords "
                "(result_max_records): wait for some to complete, or start more workers"
            )
        self.open.setdefault(chord_id, _Chord(n, body, root_id, ids))
        if ids is not None and (self._asker is None or self._asker.dead):
            self._asker = gevent.spawn(self._ask_while_open)

    def wait(self, chord_id: str) -> dict[str, Any]:
        """Block until the chord completes: ``{"s": "SUCCESS"}`` once the body
        was sent, or its failure record (at once for one of the last
        ``CLOSED_KEPT`` completed here); ``{"s": "unknown"}`` for another."""
        chord = self.open.get(chord_id) or self.closed.get(chord_id)
        if chord is None:
            return {"s": "unknown"}
        chord.done.wait()
        return chord.outcome

    def part(
        self, chord_id: str, index: int, task_id: str, state: str, value: Any, error: Any, name: str
    ) -> None:
        """A header member's outcome."""
        chord = self.open.get(chord_id)
        if chord is None or not 0 <= index < chord.n or index in chord.got:
            self._drop(f"chord {chord_id} part {index}: unknown chord, bad or repeated index")
            return
        chord.heard, chord.wait = time.monotonic(), RECHECK
        if state == SUCCESS:
            chord.values[index] = value
            chord.got.add(index)
            if len(chord.got) == chord.n:
                self._complete(chord_id, chord)
            return
        reason = error_from_wire(error) if error is not None else state
        self._fail(
            chord_id,
            chord,
            ChordError(
                f"chord {chord_id}: header member {index} ({name}[{task_id}]) ended "
                f"{state}: {reason}; the body {chord.body.get('task')} does not run"
            ),
        )

    def stop(self) -> None:
        """(Loop thread, the node stopping) end the greenlet that asks about chords."""
        asker, self._asker = self._asker, None
        if asker is not None:
            asker.kill(block=True, timeout=1.0)

    def _ask_while_open(self) -> None:
        """(A greenlet while chords are open) ask about the chords that have heard
        nothing for their wait (``RECHECK``, longer after fruitless asks)."""
        while any(chord.ids is not None for chord in self.open.values()):
            gevent.sleep(RECHECK / 2)
            now = time.monotonic()
            for chord_id, chord in list(self.open.items()):
                if chord.ids is not None and now - chord.heard >= chord.wait:
                    chord.heard, wait = now, chord.wait
                    try:
                        found = self._ask(chord_id, chord)
                    except Exception:  # noqa: BLE001 - the next round asks again
                        log.exception("zcell: could not ask the mesh about chord %s", chord_id)
                        found = 0
                    if not found and chord.heard == now:  # and no report came meanwhile
                        chord.wait = min(2 * wait, RECHECK_MAX)

    def _ask(self, chord_id: str, chord: _Chord) -> int:
        """Ask every task agent for the outcomes of the members not reported; take
        the final ones as their reports (a member still running is not one).
        Returns how many were found."""
        found = 0
        assert chord.ids is not None
        missing = {chord.ids[i]: i for i in range(chord.n) if i not in chord.got}
        known = self.runtime.query_mesh(list(missing), ASK_TIMEOUT, ASK_BATCH)
        for task_id, records in known.items():
            for record in records:
                index = missing.get(task_id)
                if (
                    index is None
                    or record.get("s") not in READY_STATES
                    or self.open.get(chord_id) is not chord
                    or index in chord.got
                ):
                    continue
                found += 1
                stats = self.runtime.node.stats
                stats[ASKED_PARTS] = stats.get(ASKED_PARTS, 0) + 1
                log.warning(
                        "zcell: chord %s: member %d's report never came; its outcome was "
                        "asked of the mesh",
                        chord_id, index,
                    )  # fmt: skip
                self.part(
                        chord_id, index, task_id, str(record["s"]), record.get("v"),
                        record.get("e"), str(record.get("name")),
                    )  # fmt: skip
        return found

    def _drop(self, why: str) -> None:
        stats = self.runtime.node.stats
        stats[DROPPED_PARTS] = stats.get(DROPPED_PARTS, 0) + 1
        log.warning("zcell: dropped a chord report: %s", why)

    def _close(self, chord_id: str, chord: _Chord) -> Signature:
        from .canvas import Signature

        self.open.pop(chord_id, None)
        self.closed[chord_id] = chord
        if len(self.closed) > CLOSED_KEPT:
            self.closed.popitem(last=False)
        chord.done.set()
        return Signature.from_dict(chord.body, self.runtime.app)

    def _complete(self, chord_id: str, chord: _Chord) -> None:
        body = self._close(chord_id, chord)
        app = self.runtime.app
        try:
            body.apply(app, self.runtime, (chord.values,), {}, {"root_id": chord.root_id})
        except (ZcellError, TypeError, ValueError) as exc:
            error = ChordError(f"chord {chord_id}: its body could not be sent: {exc}")
            chord.outcome = failure(error, self.runtime, body.task)
            fail_signature(self.runtime, body, chord.outcome)
        finally:
            chord.settled()

    def _fail(self, chord_id: str, chord: _Chord, error: ChordError) -> None:
        body = self._close(chord_id, chord)
        log.error("zcell: %s", error)
        chord.outcome = failure(error, self.runtime, body.task, FAILURE)
        chord.settled()
        fail_signature(self.runtime, body, chord.outcome)
        for errback in body.options.get("link_error") or []:
            gevent.spawn(self._errback, errback, body)

    def _errback(self, errback: Any, body: Signature) -> None:
        from .canvas import maybe_signature

        app = self.runtime.app
        try:
            maybe_signature(errback, app).apply(app, self.runtime, (body.id,), {}, {})
        except Exception:
            log.exception("zcell: the chord body's link_error %r could not be sent", errback)


def chords_of(runtime: Runtime) -> Chords:
    """The node's chord coordinator (made on first use)."""
    return runtime.part("chords", Chords)
