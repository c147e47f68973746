"""What the dashboard knows: events folded into a bounded `State`, plus what the
nodes answer when asked (pool, queues, actors, message counters), plus rates.

Everything here runs in one thread (the dashboard's gevent hub: the event
drain, the poller and the web handlers are greenlets of it), so nothing is
locked. Memory is bounded: ``max_tasks`` tasks (the oldest dropped), the
workers the mesh has (offline ones forgotten after ``forget_offline`` s), a
fixed window of rate samples, and one metric series per (worker, task name).
"""

from __future__ import annotations

import collections
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..monitor.state import State, TaskState
from ..tasks.routing import QUEUE_ACTOR_PREFIX

if TYPE_CHECKING:
    from ..monitor import EventStream
    from ..node import Node

__all__ = ["Board"]

#: Seconds between two looks at the members (enable events, stats, offline).
POLL_EVERY = 1.0
#: Seconds a control call of the poller waits for replies.
ASK_TIMEOUT = 1.0
#: Rate samples kept (one a second): the charts' window.
SAMPLES = 120
#: Seconds an offline worker stays listed (greyed) before it is forgotten.
FORGET_OFFLINE = 300.0
#: Runtime histogram buckets (Prometheus' defaults, as Flower's).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Task states finished for good.
FINISHED = ("SUCCESS", "FAILURE", "REVOKED", "REJECTED")


