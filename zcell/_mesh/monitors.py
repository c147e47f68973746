"""Failure detection whose work per node does not grow with the mesh.

A node takes heartbeats from a few members only: its ``k`` predecessors on the
ring of node ids (``MONITORS``, as Akka's cluster watches each node from a few
others), so every member is watched by its ``k`` successors. A watcher that hears
nothing from a member for ``SUSPECT_AFTER`` heartbeats tells the other members
(the ``suspect`` control operation). Nobody acts on that rumour: each of them
subscribes to the member's heartbeats itself and declares it down only if none
comes for ``VERIFY_FOR`` heartbeats (liveness stays first-hand). A watcher
declares a member down after ``DOWN_AFTER`` heartbeats of silence, as every node
did when everyone watched everyone.

A member whose watchers are all cut off from us with it (a partition) would be
vouched for by nobody on our side. So a node also probes one member it does not
watch per heartbeat, in turn (a ``probe`` control call, answered with the
member's directory number, load and actor count, as a heartbeat carries them):
one that does not answer within ``PROBE_WAIT`` heartbeats is checked first-hand by
the prober, and only if it is silent, by the others too. That bounds how long a
member unreachable from us can stay a member here to about one heartbeat per
member, without anyone's idle work growing with the mesh.

``ZCELL_MONITORS`` sets ``k`` (0: watch every member, as before this existed).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import gevent

from ..errors import CallTimeout, NodeDown, RemoteError, ZcellError

if TYPE_CHECKING:
    from ..control.registry import ControlRegistry
    from .directory import Member

__all__ = [
    "DOWN_AFTER",
    "MONITORS",
    "PROBE_WAIT",
    "SUSPECT_AFTER",
    "VERIFY_FOR",
    "Monitors",
    "monitors_from_env",
    "watched_ids",
]

log = logging.getLogger(__name__)

#: Members each node watches (its predecessors on the ring of node ids).
MONITORS = 3
#: Heartbeat intervals of silence before a watched member is down.
DOWN_AFTER = 2.6
#: Heartbeats of silence after which a watcher asks the others to check.
SUSPECT_AFTER = 1.3
#: Heartbeats a node listens to a suspected member itself before it acts.
VERIFY_FOR = 1.3
#: Heartbeats a probe waits for its answer (a busy member answers late: a
#: suspicion costs every member a check, so the wait is not cut fine).
PROBE_WAIT = 2.0


def monitors_from_env() -> int:
    """``ZCELL_MONITORS`` as a count of watched members (0: everyone).

    Raises:
        ValueError: not a non-negative integer (set ZCELL_MONITORS=3, or unset it).
    """
    raw = os.environ.get("ZCELL_MONITORS", "").strip()
    if not raw:
        return MONITORS
    if not raw.isdigit():
        raise ValueError(f"ZCELL_MONITORS must be a non-negative integer, not {raw!r}")
    return int(raw)


def watched_ids(me: str, member_ids: list[str], k: int) -> set[str]:
    """The ids among ``member_ids`` that node ``me`` watches: its ``k`` predecessors
    on the ring of all ids sorted (everyone when ``k`` is 0 or covers them all)."""
    if k <= 0 or k >= len(member_ids):
        return set(member_ids)
    ring = sorted([me, *member_ids])
    at = ring.index(me)
    return {ring[at - d] for d in range(1, k + 1)}  # negative indexes wrap around


class Monitors:
    """Which members this node watches, its suspicions and probes (module doc).

    It decides when a member is down; ``Membership`` carries it out
    (``member_down``) and tells it of joins and departures (``rewatch``).
    """

    def __init__(
        self,
        node_id: str,
        members: MutableMapping[str, Member],
        stats: dict[str, int],
        *,
        heartbeat: float,
        beat_of: Callable[[Member], float],
        ctrl: Callable[[str, str, dict[str, Any], float], Any],
        member_down: Callable[[Member, str], None],
        on_vitals: Callable[[Member, list[Any]], None],
        vitals: Callable[[], list[Any]],
    ) -> None:
        self._id = node_id
        self._members = members
        self._stats = stats
        self._heartbeat = heartbeat
        self._beat_of = beat_of
        self._ctrl = ctrl  # a control call to a member (suspect, probe)
        self._member_down = member_down
        self._on_vitals = on_vitals  # a probe's answer: [dir_seq, load, n_actors]
        self._vitals = vitals  # ours, for a probe of this node
        self.k = monitors_from_env()
        self._watched: set[str] = set()
        # The members whose suspicion we check (by id), and whether to tell the
        # others if we find one silent (our own probe went unanswered).
        self._checking: dict[str, bool] = {}
        self._next_probe = 0.0
        self._probed: set[str] = set()  # ids probed this round (each once per round)
        self._probing: str = ""  # the id of the member a probe is out to

    def add_control_ops(self, registry: ControlRegistry) -> None:
        """Answer ``suspect`` (a watcher's rumour, checked first-hand) and ``probe``."""
        registry.add(self._suspect_op, "suspect")
        registry.add(self._probe_op, "probe")

    # ------------------------------------------------------------ who we watch

    def rewatch(self) -> None:
        """Take heartbeats from the members the ring gives us and from those we
        are checking; a member newly watched gets the time to connect."""
        self._watched = watched_ids(self._id, list(self._members), self.k)
        now = time.monotonic()
        for member in list(self._members.values()):
            member.watched = member.id in self._watched
            if member.watched and not member.hb_connected:
                member.last_seen = max(member.last_seen, now)
            self._hear(member, member.watched or member.verify_until > 0)

    def _hear(self, member: Member, on: bool) -> None:
        """Connect (or disconnect) our SUB of ``member`` to its heartbeat PUB."""
        sub = member.sub
        if sub is None or member.hb_connected == on:
            return
        try:
            if on:
                sub.connect(member.hb)
            else:
                sub.disconnect(member.hb)
        except ZcellError:
            log.warning("zcell: cannot subscribe to the heartbeats of %s", member.name)
            return
        member.hb_connected = on

    # ------------------------------------------------------------ suspicion

    def _suspect_op(self, args: dict[str, Any], src: str) -> None:
        """A watcher heard nothing from a member: check it first-hand ({"id", "boot"})."""
        node_id, boot = args.get("id"), args.get("boot")
        member = self._members.get(node_id) if isinstance(node_id, str) else None
        if member is None or member.boot != boot or member.id == src:
            return
        if member.watched or member.verify_until:
            return  # we watch it ourselves, or are checking already
        self._stats["suspicions"] += 1
        self._verify(member, time.monotonic())

    def _verify(self, member: Member, now: float, tell: bool = False) -> None:
        self._checking[member.id] = tell
        member.last_seen = member.verify_from = now
        member.verify_until = now + VERIFY_FOR * self._beat_of(member)
        self._hear(member, True)

    def _check_suspicion(self, member: Member, now: float) -> None:
        """Act on a suspicion only on our own evidence: a heartbeat heard clears it,
        silence until the end of the check declares the member down."""
        if member.last_seen > member.verify_from:
            self._stats["suspicions_refuted"] += 1
            self._checking.pop(member.id, None)
            member.verify_from = member.verify_until = 0.0
            self._hear(member, member.watched)
        elif now > member.verify_until:
            silent = now - member.verify_from
            if self._checking.get(member.id):
                self._spread(member)  # our probe found it silent: the others check too
            self._member_down(member, f"silent for {silent:.1f}s after a suspicion")

    def _spread(self, member: Member) -> None:
        """Ask every other member to check ``member`` itself."""
        args = {"id": member.id, "boot": member.boot}
        for other in list(self._members.values()):
            if other is not member:
                gevent.spawn(self._tell_suspect, other, args)

    def _tell_suspect(self, other: Member, args: dict[str, Any]) -> None:
        try:
            self._ctrl(other.id, "suspect", args, 2.0)
        except ZcellError as exc:  # it may be down or cut off too
            log.debug("zcell: suspicion not told to %s: %s", other.name, exc)

    # ------------------------------------------------------------ probes

    def _probe_op(self, args: dict[str, Any], src: str) -> list[Any]:
        """This node's directory number, load and actor count (a member's probe)."""
        return self._vitals()

    def _probe_next(self, now: float) -> None:
        """Probe the next member we neither watch nor check, once a heartbeat."""
        if now < self._next_probe or self._probing:
            return
        self._next_probe = now + self._heartbeat
        candidates = [
            m
            for m in self._members.values()
            if not m.watched and not m.verify_until and m.id not in self._probed
        ]
        if not candidates:
            if not self._probed:
                return
            self._probed.clear()  # a new round
            return
        # In ring order from this node on: nodes start their rounds at different
        # members, so that a member is not probed by everyone at once.
        member = min(candidates, key=lambda m: (m.id < self._id, m.id))
        self._probed.add(member.id)
        self._probing = member.id
        gevent.spawn(self._probe, member)

    def _probe(self, member: Member) -> None:
        try:
            answer = self._ctrl(member.id, "probe", {}, PROBE_WAIT * self._beat_of(member))
        except CallTimeout:
            if self._members.get(member.id) is member and not member.verify_until:
                # Checked by us first, told to the others only if we find it
                # silent: one slow answer must not make every member check.
                self._stats["probes_unanswered"] += 1
                self._verify(member, time.monotonic(), tell=True)
            return
        except (NodeDown, RemoteError):  # gone already, or answered (an older node)
            return
        except ZcellError as exc:
            log.debug("zcell: probe of %s failed: %s", member.name, exc)
            return
        finally:
            self._probing = ""
        if not (
            isinstance(answer, list) and len(answer) == 3 and all(type(v) is int for v in answer)
        ):
            self._stats["dropped_bad_frames"] += 1
        elif self._members.get(member.id) is member:
            self._on_vitals(member, answer)

    def _suspect(self, member: Member, now: float) -> None:
        """A member we watch went quiet: ask the others to check it (we declare
        it down ourselves after ``DOWN_AFTER``)."""
        member.suspected = True
        log.info(
            "zcell: %s silent for %.1fs: asking the others to check it",
            member.name,
            now - member.last_seen,
        )
        self._spread(member)

    # ------------------------------------------------------------ the check

    def check(self, now: float) -> None:
        """Housekeeping: the watched members' silence, suspicions, the next probe.

        Only the members watched or being checked are looked at: the others are
        vouched for by their watchers (and probed in turn)."""
        for node_id in self._watched.union(self._checking):
            member = self._members.get(node_id)
            if member is None:
                continue
            if member.verify_until:
                self._check_suspicion(member, now)
                continue
            silent = now - member.last_seen
            beat = self._beat_of(member)
            if silent > DOWN_AFTER * beat:
                self._member_down(member, f"silent for {silent:.1f}s")
            elif not self.k or silent <= SUSPECT_AFTER * beat:
                member.suspected = False
            elif not member.suspected:
                self._suspect(member, now)
        if self.k:
            self._probe_next(now)

    def heard_within(self, member: Member, now: float, beats: float) -> bool:
        """Whether we heard ``member`` ourselves within ``beats`` heartbeats: never
        for a member we neither watch nor check (we do not take its heartbeats)."""
        if member.watched or member.verify_until:
            return now - member.last_seen < beats * self._beat_of(member)
        return False

    def forget(self, member: Member) -> None:
        """``member`` left the mesh: the ring closes over the gap."""
        self._probed.discard(member.id)
        self._checking.pop(member.id, None)
        self.rewatch()
