"""ZeroMQ sockets on gevent: the only module that touches zmq.

Plain pyzmq sockets are used with ``NOBLOCK``; a greenlet that must wait parks
on a gevent io watcher on the socket's ``zmq.FD`` and retries after each
wake-up. ZeroMQ's FD is edge-triggered and signals any change of the socket's
state, so after waking we always retry until ``Again``. This is leaner than
``zmq.green`` (figures: bench/README.md, "Why the code is shaped this way").

Rules that keep the edge-triggered FD honest:
- a reader drains until ``Again`` before it waits;
- at most one greenlet waits on a socket's FD at a time;
- every libzmq call on a socket whose reader is parked may consume the edge
  the reader waits for: sends, socket options, connects and disconnects poke
  the reader (``_poke_reader``), which checks EVENTS before the loop blocks.
  The XPUB's reader also rechecks once a second, as a safety net.

zmq errors become zcell errors here; nothing above this module catches
``zmq.ZMQError``.
"""

from __future__ import annotations

import functools
import logging
import socket as _socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
import zmq
import zmq.backend
from gevent.lock import Semaphore

from ..errors import CallTimeout, NodeStopped, ZcellError

if TYPE_CHECKING:
    from gevent.hub import Hub

    from .security import ClusterKeys

__all__ = ["Context", "Socket", "TransportClosed", "bind_random"]

log = logging.getLogger(__name__)

_AGAIN = zmq.Again
# The backend's send itself: pyzmq's Python layer above it is a cost on every
# send (bench/README.md, "Why the code is shaped this way").
_send: Callable[..., Any] = zmq.backend.Socket.send
# Plain ints: pyzmq's enum flags make every `&` and `|` a slow Python call.
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_BATCH_FRAMES = 256  # frames per coalesced multipart message (send_coalesced)
# send_soon: held frames leave once this many gathered, not only at the flush, so
# that the peer starts on the first of a long burst while the rest is made (a
# worker's outcomes: its submitter pushes the next tasks meanwhile).
_SOON_FRAMES = 8
_PEEK = 4  # recv_loop: check EVENTS before each of the first frames of a burst
_COPY_BELOW = 65_536  # smaller frames are copied into ZeroMQ, larger ones sent zero-copy
#: The range random TCP ports are bound in (every socket of a node, same range).
RANDOM_PORTS = (20_000, 60_000)


def _later(a: float | None, b: float | None) -> float | None:
    """The later of two deadlines (None: no deadline, the latest of all)."""
    return None if a is None or b is None else max(a, b)


def _earlier(a: float | None, b: float | None) -> float | None:
    """The earlier of two deadlines (None: no deadline)."""
    return b if a is None else a if b is None else min(a, b)


def _events(raw: zmq.Socket[bytes]) -> int:
    return int(raw.get(_EVENTS))  # an int for EVENTS


def _recv_envelope(raw: zmq.Socket[bytes], flags: int) -> list[bytes]:
    """A ROUTER's [routing id, frame, ...]: pyzmq's recv_multipart costs twice as much.

    A ROUTER always puts the routing id before a peer's parts, so a second part
    is there; a program thread's port sends the frames it coalesced as further
    parts.
    """
    routing = raw.recv(flags)
    part = raw.recv(flags, copy=False)  # a Frame knows `more` without a getsockopt
    parts = [routing, part.bytes]
    while part.more:
        part = raw.recv(flags, copy=False)
        parts.append(part.bytes)
    return parts


class TransportClosed(NodeStopped):
    """The socket was closed while a greenlet was using it."""


#: Heartbeats between ZMTP pings on a connection to a member (``Context.sparse_pings``).
PING_EVERY = 120


