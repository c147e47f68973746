"""The dashboard process: the node, its event stream, the board and the web server.

Why the web server runs in the main thread's gevent hub, unpatched: the node's
loop runs in its own OS thread with its own hub, and calls to it wait on flags
that yield to the caller's hub (zcell/_transport/loop.py). So each request, the
event drain and the poller are greenlets of the main hub that never block one
another, with no monkey-patching (which would turn the node's helper threads
into greenlets and a user's ``-A`` module's imports with them).
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pywsgi import WSGIServer

from ..monitor import Control, EventStream
from .board import POLL_EVERY, Board
from .web import make_app

if TYPE_CHECKING:
    from ..node import Node
    from ..tasks import App

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

#: Seconds between two drains of the event stream into the board.
DRAIN_EVERY = 0.05
#: The actors are asked every this many polls (they change slowly).
ACTORS_EVERY = 2


class Dashboard:
    """Serve the dashboard of ``node``'s mesh at ``address:port`` until stopped.

    Args:
        node: A started node (the dashboard's own: it subscribes and asks from it).
        app: The app whose control and ``send_task`` the actions use.
        address: Address to listen on.
        port: TCP port (0: any free one; `port` tells which after `start`).
        max_tasks: Most tasks remembered (the oldest dropped).
        basic_auth: ``"user:password"`` to ask of every request.
        forget_offline: Seconds an offline worker stays listed.
    """

    def __init__(
        self,
        node: Node,
        app: App,
        address: str = "127.0.0.1",
        port: int = 5555,
        max_tasks: int = 10_000,
        basic_auth: str | None = None,
        forget_offline: float | None = None,
    ) -> None:
        self.node = node
        self.board = Board(node, max_tasks=max_tasks)
        if forget_offline is not None:
            self.board.forget_offline = forget_offline
        self.stream = EventStream(node)
        self.server = WSGIServer((address, port), make_app(self.board, app, basic_auth), log=None)
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_port)

    def start(self) -> Dashboard:
        """Subscribe, start the drain, poll and sample greenlets, and listen."""
        self.stream.open()
        self.server.start()
        control = Control(self.node)
        self._greenlets = [
            gevent.spawn(self._every, DRAIN_EVERY, lambda n: self.board.drain(self.stream)),
            gevent.spawn(
                self._every, POLL_EVERY, lambda n: self.board.poll(control, n % ACTORS_EVERY == 0)
            ),
            gevent.spawn(self._every, 1.0, lambda n: self.board.sample()),
        ]
        return self

    @staticmethod
    def _every(seconds: float, work: Any) -> None:
        """Run ``work(round)`` every ``seconds``; a failure is logged, never fatal."""
        n = 0
        while True:
            try:
                work(n)
            except Exception:  # noqa: BLE001 - the page keeps serving what it has
                log.exception("zcell dashboard: a background round failed")
            n += 1
            gevent.sleep(seconds)

    def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM (or the node stops itself), then `stop`."""
        stop: list[int] = []  # appended to from the node's thread too (shutdown)
        gevent.signal_handler(signal.SIGTERM, stop.append, signal.SIGTERM)
        gevent.signal_handler(signal.SIGINT, stop.append, signal.SIGINT)
        self.node.monitor.on_shutdown = lambda: stop.append(signal.SIGTERM)
        while not stop and self.node.failure is None:
            gevent.sleep(0.2)
        self.stop()

    def stop(self) -> None:
        """Stop listening and the greenlets, unsubscribe."""
        self.server.stop(timeout=1.0)
        gevent.killall(self._greenlets, block=False)
        self.stream.close()
