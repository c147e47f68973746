"""The context of the request a greenlet runs: what the mesh reads to pass a
caller's deadline and call chain on to the calls a handler makes.

Hosting sets it on a handler's greenlet; messaging reads it on every send. It
lives here, under the actors, so that sending needs nothing from the actor layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greenlet import getcurrent

if TYPE_CHECKING:
    from ..actors.actor import Actor
    from ..actors.proxy import ActorProxy

__all__ = ["DEFAULT_TIMEOUT", "MessageContext", "current_context"]

#: Seconds a caller waits for a reply unless told otherwise (``Actor.default_timeout``).
DEFAULT_TIMEOUT = 5.0


class MessageContext:
    """What a handler's greenlet knows about the message it runs."""

    __slots__ = ("actor", "origin", "deadline", "chain")

    def __init__(
        self, actor: Actor, origin: ActorProxy | None, deadline: float | None, chain: int
    ) -> None:
        self.actor = actor
        self.origin = origin
        self.deadline = deadline  # time.monotonic() value, or None
        self.chain = chain


def current_context() -> MessageContext | None:
    """The context of the handler running in this greenlet, if any."""
    return getattr(getcurrent(), "zcell_ctx", None)
