"""A bounded store of entries that expire: finished tasks' records, revoked ids.

Both must outlive the moment (``result_expires`` seconds) yet never grow without
bound: past ``max_count`` the oldest entry goes first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Expiring"]


#: Seconds between two readings of the settings (``ttl``, ``max_count``), which
#: are also the moments expired entries are dropped: reading them at every ``put``
#: took a tenth of a worker's time per task.
REREAD = 1.0


class Expiring:
    """Entries by key, each kept ``ttl`` seconds, at most ``max_count`` of them.

    Args:
        ttl: Seconds an entry is kept (read again every ``REREAD`` seconds:
            settings may change).
        max_count: Most entries kept (read as often).
        clock: The time source (POSIX seconds).
    """

    def __init__(
        self,
        ttl: Callable[[], float],
        max_count: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl
        self._max = max_count
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._ttl_now = 0.0
        self._max_now = 0
        self._reread_at = float("-inf")  # when to read the settings (and prune) next

    def put(self, key: str, value: Any, expires: float | None = None) -> None:
        """Keep ``value`` under ``key`` (until ``expires``, default now + ttl)."""
        now = self._clock()
        if now >= self._reread_at:
            self.prune()
        if expires is None:
            expires = now + self._ttl_now
        items = self._items
        items.pop(key, None)
        items[key] = (expires, value)
        if len(items) > self._max_now:
            items.popitem(last=False)

    def get(self, key: str) -> Any:
        """The value under ``key``, or None (also when it expired)."""
        entry = self._items.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._items[key]
            return None
        return entry[1]

    def __contains__(self, key: object) -> bool:
        # Nothing kept (revoked ids, mostly): no look-up; a worker asks per task.
        return bool(self._items) and isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, float, Any]]:
        """(key, expiry, value) of the live entries, oldest first."""
        self.prune()
        return [(k, e, v) for k, (e, v) in self._items.items()]

    def update(self, entries: Iterable[tuple[str, float, Any]]) -> None:
        """Keep entries given as ``items()`` gives them (another node's, say)."""
        now = self._clock()
        for key, expires, value in entries:
            if expires > now and key not in self._items:
                self._items[key] = (expires, value)
        self.prune()

    def prune(self) -> None:
        """Read the settings; drop the expired entries, then the oldest beyond
        ``max_count``."""
        now = self._clock()
        self._ttl_now = float(self._ttl())
        self._max_now = max(0, int(self._max()))
        self._reread_at = now + REREAD
        items = self._items
        # Insertion order is roughly expiry order: stop at the first live one.
        while items:
            key, (expires, _) = next(iter(items.items()))
            if expires > now:
                break
            del items[key]
        while len(items) > self._max_now:
            items.popitem(last=False)
