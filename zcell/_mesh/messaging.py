"""Sending: requests, replies, scatters and control calls.

How a frame leaves depends on who sends it: a greenlet of the node's loop sends
directly on the peer's DEALER; a plain program thread uses its own port
(``threadport.py``); any other thread (another hub's handler) hands the frame to
the destination's outbound queue (``outbound.py``). Replies come back to the
inbox, where ``PendingCalls.on_reply`` (``result.py``) completes the pending
``AsyncResult``/``ScatterResult`` by request id, or, for a program thread's
``send`` and ``call``, straight back on its port.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent import getcurrent
from gevent.hub import _get_hub

from .. import _wire as wire
from .._transport.loop import hub_here, real_lock, thread_ident
from .._transport.sockets import Socket, TransportClosed
from .._wire import (
    CTRL,
    F_DIRECT,
    F_EMIT,
    F_NOWAIT,
    F_THROW,
    OK,
    P_STATUS,
    PROTOCOL_VERSION,
    REP,
    REQ,
    SCATTER,
    ZERROR,
)
from ..errors import (
    NodeDown,
    NoSuchActor,
    SerializationError,
    ZcellError,
)
from .context import DEFAULT_TIMEOUT, current_context
from .outbound import Outbound
from .result import AsyncResult, ScatterResult, Then, error_from_reply
from .threadport import NOTIFY_DOWN, NOTIFY_STOP, NodeLinks, ThreadPort, free_closed_subscribers

if TYPE_CHECKING:
    from ..actors.proxy import ActorProxy
    from .state import Shared

__all__ = ["Messaging"]

# What a thread port counts -> the node's statistics() key.
_PORT_COUNTERS = (
    ("sent", "messages_out"),
    ("received", "messages_in"),
    ("late", "late_replies"),
    ("dropped", "dropped_bad_frames"),
)
_REAP_AGAIN = 0.25  # seconds before an ended thread's port with calls waiting is tried again


def _add_port_counters(stats: dict[str, int], ports: list[ThreadPort]) -> None:
    """Add what ports counted (in their threads) to ``stats``."""
    for port in ports:
        for attr, key in _PORT_COUNTERS:
            stats[key] += getattr(port, attr)


class _ThreadEnd:
    """Kept in a thread's locals next to its port: collected when the thread ends."""

    __slots__ = ("__weakref__",)


def _port_thread_ended(ref: weakref.ref[ThreadPort]) -> None:
    port = ref()
    if port is not None:
        port.ended = True
        port.links.thread_ended()


log = logging.getLogger(__name__)
PROTOCOL = PROTOCOL_VERSION


