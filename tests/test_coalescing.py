"""Frames from a node's loop held to leave together (``Socket.send_soon``).

A burst of requests sent in ``node.corked()`` (the task dispatcher's pushes of
one round) leaves in few multipart messages, and the replies a node's handlers
make in one go leave together: the peer reads a burst in few wake-ups. What is held is never lost or reordered, a peer past its high-water
mark included.
"""

from __future__ import annotations

import threading
from typing import Any

import gevent
import pytest
import zmq
from conftest import SLOW, wait_until
from zcell_test_actors import Echo

from zcell._transport import sockets
from zcell._transport.sockets import Socket


@pytest.fixture
def parts_sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every multipart send of a zcell DEALER: (the sending thread, how many parts)."""
    sent: list[tuple[int, int]] = []
    put = Socket._put_parts

    def spy(self: Socket, frames: list[bytes]) -> None:
        put(self, frames)  # raises zmq.Again when nothing was sent: not recorded
        if self.raw.type == zmq.DEALER:
            sent.append((threading.get_ident(), len(frames)))

    monkeypatch.setattr(Socket, "_put_parts", spy)
    return sent


def test_calls_sent_corked_leave_in_few_messages_and_their_replies_together(
    mesh: Any, parts_sent: list[tuple[int, int]]
) -> None:
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")
    assert ref.node_id == b.id
    assert ref.send.echo(value=0) == 0  # connected both ways
    parts_sent.clear()

    def burst() -> list[int]:
        with a.corked():
            results = [ref.call.echo(value=i) for i in range(20)]
        return [r.get(timeout=10 * SLOW) for r in results]

    assert a.call_in_loop(burst) == list(range(20))
    a_loop, b_loop = a.call_in_loop(threading.get_ident), b.call_in_loop(threading.get_ident)
    # In messages of at most _SOON_FRAMES: the peer starts on the first meanwhile.
    per = sockets._SOON_FRAMES
    assert [n for thread, n in parts_sent if thread == a_loop] == [per, per, 20 - 2 * per]
    replies = [n for thread, n in parts_sent if thread == b_loop]
    assert sum(replies) >= 20 and max(replies) > 1, replies


def test_calls_sent_in_a_row_uncorked_still_go_one_by_one(
    mesh: Any, parts_sent: list[tuple[int, int]]
) -> None:
    """The cork is what holds requests: elsewhere a request leaves at once."""
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")

    def one_by_one() -> list[int]:
        results = [ref.call.echo(value=i) for i in range(5)]
        return [r.get(timeout=10 * SLOW) for r in results]

    parts_sent.clear()
    assert a.call_in_loop(one_by_one) == list(range(5))
    a_loop = a.call_in_loop(threading.get_ident)
    assert not [n for thread, n in parts_sent if thread == a_loop and n > 1]


def test_held_frames_keep_their_order_and_arrive_whole_past_the_high_water_mark() -> None:
    """A flush that finds the peer full keeps its frames, first in line: later
    frames, held or sent at once, come after them, and while the peer pushes back
    ``send_soon`` waits as ``send`` does (back-pressure reaches the sender)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVHWM, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.SNDHWM, 1)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"tcp://127.0.0.1:{port}")
    dealer = Socket(raw, gevent.get_hub())
    pad = b"x" * 200_000  # fills the kernel's buffers in a few messages
    expected: list[bytes] = []
    got: list[bytes] = []
    pushed_back: list[int] = []  # the batches after which the peer pushed back
    held: list[int] = []  # frames held after each batch

    def send() -> None:
        for k in range(12):
            for i in range(3):
                frame = b"%d-%d " % (k, i) + pad
                expected.append(frame)
                dealer.send_soon(frame, None)
            dealer.flush_soon()
            if dealer._send_lock is not None:
                pushed_back.append(k)
            held.append(len(dealer._soon or ()))
        expected.append(b"last")
        dealer.send(b"last", None)

    def read() -> None:
        gevent.sleep(0.3)  # the sender meets a full peer first
        while not got or got[-1] != b"last":
            try:
                parts = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                gevent.sleep(0.001)
                continue
            got.extend(parts[1:])

    try:
        wait_until(lambda: raw.getsockopt(zmq.EVENTS) & zmq.POLLOUT, 5, "the connection")
        with gevent.Timeout(20 * SLOW):
            gevent.joinall([gevent.spawn(send), gevent.spawn(read)], raise_error=True)
        assert pushed_back, "the peer never got full: the test proves nothing"
        assert max(held) <= sockets._SOON_FRAMES, held  # the sender waited, not held more
        assert got == expected
        assert dealer.undeliverable == 0
    finally:
        dealer.close()
        router.close(linger=0)
        ctx.term()
