"""``GroupResult``: the results of a group's members, in the members' order.

Each member's result is a ``TaskResult`` (or a nested ``GroupResult``) that
waits on its own outcome without polling; this class only gathers them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import TaskTimeout

if TYPE_CHECKING:
    from .app import App
    from .result import TaskResult

__all__ = ["GroupResult"]


class GroupResult:
    """The results of a group (Celery's ``GroupResult``).

    Attributes:
        id: The group's id (also the root id of its tasks when it was applied
            outside a task: revoking it stops what has not started).
        results: The members' results, in order.
        parent: The result before it in a chain, when there is one.
    """

    def __init__(
        self, group_id: str, results: list[TaskResult | GroupResult], app: App | None = None
    ) -> None:
        self.id = group_id
        self.results = results
        self.app = app
        self.parent: TaskResult | GroupResult | None = None

    @property
    def children(self) -> list[TaskResult | GroupResult]:
        return self.results

    def get(self, timeout: float | None = None, propagate: bool = True, **_: Any) -> list[Any]:
        """Wait for every member; their values in the members' order.

        Args:
            timeout: Seconds to wait for all of them (None: until they are in).
            propagate: Raise the first failed member's exception (in order).

        Raises:
            TaskTimeout: Not all were in within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(result.get(timeout=left, propagate=propagate))
            except TaskTimeout as exc:
                raise TaskTimeout(
                    f"group {self.id}: {self.completed_count()} of {len(self)} done "
                    f"within {timeout}s: get() again, or give a larger timeout="
                ) from exc
        return values

    join = get
    wait = get

    def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(1 for r in self.results if r.successful())

    def ready(self) -> bool:
        """True once every member's outcome is in."""
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        """True once every member succeeded."""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """True when any member failed."""
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        """True while some member has no outcome yet."""
        return not self.ready()

    def revoke(self, terminate: bool = False) -> None:
        """Revoke every member (one message for all of them)."""
        if self.app is None or not self.results:
            return
        self.app.control.revoke([t.id for t in self._leaves()], terminate=terminate)

    def _leaves(self) -> list[TaskResult]:
        out: list[TaskResult] = []
        for r in self.results:
            out.extend(r._leaves() if isinstance(r, GroupResult) else [r])
        return out

    def __iter__(self) -> Iterator[TaskResult | GroupResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> TaskResult | GroupResult:
        return self.results[index]

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"
