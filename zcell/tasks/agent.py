"""The task agent: one hosted actor per node with the task layer.

Other nodes reach this node's task layer through it: a worker claims a task
here before it starts it, and reports that it holds it or that it has room
again; anyone may revoke tasks (scatter), look finished tasks up (scatter),
or ask for the revokes remembered here (a joining node does).
Its handlers run in the node's loop thread, where the dispatcher's state lives.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..actors.actor import Actor
from ..errors import CallTimeout, ProtocolError
from .chord import chords_of
from .dispatch import positive
from .runtime import AGENT_TYPE, READY_TIMEOUT, Runtime, claim_runtime, forget_runtime, runtime_of

if TYPE_CHECKING:
    from ..node import Node
    from .app import App

__all__ = ["AGENT_TYPE", "TaskAgent", "attach"]


class TaskAgent(Actor):
    """The node's task agent (see the module doc)."""

    name = AGENT_TYPE

    class state:
        node: Any  # set by the hosting node before __init__

        def _runtime(self) -> Runtime:
            runtime = runtime_of(self.node)
            if runtime is None:  # pragma: no cover - the runtime spawns its agent
                raise LookupError("this node has no task runtime")
            return runtime

        def claim(self, id: str, attempt: int, worker: str) -> bool:  # noqa: A002
            """May this attempt of task ``id`` start now? (it is then STARTED here)"""
            return self._runtime().dispatcher.claim(str(id), int(attempt), str(worker))

        def held(
            self,
            id: str,  # noqa: A002
            attempt: int,
            cap: int | None = None,
            slots: int | None = None,
        ) -> None:
            """A worker holds task ``id`` (it is RECEIVED); ``cap``: how many tasks
            that worker holds at most, ``slots``: how many it runs at once."""
            dispatcher = self._runtime().dispatcher
            dispatcher.held(str(id), int(attempt), positive(cap), positive(slots))

        def started(
            self,
            id: str,  # noqa: A002
            attempt: int,
            worker: str,
            cap: int | None = None,
            slots: int | None = None,
        ) -> None:
            """A worker started task ``id`` under its submitter's grant, without a
            claim (it is RECEIVED, or STARTED with ``track_started``); ``cap`` and
            ``slots`` as for ``held``."""
            dispatcher = self._runtime().dispatcher
            dispatcher.started(str(id), int(attempt), str(worker), positive(cap), positive(slots))

        def lending(self, id: str, attempt: int, lent: bool) -> None:  # noqa: A002
            """Task ``id`` waits in ``get()`` at its worker (``lent``: its place there
            is lent out), or waits no more."""
            self._runtime().dispatcher.lending(str(id), int(attempt), bool(lent))

        def room(self, consumers: list[str]) -> None:
            """The worker of these consumer actors has room again."""
            self._runtime().dispatcher.room([str(c) for c in consumers])

        def update_state(self, id: str, state: str, meta: Any = None) -> None:  # noqa: A002
            """The running task ``id`` reports a state (``update_state``)."""
            self._runtime().dispatcher.update_state(str(id), str(state), meta)

        def revoke(self, ids: list[str], terminate: bool = False, expires: float = 0.0) -> int:
            """Remember ``ids`` as revoked; end those waiting here; with
            ``terminate``, kill those running here. Returns how many ran here."""
            runtime = self._runtime()
            ids = [str(i) for i in ids]
            for task_id in ids:
                runtime.revoked.put(task_id, bool(terminate), float(expires) or None)
            runtime.dispatcher.revoke(ids)
            if runtime.worker is not None:
                return runtime.worker.revoked(ids, bool(terminate))
            return 0

        def revoked(self) -> list[list[Any]]:
            """The revokes remembered here: ``[[id, expires, terminate], ...]``."""
            return [[k, e, v] for k, e, v in self._runtime().revoked.items()]

        def query(self, ids: list[str]) -> dict[str, Any]:
            """The records of finished (or running) tasks among ``ids`` known here."""
            runtime = self._runtime()
            ids = [str(i) for i in ids]
            found = runtime.dispatcher.query(ids)
            if runtime.worker is not None:
                found.update(runtime.worker.query(ids))
            return found

        def outcome(self, id: str, record: dict[str, Any]) -> None:  # noqa: A002
            """The outcome of task ``id``, pushed by its worker to the submitter
            of the work-flow it belongs to (docs/canvas.md)."""
            if not isinstance(record, dict):
                raise ProtocolError("a task outcome is a map")
            self._runtime().dispatcher.pushed(str(id), record)

        def chord_start(
            self,
            id: str,  # noqa: A002
            n: int,
            body: dict[str, Any],
            root_id: str,
            ids: list[str] | None = None,
        ) -> None:
            """Open chord ``id`` of ``n`` header members here (this node coordinates
            it); ``ids``: each member's reporting task id (to ask the mesh for an
            outcome whose report was lost)."""
            if not isinstance(body, dict) or int(n) < 1:
                raise ProtocolError("chord_start needs a body map and n >= 1")
            if ids is not None and (
                not isinstance(ids, list)
                or len(ids) != int(n)
                or not all(isinstance(i, str) for i in ids)
            ):
                raise ProtocolError("chord_start's ids must list one task id per member")
            chords_of(self._runtime()).start(str(id), int(n), body, str(root_id), ids)

        def chord_wait(self, id: str) -> dict[str, Any]:  # noqa: A002
            """Return once chord ``id`` completed (held by its submitter, so that the
            loss of this node fails the chord there at once)."""
            return chords_of(self._runtime()).wait(str(id))

        def chord_part(
            self,
            id: str,  # noqa: A002
            i: int,
            task_id: str,
            s: str,
            v: Any = None,
            e: Any = None,
            name: Any = None,
        ) -> None:
            """A header member's outcome (pushed by the worker that ran it)."""
            chords = chords_of(self._runtime())
            if not isinstance(i, int) or not isinstance(s, str):
                chords._drop(f"malformed report for chord {id!r}")
                return
            chords.part(str(id), i, str(task_id), s, v, e, str(name))

        def chord_parts(self, parts: list[Any]) -> None:
            """Header members' outcomes, those a worker had in one turn of its
            loop (each as ``chord_part`` takes it)."""
            chords = chords_of(self._runtime())
            if not isinstance(parts, list):
                chords._drop("malformed chord reports")
                return
            for part in parts:
                if not isinstance(part, dict) or not isinstance(part.get("i"), int):
                    chords._drop("malformed report for a chord")
                    continue
                s = part.get("s")
                if not isinstance(s, str):
                    chords._drop(f"malformed report for chord {part.get('id')!r}")
                    continue
                chords.part(
                    str(part.get("id")), part["i"], str(part.get("task_id")), s,
                    part.get("v"), part.get("e"), str(part.get("name")),
                )  # fmt: skip

        def now(self) -> float:
            """This node's clock (POSIX seconds), to compare hosts' clocks."""
            return time.time()

        def on_stop(self) -> None:
            """The node stops: the task layer's greenlets end now, in the loop's
            thread (one still suspended when that thread ends keeps the node)."""
            runtime = runtime_of(self.node)
            if runtime is not None:
                runtime.stop()


def attach(app: App, node: Node) -> Runtime:
    """The node's task runtime, made and started (with its agent) on first use."""
    runtime = runtime_of(node)  # every delay() comes here: no lock once it runs
    if runtime is not None and runtime.ready.is_set():
        return runtime
    runtime, fresh = claim_runtime(app, node)
    if not fresh:
        if not runtime.ready.wait(READY_TIMEOUT):
            raise CallTimeout(f"the task layer of node {node.name} did not start")
        return runtime
    try:
        runtime.start(TaskAgent)
    except BaseException:
        forget_runtime(node)
        raise
    return runtime
