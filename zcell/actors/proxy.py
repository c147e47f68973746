"""``ActorProxy``: what callers hold, and the four ways to talk to an actor.

A proxy is a value (id, type name, hosting node id) bound to the local node that
made or received it. Each primitive has a string form and a typed form::

    ref.send("log", {"msg": "hi"})     # string form
    ref.send.log(msg="hi")             # typed form
    ref.send.log({"msg": "hi"})        # typed form, cell style

The typed form checks the method and arguments against the local ``state``
class (when this program has it) before anything is sent.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

from ..errors import NoSuchMethod
from .actor import Actor, handler_binding, handler_table

__all__ = ["ActorProxy", "BindTarget", "Mesh", "forward", "stop_forward"]

#: What an outbox binds to: one actor (a proxy, or a hosted Actor), or a type (a class or
#: its name) for ``round-robin`` and ``scatter``.
BindTarget: TypeAlias = "ActorProxy | Actor | type[Actor] | str"

# Options each primitive takes; these names are always options in the typed form.
OPTION_NAMES = ("nowait", "timeout", "limit", "propagate")
_OPTION_SET = frozenset(OPTION_NAMES)
_NO_OPTIONS: dict[str, Any] = {}  # shared: _deliver only reads options
_ALLOWED = {
    "send": frozenset({"nowait", "timeout"}),
    "call": frozenset({"timeout"}),
    "throw": frozenset({"nowait", "timeout"}),
    "scatter": frozenset({"nowait", "timeout", "limit", "propagate"}),
    "emit": frozenset(),
}


class Mesh(Protocol):
    """What a proxy needs from its node (implemented by ``zcell._mesh.node.Node``)."""

    def _deliver(
        self,
        mode: str,
        ref: ActorProxy,
        method: str,
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Any: ...

    def _binding(
        self,
        op: str,
        source: ActorProxy,
        target: BindTarget,
        kind: str,
        timeout: float | None = None,
    ) -> None: ...

    def _class_for(self, type_name: str) -> type[Actor] | None: ...

    def _node_label(self, node_id: str) -> str: ...


class ActorProxy:
    """A reference to an actor somewhere in the mesh. Compares equal by id.

    Made by ``Node.spawn``, ``select``, ``lookup`` and ``actors``; it travels in
    messages as a proxy. Each primitive has a string form, ``ref.send("log",
    {"msg": "hi"})``, and a typed form, ``ref.send.log(msg="hi")`` (or
    ``ref.send.log({"msg": "hi"})``, cell style), checked against the local
    ``state`` class when this program has it. The options below go with either
    form as keyword arguments. Methods of the outer Actor class that are not
    primitives are client-side helpers, reachable as attributes of the proxy.

    Attributes:
        id: The actor's id.
        name: The actor's type name.
        node_id: The id of the node hosting it.
    """

    __slots__ = ("id", "name", "node_id", "_node", "_cls", "_client")

    def __init__(
        self, node: Mesh, actor_id: str, name: str, node_id: str, cls: type[Actor] | None = None
    ) -> None:
        self.id = actor_id
        self.name = name
        self.node_id = node_id
        self._node = node
        self._cls = cls if cls is not None else node._class_for(name)
        self._client: Actor | None = None

    def _zcell_ref(self) -> tuple[str, str, str]:
        return (self.id, self.name, self.node_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorProxy) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<ActorProxy {self.name} {self.id} on {self._node._node_label(self.node_id)}>"

    @property
    def send(self) -> _Primitive:
        """Deliver to this actor and return the handler's value.

        Options: ``nowait=True`` returns ``None`` at once (fire and forget);
        ``timeout`` bounds the wait (default ``Actor.default_timeout``), after
        which ``CallTimeout`` is raised. A handler's exception is raised here as
        ``RemoteError``.
        """
        return _Primitive(self, "send")

    @property
    def call(self) -> _Primitive:
        """Deliver to this actor and return an ``AsyncResult`` at once.

        Options: ``timeout`` bounds the result's wait (``CallTimeout``).
        """
        return _Primitive(self, "call")

    @property
    def throw(self) -> _Primitive:
        """Deliver to one actor of this type, round-robin over the mesh.

        Returns the handler's value; an actor that declines (raises ``Next``)
        passes the message on to another. Options as for ``send``.
        """
        return _Primitive(self, "throw")

    @property
    def scatter(self) -> _Primitive:
        """Deliver to every actor of this type; iterate over the replies.

        Replies come in arrival order; actors that decline (``Next``) give none.
        The iteration ends when every actor known at send time has answered or
        declined, at ``limit`` replies, or at ``timeout`` (without raising).
        ``propagate=False`` yields a handler's error instead of raising it;
        ``nowait=True`` returns ``None``.
        """
        return _Primitive(self, "scatter")

    def emit(self, method: str, kwargs: dict[str, Any] | None = None) -> None:
        """Put a message in this actor's outbox (delivered to its bindings, or itself)."""
        self._node._deliver("emit", self, method, _kwargs(kwargs), {})

    def add_binding(
        self, target: BindTarget, kind: str = "direct", timeout: float | None = None
    ) -> None:
        """Bind this actor's outbox to ``target`` (``direct``, ``round-robin``, ``scatter``).

        ``timeout``: bound on the wait for the actor's node (default
        ``Actor.default_timeout``); past it, ``CallTimeout``.
        """
        if kind not in ("direct", "round-robin", "scatter"):
            raise ValueError(f"binding kind must be direct, round-robin or scatter, not {kind!r}")
        self._node._binding("bind", self, target, kind, timeout)

    def remove_binding(self, target: BindTarget, timeout: float | None = None) -> None:
        """Remove every binding of this actor's outbox to ``target`` (``timeout``: as
        for ``add_binding``)."""
        self._node._binding("unbind", self, target, "", timeout)

    def __getattr__(self, attr: str) -> Any:
        # Client-side helpers defined on the outer Actor class.
        cls = self._cls
        if attr.startswith("_") or cls is None or not hasattr(cls, attr):
            raise AttributeError(f"{type(self).__name__} of {self.name} has no attribute {attr!r}")
        if self._client is None:
            self._client = cls(self)
        return getattr(self._client, attr)


