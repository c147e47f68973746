"""The zcell exception tree.

Every error zcell raises derives from :class:`ZcellError`. Classes that have an
obvious built-in meaning also derive from it (``NoSuchActor`` is a ``KeyError``,
``CallTimeout`` a ``TimeoutError``...), so ordinary ``except`` clauses work.

A handler's exception travels back to the caller as a :class:`RemoteError`. The
object raised is also an instance of the remote type's nearest built-in exception
ancestor, so ``except KeyError:`` catches a remote ``KeyError`` (see
:func:`remote_error`).
"""

from __future__ import annotations

import builtins
import difflib
import traceback as _traceback
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = [
    "ZcellError",
    "RemoteError",
    "NoSuchMethod",
    "CallTimeout",
    "NoReplyError",
    "NodeDown",
    "NoSuchActor",
    "ActorStopped",
    "NoNodeForType",
    "ProtocolError",
    "SerializationError",
    "NodeStopped",
    "NameTaken",
    "IncompatibleProtocol",
    "remote_error",
    "mirrored",
    "builtin_ancestor",
]


class ZcellError(Exception):
    """Root of every error zcell raises. Catch it to handle any zcell failure."""


class RemoteError(ZcellError):
    """A remote handler raised.

    Raised by ``send``/``throw``/``AsyncResult.get()`` and by a ``scatter``
    iterator when the handler on the hosting node raised. The actor keeps running
    and the message is not retried. Inspect the attributes below, fix the handler
    or the arguments, and call again if the operation is safe to repeat.

    Attributes:
        type_name: The original exception's qualified type name, however many
            handlers relayed it (a handler that lets a nested call's error escape).
        remote_message: The original exception's ``str()``.
        remote_tracebacks: One formatted traceback per hop, where it was raised first.
        remote_traceback: All of them as one string.
    """

    type_name: str = ""
    remote_message: str = ""
    remote_traceback: str = ""
    remote_tracebacks: list[str]
    remote_ancestor: str = ""  # the original type's nearest built-in ancestor

    def __init__(
        self, type_name: str = "", message: str = "", traceback: str | list[str] = ""
    ) -> None:
        Exception.__init__(self, f"{type_name}: {message}" if type_name else message)
        self.type_name = type_name
        self.remote_message = message
        tracebacks = [traceback] if isinstance(traceback, str) else list(traceback)
        self.remote_tracebacks = [tb for tb in tracebacks if tb]
        self.remote_traceback = _HOP_SEPARATOR.join(self.remote_tracebacks)
        if isinstance(self, SyntaxError):
            # traceback formats SyntaxErrors from .msg, not str().
            self.msg = str(self)

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self) -> Any:
        return (
            remote_error,
            (self.type_name, self.remote_message, self.remote_tracebacks, self.remote_ancestor),
        )


class NoSuchMethod(ZcellError, AttributeError):
    """The actor's ``state`` has no public handler of that name.

    Raised to the caller of the string form (``ref.send("nope", {})``) when the
    hosting node finds no such handler and the state has no ``default_receive``.
    Check the method name against the actor's ``state`` class.
    """


class CallTimeout(ZcellError, TimeoutError):
    """No reply arrived before the call's deadline.

    The handler may still run, or have run. Raise ``timeout=`` (or the actor's
    ``default_timeout``) if the handler is slow, or check that the hosting node is
    not overloaded (``node.statistics()``).
    """


NoReplyError = CallTimeout


class NodeDown(ZcellError, ConnectionError):
    """The node hosting the target went down while the call was in flight.

    The outcome is unknown: the handler may or may not have run. Retry only if the
    operation is idempotent; ``node.nodes()`` shows who is still in the mesh.
    """