class Context:
    """A node's own ZeroMQ context (never the process-wide instance)."""

    def __init__(
        self, max_message_size: int, heartbeat: float, curve: ClusterKeys | None = None
    ) -> None:
        self.zmq = zmq.Context()
        self.max_message_size = max_message_size
        self.heartbeat = heartbeat
        # With a cluster secret every TCP socket made here is CURVE (security.py).
        self.curve = curve
        self.sockets: list[Socket] = []

    def socket(self, kind: int, hub: Hub) -> Socket:
        """A socket for the node's loop (lean gevent integration)."""
        sock = Socket(self.raw_socket(kind), hub)
        self.sockets.append(sock)
        return sock

    def sparse_pings(self, raw: zmq.Socket[bytes]) -> None:
        """ZMTP pings every ``PING_EVERY`` heartbeats on a connection to a member
        (our DEALERs to its inbox, the loop's and each program thread's, and our
        SUB of its PUBs): they only close a dead TCP connection we keep meanwhile;
        liveness is decided by heartbeats (``Monitors``), and at every heartbeat
        libzmq's pings would cost an idle node work per member.

        A pong may take as long as the TTL the peer is told: a member working
        through a backlog stops reading the connection (its pipe to the socket is
        full), pings included, and a wait of a few heartbeats closed live
        connections with the frames they carried (bench/README.md, "Pushes without
        an AsyncResult").
        """
        every_ms = int(PING_EVERY * self.heartbeat * 1000)
        raw.setsockopt(zmq.HEARTBEAT_IVL, every_ms)
        raw.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * every_ms)
        raw.setsockopt(zmq.HEARTBEAT_TTL, 3 * every_ms)

    def raw_socket(self, kind: int) -> zmq.Socket[bytes]:
        """A plain pyzmq socket with the node's options (for a program thread's port)."""
        raw = self.zmq.socket(kind)
        raw.setsockopt(zmq.LINGER, 0)
        # +1 KiB of slack for the envelope around a max-size payload.
        raw.setsockopt(zmq.MAXMSGSIZE, self.max_message_size + 1024)
        hb_ms = max(100, int(self.heartbeat * 1000))
        # ZMTP heartbeats detect a dead TCP peer; application heartbeats decide
        # membership. Both are needed: TCP alone hangs ~15 min on a cut link.
        raw.setsockopt(zmq.HEARTBEAT_IVL, hb_ms)
        raw.setsockopt(zmq.HEARTBEAT_TIMEOUT, hb_ms * 3)
        raw.setsockopt(zmq.HEARTBEAT_TTL, hb_ms * 3)
        raw.setsockopt(zmq.RECONNECT_IVL, 100)
        raw.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        raw.setsockopt(zmq.CONNECT_TIMEOUT, 2000)
        if kind in (zmq.ROUTER, zmq.XPUB):
            # Sockets that bind, which anyone may connect to, send no ZMTP pings
            # (they answer those of their peers). libzmq 4.3 aborts
            # (`!_io_error`, stream_engine_base.cpp:310) when the ping timer of a
            # connection fires after its input stopped (we read slower than that
            # peer sends) and the peer then hung up: a stranger could do that.
            # Our DEALERs and SUBs, which connect, keep their pings.
            raw.setsockopt(zmq.HEARTBEAT_IVL, 0)
        if kind == zmq.DEALER:
            # Queue only on completed connections: a peer that is not there
            # back-pressures the sender instead of swallowing messages.
            raw.setsockopt(zmq.IMMEDIATE, 1)
        if self.curve is not None:
            # Server role for the sockets that bind, client role for those that
            # connect (including a program thread's DEALERs): see security.py.
            self.curve.secure(raw, kind)
        return raw

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        self.zmq.term()


def bind_random(sock: Socket, host: str, port: int = 0) -> str:
    """Bind ``sock`` on ``host`` (port 0: a random one); return the connectable endpoint."""
    try:
        if port:
            sock.raw.bind(f"tcp://{host}:{port}")
        else:
            low, high = RANDOM_PORTS
            sock.raw.bind_to_random_port(f"tcp://{host}", min_port=low, max_port=high)
    except zmq.ZMQError as exc:
        raise ZcellError(
            f"cannot bind tcp://{host}:{port or '*'}: {exc}; choose another host or port"
        ) from exc
    endpoint: str = sock.raw.getsockopt_string(zmq.LAST_ENDPOINT)
    if host in ("0.0.0.0", "*"):
        endpoint = endpoint.replace("0.0.0.0", _primary_address())
    return endpoint


