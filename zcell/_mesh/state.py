"""What the node owns and its collaborators share (``Shared``), among it its
sockets and its lifecycle.

The node (``node.py``) is the one owner of each: it fills ``Sockets`` when it
starts and moves ``Lifecycle`` through new, starting, running, stopping,
stopped (or forked). ``Membership`` and ``Messaging`` get a typed reference
to each instead of reading the node's attributes, so that each can be built
alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zmq

    from .._transport.heartbeat import HeartbeatThread
    from .._transport.loop import LoopThread
    from .._transport.sockets import Context, Socket
    from .._wire import Codec
    from .directory import Directory, Roster
    from .result import PendingCalls

__all__ = ["Lifecycle", "Shared", "Sockets"]


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


@dataclass(frozen=True, slots=True)
class Shared:
    """The node's identity and the state its collaborators share, each part
    with one owner: the node (counters, sockets, lifecycle, loop, codec,
    directory), ``Roster`` (members), ``PendingCalls`` (calls awaited)."""

    node_id: str
    boot: str
    name: str
    roster: Roster
    pending: PendingCalls
    stats: dict[str, int]  # the node's counters (statistics())
    sockets: Sockets
    life: Lifecycle
    loop: LoopThread
    codec: Codec  # the loop thread's
    directory: Directory
