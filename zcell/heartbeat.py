"""The heartbeat sender: a small real OS thread with its own PUB socket.

It keeps a node's heartbeats flowing while a handler hogs the node's loop (the
GIL is released every few ms, and zmq sends release it), so peers never declare
a busy node dead. It also measures how late it runs, which tells when the whole
process was stopped (SIGSTOP) rather than merely busy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from .loop import real_thread

log = logging.getLogger("zcell.heartbeat")

__all__ = ["HeartbeatThread"]


class HeartbeatThread:
    """Publish ``make_frame()`` every ``interval`` seconds until ``stop()``."""

    def __init__(
        self,
        context: zmq.Context,
        host: str,
        interval: float,
        make_frame: Callable[[], bytes],
        configure: Callable[[Any], None],
    ) -> None:
        self._context = context
        self._host = host
        self._interval = interval
        self._make_frame = make_frame
        self._configure = configure
        self._control = f"inproc://zcell-hb-{id(self):x}"
        self.endpoint = ""
        self._ready: list[str] = []
        self._stop_sock: Any = None
        # Process-stop detection (see stopped_since). Written by this thread only:
        self.stall_after = 2.6 * interval  # = how long peers wait before "down"
        self.last_beat = time.monotonic()
        self.stalled_since = 0.0  # last beat before a gap longer than stall_after
        # Written by the node's loop thread only:
        self.stall_handled = 0.0
        self.quiet_until = 0.0  # the node re-admits no peer before this time

    def stopped_since(self, now: float) -> float | None:
        """When a process stop not yet reported began, else None (loop thread only).

        This thread keeps beating while a handler hogs the node's loop, so its own
        silence for ``stall_after`` seconds means the whole process was stopped
        (SIGSTOP, a paused VM) and every peer has stopped hearing us. It shows as
        a recorded gap, or, before this thread has run again, as an overdue beat.
        Each stop is reported once.
        """
        last = self.last_beat
        since = last if now - last > self.stall_after else self.stalled_since
        if since <= self.stall_handled:
            return None
        self.stall_handled = since
        return since

    def start(self) -> str:
        """Bind the socket (in this thread, then hand it over); return its endpoint."""
        pub = self._context.socket(zmq.PUB)
        self._configure(pub)
        port = pub.bind_to_random_port(f"tcp://{self._host}", min_port=20000, max_port=60000)
        self.endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._port = port
        control = self._context.socket(zmq.PAIR)
        control.setsockopt(zmq.LINGER, 0)
        control.bind(self._control)
        self._stop_sock = self._context.socket(zmq.PAIR)
        self._stop_sock.setsockopt(zmq.LINGER, 0)
        self._stop_sock.connect(self._control)
        self._pub, self._ctl = pub, control
        real_thread(self._run)
        return self.endpoint

    def _run(self) -> None:
        pub, control = self._pub, self._ctl
        interval_ms = int(self._interval * 1000)
        try:
            while True:
                now = time.monotonic()
                if now - self.last_beat > self.stall_after:
                    # Record the gap before moving last_beat (the node reads them
                    # in the other order, without a lock).
                    self.stalled_since = self.last_beat
                self.last_beat = now
                try:
                    pub.send(self._make_frame(), zmq.NOBLOCK)
                except zmq.Again:
                    pass
                except Exception:  # never let a bad frame kill liveness silently
                    log.exception("heartbeat failed")
                # poll on the control socket is an interruptible sleep.
                if control.poll(interval_ms):
                    break
        finally:
            pub.close(linger=0)
            control.close(linger=0)

    def stop(self) -> None:
        sock, self._stop_sock = self._stop_sock, None
        if sock is not None:
            try:
                sock.send(b"stop")
            finally:
                sock.close(linger=0)
        # Give the thread a moment to close its sockets before the context ends.
        deadline = time.monotonic() + 1.0
        while not self._pub.closed and time.monotonic() < deadline:
            time.sleep(0.005)
