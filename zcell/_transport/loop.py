"""A gevent hub in its own OS thread, and waking waiters across threads.

A node's sockets, greenlets and handlers all live in one OS thread that runs a
gevent hub (:class:`LoopThread`). The program's own threads never touch them:
they hand work to the loop with :meth:`LoopThread.submit` (an ``async_`` watcher
wakes the hub) and wait on a :class:`Flag`. So the node keeps serving while the
program sleeps, computes, or sits at a REPL prompt, patched or not.

:class:`Flag` is a one-shot event set from the loop thread and waited on from
anywhere: a greenlet of the same hub, a greenlet of another thread's hub (e.g.
a handler on a second node in the same process), or a plain thread.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.hub
from gevent import monkey
from greenlet import getcurrent

from ..errors import CallTimeout

if TYPE_CHECKING:
    from _thread import LockType

    from gevent.hub import Hub

_get_ident: Callable[[], int] = monkey.get_original("_thread", "get_ident")
_start_new_thread: Callable[..., int] = monkey.get_original("_thread", "start_new_thread")
_allocate_lock: Callable[[], LockType] = monkey.get_original("_thread", "allocate_lock")

log = logging.getLogger(__name__)

__all__ = ["Flag", "LoopThread", "hub_here", "real_lock", "real_thread", "thread_ident"]


# The OS thread id, even under monkey-patching (where threads are greenlets):
# the original builtin itself, as it is called on every message.
thread_ident: Callable[[], int] = _get_ident


def real_lock() -> LockType:
    """An OS-level lock, unaffected by monkey-patching."""
    return _allocate_lock()


def real_thread(fn: Callable[[], None]) -> int:
    """Start ``fn`` in a real OS thread, even under monkey-patching."""
    return _start_new_thread(fn, ())


def hub_here() -> Hub | None:
    """The running gevent hub of this thread, if the caller may switch to it."""
    hub = gevent.hub._get_hub()  # no creation: a plain thread stays plain
    if hub is None or getcurrent() is hub:
        return None
    return hub


_FLAG_MUTEX = _allocate_lock()
#: Callbacks handed over by other threads that one turn of the loop runs at most,
#: so that however many a program thread queues, the loop's other work (replies,
#: housekeeping) runs between them.
_DRAIN_TURN = 256


class Flag:
    """A one-shot event: ``set()`` from the owning loop thread, ``wait()`` from anywhere."""

    __slots__ = ("_is_set", "_waiters", "_mutex")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters: list[Callable[[], None]] | None = None
        # One lock for every flag: its sections are a few assignments and never
        # nest, and a lock per flag would cost an allocation per call result.
        self._mutex = _FLAG_MUTEX

    def is_set(self) -> bool:
        return self._is_set

    def set(self) -> None:
        with self._mutex:
            if self._is_set:
                return
            self._is_set = True
            waiters, self._waiters = self._waiters, None
        if waiters:
            for wake in waiters:
                wake()

    def _add(self, wake: Callable[[], None]) -> bool:
        with self._mutex:
            if self._is_set:
                return False
            if self._waiters is None:
                self._waiters = [wake]
            else:
                self._waiters.append(wake)
            return True

    def _discard(self, wake: Callable[[], None]) -> None:
        with self._mutex:
            if self._waiters and wake in self._waiters:
                self._waiters.remove(wake)

    def wait(self, timeout: float | None) -> bool:
        """Block (cooperatively where possible) until set or ``timeout`` seconds pass.

        Returns:
            True when the flag is set.
        """
        if self._is_set:
            return True
        if timeout is not None and timeout <= 0:
            return False
        hub = hub_here()
        if hub is None:
            return self._wait_thread(timeout)
        return self._wait_greenlet(hub, timeout)

    def _wait_thread(self, timeout: float | None) -> bool:
        lock = _allocate_lock()
        lock.acquire()
        if not self._add(lock.release):
            return True
        try:
            lock.acquire(True, -1 if timeout is None else timeout)
        finally:
            self._discard(lock.release)
        return self._is_set

    def _wait_greenlet(self, hub: Hub, timeout: float | None) -> bool:
        current = getcurrent()
        # set() may come from another thread: run_callback_threadsafe wakes this
        # hub safely from anywhere; from its own thread (a reply read by the
        # node's reader) a plain callback does, without the async watcher's
        # extra turn of the loop.
        loop = hub.loop
        owner = _get_ident()
        waiting = [True]

        def resume() -> None:
            # A wake-up that arrives after we stopped waiting must not resume
            # this greenlet somewhere else.
            if waiting[0]:
                current.switch(self)

        def wake() -> None:
            if _get_ident() == owner:
                loop.run_callback(resume)
            else:
                loop.run_callback_threadsafe(resume)

        timer = None
        if timeout is not None:
            timer = hub.loop.timer(timeout)
            timer.start(current.switch, None)
        try:
            if not self._add(wake):
                return True
            try:
                while not self._is_set:
                    if hub.switch() is None:  # the timer fired
                        break
            finally:
                self._discard(wake)
        finally:
            waiting[0] = False
            if timer is not None:
                timer.stop()
                timer.close()
        return self._is_set


class LoopThread:
    """Run a gevent hub in a dedicated OS thread and accept work from any thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ident: int | None = None
        self.hub: Any = None
        self._queue: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._async: Any = None
        self._ready = Flag()
        self._exited = Flag()
        self._main: Callable[[], None] | None = None
        self._stopping = False

    def in_loop(self) -> bool:
        """True when called from this loop's own thread."""
        return _get_ident() == self.ident

    def start(self, main: Callable[[], None], timeout: float = 10.0) -> None:
        """Start the thread; ``main`` runs in a greenlet there; returns once the hub runs."""
        self._main = main
        real_thread(self._run)
        if not self._ready.wait(timeout):  # pragma: no cover - would mean a broken gevent
            raise RuntimeError(f"zcell loop thread {self.name!r} did not start")

    def _run(self) -> None:
        self.ident = _get_ident()
        hub = self.hub = gevent.get_hub()
        self._async = hub.loop.async_()
        self._async.start(self._drain)
        # The (referenced) async watcher keeps the loop alive until main ends.
        assert self._main is not None
        main = gevent.spawn(self._main)
        self._ready.set()
        try:
            main.join()
        except BaseException:  # pragma: no cover - main logs its own failures
            log.exception("zcell loop %s crashed", self.name)
        finally:
            self._drain()
            self._async.stop()
            self._async.close()
            try:
                hub.destroy(destroy_loop=True)
                if not hub.dead:
                    # destroy() leaves the hub suspended in its LoopExit; a
                    # greenlet suspended when its thread ends is never freed,
                    # nor anything its frame holds: finish it here.
                    hub.throw(gevent.GreenletExit)
            except Exception:  # pragma: no cover
                log.debug("hub destroy failed", exc_info=True)
            self._exited.set()

    def _drain(self) -> None:
        queue = self._queue
        for _ in range(_DRAIN_TURN):
            if not queue:
                return
            fn, args = queue.popleft()
            try:
                fn(*args)
            except BaseException:  # even SystemExit: raised here, it would end the loop
                log.exception("zcell: callback %r failed in loop %s", fn, self.name)
        if queue and self._async is not None:
            self._async.send()  # the rest after the loop's other work of this turn

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` soon in the loop thread (a hub callback: it must not block)."""
        self._queue.append((fn, args))
        watcher = self._async
        if watcher is not None:
            watcher.send()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` in a new greenlet of the loop; wait for and return its result."""
        if self.in_loop():
            return fn(*args)
        done = Flag()
        box: list[Any] = [None, None]

        def run() -> None:
            try:
                box[0] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box[1] = exc
            finally:
                done.set()

        self.submit(gevent.spawn, run)
        if not done.wait(timeout):
            raise CallTimeout(
                f"zcell loop {self.name!r} did not run {fn.__name__} within {timeout}s; "
                "is a handler blocking the node's loop?"
            )
        if box[1] is not None:
            raise box[1]
        return box[0]

    def join(self, timeout: float | None) -> bool:
        return self._exited.wait(timeout)
