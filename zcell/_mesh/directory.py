"""The mesh directory and member records: pure data, no sockets.

Every node knows which actors live where (id -> type, node; type -> ids). Each
node is the authority for its own actors and publishes numbered changes; a
joining node, or one that sees a gap in the numbers, pulls a snapshot.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._wire import UNSTATED, minors

if TYPE_CHECKING:
    from gevent import Greenlet

    from .._transport.sockets import Socket

__all__ = ["PREFIX", "Directory", "Member", "Roster"]

PREFIX = 12  # bytes of a connection's routing id that name the node behind it


@dataclass(eq=False)
class Member:
    """A peer node, as this node knows it first-hand."""

    id: str
    boot: str
    name: str
    cluster: str
    inbox: str
    pub: str
    hb: str
    types: set[str] = field(default_factory=set)
    started: float = 0.0  # wall clock, for uptime display only
    dealer: Socket | None = None  # our DEALER to its inbox (set as it is admitted)
    # The routing-id prefix of its connections to our inbox (see membership.py):
    # frames that claim to be its own are accepted only from those.
    prefix: bytes = b""
    sub: Socket | None = None  # subscribed to its PUB and heartbeat PUB only
    reader: Greenlet | None = None  # the greenlet reading ``sub``
    last_seen: float = field(default_factory=time.monotonic)
    subscribed: bool = False  # its SUB is connected to our PUB
    dir_seq: int = 0
    load: int = 0
    n_actors: int = 0
    leaving: bool = False
    syncing: bool = False  # a snapshot request is in flight
    synced: bool = False  # its directory snapshot has arrived
    # The protocol minors it speaks: only kinds its highest has are sent to it.
    minors: tuple[int, int] = UNSTATED
    # Its heartbeat interval in seconds (node info "beat"); 0.0: not stated.
    beat: float = 0.0
    # Failure detection (monitors.py): whether our SUB takes its heartbeats,
    # whether it is one of the few we watch, whether we told the others it went
    # silent, and, while we check a suspicion first-hand, since when and until when.
    hb_connected: bool = False
    watched: bool = True
    suspected: bool = False
    verify_from: float = 0.0
    verify_until: float = 0.0

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Member:
        types = info.get("types")
        started = info.get("started")
        return cls(
            id=info["id"],
            boot=info["boot"],
            name=info["name"],
            cluster=info["cluster"],
            inbox=info["inbox"],
            pub=info["pub"],
            hb=info["hb"],
            types={t for t in types if isinstance(t, str)} if isinstance(types, list) else set(),
            started=float(started) if isinstance(started, int | float) else 0.0,
            minors=minors(info),
            beat=float(info.get("beat") or 0.0),
        )


class Roster:
    """The members by id and by the routing prefix of their connections (pure data).

    The one owner of the members table: ``Membership`` adds and removes
    members, everyone else reads it (``Messaging``, the node, program threads'
    ports). Our own connections' routing ids are made here too, so that a
    frame's connection tells which member it is from.
    """

    def __init__(self, node_id: str, node_name: str) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.members: dict[str, Member] = {}
        self.by_prefix: dict[bytes, Member] = {}
        self._route_key = os.urandom(16)  # keys our own DEALERs' routing ids
        self._route_n = itertools.count(1)

    def routing_id(self, endpoint: str) -> bytes:
        """The identity of a new DEALER of ours to ``endpoint``'s inbox.

        Its first ``PREFIX`` bytes are the same for all our connections to that
        endpoint (the loop's DEALER, each program thread's) and differ per
        endpoint, so a peer learns only the prefix we use towards it; the
        counter makes each connection's identity unique at its ROUTER.
        """
        digest = hashlib.blake2b(
            endpoint.encode(), key=self._route_key, digest_size=PREFIX - 1
        ).digest()
        return b"z" + digest + next(self._route_n).to_bytes(4, "big")

    def sender(self, routing: bytes | None, via: Member | None) -> Member | None:
        """The member a frame came from: the one whose connection (inbox) or
        whose PUB (``via``) carried it; None for a stranger's."""
        if via is not None:
            return via
        if routing is None:
            return None
        return self.by_prefix.get(routing[:PREFIX])

    def claim_prefix(self, member: Member, routing: bytes) -> None:
        """Frames claiming ``member`` are accepted from connections with this prefix."""
        prefix = routing[:PREFIX]
        if member.prefix != prefix:
            if self.by_prefix.get(member.prefix) is member:
                del self.by_prefix[member.prefix]
            member.prefix = prefix
        self.by_prefix[prefix] = member

    def release_prefix(self, member: Member) -> None:
        """Frames no longer come from ``member``'s connections (it is gone)."""
        if self.by_prefix.get(member.prefix) is member:
            del self.by_prefix[member.prefix]

    def label(self, node_id: str) -> str:
        """A node's name for messages (its id when it is no member, e.g. gone)."""
        if node_id == self.node_id:
            return self.node_name
        member = self.members.get(node_id)
        return member.name if member is not None else node_id


