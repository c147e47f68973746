"""The mesh directory and member records: pure data, no sockets.

Every node knows which actors live where (id -> type, node; type -> ids). Each
node is the authority for its own actors and publishes numbered changes; a
joining node, or one that sees a gap in the numbers, pulls a snapshot.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Directory", "Member"]


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
    dealer: Any = None  # transport.Socket to its inbox
    # The routing-id prefix of its connections to our inbox (see membership.py):
    # frames that claim to be its own are accepted only from those.
    prefix: bytes = b""
    sub: Any = None  # transport.Socket subscribed to its PUB and heartbeat PUB only
    reader: Any = None  # the greenlet reading ``sub``
    last_seen: float = field(default_factory=time.monotonic)
    subscribed: bool = False  # its SUB is connected to our PUB
    dir_seq: int = 0
    load: int = 0
    n_actors: int = 0
    leaving: bool = False
    syncing: bool = False  # a snapshot request is in flight
    synced: bool = False  # its directory snapshot has arrived

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
        )


class Directory:
    """Actor id -> (type, node id), with an ordered index by type."""

    def __init__(self) -> None:
        self.actors: dict[str, tuple[str, str]] = {}
        self.by_type: dict[str, dict[str, str]] = {}
        self._rr: dict[str, int] = {}

    def add(self, actor_id: str, type_name: str, node_id: str) -> None:
        self.actors[actor_id] = (type_name, node_id)
        self.by_type.setdefault(type_name, {})[actor_id] = node_id

    def remove(self, actor_id: str) -> tuple[str, str] | None:
        entry = self.actors.pop(actor_id, None)
        if entry is not None:
            group = self.by_type.get(entry[0])
            if group is not None:
                group.pop(actor_id, None)
                if not group:
                    del self.by_type[entry[0]]
        return entry

    def remove_node(self, node_id: str) -> list[str]:
        gone = [a for a, (_, n) in self.actors.items() if n == node_id]
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
        return sum(1 for _, n in list(self.actors.values()) if n == node_id)

    def next_of_type(
        self, type_name: str, exclude: set[str] | None = None
    ) -> tuple[str, str] | None:
        """Round-robin pick of (actor id, node id); this caller cycles over the group."""
        group = self.by_type.get(type_name)
        if not group:
            return None
        ids = list(group)
        if exclude:
            ids = [a for a in ids if a not in exclude]
            if not ids:
                return None
        n = self._rr.get(type_name)
        if n is None:
            # Each caller starts at a random place, so that many short-lived
            # callers (one-shot clients) do not all pick the first actor.
            n = random.randrange(len(ids))
        self._rr[type_name] = n + 1
        actor_id = ids[n % len(ids)]
        return actor_id, group[actor_id]
