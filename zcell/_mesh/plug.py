"""What the mesh needs from the layer above it, as Protocols that layer implements.

The mesh routes frames; running handlers and handing out actor proxies belong to
the actor layer. The node calls up through these two interfaces only, so that no
module of ``_mesh`` imports ``zcell.actors`` at run time: ``zcell/node.py`` plugs
the actor layer (``zcell/actors/layer.py``) into the mesh node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gevent.hub import Hub

if TYPE_CHECKING:
    from ..actors.actor import Actor
    from ..actors.proxy import ActorProxy
    from ..control.registry import ControlRegistry
    from .node import Node

__all__ = ["ActorLayer", "Deliver", "Hosting", "MeshLinks"]


class Deliver(Protocol):
    """``Messaging._deliver``: send, throw or scatter to an actor (``origin``: the
    actor the message is from, as its handlers see it)."""

    def __call__(
        self,
        mode: str,
        ref: ActorProxy,
        method: str,
        kwargs: dict[str, Any],
        options: dict[str, Any],
        origin: ActorProxy | None = None,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class MeshLinks:
    """What the hosting side needs from its node beyond the node's public API
    (the node makes one and hands it to ``ActorLayer.host``)."""

    types: Mapping[str, type[Actor]]  # the types this node hosts (the node's own, live)
    directory_seq: Callable[[], int]  # the sequence number of this node's directory news
    announce: Callable[[str, str, str], None]  # (op "+"/"-", actor id, type name)
    send: Callable[[str, list[Any], float], None]  # (member id, message, deadline)
    deliver: Deliver


class Hosting(Protocol):
    """What a node hands its requests to and asks about its handlers
    (implemented by ``actors/hosting.py:Host``)."""

    @property
    def actors(self) -> Mapping[str, object]:
        """The hosted actors by id."""

    @property
    def in_flight(self) -> int:
        """Handlers running now."""

    @property
    def queue(self) -> Sized:
        """Requests held back by the concurrency bound."""

    def attach(self, hub: Hub) -> None:
        """The node's loop runs: handlers run on this hub."""

    def request(self, msg: list[Any]) -> None:
        """Run an admitted ``REQ``."""

    def scatter(self, msg: list[Any]) -> None:
        """Run an admitted ``SCATTER`` on every hosted actor of its type."""

    def run_admitted(self) -> None:
        """Let the admitted requests run before the inbox reader reads on."""

    def backlogged(self) -> bool:
        """Whether the inbox reader should pause."""

    def wait_for_room(self) -> None:
        """Pause the inbox reader while too much waits."""

    def add_control_ops(self, registry: ControlRegistry) -> None:
        """Add the control operations this layer answers."""

    def snapshot(self) -> list[list[str]]:
        """[actor id, type name] of each hosted actor (directory snapshots)."""

    def forget_binding_target(self, actor_id: str) -> None:
        """An actor elsewhere is gone: drop bindings to it."""

    @staticmethod
    def error_info(exc: BaseException) -> list[Any]:
        """An exception as it travels in an ``ERROR`` reply."""

    def drain(self, timeout: float) -> None:
        """Let in-flight handlers finish (a graceful stop), then fail the rest."""

    def end_workers(self) -> None:
        """End the parked worker greenlets (the loop is about to end)."""


class ActorLayer(Protocol):
    """What a node needs to host actors and hand out proxies
    (implemented by ``actors/layer.py:Actors``)."""

    def host(self, node: Node, links: MeshLinks) -> Hosting:
        """The node's hosting side."""

    def proxy(
        self, node: Node, actor_id: str, type_name: str, node_id: str, cls: object = None
    ) -> ActorProxy:
        """A proxy bound to ``node``; ``cls``: the Actor class, when the caller has it."""

    def proxy_maker(self, node: Node) -> Callable[[str, str, str], ActorProxy]:
        """What the node's decoders make a proxy in a message with:
        ``(actor_id, type_name, node_id)`` -> a proxy bound to ``node``."""

    def resolve(self, spec: object) -> list[type[Actor]]:
        """The Actor classes an ``actors=`` entry names."""

    def type_name(self, cls_or_name: object) -> str:
        """The type name of an Actor class or type-name string."""

    def timeout_of(self, cls: object) -> float:
        """The default reply timeout for calls about ``cls`` (None: any actor)."""

    def address(self, actor: object) -> tuple[str, str, str] | None:
        """(actor id, type name, node id) of a proxy or Actor; None for anything else."""
