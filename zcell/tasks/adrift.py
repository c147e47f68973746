"""Tasks adrift: pushed before the submitter's own process was stopped.

A submitter stopped long enough for its peers to take it for dead (SIGSTOP,
Ctrl-Z, a paused VM: docs/failure.md, "Process stop") drops every member when it
comes back, as they dropped it, so each push still in flight fails with
``NodeDown``. That says nothing of the workers: they went on, and ran what they
held without the submitter's word (a claim that finds nobody runs). Taking them
for dead would fail tasks that ran (``WorkerLostError``) and send again those
that were never claimed here, to run twice.

So such a task is *adrift*: it keeps its place and attempt, and :class:`Adrift`
asks the mesh's task agents (``query``) what became of it, once the members are
met again: a final record settles it, a retry is retried, a task still held or
running there is asked about again, later and later. A task nobody knows of
once ``REJOIN_WAIT`` has passed since the stop is lost with its worker, as
before (``Dispatcher.lost``).

The stop also cost the outcomes pushed here meanwhile: the steps of work-flows
that workers send (a chain's next task, a chord's body) report to their
submitter, fire and forget, and what reached the stopped node's sockets was
dropped with the stale backlog when it woke (docs/failure.md, "Process stop").
So after a stop the work-flow tasks watched here are asked about too, a few
times while the members come back (``SWEEP_AFTER``); an outcome that comes
later is pushed as usual.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent

from ..errors import NodeStopped
from .errors import WorkerLostError
from .states import FAILURE, READY_STATES, RETRY, SUCCESS

if TYPE_CHECKING:
    from .dispatch import Dispatcher, Entry

__all__ = ["REJOIN_WAIT", "Adrift", "rejoin_wait"]

log = logging.getLogger(__name__)

#: Seconds (at least; 10 heartbeats if longer: ``rejoin_wait``) within which
#: members that dropped each other are expected to meet again: a node stopped a
#: while comes back within a few heartbeats (docs/failure.md, "Process stop").
REJOIN_WAIT = 10.0
#: Seconds before the first question, and the longest wait between two.
FIRST_ASK = 0.2
LAST_ASK = 2.0
#: Seconds one ``query`` scatter waits for the answers.
ASK_TIMEOUT = 2.0
#: ``statistics()`` counter: tasks found again after a stop of this node.
FOUND = "tasks_found_after_stop"
#: Seconds after a stop at which the watched work-flow tasks are asked about
#: (past the 10 s a worker's report waits to meet this node: ``followup.MEET_WAIT``).
SWEEP_AFTER = (1.0, 2.0, 4.0, 8.0, 12.0)


def rejoin_wait(node: Any) -> float:
    """Seconds ``node`` gives members that dropped it, or that it dropped, to meet
    again before it takes them for gone (``REJOIN_WAIT``)."""
    return max(REJOIN_WAIT, 10 * float(node.heartbeat))


class Adrift:
    """The dispatcher's tasks adrift after a stop of this node (module doc)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.node = dispatcher.node
        # task id -> (entry, its attempt then, the error its push failed with)
        self.entries: dict[str, tuple[Entry, int, BaseException]] = {}
        self._finder: gevent.Greenlet | None = None
        self._sweeper: gevent.Greenlet | None = None
        self._swept = 0.0  # the stop (``Node.woke_at``) last swept for

    def came_back_since(self, entry: Entry) -> bool:
        """Whether this node came back from a stop since ``entry`` was pushed."""
        return self.node.woke_at() > entry.pushed_at

    def add(self, entry: Entry, exc: BaseException) -> None:
        """(Loop) ``entry``'s push failed with ``exc`` because of a stop here."""
        self.entries[entry.id] = (entry, entry.msg["attempt"], exc)
        if self._finder is None or self._finder.dead:
            log.warning(
                "zcell: node %s was stopped with tasks in flight at workers: it asks "
                "the mesh what became of them once it meets the workers again",
                self.node.name,
            )
            self._finder = gevent.spawn(self._find)

    def look(self) -> None:
        """(Loop, each dispatcher round) after a stop of this node, ask for the
        outcomes of the work-flow tasks watched here (module doc)."""
        woke = self.node.woke_at()
        if woke > self._swept:
            self._swept = woke
            if self._sweeper is not None:
                self._sweeper.kill(block=False)
            self._sweeper = gevent.spawn(self._sweep, woke)

    def stop(self) -> None:
        for greenlet in (self._finder, self._sweeper):
            if greenlet is not None:
                greenlet.kill(block=False)
        self._finder = self._sweeper = None

    def _sweep(self, woke: float) -> None:
        dispatcher = self.dispatcher
        # Weakly, as the dispatcher keeps them: one nobody holds is nobody's concern.
        ids = {i for i, e in list(dispatcher.known.items()) if not e.ready} - set(
            dispatcher.entries
        )
        for after in SWEEP_AFTER:
            gevent.sleep(max(0.0, woke + after - time.monotonic()))
            watched = {i: e for i in ids if (e := dispatcher.known.get(i)) and not e.ready}
            if not watched:
                return
            try:
                known = self._query(list(watched))
            except NodeStopped:
                return
            except Exception:
                log.exception("zcell: asking the mesh for watched tasks failed")
                continue
            for task_id, records in known.items():
                entry = watched.get(task_id)
                final = [r for r in records if r.get("s") in READY_STATES]
                if entry is not None and not entry.ready and final:
                    dispatcher.settle(entry, final[0])
                    self._count()

    def _find(self) -> None:
        wait = rejoin_wait(self.node)
        pause = FIRST_ASK
        while self.entries:
            gevent.sleep(pause)
            pause = min(2 * pause, LAST_ASK)
            try:
                # From the latest stop: another one may have come meanwhile.
                self._ask(time.monotonic() >= self.node.woke_at() + wait)
            except NodeStopped:
                return
            except Exception:
                log.exception("zcell: asking the mesh for tasks adrift failed (asked again)")

    def _ask(self, late: bool) -> None:
        entries = self.entries
        for task_id in [i for i, (e, a, _) in entries.items() if e.ready or e.msg["attempt"] != a]:
            del entries[task_id]  # settled or pushed again meanwhile
        wanted = list(entries)
        known = self._query(wanted)
        for task_id in wanted:
            got = entries.get(task_id)
            if got is None:
                continue
            entry, attempt, exc = got
            if entry.ready or entry.msg["attempt"] != attempt:
                del entries[task_id]
            elif self._settled(entry, attempt, known.get(task_id, [])):
                del entries[task_id]
                self._count()
            elif late and task_id not in known:
                del entries[task_id]
                self.dispatcher.lost(entry, exc)

    def _query(self, wanted: list[str]) -> dict[str, list[dict[str, Any]]]:
        """What the mesh's workers say of the tasks ``wanted``: their records by id
        (workers' answers name the worker; a submitter's do not)."""
        known: dict[str, list[dict[str, Any]]] = {}
        for task_id, records in self.dispatcher.runtime.query_mesh(wanted, ASK_TIMEOUT).items():
            named = [r for r in records if isinstance(r.get("worker"), str)]
            if named:
                known[task_id] = named
        return known

    def _settled(self, entry: Entry, attempt: int, records: list[dict[str, Any]]) -> bool:
        """Settle ``entry`` from its workers' ``records`` if they tell its end."""
        dispatcher = self.dispatcher
        for record in records:
            status = record.get("s")
            if status in READY_STATES:
                dispatcher.settle(entry, record)
                return True
            if status == RETRY and record.get("retries") == entry.retries:
                dispatcher.retry(entry, record)
                return True
        ended = [r for r in records if r.get("ended") and r.get("attempt") == attempt]
        if not ended or len(ended) < len(records):
            return False  # held or running somewhere: asked again later
        worker = ended[0]["worker"]
        if entry.msg["ignore_result"]:
            entry.worker = worker
            dispatcher.finish(entry, SUCCESS, None)
        else:
            dispatcher.finish(entry, FAILURE, WorkerLostError(
                f"task {entry.id} ended on worker {worker} while this node was stopped, "
                "and its outcome was not kept there (result_max_records, result_expires)"
            ))  # fmt: skip
        return True

    def _count(self) -> None:
        stats = self.node.stats
        stats[FOUND] = stats.get(FOUND, 0) + 1
