"""Requests from a node in the middle of joining us, held until it is a member.

Of two nodes that meet, the one that verifies the other first admits it and
sends it a WELCOME; the other admits the first only when that WELCOME arrives
(docs/protocol.md §8). A request of the first that leaves on another connection
(a program thread's own DEALER) can overtake the WELCOME: its connection's
routing-id prefix is not a member's yet, so admission would drop it and its
caller would wait out its whole timeout. Instead the node holds it, briefly and
within bounds, and runs it through the normal admission once the WELCOME has
made that prefix a member's (``Membership`` replays it). A frame is held only
for a prefix that has sent our challenge back on a knock of ours that is still
open (``expect``): a stranger cannot make a node hold anything, and a held frame
is admitted only as any frame from a verified member is. What is not replayed
by the end of that knock's life is dropped and counted as stale, as before.
"""

from __future__ import annotations

from collections import deque

from .directory import PREFIX

__all__ = ["HeldFrames"]

MAX_JOINING = 64  # prefixes expected at once (one per knock answered, and knocks are bounded)
MAX_HELD_PER_PREFIX = 64  # frames held for one joining node
MAX_HELD = 1024  # frames held in all
MAX_HELD_BYTES = 64 * 2**20  # bytes of frames held in all


class HeldFrames:
    """Frames from the connections of nodes joining us, by routing prefix (pure
    data; the node's loop thread alone uses it).

    Counts in the node's counters: ``held_early`` (held), ``held_replayed``
    (released to be run), ``held_expired`` (dropped unrun, also counted in
    ``dropped_stale``).
    """

    def __init__(self, stats: dict[str, int]) -> None:
        self._stats = stats
        self._expected: dict[bytes, float] = {}  # prefix -> until when (monotonic)
        self._held: dict[bytes, deque[tuple[float, bytes, bytes]]] = {}  # (until, routing, frame)
        self._count = 0
        self._bytes = 0

    def expect(self, prefix: bytes, until: float) -> None:
        """The node behind ``prefix`` answered our challenge (an open knock, which
        ends at ``until``): it may admit us, and send us requests, before its
        WELCOME makes it a member here. Hold them until then."""
        if prefix in self._expected or len(self._expected) < MAX_JOINING:
            self._expected[prefix] = max(until, self._expected.get(prefix, 0.0))

    def hold(self, routing: bytes, frame: bytes, now: float) -> bool:
        """Keep ``frame`` (from the connection ``routing``, not a member's) if that
        connection is a joining node's and there is room; False: drop it."""
        if not self._expected:
            return False
        prefix = routing[:PREFIX]
        until = self._expected.get(prefix)
        if until is None or until <= now:
            return False
        queue = self._held.get(prefix)
        if queue is None:
            queue = self._held[prefix] = deque()
        size = len(frame)
        if (
            len(queue) >= MAX_HELD_PER_PREFIX
            or self._count >= MAX_HELD
            or self._bytes + size > MAX_HELD_BYTES
        ):
            if not queue:
                del self._held[prefix]
            return False
        queue.append((until, routing, frame))
        self._count += 1
        self._bytes += size
        self._stats["held_early"] += 1
        return True

    def release(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The node behind ``prefix`` is a member now: (routing, frame) of what it
        sent before, in arrival order, to be run as if it had just arrived."""
        self._expected.pop(prefix, None)
        queue = self._held.pop(prefix, None)
        if not queue:
            return []
        self._forget(queue)
        self._stats["held_replayed"] += len(queue)
        return [(routing, frame) for _, routing, frame in queue]

    def expire(self, now: float) -> int:
        """Drop what was held for joins that did not complete in time; returns how
        many frames (counted in ``held_expired`` and ``dropped_stale``)."""
        for prefix, until in list(self._expected.items()):
            if until <= now:
                del self._expected[prefix]
        dropped = 0
        for prefix, queue in list(self._held.items()):
            gone: deque[tuple[float, bytes, bytes]] = deque()
            while queue and queue[0][0] <= now:  # in arrival order: their ends only grow
                gone.append(queue.popleft())
            if gone:
                self._forget(gone)
                dropped += len(gone)
            if not queue:
                del self._held[prefix]
        if dropped:
            self._stats["held_expired"] += dropped
            self._stats["dropped_stale"] += dropped
        return dropped

    def _forget(self, frames: deque[tuple[float, bytes, bytes]]) -> None:
        self._count -= len(frames)
        self._bytes -= sum(len(frame) for _, _, frame in frames)

    def __len__(self) -> int:
        return self._count
