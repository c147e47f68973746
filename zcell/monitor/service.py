"""The inspect and control operations every node answers (``node.monitor``).

A `Monitor` puts its operations on the node's op registry (``node.control``),
so any member can call them over the mesh (with a secret, only members can).
The actor-level answers come from here; a layer above adds its share of
``active`` and ``stats`` with `Monitor.add_part` (the task layer adds running
tasks and its counters), and its own operations (``scheduled``, ``rate_limit``...)
straight on the registry. Operations run in the node's loop thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import gevent

from .events import EventPublisher, hosted_actors

if TYPE_CHECKING:
    from ..actors.hosting import Host, Hosted
    from ..node import Node

__all__ = ["ACTOR_OPS", "Monitor"]

#: Seconds between the ``shutdown`` reply and the node's stop (the reply leaves first).
SHUTDOWN_DELAY = 0.1
#: The operations a `Monitor` answers on every node, with or without a task layer.
ACTOR_OPS = (
    "ping", "active", "actors", "stats", "shutdown",
    "enable_events", "disable_events", "events_subscribe", "events_unsubscribe",
)  # fmt: skip

#: A part of an answer that a layer adds: ``active`` parts return a list of
#: entries, ``stats`` parts a dict merged into the node's.
Part = Callable[[], Any]


class Monitor:
    """One node's inspect/control service and its event publisher."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.events = EventPublisher(node)
        self._parts: dict[str, list[Part]] = {"active": [], "stats": []}
        #: What ``shutdown`` does: stop the node (``zcell worker`` replaces it
        #: with its own graceful stop, as on SIGTERM).
        self.on_shutdown: Callable[[], None] = node.stop
        registry = node.control
        for name in ACTOR_OPS:
            registry.add(getattr(self, "_" + name), name)
        cast("Host", node.hosting).on_change = self._actor_changed

    def add_part(self, op: str, part: Part) -> None:
        """Add a layer's share to the ``active`` or ``stats`` answer."""
        self._parts[op].append(part)

    def remove_part(self, op: str, part: Part) -> None:
        """Withdraw a share added with `add_part` (a no-op if absent)."""
        if part in self._parts[op]:
            self._parts[op].remove(part)

    def _actor_changed(self, sign: str, actor_id: str, type_name: str) -> None:
        """Publish ``actor-spawned`` / ``actor-stopped`` (when watched)."""
        kind = "actor-spawned" if sign == "+" else "actor-stopped"
        self.events.publish(kind, actor_id=actor_id, actor_type=type_name)

    # -- inspect --------------------------------------------------------------------

    def _ping(self, args: dict[str, Any], src: str) -> dict[str, str]:
        """Answer "pong" (Celery's reply): the node is alive and its loop runs."""
        return {"ok": "pong"}

    def _active(self, args: dict[str, Any], src: str) -> list[dict[str, Any]]:
        """Running actor handlers and (on a worker) running tasks, each with its runtime."""
        now = time.time()
        entries = [
            _handler_entry(actor_id, hosted, job, now)
            for actor_id, hosted in hosted_actors(self.node)
            for job in _jobs(hosted)
        ]
        for part in self._parts["active"]:
            entries.extend(part())
        return entries

    def _actors(self, args: dict[str, Any], src: str) -> list[dict[str, Any]]:
        """Hosted actors: id, type, messages handled, handlers running, bindings."""
        return [
            {
                "id": actor_id,
                "type": hosted.actor.name,
                "handled": hosted.handled,
                "running": len(hosted.greenlets),
                "bindings": len(hosted.bindings),
            }
            for actor_id, hosted in hosted_actors(self.node)
        ]

    def _stats(self, args: dict[str, Any], src: str) -> dict[str, Any]:
        """The node's counters (``statistics()``), pid, uptime and each layer's share."""
        node = self.node
        me = node.nodes()[0]
        stats: dict[str, Any] = {
            "pid": os.getpid(),
            "uptime": me["uptime"],
            "hostname": node.name,
            "statistics": node.statistics(),
            "events": {"enabled": self.events.enabled, "subscribers": self.events.count()},
        }
        for part in self._parts["stats"]:
            stats.update(part())
        return stats

    # -- control --------------------------------------------------------------------

    def _shutdown(self, args: dict[str, Any], src: str) -> dict[str, str]:
        """Stop this node gracefully (a worker lets its running tasks finish first)."""
        gevent.spawn_later(SHUTDOWN_DELAY, self.on_shutdown)
        return {"ok": "shutting down"}

    def _enable_events(self, args: dict[str, Any], src: str) -> dict[str, str]:
        """Publish events (to those who subscribe; nothing is sent while nobody does)."""
        self.events.enable()
        return {"ok": "task events enabled"}

    def _disable_events(self, args: dict[str, Any], src: str) -> dict[str, str]:
        """Stop publishing events."""
        self.events.disable()
        return {"ok": "task events disabled"}

    def _events_subscribe(self, args: dict[str, Any], src: str) -> bool:
        """Push events to a sink actor: {"sink": [id, type, node], "types": [..] or None}."""
        return self.events.subscribe(args, src)

    def _events_unsubscribe(self, args: dict[str, Any], src: str) -> None:
        """Stop pushing events to a sink actor: {"sink": id}."""
        self.events.unsubscribe(str(args.get("sink", "")))


def _jobs(hosted: Hosted) -> list[tuple[str, float]]:
    """(method, started) of each handler running for a hosted actor."""
    jobs = (getattr(g, "zcell_job", None) for g in list(hosted.greenlets))
    return [job for job in jobs if job is not None]


def _handler_entry(
    actor_id: str, hosted: Hosted, job: tuple[str, float], now: float
) -> dict[str, Any]:
    method, started = job
    return {
        "kind": "actor",
        "id": actor_id,
        "type": hosted.actor.name,
        "name": f"{hosted.actor.name}.{method}",
        "method": method,
        "time_start": started,
        "runtime": max(0.0, now - started),
    }
