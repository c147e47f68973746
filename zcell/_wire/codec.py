"""msgpack encoding and decoding of frames, with the input limits. See docs/protocol.md.

Every message is one ZeroMQ frame holding one msgpack array whose first two
items are the protocol version and the message kind. :meth:`Codec.decode` applies
input limits and checks the shape of every kind (``kinds.check``), so any byte
string yields either a well-formed list or :class:`~zcell.errors.ProtocolError`,
nothing else. :meth:`Codec.encode` refuses what the receiver's decoder would refuse.

Actor proxies travel as msgpack extension type :data:`EXT_PROXY` whose payload is
the msgpack array ``[actor_id, type_name, node_id]``. Encoding recognises any
object with a ``_zcell_ref()`` method returning that triple; decoding hands the
triple to a ``make_proxy`` callable supplied by the node.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgpack

from ..errors import ProtocolError, SerializationError
from .kinds import CTRL, REP, REQ, SCATTER, check
from .version import PROTOCOL_VERSION

EXT_PROXY = 1

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

#: How many proxies the encoder and each decoder remember (then they start over).
#: A proxy travels in every request an actor sends (its ``origin``) and in the
#: arguments of many: packing and checking the same few again is most of the
#: cost of those requests' codec work.
PROXY_CACHE = 1024

_packed_proxies: dict[tuple[str, str, str], msgpack.ExtType] = {}


def _default(obj: Any) -> Any:
    ref = getattr(obj, "_zcell_ref", None)
    if ref is not None:
        triple = tuple(ref())  # a key: whatever sequence the object returns
        ext = _packed_proxies.get(triple)
        if ext is None:
            ext = msgpack.ExtType(EXT_PROXY, msgpack.packb(list(triple), use_bin_type=True))
            if len(_packed_proxies) >= PROXY_CACHE:
                _packed_proxies.clear()  # threads share it: a dict's own ops are atomic
            _packed_proxies[triple] = ext
            _PLAIN.add(type(obj))  # a set's own ops are atomic too
        return ext
    if isinstance(obj, int):
        raise TypeError(
            f"integer {obj} is outside msgpack's range -2**63..2**64-1; send it as a str"
        )
    if isinstance(obj, set | frozenset):
        raise TypeError(f"a {type(obj).__name__} cannot travel; send a list instead")
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


class Checked(dict):  # type: ignore[type-arg]
    """A request's keyword arguments, or a reply's value, whose values their sender
    checked as it made them: :meth:`Codec.encode` does not walk them again for
    what the receiver would refuse. The task layer's pushes (a task's message is
    checked once, as it is made, and the walk of its some 25 fields cost more than
    packing them) and a worker's outcomes (the task's value checked as it returned)."""

    __slots__ = ()


class Codec:
    """Encoder/decoder bound to one node (its proxy factory and size limit)."""

    def __init__(
        self,
        make_proxy: Callable[[str, str, str], Any] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.max_message_size = max_message_size
        self._make_proxy = make_proxy
        self._packer = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True)
        self._proxies: dict[bytes, tuple[str, str, str]] = {}  # checked payloads

    def encode(self, message: list[Any]) -> bytes:
        """Pack a message; raise SerializationError if it cannot travel or is too big."""
        try:
            data: bytes = self._packer.pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer.reset()
            raise SerializationError(
                f"{exc}; zcell sends only msgpack types (None, bool, int, float, str, "
                "bytes, list, dict) and actor proxies"
            ) from exc
        _check_payload(message)
        if len(data) > self.max_message_size:
            raise SerializationError(
                f"message of {len(data)} bytes exceeds max_message_size="
                f"{self.max_message_size}; send less, or raise Node(max_message_size=...)"
            )
        return data

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code != EXT_PROXY:
            raise ProtocolError(f"unknown msgpack extension type {code}")
        triple = self._proxies.get(data)
        if triple is None:
            triple = _proxy_triple(data)
            if len(self._proxies) >= PROXY_CACHE:
                self._proxies.clear()
            self._proxies[data] = triple
        if self._make_proxy is None:
            return triple
        return self._make_proxy(*triple)

    def decode(self, data: bytes) -> list[Any]:
        """Unpack and check one frame. Raises ProtocolError for anything malformed."""
        size = len(data)
        if size > self.max_message_size:
            raise ProtocolError(f"frame of {size} bytes exceeds the limit")
        try:
            msg: list[Any] = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=False,
                ext_hook=self._ext_hook,
            )
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack raises many types for bad input
            raise ProtocolError(f"undecodable frame: {exc.__class__.__name__}") from None
        # msgpack decodes its timestamp extension (-1) itself, bypassing
        # ext_hook; only proxies may arrive as extension types.
        # (The byte test first: a search of every frame cost as much as its unpacking.)
        if b"\xff" in data and _TIMESTAMP_HEADER.search(data) is not None and _has_timestamp(msg):
            raise ProtocolError("msgpack timestamps are not accepted")
        check(msg)
        return msg


def _proxy_triple(data: bytes) -> tuple[str, str, str]:
    """A proxy's payload, checked: ``(actor_id, type_name, node_id)``."""
    triple = msgpack.unpackb(data, raw=False)
    if (
        not isinstance(triple, list)
        or len(triple) != 3
        or not all(isinstance(x, str) for x in triple)
    ):
        raise ProtocolError("malformed actor proxy")
    return (triple[0], triple[1], triple[2])


