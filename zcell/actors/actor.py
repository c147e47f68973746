"""Actors: the outer ``Actor`` class, its inner ``state``, and handler dispatch.

The outer class is what callers hold (through a proxy) and may carry client-side
helpers; the inner ``state`` class runs on the hosting node, and its public
methods are the message handlers. No sockets here: sending goes through the
proxy, which goes through the node.
"""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from .._mesh.context import DEFAULT_TIMEOUT, MessageContext, current_context
from ..errors import NoSuchMethod

if TYPE_CHECKING:
    from .._mesh.node import Node
    from .proxy import ActorProxy, BindTarget, Mesh, _Primitive

__all__ = ["Actor", "Next", "MessageContext", "current_context", "handler_table", "type_name_of"]

# Hooks and inherited names are never dispatched as messages.
HOOKS = frozenset({"on_start", "on_agent_ready", "on_stop", "default_receive"})


class Next(Exception):  # noqa: N818 - the name comes from cell
    """Raise in a handler to decline the message.

    In a ``scatter`` the actor gives no reply; in a ``throw`` the message moves
    on to another actor of the type that has not seen it; in a ``send`` the caller
    gets ``NoSuchActor``.
    """


class _State:
    """Base of ``Actor.state``. Public methods of subclasses are message handlers.

    Set before ``__init__`` runs: ``self.actor`` (the hosted :class:`Actor`),
    ``self.node`` (the hosting node) and ``self.agent`` (alias of ``node``).
    """

    actor: Actor
    node: Node
    agent: Node

    def on_start(self) -> None:
        """Called once the actor is reachable."""

    def on_stop(self) -> None:
        """Called when the actor is killed or its node stops."""


_STATE_BASE_NAMES = frozenset(dir(_State))


class Actor:
    """An actor type. Subclass it and define an inner ``state`` class.

    On the hosting node an ``Actor`` instance is the hosted actor (``self.actor``
    inside handlers); in a caller it wraps a proxy so that client-side helpers
    defined on the outer class can use ``self.send`` and friends.

    Attributes:
        state: The inner class that runs on the hosting node. Its public methods are
            the handlers; ``on_start()``, ``on_stop()`` and ``default_receive(method,
            kwargs)`` are hooks. ``self.actor``, ``self.node`` and ``self.agent`` are
            set before its ``__init__`` runs.
        name: The type name nodes agree on; actors of one name form the group of
            ``throw`` and ``scatter``. Default ``"<module>.<qualname>"``; classes
            defined in ``__main__`` must set it.
        default_timeout: The default bound, in seconds, on every wait for a reply.
        id: The actor's id.
        ref: The actor's ``ActorProxy``.
    """

    state: TypeAlias = _State
    #: The type name; actors with the same name form the group of throw/scatter.
    name: ClassVar[str] = "zcell.actor.Actor"
    #: The default bound, in seconds, on every wait for a reply.
    default_timeout: ClassVar[float] = DEFAULT_TIMEOUT

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = f"{cls.__module__}.{cls.__qualname__}"
            cls._implicit_name = True
        else:
            cls._implicit_name = False

    _implicit_name: ClassVar[bool] = False

    def __init__(self, ref: ActorProxy, node: Mesh | None = None) -> None:
        self.ref = ref
        self.id = ref.id
        self.node: Mesh = node if node is not None else ref._node
        self.agent = self.node

    # The primitives, addressed to this actor (send/call/emit) or its type.
    @property
    def send(self) -> _Primitive:
        """``ActorProxy.send``, addressed to this actor."""
        return self.ref.send

    @property
    def call(self) -> _Primitive:
        """``ActorProxy.call``, addressed to this actor."""
        return self.ref.call

    @property
    def throw(self) -> _Primitive:
        """``ActorProxy.throw``, addressed to this actor's type."""
        return self.ref.throw

    @property
    def scatter(self) -> _Primitive:
        """``ActorProxy.scatter``, addressed to this actor's type."""
        return self.ref.scatter

    def emit(self, method: str, kwargs: dict[str, Any] | None = None) -> None:
        """Put a message in this actor's outbox (delivered to its bindings, or itself)."""
        self.ref.emit(method, kwargs)

    def add_binding(
        self, target: BindTarget, kind: str = "direct", timeout: float | None = None
    ) -> None:
        """Bind this actor's outbox to ``target`` (see ``ActorProxy.add_binding``)."""
        self.ref.add_binding(target, kind, timeout)

    def remove_binding(self, target: BindTarget, timeout: float | None = None) -> None:
        """Remove the bindings of this actor's outbox to ``target``."""
        self.ref.remove_binding(target, timeout)

    @property
    def origin(self) -> ActorProxy | None:
        """Inside a handler: the proxy of the actor whose message this is, else None."""
        ctx = current_context()
        if ctx is None or ctx.actor is not self:
            return None
        return ctx.origin

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.id}>"