class NoSuchActor(ZcellError, KeyError):
    """No actor with that id (or of that type) is known to the mesh.

    Raised by ``select``, ``lookup`` and ``kill`` for unknown actors, by ``send``
    to an actor that is gone, and by ``throw``/``send`` when every actor declined
    the message with ``Next``. Spawn one (``node.spawn``) or wait for one
    (``node.wait_for(type=...)``).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such actor"


class ActorStopped(ZcellError):
    """The actor was killed, or its node stopped, before the call completed.

    Calls still waiting on it fail with this error. Spawn a new actor if you still
    need one.
    """


class NoNodeForType(ZcellError):
    """No node in the mesh can host this actor type.

    A node hosts only the types registered on it (``Node(actors=[...])`` or
    ``zcell node -A module``) or types the local program spawns itself. The
    message lists the nodes that exist and how to start one that hosts the type.
    """


class ProtocolError(ZcellError):
    """Bytes from the wire that are not a valid zcell message.

    Nodes count and drop such input (``statistics()["dropped_bad_frames"]``); it is
    never raised into a handler. You see it only when decoding by hand.
    """


class SerializationError(ZcellError, TypeError):
    """A value cannot travel: msgpack cannot carry it, or the message is too big.

    Raised at the caller before anything is sent. Pass plain data (None, bool, int,
    float, str, bytes, list, dict, actor proxies), or raise
    ``Node(max_message_size=...)``.
    """


class NodeStopped(ZcellError):
    """The node was stopped (or never started); it cannot send or host anything.

    Start a new ``Node`` (a stopped node cannot be restarted).
    """


class NameTaken(NodeStopped):
    """A member of the mesh refused this node: its name is used by another node.

    Names are unique in a mesh. Raised by ``Node.start()`` when the refusal came
    while starting; a refusal that comes later stops the node, which logs it and
    keeps it in ``node.failure`` (``zcell node`` exits 1). Give one of the nodes
    another name (``--name`` / ``Node(name=...)``), or stop the other one first.
    """


class IncompatibleProtocol(NodeStopped):
    """A node of the mesh speaks another major version of the zcell protocol.

    Nodes of one major version mesh whatever their minor versions; nodes of two
    majors cannot read each other's frames. The node knocked on refuses the
    joiner, naming both versions. Raised by ``Node.start()`` when the refusal came
    while starting; one that comes later stops the node, which keeps it in
    ``node.failure`` (``zcell node`` exits 1). Run one major version of zcell on
    every node of a cluster (``zcell --version`` shows it).
    """


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean a.b.Echo?"`` for the choices closest to ``word``, else ``""``.

    A bare class name also matches the dotted names that end with a close one
    (``Greeter`` -> ``examples.hello.Greeter``): users type what they see last.
    """
    known = sorted(set(choices))
    close = difflib.get_close_matches(word, known, n=3)
    if not close:
        tails = {c.rsplit(".", 1)[-1]: c for c in known}
        close = [tails[t] for t in difflib.get_close_matches(word.rsplit(".", 1)[-1], tails, n=3)]
    return f"; did you mean {' or '.join(close)}?" if close else ""


# -- remote exceptions -------------------------------------------------------

# Never mirrored: they have control-flow meaning in the caller's process.
_E = TypeVar("_E", bound="ZcellError")

_NOT_MIRRORED = frozenset(
    {"StopIteration", "StopAsyncIteration", "GeneratorExit", "SystemExit", "KeyboardInterrupt"}
)
_mirror_cache: dict[str, type[RemoteError]] = {}


def builtin_ancestor(exc_type: type[BaseException]) -> str:
    """Return the name of the nearest built-in exception class in ``exc_type``'s MRO."""
    for klass in exc_type.__mro__:
        if klass.__module__ == "builtins" and issubclass(klass, BaseException):
            return klass.__name__
    return "Exception"


def _mirror_class(ancestor: str) -> type[RemoteError]:
    cls = _mirror_cache.get(ancestor)
    if cls is not None:
        return cls
    base = getattr(builtins, ancestor, None)
    if (
        not isinstance(base, type)
        or not issubclass(base, BaseException)
        or ancestor in _NOT_MIRRORED
        or base in (BaseException, Exception)
    ):
        cls = RemoteError
    else:
        try:
            cls = type(
                f"RemoteError[{ancestor}]",
                (RemoteError, base),
                {
                    "__module__": __name__,
                    "__new__": _mirror_new,
                    "__init__": RemoteError.__init__,
                    "_builtin_base": base,
                },
            )
        except TypeError:  # layout conflict: fall back to the plain class
            cls = RemoteError
    _mirror_cache[ancestor] = cls
    return cls


def _mirror_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    # Built-ins such as OSError or ExceptionGroup parse their arguments in
    # __new__; give each one arguments it accepts, then let __init__ set ours.
    base = cls._builtin_base  # type: ignore[attr-defined]
    if issubclass(base, BaseExceptionGroup):
        return base.__new__(
            cls, "remote", [Exception("the remote group's members are not carried")]
        )
    try:
        return base.__new__(cls)
    except TypeError:  # e.g. MemoryError: its own allocator refuses subclasses' new
        return Exception.__new__(cls)


#: Error classes that keep their own class when they come back from a remote
#: handler or task, by qualified name (``mirrored``). Only classes a layer of zcell
#: registers: a name from the wire selects one of these, it never imports anything.
_mirrored: dict[str, type[ZcellError]] = {}
_mirrored_cache: dict[str, type[RemoteError]] = {}