# What the decoder takes back as it was sent: a dict key of another type (a tuple
# or list) arrives as a list, which cannot be a key, and the whole frame would be
# refused by the receiver (after the caller waited its full timeout).
_SCALARS: frozenset[type] = frozenset({str, int, float, bool, bytes, type(None)})
#: The scalar types and the types a proxy has been packed from (``_default`` adds
#: them): what the walk below never looks into. Packing comes first in
#: ``Codec.encode``, so a proxy's type is here by the time its message is walked;
#: msgpack packs a list, tuple or dict subclass as such, never through
#: ``_default``, so no container type joins.
_PLAIN: set[type] = set(_SCALARS)
_REFUSED_KEYS = (list, tuple, dict, msgpack.Timestamp)
_REFUSED_VALUES = (msgpack.ExtType, msgpack.Timestamp)


def _check_payload(message: list[Any]) -> None:
    """Refuse what the receiver's decoder would refuse in a message's user data.

    Only the user's values are walked (a request's kwargs, a reply's value, a
    control call's args): the rest is built by zcell itself. A list that is not
    a message (a value checked before it is sent) is walked whole. On the hot
    path (flat kwargs, a scalar reply) this costs a few type checks.

    Raises:
        SerializationError: the value would be dropped by the receiver.
    """
    kind = message[1] if len(message) > 1 and message[0] == PROTOCOL_VERSION else None
    if kind == REQ or kind == SCATTER:
        kwargs = message[9]
        if type(kwargs) is Checked:
            return
        nested = None
        for key, item in kwargs.items():
            if type(key) is not str:
                raise SerializationError(
                    f"keyword argument names must be strings, not {type(key).__name__}"
                )
            if type(item) not in _PLAIN:
                nested = True
        if nested is None:
            return
        reason = _refused(kwargs)
    elif kind == REP:
        value = message[5] if len(message) > 5 else None
        if type(value) in _PLAIN or type(value) is Checked:
            return
        reason = _refused(value)
    elif kind is None:
        reason = _refused(message)
    elif kind == CTRL:
        reason = _refused(message[7])
    else:
        return
    if reason is not None:
        raise SerializationError(
            f"{reason}: the receiver would refuse it; zcell sends only msgpack types "
            "(None, bool, int, float, str, bytes, list, dict with keys of those "
            "scalar types) and actor proxies"
        )


def _refused(value: Any) -> str | None:
    """Why the decoder would refuse ``value`` once packed, else None.

    Cheap for the common case (exact types first; a long list of scalars costs
    one ``set`` of its item types), and iterative: a value as deep as msgpack
    takes must not hit Python's recursion limit here.
    """
    stack = [value]
    while stack:
        value = stack.pop()
        t = type(value)
        if t is dict or (t is not list and t is not tuple and isinstance(value, dict)):
            for key, item in value.items():
                if type(key) not in _SCALARS and isinstance(key, _REFUSED_KEYS):
                    return f"a dict key of type {type(key).__name__} cannot travel"
                if type(item) not in _PLAIN:
                    stack.append(item)
        elif isinstance(value, _REFUSED_VALUES):  # ExtType is a tuple: before the next test
            return f"a msgpack {t.__name__} cannot travel"
        elif t is list or t is tuple or isinstance(value, list | tuple):
            if len(value) > 16 and set(map(type, value)) <= _PLAIN:
                continue
            stack.extend(item for item in value if type(item) not in _PLAIN)
        # else: a scalar, a proxy, or what packing already refused
    return None


#: The headers a msgpack timestamp (extension type -1, 0xff, of 4, 8 or 12 bytes)
#: is packed with: fixext 4 and 8, and ext 8/16/32 of those lengths. A frame
#: without one holds no timestamp (a bare 0xff byte is common: -1, floats).
_TIMESTAMP_HEADER = re.compile(
    rb"\xd6\xff|\xd7\xff|\xc7[\x04\x08\x0c]\xff"
    rb"|\xc8\x00[\x04\x08\x0c]\xff|\xc9\x00\x00\x00[\x04\x08\x0c]\xff"
)


def _has_timestamp(value: Any) -> bool:
    if isinstance(value, msgpack.Timestamp):
        return True
    if isinstance(value, list):
        return any(_has_timestamp(v) for v in value)
    if isinstance(value, dict):
        return any(_has_timestamp(k) or _has_timestamp(v) for k, v in value.items())
    return False