def type_name_of(cls_or_name: Any) -> str:
    """The type name for an Actor class or a type-name string.

    Raises:
        TypeError: for a class defined in ``__main__`` without an explicit
            ``name`` (``__main__.X`` would never match a node's ``module.X``),
            or for anything that is neither an Actor class nor a string.
    """
    if isinstance(cls_or_name, str):
        if not cls_or_name:
            raise TypeError("an actor type name cannot be empty")
        return cls_or_name
    if isinstance(cls_or_name, type) and issubclass(cls_or_name, Actor):
        if cls_or_name._implicit_name and cls_or_name.__module__ == "__main__":
            raise TypeError(
                f"{cls_or_name.__qualname__} is defined in __main__: give it an explicit "
                f'type name (name = "myapp.{cls_or_name.__qualname__}") so that nodes '
                "running the same code agree on it"
            )
        return cls_or_name.name
    raise TypeError(f"expected an Actor subclass or a type-name string, got {cls_or_name!r}")


_tables: dict[type, dict[str, str]] = {}


def handler_table(state_cls: type) -> dict[str, str]:
    """Names of the message handlers of a state class (public, not hooks, not inherited
    from ``Actor.state`` or ``object``)."""
    table = _tables.get(state_cls)
    if table is not None:
        return table
    table = {}
    for klass in state_cls.__mro__:
        if klass in (_State, object):
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in HOOKS or attr in _STATE_BASE_NAMES:
                continue
            if callable(value) and not isinstance(value, type):
                table.setdefault(attr, attr)
    _tables[state_cls] = table
    return table


class _Binding:
    """What a handler accepts, precomputed so the common case costs two set checks."""

    __slots__ = ("where", "sig", "names", "required", "simple")

    def __init__(self, state_cls: type, method: str, fn: Any) -> None:
        self.where = f"{state_cls.__qualname__}.{method}"
        self.sig = inspect.signature(fn)
        params = list(self.sig.parameters.values())[1:]  # drop self
        kinds = {p.kind for p in params}
        # Only keyword-bindable parameters, no *args/**kwargs: checkable by sets.
        self.simple = kinds <= {
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        }
        self.names = frozenset(p.name for p in params)
        self.required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)

    def check(self, kwargs: dict[str, Any]) -> None:
        """Raise TypeError unless ``kwargs`` bind to the handler's signature."""
        if self.simple:
            keys = kwargs.keys()
            if keys <= self.names and self.required <= keys:
                return
        try:
            self.sig.bind(None, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.where}{self.sig}: {exc}") from None


_bindings: dict[tuple[type, str], _Binding | None] = {}


def handler_binding(state_cls: type, method: str) -> _Binding | None:
    """The argument check of handler ``method``; None when ``default_receive`` takes it.

    Raises:
        NoSuchMethod: the state class has no public handler of that name (an
            ``AttributeError``, as the string form's answer).
    """
    key = (state_cls, method)
    try:
        return _bindings[key]
    except KeyError:
        pass
    if method not in handler_table(state_cls) and not hasattr(state_cls, "default_receive"):
        raise NoSuchMethod(
            f"{state_cls.__qualname__} has no handler {method!r}; handlers are its public "
            f"methods: {sorted(handler_table(state_cls))}"
        )
    fn = getattr(state_cls, method, None)
    binding = _bindings[key] = _Binding(state_cls, method, fn) if fn is not None else None
    return binding


def new_state(state_cls: type, actor: Actor, node: Node, kwargs: dict[str, Any]) -> Any:
    """Create a state instance with ``actor``/``node``/``agent`` set before ``__init__``."""
    state: Any = object.__new__(state_cls)
    state.actor = actor
    state.node = node
    state.agent = node
    state.__init__(**kwargs)
    return state


def module_actor_classes(module_name: str) -> list[type[Actor]]:
    """Actor subclasses defined in (not imported into) an imported module."""
    module = sys.modules[module_name]
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Actor)
        and obj is not Actor
        and obj.__module__ == module_name
    ]
