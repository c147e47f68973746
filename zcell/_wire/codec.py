"""The zcell wire format: msgpack frames, pure (no sockets). See docs/protocol.md.

Every message is one ZeroMQ frame holding one msgpack array whose first two
items are the protocol version and the message kind. :func:`decode` applies
input limits and checks the shape of every kind, so any byte string yields either
a well-formed list or :class:`~zcell.errors.ProtocolError`, nothing else.

Actor proxies travel as msgpack extension type :data:`EXT_PROXY` whose payload is
the msgpack array ``[actor_id, type_name, node_id]``. Encoding recognises any
object with a ``_zcell_ref()`` method returning that triple; decoding hands the
triple to a ``make_proxy`` callable supplied by the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from .errors import ProtocolError, SerializationError

PROTOCOL_VERSION = 2  # 2: HELLO and WELCOME carry a challenge and its answer
EXT_PROXY = 1

# Message kinds. Field layouts (after [version, kind]) are in docs/protocol.md.
REQ = 1  # request to an actor (send, call, throw, emit delivery)
REP = 2  # reply to a request or a control call
HELLO = 3  # "I am here": node info + a challenge (+ the answer to one); a knock
WELCOME = 4  # node info + directory snapshot + known members (+ an answer)
CTRL = 5  # control call to a node: spawn, kill, bind, unbind, snapshot
SCATTER = 6  # request to every actor of a type (over PUB, or direct)
HEARTBEAT = 7  # liveness, from the heartbeat thread
DIRECTORY = 8  # a numbered change to a node's own actors
LEAVING = 9  # graceful stop begins: place no new work here
LEFT = 10  # graceful stop ended
REFUSED = 11  # answer to a HELLO, on its connection: "your name is taken here"

# REQ/SCATTER flags
F_NOWAIT = 1
F_THROW = 2
F_EMIT = 4  # deliver through the target's outbox
F_DIRECT = 8  # reply over the connection the request came on (a program thread's port)

# REP statuses
OK = 0
ERROR = 1  # handler raised: value = [type_name, message, traceback, builtin_ancestor]
ZERROR = 2  # zcell error on the far side: value = [error_class_name, message]
DECLINED = 3  # handler raised Next (scatter): no value

# Field counts per kind, including version and kind.
_LENGTHS = {
    REQ: 13,
    REP: 5,
    HELLO: 5,
    WELCOME: 7,
    CTRL: 8,
    SCATTER: 13,
    HEARTBEAT: 7,
    DIRECTORY: 7,
    LEAVING: 4,
    LEFT: 4,
    REFUSED: 5,
}

# REQ / SCATTER field positions
R_ID, R_SRC, R_BOOT, R_CHAIN, R_TTL, R_TARGET, R_METHOD, R_KWARGS, R_FLAGS, R_ORIGIN, R_SEEN = (
    range(2, 13)
)
# REP
P_ID, P_SRC, P_STATUS = 2, 3, 4
P_VALUE = 5  # optional 6th field for OK/ERROR/ZERROR
# CTRL
C_ID, C_SRC, C_BOOT, C_TTL, C_OP, C_ARGS = range(2, 8)

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


def _default(obj: Any) -> Any:
    ref = getattr(obj, "_zcell_ref", None)
    if ref is not None:
        return msgpack.ExtType(EXT_PROXY, msgpack.packb(list(ref()), use_bin_type=True))
    if isinstance(obj, int):
        raise TypeError(
            f"integer {obj} is outside msgpack's range -2**63..2**64-1; send it as a str"
        )
    if isinstance(obj, set | frozenset):
        raise TypeError(f"a {type(obj).__name__} cannot travel; send a list instead")
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


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
        triple = msgpack.unpackb(data, raw=False)
        if (
            not isinstance(triple, list)
            or len(triple) != 3
            or not all(isinstance(x, str) for x in triple)
        ):
            raise ProtocolError("malformed actor proxy")
        if self._make_proxy is None:
            return tuple(triple)
        return self._make_proxy(*triple)

    def decode(self, data: bytes) -> list[Any]:
        """Unpack and check one frame. Raises ProtocolError for anything malformed."""
        size = len(data)
        if size > self.max_message_size:
            raise ProtocolError(f"frame of {size} bytes exceeds the limit")
        try:
            msg = msgpack.unpackb(
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
        if b"\xff" in data and _has_timestamp(msg):  # type -1 is 0xff on the wire
            raise ProtocolError("msgpack timestamps are not accepted")
        check(msg)
        return msg


# What the decoder takes back as it was sent: a dict key of another type (a tuple
# or list) arrives as a list, which cannot be a key, and the whole frame would be
# refused by the receiver (after the caller waited its full timeout).
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
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
        nested = None
        for key, item in message[9].items():
            if type(key) is not str:
                raise SerializationError(
                    f"keyword argument names must be strings, not {type(key).__name__}"
                )
            if type(item) not in _SCALARS:
                nested = True
        if nested is None:
            return
        reason = _refused(message[9])
    elif kind == REP:
        value = message[5] if len(message) > 5 else None
        if type(value) in _SCALARS:
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
                if type(item) not in _SCALARS:
                    stack.append(item)
        elif isinstance(value, _REFUSED_VALUES):  # ExtType is a tuple: before the next test
            return f"a msgpack {t.__name__} cannot travel"
        elif t is list or t is tuple or isinstance(value, list | tuple):
            if len(value) > 16 and set(map(type, value)) <= _SCALARS:
                continue
            stack.extend(item for item in value if type(item) not in _SCALARS)
        # else: a scalar, a proxy, or what packing already refused
    return None


def _has_timestamp(value: Any) -> bool:
    if isinstance(value, msgpack.Timestamp):
        return True
    if isinstance(value, list):
        return any(_has_timestamp(v) for v in value)
    if isinstance(value, dict):
        return any(_has_timestamp(k) or _has_timestamp(v) for k, v in value.items())
    return False


_PLAIN = (list, dict, str, bytes, int, float, bool)


def check(msg: Any) -> None:
    """Raise ProtocolError unless ``msg`` has the shape of a known message."""
    # Decoded msgpack has exact types (bool is not int here): `type(x) is`.
    # Requests and replies first: they are nearly all the traffic.
    if type(msg) is not list or len(msg) < 2:
        raise ProtocolError("a message is an array of at least 2 items")
    version, kind = msg[0], msg[1]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version!r}")
    expected = _LENGTHS.get(kind) if type(kind) is int else None
    if expected is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    n = len(msg)
    if kind == REQ or kind == SCATTER:
        if n != expected:
            raise ProtocolError(f"kind {kind} needs {expected} items, got {n}")
        _, _, rid, src, boot, chain, ttl, target, method, kwargs, flags, origin, seen = msg
        if (
            type(rid) is not int
            or type(src) is not str
            or type(boot) is not str
            or type(chain) is not int
            or (ttl is not None and type(ttl) is not int)
            or type(target) is not str
            or type(method) is not str
            or type(kwargs) is not dict
            or type(flags) is not int
            or (seen is not None and type(seen) is not list)
            # The origin is nil or a decoded proxy, never plain data.
            or (origin is not None and isinstance(origin, _PLAIN))
        ):
            raise ProtocolError("malformed request")
        if seen is not None and not all(type(x) is str for x in seen):
            raise ProtocolError("malformed request: seen ids must be strings")
        for key in kwargs:
            if type(key) is not str:
                raise ProtocolError("request keyword names must be strings")
        return
    if kind == REP:
        if n not in (5, 6) or type(msg[P_ID]) is not int or type(msg[P_STATUS]) is not int:
            raise ProtocolError("malformed reply")
        if type(msg[P_SRC]) is not str:
            raise ProtocolError("malformed reply")
        return
    if n != expected:
        raise ProtocolError(f"kind {kind} needs {expected} items, got {n}")
    if kind == CTRL:
        if (
            type(msg[C_ID]) is not int
            or not isinstance(msg[C_SRC], str)
            or not isinstance(msg[C_BOOT], str)
            or not (msg[C_TTL] is None or type(msg[C_TTL]) is int)
            or not isinstance(msg[C_OP], str)
            or not isinstance(msg[C_ARGS], dict)
        ):
            raise ProtocolError("malformed control call")
    elif kind == HELLO:
        if not isinstance(msg[2], dict) or type(msg[3]) is not str or type(msg[4]) is not str:
            raise ProtocolError("malformed hello")
        check_node_info(msg[2])
    elif kind == WELCOME:
        if not isinstance(msg[2], dict) or type(msg[3]) is not int or type(msg[6]) is not str:
            raise ProtocolError("malformed welcome")
        check_node_info(msg[2])
        if msg[4] is not None:  # nil: news of a member, without the sender's actors
            check_actor_list(msg[4])
        if not isinstance(msg[5], list) or not all(isinstance(m, dict) for m in msg[5]):
            raise ProtocolError("malformed member list")
        for member in msg[5]:
            check_node_info(member)
    elif kind == HEARTBEAT:
        if (
            not isinstance(msg[2], str)
            or not isinstance(msg[3], str)
            or type(msg[4]) is not int
            or type(msg[5]) is not int
            or type(msg[6]) is not int
        ):
            raise ProtocolError("malformed heartbeat")
    elif kind == DIRECTORY:
        if (
            not isinstance(msg[2], str)
            or not isinstance(msg[3], str)
            or type(msg[4]) is not int
            or msg[5] not in ("+", "-", "t")
        ):
            raise ProtocolError("malformed directory change")
        check_actor_list([msg[6]])
    elif kind == REFUSED:
        if not all(type(field) is str for field in msg[2:]):
            raise ProtocolError("malformed refusal")
    else:  # LEAVING, LEFT
        if not isinstance(msg[2], str) or not isinstance(msg[3], str):
            raise ProtocolError("malformed membership news")


_NODE_INFO_KEYS = ("id", "boot", "name", "cluster", "inbox", "pub", "hb")


def check_node_info(info: dict[str, Any]) -> None:
    for key in _NODE_INFO_KEYS:
        if not isinstance(info.get(key), str):
            raise ProtocolError(f"node info lacks {key!r}")


def check_actor_list(actors: Any) -> None:
    """Actors travel as [actor_id, type_name] pairs."""
    if not isinstance(actors, list):
        raise ProtocolError("malformed actor list")
    for entry in actors:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], str)
        ):
            raise ProtocolError("malformed actor entry")