def _kwargs(kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"kwargs must be a dict of keyword arguments, not {type(kwargs).__name__}")
    return kwargs


class _Primitive:
    """``ref.send`` and friends: callable (string form) and attribute (typed form)."""

    __slots__ = ("_ref", "_mode")

    def __init__(self, ref: ActorProxy, mode: str) -> None:
        self._ref = ref
        self._mode = mode

    def __call__(self, method: str, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        if not isinstance(method, str):
            raise TypeError(f"method must be a string, not {type(method).__name__}")
        _check_options(self._mode, options)
        return self._ref._node._deliver(self._mode, self._ref, method, _kwargs(kwargs), options)

    def __getattr__(self, method: str) -> _Typed:
        cls = self._ref._cls
        if method.startswith("__"):  # Python's own protocols (copy, pickle...)
            raise AttributeError(method)
        if method.startswith("_"):
            # The same class as the string form's answer for a name never dispatched.
            raise NoSuchMethod(f"{method!r} is private: handlers are public methods")
        if cls is not None:
            _check_name(cls, method)
        return _Typed(self, method)


def _check_name(cls: type[Actor], method: str) -> None:
    if method not in handler_table(cls.state) and not hasattr(cls.state, "default_receive"):
        raise NoSuchMethod(
            f"{cls.name} has no handler {method!r}; its handlers are "
            f"{sorted(handler_table(cls.state))}"
        )


def _check_options(mode: str, options: dict[str, Any]) -> None:
    extra = options.keys() - _ALLOWED[mode]
    if extra:
        raise TypeError(f"{mode}() got unexpected option(s) {sorted(extra)}")


class _Typed:
    __slots__ = ("_prim", "_method", "_binding")

    def __init__(self, prim: _Primitive, method: str) -> None:
        self._prim = prim
        self._method = method
        cls = prim._ref._cls
        # The handler's argument check, looked up once (the proxy's class is fixed).
        self._binding = handler_binding(cls.state, method) if cls is not None else None

    def __call__(self, *args: Any, **kw: Any) -> Any:
        prim = self._prim
        if kw and not _OPTION_SET.isdisjoint(kw):
            options = {}
            for name in OPTION_NAMES:
                if name in kw:
                    options[name] = kw.pop(name)
            if not options.keys() <= _ALLOWED[prim._mode]:
                _check_options(prim._mode, options)
        else:
            options = _NO_OPTIONS
        if args:
            if len(args) != 1 or not isinstance(args[0], dict) or kw:
                raise TypeError(
                    f"{self._method}() takes keyword arguments, or one dict of them (cell style)"
                )
            kwargs = args[0]
        else:
            kwargs = kw
        if self._binding is not None:
            self._binding.check(kwargs)
        ref = prim._ref
        return ref._node._deliver(prim._mode, ref, self._method, kwargs, options)


class _Binder:
    """``a | forward | b`` and ``a | stop_forward | b``."""

    def __init__(self, op: str, source: ActorProxy | None = None) -> None:
        self._op = op
        self._source = source

    def __ror__(self, source: object) -> _Binder:
        ref = source.ref if isinstance(source, Actor) else source
        if not isinstance(ref, ActorProxy):
            raise TypeError(f"the left side of | {self._op} | must be an actor proxy")
        return _Binder(self._op, ref)

    def __or__(self, target: BindTarget) -> BindTarget:
        if self._source is None:
            raise TypeError(f"use it as: source | {self._op} | target")
        if self._op == "forward":
            self._source.add_binding(target)
        else:
            self._source.remove_binding(target)
        return target


forward = _Binder("forward")
"""``a | forward | b`` binds ``a``'s outbox to ``b``: ``a.add_binding(b)``."""
stop_forward = _Binder("stop_forward")
"""``a | stop_forward | b`` removes that binding: ``a.remove_binding(b)``."""
