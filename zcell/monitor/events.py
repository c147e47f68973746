"""Events: a node publishes them only while someone subscribes.

Publisher side (`EventPublisher`, ``node.monitor.events``): off by default (on
with ``zcell worker -E`` or the ``enable_events`` operation). A subscriber hosts
a sink actor and asks each member to push events to it (``events_subscribe``);
the node then sends them in batches, fire and forget, to each sink. With no
subscriber, `EventPublisher.publish` returns before it builds anything, so
leaving events on costs nothing while nobody watches; ``statistics()`` counts
``events_published``. A subscriber whose node leaves the mesh (or whose sink
cannot be reached) is dropped.

Subscriber side (`EventStream`, ``app.events()``): a context manager whose
``next(timeout)`` waits a bounded time; it subscribes to every member, including
ones that join later, and unsubscribes when closed.

Every event carries Celery's ``type``, ``hostname``, ``timestamp``, ``clock``
(this node's event counter) and ``pid``.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import gevent

from ..actors.actor import Actor
from ..actors.proxy import ActorProxy
from ..errors import NodeStopped, ZcellError

if TYPE_CHECKING:
    from ..actors.hosting import Host, Hosted
    from ..node import Node

__all__ = ["EVENT_TYPES", "EventPublisher", "EventSink", "EventStream", "hosted_actors"]

log = logging.getLogger(__name__)

#: Every event type a node publishes: Celery's, then zcell's own.
EVENT_TYPES = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-revoked", "task-rejected",
    "worker-online", "worker-heartbeat", "worker-offline",
    "actor-spawned", "actor-stopped", "node-down",
)  # fmt: skip
#: Seconds events wait to be sent together (one message per sink per batch).
FLUSH_DELAY = 0.02
#: Seconds between ``worker-heartbeat`` events (Celery's default frequency is 2 s).
HEARTBEAT_EVERY = 2.0
#: Seconds between a stream's looks for members it has not subscribed to yet.
RESUBSCRIBE_EVERY = 0.5
#: Seconds a stream waits for a member to take its subscription.
SUBSCRIBE_TIMEOUT = 2.0
#: Events a stream keeps unread before it drops the oldest.
STREAM_BUFFER = 10_000
#: Seconds one step of ``for event in stream`` waits before it looks whether the
#: stream was closed.
ITER_WAIT = 0.2
#: The statistics() counter of events this node published.
PUBLISHED = "events_published"
#: The sink actor's type name.
SINK_TYPE = "zcell.monitor.sink"


class _Subscriber:
    __slots__ = ("sink", "types", "node_id")

    def __init__(self, sink: ActorProxy, types: frozenset[str] | None, node_id: str) -> None:
        self.sink = sink
        self.types = types
        self.node_id = node_id


class EventPublisher:
    """One node's events (see the module doc)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.enabled = False
        #: Event types published even while disabled (``task_send_sent_event``).
        self.allowed: set[str] = set()
        self.clock = 0
        self._subscribers: dict[str, _Subscriber] = {}
        self._buffer: list[dict[str, Any]] = []
        self._flushing = False
        self._beat: gevent.Greenlet | None = None
        self._members: dict[str, str] = {}  # id -> name, as last seen (node-down)
        #: The fields of ``worker-heartbeat`` (the task layer sets its own).
        self.heartbeat_fields: Callable[[], dict[str, Any]] = self._actor_load
        #: Streams received on this node, by sink actor id.
        self.streams: dict[str, EventStream] = {}
        node.stats.setdefault(PUBLISHED, 0)

    # -- on and off -------------------------------------------------------------------

    def enable(self) -> None:
        """Publish events from now on (to subscribers; from any thread)."""
        self.enabled = True
        self.node.submit(self._start_beat)

    def disable(self) -> None:
        """Publish nothing from now on."""
        self.enabled = False

    def count(self) -> int:
        """How many sinks subscribe here now."""
        return len(self._subscribers)

    def watched(self) -> bool:
        """Whether an event published now would go anywhere."""
        return self.enabled and bool(self._subscribers)

    def wants(self, type_: str) -> bool:
        """Whether an event of ``type_`` published now would go anywhere (also
        when only ``type_`` is allowed, as ``task-sent`` by ``task_send_sent_event``)."""
        return (self.enabled or type_ in self.allowed) and bool(self._subscribers)

    # -- publishing -------------------------------------------------------------------

    def publish(self, type_: str, **fields: Any) -> None:
        """Send an event of ``type_`` to the subscribers that want it (in a batch
        soon). Does nothing at all unless enabled and watched; never raises."""
        if not self.wants(type_):
            return
        self.clock += 1
        event = {
            "type": type_,
            "hostname": self.node.name,
            "timestamp": time.time(),
            "clock": self.clock,
            "pid": os.getpid(),
            **fields,
        }
        self._buffer.append(event)
        self.node.stats[PUBLISHED] += 1
        if not self._flushing:
            self._flushing = True
            try:
                self.node.submit(gevent.spawn_later, FLUSH_DELAY, self.flush)
            except ZcellError:  # the node stops: nobody will get it (never raise
                self._buffer.clear()  # into a task's hooks or a handler)
                self._flushing = False

    def flush(self) -> None:
        """Send what was published since the last flush, one batch per sink
        (loop thread; soon after a publish, or at once before the node stops)."""
        self._flushing = False
        batch, self._buffer = self._buffer, []
        for sink_id, sub in list(self._subscribers.items()):
            wanted = [e for e in batch if sub.types is None or e["type"] in sub.types]
            if not wanted:
                continue
            try:
                sub.sink.send("events", {"batch": wanted}, nowait=True)
            except ZcellError as exc:
                log.info("zcell: dropped event subscriber %s: %s", sink_id, exc)
                self._subscribers.pop(sink_id, None)

    # -- subscribers (control operations; loop thread) ---------------------------------

    def subscribe(self, args: dict[str, Any], src: str) -> bool:
        """Take a subscription; ``False`` when the arguments are malformed."""
        sink, types = args.get("sink"), args.get("types")
        if not (
            isinstance(sink, list) and len(sink) == 3 and all(isinstance(x, str) for x in sink)
        ):
            return False
        wanted = frozenset(str(t) for t in types) if isinstance(types, list) else None
        proxy = ActorProxy(self.node, sink[0], sink[1], sink[2], None)
        self._subscribers[sink[0]] = _Subscriber(proxy, wanted, sink[2])
        self._start_beat()
        self._heartbeat()  # the newcomer sees this node at once
        return True

    def unsubscribe(self, sink_id: str) -> None:
        """Drop a subscription (a no-op when unknown)."""
        self._subscribers.pop(sink_id, None)

    # -- heartbeats, node-down, gone subscribers (loop thread) -------------------------

    def _start_beat(self) -> None:
        if self.enabled and (self._beat is None or self._beat.dead):
            self._members = self._member_names()
            self._beat = gevent.spawn(self._beat_loop)

    def _beat_loop(self) -> None:
        while self.enabled:
            gevent.sleep(HEARTBEAT_EVERY)
            try:
                self._look_at_members()
                self._heartbeat()
            except NodeStopped:
                return

    def _heartbeat(self) -> None:
        if self.watched():
            self.publish("worker-heartbeat", freq=HEARTBEAT_EVERY, **self.heartbeat_fields())

    def _look_at_members(self) -> None:
        """Publish ``node-down`` for members gone since the last look, and drop
        the subscribers that lived on them."""
        now = self._member_names()
        for node_id, name in self._members.items():
            if node_id not in now:
                self.publish("node-down", node_id=node_id, node=name)
        self._members = now
        for sink_id, sub in list(self._subscribers.items()):
            if sub.node_id not in now:
                self._subscribers.pop(sink_id, None)

    def _member_names(self) -> dict[str, str]:
        return {n["id"]: n["name"] for n in self.node.nodes()}

    def _actor_load(self) -> dict[str, Any]:
        """A plain node's heartbeat: handlers running, messages handled, load average."""
        return {
            "active": self.node.hosting.in_flight,
            "processed": sum(h.handled for _, h in hosted_actors(self.node)),
            "loadavg": list(os.getloadavg()),
        }


