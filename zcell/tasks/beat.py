"""Beat: periodic tasks sent by one leader among any number of candidates.

A candidate (``zcell worker -B``, ``zcell beat``) hosts one actor of type
``zcell.beat.candidate``; the mesh directory therefore lists the live
candidates, and every candidate derives the same leader from it (the lowest
node name), so no election messages are needed. The leader sends each tick
with a deterministic id (the entry's name and due time), so a tick sent twice
in a hand-over runs once: a worker does not run a delivery it took already,
and a new leader asks the mesh which of the ticks it catches up on ran.

Quorum: each candidate remembers the candidates it last knew (``known``); a
graceful leave (``leave``) removes one, a crash does not. The leader sends only
while it sees ``beat_quorum`` of them (default: a majority); while it does, the
dead ones are forgotten. See docs/beat.md.

Leases: the leader sends only while enough of the others (with itself, the
quorum) have told it, within the last ``LEASE_HEARTBEATS`` heartbeats, that
they take it for the leader; a candidate that told one leader so says it to no
other until that lease ends, and does not lead meanwhile. A leader that was
paused (a long GC, a stalled host) or cut off one way therefore stops before
another can lead, instead of sending the ticks its successor sent.

Passing over: a lease that ends unrenewed is how a candidate learns that its
leader stopped leading (it died, stalled, or its beat stopped while its node
lives), sooner than the membership declares a node down: the candidate then
takes the next name for the leader, until the one passed over asks it for a
lease again.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from ..actors.actor import Actor
from ..errors import NodeStopped, ZcellError
from .schedules import Schedule, to_schedule
from .task import Task

if TYPE_CHECKING:
    from ..actors.proxy import ActorProxy
    from ..node import Node
    from .app import App

__all__ = ["CANDIDATE_TYPE", "Beat", "BeatEntry", "entries_of"]

log = logging.getLogger(__name__)

#: The actor type a beat candidate hosts.
CANDIDATE_TYPE = "zcell.beat.candidate"
#: Seconds between two looks at the candidates and the schedule.
ROUND = 0.1
#: Heartbeats a new candidate waits before it may lead: time to meet the mesh (one
#: that sees no other candidate yet is a quorum of one, and would send the ticks
#: the leader it has not met sends).
JOIN_HEARTBEATS = 3.0
#: Seconds a candidate waits for another's answer (its known set, the ran ticks).
ASK_TIMEOUT = 2.0
#: Heartbeats a lease lasts. One that ends unrenewed passes its leader over, so a
#: dead leader is replaced within about this many heartbeats (less than the
#: membership's 2.6 to declare a node down); renewed with a third of it gone, so
#: that an answer may come more than a heartbeat late without costing the lead.
LEASE_HEARTBEATS = 2.0
#: The namespace of the tick ids (uuid5 of app, entry and due time).
TICK_NAMESPACE = uuid.UUID("6f1d1e3c-8f0a-4a53-9d7e-2b9f4a6c1e15")
#: The keys of a beat_schedule entry.
ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options", "catch_up"})

# A node's beat is kept on the node (they refer to each other and go together; a
# WeakKeyDictionary whose value held its key kept both for ever).
_ATTR = "_zcell_beat"


class BeatEntry:
    """One periodic task: ``beat_schedule[name]`` (see docs/beat.md)."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        unknown = sorted(set(spec) - ENTRY_KEYS)
        if unknown or "task" not in spec or "schedule" not in spec:
            raise TypeError(
                f"beat_schedule[{name!r}] needs 'task' and 'schedule' and takes only "
                f"{sorted(ENTRY_KEYS)}; got {sorted(spec)}"
            )
        task = spec["task"]
        self.name = name
        self.task: str = task.name if isinstance(task, Task) else str(task)
        self.schedule: Schedule = to_schedule(spec["schedule"])
        self.args = list(spec.get("args") or ())
        self.kwargs = dict(spec.get("kwargs") or {})
        self.options = dict(spec.get("options") or {})
        self.catch_up = bool(spec.get("catch_up", True))
        self.cursor: float | None = None  # due times up to here are dealt with
        self.last: float | None = None  # the due time of the last tick sent here

    def tick_id(self, app: str, due: float) -> str:
        """The tick's task id: the same on every candidate."""
        return str(uuid.uuid5(TICK_NAMESPACE, f"{app}:{self.name}@{due:.6f}"))

    def describe(self, tz: str, now: float, reported: float | None) -> dict[str, Any]:
        """The entry as ``beat`` status shows it; ``last_run`` is the latest tick
        sent here or ``reported`` by the leader."""
        last = max((t for t in (self.last, reported) if t is not None), default=None)
        return {
            "name": self.name,
            "task": self.task,
            "schedule": repr(self.schedule),
            "last_run": last,
            "next_run": self.schedule.next_after(now, tz),
        }


