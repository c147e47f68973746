"""Sending: requests, replies, scatters and control calls.

How a frame leaves depends on who sends it: a greenlet of the node's loop sends
directly on the peer's DEALER; a plain program thread uses its own port
(``threadport.py``); any other thread (another hub's handler) hands the frame to
the destination's outbound queue (``outbound.py``). Replies come back to the
inbox and complete the pending ``AsyncResult``/``ScatterResult`` by request id,
or, for a program thread's ``send`` and ``call``, straight back on its port.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.hub import _get_hub

from .. import _wire as wire
from .._transport.loop import hub_here, thread_ident
from .._transport.sockets import TransportClosed
from .._wire import (
    C_ARGS,
    C_ID,
    C_OP,
    C_SRC,
    C_TTL,
    CTRL,
    ERROR,
    F_DIRECT,
    F_EMIT,
    F_NOWAIT,
    F_THROW,
    OK,
    P_ID,
    P_SRC,
    P_STATUS,
    PROTOCOL_VERSION,
    REP,
    REQ,
    SCATTER,
    ZERROR,
)
from ..errors import (
    ActorStopped,
    CallTimeout,
    NodeDown,
    NodeStopped,
    NoNodeForType,
    NoSuchActor,
    NoSuchMethod,
    RemoteError,
    SerializationError,
    ZcellError,
    error_from_wire,
)
from .context import DEFAULT_TIMEOUT, current_context
from .outbound import Outbound
from .result import AsyncResult, ScatterResult
from .threadport import NodeLinks, ThreadPort, free_closed_subscribers

__all__ = ["Messaging", "zcell_error"]


_ZERRORS: dict[str, type[ZcellError]] = {
    cls.__name__: cls
    for cls in (
        NoSuchActor,
        NoSuchMethod,
        ActorStopped,
        NoNodeForType,
        SerializationError,
        CallTimeout,
        NodeStopped,
        ZcellError,
    )
}


def zcell_error(value: Any) -> ZcellError:
    """Rebuild a zcell error sent as [class name, message]."""
    if isinstance(value, list) and len(value) == 2:
        cls = _ZERRORS.get(str(value[0]), ZcellError)
        return cls(str(value[1]))
    return ZcellError(str(value))


if TYPE_CHECKING:
    import itertools
    import threading

    from .._transport.loop import LoopThread
    from .._transport.sockets import Context, Socket
    from ..actors.proxy import ActorProxy
    from ..control.registry import ControlRegistry
    from .directory import Directory, Member
    from .plug import Hosting

# What a thread port counts -> the node's statistics() key.
_PORT_COUNTERS = (
    ("sent", "messages_out"),
    ("received", "messages_in"),
    ("late", "late_replies"),
    ("dropped", "dropped_bad_frames"),
)
_REAP_AGAIN = 0.25  # seconds before an ended thread's port with calls waiting is tried again


class _ThreadEnd:
    """Kept in a thread's locals next to its port: collected when the thread ends."""

    __slots__ = ("__weakref__",)


def _port_thread_ended(ref: weakref.ref[ThreadPort]) -> None:
    port = ref()
    if port is not None:
        port.ended = True
        port._links.thread_ended()


log = logging.getLogger(__name__)
V = PROTOCOL_VERSION


