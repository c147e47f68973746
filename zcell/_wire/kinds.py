"""Message kinds as a table: one row per kind, and ``check`` driven by it.

A row gives the kind's number, name, field layout (the names of the items after
``[version, kind]``; docs/protocol.md §3 has their types), the item counts it
may have, the function that checks its fields, and the minor version that added
it. To add a kind: a new number, a row with ``since`` = the next minor, and a
bump of ``PROTOCOL_MINOR`` (docs/protocol.md, "Adding a message kind").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError
from .version import PROTOCOL_VERSION, VersionMismatch, check_minors

# Message kinds. Field layouts are the rows of KINDS below and docs/protocol.md.
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
REFUSED = 11  # answer to a HELLO, on its connection: "your name (or version) is not welcome"

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

# REQ / SCATTER field positions
R_ID, R_SRC, R_BOOT, R_CHAIN, R_TTL, R_TARGET, R_METHOD, R_KWARGS, R_FLAGS, R_ORIGIN, R_SEEN = (
    range(2, 13)
)
# REP
P_ID, P_SRC, P_STATUS = 2, 3, 4
P_VALUE = 5  # optional 6th field for OK/ERROR/ZERROR
# CTRL
C_ID, C_SRC, C_BOOT, C_TTL, C_OP, C_ARGS = range(2, 8)


class UnknownKind(ProtocolError):
    """A frame of this major whose kind this code does not know: from a node of a
    newer minor it is a kind we do not speak (dropped, counted apart), from any
    other sender a malformed frame."""


@dataclass(frozen=True, slots=True)
class Kind:
    """One message kind: what ``check`` accepts, and since when it exists."""

    number: int
    name: str
    #: The names of the items after [version, kind], in order (optional ones last).
    fields: tuple[str, ...]
    #: Raises ProtocolError unless the fields have the right types; called only
    #: with a message of one of ``lengths`` items, unless ``counts``.
    check: Callable[[list[Any]], None]
    #: The minor version that added it: sent only to members that speak it.
    since: int = 0
    #: How many of the last fields may be missing.
    optional: int = 0
    #: ``check`` tests the item count itself (requests by unpacking the message
    #: into the fields): one call less for requests and replies, nearly all the
    #: traffic.
    counts: bool = False

    @property
    def lengths(self) -> tuple[int, ...]:
        """The item counts a frame of this kind may have, version and kind included."""
        full = 2 + len(self.fields)
        return tuple(range(full - self.optional, full + 1))


_PLAIN = (list, dict, str, bytes, int, float, bool)
_NODE_INFO_KEYS = ("id", "boot", "name", "cluster", "inbox", "pub", "hb")
#: The longest heartbeat interval a node info may state (``"beat"``, seconds).
MAX_BEAT = 3600.0


def _check_request(msg: list[Any]) -> None:
    # Decoded msgpack has exact types (bool is not int here): `type(x) is`.
    try:
        _, _, rid, src, boot, chain, ttl, target, method, kwargs, flags, origin, seen = msg
    except ValueError:
        raise ProtocolError(f"a request needs 13 items, got {len(msg)}") from None
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


def _check_reply(msg: list[Any]) -> None:
    n = len(msg)
    if (
        (n != 5 and n != 6)  # the value is optional (the REP row's lengths)
        or type(msg[P_ID]) is not int
        or type(msg[P_STATUS]) is not int
        or type(msg[P_SRC]) is not str
    ):
        raise ProtocolError("malformed reply")


def _check_ctrl(msg: list[Any]) -> None:
    if (
        type(msg[C_ID]) is not int
        or not isinstance(msg[C_SRC], str)
        or not isinstance(msg[C_BOOT], str)
        or not (msg[C_TTL] is None or type(msg[C_TTL]) is int)
        or not isinstance(msg[C_OP], str)
        or not isinstance(msg[C_ARGS], dict)
    ):
        raise ProtocolError("malformed control call")


def _check_hello(msg: list[Any]) -> None:
    if not isinstance(msg[2], dict) or type(msg[3]) is not str or type(msg[4]) is not str:
        raise ProtocolError("malformed hello")
    check_node_info(msg[2])


def _check_welcome(msg: list[Any]) -> None:
    if not isinstance(msg[2], dict) or type(msg[3]) is not int or type(msg[6]) is not str:
        raise ProtocolError("malformed welcome")
    check_node_info(msg[2])
    if msg[4] is not None:  # nil: news of a member, without the sender's actors
        check_actor_list(msg[4])
    if not isinstance(msg[5], list) or not all(isinstance(m, dict) for m in msg[5]):
        raise ProtocolError("malformed member list")
    for member in msg[5]:
        check_node_info(member)


def _check_heartbeat(msg: list[Any]) -> None:
    if (
        not isinstance(msg[2], str)
        or not isinstance(msg[3], str)
        or type(msg[4]) is not int
        or type(msg[5]) is not int
        or type(msg[6]) is not int
    ):
        raise ProtocolError("malformed heartbeat")


def _check_directory(msg: list[Any]) -> None:
    if (
        not isinstance(msg[2], str)
        or not isinstance(msg[3], str)
        or type(msg[4]) is not int
        or msg[5] not in ("+", "-", "t")
    ):
        raise ProtocolError("malformed directory change")
    check_actor_list([msg[6]])


def _check_news(msg: list[Any]) -> None:
    if not isinstance(msg[2], str) or not isinstance(msg[3], str):
        raise ProtocolError("malformed membership news")


def _check_refusal(msg: list[Any]) -> None:
    if not all(type(field) is str for field in msg[2:]):
        raise ProtocolError("malformed refusal")


_REQUEST = (
    "rid",
    "src",
    "boot",
    "chain",
    "ttl",
    "target",
    "method",
    "kwargs",
    "flags",
    "origin",
    "seen",
)

#: The protocol's message kinds, by number (docs/protocol.md §3).
KINDS: dict[int, Kind] = {
    row.number: row
    for row in (
        Kind(REQ, "REQ", _REQUEST, _check_request, counts=True),
        Kind(REP, "REP", ("rid", "src", "status", "value"), _check_reply, optional=1, counts=True),
        Kind(HELLO, "HELLO", ("info", "nonce", "echo"), _check_hello),
        Kind(WELCOME, "WELCOME", ("info", "dir_seq", "actors", "members", "echo"), _check_welcome),
        Kind(CTRL, "CTRL", ("rid", "src", "boot", "ttl", "op", "args"), _check_ctrl),
        Kind(SCATTER, "SCATTER", _REQUEST, _check_request, counts=True),
        Kind(
            HEARTBEAT,
            "HEARTBEAT",
            ("node_id", "boot", "dir_seq", "in_flight", "n_actors"),
            _check_heartbeat,
        ),
        Kind(DIRECTORY, "DIRECTORY", ("node_id", "boot", "seq", "op", "actor"), _check_directory),
        Kind(LEAVING, "LEAVING", ("node_id", "boot"), _check_news),
        Kind(LEFT, "LEFT", ("node_id", "boot"), _check_news),
        Kind(REFUSED, "REFUSED", ("node_id", "boot", "reason"), _check_refusal),
    )
}


def _checker(row: Kind) -> Callable[[list[Any]], None]:
    """The whole check of a message of ``row``'s kind: its item count, then its fields."""
    if row.counts:
        return row.check
    lengths, check_fields = row.lengths, row.check

    def check_kind(msg: list[Any]) -> None:
        if len(msg) not in lengths:
            counts = " or ".join(map(str, lengths))
            raise ProtocolError(f"a {row.name} needs {counts} items, got {len(msg)}")
        check_fields(msg)

    return check_kind


