"""The heartbeat sender: a small real OS thread with its own PUB socket.

It keeps a node's heartbeats flowing while a handler hogs the node's loop (the
GIL is released every few ms, and zmq sends release it), so peers never declare
a busy node dead. It also measures how late it runs, which tells when the whole
process was stopped (SIGSTOP) rather than merely busy.

It is also the loop's watchdog: a loop that has not ticked for
``STUCK_HEARTBEATS`` heartbeats *and* used almost no CPU meanwhile is stuck (a
handler waits on a lock or a sleep that gevent does not see), not busy. Then it
stops beating, so peers declare the node down and stop routing to it, until the
loop ticks again; then the node drops its peers as they dropped it (as after a
process stop: ``stopped_since``), and their knocks bring it back.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import zmq

from .loop import real_thread, thread_ident
from .sockets import RANDOM_PORTS

log = logging.getLogger(__name__)

__all__ = ["STUCK_HEARTBEATS", "HeartbeatThread", "thread_cpu_clock"]

#: Heartbeats without a loop tick (and without loop CPU) before a node calls itself stuck.
STUCK_HEARTBEATS = 5
# A loop using less than this share of one CPU is waiting, not computing.
_IDLE_CPU_SHARE = 0.1


def thread_cpu_clock() -> Callable[[], float] | None:
    """A reader of the calling thread's CPU time that works from other threads
    (None where the platform has no per-thread clocks)."""
    try:
        clock = time.pthread_getcpuclockid(thread_ident())
        time.clock_gettime(clock)
    except (AttributeError, OSError):  # pragma: no cover - not Linux/BSD
        return None
    return lambda: time.clock_gettime(clock)


class HeartbeatThread:
    """Publish ``make_frame()`` every ``interval`` seconds until ``stop()``."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        host: str,
        interval: float,
        make_frame: Callable[[], bytes],
        configure: Callable[[zmq.Socket[bytes]], None],
        loop_cpu: Callable[[], float] | None = None,
        name: str = "",
    ) -> None:
        self._context = context
        self._host = host
        self._interval = interval
        self._make_frame = make_frame
        self._configure = configure
        self._control = f"inproc://zcell-hb-{id(self):x}"
        self.endpoint = ""
        self._ready: list[str] = []
        self._stop_sock: zmq.Socket[bytes] | None = None
        # Silence detection (see stopped_since). Written by this thread only:
        self.stall_after = 2.6 * interval  # = how long peers wait before "down"
        self.last_beat = time.monotonic()  # this thread's last turn
        self.last_sent = self.last_beat  # the last heartbeat it sent
        self.stalled_since = 0.0  # last one sent before a silence longer than stall_after
        # Written by the node's loop thread only:
        self.stall_handled = 0.0
        self.quiet_until = 0.0  # the node re-admits no peer before this time
        self.loop_tick = time.monotonic()  # the loop's last sign of life
        # The watchdog's (this thread's) own state:
        self.stuck_after = STUCK_HEARTBEATS * interval
        self.stuck = False
        self._woke_at = 0.0  # the end of the last process stop
        self._name = name
        self._loop_cpu = loop_cpu
        self._cpu_samples: collections.deque[tuple[float, float]] = collections.deque()

    def stopped_since(self, now: float) -> float | None:
        """When a silence of our heartbeats not yet reported began, long enough
        for every peer to have declared us down, else None (loop thread only).

        This thread keeps beating while a handler hogs the node's loop, so a
        silence of ``stall_after`` seconds means the whole process was stopped
        (SIGSTOP, a paused VM), or the watchdog paused the heartbeats of a stuck
        loop. It shows as a recorded gap, or, before this thread has sent again,
        as an overdue beat. Each silence is reported once.
        """
        last = self.last_sent
        since = last if now - last > self.stall_after else self.stalled_since
        if since <= self.stall_handled:
            return None
        self.stall_handled = since
        return since

    def start(self) -> str:
        """Bind the socket (in this thread, then hand it over); return its endpoint."""
        pub = self._context.socket(zmq.PUB)
        self._configure(pub)
        low, high = RANDOM_PORTS
        pub.bind_to_random_port(f"tcp://{self._host}", min_port=low, max_port=high)
        self.endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
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
                    self._woke_at = now  # the loop was stopped too, not stuck
                self.last_beat = now
                try:
                    if self._loop_alive(now):
                        if now - self.last_sent > self.stall_after:
                            # Record the silence before moving last_sent (the node
                            # reads them in the other order, without a lock).
                            self.stalled_since = self.last_sent
                        pub.send(self._make_frame(), zmq.NOBLOCK)
                        self.last_sent = now
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

    def _loop_alive(self, now: float) -> bool:
        """The watchdog: False (and logged once) while the loop is stuck."""
        computing = self._loop_computing(now)  # sampled every beat: a full window
        silent = now - max(self.loop_tick, self._woke_at)
        stuck = silent > self.stuck_after and not computing
        if stuck != self.stuck:
            self.stuck = stuck
            if stuck:
                log.warning(
                    "zcell: node %s is unhealthy: its loop has been stuck for %.1fs without "
                    "using the CPU (a handler waits on something gevent does not see: a "
                    "threading lock, an unpatched sleep or socket); heartbeats paused, so "
                    "peers drop it until the loop is free",
                    self._name,
                    silent,
                )
            else:
                log.warning("zcell: node %s loop is free again; heartbeats resume", self._name)
        return not stuck

    def _loop_computing(self, now: float) -> bool:
        """Whether the loop thread used CPU over the last ``stuck_after`` seconds
        (a CPU-hogging handler is busy, not stuck). Unknown counts as not."""
        if self._loop_cpu is None:
            return False
        samples = self._cpu_samples
        samples.append((now, self._loop_cpu()))
        while len(samples) > 1 and samples[1][0] <= now - self.stuck_after:
            samples.popleft()
        (then, cpu_then), (_, cpu_now) = samples[0], samples[-1]
        return now > then and cpu_now - cpu_then > _IDLE_CPU_SHARE * (now - then)

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