class Messaging:
    """Node mixin: getting frames out and replies back (see module doc)."""

    # Provided by Node (declared here for type checkers).
    _chains: itertools.count[int]
    _ctx: Context | None
    _notify_endpoint: str
    _routing_id: Callable[[str], bytes]  # a Membership method
    name: str
    _check_running: Callable[..., None]  # a Node method
    _codec: wire.Codec
    _inbox: Socket
    _loop: LoopThread
    _make_proxy: Callable[[str, str, str], ActorProxy]  # a Node method
    _members: dict[str, Member]
    _node_label: Callable[[str], str]  # a Node method
    _on_frame: Callable[..., None]  # a Node method
    _outbound: dict[str, Outbound]
    _pending: dict[int, tuple[Any, str, float | None]]
    _ports: list[ThreadPort]
    _ports_lock: Any
    _pub: Socket
    _req_ids: itertools.count[int]
    _sender: Callable[[bytes | None, Member | None], Member | None]  # a Membership method
    _throws: set[int]
    _run: Callable[..., Any]  # a Node method
    _state: str
    _thread_codecs: threading.local
    _thread_ports: threading.local
    boot: str
    control: ControlRegistry
    directory: Directory
    host_: Hosting
    id: str
    max_message_size: int
    stats: dict[str, int]
    _notify_pub: Any  # a plain zmq PUB (None until the node starts)
    _reap_scheduled = False  # a retry of _reap_ports is due

    def _send_frame(
        self, node_id: str, frame: bytes, deadline: float | None, callback: bool = False
    ) -> bool:
        """Deliver one encoded frame to a node's inbox (in the loop thread).

        With ``callback=True`` (inside a hub callback) it never waits: it returns
        False when the frame must be sent from a greenlet instead.
        """
        if node_id == self.id:
            self.stats["messages_out"] += 1
            self._on_frame(frame)
            return True
        member = self._members.get(node_id)
        if member is None or member.dealer is None:
            raise NodeDown(f"node {node_id} is not (or no longer) in the mesh")
        try:
            if callback:
                if not member.dealer.try_send(frame):
                    return False
            else:
                member.dealer.send(frame, deadline)
        except TransportClosed:
            raise NodeDown(f"node {member.name} left while sending") from None
        self.stats["messages_out"] += 1
        return True

    def _publish(self, message: list[Any], timeout: float = 5.0) -> None:
        self._pub.send(self._codec.encode(message), time.monotonic() + timeout)

    def _send_message(self, node_id: str, message: list[Any], deadline: float) -> None:
        """(The loop) encode a message and send it to a member, waiting until ``deadline``."""
        self._send_frame(node_id, self._codec.encode(message), deadline)

    def _encode(self, message: list[Any]) -> bytes:
        if self._loop.in_loop():
            return self._codec.encode(message)
        return self._thread_codec().encode(message)

    def _thread_codec(self) -> wire.Codec:
        """The shared packer belongs to the loop thread; other threads have their own."""
        codec = getattr(self._thread_codecs, "codec", None)
        if codec is None:
            codec = self._thread_codecs.codec = wire.Codec(self._make_proxy, self.max_message_size)
        return codec

    def _port(self) -> ThreadPort:
        """This thread's port to the mesh (created on first use, freed when the
        thread ends: its sockets are file descriptors)."""
        port = getattr(self._thread_ports, "port", None)
        if port is None:
            port = self._thread_ports.port = ThreadPort(self._port_links())
            # The thread's locals go when it ends, and with them this keeper.
            keeper = self._thread_ports.keeper = _ThreadEnd()
            weakref.finalize(keeper, _port_thread_ended, weakref.ref(port)).atexit = False
            with self._ports_lock:
                self._ports.append(port)
        return port

    def _port_links(self) -> NodeLinks:
        """What a new port needs from this node (``threadport.py:NodeLinks``)."""
        assert self._ctx is not None  # ports are made while the node runs
        return NodeLinks(
            name=self.name,
            ctx=self._ctx,
            notify_endpoint=self._notify_endpoint,
            members=self._members,
            pending=self._pending,
            stats=self.stats,
            loop=self._loop,
            codec=self._codec,
            thread_codec=self._thread_codec,
            routing_id=self._routing_id,
            complete_call=self._complete_call,
            node_label=self._node_label,
            thread_ended=self._port_ended,
        )

    def _port_ended(self) -> None:
        """(The ending thread) have the loop free the ports of ended threads."""
        if self._state == "running":
            self._loop.submit(self._reap_ports)

    def _reap_ports(self) -> None:
        """(Loop) Free the ports of threads that have ended; those whose calls
        still wait for replies are tried again a little later."""
        self._reap_scheduled = False
        if self._state != "running":
            return  # stopping closes every port
        with self._ports_lock:
            ended = [port for port in self._ports if port.ended]
        if not ended:
            return
        # Those closed on earlier rounds are done closing by now.
        free_closed_subscribers(self._notify_pub)
        waiting = False
        for port in ended:
            if not port.retire():
                waiting = True
                continue
            with self._ports_lock:
                if port in self._ports:
                    self._ports.remove(port)
                    self._add_port_counters(self.stats, [port])
        if waiting and not self._reap_scheduled and self._state == "running":
            self._reap_scheduled = True
            gevent.spawn_later(_REAP_AGAIN, self._reap_ports)

    @staticmethod
    def _add_port_counters(stats: dict[str, int], ports: list[ThreadPort]) -> None:
        """Add what ports counted (in their threads) to ``stats``."""
        for port in ports:
            for attr, key in _PORT_COUNTERS:
                stats[key] += getattr(port, attr)

    def _deliver(
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
        if self._state != "running":
            self._check_running(nested=True)
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
            self._throws.add(rid)  # declined, it may be answered by another member
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
            [V, REQ, rid, self.id, self.boot, next(self._chains), max(0, int(timeout * 1000)),
             ref.id, method, kwargs, flags, origin, None]
        )  # fmt: skip
        if nowait:
            port.send(node_id, frame, deadline, None)
            return None
        if mode == "send":
            return self._direct_result(port.send(node_id, frame, deadline, rid))
        result = AsyncResult(rid, deadline, self._cancel_pending, port, self._node_label(node_id))
        self._pending[rid] = (result, node_id, deadline)
        try:
            port.call(node_id, frame, deadline, result)
        except ZcellError as exc:
            self._fail_pending(rid, result, exc)
        return result

    def _complete_call(self, result: AsyncResult, msg: list[Any]) -> bool:
        """Complete a ``call``'s result from its reply, read by a port (any thread)."""
        self._pending.pop(result.id, None)
        status = msg[P_STATUS]
        value = msg[5] if len(msg) > 5 else None
        error = None if status == OK else self._error_from(status, value)
        if thread_ident() == self._loop.ident:
            return result._complete(value, error)
        # Link callbacks run in the loop thread, as for every other result.
        return result._complete(value, error, self._loop.submit)

    def _own_port(self, node_id: str) -> ThreadPort | None:
        """This (non-loop) thread's port, when it may use one: a plain thread, a
        remote node."""
        if node_id == self.id:
            return None
        port = getattr(self._thread_ports, "port", None)
        if port is None:
            return None if hub_here() is not None else self._port()
        # A thread with a port may have started a gevent hub since: check (cheap).
        return port if _get_hub() is None or hub_here() is None else None

    def _send_one(self, node_id: str, frame: bytes, deadline: float, in_loop: bool) -> None:
        """Send a frame from whichever thread we are in (see the module doc)."""
        if in_loop:
            self._send_frame(node_id, frame, deadline)
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
        raise self._error_from(status, value)

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
        message = [V, kind, rid, self.id, self.boot, chain, ttl, target, method, kwargs, flags]
        message += [origin, seen]
        return self._encode(message)

    def _pick(self, type_name: str) -> tuple[str, str] | None:
        """The actor a throw goes to: round-robin, not on a leaving node if possible."""
        # May run in a program thread: copy before iterating (the loop mutates).
        leaving = {m.id for m in list(self._members.values()) if m.leaving}
        return self.directory.next_of_type(type_name, avoid=leaving)

    def _request(
        self, node_id: str, frame: bytes, deadline: float, rid: int, in_loop: bool
    ) -> AsyncResult:
        """Register a pending reply and send the request frame."""
        result = AsyncResult(rid, deadline, self._cancel_pending, None, self._node_label(node_id))
        self._pending[rid] = (result, node_id, deadline)
        try:
            port = None if in_loop else self._own_port(node_id)
            if in_loop:
                self._send_frame(node_id, frame, deadline)
            elif port is not None:
                port.send(node_id, frame, deadline, None)  # the reply comes to the inbox
            else:
                self._outbound_to(node_id).put(frame, deadline, rid)
        except ZcellError as exc:
            self._fail_pending(rid, result, exc)
        return result

    def _outbound_to(self, node_id: str) -> Outbound:
        """The queue for frames from the program's threads to ``node_id``."""
        out = self._outbound.get(node_id)
        if out is None:
            if node_id != self.id and node_id not in self._members:
                raise NodeDown(f"node {node_id} is not (or no longer) in the mesh")
            out = self._outbound.setdefault(
                node_id,
                Outbound(
                    node_id,
                    self._send_frame,
                    self._send_failed,
                    self._loop.submit,
                    try_send=self._try_send_frame,
                ),
            )
        return out

    def _try_send_frame(self, node_id: str, frame: bytes) -> bool:
        """Send without waiting (safe in a hub callback); False when it would wait."""
        if node_id == self.id:
            return False  # local delivery runs handlers: do it from a greenlet
        return self._send_frame(node_id, frame, None, callback=True)

    def _send_failed(self, rid: int | None, exc: ZcellError) -> None:
        if rid is None:
            self.stats["send_failures"] += 1
            log.warning("zcell: a fire-and-forget message was not sent: %s", exc)
            return
        entry = self._pending.get(rid)
        if entry is not None:
            self._fail_pending(rid, entry[0], exc)

    def _fail_pending(self, rid: int, result: Any, exc: BaseException) -> None:
        self._pending.pop(rid, None)
        self._throws.discard(rid)
        if isinstance(result, ScatterResult):
            result.close()
        else:
            result._complete(error=exc)

    def _cancel_pending(self, rid: int) -> None:
        if self._loop.in_loop():
            self._pending.pop(rid, None)
            self._throws.discard(rid)
        elif self._state == "running":
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
            expected = dict(self.directory.of_type(type_name))
            if not nowait:
                result = ScatterResult(
                    rid, expected, deadline, limit, propagate, self._cancel_pending
                )
                box[0] = result
                if not expected:
                    return
                self._pending[rid] = (result, "", deadline)
            nodes = set(expected.values())
            direct = [n for n in nodes if n == self.id or not self._subscribed_member(n)]
            # Sending may wait (a slow subscriber, a peer not connected yet, one
            # that just died): never make the caller wait for it.
            gevent.spawn(
                self._scatter_out, frame, deadline, direct, len(direct) < len(nodes), box[0]
            )

        # The hop to the loop counts against the scatter's own deadline.
        self._run(send, timeout=max(0.0, deadline - time.monotonic()))
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
                self._pub.send(frame, deadline)
            except ZcellError as exc:
                log.warning("zcell: scatter not published: %s", exc)
        for node_id in direct:
            try:
                self._send_frame(node_id, frame, deadline)
            except ZcellError as exc:
                log.debug("zcell: scatter to %s failed: %s", node_id, exc)
                if result is not None:
                    result._node_down(node_id)

    def _subscribed_member(self, node_id: str) -> bool:
        member = self._members.get(node_id)
        return member is not None and member.subscribed

    def _on_reply(self, msg: list[Any], routing: bytes | None = None) -> None:
        rid = msg[P_ID]
        entry = self._pending.get(rid)
        if entry is None:
            self.stats["late_replies"] += 1
            return
        src = msg[P_SRC]
        result = entry[0]
        if routing is not None:
            # Only the node asked replies, over its own connection (a declined
            # throw may be answered by any member; a scatter by all of them).
            sender = self._sender(routing, None)
            if sender is None or sender.id != src:
                self.stats["dropped_forged" if src in self._members else "dropped_stale"] += 1
                return
            if (
                src != entry[1]
                and rid not in self._throws
                and not isinstance(result, ScatterResult)
            ):
                self.stats["dropped_forged"] += 1
                return
        self._throws.discard(rid)
        status = msg[P_STATUS]
        value = msg[5] if len(msg) > 5 else None
        if isinstance(result, ScatterResult):
            if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
                self.stats["dropped_bad_frames"] += 1
                return
            actor_id, payload = value
            if status == OK:
                result._push(actor_id, False, payload, False)
            elif status == wire.DECLINED:
                result._push(actor_id, False, None, True)
            else:
                result._push(actor_id, True, self._error_from(status, payload), False)
            return
        del self._pending[rid]
        if status == OK:
            result._complete(value)
        else:
            result._complete(error=self._error_from(status, value))

    def _error_from(self, status: int, value: Any) -> ZcellError:
        if status == ERROR:
            error = error_from_wire(value)
            if error is not None:
                return error
        elif status == ZERROR:
            return zcell_error(value)
        return ZcellError(f"malformed error reply: {value!r}")

    def _ctrl(self, node_id: str, op: str, args: dict[str, Any], timeout: float) -> Any:
        """A control call to a node (spawn, kill, bind, unbind, snapshot)."""
        return self._ctrl_async(node_id, op, args, timeout).get()

    def _ctrl_async(
        self, node_id: str, op: str, args: dict[str, Any], timeout: float
    ) -> AsyncResult:
        rid = next(self._req_ids)
        deadline = time.monotonic() + timeout
        frame = self._encode([V, CTRL, rid, self.id, self.boot, int(timeout * 1000), op, args])
        return self._request(node_id, frame, deadline, rid, self._loop.in_loop())

    def _on_ctrl(self, msg: list[Any]) -> None:
        rid, src, op, args = msg[C_ID], msg[C_SRC], msg[C_OP], msg[C_ARGS]
        ttl = msg[C_TTL]
        try:
            value = self.control.run(op, args, src)
        except ZcellError as exc:
            if isinstance(exc, RemoteError):  # a nested call's error: relay it
                self.reply(src, rid, ERROR, self.host_.error_info(exc), ttl)
            else:
                self.reply(src, rid, ZERROR, [type(exc).__name__, str(exc)], ttl)
        except BaseException as exc:  # a constructor may raise anything, even SystemExit
            self.reply(src, rid, ERROR, self.host_.error_info(exc), ttl)
        else:
            self.reply(src, rid, OK, value, ttl)

    def flush_replies(self) -> None:
        """Send the direct replies coalesced so far (see ``reply``)."""
        self._inbox.flush_coalesced()

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
            frame = self._codec.encode([V, REP, rid, self.id, status, payload])
        except SerializationError as exc:
            error: Any = ["SerializationError", f"the handler's return value cannot travel: {exc}"]
            payload = error if actor_id is None else [actor_id, error]
            frame = self._codec.encode([V, REP, rid, self.id, ZERROR, payload])
        if routing is not None:
            # Coalesced with the other replies to that connection in this loop
            # iteration (the port reads them as consecutive frames).
            self._inbox.send_coalesced(routing, frame)
            self.stats["messages_out"] += 1
            return
        deadline = time.monotonic() + (ttl / 1000 if ttl else 5.0)
        try:
            self._send_frame(node_id, frame, deadline)
        except ZcellError as exc:
            log.debug("zcell: reply %s to %s lost: %s", rid, node_id, exc)
