"""A program thread's own way to its peers: no hop through the node's loop.

Handing every call to the node's loop thread and back costs two cross-thread
wake-ups, together as much as the network round trip (bench/README.md),
and the two threads then fight over the GIL. So a plain thread (one not running
a gevent hub) gets a *port*: its own DEALER to each peer it talks to. Its direct
messages (``send``, ``call``, fire and forget) go out on that socket, in order,
and their replies come straight back on it (the peer answers through its ROUTER
to our routing id):

- a blocking ``send`` waits for its reply in ``poll(2)`` on the socket's FD
  (``_sleep``), without waking the loop;
- a ``call``'s ``AsyncResult`` is completed by the thread itself, which reads
  the replies that have arrived when it goes through the port (every 32nd
  call, and ``get()``/``ready()``/``state`` of one of its results). A pipelined
  loop of calls therefore seldom wakes the loop either;
- fire-and-forget frames and calls sent in quick succession are coalesced
  into one multipart message (``_send_or_coalesce``): one wake-up of each I/O thread and
  of the receiver per burst instead of per message. They leave when 64 have
  gathered, when the thread next goes through the port, or at the latest
  within ~1 ms, sent by the loop (``_loop_flush``, a timer that runs while
  the thread keeps sending). A lone message leaves at once.

When nobody on the thread will read them (a ``link`` callback waits, or another
thread waits on the result), the thread asks the loop to read the port's
sockets for it (``ask_loop``): the loop polls them every few milliseconds while
such results are pending, at moments when the thread is not inside the port.

The loop tells waiting ports about nodes going down and about its own stop
through an inproc PUB, so calls still fail with ``NodeDown`` at once. The port's
sockets are used by their thread while it is inside the port (``busy``), and
otherwise, under the port's lock, by the loop (reading for ``ask_loop``,
flushing coalesced frames) or by the stopping node (closing them).
"""

from __future__ import annotations

import errno
import select
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
import zmq.backend

from .._transport.loop import real_lock, thread_ident
from .._wire import REP
from ..errors import CallTimeout, NodeDown, NodeStopped, ZcellError

if TYPE_CHECKING:
    from .._transport.loop import LoopThread
    from .._transport.sockets import Context
    from .._wire import Codec
    from .directory import Member
    from .result import AsyncResult, Pending

__all__ = ["ThreadPort", "free_closed_subscribers"]

_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_AGAIN = zmq.Again
# The backend's own send and recv: pyzmq's Python layer above them is a cost on
# every message (bench/README.md, "Why the code is shaped this way").
_send: Callable[..., Any] = zmq.backend.Socket.send
_recv: Callable[..., Any] = zmq.backend.Socket.recv
NOTIFY_DOWN = b"D"
NOTIFY_STOP = b"S"
_LOOP_POLL = (0.001, 0.01)  # the loop's polling interval for ask_loop: first, longest
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_POLLOUT = int(zmq.POLLOUT)
_BURST_GAP = 0.0001  # a frame within this of the previous one is coalesced
_BATCH = 64  # coalesced frames per message
_LOOP_FLUSH = 0.001  # the loop sends coalesced frames the thread has left
_FLUSH_IDLE = 50  # ticks with nothing to send before the loop's flush timer stops
_DRAIN_EVERY = 32  # calls between reads of the replies nobody asked for yet
_PRUNE_EVERY = 1024  # calls between sweeps of finished results out of _calls


def _no_socket(exc: zmq.ZMQError) -> ZcellError:
    """The zcell error for a socket this thread's port could not open."""
    if exc.errno == errno.EMFILE:
        return ZcellError(
            "out of file descriptors: this thread cannot open its sockets to the mesh. "
            "Each thread that sends holds some until it ends: send from fewer threads "
            "at once (a pool), or raise the limit (ulimit -n)"
        )
    return ZcellError(f"cannot open a socket to the mesh: {exc}")


def _events(sock: zmq.Socket[bytes]) -> int:
    return int(sock.get(_EVENTS))  # an int for EVENTS


