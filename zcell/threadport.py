"""A program thread's own way to its peers: no hop through the node's loop.

Handing every call to the node's loop thread and back costs two cross-thread
wake-ups (~40 µs each across cores here), as much as the network round trip,
and the two threads then fight over the GIL. So a plain thread (one not running
a gevent hub) gets a *port*: its own DEALER to each peer it talks to. Its direct
messages (``send``, ``call``, fire and forget) go out on that socket, in order,
and their replies come straight back on it (the peer answers through its ROUTER
to our routing id):

- a blocking ``send`` waits for its reply in ``zmq.poll``, without waking the
  loop;
- a ``call``'s ``AsyncResult`` is completed by the thread itself, which reads
  the replies that have arrived every time it goes through the port (each send,
  and ``get()``/``ready()``/``state`` of one of its results). A pipelined loop
  of calls therefore never wakes the loop either.

When nobody on the thread will read them (a ``link`` callback waits, or another
thread waits on the result), the thread asks the loop to read the port's
sockets for it (``ask_loop``): the loop polls them every few milliseconds while
such results are pending, at moments when the thread is not inside the port.

The loop tells waiting ports about nodes going down and about its own stop
through an inproc PUB, so calls still fail with ``NodeDown`` at once. The port's
sockets are used by their thread while it is inside the port (``_busy``), and
otherwise, under the port's lock, by the loop (reading for ``ask_loop``) or by
the stopping node (closing them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq
import zmq.backend

from .errors import CallTimeout, NodeDown, NodeStopped, ZcellError
from .loop import real_lock, thread_ident
from .wire import REP

if TYPE_CHECKING:
    from .node import Node
    from .result import AsyncResult

__all__ = ["ThreadPort"]

_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_AGAIN = zmq.Again
# pyzmq's Python layer above it costs ~0.3 us a send.
_send: Callable[..., Any] = zmq.backend.Socket.send
NOTIFY_DOWN = b"D"
NOTIFY_STOP = b"S"
_LOOP_POLL = (0.001, 0.01)  # the loop's polling interval for ask_loop: first, longest
_DRAIN_EVERY = 32  # calls between reads of the replies nobody asked for yet
_PRUNE_EVERY = 1024  # calls between sweeps of finished results out of _calls


def _events(sock: zmq.Socket) -> int:
    return int(sock.get(_EVENTS))  # an int for EVENTS


class ThreadPort:
    """One program thread's sockets to the peers of one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        assert node._ctx is not None
        self._ctx = node._ctx
        self.owner = thread_ident()
        self.encode = node._thread_codec().encode  # this thread's own packer
        self._sockets: dict[str, tuple[Any, zmq.Socket]] = {}  # node id -> (member, socket)
        self._notify = self._ctx.zmq.socket(zmq.SUB)
        self._notify.setsockopt(zmq.LINGER, 0)
        self._notify.setsockopt(zmq.SUBSCRIBE, b"")
        self._notify.connect(node._notify_endpoint)
        self._lock = real_lock()
        self._busy = False
        self._closed = False
        # Calls whose replies come to this port: request id -> (result, node id).
        self._calls: dict[int, tuple[AsyncResult, str]] = {}
        self._registered = 0
        self._pollers: dict[tuple[str, int], tuple[zmq.Socket, zmq.Poller]] = {}
        self._polled = False  # the loop reads for us (see ask_loop)
        self._downs: list[tuple[str, ZcellError]] = []  # see settle
        self.sent = 0  # counted here (this thread), summed by Node.statistics()
        self.received = 0
        self.late = 0
        self.dropped = 0

    # -- the owning thread ---------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise NodeStopped(f"node {self._node.name} is stopped; create a new Node")
            self._busy = True

    def _leave(self) -> None:
        with self._lock:
            if self._downs and not self._closed:
                self._settle_downs()
            self._busy = False
            if self._closed:
                self._close_sockets()

    def _socket(self, node_id: str) -> zmq.Socket:
        member = self._node._members.get(node_id)
        if member is None:
            raise NodeDown(f"node {node_id} is not (or no longer) in the mesh")
        entry = self._sockets.get(node_id)
        if entry is not None:
            if entry[0] is member:
                return entry[1]
            entry[1].close(linger=0)  # the node left and came back: a new connection
        sock = self._ctx.raw_socket(zmq.DEALER)
        sock.connect(member.inbox)
        self._sockets[node_id] = (member, sock)
        return sock

    def send(
        self, node_id: str, frame: bytes, deadline: float, rid: int | None
    ) -> list[Any] | None:
        """Send ``frame``; with ``rid``, wait for and return the decoded direct reply."""
        if rid is None and self._send_now(node_id, frame):
            return None
        self._enter()
        try:
            sock = self._socket(node_id)
            self._put(sock, node_id, frame, deadline)
            self.sent += 1
            if rid is None:
                return None
            return self._reply(sock, node_id, rid, deadline)
        finally:
            self._leave()

    def _send_now(self, node_id: str, frame: bytes) -> bool:
        """The fast path: send at once if the socket has room (under the lock
        alone: nothing here waits). False when the slow path must do it."""
        with self._lock:
            if self._busy or self._closed:
                return False
            entry = self._sockets.get(node_id)
            if entry is None or entry[0] is not self._node._members.get(node_id):
                return False
            try:
                _send(entry[1], frame, _NOBLOCK)
            except _AGAIN:
                return False
            self.sent += 1
            return True

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
                    if not self._busy:
                        self._prune()
        try:
            if not self._send_now(node_id, frame):
                self._enter()
                try:
                    self._put(self._socket(node_id), node_id, frame, deadline)
                    self.sent += 1
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
            decode = self._node._thread_codec().decode
            poll = self._poller(node_id, sock, _POLLIN)
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
                ready = poll(wait_ms)
                if ready and (len(ready) > 1 or ready[0][0] is not sock):
                    # News from the loop. It fails a down node's calls before
                    # telling us, so the result shows it; a stop we act on.
                    if NOTIFY_STOP in self._drain_news():
                        result._complete(error=NodeStopped(f"node {self._node.name} stopped"))
                    with self._lock:
                        if self._downs:
                            self._settle_downs()  # the loop left our calls to us
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
            decode = self._node._thread_codec().decode
            for _, sock in list(self._sockets.values()):
                self._drain(sock, decode)
        finally:
            self._leave()

    def _put(self, sock: zmq.Socket, node_id: str, frame: bytes, deadline: float) -> None:
        try:
            sock.send(frame, _NOBLOCK)
            return
        except _AGAIN:
            pass
        # Not connected yet, or the peer is full: wait for room (back-pressure).
        while True:
            self._wait(sock, zmq.POLLOUT, node_id, deadline)
            try:
                sock.send(frame, _NOBLOCK)
                return
            except _AGAIN:
                continue

    def _reply(self, sock: zmq.Socket, node_id: str, rid: int, deadline: float) -> list[Any]:
        decode = self._node._thread_codec().decode
        calls = self._calls
        while True:
            self._wait(sock, _POLLIN, node_id, deadline)
            while True:  # poll said readable: recv at once (no EVENTS first)
                try:
                    data = sock.recv(_NOBLOCK)
                except _AGAIN:
                    break
                try:
                    msg = decode(data)
                except ZcellError:
                    self.dropped += 1
                    continue
                if msg[1] != REP:
                    self.dropped += 1
                    continue
                self.received += 1
                if msg[2] == rid:
                    return msg  # replies behind it are read in later
                entry = calls.pop(msg[2], None)
                if entry is None or not self._node._complete_call(entry[0], msg):
                    self.late += 1

    def _poller(self, node_id: str, sock: zmq.Socket, event: int) -> Any:
        """A poller on ``sock`` and the news socket, made once per socket and event."""
        key = (node_id, event)
        entry = self._pollers.get(key)
        if entry is None or entry[0] is not sock:
            poller = zmq.Poller()
            poller.register(sock, event)
            poller.register(self._notify, zmq.POLLIN)
            entry = self._pollers[key] = (sock, poller)
        return entry[1].poll

    def _drain(self, sock: zmq.Socket, decode: Any, rid: int | None = None) -> list[Any] | None:
        """Read every reply waiting on ``sock``; complete the calls among them.

        Returns the reply to ``rid`` (a blocking send's) if it came.
        """
        found = None
        calls = self._calls
        complete = self._node._complete_call
        # EVENTS before each message: a recv that finds nothing raises
        # zmq.Again, which costs three times as much. The parts of one
        # (coalesced) message are all there: read them on `more` alone.
        while _events(sock) & _POLLIN:
            more = True
            while more:
                try:
                    part = sock.recv(_NOBLOCK, copy=False)
                except _AGAIN:
                    break
                more = part.more
                try:
                    msg = decode(part.bytes)
                except ZcellError:
                    self.dropped += 1
                    continue
                if msg[1] != REP:
                    self.dropped += 1
                    continue
                self.received += 1
                msg_rid = msg[2]
                if msg_rid == rid:
                    found = msg
                    continue
                entry = calls.pop(msg_rid, None)
                if entry is None or not complete(entry[0], msg):
                    self.late += 1  # a reply to an earlier, timed-out call
        return found

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

    def _wait(self, sock: zmq.Socket, event: int, node_id: str, deadline: float) -> None:
        """Block (GIL released) until ``sock`` has ``event``; watch for down/stop news."""
        poll = self._poller(node_id, sock, event)
        member = self._sockets[node_id][0]
        target = NOTIFY_DOWN + node_id.encode()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(
                    f"no reply from node {node_id} in time; raise timeout= if the handler is slow"
                )
            ready = poll(int(remaining * 1000) + 1)
            if not ready:
                continue
            if len(ready) == 1 and ready[0][0] is sock:
                return
            news = self._drain_news()
            if NOTIFY_STOP in news:
                raise NodeStopped(f"node {self._node.name} stopped")
            # News about an earlier incarnation of that node is stale: the
            # member we are talking to is still there.
            if target in news and self._node._members.get(node_id) is not member:
                raise NodeDown(
                    f"node {node_id} went down while the call was in flight; the outcome is unknown"
                )
            if any(item[0] is sock for item in ready):
                return

    def _prune(self) -> None:
        """Forget finished calls (timed out, or failed by the node) whose reply never came."""
        calls = self._calls
        for rid, (result, _) in list(calls.items()):
            if result._flag._is_set:
                calls.pop(rid, None)

    # -- the loop: a node went down -------------------------------------------

    def settle(self, node_id: str, error: ZcellError) -> bool:
        """Before the loop fails the calls to a node that went down: read the
        replies that came (a node leaving gracefully answers first).

        False when the thread is inside the port: it reads them and fails the
        rest of that node's calls with ``error`` itself, on its way out.
        """
        with self._lock:
            if self._closed:
                return True
            if self._busy:
                self._downs.append((node_id, error))
                return False
            decode = self._node._codec.decode
            for _, sock in list(self._sockets.values()):
                self._drain(sock, decode)
            return True

    def _settle_downs(self) -> None:
        """(Under the lock, by the thread) see ``settle``."""
        decode = self._node._thread_codec().decode
        for _, sock in list(self._sockets.values()):
            self._drain(sock, decode)
        downs, self._downs = self._downs, []
        pending = self._node._pending
        for node_id, error in downs:
            for rid, (result, target) in list(self._calls.items()):
                if target == node_id:
                    del self._calls[rid]
                    pending.pop(rid, None)
                    result._complete(error=error, defer=self._node._loop.submit)

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
        self._node._loop.submit(self._loop_poll, _LOOP_POLL[0])

    def _loop_poll(self, interval: float) -> None:
        """In the loop: read what the thread has not, then again after ``interval``."""
        with self._lock:
            if self._closed:
                self._polled = False
                return
            if not self._busy:  # else the thread reads them on its way out
                decode = self._node._codec.decode
                for _, sock in list(self._sockets.values()):
                    self._drain(sock, decode)
                self._prune()
                if not self._calls:
                    self._polled = False
                    return
        timer = self._node._loop.hub.loop.timer(interval)
        timer.start(self._loop_poll_again, timer, min(interval * 2, _LOOP_POLL[1]))

    def _loop_poll_again(self, timer: Any, interval: float) -> None:
        timer.close()
        self._loop_poll(interval)

    # -- the stopping node -----------------------------------------------------

    def close(self) -> bool:
        """Close the port (from the stopping node). False if its thread is inside a
        call: it closes the sockets itself on the way out."""
        with self._lock:
            self._closed = True
            if self._busy:
                return False
            self._close_sockets()
            return True

    def _close_sockets(self) -> None:
        self._pollers.clear()
        for _, sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if not self._notify.closed:
            self._notify.close(linger=0)