class EventSink(Actor):
    """Receives a stream's events on the subscribing node."""

    name = SINK_TYPE

    class state:
        node: Any  # set by the hosting node before __init__
        actor: Any

        def events(self, batch: list[Any]) -> None:
            """A batch of events from one node."""
            stream = self.node.monitor.events.streams.get(self.actor.id)
            if stream is not None and isinstance(batch, list):
                stream.receive(batch)


class EventStream:
    """Events from every member of the mesh (see the module doc).

    Args:
        node: The started node to receive on (``app.events()`` uses the app's).
        types: Event types to receive (default: all).
        buffer: Most events kept unread; beyond it the oldest are dropped
            (counted in ``dropped``).
    """

    def __init__(
        self, node: Node, types: Iterable[str] | None = None, buffer: int = STREAM_BUFFER
    ) -> None:
        self.node = node
        self.types = sorted(types) if types is not None else None
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(buffer)
        self._sink: ActorProxy | None = None
        self._subscribed: set[str] = set()
        self._loop: gevent.Greenlet | None = None
        self.closed = False

    def __enter__(self) -> EventStream:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> EventStream:
        """Host the sink here and start subscribing to every member."""
        node = self.node
        node.register(EventSink)
        self._sink = node.spawn(EventSink, on=node.id)
        node.monitor.events.streams[self._sink.id] = self
        self._loop = node.call_in_loop(gevent.spawn, self._subscribe_loop)
        return self

    def close(self) -> None:
        """Unsubscribe everywhere and remove the sink (idempotent)."""
        if self.closed or self._sink is None:
            self.closed = True
            return
        self.closed = True
        sink = self._sink
        try:
            self.node.call_in_loop(self._unsubscribe_all, sink.id)
            self.node.kill(sink)
        except ZcellError as exc:  # the node stopped first: nothing left to undo
            log.debug("zcell: event stream closed after its node: %s", exc)
        self.node.monitor.events.streams.pop(sink.id, None)

    def _unsubscribe_all(self, sink_id: str) -> None:
        if self._loop is not None:
            self._loop.kill(block=False)
        for node_id in self._subscribed:
            self.node.ctrl_async(node_id, "events_unsubscribe", {"sink": sink_id}, 1.0)

    def _subscribe_loop(self) -> None:
        """Subscribe to each member not subscribed to yet, now and every so often."""
        while not self.closed:
            live = {n["id"] for n in self.node.nodes()}
            self._subscribed &= live
            for node_id in live - self._subscribed:
                self._subscribed.add(node_id)
                gevent.spawn(self._subscribe_to, node_id)
            gevent.sleep(RESUBSCRIBE_EVERY)

    def _subscribe_to(self, node_id: str) -> None:
        assert self._sink is not None
        sink = self._sink
        args = {"sink": [sink.id, sink.name, sink.node_id], "types": self.types}
        try:
            self.node.ctrl_async(node_id, "events_subscribe", args, SUBSCRIBE_TIMEOUT).get()
        except ZcellError as exc:  # asked again next round, while it is a member
            self._subscribed.discard(node_id)
            log.debug("zcell: could not subscribe to events of %s: %s", node_id, exc)

    def receive(self, batch: list[Any]) -> None:
        """(The sink) keep a batch of events, dropping the oldest when full."""
        for event in batch:
            if not isinstance(event, dict):
                continue
            while True:
                try:
                    self._queue.put_nowait(event)
                    break
                except queue.Full:
                    self.dropped += 1
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    def next(self, timeout: float | None = 1.0) -> dict[str, Any] | None:
        """The next event, or ``None`` when none came within ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Events as they come, until the stream is closed."""
        while not self.closed:
            event = self.next(ITER_WAIT)
            if event is not None:
                yield event


def hosted_actors(node: Node) -> list[tuple[str, Hosted]]:
    """(id, book-keeping) of each actor the node hosts (a snapshot)."""
    return list(cast("Host", node.hosting).actors.items())
