"""Control operations: named, documented functions a node answers for its peers.

Each node owns a `ControlRegistry` (``node.control``); the actor layer adds spawn,
kill, bind, unbind and snapshot to it, and later layers (tasks, the CLI) add theirs.
"""

from .registry import ControlOp, ControlRegistry

__all__ = ["ControlOp", "ControlRegistry"]