def mirrored(cls: type[_E]) -> type[_E]:
    """Class decorator: a remote error of this zcell class is raised at the caller
    as an instance of it (and of ``RemoteError``), so ``except TimeLimitExceeded:``
    works around a task's ``get()``. For errors that describe the outcome of a
    remote run (the task layer's), not for errors about the call itself."""
    _mirrored[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _mirrored_class(type_name: str) -> type[RemoteError] | None:
    known = _mirrored.get(type_name)
    if known is None:
        return None
    cls = _mirrored_cache.get(type_name)
    if cls is None:
        builtin = getattr(builtins, builtin_ancestor(known), Exception)
        cls = type(
            known.__name__,
            (RemoteError, known),
            {
                "__module__": __name__,
                "__new__": _mirror_new,
                "__init__": RemoteError.__init__,
                "__str__": RemoteError.__str__,
                "_builtin_base": builtin,
            },
        )
        _mirrored_cache[type_name] = cls
    return cls


def remote_error(
    type_name: str, message: str, traceback: str | list[str], ancestor: str
) -> RemoteError:
    """Build the exception a caller sees for a remote handler's failure.

    Args:
        type_name: The original exception's qualified type name.
        message: ``str()`` of the original exception.
        traceback: The formatted remote tracebacks, one per hop (or one string).
        ancestor: Name of the original type's nearest built-in ancestor.

    Returns:
        A ``RemoteError`` that is also an instance of ``builtins.<ancestor>``.
    """
    cls = _mirrored_class(type_name) or _mirror_class(ancestor)
    error = cls(type_name, message, traceback)
    error.remote_ancestor = ancestor
    return error


# -- the wire form of a handler's error (docs/protocol.md, status ERROR) ------------

MAX_TRACEBACK = 8 * 1024  # characters kept of one hop's traceback
MAX_MESSAGE = 16 * 1024  # characters kept of the original message
MAX_HOPS = 32  # tracebacks kept: the first (where it was raised) and the latest
_HOP_SEPARATOR = "\n-- relayed by the handler that called it --\n"


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and (mostly) its end.

    The end of a traceback names the failing line and the exception, the start
    says where the call came from: both are worth more than the middle.
    """
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n... ({len(text) - limit} characters cut) ...\n{text[-tail:]}"


def error_wire(exc: BaseException) -> list[Any]:
    """The flat wire form of a handler's error: [type, message, [traceback...], ancestor].

    Call it where ``exc`` was caught. An error that came from a nested call (a
    ``RemoteError`` the handler let escape) keeps the original type, message and
    tracebacks, and gains one traceback for this hop, so it grows by one bounded
    entry per hop instead of nesting (which doubled its size at every hop).
    """
    hop = clip(_hop_traceback(exc), MAX_TRACEBACK)
    if isinstance(exc, RemoteError):
        tracebacks = [*exc.remote_tracebacks, hop]
        if len(tracebacks) > MAX_HOPS:
            cut = len(tracebacks) - MAX_HOPS + 1
            tracebacks = [tracebacks[0], f"... ({cut} hops cut) ...", *tracebacks[-MAX_HOPS + 2 :]]
        # Clipped again: they may come from a peer that did not bound them.
        tracebacks = [clip(tb, MAX_TRACEBACK) for tb in tracebacks]
        message = clip(exc.remote_message, MAX_MESSAGE)
        return [exc.type_name, message, tracebacks, exc.remote_ancestor or "Exception"]
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return [name, clip(str(exc), MAX_MESSAGE), [hop], builtin_ancestor(cls)]


def _hop_traceback(exc: BaseException) -> str:
    """This hop's traceback of ``exc``.

    A relayed ``RemoteError`` gets its frames and its name only: its ``str()``
    holds every earlier hop's traceback, which travel beside it.
    """
    if isinstance(exc, RemoteError):
        frames = "".join(_traceback.format_tb(exc.__traceback__))
        return f"Traceback (most recent call last):\n{frames}relayed {exc.type_name}\n"
    return "".join(_traceback.format_exception(exc))


def error_from_wire(value: Any) -> RemoteError | None:
    """Rebuild a handler's error from its wire form; None when malformed.

    Also takes the older form whose third item is one traceback string.
    """
    if not isinstance(value, list) or len(value) != 4:
        return None
    type_name, message, tracebacks, ancestor = value
    if isinstance(tracebacks, list):
        tracebacks = [str(tb) for tb in tracebacks]
    else:
        tracebacks = [str(tracebacks)]
    return remote_error(str(type_name), str(message), tracebacks, str(ancestor))
