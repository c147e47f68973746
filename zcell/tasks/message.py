"""The task message: a plain dict of msgpack-able values (docs/protocol.md, "Tasks"),
pushed as the array of its values in the order of ``WIRE`` (``pack``).

Times (``eta``, ``expires``) are POSIX timestamps in seconds (float): UTC by
definition, so hosts in different time zones agree; hosts' clocks must be
roughly in sync for ETAs to be exact (as with Celery). ``reply_to`` is the
submitter's task agent (an actor proxy): the worker claims the task there
before it starts, and sends state updates there.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from random import getrandbits
from typing import Any

from ..errors import ProtocolError

__all__ = ["FIELDS", "WIRE", "check", "epoch", "make", "new_id", "pack"]

# The version (4) and variant (RFC 4122) bits of a random UUID.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (0x4 << 76) | (0x2 << 62)

#: Field -> the types it may hold (None allowed where listed), in the order
#: ``make`` and ``App._message`` build a message in (a pushed array's, ``WIRE``).
FIELDS: dict[str, tuple[type, ...]] = {
    "retries": (int,),
    "attempt": (int,),
    "eta": (float, int, type(None)),
    "expires": (float, int, type(None)),
    "parent_id": (str, type(None)),
    "acks_late": (bool,),
    "ignore_result": (bool,),
    "track_started": (bool,),
    "time_limit": (float, int, type(None)),
    "soft_time_limit": (float, int, type(None)),
    "link": (list, dict, type(None)),
    "link_error": (list, dict, type(None)),
    "headers": (dict, type(None)),
    # The canvas (docs/canvas.md): the rest of a chain, the chord this task
    # reports to ({"id", "i", "to": agent}), the agents its outcome is pushed to.
    "chain": (list, type(None)),
    "chord": (dict, type(None)),
    "watchers": (list, type(None)),
    "id": (str,),
    "name": (str,),
    "args": (list,),
    "kwargs": (dict,),
    "queue": (str,),
    "root_id": (str,),
}
_MAX_ID = 200
#: (field, the exact types it may hold): what ``check`` tests first.
_EXACT = tuple((field, frozenset(types)) for field, types in FIELDS.items())


class _Absent:
    """A field not in the message (a type of its own: no value has it)."""


_MISSING = _Absent()
#: The fields in the order of a pushed message's array (``pack``): ``FIELDS``, then
#: the submitter's agent and its grant.
WIRE: tuple[str, ...] = (*FIELDS, "reply_to", "go")
_WIRE_LEN = len(WIRE)
_WIRE_KEYS = frozenset(WIRE)
#: The fields whose types ``check`` tests, and what ``msg.get`` gives for each absent.
_TYPED = (*FIELDS, "go")
_ABSENT = (_MISSING,) * len(_TYPED)
#: Type tuples that passed ``_check_types``: of a map's ``_TYPED`` values, or of an
#: array's values (one more: ``reply_to``).
_PASSED: set[tuple[type, ...]] = set()
_PASSED_MAX = 256


def epoch(when: float | datetime | None, *, relative: float | None = None) -> float | None:
    """A POSIX timestamp from a ``datetime`` (naive means UTC), a timestamp, or
    ``relative`` seconds from now; None when neither is given."""
    if relative is not None:
        return time.time() + float(relative)
    if when is None:
        return None
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    return float(when)


def new_id() -> str:
    """A task id: a random UUID (version 4) in its usual text form, as Celery's.

    From the process's seeded generator (reseeded in a forked child), not
    ``uuid.uuid4()``: its ``os.urandom`` system call lets go of the GIL, and a
    program thread calling ``delay()`` then waited for the loop thread to give it
    back on every task. Ids must be unique, not secret: a task id grants nothing.
    """
    h = "%032x" % (getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make(**fields: Any) -> dict[str, Any]:
    """A task message with every field (defaults for those not given)."""
    msg: dict[str, Any] = {
        "retries": 0,
        "attempt": 0,
        "eta": None,
        "expires": None,
        "parent_id": None,
        "acks_late": False,
        "ignore_result": False,
        "track_started": False,
        "time_limit": None,
        "soft_time_limit": None,
        "link": None,
        "link_error": None,
        "headers": None,
        "chain": None,
        "chord": None,
        "watchers": None,
    }
    msg.update(fields)
    msg.setdefault("root_id", msg["id"])
    return msg


def pack(msg: dict[str, Any]) -> list[Any] | dict[str, Any]:
    """The message as a submitter pushes it: its values in the order of ``WIRE``
    (an array: no field names to pack, decode and hash at either end), when it
    has exactly those fields; else the map itself (``check`` takes both)."""
    if len(msg) == _WIRE_LEN:
        if tuple(msg) == WIRE:  # built in that order (App._message): a copy of its values
            return list(msg.values())
        if msg.keys() == _WIRE_KEYS:
            return list(map(msg.__getitem__, WIRE))
    return msg


def check(msg: object) -> dict[str, Any]:
    """The message, if it is a well-formed task message (from the wire: trust
    nothing), as a map; else ``ProtocolError`` saying what is wrong. Takes the
    map, or the array ``pack`` makes of it."""
    if type(msg) is list:
        if len(msg) != _WIRE_LEN:
            raise ProtocolError(
                f"a task message array has {_WIRE_LEN} values (protocol.md, Tasks), not {len(msg)}"
            )
        types = tuple(map(type, msg))
        msg = dict(zip(WIRE, msg, strict=False))  # its length is checked above
    elif isinstance(msg, dict):
        types = tuple(map(type, map(msg.get, _TYPED, _ABSENT)))
    else:
        raise ProtocolError(f"a task message is a map or an array, not {type(msg).__name__}")
    # What the fields' types allow depends on their types alone: a message whose
    # types passed once passes (the set is small: the types of the same few
    # shapes of message, again and again; an array's and a map's never equal,
    # their lengths differ).
    if types not in _PASSED:
        _check_types(msg)
        if len(_PASSED) < _PASSED_MAX:
            _PASSED.add(types)
    task_id, kwargs, chain = msg["id"], msg["kwargs"], msg["chain"]
    if not task_id or len(task_id) > _MAX_ID or len(msg["name"]) > _MAX_ID:
        raise ProtocolError("task id and name must be 1-200 characters")
    if kwargs and not all(isinstance(k, str) for k in kwargs):
        raise ProtocolError("task kwargs must have string keys")
    if msg["retries"] < 0 or msg["attempt"] < 0:
        raise ProtocolError("task retries and attempt must not be negative")
    if chain and not all(isinstance(s, dict) for s in chain):
        raise ProtocolError("task message field 'chain' must list signatures (maps)")
    # Its class's attribute: a proxy's ``send`` is a property that makes an object.
    if not hasattr(type(msg.get("reply_to")), "send"):
        raise ProtocolError("task message without its submitter's agent (reply_to)")
    return msg


def _check_types(msg: dict[str, Any]) -> None:
    """Every field there with one of its types; ``go``, if there, a bool."""
    get = msg.get
    for field, exact in _EXACT:
        if type(get(field, _MISSING)) not in exact:  # one set lookup a field, the usual case
            _check_field(msg, field)
    if not isinstance(msg.get("go", False), bool):
        raise ProtocolError("task message field 'go' (the submitter's grant) must be a bool")


def _check_field(msg: dict[str, Any], field: str) -> None:
    """The field is there with one of its types (a subclass of one will do)."""
    if field not in msg:
        raise ProtocolError(f"task message without {field!r}")
    value, types = msg[field], FIELDS[field]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ProtocolError(f"task message field {field!r} has type {type(value).__name__}")
