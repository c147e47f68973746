"""What happens after a task's outcome, for the canvas (docs/canvas.md).

The message says it all, so nothing is polled and no coordinator is needed
for chains: ``watchers`` (agents to push the outcome to: the submitter of the
work-flow, which holds a result for this id), ``chord`` (the coordinator this
header member reports to) and ``chain`` (the signatures still to run: after a
success the next is sent with the result prepended; after a failure every task
of the rest fails with the same error, so a waiting ``get()`` never hangs).

The worker calls ``after`` for each final outcome it produces; the submitter's
dispatcher calls it for the final outcomes it decides itself (a worker lost, a
task revoked or expired before it started).

The node that runs a step may not have met the node it reports to yet: the step
was sent by the worker of the step before, and the news of the submitter (or of
the chord's coordinator) is still on its way. Such a report waits for that node
to join, up to ``MEET_WAIT`` seconds (``Unmet``); what still cannot go is logged
and counted, never dropped silently.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent

from ..errors import NodeDown, NodeStopped, SerializationError, ZcellError, error_wire
from .states import SUCCESS

if TYPE_CHECKING:
    from .canvas import Signature
    from .runtime import Runtime

__all__ = ["UNDELIVERED", "after", "fail_signature", "failure", "has_followup"]

log = logging.getLogger(__name__)

#: Seconds a report waits for the node it goes to to join this one (a node that
#: knocks again every second is met within a few; one that left never is).
MEET_WAIT = 10.0
#: Seconds between tries of the reports that wait.
MEET_RETRY = 0.05
#: Reports waiting at once for nodes not met yet; more are not kept.
MAX_UNMET = 10_000
#: Chord reports in one message, at most (a turn of the loop rarely ends more).
PARTS_MAX = 64
#: Node statistics() counter of reports (outcomes, chord parts) that could not be sent.
UNDELIVERED = "canvas_reports_undelivered"


def has_followup(msg: dict[str, Any]) -> bool:
    """Whether anything waits on this task's outcome beyond its submitter."""
    return bool(msg.get("watchers") or msg.get("chord") or msg.get("chain"))


