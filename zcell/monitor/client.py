"""The client side of inspect and control: ask many nodes, merge their replies.

``Control(node)`` works for any program with a node (a plain actor program);
the task layer's ``app.control`` is a `Control` whose default destination is
the mesh's workers. Each call fans the operation out to the chosen members at
once and waits at most ``timeout`` seconds in all; the result is a `Replies`
dict (node name -> reply) that also names the nodes that did not answer in
time (``missing``, with a logged warning) and those that answered with an error
(``errors``), so that no node is silently left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import CallTimeout, NodeDown, ZcellError

if TYPE_CHECKING:
    from .._mesh.result import AsyncResult
    from ..node import Node

__all__ = ["Control", "Inspect", "Replies"]

log = logging.getLogger(__name__)

#: Seconds a control or inspect call waits for replies by default (Celery's).
DEFAULT_TIMEOUT = 1.0


class Replies(dict[str, Any]):
    """Node name -> reply, for the nodes that answered in time.

    Attributes:
        missing: Names of the asked nodes that did not answer within the
            timeout (or went down meanwhile), or that ``destination`` named but
            the mesh does not know.
        errors: Node name -> "ErrorType: message" for nodes that answered with
            an error (e.g. a task operation asked of a node without a worker).
    """

    def __init__(self) -> None:
        super().__init__()
        self.missing: list[str] = []
        self.errors: dict[str, str] = {}


class Control:
    """Remote control and inspection of the mesh's nodes (Celery's ``app.control``).

    Args:
        node: The started node to ask from.
    """

    def __init__(self, node: Node | None = None) -> None:
        self._own_node = node

    def _node(self) -> Node:
        """The node to ask from (the task layer's ``app.control`` starts the app's)."""
        if self._own_node is None:  # pragma: no cover - subclasses provide one
            raise ValueError("Control needs a node: Control(node)")
        return self._own_node

    def _default_targets(self, members: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The members asked when no destination is given: all of them."""
        return members

    # -- the mechanism ----------------------------------------------------------------

    def broadcast(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        destination: Iterable[str] | str | None = None,
        reply: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies | None:
        """Run the control operation ``name`` on the destination nodes.

        Args:
            name: The operation (``node.control.names()`` lists a node's).
            arguments: Its arguments (msgpack-able).
            destination: Node names or ids (a list, or a comma-separated
                string); default: every member (``app.control``: every worker).
            reply: Wait for the replies (else return ``None`` at once).
            timeout: Seconds to wait for all replies together.

        Returns:
            The `Replies` (``None`` with ``reply=False``).
        """
        node = self._node()
        targets, unknown = self._targets(node, destination)
        calls = [
            (member["name"], node.ctrl_async(member["id"], name, arguments or {}, timeout))
            for member in targets
        ]
        if not reply:
            return None
        replies = self._collect(calls, timeout)
        replies.missing.extend(unknown)
        if replies.missing:
            log.warning(
                "zcell: no reply to %s from %s within %gs",
                name,
                ", ".join(replies.missing),
                timeout,
            )
        return replies

    def _targets(
        self, node: Node, destination: Iterable[str] | str | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """(members to ask, destination names the mesh does not know)."""
        members = node.nodes()
        if destination is None:
            return self._default_targets(members), []
        wanted = destination.split(",") if isinstance(destination, str) else list(destination)
        wanted = [w.strip() for w in wanted if w.strip()]
        by_key = {m["name"]: m for m in members} | {m["id"]: m for m in members}
        return [by_key[w] for w in wanted if w in by_key], [w for w in wanted if w not in by_key]

    @staticmethod
    def _collect(calls: list[tuple[str, AsyncResult]], timeout: float) -> Replies:
        deadline = time.monotonic() + timeout
        replies = Replies()
        for name, call in calls:
            try:
                replies[name] = call.get(timeout=max(0.0, deadline - time.monotonic()))
            except (CallTimeout, NodeDown):
                replies.missing.append(name)
            except ZcellError as exc:
                replies.errors[name] = f"{type(exc).__name__}: {exc}"
        return replies

    # -- Celery's names -----------------------------------------------------------------

    def inspect(
        self, destination: Iterable[str] | str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Inspect:
        """An `Inspect` of the destination nodes (default: all; ``app.control``: workers)."""
        return Inspect(self, destination, timeout)

    def ping(
        self, destination: Iterable[str] | str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Replies:
        """Ask the nodes whether they are alive: each answers ``{"ok": "pong"}``."""
        return self._ask("ping", {}, destination, timeout)

    def enable_events(
        self, destination: Iterable[str] | str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Replies:
        """Have the nodes publish events (sent only while someone subscribes)."""
        return self._ask("enable_events", {}, destination, timeout)

    def disable_events(
        self, destination: Iterable[str] | str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Replies:
        """Have the nodes stop publishing events."""
        return self._ask("disable_events", {}, destination, timeout)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Iterable[str] | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Set a task's rate limit on the workers ("10/s", "100/m"; None lifts it)."""
        args = {"task": task_name, "rate": rate_limit}
        return self._ask("rate_limit", args, destination, timeout)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Iterable[str] | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Set a task's soft and hard time limits (seconds) on the workers."""
        args = {"task": task_name, "soft": soft, "hard": hard}
        return self._ask("time_limit", args, destination, timeout)

    def pool_grow(
        self,
        n: int = 1,
        destination: Iterable[str] | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Let each worker run ``n`` more tasks at once."""
        return self._ask("pool_grow", {"n": n}, destination, timeout)

    def pool_shrink(
        self,
        n: int = 1,
        destination: Iterable[str] | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Replies:
        """Let each worker run ``n`` fewer tasks at once (never fewer than one)."""
        return self._ask("pool_shrink", {"n": n}, destination, timeout)

    def add_consumer(
        self,
        queue: str,
        destination: Iterable[str] | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **_: Any,
    ) -> Replies:
        """Have the workers consume ``queue`` too."""
        return self._ask("add_consumer", {"queue": queue}, destination, timeout)

    def cancel_consumer(
        self,
        queue: str,
        destination: Iterable[str] | str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **_: Any,
    ) -> Replies:
        """Have the workers stop consuming ``queue`` (tasks they hold still run)."""
        return self._ask("cancel_consumer", {"queue": queue}, destination, timeout)

    def shutdown(
        self, destination: Iterable[str] | str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Replies:
        """Stop the nodes gracefully (workers let running tasks finish first)."""
        return self._ask("shutdown", {}, destination, timeout)

    def _ask(
        self,
        name: str,
        arguments: dict[str, Any],
        destination: Iterable[str] | str | None,
        timeout: float,
    ) -> Replies:
        replies = self.broadcast(name, arguments, destination, True, timeout)
        assert replies is not None  # reply=True
        return replies


class Inspect:
    """Celery's ``app.control.inspect()``: each method returns `Replies`."""

    def __init__(
        self, control: Control, destination: Iterable[str] | str | None, timeout: float
    ) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout

    def _ask(self, name: str, arguments: dict[str, Any] | None = None) -> Replies:
        return self.control._ask(name, arguments or {}, self.destination, self.timeout)

    def ping(self) -> Replies:
        """``{"ok": "pong"}`` from each node."""
        return self._ask("ping")

    def active(self) -> Replies:
        """Running tasks and actor handlers, each with its ``runtime`` (seconds)."""
        return self._ask("active")

    def scheduled(self) -> Replies:
        """Tasks held for their ETA/countdown."""
        return self._ask("scheduled")

    def reserved(self) -> Replies:
        """Tasks a worker holds that have not started (waiting for a slot)."""
        return self._ask("reserved")

    def revoked(self) -> Replies:
        """The task ids each node remembers as revoked."""
        return self._ask("revoked")

    def registered(self) -> Replies:
        """The task names each worker can run."""
        return self._ask("registered")

    def stats(self) -> Replies:
        """Counters: the node's ``statistics()``, pid, uptime, pool and task totals."""
        return self._ask("stats")

    def active_queues(self) -> Replies:
        """The queues each worker consumes."""
        return self._ask("active_queues")

    def query_task(self, *ids: str) -> Replies:
        """What each worker knows of these task ids (running or finished)."""
        flat = [i for group in ids for i in ([group] if isinstance(group, str) else group)]
        return self._ask("query_task", {"ids": flat})

    def actors(self) -> Replies:
        """zcell's own: the actors each node hosts, with messages handled."""
        return self._ask("actors")