def _due(tick: tuple[BeatEntry, float]) -> float:
    return tick[1]


def entries_of(app: App) -> list[BeatEntry]:
    """The app's ``beat_schedule`` as entries (a bad entry raises ``TypeError``)."""
    schedule = app.conf.beat_schedule or {}
    return [BeatEntry(str(name), dict(spec)) for name, spec in schedule.items()]


def add_periodic_task(
    app: App,
    schedule: float | timedelta | Schedule,
    sig: Task | str,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    **opts: Any,
) -> str:
    """``app.add_periodic_task``: add a ``beat_schedule`` entry; returns its name."""
    task = sig.name if isinstance(sig, Task) else str(sig)
    to_schedule(schedule)  # a bad schedule fails here, not in the beat
    catch_up = opts.pop("catch_up", True)
    key = name or f"{task}({', '.join(map(repr, args))})@{schedule!r}"
    entries = dict(app.conf.beat_schedule or {})
    entries[key] = {
        "task": task, "schedule": schedule, "args": tuple(args), "kwargs": dict(kwargs or {}),
        "options": opts, "catch_up": catch_up,
    }  # fmt: skip
    app.conf.beat_schedule = entries
    return key


class BeatCandidate(Actor):
    """A beat candidate's actor: the directory lists the candidates by it."""

    name = CANDIDATE_TYPE

    class state:
        node: Any  # set by the hosting node before __init__

        def status(self) -> dict[str, Any]:
            """This candidate's view: leader, quorum, schedule."""
            return _beat_of(self.node).status()

        def leave(self, name: str, node: str, cursors: dict[str, float]) -> None:
            """Candidate ``name`` (node id ``node``) leaves gracefully; as leader it
            had sent each entry's ticks up to ``cursors``."""
            beat = _beat_of(self.node)
            beat.progress(cursors)
            beat.left_gracefully(str(name), str(node))

        def sent(self, cursors: dict[str, float]) -> None:
            """The leader sent each entry's ticks up to ``cursors`` (entry -> time)."""
            _beat_of(self.node).progress(cursors)

        def known(self) -> list[str]:
            """The candidates this one last knew (the quorum's basis)."""
            return sorted(_beat_of(self.node).known)

        def lease(self, name: str, node: str) -> dict[str, Any]:
            """Candidate ``name`` (node id ``node``) asks to lead for a lease:
            ``ok`` if this one takes it for the leader and leased to no other;
            with it, ``handed``: how far each entry's ticks were sent, as far as
            this one knows (it may have heard from a leader the asker never saw),
            and ``length``: the lease's seconds here (the asker counts no more)."""
            beat = _beat_of(self.node)
            if not beat.grant(str(name), str(node)):
                return {"ok": False}
            return {"ok": True, "handed": beat.reported(), "length": beat.lease_length()}

        def on_stop(self) -> None:
            """The node stops: the beat's greenlet ends now, in the loop's thread
            (one still suspended when that thread ends keeps the node)."""
            beat = beat_on(self.node)
            if beat is not None:
                beat.end()


def beat_on(node: Node) -> Beat | None:
    """The beat candidate running on ``node``, if any."""
    beat: Beat | None = getattr(node, _ATTR, None)
    return beat


def _beat_of(node: Node) -> Beat:
    beat = beat_on(node)
    if beat is None:  # pragma: no cover - the beat spawns its actor
        raise LookupError("this node runs no beat")
    return beat