def free_closed_subscribers(notify_pub: zmq.Socket[bytes]) -> None:
    """Let the loop's news PUB finish the close of ports' SUBs.

    A closed inproc subscriber (and its eventfd) is freed only once the PUB
    has processed its commands, and a PUB does that only when it is used:
    news is rare, so without this every freed port would keep a descriptor.
    """
    _events(notify_pub)


#: A codec's decode: a frame's bytes -> the message (``ProtocolError`` if bad).
Decode = Callable[[bytes], list[Any]]


@dataclass(frozen=True, slots=True)
class NodeLinks:
    """What a port needs from its node, and nothing more (the node makes one).

    The mappings are the node's own, shared: the port reads the members and
    fails the node's pending calls of a peer that went down.
    """

    name: str
    ctx: Context
    notify_endpoint: str  # the inproc PUB of news from the loop (nodes down, stop)
    members: Mapping[str, Member]
    pending: dict[int, tuple[Pending, str, float | None]]
    stats: dict[str, int]
    loop: LoopThread
    codec: Codec  # the loop thread's
    thread_codec: Callable[[], Codec]  # the calling thread's own
    routing_id: Callable[[str], bytes]  # a new connection's identity, by inbox endpoint
    complete_call: Callable[[AsyncResult, list[Any]], bool]
    node_label: Callable[[str], str]
    thread_ended: Callable[[], None]  # (the ending thread) have the loop free ended ports


