"""The protocol version and the rule for who can mesh with whom (docs/protocol.md §1.1).

A version is ``major.minor``. Every frame carries the major in position 0: a
frame of another major is not read (its layout may differ), and a HELLO of
another major is refused (:class:`VersionMismatch`). Within a major, a minor
only adds message kinds (and optional node-info keys), so two nodes of one major
mesh, and each sends the other only the kinds the other's minor has (a row's
``since`` in :mod:`zcell._wire.kinds`). A node says which minors it speaks in its
node info, ``"proto": [lowest, highest]``; a node without the key speaks minor 0.
"""

from __future__ import annotations

from typing import Any

from ..errors import ProtocolError

#: In position 0 of every frame; a change to a kind's layout, the flags, the
#: statuses or the proxy extension needs a new major.
PROTOCOL_VERSION = 2
#: The newest minor this code speaks: the number of minors that added kinds.
PROTOCOL_MINOR = 0
#: The oldest minor this code still speaks. Every node of a major speaks minor
#: 0 (a node that stops speaking one needs a new major), so two ranges always meet.
MIN_MINOR = 0
#: What a node of this major that predates the ``proto`` key speaks.
UNSTATED = (0, 0)


class VersionMismatch(ProtocolError):
    """A frame of another major version: dropped like any malformed frame, but a
    HELLO among them is answered with a refusal that names both versions."""

    def __init__(self, major: int, msg: list[Any]) -> None:
        super().__init__(f"unsupported protocol version {major!r}")
        self.major = major
        self.msg = msg


def speaks() -> list[int]:
    """This node's ``proto`` node-info value: the minors of its major it speaks."""
    return [MIN_MINOR, PROTOCOL_MINOR]


def minors(info: dict[str, Any]) -> tuple[int, int]:
    """The (lowest, highest) minor a checked node info says its node speaks."""
    proto = info.get("proto")
    return UNSTATED if proto is None else (proto[0], proto[1])


def check_minors(proto: Any) -> None:
    """Raise ProtocolError unless ``proto`` is ``[lowest, highest]``, ints, 0 <= lowest <= highest."""
    if (
        type(proto) is not list
        or len(proto) != 2
        or type(proto[0]) is not int
        or type(proto[1]) is not int
        or not 0 <= proto[0] <= proto[1]
    ):
        raise ProtocolError("node info has a malformed 'proto'")


def describe(major: int, lowest: int, highest: int) -> str:
    """A version range as people read it: ``2.0``, or ``2.0-2.3``."""
    if lowest == highest:
        return f"{major}.{lowest}"
    return f"{major}.{lowest}-{major}.{highest}"


def stated(major: int, info: dict[str, Any]) -> str:
    """The versions a node of ``major`` says it speaks, as far as its ``info`` says."""
    try:
        check_minors(info.get("proto"))
    except ProtocolError:
        return str(major)
    return describe(major, *info["proto"])


def mine() -> str:
    """This code's versions, as :func:`describe` writes them."""
    return describe(PROTOCOL_VERSION, MIN_MINOR, PROTOCOL_MINOR)
