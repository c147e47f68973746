"""The task layer's seat on one node: its dispatcher, its agent, what it remembers.

A node that submits or runs tasks gets one ``Runtime`` (``attach``): the
``Dispatcher`` for the tasks it submits, the task agent actor other nodes talk
to, the revoked ids it remembers, and (on a worker) the ``Worker``. The
registry is keyed by the node object and holds it weakly: no process-wide
state outlives a node, and two nodes in one process have a runtime each.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .. import _wire as wire
from .._transport.loop import Flag
from ..errors import CallTimeout, ZcellError
from .records import Expiring

if TYPE_CHECKING:
    from ..actors.proxy import ActorProxy
    from ..node import Node
    from .app import App
    from .dispatch import Dispatcher
    from .worker import Worker

__all__ = ["Runtime", "attach", "runtime_of"]

log = logging.getLogger("zcell.tasks")

_runtimes: weakref.WeakKeyDictionary[Node, Runtime] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
#: Seconds a joining node waits for the live agents' revoked lists.
REVOKED_PULL_TIMEOUT = 2.0
#: Seconds another thread waits for a runtime being started.
READY_TIMEOUT = 30.0
#: Node statistics() counter of task messages from the wire that were dropped.
DROPPED = "tasks_dropped_malformed"


class Runtime:
    """What the task layer keeps on one node (see the module doc)."""

    def __init__(self, app: App, node: Node) -> None:
        from .dispatch import Dispatcher

        self.app = app
        self.node = node
        conf = app.conf
        self.revoked = Expiring(
            lambda: float(conf.result_expires), lambda: int(conf.result_max_records)
        )
        self.worker: Worker | None = None
        self.codec = wire.Codec(None, node.max_message_size)
        self.dispatcher: Dispatcher = Dispatcher(self)
        self.agent: ActorProxy | None = None
        self.ready = Flag()  # set once started (attach() from another thread waits)
        node.stats.setdefault(DROPPED, 0)

    def start(self) -> None:
        """Host the agent on this node and learn the mesh's remembered revokes."""
        from .agent import TaskAgent

        self.node.register(TaskAgent)
        self.agent = self.node.spawn(TaskAgent, on=self.node.id)
        self.dispatcher.start()
        self.pull_revoked()
        self.ready.set()

    def pull_revoked(self) -> None:
        """Ask the live agents for the revokes they remember (for late joiners)."""
        assert self.agent is not None
        try:
            replies = self.agent.scatter(
                "revoked", {}, timeout=REVOKED_PULL_TIMEOUT, propagate=False
            )
            for reply in replies:
                if isinstance(reply, list):
                    self.remember_revoked(reply)
        except ZcellError as exc:
            log.warning("zcell: could not learn remembered revokes: %s", exc)

    def remember_revoked(self, entries: list[Any]) -> None:
        """Keep revoked ids as another agent lists them: ``[[id, expires, terminate]]``."""
        good = [
            (str(e[0]), float(e[1]), bool(e[2]))
            for e in entries
            if isinstance(e, list)
            and len(e) == 3
            and isinstance(e[0], str)
            and isinstance(e[1], float | int)
        ]
        self.node.call_in_loop(self.revoked.update, good)

    def encodable(self, value: Any) -> None:
        """Raise ``SerializationError`` unless ``value`` can travel."""
        self.codec.encode([value])


def runtime_of(node: Node) -> Runtime | None:
    """The node's task runtime, if it has one."""
    return _runtimes.get(node)


def attach(app: App, node: Node) -> Runtime:
    """The node's task runtime, made and started on first use."""
    with _lock:
        runtime = _runtimes.get(node)
        fresh = runtime is None
        if runtime is None:
            runtime = _runtimes[node] = Runtime(app, node)
    if not fresh:
        if not runtime.ready.wait(READY_TIMEOUT):
            raise CallTimeout(f"the task layer of node {node.name} did not start")
        return runtime
    try:
        runtime.start()
    except BaseException:
        with _lock:
            _runtimes.pop(node, None)
        raise
    return runtime
