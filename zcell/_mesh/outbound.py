"""Messages from the program's threads to one peer: a queue and a sender greenlet.

A thread outside the node's loop cannot touch its sockets. It appends the
encoded frame to the destination's queue and wakes the loop only when the loop
has found the queue empty and gone idle (both decided under one lock, so no
wake-up is lost); one greenlet per destination sends in order, waiting whenever
the peer is slow. When a queue holds ``limit`` frames the calling thread waits (up
to its own deadline) for room: back-pressure reaches the program instead of
memory filling up, and nothing is dropped silently.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from .._transport.loop import Flag, real_lock
from ..errors import CallTimeout, ZcellError

log = logging.getLogger(__name__)

__all__ = ["Outbound"]

# (frame, deadline, request id or None)
Item = tuple[bytes, float, int | None]


class Outbound:
    """The queue of frames the program's threads send to one node."""

    def __init__(
        self,
        node_id: str,
        send: Callable[[str, bytes, float], Any],
        failed: Callable[[int | None, ZcellError], None],
        submit: Callable[..., None],
        limit: int = 1000,
        try_send: Callable[[str, bytes], bool] | None = None,
    ) -> None:
        self.node_id = node_id
        self._send = send  # blocking send in the loop (waits up to the deadline)
        self._failed = failed  # reports a frame that could not be sent
        self._submit = submit  # thread-safe: run a callback in the loop
        self._limit = limit
        self._queue: collections.deque[Item] = collections.deque()
        self._space: Flag | None = None  # set when the queue drains below half
        self._mutex = real_lock()
        self._wake: Event | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._closed = False
        self._busy = False  # the sender greenlet is sending: keep the order
        self._idle = True  # the loop is not going to look at the queue: wake it
        self._try_send = try_send  # non-blocking send, for the callback fast path

    # -- any thread ----------------------------------------------------------

    def put(self, frame: bytes, deadline: float, rid: int | None) -> None:
        """Queue a frame (from a thread outside the loop); may wait for room."""
        queue = self._queue
        while len(queue) >= self._limit and not self._closed:
            self._wait_for_room(deadline)
        with self._mutex:
            # Appending and deciding to wake the loop are one step: the loop
            # decides to sleep under the same lock (``_idle_if_empty``), so a
            # frame can never land in a queue nobody is going to look at.
            if self._closed:
                raise ZcellError(f"no longer sending to node {self.node_id}")
            queue.append((frame, deadline, rid))
            wake_loop, self._idle = self._idle, False
        if wake_loop:
            self._submit(self._send_queued)

    def _wait_for_room(self, deadline: float) -> None:
        """Wait until the loop has drained the queue below half (or raise CallTimeout)."""
        queue = self._queue
        with self._mutex:
            space = self._space
            if space is None:
                space = self._space = Flag()
        # The loop releases only a flag it can see: if it drained the queue
        # before ours was there, the length shows it (checked after publishing).
        if len(queue) < self._limit:
            return
        remaining = deadline - time.monotonic()
        if not space.wait(remaining) and len(queue) >= self._limit:
            raise CallTimeout(
                f"node {self.node_id} is not taking messages fast enough: {len(queue)} "
                "queued for it; slow down, or raise timeout="
            )

    # -- loop thread ---------------------------------------------------------

    def _send_queued(self) -> None:
        # The common case: the socket takes the frames at once. Send them from
        # this callback, without a greenlet switch.
        if self._try_send is not None and (self._greenlet is None or not self._busy):
            queue = self._queue
            try:
                while queue:
                    frame, _, rid = queue[0]
                    if not self._try_send(self.node_id, frame):
                        break
                    queue.popleft()
            except ZcellError as exc:
                queue.popleft()
                self._failed(rid, exc)
            if self._space is not None and len(queue) <= self._limit // 2:
                self._release()
            if self._idle_if_empty():
                return
        if self._greenlet is None:
            self._wake = Event()
            self._greenlet = gevent.spawn(self._run)
        elif self._wake is not None:
            self._wake.set()

    def _run(self) -> None:
        queue = self._queue
        wake = self._wake
        assert wake is not None
        while not self._closed:
            self._busy = True
            while queue:
                frame, deadline, rid = queue[0]
                try:
                    self._send(self.node_id, frame, deadline)
                except ZcellError as exc:
                    self._failed(rid, exc)
                queue.popleft()
                if self._space is not None and len(queue) <= self._limit // 2:
                    self._release()
            self._busy = False
            wake.clear()
            if self._idle_if_empty():
                wake.wait()

    def _idle_if_empty(self) -> bool:
        """(Loop) True if the queue is empty: the next ``put`` wakes the loop."""
        with self._mutex:
            if self._queue:
                return False
            self._idle = True
            return True

    def _release(self) -> None:
        with self._mutex:
            space, self._space = self._space, None
        if space is not None:
            space.set()

    def close(self, error: ZcellError) -> None:
        """Fail everything queued (the node went down or we stop)."""
        self._closed = True
        while self._queue:
            _, _, rid = self._queue.popleft()
            self._failed(rid, error)
        self._release()
        if self._wake is not None:
            self._wake.set()
