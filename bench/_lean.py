"""Lean pyzmq-on-gevent send/recv helpers (benchmark only).

Plain pyzmq sockets (not ``zmq.green``) are used with ``zmq.NOBLOCK``. When an
operation raises ``zmq.Again`` the greenlet parks on a gevent io watcher on the
socket's ``zmq.FD`` (``hub.wait(hub.loop.io(fd, 1))``) and retries after the
wake-up. The zcell package has its own transport; these exist so the benchmark
floor can measure the integration technique on its own.

ZeroMQ's FD is edge-triggered in effect: it becomes readable when the socket's
command mailbox receives a command, and *any* libzmq call on the socket
(``send``, ``recv``, ``getsockopt(EVENTS)``) may consume that signal while
processing commands. Three rules follow, and the helpers keep all of them:

1. Always try the operation before parking; after a wake-up, retry until it
   raises ``Again`` again (a wake-up says "something changed", not "ready").
2. Drain: :func:`drain` receives every ready message per wake-up, since the FD
   will not fire again for messages already announced.
3. When several greenlets share a socket (a reader parked for POLLIN while
   handler greenlets send replies), an operation by one of them can swallow
   the signal another is parked on. So after every operation, if anyone else is
   parked on the socket, read ``getsockopt(zmq.EVENTS)`` and wake those whose
   condition now holds; and if that check shows the caller's own condition
   holds, retry instead of parking (the check itself may have consumed the
   signal the caller was about to wait for).

A socket must be used from one thread (one hub) only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import zmq
from gevent import get_hub

__all__ = ["drain", "lean_recv", "lean_send"]

_NOBLOCK = zmq.NOBLOCK
_SNDMORE_NOBLOCK = zmq.SNDMORE | zmq.NOBLOCK
_EVENTS = zmq.EVENTS
_POLLIN = zmq.POLLIN
_POLLOUT = zmq.POLLOUT
_Again = zmq.Again
_READ = 1  # libev/libuv READ event mask


class _Lean:
    """Per-socket state: the FD, spare io watchers, watchers currently parked."""

    __slots__ = ("fd", "spare", "parked")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.spare: list[Any] = []
        self.parked: dict[Any, int] = {}  # watcher -> POLLIN / POLLOUT


def _state(sock: zmq.Socket) -> _Lean:
    # pyzmq maps unknown attribute names to socket options; use __dict__ directly.
    d = sock.__dict__
    st = d.get("_lean_state")
    if st is None:
        st = d["_lean_state"] = _Lean(cast(int, sock.getsockopt(zmq.FD)))
    return st


def _park(st: _Lean, mask: int) -> None:
    """Park the current greenlet until the FD fires or another greenlet wakes it."""
    hub = get_hub()
    watcher = st.spare.pop() if st.spare else hub.loop.io(st.fd, _READ)
    st.parked[watcher] = mask
    try:
        hub.wait(watcher)
    finally:
        st.parked.pop(watcher, None)
        st.spare.append(watcher)


def _wake_parked(sock: zmq.Socket, st: _Lean) -> int:
    """Wake parked greenlets whose condition holds now; return the EVENTS read."""
    events = cast(int, sock.getsockopt(_EVENTS))
    if events:
        for watcher, mask in list(st.parked.items()):
            if events & mask:
                del st.parked[watcher]
                # Same callback the watcher would run: waiter.switch(waiter). A
                # second switch (FD fired too) only stores into a spent Waiter.
                watcher.loop.run_callback(watcher.callback, *watcher.args)
    return events


def lean_send(sock: zmq.Socket, frames: Sequence[Any]) -> None:
    """Send a multipart message, parking the greenlet while the socket is full."""
    st = _state(sock)
    send = sock.send
    last = len(frames) - 1
    while True:
        try:
            # Only the first frame can raise Again: once it is queued, libzmq
            # accepts the rest of the message (the HWM counts whole messages).
            # Plain send() calls skip send_multipart's per-frame type checks
            # (~1.4 us for two frames).
            for i in range(last):
                send(frames[i], _SNDMORE_NOBLOCK)
            send(frames[last], _NOBLOCK)
        except _Again:
            if st.parked and _wake_parked(sock, st) & _POLLOUT:
                continue
            _park(st, _POLLOUT)
        else:
            if st.parked:
                _wake_parked(sock, st)
            return


def lean_recv(sock: zmq.Socket) -> list[bytes]:
    """Receive one multipart message, parking the greenlet until one is ready."""
    st = _state(sock)
    while True:
        try:
            frames = sock.recv_multipart(_NOBLOCK)
        except _Again:
            if st.parked and _wake_parked(sock, st) & _POLLIN:
                continue
            _park(st, _POLLIN)
        else:
            if st.parked:
                _wake_parked(sock, st)
            return frames


def drain(sock: zmq.Socket) -> Iterator[list[bytes]]:
    """Yield messages forever: every ready one per wake-up, parking only on ``Again``."""
    st = _state(sock)
    recv = sock.recv_multipart
    while True:
        try:
            frames = recv(_NOBLOCK)
        except _Again:
            if st.parked and _wake_parked(sock, st) & _POLLIN:
                continue
            _park(st, _POLLIN)
            continue
        if st.parked:
            _wake_parked(sock, st)
        yield frames