class Directory:
    """Actor id -> (type, node id), indexed by type and by node.

    Placement (``count_on``) and throws (``next_of_type``) run in callers'
    threads on every spawn and throw, and a joining node replaces a member's
    whole entry set: each costs O(1), or O(that node's actors), never
    O(directory). Only the loop thread changes it; program threads read it.
    """

    def __init__(self) -> None:
        self.actors: dict[str, tuple[str, str]] = {}
        self.by_type: dict[str, dict[str, str]] = {}
        self._by_node: dict[str, dict[str, None]] = {}  # node id -> its actor ids
        # Per type, the ids in round-robin order, and each id's place there.
        self._order: dict[str, list[str]] = {}
        self._place: dict[str, int] = {}
        self._rr: dict[str, int] = {}

    def add(self, actor_id: str, type_name: str, node_id: str) -> None:
        entry = (type_name, node_id)
        old = self.actors.get(actor_id)
        if old == entry:
            return  # the same news twice (a spawn's own add, then its DIRECTORY)
        if old is not None:
            self.remove(actor_id)
        self.actors[actor_id] = entry
        self.by_type.setdefault(type_name, {})[actor_id] = node_id
        self._by_node.setdefault(node_id, {})[actor_id] = None
        order = self._order.setdefault(type_name, [])
        self._place[actor_id] = len(order)
        order.append(actor_id)

    def remove(self, actor_id: str) -> tuple[str, str] | None:
        entry = self.actors.pop(actor_id, None)
        if entry is None:
            return None
        type_name, node_id = entry
        _discard(self.by_type, type_name, actor_id)
        _discard(self._by_node, node_id, actor_id)
        # Swap the last id into the gap: O(1), and the cycle still visits each once.
        order = self._order[type_name]
        place = self._place.pop(actor_id)
        last = order.pop()
        if last != actor_id:
            order[place] = last
            self._place[last] = place
        if not order:
            del self._order[type_name]
        return entry

    def remove_node(self, node_id: str) -> list[str]:
        gone = list(self._by_node.get(node_id, ()))
        for actor_id in gone:
            self.remove(actor_id)
        return gone

    def replace_node(self, node_id: str, entries: list[list[str]]) -> None:
        self.remove_node(node_id)
        for actor_id, type_name in entries:
            self.add(actor_id, type_name, node_id)

    def of_type(self, type_name: str) -> dict[str, str]:
        return self.by_type.get(type_name, {})

    def count_on(self, node_id: str) -> int:
        return len(self._by_node.get(node_id, ()))

    def next_of_type(
        self, type_name: str, exclude: set[str] | None = None, avoid: set[str] | None = None
    ) -> tuple[str, str] | None:
        """Round-robin pick of (actor id, node id); this caller cycles over the group.

        Skips the ids in ``exclude``, and actors on the nodes in ``avoid``
        (leaving nodes) unless there is nothing else. Looks at a few places
        after the round-robin one, and at the whole group only when all of
        those were skipped.
        """
        order = self._order.get(type_name)
        if not order:
            return None
        n = self._rr.get(type_name)
        if n is None:
            # Each caller starts at a random place, so that many short-lived
            # callers (one-shot clients) do not all pick the first actor.
            n = random.randrange(len(order) or 1)
        self._rr[type_name] = n + 1
        fallback = None
        tries = min(len(order), _LOOK_AHEAD + len(exclude or ()))
        for k in range(tries):
            picked = self._at(order, n + k)
            if picked is None or (exclude and picked[0] in exclude):
                continue
            if avoid and picked[1] in avoid:
                fallback = fallback or picked
                continue
            self._rr[type_name] = n + k + 1
            return picked
        if tries >= len(order):
            return fallback  # every place was looked at
        for actor_id, node_id in list(self.of_type(type_name).items()):
            if not (exclude and actor_id in exclude):
                if not (avoid and node_id in avoid):
                    return actor_id, node_id
                fallback = fallback or (actor_id, node_id)
        return fallback

    def _at(self, order: list[str], n: int) -> tuple[str, str] | None:
        """(actor id, node id) at place ``n`` (mod the size) of ``order``; None if the
        loop thread changed it meanwhile."""
        try:
            actor_id = order[n % len(order)]
        except (IndexError, ZeroDivisionError):
            return None
        entry = self.actors.get(actor_id)
        return None if entry is None else (actor_id, entry[1])


_LOOK_AHEAD = 8  # places next_of_type tries before it scans the whole group


def _discard(index: dict[str, dict[str, Any]], key: str, actor_id: str) -> None:
    group = index.get(key)
    if group is not None:
        group.pop(actor_id, None)
        if not group:
            del index[key]