def periodic_schedule(node: Node) -> list[dict[str, Any]]:
    """The periodic entries a beat candidate on ``node`` sends (for ``inspect
    scheduled``), each with its last and next run, whether this node leads, and
    why it does not send (``paused``: a minority side says so here); [] on a node
    that runs no beat."""
    beat = beat_on(node)
    if beat is None:
        return []
    status = beat.status()
    leading, paused = bool(status["leading"]), status["paused"]
    return [
        {"eta": e["next_run"], "priority": 0, "periodic": e, "leader": leading, "paused": paused}
        for e in status["entries"]
    ]


class Beat:
    """A beat candidate on ``node`` for ``app`` (see the module doc).

    Args:
        app: The app whose ``beat_schedule`` it sends (``app.node`` is ``node``).
        node: The candidate's started node.
    """

    def __init__(self, app: App, node: Node) -> None:
        self.app = app
        self.node = node
        self.entries = entries_of(app)
        self.me = node.name
        self.started = time.time()
        self._joined_at = time.monotonic() + JOIN_HEARTBEATS * float(node.heartbeat)
        self.known: set[str] = {self.me}
        self.left: dict[str, str] = {}  # name -> node id of candidates that left
        self.asked: set[str] = set()  # node ids asked for their known set
        self.answered: set[str] = set()  # ... and those that answered
        self.live: dict[str, ActorProxy | None] = {}
        self.leader: str | None = None
        self.leading = False
        self.paused: str | None = None
        self.settle_until = 0.0
        self.handed: dict[str, float] = {}  # entry -> due time the leader last sent
        self.sent = 0
        self.caught_up = 0
        # Leases (monotonic seconds, each side's own clock): the one this candidate
        # gave (name, node id, until), and those it holds from others (name -> until,
        # counted from before it asked, so it ends here first).
        self.lease_to: tuple[str, str, float] | None = None
        self.leases: dict[str, float] = {}
        self.spans: dict[str, float] = {}  # name -> seconds of the lease it last gave
        self.passed: dict[str, str] = {}  # name -> node id: leases to it ended unrenewed
        self._asking: set[str] = set()  # candidates asked for a lease, no answer yet
        self._unleased_since: float | None = None
        self._greenlet: Any = None
        self._wake: gevent.event.Event | None = None  # made in the loop's thread (_run)

    # -- lifecycle (any thread) ---------------------------------------------

    def start(self) -> Beat:
        """Become a candidate: host the actor, add the ``beat`` control op, run."""
        setattr(self.node, _ATTR, self)
        self.node.register(BeatCandidate)
        self.node.spawn(BeatCandidate, on=self.node.id)
        self.node.control.add(self._control, "beat")
        self._greenlet = self.node.call_in_loop(gevent.spawn, self._run)
        return self

    def stop(self) -> None:
        """Stop sending and tell the other candidates (they hand over at once)."""
        try:
            self.node.call_in_loop(self._leave)
        except ZcellError:
            pass  # the node stopped already: the others see it gone

    def end(self) -> None:
        """(Loop thread) end the beat's greenlet."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=1.0)

    def _leave(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        self.node.control.remove("beat")
        cursors = self._cursors() if self.leading else {}
        self.leading, self.leases = False, {}
        self._tell("leave", {"name": self.me, "node": self.node.id, "cursors": cursors})

    def _tell(self, method: str, kwargs: dict[str, Any]) -> None:
        """Fire and forget to every other live candidate."""
        for name, ref in self.live.items():
            if ref is not None and name != self.me:
                try:
                    ref.send(method, kwargs, nowait=True)
                except ZcellError:
                    pass

    def _cursors(self) -> dict[str, float]:
        return {e.name: e.last for e in self.entries if e.last is not None}

    def reported(self) -> dict[str, float]:
        """How far each entry's ticks were sent, by this candidate or as leaders
        reported (``sent``, ``leave``) to it."""
        cursors = dict(self.handed)
        for name, due in self._cursors().items():
            cursors[name] = max(due, cursors.get(name, due))
        return cursors

    def progress(self, cursors: Any) -> None:
        """Where the leader is: a successor catches up from there, not earlier."""
        if not isinstance(cursors, dict):
            return
        for name, due in cursors.items():
            if isinstance(name, str) and isinstance(due, int | float):
                self.handed[name] = max(float(due), self.handed.get(name, float("-inf")))

    # -- the loop (loop thread) ---------------------------------------------

    def _run(self) -> None:
        self._wake = wake = gevent.event.Event()
        keeper = gevent.spawn(self._keep_leases)
        try:
            while True:
                try:
                    self._round(time.time())
                except NodeStopped:
                    return  # the node stops: so does its beat
                except Exception:  # noqa: BLE001 - the beat must outlive one bad round
                    log.exception("zcell beat: a round failed; trying again")
                wake.wait(self._pause())
                wake.clear()
        finally:
            keeper.kill(block=False)

    def _keep_leases(self) -> None:
        """(A greenlet beside the rounds) renew the leases while this candidate
        leads. A round can be held up longer than a lease lasts: asking the mesh
        which ticks ran waits up to ``ASK_TIMEOUT`` for an agent that does not
        answer (its node stopped a while), and the leases the others gave would
        end meanwhile, passing this leader over."""
        while True:
            gevent.sleep(ROUND)
            try:
                if self.leading and self.quorum() > 1:
                    self._renew_due(self._lease_givers(), time.monotonic())
            except Exception:  # noqa: BLE001 - the keeper must outlive one bad turn
                log.exception("zcell beat: renewing the leases failed; trying again")

    def _pause(self) -> float:
        """Seconds to the next round: ``ROUND``, or less when the lease this
        candidate gave ends sooner (a lease ended unrenewed is acted on at once)."""
        given = self.lease_to
        if given is None:
            return ROUND
        return min(ROUND, max(0.0, given[2] - time.monotonic()) + 0.001)

    def _round(self, now: float) -> None:
        self.live = self._live()
        self._learn()
        self.known |= set(self.live)
        need = self.quorum()
        have = len(self.known & set(self.live))
        if have >= need:
            self.known = set(self.live)  # the dead ones no longer count
        self._pass_over()
        self.leader = self._leader()
        if self.leader != self.me or not self._learnt() or time.monotonic() < self._joined_at:
            self._follow(None)
        elif have < need:
            self._follow(self._no_quorum(have, need))
        elif self._leased(need):
            self._unleased_since = None
            self._lead(now)
        else:  # leases asked; or one this candidate gave has not ended yet
            since = self._unleased_since = self._unleased_since or now
            waited = now - since > self.lease_length()
            self._follow(self._no_lease(need) if waited else None)

    def _no_quorum(self, have: int, need: int) -> str:
        """Why this candidate, the leader by name, does not send (too few seen)."""
        missing = sorted(self.known - set(self.live))
        if not missing:  # a beat_quorum larger than the candidates there are
            return (
                f"beat paused on {self.me}: it sees {have} candidate(s) and needs {need} "
                "(beat_quorum); start more candidates, or lower beat_quorum"
            )
        return (
            f"beat paused on {self.me}: it sees {have} of the {len(self.known)} candidates "
            f"it last knew ({', '.join(missing)} unreachable) and needs {need} "
            "(beat_quorum); the other side of a partition may hold the majority"
        )

    def _live(self) -> dict[str, ActorProxy | None]:
        """The live candidates by node name (those that left excluded), self included."""
        names = {n["id"]: n["name"] for n in self.node.nodes()}
        live: dict[str, ActorProxy | None] = {}
        for ref in self.node.actors(CANDIDATE_TYPE):
            name = names.get(ref.node_id)
            if name is None or self.left.get(name) == ref.node_id:
                continue
            self.left.pop(name, None)  # it left, and is back (a new node)
            live[name] = ref
        live.setdefault(self.me, None)  # before the directory lists it
        return live

    def _pass_over(self) -> None:
        """A lease this candidate gave that ended unrenewed, its holder still
        listed, passes that holder over (see the module doc); one no longer
        listed (it left, or a new node took its name) is forgotten."""
        given = self.lease_to
        if given is not None and given[2] <= time.monotonic():
            self.lease_to = None
            ref = self.live.get(given[0])
            if given[0] != self.me and ref is not None and ref.node_id == given[1]:
                self.passed[given[0]] = given[1]
                log.warning(
                    "zcell beat: %s passes over %s (its lease ended unrenewed)", self.me, given[0]
                )
        for name, node_id in list(self.passed.items()):
            ref = self.live.get(name)
            if ref is None or ref.node_id != node_id:
                del self.passed[name]

    def _leader(self) -> str:
        """The lowest live name not passed over (self is never passed over)."""
        return min(n for n, ref in self.live.items() if ref is None or n not in self.passed)

    def _learn(self) -> None:
        """Ask each newly seen candidate whom it knows (a newcomer on a minority
        side must not form a quorum of its own)."""
        for name, ref in self.live.items():
            if ref is not None and name != self.me and ref.node_id not in self.asked:
                self.asked.add(ref.node_id)
                gevent.spawn(self._ask, ref)

    def _ask(self, ref: ActorProxy) -> None:
        try:
            names = ref.send("known", {}, timeout=ASK_TIMEOUT)
        except ZcellError:
            self.asked.discard(ref.node_id)
            return
        if isinstance(names, list):
            self.known |= {str(n) for n in names} - set(self.left)
        self.answered.add(ref.node_id)

    def _learnt(self) -> bool:
        """Every other live candidate said whom it knows: only then may this one
        count a quorum (a newcomer would otherwise count only what it sees)."""
        return all(
            ref is None or name == self.me or ref.node_id in self.answered
            for name, ref in self.live.items()
        )

    # -- leases (loop thread) -------------------------------------------------

    def lease_length(self) -> float:
        """Seconds a lease lasts (``LEASE_HEARTBEATS`` of this node's heartbeats)."""
        return LEASE_HEARTBEATS * float(self.node.heartbeat)

    def grant(self, name: str, node_id: str) -> bool:
        """Lease ``name`` the lead if this candidate takes it for the leader and
        leased to no other now (a lease ends, or its holder leaves, before another
        is given)."""
        self._pass_over()  # a lease to another that just ended: pass it over now
        self.leader = self._leader()
        now = time.monotonic()
        ref = self.live.get(name)
        if ref is not None and self.passed.get(name) == node_id:
            del self.passed[name]  # it asks again: it lives and would lead
            self.leader = self._leader()
        if name == self.me or name != self.leader or ref is None or ref.node_id != node_id:
            return False
        given = self.lease_to
        if given is not None and given[:2] != (name, node_id) and given[2] > now:
            return False
        self.lease_to = (name, node_id, now + self.lease_length())
        if self.leading:  # it leads no more (the next round says so too)
            self._follow(None)
        return True

    def _leased(self, need: int) -> bool:
        """Whether this candidate may send now: it leased the lead to no other, and
        ``need - 1`` of the others hold it for the leader (their leases, unexpired).
        Asks each again for its lease with less than two thirds of it left (one ask
        in flight to each), so that a slow answer still comes before it ends."""
        now = time.monotonic()
        given = self.lease_to
        if given is not None and given[0] != self.me and given[2] > now:
            return False
        if need <= 1:
            return True  # a quorum of one (beat_quorum = 1): no lease asked, none needed
        others = self._lease_givers()
        held = sum(1 for n in others if self.leases.get(n, 0.0) > now)
        self._renew_due(others, now)
        return held + 1 >= need

    def _lease_givers(self) -> list[str]:
        """The candidates asked for a lease. One passed over is not asked: dead,
        it would hold the renewal up; alive, it takes itself for the leader (it
        asks us, and is no longer passed over)."""
        return [n for n in self.live if n != self.me and n in self.known and n not in self.passed]

    def _renew_due(self, names: list[str], now: float) -> None:
        """Ask each of ``names`` whose lease has less than two thirds of it left
        (one ask in flight to each)."""
        length = self.lease_length()
        for name in names:
            ref = self.live.get(name)
            left = self.leases.get(name, 0.0) - now
            if ref is not None and name not in self._asking:
                if left <= self.spans.get(name, length) * 2 / 3:
                    self._asking.add(name)
                    gevent.spawn(self._ask_lease, name, ref)

    def _ask_lease(self, name: str, ref: ActorProxy) -> None:
        """Ask ``name`` for a lease and keep it as it comes. Each candidate is asked
        on its own: one that does not answer (stopped, cut off) holds up the
        renewal of none of the others, whose leases would end meanwhile."""
        asked = time.monotonic()
        ask = {"name": self.me, "node": self.node.id}
        # A later answer would come with its lease over.
        wait = self.spans.get(name, self.lease_length())
        try:
            try:
                answer = ref.send("lease", ask, timeout=wait)
            except ZcellError:
                answer = None
            if isinstance(answer, dict) and answer.get("ok") is True:
                # As long as it lasts there, if shorter (its heartbeats are faster).
                span = self.lease_length()
                given = answer.get("length")
                if isinstance(given, int | float) and not isinstance(given, bool) and given > 0:
                    span = min(span, float(given))
                self.leases[name], self.spans[name] = asked + span, span
                if self._wake is not None:
                    self._wake.set()  # the next round now: it may lead with this lease
                # A leader this one never heard from (it came back from a stall,
                # or joined) may have sent ticks: the candidates that leased to
                # that one heard how far, and a quorum overlaps.
                self.progress(answer.get("handed"))
            else:
                self.leases.pop(name, None)
        finally:
            self._asking.discard(name)

    def _no_lease(self, need: int) -> str:
        """Why this candidate, the leader by name, does not send (no lease yet)."""
        now = time.monotonic()
        given = self.lease_to
        if given is not None and given[0] != self.me and given[2] > now:
            return f"beat paused on {self.me}: it has leased the lead to {given[0]} (until it ends)"
        holding = sorted(n for n, until in self.leases.items() if until > now)
        return (
            f"beat paused on {self.me}: {len(holding)} other candidate(s) hold it for the "
            f"leader ({', '.join(holding) or 'none'}) and it needs {need - 1} (leases); "
            "the others may see another leader, or not hear this one"
        )

    def quorum(self) -> int:
        """Candidates needed to send: ``beat_quorum``, default a majority of ``known``."""
        fixed = self.app.conf.beat_quorum
        return int(fixed) if fixed else len(self.known) // 2 + 1

    def left_gracefully(self, name: str, node_id: str) -> None:
        """A candidate left: it no longer counts, and no longer leads."""
        self.left[name] = node_id
        self.known.discard(name)
        self.leases.pop(name, None)
        if self.lease_to is not None and self.lease_to[:2] == (name, node_id):
            self.lease_to = None  # it sends no more: the next may lead at once
        log.info("zcell beat: candidate %s left", name)

    def _follow(self, paused: str | None) -> None:
        if paused is not None and paused != self.paused:
            log.warning("zcell %s", paused)
        if self.leading:
            log.info("zcell beat: %s no longer leads (leader: %s)", self.me, self.leader)
        self.leading, self.paused = False, paused

    def _lead(self, now: float) -> None:
        tz = str(self.app.conf.timezone or "UTC")
        if not self.leading:
            self._take_over(now)
        if now < self.settle_until:
            return  # ticks in flight from the old leader land meanwhile
        catch: list[tuple[BeatEntry, float]] = []
        fresh: list[tuple[BeatEntry, float]] = []
        sent = self.sent
        for entry in self.entries:
            if entry.cursor is None:
                entry.cursor = self._catch_up_from(entry, now)
            for due in entry.schedule.due(entry.cursor, now, tz):
                (catch if due <= self.settle_until else fresh).append((entry, due))
        # The late ticks first: a leader reports how far it sent (``last``), and a
        # successor starts after that, so a later tick sent before an earlier one
        # that then could not go (the lease ended meanwhile) would lose it.
        if self._catch_up(catch):
            for entry, due in fresh:
                if not self._send(entry, due):
                    break  # the lease ended: a new lead starts over (_take_over)
                entry.cursor = due
            else:
                for entry in self.entries:
                    entry.cursor = now
        if self.sent != sent:
            self._tell("sent", {"cursors": self._cursors()})

    def _take_over(self, now: float) -> None:
        self.leading, self.paused = True, None
        # A candidate followed (or waited to join) until now: ticks another sent
        # may still be in flight.
        self.settle_until = now + self.node.heartbeat
        for entry in self.entries:
            entry.cursor = None
        log.info(
            "zcell beat: %s leads (candidates: %s; quorum %d of %s)",
            self.me, ", ".join(sorted(self.live)), self.quorum(), sorted(self.known),
        )  # fmt: skip

    def _catch_up_from(self, entry: BeatEntry, now: float) -> float:
        """Where this leader starts: after the last tick it knows was sent (by a
        leader's report, or by itself); with no word of one, from when it became
        a candidate (no leader it knows of sent any since; the mesh is asked
        which ran). Bounded by ``beat_max_catchup``; an entry with
        ``catch_up=False`` starts now."""
        if not entry.catch_up:
            return self.settle_until
        bound = now - float(self.app.conf.beat_max_catchup)
        return max(self.reported().get(entry.name, self.started), bound)

    def _catch_up(self, ticks: list[tuple[BeatEntry, float]]) -> bool:
        """Send the ticks that fell due before this leader took over, but only
        those the mesh has no trace of (the old leader may have sent them), in
        order; False when the lead was lost before the last (the next lead
        starts over from where this one got)."""
        if not ticks:
            return True
        app = self.app.main or "__main__"
        ids = {entry.tick_id(app, due): (entry, due) for entry, due in sorted(ticks, key=_due)}
        ran = self._ran(list(ids))
        for tick_id, (entry, due) in ids.items():
            if tick_id not in ran:
                if not self._send(entry, due):
                    return False  # the lease ended while the mesh was asked
                self.caught_up += 1
            entry.cursor = max(due, entry.cursor or due)
        log.info("zcell beat: caught up on %d tick(s) of %d", len(ids) - len(ran), len(ids))
        return True

    def _ran(self, ids: list[str]) -> set[str]:
        """The ids among ``ids`` that any task agent of the mesh knows."""
        runtime = self.app._runtime()
        assert runtime.agent is not None
        found: set[str] = set()
        try:
            replies = runtime.agent.scatter(
                "query", {"ids": ids}, timeout=ASK_TIMEOUT, propagate=False
            )
            for reply in replies:
                if isinstance(reply, dict):
                    found |= set(reply) & set(ids)
        except ZcellError as exc:  # send them: a worker that ran one will not again
            log.warning("zcell beat: cannot ask the mesh which ticks ran: %s", exc)
        return found

    def _send(self, entry: BeatEntry, due: float) -> bool:
        """Send one tick, if this candidate still holds the lead (checked at each
        tick: a round may outlast a lease); False when it does not."""
        if not self.leading or not self._leased(self.quorum()):
            self._follow(None)
            return False
        app = self.app.main or "__main__"
        try:
            self.app.send_task(
                entry.task, entry.args, entry.kwargs, task_id=entry.tick_id(app, due),
                **entry.options,
            )  # fmt: skip
        except (ZcellError, TypeError) as exc:
            log.error("zcell beat: cannot send %s (%s): %s", entry.name, entry.task, exc)
            return True
        entry.last = due
        self.sent += 1
        return True

    # -- visibility ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This candidate's view: who leads, the quorum, each entry's runs."""
        tz = str(self.app.conf.timezone or "UTC")
        now = time.time()
        return {
            "node": self.me,
            "leader": self.leader,
            "leading": self.leading,
            "paused": self.paused,
            "candidates": sorted(self.live),
            "known": sorted(self.known),
            "quorum": self.quorum(),
            "sent": self.sent,
            "caught_up": self.caught_up,
            "leases": sorted(n for n, until in self.leases.items() if until > time.monotonic()),
            "passed": sorted(self.passed),
            "entries": [e.describe(tz, now, self.handed.get(e.name)) for e in self.entries],
        }

    def _control(self, args: dict[str, Any], src: str) -> dict[str, Any]:
        """The beat's status: leader, quorum, and each entry's last and next run."""
        return self.status()
