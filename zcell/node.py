"""``zcell.Node``: the mesh node with the actor layer plugged in.

The mesh (``_mesh/node.py``) routes frames and calls up only through
``_mesh/plug.py:ActorLayer``; this is the one place above both layers that
wires them together, so that ``Node(...)`` hosts actors and hands out proxies.
"""

from __future__ import annotations

from ._mesh import node as _mesh_node
from .actors.layer import ACTORS
from .monitor.service import Monitor

__all__ = ["Node"]


class Node(_mesh_node.Node):
    """A seat in the mesh: binds sockets, discovers peers, hosts actors, sends.

    Args:
        name: Unique name in the mesh; default ``<hostname>-<pid>`` (``-2``, ``-3``
            for further nodes in the same process).
        cluster: Meshes with different cluster names never mix.
        host: Address to bind; ``127.0.0.1`` (default) is a mesh on this machine.
        port: Inbox port (0: random). The PUB sockets always use random ports.
        peers: Inbox endpoints (``tcp://host:port``) of nodes to join.
        discovery: ``"mdns"`` (zeroconf) or ``"static"`` (no multicast at all).
        actors: Actor classes, ``"module"`` or ``"module:Class"`` names this node
            may host.
        secret: Cluster secret (default: ``ZCELL_SECRET``): every socket uses CURVE
            with keys derived from it, and only holders of the same secret become
            members (see docs/security.md).
        heartbeat: Seconds between heartbeats; a peer silent for ~3 is down.
        concurrency: Most handlers running at once on this node.
        max_message_size: Largest message, in bytes, sent or accepted.
    """

    actor_layer = ACTORS

    def _compose(self) -> None:
        super()._compose()
        #: Inspect, control and events (docs/monitoring.md): its operations are
        #: on ``self.control``; ``self.monitor.events`` publishes events.
        self.monitor = Monitor(self)