class Board:
    """The dashboard's model of the mesh (see the module doc).

    Args:
        node: The dashboard's started node (it asks and subscribes from it).
        max_tasks: Most tasks remembered.
        forget_offline: Seconds an offline worker stays listed.
    """

    def __init__(
        self, node: Node, max_tasks: int = 10_000, forget_offline: float = FORGET_OFFLINE
    ) -> None:
        self.node = node
        self.state = State(max_tasks=max_tasks)
        self.forget_offline = forget_offline
        #: Bumped on every change the page shows: SSE pushes when it moves.
        self.version = 0
        #: Worker name -> what stats and active_queues said last.
        self.info: dict[str, dict[str, Any]] = {}
        #: Node name -> its actors (the ``actors`` operation's reply).
        self.actors: dict[str, list[dict[str, Any]]] = {}
        self.offline_since: dict[str, float] = {}
        self.outcomes: collections.defaultdict[str, collections.Counter[str]] = (
            collections.defaultdict(collections.Counter)
        )
        #: (worker, type, task name) -> events seen (flower_events_total).
        self.event_counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: (worker, task name) -> [bucket counts..., count, sum] (flower_task_runtime_seconds).
        self.runtimes: dict[tuple[str, str], list[float]] = {}
        self.samples: collections.deque[dict[str, float]] = collections.deque(maxlen=SAMPLES)
        self._messages_in: dict[str, int] = {}
        self._last = {"t": time.time(), "tasks": 0.0, "events": 0.0, "messages": 0.0}
        self._enabled: set[str] = set()

    # -- events ---------------------------------------------------------------------

    def drain(self, stream: EventStream) -> int:
        """Fold every event waiting in ``stream``; returns how many."""
        n = 0
        while (event := stream.next(0)) is not None:
            self.event(event)
            n += 1
        return n

    def event(self, event: dict[str, Any]) -> None:
        """Fold one event: the state, the per-worker outcomes and the metrics."""
        self.state.event(event)
        self.version += 1
        type_ = str(event.get("type", ""))
        worker = str(event.get("hostname", ""))
        uuid = event.get("uuid")
        task = self.state.tasks.get(uuid) if isinstance(uuid, str) else None
        name = (task.name if task else None) or ""
        self.event_counts[(worker, type_, name)] += 1
        if type_ in ("task-succeeded", "task-failed"):
            self.outcomes[worker][type_] += 1
            runtime = event.get("runtime")
            if isinstance(runtime, int | float):
                self._observe(worker, name, float(runtime))
        if type_ == "worker-offline":
            self.offline_since.setdefault(worker, time.time())

    def _observe(self, worker: str, task: str, seconds: float) -> None:
        series = self.runtimes.setdefault((worker, task), [0.0] * (len(BUCKETS) + 2))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                series[i] += 1
        series[-2] += 1
        series[-1] += seconds

    # -- asking the nodes -----------------------------------------------------------

    def poll(self, control: Any, ask_actors: bool) -> None:
        """One look at the mesh: events on for newcomers, stats and queues of the
        workers (and every node's actors when ``ask_actors``), offline marks."""
        members = [m for m in self.node.nodes() if not m["self"]]
        self._enable_events(control, members)
        names = [m["name"] for m in members]
        workers = [
            m["name"] for m in members if any(t.startswith(QUEUE_ACTOR_PREFIX) for t in m["types"])
        ]
        stats = control.broadcast("stats", {}, names, True, ASK_TIMEOUT) if names else {}
        queues = control.broadcast("active_queues", {}, workers, True, ASK_TIMEOUT)
        for name in workers:
            self._remember(name, (stats or {}).get(name), (queues or {}).get(name))
        self._count_messages(stats or {})
        if ask_actors and names:
            replies = control.broadcast("actors", {}, names, True, ASK_TIMEOUT) or {}
            self.actors = {n: list(r) for n, r in replies.items() if isinstance(r, list)}
        self._mark_offline(set(names))
        self.version += 1

    def _enable_events(self, control: Any, members: list[dict[str, Any]]) -> None:
        """Ask members not asked yet to publish events (as Flower does, but once)."""
        new = [m for m in members if m["id"] not in self._enabled]
        if not new:
            return
        replies = control.broadcast("enable_events", {}, [m["name"] for m in new], True, 1.0)
        for member in new:
            if replies is not None and member["name"] in replies:
                self._enabled.add(member["id"])
        self._enabled &= {m["id"] for m in members}

    def _remember(self, name: str, stats: Any, queues: Any) -> None:
        info = self.info.setdefault(name, {"queues": [], "concurrency": None, "pid": None})
        if isinstance(stats, dict):
            info["concurrency"] = (stats.get("pool") or {}).get("max-concurrency")
            info["pid"] = stats.get("pid")
            info["uptime"] = stats.get("uptime")
        if isinstance(queues, list):
            info["queues"] = [q.get("name") for q in queues if isinstance(q, dict)]
        self.offline_since.pop(name, None)

    def _count_messages(self, stats: dict[str, Any]) -> None:
        for name, reply in stats.items():
            counters = reply.get("statistics") if isinstance(reply, dict) else None
            if isinstance(counters, dict) and isinstance(counters.get("messages_in"), int):
                self._messages_in[name] = counters["messages_in"]

    def _mark_offline(self, members: set[str]) -> None:
        """Workers gone from the mesh are offline at once (a SIGKILLed one sends no
        ``worker-offline``); those offline long enough are forgotten."""
        now = time.time()
        for name in list(self.info):
            worker = self.state.workers.get(name)
            if name not in members:
                if worker is not None:
                    worker.online = False
                self.offline_since.setdefault(name, now)
            if now - self.offline_since.get(name, now) > self.forget_offline:
                self._forget(name)

    def _forget(self, name: str) -> None:
        self.info.pop(name, None)
        self.state.workers.pop(name, None)
        self.offline_since.pop(name, None)
        self.outcomes.pop(name, None)
        self._messages_in.pop(name, None)

    # -- rates ----------------------------------------------------------------------

    def sample(self) -> dict[str, float]:
        """Add one rate sample (tasks finished, events, messages per second)."""
        now = time.time()
        counts = self.state.counts
        totals = {
            "tasks": float(counts["task-succeeded"] + counts["task-failed"]),
            "events": float(self.state.event_count),
            "messages": float(sum(self._messages_in.values())),
        }
        span = max(now - self._last["t"], 1e-3)
        point = {"t": now} | {k: max(0.0, (v - self._last[k]) / span) for k, v in totals.items()}
        self._last = {"t": now} | totals
        self.samples.append(point)
        return point

    # -- views (JSON-ready) -----------------------------------------------------------

    def workers(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Worker name -> status, queues, concurrency, load, counters, heartbeat."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(self.info):
            info = self.info[name]
            w = self.state.workers.get(name)
            online = name not in self.offline_since and (w is None or w.alive(now))
            out[name] = {
                "hostname": name,
                "status": online,
                "queues": info["queues"],
                "concurrency": info["concurrency"],
                "pid": info["pid"] or (w.pid if w else None),
                "active": w.active if w else 0,
                "processed": self.outcomes[name]["task-succeeded"]
                + self.outcomes[name]["task-failed"],
                "failed": self.outcomes[name]["task-failed"],
                "loadavg": w.loadavg if w else [],
                "heartbeat": w.last_heartbeat if w else None,
                "offline_since": self.offline_since.get(name),
            }
        return out

    def tasks(
        self,
        state: str | None = None,
        name: str | None = None,
        worker: str | None = None,
        limit: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Task id -> its fields, newest first, filtered (Flower's ``/api/tasks``)."""
        out: dict[str, dict[str, Any]] = {}
        for task in reversed(self.state.tasks.values()):
            if limit is not None and len(out) >= limit:
                break
            if state and task.state != state.upper():
                continue
            if name and name not in (task.name or ""):
                continue
            if worker and task.hostname != worker:
                continue
            out[task.uuid] = task_fields(task)
        return out

    def task(self, uuid: str) -> dict[str, Any] | None:
        """One task's fields and the tasks of its canvas (same root), or None."""
        task = self.state.tasks.get(uuid)
        if task is None:
            return None
        out = task_fields(task)
        root = task.root_id or task.uuid
        out["canvas"] = [
            {"uuid": t.uuid, "name": t.name, "state": t.state, "parent_id": t.parent_id}
            for t in self.state.tasks.values()
            if t.uuid != task.uuid and (t.root_id == root or t.uuid == root)
        ][:100]
        return out

    def actor_rows(self) -> list[dict[str, Any]]:
        """Every actor the nodes reported: type, node, id, handled, running."""
        rows = [
            {"node": node, **{k: a.get(k) for k in ("type", "id", "handled", "running")}}
            for node, actors in self.actors.items()
            for a in actors
            if isinstance(a, dict)
        ]
        return sorted(rows, key=lambda r: (str(r["type"]), r["node"], str(r["id"])))

    def summary(self) -> dict[str, Any]:
        """The small state every SSE message carries: version, counts, last rates."""
        counts = self.state.counts
        return {
            "version": self.version,
            "tasks": len(self.state.tasks),
            "max_tasks": self.state.max_tasks,
            "events": self.state.event_count,
            "succeeded": counts["task-succeeded"],
            "failed": counts["task-failed"],
            "workers_online": sum(1 for w in self.workers().values() if w["status"]),
            "rates": list(self.samples)[-60:],
        }


def task_fields(task: TaskState) -> dict[str, Any]:
    """A task as the API shows it (Flower's field names; ``worker`` is the hostname)."""
    out = asdict(task)
    out["worker"] = task.hostname
    return out