def _primary_address() -> str:
    """The address other LAN hosts reach us at, for a node bound to all interfaces."""
    probe = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        # A UDP connect sends nothing; it only picks the outgoing interface.
        probe.connect(("224.0.0.251", 5353))
        address: str = probe.getsockname()[0]
        return address
    except OSError:
        return _socket.gethostbyname(_socket.gethostname())
    finally:
        probe.close()


class Socket:
    """A pyzmq socket driven from one gevent hub with NOBLOCK + FD watcher."""

    __slots__ = (
        "raw",
        "hub",
        "_watcher",
        "_send_lock",
        "_closed",
        "_poke_due",
        "_parked",
        "_batch",
        "_soon",
        "_soon_deadline",
        "_late_due",
        "undeliverable",
    )

    def __init__(self, raw: zmq.Socket[bytes], hub: Hub) -> None:
        self.raw = raw
        self.hub = hub
        self._watcher = hub.loop.io(raw.getsockopt(zmq.FD), 1)
        self._send_lock: Semaphore | None = None
        self._closed = False
        self._poke_due = False
        self._parked = False  # a greenlet waits in _wait_fd on the watcher
        self._batch: dict[bytes, list[bytes]] | None = None
        self._soon: list[bytes] | None = None  # DEALER: frames send_soon holds
        self._soon_deadline: float | None = None  # the latest of theirs (None: none)
        self._late_due = False  # a greenlet to send held frames is on its way
        # ROUTER (with ROUTER_MANDATORY): frames send_coalesced could not deliver
        # because their peer was gone or full, dropped and counted here.
        self.undeliverable = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def connect(self, endpoint: str, routing_id: bytes | None = None) -> None:
        """Connect; ``routing_id``: the identity the peer's ROUTER sees (DEALER)."""
        try:
            if routing_id is not None:
                self.raw.setsockopt(zmq.ROUTING_ID, routing_id)
            self.raw.connect(endpoint)
        except zmq.ZMQError as exc:
            raise ZcellError(f"cannot connect to {endpoint!r}: {exc}") from exc
        self._poke_reader()

    def disconnect(self, endpoint: str) -> None:
        try:
            self.raw.disconnect(endpoint)
        except zmq.ZMQError:
            pass  # not connected: nothing to undo
        self._poke_reader()

    def setsockopt(self, option: int, value: Any) -> None:
        self.raw.setsockopt(option, value)
        self._poke_reader()

    def _poke_reader(self) -> None:
        """Any libzmq call may consume the FD edge a parked reader waits for:
        check, before the loop next blocks, whether there is something to read.

        One check per loop iteration, however many sends it made (reading
        EVENTS costs a system call): hub callbacks run before the loop blocks.
        """
        if self._watcher.active and not self._poke_due:
            self._poke_due = True
            self.hub.loop.run_callback(self._poke_now)

    def _poke_now(self) -> None:
        self._poke_due = False
        watcher = self._watcher
        if watcher.active and not self._closed and _events(self.raw) & _POLLIN:
            watcher.callback(*watcher.args)

    def _wait_fd(self, deadline: float | None) -> None:
        """Park this greenlet until the FD signals (or the deadline passes)."""
        if self._closed:
            raise TransportClosed("socket closed")
        timer = None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout("timed out waiting for the socket")
            timer = gevent.Timeout._start_new_or_dummy(remaining, CallTimeout)
        try:
            if self._watcher.active:
                # The socket's reader (XPUB) holds the watcher: poll instead.
                gevent.sleep(0.001)
            else:
                self._parked = True
                try:
                    self.hub.wait(self._watcher)
                finally:
                    self._parked = False
        except CallTimeout:
            raise CallTimeout(
                "timed out waiting to send: the peer is not taking messages"
            ) from None
        finally:
            if timer is not None:
                timer.close()
        if self._closed:
            raise TransportClosed("socket closed")

    # -- sending -------------------------------------------------------------

    def send(self, data: bytes, deadline: float | None = None) -> None:
        """Send one frame; wait (cooperatively, up to ``deadline``) while the peer is full."""
        if not self._send_now(data, None):
            self._send_slow(data, deadline, None)

    def try_send(self, data: bytes) -> bool:
        """Send without ever waiting (safe in a hub callback); False if it would wait."""
        return self._send_now(data, None)

    def send_multipart(self, frames: list[bytes], deadline: float | None = None) -> None:
        """Send a multipart message (ROUTER/XPUB envelopes); same waiting as send()."""
        if not self._send_now(b"", frames):
            self._send_slow(b"", deadline, frames)

    def send_soon(self, frame: bytes, deadline: float | None) -> bool:
        """DEALER: hold ``frame`` to leave with the next ones.

        The frames held so leave together, as the parts of one message (the
        receiving node takes each part as a frame of its own), when
        ``_SOON_FRAMES`` have gathered or at ``flush_soon``, which the caller
        calls before the loop next blocks (a hub callback will do): one wake-up
        of each side's I/O thread and of the peer's reader for a burst instead
        of one a frame. Held frames go before any frame sent after them
        (every send flushes them first). While the peer pushes back (held frames
        could not leave, or senders wait for room) it waits in line as ``send``
        does, up to ``deadline``: back-pressure reaches the sender, and what is
        held stays a few frames.

        Returns:
            True when ``frame`` began a new batch (the caller then owes a flush).

        Raises:
            CallTimeout: the peer took nothing before ``deadline``.
            TransportClosed: the socket was closed meanwhile.
        """
        if self._send_lock is not None:
            self._send_slow(frame, deadline, None)  # what is held goes first
            return False
        soon = self._soon
        if soon is None:
            self._soon = [frame]
            self._soon_deadline = deadline
            return True
        self._soon_deadline = _later(self._soon_deadline, deadline)
        soon.append(frame)
        if len(soon) >= _SOON_FRAMES:
            self.flush_soon()
        return False

    def flush_soon(self) -> None:
        """Send the frames ``send_soon`` holds (safe in a hub callback: never waits).

        Frames that cannot leave now (the peer is past its high-water mark, or
        senders wait for room) stay held, in line before any frame sent after
        them: every sender that waits for room sends what is held first, and a
        greenlet does when no other sender comes. Held frames that cannot leave
        by the latest of their deadlines are dropped and counted in
        ``undeliverable`` (their senders did not wait: the peer took the frames
        before theirs).
        """
        frames = self._soon
        if not frames or self._closed:
            return
        if self._send_lock is None:
            self._soon = None
            try:
                if self._send_now(b"", frames):
                    return
            except ZcellError:
                self.undeliverable += len(frames)  # closed meanwhile
                return
            self._soon = frames  # nothing was sent (a multipart message is atomic)
            # From now on every sender waits in line (and sends these first).
            self._send_lock = Semaphore()
        if not self._late_due:
            self._late_due = True
            gevent.spawn(self._send_late)

    def _send_late(self) -> None:
        """Send what is held once the peer takes it, in line with the other senders."""
        self._late_due = False
        if self._soon and not self._closed:
            try:
                self._send_slow(None, None, None)
            except ZcellError:
                pass  # closed meanwhile: counted where the frames were taken

    def _send_now(self, data: bytes, frames: list[bytes] | None) -> bool:
        """The one fast path over zmq: send ``data`` (or the parts ``frames``) at
        once, unless senders are queued (they keep their order) or the peer is
        full; False then, and nothing was sent. What ``send_soon`` holds goes
        first (``flush_soon`` calls this with nothing held)."""
        if self._soon is not None:
            self.flush_soon()
        if self._send_lock is not None:
            return False
        try:
            if frames is None:
                _send(self.raw, data, _NOBLOCK, len(data) < _COPY_BELOW)
            else:
                self._put_parts(frames)
        except _AGAIN:
            return False
        except zmq.ZMQError as exc:
            raise self._error(exc) from exc
        if self._watcher.active:  # a reader is parked (ROUTER, XPUB): let it look
            self._poke_reader()
        return True

    def send_coalesced(self, routing: bytes, frame: bytes) -> None:
        """ROUTER: send ``frame`` to the peer ``routing`` before the loop next blocks.

        The frames queued for one peer leave together as one multipart message
        ``[routing, frame, frame, ...]`` (up to ``_BATCH_FRAMES``), at
        ``flush_coalesced`` or before the loop blocks: one wake-up of each I/O
        thread and of the reader for a burst of replies instead of one per
        reply. A ROUTER never waits: frames for a peer that is gone or past its
        high-water mark are dropped and counted in ``undeliverable`` (with
        ``ROUTER_MANDATORY`` set, else libzmq drops them silently).
        """
        batch = self._batch
        if batch is None:
            batch = self._batch = {}
            self.hub.loop.run_callback(self.flush_coalesced)
        frames = batch.get(routing)
        if frames is None:
            batch[routing] = [frame]
        else:
            frames.append(frame)
            if len(frames) >= _BATCH_FRAMES:
                del batch[routing]
                self._send_parts(routing, frames)

    def flush_coalesced(self) -> None:
        """Send the frames ``send_coalesced`` holds now (else: before the loop blocks)."""
        batch, self._batch = self._batch, None
        if batch and not self._closed:
            for routing, frames in batch.items():
                self._send_parts(routing, frames)

    def _send_parts(self, routing: bytes, frames: list[bytes]) -> None:
        try:
            self._put_parts([routing, *frames])
        except _AGAIN:
            # The peer is past its high-water mark (it does not read its
            # replies): a ROUTER never waits for one peer.
            self.undeliverable += len(frames)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                return  # closed meanwhile (the node stops): nobody waits for these
            self.undeliverable += len(frames)  # that connection is gone
        self._poke_reader()

    def _put_parts(self, frames: list[bytes]) -> None:
        """Send a multipart message without waiting; zmq.Again if nothing was sent.

        Part by part with ``_send``: pyzmq's send_multipart pays for its enum flags
        (bench/README.md, "Why the code is shaped this way"). A multipart
        message is atomic: once its first part is accepted, the rest is.
        """
        raw = self.raw
        for frame in frames[:-1]:
            _send(raw, frame, _NOBLOCK_MORE)
        _send(raw, frames[-1], _NOBLOCK)

    def _send_slow(
        self, data: bytes | None, deadline: float | None, frames: list[bytes] | None
    ) -> None:
        """Send once the peer takes it, after the senders queued before (up to
        ``deadline``); what ``send_soon`` holds goes first. ``data`` None and no
        ``frames``: only what is held."""
        lock = self._send_lock
        if lock is None:
            lock = self._send_lock = Semaphore()
        # Senders queue on the lock so that messages keep their order.
        lock.acquire()
        try:
            if self._soon:
                self._send_held(deadline)
            if data is not None or frames is not None:
                self._send_locked(data or b"", deadline, frames)
        finally:
            self._release(lock)

    def _send_held(self, deadline: float | None) -> None:
        """(Lock held) send what ``send_soon`` holds, waiting up to the earlier of
        ``deadline`` (the sender in line behind them) and their own."""
        held, self._soon = self._soon, None
        assert held is not None
        own = self._soon_deadline
        try:
            while held:
                self._send_locked(b"", _earlier(own, deadline), held[:_BATCH_FRAMES])
                del held[:_BATCH_FRAMES]
        except CallTimeout:
            if own is not None and time.monotonic() >= own:
                self.undeliverable += len(held)  # their own time is up
                log.debug("zcell: %d held frames not sent in time", len(held))
                return
            # The sender behind them is out of time: they stay held, first.
            self._soon = held + self._soon if self._soon else held
            self._soon_deadline = _later(own, self._soon_deadline)
            raise
        except ZcellError:
            self.undeliverable += len(held)
            raise

    def _send_locked(self, data: bytes, deadline: float | None, frames: list[bytes] | None) -> None:
        """Send, waiting for room, with the send lock held."""
        while True:
            try:
                if frames is None:
                    self.raw.send(data, _NOBLOCK)
                else:
                    self._put_parts(frames)
                return
            except _AGAIN:
                if not _events(self.raw) & _POLLOUT:
                    self._wait_fd(deadline)
            except zmq.ZMQError as exc:
                raise self._error(exc) from exc

    def _release(self, lock: Semaphore) -> None:
        lock.release()
        if not lock.locked() and self._send_lock is lock:
            self._send_lock = None
            if self._soon:
                self.flush_soon()  # held meanwhile, behind the senders now gone
        self._poke_reader()  # the waits read EVENTS

    def _error(self, exc: zmq.ZMQError) -> ZcellError:
        if exc.errno in (zmq.ENOTSOCK, zmq.ETERM) or self._closed:
            return TransportClosed("socket closed")
        return ZcellError(f"zmq send failed: {exc}")

    # -- receiving -----------------------------------------------------------

    def recv_loop(
        self, recheck: float | None = None, before_peek: Callable[[], None] | None = None
    ) -> Iterator[Any]:
        """Yield frames forever: drain until there are none, then wait on the FD.

        ROUTER and XPUB sockets yield multipart lists; the others single frames.
        Ends when the socket is closed, or (logged: the node's supervisor then
        restarts the reader) when reading it fails. ``recheck``: also retry
        every so many seconds, for a socket that is written too (a send may
        consume the edge).
        ``before_peek``: called before each check of whether a short burst goes on,
        to let the work the frames started run first (see ``Node._read_inbox``).
        """
        raw = self.raw
        recv: Callable[[int], Any]
        if raw.type == zmq.ROUTER:
            recv = functools.partial(_recv_envelope, raw)
        else:
            recv = raw.recv_multipart if raw.type == zmq.XPUB else raw.recv
        wait = self.hub.wait
        watcher = self._watcher
        run = 0  # frames read since the last wait
        while not self._closed:
            try:
                # Reading EVENTS makes libzmq process its command queue, which
                # resets the FD; without it the FD stays readable and we spin.
                # It costs a system call, a recv that finds nothing (zmq.Again)
                # three times that: peek first while bursts are short, but not
                # right after a wake-up, which mostly means a frame is there.
                if 0 < run < _PEEK:
                    if before_peek is not None:
                        before_peek()
                    item = recv(_NOBLOCK) if _events(raw) & _POLLIN else None
                else:
                    item = recv(_NOBLOCK)
            except _AGAIN:
                if not self._closed and _events(raw) & _POLLIN:
                    continue
                item = None
            except zmq.ZMQError as exc:
                if not self._closed:  # closed by its owner: the normal end
                    kind = zmq.SocketType(int(raw.type)).name
                    log.error("zcell: reading a %s socket failed: %s", kind, exc)
                return
            if item is not None:
                run += 1
                yield item
                continue
            if self._closed:
                return
            run = 0
            if recheck is None:
                wait(watcher)
            else:
                with gevent.Timeout(recheck, False):
                    wait(watcher)

    def take_incoming(self, limit: int = 1000) -> list[bytes]:
        """Read what waits on a socket nobody reads otherwise (a DEALER whose
        replies come to the inbox), so that its input never stops.

        Skipped while a sender waits on the socket: reading EVENTS could take
        the edge it waits for (a later sender checks EVENTS before it waits).
        """
        frames: list[bytes] = []
        if self._send_lock is not None:
            return frames
        try:
            while len(frames) < limit and not self._closed and _events(self.raw) & _POLLIN:
                frames.append(self.raw.recv(_NOBLOCK))
        except zmq.ZMQError:
            pass
        return frames

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._soon = None  # the node leaves or the peer is gone: nobody waits for these
        watcher = self._watcher
        # A greenlet parked in _wait_fd would never be woken by a closed watcher:
        # wake it (it then raises TransportClosed).
        wake = (watcher.callback, watcher.args) if self._parked and watcher.active else None
        try:
            watcher.stop()
            watcher.close()
        except Exception:  # pragma: no cover
            pass
        if wake is not None and wake[0] is not None:
            self.hub.loop.run_callback_threadsafe(wake[0], *wake[1])
        self.raw.close(linger=0)
