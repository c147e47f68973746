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


class Expiring:
    """Entries by key, each kept ``ttl`` seconds, at most ``max_count`` of them.

    Args:
        ttl: Seconds an entry is kept (read at each ``put``: settings may change).
        max_count: Most entries kept (read at each ``put``).
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

    def put(self, key: str, value: Any, expires: float | None = None) -> None:
        """Keep ``value`` under ``key`` (until ``expires``, default now + ttl)."""
        if expires is None:
            expires = self._clock() + float(self._ttl())
        self._items.pop(key, None)
        self._items[key] = (expires, value)
        self.prune()

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
        return isinstance(key, str) and self.get(key) is not None

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
        """Drop the expired entries, then the oldest beyond ``max_count``."""
        now = self._clock()
        items = self._items
        # Insertion order is roughly expiry order: stop at the first live one.
        while items:
            key, (expires, _) = next(iter(items.items()))
            if expires > now:
                break
            del items[key]
        limit = max(0, int(self._max()))
        while len(items) > limit:
            items.popitem(last=False)