class ThreadPort:
    """One program thread's sockets to the peers of one node."""

    def __init__(self, links: NodeLinks) -> None:
        self.links = links
        self._ctx = links.ctx
        self.owner = thread_ident()
        self.encode = links.thread_codec().encode  # this thread's own packer
        self._sockets: dict[str, tuple[Any, zmq.Socket[bytes]]] = {}  # node id -> (member, socket)
        try:
            self._notify = self._ctx.zmq.socket(zmq.SUB)
        except zmq.ZMQError as exc:
            raise _no_socket(exc) from exc
        self._notify.setsockopt(zmq.LINGER, 0)
        self._notify.setsockopt(zmq.SUBSCRIBE, b"")
        self._notify.connect(links.notify_endpoint)
        # Its FD signals a message only once a read found nothing (ZMQ_FD is
        # edge-triggered), and an inproc connect signals nothing: look once now,
        # so that the first news wakes _sleep. _drain_news reads until empty.
        _events(self._notify)
        self._lock = real_lock()
        self.busy = False
        self._closed = False
        # Calls whose replies come to this port: request id -> (result, node id).
        self._calls: dict[int, tuple[AsyncResult, str]] = {}
        self._registered = 0
        self._notify_fd = int(self._notify.getsockopt(zmq.FD))
        self._pollers: dict[
            str, tuple[zmq.Socket[bytes], Any]
        ] = {}  # node id -> (socket, FD poller)
        self._polled = False  # the loop reads for us (see ask_loop)
        self._downs: list[tuple[str, ZcellError]] = []  # see read_replies_of
        # Coalescing (see _send_or_coalesce): frames waiting to leave, per node, in order.
        self._out: dict[str, list[bytes]] = {}
        self._burst_end = 0.0  # until then, a new frame joins the others
        self._flusher = False  # the loop's flush timer is running
        self.ended = False  # its thread has ended: the loop frees it (retire)
        self.sent = 0  # counted here (this thread), summed by Node.statistics()
        self.received = 0
        self.late = 0
        self.dropped = 0

    # -- the owning thread ---------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise NodeStopped(f"node {self.links.name} is stopped; create a new Node")
            self.busy = True
            if self._out:
                self._flush()  # what waits to leave goes before anything new

    def _leave(self) -> None:
        with self._lock:
            if self._downs and not self._closed:
                self._fail_downs()
            self.busy = False
            if self._closed:
                self._close_sockets()

    def _socket(self, node_id: str) -> zmq.Socket[bytes]:
        member = self.links.members.get(node_id)
        if member is None:
            raise NodeDown(f"node {node_id} is not (or no longer) in the mesh")
        entry = self._sockets.get(node_id)
        if entry is not None:
            if entry[0] is member:
                return entry[1]
            entry[1].close(linger=0)  # the node left and came back: a new connection
            del self._sockets[node_id]
        try:
            sock = self._ctx.raw_socket(zmq.DEALER)
        except zmq.ZMQError as exc:
            raise _no_socket(exc) from exc
        self._ctx.sparse_pings(sock)  # a member's connection, as the loop's DEALER
        # The peer knows our connections by their routing id (membership.py).
        sock.setsockopt(zmq.ROUTING_ID, self.links.routing_id(member.inbox))
        sock.connect(member.inbox)
        self._sockets[node_id] = (member, sock)
        return sock

    def send(
        self, node_id: str, frame: bytes, deadline: float, rid: int | None
    ) -> list[Any] | None:
        """Send ``frame``; with ``rid``, wait for and return the decoded direct reply.

        Without ``rid`` (fire and forget) the frame may be coalesced (``_send_or_coalesce``).
        """
        if rid is None and self._send_or_coalesce(node_id, frame):
            return None
        self._enter()
        try:
            sock = self._socket(node_id)
            if node_id in self._out:
                self._put_all(sock, node_id, deadline)  # coalesced frames first, in order
            self._put(sock, node_id, [frame], deadline)
            if rid is None:
                return None
            return self._reply(sock, node_id, rid, deadline)
        finally:
            self._leave()

    def _send_or_coalesce(self, node_id: str, frame: bytes) -> bool:
        """The fast path, under the lock alone (nothing here waits).

        A frame sent long enough after the previous one leaves at once. One that
        follows others closely (within ``_BURST_GAP``) joins them: they leave
        together as one multipart message, which costs the I/O threads and the
        receiver one wake-up instead of one each, when ``_BATCH`` have gathered,
        when the thread next goes through the port (any call that waits or
        reads replies), or at the loop's next flush (``_LOOP_FLUSH``), whichever
        comes first. False when the slow path must send it (no connection
        yet, or the peer is full): the frame is not taken.
        """
        with self._lock:
            if self.busy or self._closed:
                return False
            entry = self._sockets.get(node_id)
            if entry is None or entry[0] is not self.links.members.get(node_id):
                return False
            now = time.monotonic()
            out = self._out
            if not out and now >= self._burst_end:
                try:
                    _send(entry[1], frame, _NOBLOCK)
                except _AGAIN:
                    return False
                self.sent += 1
                self._burst_end = now + _BURST_GAP
                return True
            self._burst_end = now + _BURST_GAP
            frames = out.get(node_id)
            if frames is None:
                out[node_id] = [frame]
            else:
                frames.append(frame)
                if len(frames) >= _BATCH and not self._flush_node(node_id):
                    frames.pop()  # the peer is full: the slow path waits for room
                    return False
            start = not self._flusher
            self._flusher = True
        if start:
            self.links.loop.submit(self._loop_flush, 0)
        return True

    def _flush(self) -> None:
        """(Under the lock, the sockets ours) send what can leave without waiting."""
        for node_id in list(self._out):
            self._flush_node(node_id)

    def _flush_node(self, node_id: str) -> bool:
        """(Under the lock) send ``node_id``'s waiting frames if there is room."""
        frames = self._out.get(node_id)
        if not frames:
            return True
        entry = self._sockets.get(node_id)
        if entry is None or entry[0] is not self.links.members.get(node_id):
            del self._out[node_id]  # that node left: nobody will take them
            self.links.stats["send_failures"] += len(frames)
            return True
        if not self._send_frames(entry[1], frames):
            return False
        del self._out[node_id]
        return True

    def _send_frames(self, sock: zmq.Socket[bytes], frames: list[bytes]) -> bool:
        """Send ``frames`` as one message, or nothing (False) if the peer is full."""
        try:
            if len(frames) == 1:
                _send(sock, frames[0], _NOBLOCK)
            else:
                # All or nothing: once its first part is taken, a message is.
                _send(sock, frames[0], _NOBLOCK_MORE)
                for part in frames[1:-1]:
                    _send(sock, part, _NOBLOCK_MORE)
                _send(sock, frames[-1], _NOBLOCK)
        except _AGAIN:
            return False
        self.sent += len(frames)
        return True

    def _put_all(self, sock: zmq.Socket[bytes], node_id: str, deadline: float) -> None:
        """(Inside the port) send ``node_id``'s waiting frames, waiting for room."""
        frames = self._out.get(node_id)
        if frames:
            self._put(sock, node_id, frames, deadline)
            self._out.pop(node_id, None)

    def call(self, node_id: str, frame: bytes, deadline: float, result: AsyncResult) -> None:
        """Send a call's ``frame``; its reply completes ``result`` (see the module doc)."""
        calls = self._calls
        calls[result.id] = (result, node_id)
        self._registered += 1
        if self._registered % _DRAIN_EVERY == 0:
            # Read the replies of earlier calls now and then, so that a thread
            # that never asks for them cannot fill the peer's queue to us.
            self.poll()
            if self._registered % _PRUNE_EVERY == 0:
                with self._lock:
                    if not self.busy:
                        self._prune()
        try:
            if not self._send_or_coalesce(node_id, frame):
                self._enter()
                try:
                    sock = self._socket(node_id)
                    self._put_all(sock, node_id, deadline)
                    self._put(sock, node_id, [frame], deadline)
                finally:
                    self._leave()
        except BaseException:
            calls.pop(result.id, None)
            raise

    def wait(self, result: AsyncResult, timeout: float | None) -> bool:
        """Read replies until ``result`` is ready or ``timeout`` passes; True if ready."""
        entry = self._calls.get(result.id)
        if entry is None:
            return result._flag._is_set
        node_id = entry[1]
        end = None if timeout is None else time.monotonic() + timeout
        try:
            self._enter()
        except NodeStopped:
            return result._flag.wait(timeout)  # the stopping node fails it
        try:
            sock = self._sockets.get(node_id, (None, None))[1]
            if sock is None:
                return result._flag._is_set
            if node_id in self._out:  # the call itself may still wait to leave
                self._put_all(sock, node_id, result._deadline or time.monotonic() + 3600)
            decode = self.links.thread_codec().decode
            while True:
                self._drain(sock, decode)
                if result._flag._is_set:
                    return True
                if end is None:
                    wait_ms = -1
                else:
                    left = end - time.monotonic()
                    if left <= 0:
                        return False
                    wait_ms = int(left * 1000) + 1
                if self._sleep(node_id, sock, wait_ms):
                    # News from the loop. It fails a down node's calls before
                    # telling us, so the result shows it; a stop we act on.
                    if NOTIFY_STOP in self._drain_news():
                        result._complete(error=NodeStopped(f"node {self.links.name} stopped"))
                    with self._lock:
                        if self._downs:
                            self._fail_downs()  # the loop left our calls to us
                    if node_id not in self._sockets:  # that node went down: settled
                        return result._flag._is_set
        finally:
            self._leave()

    def poll(self) -> None:
        """Complete the results whose replies have arrived, without waiting."""
        if not self._calls:
            return
        try:
            self._enter()
        except NodeStopped:
            return
        try:
            self._drain_all(self.links.thread_codec().decode)
        finally:
            self._leave()

    def _put(
        self, sock: zmq.Socket[bytes], node_id: str, frames: list[bytes], deadline: float
    ) -> None:
        """Send ``frames`` as one message, waiting for room (back-pressure)."""
        while not self._send_frames(sock, frames):
            # Not connected yet, or the peer is full.
            self._wait(sock, _POLLOUT, node_id, deadline)

    def _reply(self, sock: zmq.Socket[bytes], node_id: str, rid: int, deadline: float) -> list[Any]:
        decode = self.links.thread_codec().decode
        while True:
            self._wait(sock, _POLLIN, node_id, deadline)
            while True:  # it may be readable: recv at once (Again: wait again)
                try:
                    data = sock.recv(_NOBLOCK)
                except _AGAIN:
                    break
                msg = self._match_reply(data, decode, rid)
                if msg is not None:
                    return msg  # replies behind it are read in later

    def _sleep(self, node_id: str, sock: zmq.Socket[bytes], wait_ms: int) -> bool:
        """Block (GIL released) until ``sock`` or the news socket may have
        something, or ``wait_ms`` pass (-1: no limit); True if news may have come.

        The caller has read ``sock``'s EVENTS (or drained it) just before, so
        its FD signals anything new. This polls the two FDs directly: zmq.poll
        would read EVENTS of both sockets before and after (four more system
        calls per wait).
        """
        entry = self._pollers.get(node_id)
        if entry is None or entry[0] is not sock:
            poller = select.poll()
            poller.register(int(sock.getsockopt(zmq.FD)), select.POLLIN)
            poller.register(self._notify_fd, select.POLLIN)
            entry = self._pollers[node_id] = (sock, poller)
        notify_fd = self._notify_fd
        return any(fd == notify_fd for fd, _ in entry[1].poll(wait_ms))

    def _drain(
        self, sock: zmq.Socket[bytes], decode: Decode, rid: int | None = None
    ) -> list[Any] | None:
        """Read every reply waiting on ``sock``; complete the calls among them.

        Returns the reply to ``rid`` (a blocking send's) if it came.
        """
        found = None
        # One EVENTS check first: most calls find nothing, and a recv that finds
        # nothing (raising zmq.Again) costs more. When something is there, read
        # plain bytes until zmq.Again, cheaper than message by message (a Frame
        # for `more`, EVENTS before each); every part is a reply of its own.
        # Figures: bench/README.md, "Why the code is shaped this way".
        if not _events(sock) & _POLLIN:
            return None
        match = self._match_reply
        while True:
            try:
                data = _recv(sock, _NOBLOCK, True)
            except _AGAIN:
                return found
            msg = match(data, decode, rid)
            if msg is not None:
                found = msg

    def _drain_all(self, decode: Decode) -> None:
        for _, sock in list(self._sockets.values()):
            self._drain(sock, decode)

    def _match_reply(self, data: bytes, decode: Decode, rid: int | None) -> list[Any] | None:
        """One frame read from a socket: the reply to ``rid`` is returned; any
        other reply completes its call; the rest is counted and dropped."""
        try:
            msg = decode(data)
        except ZcellError:
            self.dropped += 1
            return None
        if msg[1] != REP:
            self.dropped += 1
            return None
        self.received += 1
        msg_rid = msg[2]
        if msg_rid == rid:
            return msg
        entry = self._calls.pop(msg_rid, None)
        if entry is None or not self.links.complete_call(entry[0], msg):
            self.late += 1  # a reply to an earlier, timed-out call
        return None

    def _drain_news(self) -> list[bytes]:
        """Read the loop's news (about earlier calls: a node that left may be back)."""
        notify = self._notify
        news = []
        while _events(notify) & _POLLIN:
            try:
                news.append(notify.recv(_NOBLOCK))
            except _AGAIN:
                break
        return news

    def _wait(self, sock: zmq.Socket[bytes], event: int, node_id: str, deadline: float) -> None:
        """Block (GIL released) until ``sock`` may have ``event``; watch for down/stop news.

        Returns when EVENTS shows ``event``, or at once when the socket's FD
        signals (that costs no EVENTS read on the way back): the caller tries,
        and comes back if it was for something else.
        """
        while True:
            if _events(sock) & event:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(
                    f"no reply from node {self.links.node_label(node_id)} in time; raise "
                    "timeout= if the handler is slow"
                )
            if not self._sleep(node_id, sock, int(remaining * 1000) + 1):
                return
            news = self._drain_news()
            if NOTIFY_STOP in news:
                raise NodeStopped(f"node {self.links.name} stopped")
            # News about an earlier incarnation of that node is stale: the
            # member we are talking to is still there.
            if (
                NOTIFY_DOWN + node_id.encode() in news
                and self.links.members.get(node_id) is not self._sockets.get(node_id, (None,))[0]
            ):
                raise NodeDown(
                    f"node {node_id} went down while the call was in flight; the outcome is unknown"
                )

    def _prune(self) -> None:
        """Forget finished calls (timed out, or failed by the node) whose reply never came."""
        calls = self._calls
        for rid, (result, _) in list(calls.items()):
            if result._flag._is_set:
                calls.pop(rid, None)

    # -- the loop: a node went down -------------------------------------------

    def read_replies_of(self, node_id: str, error: ZcellError) -> bool:
        """Before the loop fails the calls to a node that went down: read the
        replies that came (a node leaving gracefully answers first).

        False when the thread is inside the port: it reads them and fails the
        rest of that node's calls with ``error`` itself, on its way out.
        """
        with self._lock:
            if self._closed:
                return True
            if self.busy:
                self._downs.append((node_id, error))
                return False
            self._drain_all(self.links.codec.decode)
            self._drop_socket(node_id)
            return True

    def _drop_socket(self, node_id: str) -> None:
        """(Under the lock) close the DEALER to a node that went down."""
        self._pollers.pop(node_id, None)
        entry = self._sockets.pop(node_id, None)
        if entry is not None:
            entry[1].close(linger=0)

    def _fail_downs(self) -> None:
        """(Under the lock, by the thread) see ``read_replies_of``."""
        self._drain_all(self.links.thread_codec().decode)
        downs, self._downs = self._downs, []
        pending = self.links.pending
        for node_id, error in downs:
            self._drop_socket(node_id)
            for rid, (result, target) in list(self._calls.items()):
                if target == node_id:
                    del self._calls[rid]
                    pending.pop(rid, None)
                    result._complete(error=error, defer=self.links.loop.submit)

    # -- any thread: ask the loop to read for us -----------------------------

    def ask_loop(self) -> None:
        """Have the loop read this port's replies while its results are pending.

        For results nobody on the owning thread will read: a ``link`` callback,
        or a wait from another thread.
        """
        with self._lock:
            if self._polled or self._closed:
                return
            self._polled = True
        self.links.loop.submit(self._loop_poll, _LOOP_POLL[0])

    def _loop_poll(self, interval: float) -> None:
        """In the loop: read what the thread has not, then again after ``interval``."""
        with self._lock:
            if self._closed:
                self._polled = False
                return
            if not self.busy:  # else the thread reads them on its way out
                self._drain_all(self.links.codec.decode)
                self._prune()
                if not self._calls:
                    self._polled = False
                    return
        self._later(interval, self._loop_poll, min(interval * 2, _LOOP_POLL[1]))

    # -- the loop: coalesced frames leave within _LOOP_FLUSH -------------------

    def _loop_flush(self, idle: int) -> None:
        """In the loop: send what waits to leave while the thread is elsewhere.

        The timer keeps running through ``_FLUSH_IDLE`` ticks with nothing to
        send, so that a thread sending in bursts does not wake the loop with a
        ``submit`` for each one (a cross-thread wake-up, and a fight for the GIL).
        """
        with self._lock:
            if self._out:
                idle = 0
                if not self._closed and not self.busy:
                    self._flush()
            else:
                idle += 1
            if self._closed or idle > _FLUSH_IDLE:
                self._flusher = False
                return
        self._later(_LOOP_FLUSH, self._loop_flush, idle)

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """(In the loop) run ``fn(*args)`` there after ``delay`` seconds."""
        timer = self.links.loop.hub.loop.timer(delay)

        def fire() -> None:
            timer.close()
            fn(*args)

        timer.start(fire)

    # -- the loop: the thread has ended -----------------------------------------

    def retire(self) -> bool:
        """(Loop) Close the port of a thread that has ended, reading the replies
        that came first; False while calls made there still wait (try again later:
        another thread may wait on their results)."""
        with self._lock:
            if self._closed:
                return True
            if self.busy:
                return False
            if self._calls:
                self._drain_all(self.links.codec.decode)
                self._prune()
                if self._calls:
                    return False
            self._closed = True
            self._close_sockets()
            return True

    # -- the stopping node -----------------------------------------------------

    def close(self) -> bool:
        """Close the port (from the stopping node). False if its thread is inside a
        call: it closes the sockets itself on the way out."""
        with self._lock:
            self._closed = True
            if self.busy:
                return False
            self._close_sockets()
            return True

    def _close_sockets(self) -> None:
        if self._out:
            self._flush()  # a last chance for fire-and-forget frames
            for frames in self._out.values():
                self.links.stats["send_failures"] += len(frames)
            self._out.clear()
        self._pollers.clear()
        for _, sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if not self._notify.closed:
            self._notify.close(linger=0)
