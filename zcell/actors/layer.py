"""The actor layer as the mesh sees it: ``Actors`` implements
``_mesh/plug.py:ActorLayer`` (a node's ``Host``, proxies, Actor classes and type
names), so that the mesh calls up without importing this package.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import did_you_mean
from .actor import Actor, module_actor_classes, type_name_of
from .hosting import Host
from .proxy import ActorProxy

if TYPE_CHECKING:
    from .._mesh.node import Node
    from .._mesh.plug import MeshLinks

__all__ = ["ACTORS", "Actors"]


class Actors:
    """Hosting, proxies and Actor classes for a mesh node (stateless: one serves all)."""

    def host(self, node: Node, links: MeshLinks) -> Host:
        return Host(node, links)

    def proxy(
        self, node: Node, actor_id: str, type_name: str, node_id: str, cls: object = None
    ) -> ActorProxy:
        actor_cls = cls if isinstance(cls, type) and issubclass(cls, Actor) else None
        return ActorProxy(node, actor_id, type_name, node_id, actor_cls)

    def proxy_maker(self, node: Node) -> Callable[[str, str, str], ActorProxy]:
        # A proxy in a message (every request an actor sends carries its own):
        # made without a call of ours in between.
        return functools.partial(ActorProxy, node)

    def resolve(self, spec: object) -> list[type[Actor]]:
        """An Actor class, ``"module"`` (every Actor subclass defined there) or
        ``"module:Class"``."""
        if isinstance(spec, type) and issubclass(spec, Actor):
            type_name_of(spec)
            return [spec]
        if not isinstance(spec, str):
            raise TypeError(f"actors= takes Actor classes or module names, not {spec!r}")
        module_name, _, attr = spec.partition(":")
        importlib.import_module(module_name)
        if not attr:
            classes = module_actor_classes(module_name)
            if not classes:
                raise TypeError(f"module {module_name!r} defines no Actor subclasses")
            return classes
        cls = getattr(sys.modules[module_name], attr, None)
        if cls is None:
            names = [c.__qualname__ for c in module_actor_classes(module_name)]
            raise ValueError(f"module {module_name!r} has no {attr}{did_you_mean(attr, names)}")
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise TypeError(f"{spec!r} is not an Actor class")
        return [cls]

    def type_name(self, cls_or_name: object) -> str:
        return type_name_of(cls_or_name)

    def timeout_of(self, cls: object) -> float:
        timeout: float = getattr(cls, "default_timeout", Actor.default_timeout)
        return timeout

    def address(self, actor: object) -> tuple[str, str, str] | None:
        if isinstance(actor, Actor):
            actor = actor.ref
        if isinstance(actor, ActorProxy):
            return actor.id, actor.name, actor.node_id
        return None


#: The one actor layer every ``zcell.Node`` plugs in.
ACTORS = Actors()
