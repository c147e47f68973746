"""A program thread's own way to its peers: no hop through the node's loop.

Handing every call to the node's loop thread and back costs two cross-thread
wake-ups (~40 µs each across cores here), as much as the network round trip.
So a plain thread (one not running a gevent hub) gets a *port*: its own DEALER
to each peer it talks to. Its direct messages (``send``, ``call``, fire and
forget) go out on that socket, in order; the reply to a blocking ``send`` comes
straight back on it (the peer answers through its ROUTER to our routing id),
and the thread waits in ``zmq.poll`` without waking the loop. Replies to
``call`` still go to the node's inbox, where the loop completes the
``AsyncResult``.

The loop tells waiting ports about nodes going down and about its own stop
through an inproc PUB, so calls still fail with ``NodeDown`` at once. The port's
sockets are only ever used by their thread, or, under the port's lock while the
thread is not inside a call, by the stopping node that closes them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import zmq

from .errors import CallTimeout, NodeDown, NodeStopped, ZcellError
from .loop import real_lock

if TYPE_CHECKING:
    from .node import Node

__all__ = ["ThreadPort"]

_POLLIN = int(zmq.POLLIN)
NOTIFY_DOWN = b"D"
NOTIFY_STOP = b"S"


class ThreadPort:
    """One program thread's sockets to the peers of one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        assert node._ctx is not None
        self._ctx = node._ctx
        self._sockets: dict[str, tuple[Any, zmq.Socket]] = {}  # node id -> (member, socket)
        self._notify = self._ctx.zmq.socket(zmq.SUB)
        self._notify.setsockopt(zmq.LINGER, 0)
        self._notify.setsockopt(zmq.SUBSCRIBE, b"")
        self._notify.connect(node._notify_endpoint)
        self._lock = real_lock()
        self._busy = False
        self._closed = False
        self.sent = 0  # counted here (this thread), summed by Node.statistics()
        self.received = 0

    # -- the owning thread ---------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            if self._closed:
                raise NodeStopped(f"node {self._node.name} is stopped; create a new Node")
            self._busy = True

    def _leave(self) -> None:
        with self._lock:
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
        self._enter()
        try:
            # News read now is about earlier calls (a node that left may be back).
            notify = self._notify
            while int(notify.getsockopt(zmq.EVENTS)) & _POLLIN:
                notify.recv(zmq.NOBLOCK)
            sock = self._socket(node_id)
            self._put(sock, node_id, frame, deadline)
            self.sent += 1
            if rid is None:
                return None
            reply = self._reply(sock, node_id, rid, deadline)
            self.received += 1
            return reply
        finally:
            self._leave()

    def _put(self, sock: zmq.Socket, node_id: str, frame: bytes, deadline: float) -> None:
        try:
            sock.send(frame, zmq.NOBLOCK)
            return
        except zmq.Again:
            pass
        # Not connected yet, or the peer is full: wait for room (back-pressure).
        while True:
            self._wait(sock, zmq.POLLOUT, node_id, deadline)
            try:
                sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                continue

    def _reply(self, sock: zmq.Socket, node_id: str, rid: int, deadline: float) -> list[Any]:
        decode = self._node._thread_codec().decode
        while True:
            self._wait(sock, zmq.POLLIN, node_id, deadline)
            while True:
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = decode(data)
                except ZcellError:
                    self._node.stats["dropped_bad_frames"] += 1
                    continue
                if msg[2] == rid:
                    return msg
                self._node.stats["late_replies"] += 1  # a reply to an earlier, timed-out call

    def _wait(self, sock: zmq.Socket, event: int, node_id: str, deadline: float) -> None:
        """Block (GIL released) until ``sock`` has ``event``; watch for down/stop news."""
        notify = self._notify
        poller = zmq.Poller()
        poller.register(sock, event)
        poller.register(notify, zmq.POLLIN)
        target = NOTIFY_DOWN + node_id.encode()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(
                    f"no reply from node {node_id} in time; raise timeout= if the handler is slow"
                )
            ready = dict(poller.poll(int(remaining * 1000) + 1))
            if notify in ready:
                while True:
                    try:
                        news = notify.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if news == NOTIFY_STOP:
                        raise NodeStopped(f"node {self._node.name} stopped")
                    if news == target:
                        raise NodeDown(
                            f"node {node_id} went down while the call was in flight; "
                            "the outcome is unknown"
                        )
            if sock in ready:
                return
            if node_id not in self._node._members:
                raise NodeDown(f"node {node_id} went down; the outcome is unknown")

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
        for _, sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()
        if not self._notify.closed:
            self._notify.close(linger=0)
