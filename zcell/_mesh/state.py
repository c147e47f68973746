"""What the node owns and its collaborators share: its sockets and its lifecycle.

The node (``node.py``) is the one owner of both: it fills ``Sockets`` when it
starts and moves ``Lifecycle`` through new, starting, running, stopping,
stopped (or forked). ``Membership`` and ``Messaging`` get a typed reference
to each instead of reading the node's attributes, so that each can be built
alone (a test gives them a ``Sockets`` of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zmq

    from .._transport.heartbeat import HeartbeatThread
    from .._transport.sockets import Context, Socket

__all__ = ["Lifecycle", "Sockets"]


@dataclass(slots=True)
class Lifecycle:
    """Where the node is in its life (read on every send: one attribute)."""

    state: str = "new"  # new, starting, running, stopping, stopped, forked
    started_at: float = 0.0  # wall clock of start(): of two nodes with one name, the older stays


@dataclass(slots=True)
class Sockets:
    """The node's own sockets, None until it starts (``Node._start_in_loop``)."""

    ctx: Context | None = None
    inbox: Socket | None = None  # the ROUTER: requests, control calls, replies
    pub: Socket | None = None  # the XPUB: scatters, directory and membership news
    hb: HeartbeatThread | None = None  # owns the heartbeat PUB
    # A plain zmq PUB (inproc) telling program threads' ports of nodes down and stops.
    notify: zmq.Socket[bytes] | None = None
