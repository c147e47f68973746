"""``app.control``: inspect and steer the mesh's workers, revoke tasks.

A `zcell.monitor.Control` on the app's node whose default destination is the
workers (nodes that consume a queue); ``revoke`` reaches every task agent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..monitor.client import Control as MeshControl
from .routing import QUEUE_ACTOR_PREFIX

if TYPE_CHECKING:
    from ..node import Node
    from .app import App

__all__ = ["Control"]

#: Seconds ``revoke`` waits for the task agents of the mesh to acknowledge.
REVOKE_TIMEOUT = 2.0


class Control(MeshControl):
    """Remote control of the app's workers and tasks (Celery's ``app.control``)."""

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app

    def _node(self) -> Node:
        return self.app._runtime().node

    def _default_targets(self, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The workers: members that consume a queue."""
        return [m for m in members if any(t.startswith(QUEUE_ACTOR_PREFIX) for t in m["types"])]

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