# What check() looks up per frame, by kind number.
_CHECKS = {row.number: _checker(row) for row in KINDS.values()}


def check(msg: Any) -> None:
    """Raise ProtocolError unless ``msg`` has the shape of a known message.

    Raises :class:`VersionMismatch` for a frame of another major and
    :class:`UnknownKind` for a kind this code lacks (both are ProtocolErrors).
    """
    if type(msg) is not list or len(msg) < 2:
        raise ProtocolError("a message is an array of at least 2 items")
    version, kind = msg[0], msg[1]
    if type(version) is not int or version != PROTOCOL_VERSION:
        if type(version) is int:
            raise VersionMismatch(version, msg)
        raise ProtocolError(f"unsupported protocol version {version!r}")
    check_kind = _CHECKS.get(kind) if type(kind) is int else None
    if check_kind is None:
        if type(kind) is int:
            raise UnknownKind(f"unknown message kind {kind!r}")
        raise ProtocolError(f"unknown message kind {kind!r}")
    check_kind(msg)


def sendable(kind: int, highest_minor: int) -> bool:
    """Whether a node that speaks minors up to ``highest_minor`` knows ``kind``.

    A sender of a kind added after minor 0 asks this of the member's range
    (``Member.minors``) and does without it (or sends what the older minor has)
    when it is False.
    """
    return KINDS[kind].since <= highest_minor


def check_node_info(info: dict[str, Any]) -> None:
    for key in _NODE_INFO_KEYS:
        if not isinstance(info.get(key), str):
            raise ProtocolError(f"node info lacks {key!r}")
    if "proto" in info:
        check_minors(info["proto"])
    if "beat" in info:
        beat = info["beat"]
        if type(beat) not in (int, float) or not 0 < beat <= MAX_BEAT:
            raise ProtocolError(f"node info has a malformed 'beat' (0 < seconds <= {MAX_BEAT})")


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


def foreign_hello(error: VersionMismatch) -> dict[str, Any] | None:
    """The node info of a HELLO of another major (str id, boot, cluster), else None.

    Every major keeps HELLO as ``[major, 3, info, ...]`` with ``id``, ``boot``
    and ``cluster`` in the info, and REFUSED as ``[major, 11, id, boot, reason]``:
    that much a node of any version reads, so that it can refuse and be refused.
    """
    msg = error.msg
    if len(msg) < 3 or type(msg[1]) is not int or msg[1] != HELLO or type(msg[2]) is not dict:
        return None
    info: dict[str, Any] = msg[2]
    if not all(type(info.get(key)) is str for key in ("id", "boot", "cluster")):
        return None
    return info


def foreign_refusal(error: VersionMismatch) -> tuple[str, str, str] | None:
    """The (node id, boot id, reason) of a REFUSED of another major, else None."""
    msg = error.msg
    if type(msg[1]) is not int or msg[1] != REFUSED or len(msg) != 5:
        return None
    if not all(type(field) is str for field in msg[2:]):
        return None
    return msg[2], msg[3], msg[4]
