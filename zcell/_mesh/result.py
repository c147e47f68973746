"""Results of calls: ``AsyncResult`` (one reply), ``ScatterResult`` (a stream)
and ``Then`` (one reply handed to a function), and ``PendingCalls``, the node's
table of them, where each reply is matched.

The first two may be waited on from any thread or greenlet; every wait is bounded
by the call's own deadline (a ``Then`` is never waited on: the loop hands its
outcome over). They are completed by the node's loop thread, except the
results of ``call`` made in a plain program thread, whose replies come to that
thread's port (``threadport.py``): that thread completes them as it reads
them, and the loop does so for it when it will not (see ``_observe``).
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from gevent.hub import _get_hub
from greenlet import greenlet

from .._transport.loop import Flag, real_lock, thread_ident
from .._wire import DECLINED, ERROR, OK, P_ID, P_SRC, P_STATUS, ZERROR
from ..errors import (
    ActorStopped,
    CallTimeout,
    NodeStopped,
    NoNodeForType,
    NoSuchActor,
    NoSuchMethod,
    SerializationError,
    ZcellError,
    error_from_wire,
)

if TYPE_CHECKING:
    from .._transport.loop import LoopThread
    from .directory import Roster
    from .threadport import ThreadPort

__all__ = [
    "AsyncResult",
    "PendingCalls",
    "ScatterResult",
    "Then",
    "error_from_reply",
    "first_reply",
    "zcell_error",
]

log = logging.getLogger(__name__)

PENDING, SUCCESS, FAILURE = "PENDING", "SUCCESS", "FAILURE"
_UNSET = object()


class AsyncResult:
    """The future result of ``call()`` (and the machinery under ``send()``).

    Attributes:
        id: The request id.
    """

    __slots__ = (
        "id",
        "_deadline",
        "_flag",
        "_value",
        "_error",
        "_callbacks",
        "_raw",
        "_cancel",
        "_port",
        "_to",
    )

    def __init__(
        self,
        request_id: int,
        deadline: float | None,
        cancel: Callable[[int], None] | None = None,
        port: ThreadPort | None = None,
        to: str = "",
    ) -> None:
        self.id = request_id
        self._to = f" from node {to}" if to else ""  # for reprs and timeout messages
        self._deadline = deadline
        self._flag = Flag()
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[AsyncResult], None]] | None = None
        self._raw: list[Callable[[AsyncResult], None]] | None = None  # rawlink's
        self._cancel = cancel
        self._port = port  # the ThreadPort its reply comes to, if any

    # -- completion (node side) --------------------------------------------

    def _complete(
        self,
        value: Any = None,
        error: BaseException | None = None,
        defer: Callable[..., None] | None = None,
    ) -> bool:
        """Set the outcome once; False if it was already set.

        ``defer``: run the link callbacks through it (the loop's ``submit``)
        rather than here, so that they always run in the node's loop thread.
        """
        flag = self._flag
        with flag._mutex:  # the outcome and the flag in one step (Flag.set, inlined)
            if flag._is_set:
                return False
            self._value = value
            self._error = error
            flag._is_set = True
            waiters, flag._waiters = flag._waiters, None
        for wake in waiters or ():
            wake()
        raw, self._raw = self._raw, None
        if raw:  # rawlink's: here, with no greenlet of their own
            _run_here_or(defer, self._run_callbacks, raw)
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            _run_here_or(defer, self._start_callbacks, callbacks)
        return True

    def _start_callbacks(self, callbacks: list[Callable[[AsyncResult], None]]) -> None:
        """Run the link callbacks where they may block.

        In a thread with a gevent hub (the node's loop: its socket reader or a
        hub callback) they get a greenlet of their own, so a callback that
        waits (a ``send``, a sleep) parks only itself and never the loop. In a
        plain thread (one whose ``get()`` saw the deadline pass) they run here.
        """
        hub = _get_hub()
        if hub is None:
            self._run_callbacks(callbacks)
        else:
            hub.loop.run_callback(greenlet(self._run_callbacks, parent=hub).switch, callbacks)

    def _run_callbacks(self, callbacks: list[Callable[[AsyncResult], None]]) -> None:
        for callback in callbacks:
            try:
                callback(self)
            except BaseException:  # noqa: BLE001 - nothing may escape into the hub
                log.exception("zcell: AsyncResult link callback %r failed", callback)

    def _observe(self) -> None:
        """Read the replies that have come, if they come to a program thread's port.

        From that thread it reads them now; from anywhere else it asks the
        node's loop to read them for it (the thread may never come back).
        """
        port = self._port
        if port is not None and not self._flag._is_set:
            if thread_ident() == port.owner:
                port.poll()
            else:
                port.ask_loop()

    # -- public --------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"PENDING"``, ``"SUCCESS"`` or ``"FAILURE"`` (timeouts and NodeDown fail)."""
        self._observe()
        if not self._flag.is_set():
            return PENDING
        return FAILURE if self._error is not None else SUCCESS

    def ready(self) -> bool:
        """True once the reply (or the call's error) is in."""
        self._observe()
        return self._flag.is_set()

    def successful(self) -> bool:
        """True once the handler's value is in."""
        return self.state == SUCCESS

    def failed(self) -> bool:
        """True once the call failed (the handler raised, a timeout, ``NodeDown``)."""
        return self.state == FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the reply and return the handler's value.

        Args:
            timeout: Seconds to wait; ``None`` waits up to the call's own deadline.
            propagate: Raise the call's error (default) or return it.

        Raises:
            RemoteError: The handler raised.
            CallTimeout: No reply in time (past the call's deadline the result
                becomes a ``FAILURE``).
            NodeDown: The hosting node went down meanwhile.
        """
        if not self._flag._is_set:
            wait = self._remaining()
            if timeout is not None:
                wait = timeout if wait is None else min(wait, timeout)
            port = self._port
            if port is not None and thread_ident() == port.owner:
                ready = port.wait(self, wait)
            else:
                if port is not None:
                    port.ask_loop()
                ready = self._flag.wait(wait)
            if not ready:
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    self._expire()
                else:
                    raise CallTimeout(
                        f"no reply{self._to} to request {self.id} within {timeout}s; the "
                        "call is still pending: get() again, or raise timeout="
                    )
        if self._error is not None:
            if propagate:
                raise self._error
            return self._error
        return self._value

    wait = get

    def result(self, timeout: float | None = None) -> Any:
        """Like ``get()``; once ready, returns the cached value without waiting."""
        return self.get(timeout=timeout)

    def link(self, callback: Callable[[AsyncResult], None]) -> None:
        """Call ``callback(self)`` once ready (at once if already ready).

        Callbacks run in a greenlet of their own in the node's loop thread (or
        at once, in the caller's thread, when already ready), so one may block,
        e.g. on a ``send``: it parks only itself. An exception it raises is
        logged, never propagated.
        """
        if not self._keep(callback, raw=False):
            callback(self)

    def rawlink(self, callback: Callable[[AsyncResult], None]) -> None:
        """Call ``callback(self)`` once ready, where the result completes (at once
        if already ready), with no greenlet of its own: for a callback that never
        blocks (no send, no sleep, no wait), which then costs no greenlet per call.

        A result completes in its node's loop thread (the socket reader, a hub
        callback), or hands its callbacks to that thread when it completes
        elsewhere. An exception the callback raises is logged, never propagated.
        """
        if not self._keep(callback, raw=True):
            self._run_callbacks([callback])

    def _keep(self, callback: Callable[[AsyncResult], None], raw: bool) -> bool:
        """Keep ``callback`` for the outcome; False when the outcome is in already."""
        self._observe()
        with self._flag._mutex:
            if self._flag._is_set:
                return False
            kept = self._raw if raw else self._callbacks
            if kept is not None:
                kept.append(callback)
            elif raw:
                self._raw = [callback]
            else:
                self._callbacks = [callback]
        if self._port is not None:
            self._port.ask_loop()  # nobody may read the reply on the calling thread
        return True

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - time.monotonic()

    def _expire(self) -> None:
        if self._complete(
            error=CallTimeout(f"no reply{self._to} to request {self.id} before its deadline")
        ):
            if self._cancel is not None:
                self._cancel(self.id)

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}{self._to} {self.state}>"


class ScatterResult(Iterator[Any]):
    """The replies of a ``scatter``, in arrival order.

    Ends when every actor the mesh knew at send time has answered or declined,
    when ``limit`` replies arrived, or at the deadline (without raising).
    """

    def __init__(
        self,
        request_id: int,
        expected: dict[str, str],
        deadline: float,
        limit: int | None,
        propagate: bool,
        close: Callable[[int], None],
    ) -> None:
        self.id = request_id
        self._expected = dict(expected)  # actor id -> node id
        self._deadline = deadline
        self._limit = limit
        self._propagate = propagate
        self._close_cb: Callable[[int], None] | None = close
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()
        self._mutex = real_lock()
        self._wakeup: Flag | None = None
        self._received = 0
        self._done = not expected or limit == 0

    # -- node side -----------------------------------------------------------

    def _push(self, actor_id: str, is_error: bool, value: Any, declined: bool) -> None:
        with self._mutex:
            if actor_id not in self._expected:
                return  # a duplicate, or an actor we did not wait for
            del self._expected[actor_id]
            if not declined:
                self._items.append((is_error, value))
            wake = self._wakeup
        if wake is not None:
            wake.set()

    def _node_down(self, node_id: str) -> None:
        with self._mutex:
            for actor_id in [a for a, n in self._expected.items() if n == node_id]:
                del self._expected[actor_id]
            wake = self._wakeup
        if wake is not None:
            wake.set()

    # -- iterator ------------------------------------------------------------

    def __iter__(self) -> ScatterResult:
        return self

    def __next__(self) -> Any:
        while True:
            with self._mutex:
                if self._items and not self._done:
                    is_error, value = self._items.popleft()
                    self._received += 1
                    if self._limit is not None and self._received >= self._limit:
                        self._done = True
                    if is_error and self._propagate:
                        self._done = True
                        self._finish()
                        raise value
                    return value
                if self._done or not self._expected:
                    self._finish()
                    raise StopIteration
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self._finish()
                    raise StopIteration
                wake = self._wakeup = Flag()
            wake.wait(remaining)

    def _finish(self) -> None:
        self._done = True
        close, self._close_cb = self._close_cb, None
        if close is not None:
            close(self.id)

    def close(self) -> None:
        """Stop waiting for further replies."""
        with self._mutex:
            self._finish()

    def __del__(self) -> None:
        close = getattr(self, "_close_cb", None)
        if close is not None:
            try:
                close(self.id)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


def first_reply(replies: Iterable[Any], key: Any = None) -> Any:
    """The first item of a scatter's replies; stops waiting for the others.

    Args:
        replies: What ``scatter`` returned (any iterable works).
        key: What the ``KeyError`` carries when there is no reply.

    Returns:
        The first reply.

    Raises:
        KeyError: No actor replied (``KeyError(key)``).
    """
    iterator = iter(replies)
    try:
        return next(iterator)
    except StopIteration:
        raise KeyError(key) from None
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


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


def error_from_reply(status: int, value: Any) -> ZcellError:
    """The typed error a failed reply (``ERROR`` or ``ZERROR``) stands for."""
    if status == ERROR:
        error = error_from_wire(value)
        if error is not None:
            return error
    elif status == ZERROR:
        return zcell_error(value)
    return ZcellError(f"malformed error reply: {value!r}")


class Then:
    """A call made in the node's loop whose outcome is handed to a function,
    ``then(value, error)``, once: the reply's value (``error`` None), or the
    error (the handler's, ``NodeDown`` when the node asked goes, ``NodeStopped``
    when this one stops).

    ``AsyncResult`` without its flag, waiters, links and deadline: for the
    loop's own bookkeeping of many calls (the task dispatcher's pushes), where
    those took about an eighth of the loop's CPU a task (bench/README.md,
    "Pushes without an AsyncResult"). ``then`` runs in the loop thread and
    must not block (spawn what may).
    """

    __slots__ = ("id", "_then", "_port")

    def __init__(self, request_id: int, then: Callable[[Any, BaseException | None], None]) -> None:
        self.id = request_id
        self._then: Callable[[Any, BaseException | None], None] | None = then
        self._port = None  # its reply comes to the node's inbox, never to a port

    def _complete(
        self,
        value: Any = None,
        error: BaseException | None = None,
        defer: Callable[..., None] | None = None,
    ) -> bool:
        """Hand the outcome over once; False if it was already (``defer``: unused,
        the reply of a loop's call is matched in the loop)."""
        then, self._then = self._then, None
        if then is None:
            return False
        try:
            then(value, error)
        except BaseException:  # noqa: BLE001 - nothing may escape into the hub
            log.exception("zcell: the function %r given a call's outcome failed", then)
        return True


Pending = AsyncResult | ScatterResult | Then


def _run_here_or(
    defer: Callable[..., None] | None,
    run: Callable[[list[Callable[[AsyncResult], None]]], None],
    callbacks: list[Callable[[AsyncResult], None]],
) -> None:
    """``run(callbacks)`` now, or through ``defer`` (to the node's loop thread)."""
    if defer is not None:
        defer(run, callbacks)
    else:
        run(callbacks)


class PendingCalls:
    """The calls this node awaits replies to, by request id: where a reply is matched.

    The one owner of the pending table (program threads' ports read it and
    drop the calls they complete themselves). Pure: no sockets, no loop; the
    node's loop thread calls it.
    """

    def __init__(
        self, roster: Roster, stats: dict[str, int], loop: LoopThread | None = None
    ) -> None:
        self._roster = roster
        self._stats = stats
        self._loop = loop  # where link callbacks run (None: where the result completes)
        #: request id -> (result, node asked ("" for a scatter), deadline); entries
        #: are added by ``add`` only (any thread), dropped by whoever completes them.
        self.table: dict[int, tuple[Pending, str, float | None]] = {}
        #: (deadline, rid) of calls added since the loop last looked (a deque's
        #: append is atomic); the loop moves them to its heap.
        self.dated: collections.deque[tuple[float, int]] = collections.deque()
        # The loop's own heap of (deadline, rid): ``expire`` looks at the calls due,
        # not at every call pending (a walk of the table five times a second took a
        # share of a core, and stalled the loop, with many calls in flight). It also
        # holds calls answered since; they are skipped, and dropped by a rebuild
        # once they are most of it.
        self._heap: list[tuple[float, int]] = []
        self._throws: set[int] = set()  # pending throws: any member may answer

    def add(
        self, rid: int, result: Pending, node_id: str, deadline: float | None, throw: bool = False
    ) -> None:
        """Await the reply to request ``rid`` from ``node_id`` (any member for a throw)."""
        self.table[rid] = (result, node_id, deadline)
        if deadline is not None:
            self.dated.append((deadline, rid))
        if throw:
            self._throws.add(rid)  # declined, it may be answered by another member

    def add_throw(self, rid: int) -> None:
        """Request ``rid`` is a throw: declined, another member may answer it."""
        self._throws.add(rid)

    def forget(self, rid: int) -> None:
        """Stop awaiting ``rid`` (its caller gave up)."""
        self.table.pop(rid, None)
        self._throws.discard(rid)

    def fail(self, rid: int, result: Pending, exc: BaseException) -> None:
        """Stop awaiting ``rid`` and complete its result with ``exc``."""
        self.forget(rid)
        if isinstance(result, ScatterResult):
            result.close()
        else:
            result._complete(error=exc)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every call awaited (the node stops)."""
        for rid, (result, _, _) in list(self.table.items()):
            self.fail(rid, result, exc)

    def node_down(self, node_id: str, exc: BaseException, spared: set[object]) -> None:
        """A node went down: fail the calls it was asked, except those whose
        replies come to a port in ``spared`` (its thread fails them itself),
        and stop awaiting its part of every scatter."""
        for rid, (result, target, _) in list(self.table.items()):
            if isinstance(result, ScatterResult):
                result._node_down(node_id)
            elif target == node_id and result._port not in spared:
                self.fail(rid, result, exc)

    @staticmethod
    def unreachable(result: ScatterResult, node_id: str) -> None:
        """A scatter could not be sent to ``node_id``: stop awaiting its actors."""
        result._node_down(node_id)

    def expire(self, now: float) -> None:
        """Fail the calls past their deadline (scatters end on their own)."""
        heap, dated, table = self._heap, self.dated, self.table
        while dated:
            heapq.heappush(heap, dated.popleft())
        while heap and now > heap[0][0] + 0.05:
            deadline, rid = heapq.heappop(heap)
            entry = table.get(rid)
            if entry is None or entry[2] != deadline:
                continue  # answered (or the id is in use again, with its own deadline)
            result, node_id, _ = entry
            if isinstance(result, ScatterResult):
                table.pop(rid, None)
            else:
                late = f"no reply from node {self._roster.label(node_id)} to request {rid}"
                self.fail(rid, result, CallTimeout(f"{late} in time"))
        if len(heap) > 1024 + 2 * len(table):
            heap[:] = [(e[2], rid) for rid, e in list(table.items()) if e[2] is not None]
            heapq.heapify(heap)

    def on_reply(self, msg: list[Any], routing: bytes | None = None) -> None:
        """Complete the call a ``REP`` answers, if it came from the node asked
        (any member for a throw, every one for a scatter) over its own
        connection (``routing``; None: from this node itself); else drop and count it."""
        rid = msg[P_ID]
        entry = self.table.get(rid)
        stats = self._stats
        if entry is None:
            stats["late_replies"] += 1
            return
        src = msg[P_SRC]
        result = entry[0]
        if routing is not None:
            sender = self._roster.sender(routing, None)
            if sender is None or sender.id != src:
                forged = src in self._roster.members
                stats["dropped_forged" if forged else "dropped_stale"] += 1
                return
            if (
                src != entry[1]
                and rid not in self._throws
                and not isinstance(result, ScatterResult)
            ):
                stats["dropped_forged"] += 1
                return
        self._throws.discard(rid)
        status = msg[P_STATUS]
        value = msg[5] if len(msg) > 5 else None
        if isinstance(result, ScatterResult):
            self._on_scatter_reply(result, status, value)
            return
        del self.table[rid]
        if status == OK:
            result._complete(value)
        else:
            result._complete(error=error_from_reply(status, value))

    def _on_scatter_reply(self, result: ScatterResult, status: int, value: Any) -> None:
        """One actor's part of a scatter: [actor id, value]."""
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
            self._stats["dropped_bad_frames"] += 1
            return
        actor_id, payload = value
        if status == OK:
            result._push(actor_id, False, payload, False)
        elif status == DECLINED:
            result._push(actor_id, False, None, True)
        else:
            result._push(actor_id, True, error_from_reply(status, payload), False)

    def complete_call(self, result: AsyncResult, msg: list[Any]) -> bool:
        """Complete a ``call``'s result from its reply, read by a port (any thread)."""
        self.table.pop(result.id, None)
        status = msg[P_STATUS]
        value = msg[5] if len(msg) > 5 else None
        error = None if status == OK else error_from_reply(status, value)
        loop = self._loop
        if loop is None or thread_ident() == loop.ident:
            return result._complete(value, error)
        # Link callbacks run in the loop thread, as for every other result.
        return result._complete(value, error, loop.submit)
