"""``app.control``: acting on tasks across the mesh (here: ``revoke``)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App

__all__ = ["Control"]

#: Seconds ``revoke`` waits for the task agents of the mesh to acknowledge.
REVOKE_TIMEOUT = 2.0


class Control:
    """Remote control of the app's tasks (Celery's ``app.control``)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def revoke(self, task_id: str | Iterable[str], terminate: bool = False, **_: object) -> None:
        """Revoke tasks: every node remembers it for ``result_expires`` (nodes that
        join later learn it too); a revoked task never starts; ``terminate=True``
        kills it where it runs (its state becomes REVOKED)."""
        ids = [task_id] if isinstance(task_id, str) else [str(t) for t in task_id]
        runtime = self.app._runtime()
        assert runtime.agent is not None
        expires = time.time() + float(self.app.conf.result_expires)
        replies = runtime.agent.scatter(
            "revoke",
            {"ids": ids, "terminate": terminate, "expires": expires},
            timeout=REVOKE_TIMEOUT,
            propagate=False,
        )
        for _reply in replies:  # until every agent the mesh knows has it
            pass
