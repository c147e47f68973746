"""Stray steps: a work-flow's task lost with the node that was to send it.

A chain's next task is sent by the worker that ran the one before
(docs/canvas.md): that worker is its submitter, which sends it again if the
worker it went to dies before starting it, and fails it if it started. If that
worker dies itself while the next task still waits in its dispatcher (for a
worker of its queue, a free slot, its ETA), the task is lost with it, and no
submitter is left to say so: the program that applied the chain, which watches
every step, would wait for ever.

A chord's body is sent by its coordinator once every member is in: a
coordinator that dies after that, before any worker held the body, loses it
the same way.

So that program's dispatcher keeps, for each watched step, the step before it
(``follows``), and for a chord's body its coordinator's node. After a task agent leaves the mesh, it asks the mesh (``query``)
about each watched step not ended whose step before has ended: one that no agent
sends, holds or has run, asked ``LOOKS`` apart, and whose sender (the worker the
step before ended on, or the body's coordinator) is no longer in the mesh (or was
restarted since), is lost: it fails with
``WorkerLostError``, and so do the steps after it (counted in ``statistics()``
as ``canvas_steps_lost``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent

from ..errors import NodeStopped
from .errors import WorkerLostError
from .states import FAILURE

if TYPE_CHECKING:
    from .dispatch import Dispatcher, Entry

__all__ = ["LOST", "Strays"]

log = logging.getLogger(__name__)

#: Seconds after an agent left at which the steps are asked about: the first
#: gives the reports of that node's tasks time to come; a step asked about the
#: second time is one nobody knew of at the first.
LOOKS = (1.0, 3.0)
#: Seconds one ``query`` scatter waits for the answers.
ASK_TIMEOUT = 2.0
#: Seconds of clock difference allowed between hosts when telling whether the
#: worker of the step before was restarted since that step ended.
CLOCK_SLACK = 1.0
#: Watched steps kept before those ended (or no longer held) are dropped.
PRUNE_AT = 1024
#: ``statistics()`` counter: work-flow steps failed here as lost with their sender.
LOST = "canvas_steps_lost"


class Strays:
    """The dispatcher's watched steps that may stray (module doc)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.node = dispatcher.node
        self.before: dict[str, str] = {}  # watched step id -> the id of the step before
        self.senders: dict[str, str] = {}  # watched step id -> the node id sending it
        self._seen = 0  # the runtime's departures last looked at
        self._checker: gevent.Greenlet | None = None
        self._again = False
        self._prune_at = PRUNE_AT  # len(before) at which the ended steps are dropped

    def follows(self, pairs: list[tuple[str, str]], sender: str | None = None) -> None:
        """(Loop) each ``(step, before)``: the watched ``step`` is sent when the
        task ``before`` ends, by its worker, or by the node ``sender``."""
        self.before.update(pairs)
        if sender is not None:
            self.senders.update((step, sender) for step, _ in pairs)

    def look(self) -> None:
        """(Loop, each dispatcher round) after an agent left, check the steps."""
        if len(self.before) >= self._prune_at:
            self._current()  # drops the steps ended, or no longer held by a result
            self._prune_at = max(PRUNE_AT, 2 * len(self.before))
        departures = self.dispatcher.runtime.departures
        if departures == self._seen:
            return
        self._seen = departures
        if not self.before:
            return
        self._again = True
        if self._checker is None or self._checker.dead:
            self._checker = gevent.spawn(self._check)

    def stop(self) -> None:
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.kill(block=False)

    def _check(self) -> None:
        try:
            while self._again:
                self._again = False
                start = time.monotonic()
                suspects = self._current()
                for after in LOOKS:
                    gevent.sleep(max(0.0, start + after - time.monotonic()))
                    current = set(self._current())
                    suspects = self._unknown([s for s in suspects if s in current])
                    if not suspects:
                        break
                for step in suspects:
                    self._lose(step)
        except NodeStopped:
            return
        except Exception:
            log.exception("zcell: looking for work-flow steps lost with their sender failed")

    def _current(self) -> list[str]:
        """The watched steps not ended whose step before has ended (those gone
        or ended are forgotten)."""
        known = self.dispatcher.known
        current = []
        for step, before in list(self.before.items()):
            entry = known.get(step)
            if entry is None or entry.ready:
                del self.before[step]
                self.senders.pop(step, None)
                continue
            prior = known.get(before)
            if prior is not None and prior.ready:
                current.append(step)
        return current

    def _unknown(self, steps: list[str]) -> list[str]:
        """Those of ``steps`` that no agent of the mesh sends, holds or has run."""
        if not steps:
            return []
        known = self.dispatcher.runtime.query_mesh(steps, ASK_TIMEOUT)
        return [s for s in steps if s not in known]

    def _lose(self, step: str) -> None:
        known = self.dispatcher.known
        entry, prior = known.get(step), known.get(self.before.get(step, ""))
        if entry is None or entry.ready or prior is None:
            return
        sender = self.senders.get(step)
        if sender is not None:
            if any(n["id"] == sender for n in self.node.nodes()):
                return
            error = WorkerLostError(
                f"task {step} was lost: the chord's coordinator (node {sender}) that was "
                "to send it left the mesh before any worker held it; apply the chord again"
            )
        elif self._sender_lives(prior):
            return
        else:
            error = WorkerLostError(
                f"task {step} was lost: the worker that was to send it when task {prior.id} "
                f"ended there ({prior.worker}) left the mesh before any worker held it "
                "(a work-flow's next step is sent by the worker of the step before); "
                "apply the work-flow again"
            )
        log.warning("zcell: %s", error)
        stats = self.node.stats
        for lost in self._and_after(entry):
            if not lost.ready:
                self.dispatcher.finish(lost, FAILURE, error)
                stats[LOST] = stats.get(LOST, 0) + 1

    def _sender_lives(self, prior: Entry) -> bool:
        """Whether the worker the step before ended on is in the mesh, and has
        been since it ended (a node of that name started later is another)."""
        if prior.worker is None:
            return True  # not known where it ran: not judged here
        ended = prior.date_done if prior.date_done is not None else time.time()
        now = time.time()
        for member in self.node.nodes():
            if member["name"] == prior.worker:
                uptime = float(member.get("uptime") or 0.0)
                # Its start unknown (uptime 0): taken for the same node.
                return not uptime or now - uptime <= ended + CLOCK_SLACK
        return False

    def _and_after(self, entry: Entry) -> list[Entry]:
        """``entry`` and the watched steps after it, in order."""
        after = {before: step for step, before in self.before.items()}
        known = self.dispatcher.known
        out: list[Entry] = []
        step: str | None = entry.id
        while step is not None and (found := known.get(step)) is not None and found not in out:
            out.append(found)
            step = after.get(step)
        return out