class Messaging:
    """Getting frames out and replies back (see module doc), for one node.

    It owns the request ids, the queues to other hubs' threads (``Outbound``)
    and the program threads' ports; it reads the members (``Roster``) and
    writes the pending calls (``PendingCalls``) it is given.
    """

    def __init__(
        self,
        shared: Shared,
        *,
        make_proxy: Callable[[str, str, str], ActorProxy],
        on_frame: Callable[[bytes], None],
        check_running: Callable[[bool], None],
        max_message_size: int,
    ) -> None:
        # Copied to attributes of its own: they are read on every send.
        self._id, self._boot, self._name = shared.node_id, shared.boot, shared.name
        self._roster = shared.roster
        self._members = shared.roster.members
        self._pending = shared.pending
        self._table = shared.pending.table  # read here; written by PendingCalls.add
        self._stats, self._sockets, self._life = shared.stats, shared.sockets, shared.life
        self._loop, self._codec, self._directory = shared.loop, shared.codec, shared.directory
        self._make_proxy = make_proxy
        self._on_frame = on_frame  # a frame to this node itself is received at once
        self._check_running = check_running
        self._max_message_size = max_message_size
        self.notify_endpoint = f"inproc://zcell-notify-{self._id}"
        # Request ids start at a random point: no stranger can guess a pending one
        # (and replies are matched on the node asked as well: PendingCalls.on_reply).
        self._req_ids = itertools.count(int.from_bytes(os.urandom(5), "big") << 8)
        self._chains = itertools.count(int.from_bytes(os.urandom(4), "big") << 20)
        self._outbound: dict[str, Outbound] = {}
        self._thread_codecs = threading.local()
        self._thread_ports = threading.local()
        #: The program threads' ports (guarded by ``ports_lock``).
        self.ports: list[ThreadPort] = []
        self.ports_lock = real_lock()
        self._reap_scheduled = False  # a retry of _reap_ports is due
        # Frames held to leave together (``corked``, ``reply``): the greenlet
        # whose sends are held, and the DEALERs holding frames to flush.
        self._corked: Any = None
        self._held: list[Socket] = []

    def send_frame(
        self,
        node_id: str,
        frame: bytes,
        deadline: float | None,
        callback: bool = False,
        soon: bool = False,
    ) -> bool:
        """Deliver one encoded frame to a node's inbox (in the loop thread).

        With ``callback=True`` (inside a hub callback) it never waits: it returns
        False when the frame must be sent from a greenlet instead. With
        ``soon=True``, or from a greenlet in ``corked()``, the frame leaves with
        the others held for that node, before the loop next blocks (while that
        node pushes back it waits in line instead, as a plain send does).
        """
        if node_id == self._id:
            self._stats["messages_out"] += 1
            self._on_frame(frame)
            return True
        member = self._members.get(node_id)
        if member is None or member.dealer is None:
            raise NodeDown(f"node {node_id} is not (or no longer) in the mesh")
        try:
            if soon or (self._corked is not None and self._corked is getcurrent()):
                if member.dealer.send_soon(frame, deadline):
                    if not self._held:  # gone by the time the loop blocks, at the latest
                        self._loop.hub.loop.run_callback(self._flush_held)
                    self._held.append(member.dealer)
            elif callback:
                if not member.dealer.try_send(frame):
                    return False
            else:
                member.dealer.send(frame, deadline)
        except TransportClosed:
            raise NodeDown(f"node {member.name} left while sending") from None
        self._stats["messages_out"] += 1
        return True

    def publish(self, message: list[Any], timeout: float = 5.0) -> None:
        """Publish a message on our XPUB to every member's SUB."""
        pub = self._sockets.pub
        assert pub is not None  # the node runs
        pub.send(self._codec.encode(message), time.monotonic() + timeout)

    def send_message(self, node_id: str, message: list[Any], deadline: float) -> None:
        """(The loop) encode a message and send it to a member, waiting until ``deadline``."""
        self.send_frame(node_id, self._codec.encode(message), deadline)

    def encode(self, message: list[Any]) -> bytes:
        if self._loop.in_loop():
            return self._codec.encode(message)
        return self._thread_codec().encode(message)

    def _thread_codec(self) -> wire.Codec:
        """The shared packer belongs to the loop thread; other threads have their own."""
        codec = getattr(self._thread_codecs, "codec", None)
        if codec is None:
            codec = self._thread_codecs.codec = wire.Codec(self._make_proxy, self._max_message_size)
        return codec

    def _port(self) -> ThreadPort:
        """This thread's port to the mesh (created on first use, freed when the
        thread ends: its sockets are file descriptors)."""
        port = getattr(self._thread_ports, "port", None)
        if port is None:
            port = self._thread_ports.port = ThreadPort(self.port_links())
            # The thread's locals go when it ends, and with them this keeper.
            keeper = self._thread_ports.keeper = _ThreadEnd()
            weakref.finalize(keeper, _port_thread_ended, weakref.ref(port)).atexit = False
            with self.ports_lock:
                self.ports.append(port)
        return port

    def port_links(self) -> NodeLinks:
        """What a new port needs from this node (``threadport.py:NodeLinks``)."""
        ctx = self._sockets.ctx
        assert ctx is not None  # ports are made while the node runs
        return NodeLinks(
            name=self._name,
            ctx=ctx,
            notify_endpoint=self.notify_endpoint,
            members=self._members,
            pending=self._table,
            stats=self._stats,
            loop=self._loop,
            codec=self._codec,
            thread_codec=self._thread_codec,
            routing_id=self._roster.routing_id,
            complete_call=self._pending.complete_call,
            node_label=self._roster.label,
            thread_ended=self._port_ended,
        )

    def _port_ended(self) -> None:
        """(The ending thread) have the loop free the ports of ended threads."""
        if self._life.state == "running":
            self._loop.submit(self._reap_ports)

    def _reap_ports(self) -> None:
        """(Loop) Free the ports of threads that have ended; those whose calls
        still wait for replies are tried again a little later."""
        self._reap_scheduled = False
        if self._life.state != "running":
            return  # stopping closes every port
        with self.ports_lock:
            ended = [port for port in self.ports if port.ended]
        if not ended:
            return
        # Those closed on earlier rounds are done closing by now.
        assert self._sockets.notify is not None  # the node runs
        free_closed_subscribers(self._sockets.notify)
        waiting = False
        for port in ended:
            if not port.retire():
                waiting = True
                continue
            with self.ports_lock:
                if port in self.ports:
                    self.ports.remove(port)
                    _add_port_counters(self._stats, [port])
        if waiting and not self._reap_scheduled and self._life.state == "running":
            self._reap_scheduled = True
            gevent.spawn_later(_REAP_AGAIN, self._reap_ports)

    def add_port_counters(self, stats: dict[str, int]) -> None:
        """Add what the live ports counted (in their threads) to ``stats``."""
        with self.ports_lock:  # a freed port's counts move into the node's stats under it
            _add_port_counters(stats, self.ports)

    def deliver(
        self,
        mode: str,
        ref: ActorProxy,
        method: str,
        kwargs: dict[str, Any],
        options: dict[str, Any],
        origin: ActorProxy | None = None,
    ) -> Any:
        """Carry out a proxy primitive (send/call/throw/scatter/emit).

        This is the hot path of every message: keep it lean.
        """
        if self._life.state != "running":
            self._check_running(True)
        if options:
            nowait = bool(options.get("nowait", False)) or mode == "emit"
            timeout = options.get("timeout")
        else:
            nowait = mode == "emit"
            timeout = None
        if timeout is None:
            cls = ref._cls
            timeout = cls.default_timeout if cls is not None else DEFAULT_TIMEOUT
        in_loop = thread_ident() == self._loop.ident
        if not in_loop and (mode == "send" or mode == "call" or mode == "emit"):
            port = self._own_port(ref.node_id)
            if port is not None:
                return self._deliver_port(port, mode, ref, method, kwargs, nowait, timeout, origin)
        ctx = current_context() if in_loop else None
        now = time.monotonic()
        deadline = now + timeout
        if ctx is not None:
            if ctx.deadline is not None and ctx.deadline < deadline:
                deadline = ctx.deadline
            chain = ctx.chain
            if origin is None:
                origin = ctx.actor.ref
        else:
            chain = next(self._chains)
        ttl = max(0, int((deadline - now) * 1000))
        rid = next(self._req_ids)
        flags = (F_NOWAIT if nowait else 0) | (F_EMIT if mode == "emit" else 0)

        if mode == "scatter":
            return self._scatter(
                ref.name, method, kwargs, options, rid, chain, ttl, deadline, flags, origin, in_loop
            )
        target_id, node_id, seen = ref.id, ref.node_id, None
        if mode == "throw":
            flags |= F_THROW
            picked = self._pick(ref.name)
            if picked is None:
                raise NoSuchActor(
                    f"no actor of type {ref.name} in the mesh; spawn one (node.spawn) or "
                    "wait for one (node.wait_for(type=...))"
                )
            target_id, node_id = picked
            seen = [target_id]
        frame = self._request_frame(
            REQ, rid, chain, ttl, target_id, method, kwargs, flags, origin, seen
        )
        if nowait:
            self._send_one(node_id, frame, deadline, in_loop)
            return None
        if mode == "throw":
            self._pending.add_throw(rid)
        result = self._request(node_id, frame, deadline, rid, in_loop)
        if mode == "call":
            return result
        return result.get()

    def _deliver_port(
        self,
        port: ThreadPort,
        mode: str,
        ref: ActorProxy,
        method: str,
        kwargs: dict[str, Any],
        nowait: bool,
        timeout: float,
        origin: ActorProxy | None,
    ) -> Any:
        """``send``/``call``/``emit`` from a plain program thread, on its own port
        (the hot path of a program: no message context, no routing)."""
        deadline = time.monotonic() + timeout
        rid = next(self._req_ids)
        if nowait:
            flags = F_NOWAIT | F_EMIT if mode == "emit" else F_NOWAIT
        else:
            flags = F_DIRECT  # the reply comes straight back on the port
        node_id = ref.node_id
        frame = port.encode(
            [PROTOCOL, REQ, rid, self._id, self._boot, next(self._chains), max(0, int(timeout * 1000)),
             ref.id, method, kwargs, flags, origin, None]
        )  # fmt: skip
        if nowait:
            port.send(node_id, frame, deadline, None)
            return None
        if mode == "send":
            return self._direct_result(port.send(node_id, frame, deadline, rid))
        result = AsyncResult(rid, deadline, self._cancel_pending, port, self._roster.label(node_id))
        self._pending.add(rid, result, node_id, deadline)
        try:
            port.call(node_id, frame, deadline, result)
        except ZcellError as exc:
            self._pending.fail(rid, result, exc)
        return result

    def _own_port(self, node_id: str) -> ThreadPort | None:
        """This (non-loop) thread's port, when it may use one: a plain thread, a
        remote node."""
        if node_id == self._id:
            return None
        port = getattr(self._thread_ports, "port", None)
        if port is None:
            return None if hub_here() is not None else self._port()
        # A thread with a port may have started a gevent hub since: check (cheap).
        return port if _get_hub() is None or hub_here() is None else None

    def _send_one(self, node_id: str, frame: bytes, deadline: float, in_loop: bool) -> None:
        """Send a frame from whichever thread we are in (see the module doc)."""
        if in_loop:
            self.send_frame(node_id, frame, deadline)
            return
        port = self._own_port(node_id)
        if port is not None:
            port.send(node_id, frame, deadline, None)
        else:
            self._outbound_to(node_id).put(frame, deadline, None)

    def _direct_result(self, msg: list[Any] | None) -> Any:
        assert msg is not None
        status = msg[P_STATUS]
        value = msg[5] if len(msg) > 5 else None
        if status == OK:
            return value
        raise error_from_reply(status, value)

    def _request_frame(
        self,
        kind: int,
        rid: int,
        chain: int,
        ttl: int | None,
        target: str,
        method: str,
        kwargs: dict[str, Any],
        flags: int,
        origin: ActorProxy | None,
        seen: list[str] | None,
    ) -> bytes:
        """Encode a REQ or SCATTER from this node (layout: docs/protocol.md §3.1)."""
        message = [
            PROTOCOL,
            kind,
            rid,
            self._id,
            self._boot,
            chain,
            ttl,
            target,
            method,
            kwargs,
            flags,
        ]
        message += [origin, seen]
        return self.encode(message)

    def _pick(self, type_name: str) -> tuple[str, str] | None:
        """The actor a throw goes to: round-robin, not on a leaving node if possible."""
        # May run in a program thread: copy before iterating (the loop mutates).
        leaving = {m.id for m in list(self._members.values()) if m.leaving}
        return self._directory.next_of_type(type_name, avoid=leaving)

    def _request(
        self, node_id: str, frame: bytes, deadline: float, rid: int, in_loop: bool
    ) -> AsyncResult:
        """Register a pending reply and send the request frame."""
        result = AsyncResult(rid, deadline, self._cancel_pending, None, self._roster.label(node_id))
        self._pending.add(rid, result, node_id, deadline)
        try:
            port = None if in_loop else self._own_port(node_id)
            if in_loop:
                self.send_frame(node_id, frame, deadline)
            elif port is not None:
                port.send(node_id, frame, deadline, None)  # the reply comes to the inbox
            else:
                self._outbound_to(node_id).put(frame, deadline, rid)
        except ZcellError as exc:
            self._pending.fail(rid, result, exc)
        return result

    def _outbound_to(self, node_id: str) -> Outbound:
        """The queue for frames from the program's threads to ``node_id``."""
        out = self._outbound.get(node_id)
        if out is None:
            if node_id != self._id and node_id not in self._members:
                raise NodeDown(f"node {node_id} is not (or no longer) in the mesh")
            out = self._outbound.setdefault(
                node_id,
                Outbound(
                    node_id,
                    self.send_frame,
                    self._send_failed,
                    self._loop.submit,
                    try_send=self._try_send_frame,
                ),
            )
        return out

    def _try_send_frame(self, node_id: str, frame: bytes) -> bool:
        """Send without waiting (safe in a hub callback); False when it would wait."""
        if node_id == self._id:
            return False  # local delivery runs handlers: do it from a greenlet
        return self.send_frame(node_id, frame, None, callback=True)

    def _send_failed(self, rid: int | None, exc: ZcellError) -> None:
        if rid is None:
            self._stats["send_failures"] += 1
            log.warning("zcell: a fire-and-forget message was not sent: %s", exc)
            return
        entry = self._table.get(rid)
        if entry is not None:
            self._pending.fail(rid, entry[0], exc)

    def _cancel_pending(self, rid: int) -> None:
        if self._loop.in_loop():
            self._pending.forget(rid)
        elif self._life.state == "running":
            self._loop.submit(self._cancel_pending, rid)

    def _scatter(
        self,
        type_name: str,
        method: str,
        kwargs: dict[str, Any],
        options: dict[str, Any],
        rid: int,
        chain: int,
        ttl: int,
        deadline: float,
        flags: int,
        origin: ActorProxy | None,
        in_loop: bool,
    ) -> ScatterResult | None:
        limit = options.get("limit")
        propagate = options.get("propagate", True)
        frame = self._request_frame(
            SCATTER, rid, chain, ttl, type_name, method, kwargs, flags, origin, None
        )
        nowait = bool(flags & F_NOWAIT)
        box: list[ScatterResult | None] = [None]

        def send() -> None:
            expected = dict(self._directory.of_type(type_name))
            if not nowait:
                result = ScatterResult(
                    rid, expected, deadline, limit, propagate, self._cancel_pending
                )
                box[0] = result
                if not expected:
                    return
                self._pending.add(rid, result, "", deadline)
            nodes = set(expected.values())
            direct = [n for n in nodes if n == self._id or not self._subscribed_member(n)]
            # Sending may wait (a slow subscriber, a peer not connected yet, one
            # that just died): never make the caller wait for it.
            gevent.spawn(
                self._scatter_out, frame, deadline, direct, len(direct) < len(nodes), box[0]
            )

        # The hop to the loop counts against the scatter's own deadline.
        if self._loop.in_loop():
            send()
        else:
            self._loop.call(send, timeout=max(0.0, deadline - time.monotonic()))
        return box[0]

    def _scatter_out(
        self,
        frame: bytes,
        deadline: float,
        direct: list[str],
        publish: bool,
        result: ScatterResult | None,
    ) -> None:
        if publish:
            try:
                pub = self._sockets.pub
                assert pub is not None  # the node runs
                pub.send(frame, deadline)
            except ZcellError as exc:
                log.warning("zcell: scatter not published: %s", exc)
        for node_id in direct:
            try:
                self.send_frame(node_id, frame, deadline)
            except ZcellError as exc:
                log.debug("zcell: scatter to %s failed: %s", node_id, exc)
                if result is not None:
                    self._pending.unreachable(result, node_id)

    def _subscribed_member(self, node_id: str) -> bool:
        member = self._members.get(node_id)
        return member is not None and member.subscribed

    def ctrl(self, node_id: str, op: str, args: dict[str, Any], timeout: float) -> Any:
        """A control call to a node (spawn, kill, bind, unbind, snapshot)."""
        return self.ctrl_async(node_id, op, args, timeout).get()

    def ctrl_async(
        self, node_id: str, op: str, args: dict[str, Any], timeout: float
    ) -> AsyncResult:
        rid = next(self._req_ids)
        deadline = time.monotonic() + timeout
        frame = self.encode(
            [PROTOCOL, CTRL, rid, self._id, self._boot, int(timeout * 1000), op, args]
        )
        return self._request(node_id, frame, deadline, rid, self._loop.in_loop())

    def call_then(
        self,
        ref: ActorProxy,
        method: str,
        kwargs: dict[str, Any],
        then: Callable[[Any, BaseException | None], None],
    ) -> None:
        """(The loop) call ``ref.method(**kwargs)`` with no deadline; its outcome
        runs ``then(value, error)`` in the loop, once (``Then``).

        For the loop's own bookkeeping of many calls (the task dispatcher's
        pushes): no ``AsyncResult``, no message context (a chain of its own).

        Raises:
            NodeStopped: this node does not run.
            NodeDown: the actor's node is not (or no longer) a member; nothing was sent.
            SerializationError: ``kwargs`` cannot travel.
        """
        if self._life.state != "running":
            self._check_running(True)
        rid = next(self._req_ids)
        frame = self.encode(
            [PROTOCOL, REQ, rid, self._id, self._boot, next(self._chains), None,
             ref.id, method, kwargs, 0, None, None]
        )  # fmt: skip
        node_id = ref.node_id
        # Awaited before it leaves: a frame for this node itself is answered at once.
        self._pending.add(rid, Then(rid, then), node_id, None)
        try:
            self.send_frame(node_id, frame, None)
        except BaseException:
            self._pending.forget(rid)
            raise

    def node_down(self, node_id: str, error: ZcellError) -> None:
        """A member went down: fail what was being sent or awaited from it."""
        out = self._outbound.pop(node_id, None)
        if out is not None:
            out.close(error)
        # Replies already at a program thread's port complete their calls first.
        with self.ports_lock:
            ports = list(self.ports)
        busy: set[object] = {port for port in ports if not port.read_replies_of(node_id, error)}
        self._pending.node_down(node_id, error, busy)
        # After failing them: a thread woken by this news finds its results failed.
        assert self._sockets.notify is not None  # the node runs
        self._sockets.notify.send(NOTIFY_DOWN + node_id.encode())

    def close(self, error: ZcellError) -> None:
        """(The node stops) close the ports and queues, fail every pending call."""
        self._close_ports()
        for out in list(self._outbound.values()):
            out.close(error)
        self._pending.fail_all(error)

    def _close_ports(self) -> None:
        """Close the program threads' ports (waiting briefly for those inside a call)."""
        notify = self._sockets.notify
        if notify is None:
            return
        notify.send(NOTIFY_STOP)
        with self.ports_lock:
            ports = list(self.ports)
            self.ports.clear()
        busy = [port for port in ports if not port.close()]
        deadline = time.monotonic() + 2.0
        while busy and time.monotonic() < deadline:
            gevent.sleep(0.01)
            busy = [port for port in busy if port.busy]
        notify.close(linger=0)

    def flush_replies(self) -> None:
        """Send the replies coalesced so far (see ``reply``)."""
        inbox = self._sockets.inbox
        assert inbox is not None  # replies are sent while the node runs
        inbox.flush_coalesced()
        if self._held:
            self._flush_held()

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for dealer in held:
            dealer.flush_soon()

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """(The loop) hold what this greenlet sends to other nodes to leave
        together: a few frames a message, the rest when the block ends
        (``Socket.send_soon``).

        For a burst of requests (the task dispatcher's pushes of one round): the
        peer reads them in few wake-ups. A send to a peer that pushes back waits
        in line, as a plain send does; a frame for a node that leaves meanwhile
        is lost with it, and its call fails as every call to that node does.
        """
        if self._corked is not None:  # already held (or another greenlet's): as usual
            yield
            return
        self._corked = getcurrent()
        try:
            yield
        finally:
            self._corked = None
            self._flush_held()

    def reply(
        self,
        node_id: str,
        rid: int,
        status: int,
        value: Any,
        ttl: int | None,
        actor_id: str | None = None,
        routing: bytes | None = None,
    ) -> None:
        """Send a reply to a caller's inbox (or complete it here for local callers).

        ``routing``: reply through our inbox ROUTER on the connection the request
        came on (a program thread's port waits there).

        ``actor_id`` marks a scatter reply: its value travels as [actor_id, value].
        """
        try:
            payload = value if actor_id is None else [actor_id, value]
            frame = self._codec.encode([PROTOCOL, REP, rid, self._id, status, payload])
        except SerializationError as exc:
            error: Any = ["SerializationError", f"the handler's return value cannot travel: {exc}"]
            payload = error if actor_id is None else [actor_id, error]
            frame = self._codec.encode([PROTOCOL, REP, rid, self._id, ZERROR, payload])
        if routing is not None:
            # Coalesced with the other replies to that connection in this loop
            # iteration (the port reads them as consecutive frames).
            inbox = self._sockets.inbox
            assert inbox is not None  # the node runs
            inbox.send_coalesced(routing, frame)
            self._stats["messages_out"] += 1
            return
        deadline = time.monotonic() + (ttl / 1000 if ttl else 5.0)
        try:
            # From the loop, coalesced with this iteration's other frames to
            # that node (the caller's node reads them in one wake-up).
            self.send_frame(node_id, frame, deadline, soon=self._loop.in_loop())
        except ZcellError as exc:
            log.debug("zcell: reply %s to %s lost: %s", rid, node_id, exc)
