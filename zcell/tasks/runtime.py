"""The task layer's seat on one node: its dispatcher, its agent, what it remembers.

A node that submits or runs tasks gets one ``Runtime`` (``attach``): the
``Dispatcher`` for the tasks it submits, the task agent actor other nodes talk
to, the revoked ids it remembers, and (on a worker) the ``Worker``. It is kept
on its node object: no process-wide state outlives a node, and two nodes in one
process have a runtime each.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import gevent

from .. import _wire as wire
from .._transport.loop import Flag
from ..errors import ZcellError
from .records import Expiring

if TYPE_CHECKING:
    from ..actors.actor import Actor
    from ..actors.proxy import ActorProxy
    from ..node import Node
    from .app import App
    from .dispatch import Dispatcher
    from .worker import Worker

__all__ = ["AGENT_TYPE", "Runtime", "claim_runtime", "forget_runtime", "runtime_of"]

log = logging.getLogger(__name__)

_P = TypeVar("_P")

# The runtime is kept on its node, not in a table of the process: the two refer to
# each other and go together once the node is dropped (a WeakKeyDictionary whose
# value holds its key kept both for ever).
_ATTR = "_zcell_task_runtime"
_lock = threading.Lock()
#: Seconds a node waits for another agent's list of remembered revokes.
REVOKED_PULL_TIMEOUT = 2.0
#: The task agent's actor type (``agent.py``).
AGENT_TYPE = "zcell.tasks.agent"
#: Seconds another thread waits for a runtime being started.
READY_TIMEOUT = 30.0
#: Node statistics() counter of task messages from the wire that were dropped.
DROPPED = "tasks_dropped_malformed"
#: Node statistics() counter of task deliveries not run again (seen already).
DUPLICATES = "tasks_dropped_duplicate"


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
        self.pulled: set[str] = set()  # agents asked for their remembered revokes
        self.departures = 0  # times an agent listed before was no longer listed
        self._listed: set[str] = set()  # the task agents listed at the last round
        self.ready = Flag()  # set once started (attach() from another thread waits)
        self._parts: dict[str, Any] = {}  # made on first use (``part``)
        node.stats.setdefault(DROPPED, 0)
        node.stats.setdefault(DUPLICATES, 0)

    def start(self, agent_cls: type[Actor]) -> None:
        """Host the task agent on this node and start the dispatcher (which
        also learns the revokes the mesh remembers)."""
        self.node.register(agent_cls)
        if self.app.conf.task_send_sent_event:
            self.node.monitor.events.allowed.add("task-sent")
        self.agent = self.node.spawn(agent_cls, on=self.node.id)
        self.dispatcher.start()
        self.ready.set()

    def query_mesh(
        self, task_ids: list[str], timeout: float, batch: int = 500
    ) -> dict[str, list[dict[str, Any]]]:
        """Ask every task agent of the mesh what it knows of ``task_ids``
        (``query``, ``batch`` ids a scatter, each waiting at most ``timeout``):
        the records by id, as many as answered (a greenlet of the loop)."""
        assert self.agent is not None
        known: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(task_ids), batch):
            replies = self.agent.scatter(
                "query", {"ids": task_ids[start : start + batch]},
                timeout=timeout, propagate=False,
            )  # fmt: skip
            for reply in replies:
                for task_id, record in reply.items() if isinstance(reply, dict) else ():
                    if isinstance(record, dict):
                        known.setdefault(task_id, []).append(record)
        return known

    def pull_revoked(self) -> None:
        """Ask each task agent this node has not asked yet for the revokes it
        remembers (loop thread; the dispatcher calls it each round), so that a
        node that joins later learns them, and so does one a partition healed."""
        own = self.agent.id if self.agent is not None else None
        # The directory's index, not proxies: this runs every dispatcher round.
        listed = set(self.node.directory.of_type(AGENT_TYPE))
        # An agent gone from the mesh (its node down, cut off, or this node
        # stopped a while) is asked again when it is back: revokes made meanwhile
        # did not reach the other side.
        self.pulled.intersection_update(listed)
        if not self._listed <= listed:
            # Work-flow steps may have gone with it (strays.py). Counted from the
            # listing, not from ``pulled``: an agent whose pull failed or was still
            # on its way when it went is not in ``pulled``, and its departure was
            # missed (a chain's step lost with it then hung, seen under load).
            self.departures += 1
        self._listed = listed
        for agent_id in listed:
            if agent_id != own and agent_id not in self.pulled:
                self.pulled.add(agent_id)
                gevent.spawn(self._pull_from, self.node.lookup(agent_id))

    def _pull_from(self, agent: ActorProxy) -> None:
        try:
            entries = agent.send("revoked", {}, timeout=REVOKED_PULL_TIMEOUT)
        except ZcellError as exc:
            self.pulled.discard(agent.id)  # asked again next round, while it is listed
            log.debug("zcell: could not learn the revokes %s remembers: %s", agent, exc)
            return
        if isinstance(entries, list):
            self.remember_revoked(entries)

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
        self.revoked.update(good)

    def stop(self) -> None:
        """(Loop thread, the node stopping) end the dispatcher's pump and what
        the components run (``stop`` of each that has one)."""
        self.dispatcher.stop()
        for part in list(self._parts.values()):
            stop = getattr(part, "stop", None)
            if stop is not None:
                stop()

    def part(self, name: str, make: Callable[[Runtime], _P]) -> _P:
        """The component ``name`` of this runtime (the chord coordinator, the
        reports waiting for nodes not met...), made by ``make(self)`` on first use:
        the modules that own them sit above this one."""
        found: _P | None = self._parts.get(name)
        if found is None:
            found = self._parts[name] = make(self)
        return found

    def encodable(self, value: Any) -> None:
        """Raise ``SerializationError`` unless ``value`` can travel."""
        if not _plain(value, 2):
            self.codec.encode([value])


#: Values that always travel, as ``encodable`` checks them without encoding: the
#: arguments and results of most tasks (a short ASCII string, a 64-bit int...).
_SCALARS = (float, bool, type(None))
_PLAIN_LEN = 64  # items of a list or map, and characters of a string


def _plain(value: Any, depth: int) -> bool:
    """Whether ``value`` surely encodes: scalars, short ASCII strings, and short
    lists and string-keyed maps of them, ``depth`` levels deep (else: encode it)."""
    kind = type(value)
    if kind is int:
        return bool(-(2**63) <= value < 2**64)
    if kind is str:
        return len(value) <= _PLAIN_LEN and bool(value.isascii())
    if kind in _SCALARS:
        return True
    if (kind is not list and kind is not dict) or depth <= 0 or len(value) > _PLAIN_LEN:
        return False
    if kind is list:
        for item in value:
            if not _plain(item, depth - 1):
                return False
        return True
    for key, item in value.items():
        if type(key) is not str or len(key) > _PLAIN_LEN or not key.isascii():
            return False
        if not _plain(item, depth - 1):
            return False
    return True


def runtime_of(node: Node) -> Runtime | None:
    """The node's task runtime, if it has one."""
    runtime: Runtime | None = getattr(node, _ATTR, None)
    return runtime


def claim_runtime(app: App, node: Node) -> tuple[Runtime, bool]:
    """The node's runtime, made if missing: (runtime, True when this call made it
    and must start it)."""
    with _lock:
        runtime = runtime_of(node)
        if runtime is not None:
            return runtime, False
        runtime = Runtime(app, node)
        setattr(node, _ATTR, runtime)
        return runtime, True


def forget_runtime(node: Node) -> None:
    """Drop the node's runtime (its start failed)."""
    with _lock:
        if hasattr(node, _ATTR):
            delattr(node, _ATTR)