def after(runtime: Runtime, msg: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Act on a final outcome (in a greenlet of its own: the reply goes first).
    A chord member's report alone needs none: it joins the reports leaving this
    node in this turn of the loop (``Parts``)."""
    if msg.get("watchers") or msg.get("chain"):
        gevent.spawn(_after, runtime, msg, outcome)
    elif msg.get("chord"):
        try:
            _report(runtime, msg["id"], msg["chord"], outcome)
        except Exception:  # as in _after: a report's bug never fails the task here
            _followup_failed(runtime, msg)


def _after(runtime: Runtime, msg: dict[str, Any], outcome: dict[str, Any]) -> None:
    try:
        push(runtime, msg["id"], msg.get("watchers"), msg.get("chord"), outcome)
        rest = msg.get("chain") or []
        if rest and outcome.get("s") == SUCCESS:
            _advance(runtime, msg, outcome.get("v"), rest)
        elif rest:
            fail_rest(runtime, rest, outcome)
    except Exception:
        _followup_failed(runtime, msg)


def _followup_failed(runtime: Runtime, msg: dict[str, Any]) -> None:
    runtime.node.stats["canvas_followup_errors"] = (
        runtime.node.stats.get("canvas_followup_errors", 0) + 1
    )
    log.exception("zcell: the work-flow after task %s could not go on", msg.get("id"))


def push(
    runtime: Runtime, task_id: str, watchers: Any, report: Any, outcome: dict[str, Any]
) -> None:
    """Send the outcome to the watchers and to the chord it is a member of."""
    for watcher in watchers if isinstance(watchers, list) else []:
        _tell(runtime, watcher, "outcome", {"id": task_id, "record": outcome})
    if isinstance(report, dict):
        _report(runtime, task_id, report, outcome)


def _report(runtime: Runtime, task_id: str, report: Any, outcome: dict[str, Any]) -> None:
    """A chord member's outcome, for its coordinator (``report["to"]``)."""
    agent = report.get("to") if isinstance(report, dict) else None
    if not hasattr(agent, "send"):
        return  # malformed: skipped, as _tell skips it
    part = {
        "id": report.get("id"),
        "i": report.get("i"),
        "task_id": task_id,
        "s": outcome.get("s"),
        "v": outcome.get("v"),
        "e": outcome.get("e"),
        "name": outcome.get("name"),
    }
    parts_of(runtime).add(agent, part)


def _tell(runtime: Runtime, agent: Any, method: str, kwargs: dict[str, Any]) -> None:
    """Fire and forget to an agent (malformed: skipped); one on a node not met
    yet is told once that node joins (``Unmet``)."""
    if not hasattr(agent, "send"):
        return
    try:
        agent.send(method, kwargs, nowait=True)
    except NodeDown:
        unmet_of(runtime).add(agent, method, kwargs)
    except ZcellError as exc:
        undelivered(runtime, agent, method, exc)


def undelivered(runtime: Runtime, agent: Any, method: str, why: Any) -> None:
    """A report that cannot be sent: logged and counted."""
    stats = runtime.node.stats
    stats[UNDELIVERED] = stats.get(UNDELIVERED, 0) + 1
    log.warning("zcell: could not tell %s %s: %s", agent, method, why)


class _Outbox:
    """Reports that one greenlet sends while any wait (loop thread)."""

    waiting: list[Any] | dict[str, Any]
    _greenlet: gevent.Greenlet | None = None

    def stop(self) -> None:
        """The node stops: nobody is told anything more (loop thread)."""
        self.waiting.clear()
        greenlet = self._greenlet
        if greenlet is not None:
            greenlet.kill(block=True, timeout=1.0)


class Unmet(_Outbox):
    """Reports for agents on nodes this node has not met (yet), tried again until
    the node joins or ``MEET_WAIT`` passes (loop thread; one greenlet while any
    wait)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # (give up at, agent, method, kwargs), oldest first
        self.waiting: list[tuple[float, Any, str, dict[str, Any]]] = []
        self._greenlet: gevent.Greenlet | None = None

    def add(self, agent: Any, method: str, kwargs: dict[str, Any]) -> None:
        if len(self.waiting) >= MAX_UNMET:
            undelivered(self.runtime, agent, method, f"{MAX_UNMET} reports wait already")
            return
        self.waiting.append((time.monotonic() + MEET_WAIT, agent, method, kwargs))
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._retry)

    def _retry(self) -> None:
        try:
            while self.waiting:
                gevent.sleep(MEET_RETRY)
                self._try_all()
        except NodeStopped:
            self.waiting.clear()  # this node stops: nobody is told anything more
        finally:
            self._greenlet = None

    def _try_all(self) -> None:
        now = time.monotonic()
        waiting, self.waiting = self.waiting, []
        unmet: set[str] = set()  # nodes found not met in this round: not asked again
        for until, agent, method, kwargs in waiting:
            if agent.node_id not in unmet:
                try:
                    agent.send(method, kwargs, nowait=True)
                    continue
                except NodeDown:
                    unmet.add(agent.node_id)
                except NodeStopped:
                    raise
                except ZcellError as exc:
                    undelivered(self.runtime, agent, method, exc)
                    continue
            if until <= now:
                why = f"its node has not joined this one within {MEET_WAIT:g}s"
                undelivered(self.runtime, agent, method, why)
            else:
                self.waiting.append((until, agent, method, kwargs))


def unmet_of(runtime: Runtime) -> Unmet:
    """The node's reports waiting for nodes not met (made on first use)."""
    return runtime.part("unmet", Unmet)


class Parts(_Outbox):
    """Chord reports leaving this node, gathered by coordinator: the members that
    end in one turn of the loop report in one message (``chord_parts``), sent by
    one greenlet, not in one message and one greenlet each. Each message cost the
    coordinator's node a request, a greenlet and a handler, beside its own tasks
    (loop thread)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.waiting: dict[str, tuple[Any, list[dict[str, Any]]]] = {}  # agent id ->
        self._greenlet: gevent.Greenlet | None = None

    def add(self, agent: Any, part: dict[str, Any]) -> None:
        if not self.runtime.node.in_loop():
            _tell(self.runtime, agent, "chord_part", part)  # no loop here to gather in
            return
        gathered = self.waiting.get(agent.id)
        if gathered is None:
            self.waiting[agent.id] = (agent, [part])
        else:
            gathered[1].append(part)
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._send)

    def _send(self) -> None:
        try:
            while self.waiting:  # what was added while a send waited goes next
                waiting, self.waiting = self.waiting, {}
                for agent, parts in waiting.values():
                    for start in range(0, len(parts), PARTS_MAX):
                        self._send_parts(agent, parts[start : start + PARTS_MAX])
        finally:
            self._greenlet = None

    def _send_parts(self, agent: Any, parts: list[dict[str, Any]]) -> None:
        runtime = self.runtime
        if len(parts) == 1:
            _tell(runtime, agent, "chord_part", parts[0])
            return
        try:
            agent.send("chord_parts", {"parts": parts}, nowait=True)
        except SerializationError:  # too big together: each goes alone
            for part in parts:
                _tell(runtime, agent, "chord_part", part)
        except NodeDown:
            unmet_of(runtime).add(agent, "chord_parts", {"parts": parts})
        except ZcellError as exc:
            undelivered(runtime, agent, "chord_parts", exc)


def parts_of(runtime: Runtime) -> Parts:
    """The node's chord reports on their way out (made on first use)."""
    return runtime.part("parts", Parts)


def _advance(runtime: Runtime, msg: dict[str, Any], value: Any, rest: list[Any]) -> None:
    """Send the chain's next signature with ``value`` prepended."""
    from .canvas import Signature

    app = runtime.app
    try:
        nxt = Signature.from_dict(rest[0], app)
        options = {"chain": rest[1:], "root_id": msg["root_id"], "parent_id": msg["id"]}
        nxt.apply(app, runtime, (value,), {}, options)
    except Exception as exc:  # noqa: BLE001 - the rest of the chain must learn it
        log.error("zcell: cannot send the next task of a chain after %s: %r", msg["id"], exc)
        fail_rest(runtime, rest, failure(exc, runtime, str(rest[0].get("task"))))


def fail_rest(runtime: Runtime, rest: list[Any], outcome: dict[str, Any]) -> None:
    """The tasks of the chain's rest never run: each fails with ``outcome``."""
    from .canvas import Signature

    for data in rest:
        try:
            sig = Signature.from_dict(data, runtime.app)
        except TypeError:
            continue
        fail_signature(runtime, sig, outcome)


def fail_signature(runtime: Runtime, sig: Signature, outcome: dict[str, Any]) -> None:
    """Every task of ``sig`` fails with ``outcome``: kept as its record here (a
    worker), pushed to its watchers and to its chord."""
    for leaf in sig.leaves():
        task_id = leaf.freeze()
        record = dict(outcome, name=leaf.task)
        if runtime.worker is not None:
            runtime.worker.records.put(task_id, record)
        push(runtime, task_id, leaf.options.get("watchers"), leaf.options.get("chord"), record)
    rest = sig.options.get("chain") or []
    if rest:
        fail_rest(runtime, rest, outcome)


def failure(exc: Any, runtime: Runtime, name: str, state: str = "FAILURE") -> dict[str, Any]:
    """An outcome record for an error decided outside the task's code."""
    if not isinstance(exc, BaseException):
        exc = ZcellError(f"task ended {state}: {exc!r}")
    return {
        "s": state,
        "v": None,
        "e": error_wire(exc),
        "tb": None,
        "done": time.time(),
        "name": name,
        "worker": runtime.node.name,
        "retries": 0,
        "countdown": None,
    }
