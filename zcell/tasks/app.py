"""``App``: Celery's application object on the mesh.

It holds the settings (``conf.py``), the task registry and the app's node: in
``zcell worker`` the worker's node; in a plain program a client node started on
first use with the app's mesh settings and stopped, after a bounded flush of
the tasks no worker holds yet, at ``close()``, ``with app:`` exit or process exit.
"""

from __future__ import annotations

import atexit
import logging
import runpy
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, overload

from .._transport.loop import Flag
from ..errors import ZcellError
from ..monitor.events import EventStream
from ..node import Node
from . import signals
from .agent import attach
from .apps import register_app
from .conf import MESH_KEYS, Settings
from .control import Control
from .dispatch import Entry
from .errors import NotRegistered, TaskPendingFull
from .message import epoch, new_id
from .request import Request, current_request
from .result import LOOKUP_TIMEOUT, TaskResult
from .routing import route
from .runtime import Runtime
from .signals import send_safely
from .states import READY_STATES
from .task import Task

if TYPE_CHECKING:
    from .dispatch import Dispatcher

__all__ = ["App", "TaskRegistry"]

log = logging.getLogger(__name__)

#: Seconds ``close()`` waits for tasks that no worker holds yet, by default.
FLUSH_TIMEOUT = 10.0
#: The commands of the ``zcell`` command line that take ``-A app``.
APP_COMMANDS = frozenset({"worker", "beat"})
#: The options ``apply_async``/``send_task`` take.
SEND_OPTIONS = frozenset(
    {
        "task_id", "countdown", "eta", "expires", "queue", "link", "link_error",
        "ignore_result", "time_limit", "soft_time_limit", "headers", "acks_late",
        "track_started", "retries", "priority", "routing_key", "exchange", "serializer",
        "root_id", "parent_id", "chain", "chord", "watchers",
    }
)  # fmt: skip


#: The options whose values a task message may hold as the caller gave them,
#: beyond its arguments (which ``send_task`` checks): a message with any of these
#: is walked for what the receiver would refuse at each push, unless
#: ``_plain_message`` finds them plain (``codec.Checked``).
_FREE_OPTIONS = frozenset({"headers", "chain"})
_NUMBERS = (int, float, type(None))
_IDS = (str, type(None))


def _plain_message(msg: dict[str, Any], options: dict[str, Any]) -> bool:
    """Whether ``msg`` holds nothing the receiver would refuse that packing lets
    through: its arguments were checked, its other fields zcell made or found
    plain (a number, an id, agents, a chord report address)."""
    if not _FREE_OPTIONS.isdisjoint(options):
        return False
    if type(msg["time_limit"]) not in _NUMBERS or type(msg["soft_time_limit"]) not in _NUMBERS:
        return False
    if type(msg["root_id"]) is not str or type(msg["parent_id"]) not in _IDS:
        return False
    watchers = msg["watchers"]
    if watchers is not None and (
        type(watchers) is not list or not all(hasattr(w, "_zcell_ref") for w in watchers)
    ):
        return False
    report = msg["chord"]
    return report is None or (
        type(report) is dict
        and len(report) == 3
        and type(report.get("id")) is str
        and type(report.get("i")) is int
        and hasattr(report.get("to"), "_zcell_ref")
    )


#: ``before_task_publish`` arguments that only mean something with a broker.
NO_BROKER: dict[str, Any] = {"properties": {}, "declare": [], "retry_policy": {}}


class TaskRegistry(dict[str, Task]):
    """Task name -> ``Task``; an unknown name raises ``NotRegistered``."""

    def __missing__(self, name: str) -> Task:
        from ..errors import did_you_mean

        raise NotRegistered(
            f"no task named {name!r}{did_you_mean(name, self)}; registered: {sorted(self)}"
        )


class App:
    """A Celery-style application whose tasks run on the zcell mesh.

    Args:
        main: The app's name (for banners; Celery's ``main``).
        include: Modules to import when a worker starts (they define the tasks).
        cluster: The mesh's name (also a conf key, as are the four below;
            ``zcell worker`` flags win).
        peers: Inbox endpoints to join.
        discovery: ``"mdns"`` or ``"static"``.
        host: Address the app's node binds.
        secret: The cluster secret.
        broker: Accepted for Celery code, and ignored with a warning.
        backend: Accepted for Celery code, and ignored with a warning.
        **conf: Any other setting (``app.conf``), by Celery's name.
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        include: Iterable[str] = (),
        cluster: str | None = None,
        peers: Iterable[str] | None = None,
        discovery: str | None = None,
        host: str | None = None,
        secret: str | None = None,
        broker: Any = None,
        backend: Any = None,
        **conf: Any,
    ) -> None:
        self.main = main
        self.include = list(include)
        self.tasks = TaskRegistry()
        self._node: Node | None = None
        self._own_node = False
        self.conf = Settings(locked=lambda: self._node is not None)
        for name, value in (("broker", broker), ("backend", backend)):
            if value is not None:
                self.conf.ignore(name)
        mesh = dict(cluster=cluster, peers=peers, discovery=discovery, host=host, secret=secret)
        self.conf.update({k: v for k, v in mesh.items() if v is not None}, **conf)
        self.control = Control(self)
        self._lock = threading.RLock()
        register_app(self)
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- tasks ------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(self, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Make a function a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""

        def decorate(f: Callable[..., Any]) -> Task:
            task = Task(self, f, **options)
            self.tasks[task.name] = task
            return task

        return decorate(fn) if fn is not None else decorate

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Task | str,
        args: Any = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        **opts: Any,
    ) -> str:
        """Add a ``beat_schedule`` entry (Celery's signature; ``sig`` is a task or a
        task name); ``opts`` are ``apply_async`` options, plus ``catch_up``. Returns
        the entry's name. See docs/beat.md."""
        from .beat import add_periodic_task

        return add_periodic_task(self, schedule, sig, args, kwargs, name, **opts)

    # -- the node ---------------------------------------------------------------

    @property
    def node(self) -> Node:
        """The app's node: the worker's, or a client node started on first use."""
        node = self._node  # read once: every delay() comes here, the lock only to make it
        if node is not None:
            return node
        with self._lock:
            if self._node is None:
                conf = self.conf
                mesh = {k: conf[k] for k in MESH_KEYS}
                self._node = Node(**mesh).start()
                self._own_node = True
            return self._node

    def use_node(self, node: Node) -> None:
        """Use ``node`` (a worker's) as the app's node; the app never stops it.
        ``zcell worker`` does this, so that tasks sending tasks use the worker's node."""
        with self._lock:
            self._node, self._own_node = node, False

    def _runtime(self) -> Runtime:
        return attach(self, self.node)

    def events(self, types: Iterable[str] | None = None) -> EventStream:
        """A stream of the mesh's events (``with app.events() as stream:``; see
        `zcell.monitor.EventStream`): only ``types`` when given. Nodes publish only
        with events enabled (``zcell worker -E``, ``app.control.enable_events()``)."""
        return EventStream(self._runtime().node, types)

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Hand the waiting tasks over (at most ``timeout`` s), then stop the
        app's client node. Using the app afterwards starts a new node."""
        with self._lock:
            node, own = self._node, self._own_node
            self._node, self._own_node = None, False
        if node is None or not own:
            return
        self._flush(node, timeout)
        node.stop(timeout=1.0)

    @staticmethod
    def _flush(node: Node, timeout: float) -> None:
        from .runtime import runtime_of

        runtime = runtime_of(node)
        if runtime is None:
            return
        deadline = time.monotonic() + timeout
        left = 0
        try:
            while (left := node.call_in_loop(runtime.dispatcher.unhanded)) > 0:
                if time.monotonic() >= deadline:
                    break
                Flag().wait(0.02)
        except ZcellError:
            pass
        if left:
            log.warning(
                "zcell: %d task(s) could not be handed to a worker within %.1fs and are "
                "dropped: start a worker for their queue(s) before closing the app",
                left,
                timeout,
            )

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        _task: Task | None = None,
        _runtime: Runtime | None = None,
        **options: Any,
    ) -> TaskResult:
        """Send the task ``name`` (this program needs not have its code).

        ``_runtime``: the node's task runtime to send through (a worker
        carrying a work-flow on sends through its own node).

        Raises:
            SerializationError: an argument cannot travel.
            TaskPendingFull: ``task_pending_max`` tasks wait here already and
                none was handed over within ``task_pending_wait`` seconds.
            TypeError: an unknown option.
        """
        if options and not SEND_OPTIONS.issuperset(options):
            unknown = sorted(set(options) - SEND_OPTIONS)
            raise TypeError(f"unknown apply_async option(s) {unknown}; see docs/tasks.md")
        runtime = _runtime or self._runtime()
        args = list(args or ())
        kwargs = dict(kwargs or {})
        runtime.encodable([args, kwargs])
        task = _task or self.tasks.get(name)
        request = current_request()
        msg = self._message(name, args, kwargs, task, options, runtime, request)
        redeliver = task.max_redeliveries if task and task.max_redeliveries is not None else None
        entry = Entry(msg, msg["queue"], self._pick(redeliver, "task_max_redeliveries"))
        entry.checked = _plain_message(msg, options)
        self._chain(entry, options)
        before, after = signals.before_task_publish, signals.after_task_publish
        publish = _publish_args(msg) if before.receivers or after.receivers else {}
        send_safely(before, name, **publish, **NO_BROKER)
        self._add(runtime.dispatcher, entry)
        send_safely(after, name, **publish)
        parent = TaskResult(request.id, self) if request is not None else None
        if _runtime is not None and _runtime.node is not self._node:
            return TaskResult(entry.id, self, None, parent=parent)  # followed there, not here
        return TaskResult(entry.id, self, entry, parent=parent)

    def _pick(self, value: Any, setting: str) -> Any:
        return self.conf[setting] if value is None else value

    def _message(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        task: Task | None,
        options: dict[str, Any],
        runtime: Runtime,
        parent: Request | None,
    ) -> dict[str, Any]:
        """The task message: each option from ``options``, else the task's own,
        else the app's setting (``parent``: the task this one is sent from)."""
        values = self.conf.live()  # a dict read a setting, not a method call
        get = options.get
        task_id = str(get("task_id") or new_id())
        chosen = []
        for key, setting in _TASK_OPTIONS:
            value = get(key)
            if value is None and task is not None:
                value = getattr(task, key)
            chosen.append(values[setting] if value is None else value)
        acks_late, ignore_result, track_started, time_limit, soft_time_limit = chosen
        queue = get("queue")
        eta, countdown, expires = get("eta"), get("countdown"), get("expires")
        root_id = get("root_id") or (parent.root_id if parent is not None else task_id)
        parent_id = get("parent_id") or (parent.id if parent is not None else None)
        # Every field of message.make, in its order (a literal: make() took a
        # third of this method).
        return {
            "retries": int(get("retries") or 0),
            "attempt": 0,
            "eta": None if eta is None and countdown is None else epoch(eta, relative=countdown),
            "expires": None if expires is None else _expires(expires),
            "parent_id": parent_id,
            "acks_late": bool(acks_late),
            "ignore_result": bool(ignore_result),
            "track_started": bool(track_started),
            "time_limit": time_limit,
            "soft_time_limit": soft_time_limit,
            "link": None,
            "link_error": None,
            "headers": get("headers"),
            "chain": [dict(s) for s in options["chain"]] if get("chain") else None,
            "chord": get("chord"),
            "watchers": get("watchers"),
            "id": task_id,
            "name": name,
            "args": args,
            "kwargs": kwargs,
            "queue": route(
                name,
                queue=queue,
                routes=values["task_routes"],
                task_queue=task.queue if task is not None else None,
                default=values["task_default_queue"],
            ),
            "root_id": root_id,
            "reply_to": runtime.agent,
        }

    def _chain(self, entry: Entry, options: dict[str, Any]) -> None:
        """``link``/``link_error``: tasks, task names or signatures (or lists of
        them) sent with the outcome: the result, or the failed task's id."""
        if options.get("link") is None and options.get("link_error") is None:
            return  # the common case: nothing to follow
        from .canvas import maybe_signature

        def targets(option: str) -> list[Any]:
            value = options.get(option)
            found = value if isinstance(value, list) else [] if value is None else [value]
            if not all(isinstance(t, Task | str | dict) for t in found):
                raise TypeError(f"{option} takes a task, a task name or a signature (or a list)")
            return [
                maybe_signature(self.signature(t) if isinstance(t, str) else t, self) for t in found
            ]

        link, link_error = targets("link"), targets("link_error")

        def follow(done: Entry) -> None:
            if done.state == "SUCCESS":
                for sig in link:
                    sig.apply_async((done.result,))
            elif done.state == "FAILURE":
                for sig in link_error:
                    sig.apply_async((done.id,))

        if link or link_error:
            entry.callbacks.append(follow)

    def _add(self, dispatcher: Dispatcher, entry: Entry) -> None:
        """Hand the entry to the dispatcher; wait (bounded) while it is full.

        A program thread with room hands over without waiting for the loop: a
        blocking cross-thread call per task was the largest cost of ``delay()``
        (bench/README.md, "Task layer").
        """
        if dispatcher.can_hand_over():
            dispatcher.hand_over(entry)
            return
        wait = float(self.conf.task_pending_wait)
        deadline = time.monotonic() + wait
        while not dispatcher.node.call_in_loop(dispatcher.add, entry):
            if time.monotonic() >= deadline:
                raise TaskPendingFull(
                    f"{self.conf.task_pending_max} tasks wait here for a worker and none "
                    f"was handed over within {wait}s: start more workers for queue "
                    f"{entry.queue!r}, or raise task_pending_max"
                )
            Flag().wait(0.05)

    def start(self, argv: list[str] | None = None) -> None:
        """Run the ``zcell`` command line with this app (Celery's ``app.start()``):
        ``python -m proj.celery worker -l info`` runs ``zcell worker -A proj -l info``.

        ``argv`` defaults to ``sys.argv[1:]``; ``-A <main>`` is added for the
        commands that take an app when none is given. Exits with the command's code.
        """
        args = list(sys.argv[1:] if argv is None else argv)
        if args and args[0] in APP_COMMANDS and not {"-A", "--app"} & set(args):
            if not self.main:
                raise SystemExit("app.start(): give the app a name (App('proj')) or pass -A")
            args[1:1] = ["-A", self.main]
        saved = sys.argv
        sys.argv = ["zcell", *args]
        try:
            # The command line sits above this layer: run it by module name, as
            # `python -m zcell` would (it exits with the command's code).
            runpy.run_module("zcell", run_name="__main__", alter_sys=True)
        finally:
            sys.argv = saved

    def _start_chord(
        self,
        sig: Any,
        runtime: Runtime,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Any:
        """Apply a chord (``canvas.chord`` calls this: the coordinator is above it)."""
        from .chord import start_chord

        return start_chord(sig, self, runtime, args, kwargs, options)

    def signature(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """A signature of the task ``name`` sent with this app (Celery's
        ``app.signature``); the task needs not be registered here."""
        from .canvas import Signature

        return Signature(name, args, kwargs, options, app=self)

    # -- results ----------------------------------------------------------------

    def AsyncResult(self, task_id: str) -> TaskResult:  # noqa: N802 - Celery's name
        """The result of task ``task_id``, sent by any program of the mesh."""
        runtime = self._runtime()
        # The dispatcher's state is the loop thread's: read it there.
        entry = self.node.call_in_loop(runtime.dispatcher.known.get, task_id)
        return TaskResult(task_id, self, entry)

    def _lookup(self, task_id: str) -> dict[str, Any] | None:
        """Ask every task agent of the mesh about ``task_id``; the best answer."""
        runtime = self._runtime()
        assert runtime.agent is not None
        best: dict[str, Any] | None = None
        replies = runtime.agent.scatter(
            "query", {"ids": [task_id]}, timeout=LOOKUP_TIMEOUT, propagate=False
        )
        for reply in replies:
            record = reply.get(task_id) if isinstance(reply, dict) else None
            if not isinstance(record, dict):
                continue
            if record.get("s") in READY_STATES:
                return record
            best = best or record
        return best

    def __repr__(self) -> str:
        return f"<zcell.App {self.main or '__main__'}>"


def _close_at_exit(ref: weakref.ref[App]) -> None:
    """At process exit: flush and stop the app's client node (before the mesh's
    own exit hook stops every node: atexit runs hooks in reverse order)."""
    app = ref()
    if app is not None:
        app.close()


#: The options a task's message takes from ``apply_async``, else from the task,
#: else from the app's setting.
_TASK_OPTIONS = (
    ("acks_late", "task_acks_late"),
    ("ignore_result", "task_ignore_result"),
    ("track_started", "task_track_started"),
    ("time_limit", "task_time_limit"),
    ("soft_time_limit", "task_soft_time_limit"),
)


def _publish_args(msg: dict[str, Any]) -> dict[str, Any]:
    """The publish signals' arguments, Celery's way (message protocol 2): the
    body is ``(args, kwargs, embed)``; the routing key is the queue."""
    headers = {
        "id": msg["id"], "task": msg["name"], "root_id": msg["root_id"],
        "parent_id": msg["parent_id"], "retries": msg["retries"], "eta": msg["eta"],
        "expires": msg["expires"], "timelimit": [msg["time_limit"], msg["soft_time_limit"]],
        **(msg["headers"] or {}),
    }  # fmt: skip
    return {
        "body": (msg["args"], msg["kwargs"], {}),
        "exchange": "",
        "routing_key": msg["queue"],
        "headers": headers,
    }


def _expires(value: float | datetime | None) -> float | None:
    """``expires``: seconds from now (a number) or a datetime (naive: UTC)."""
    if isinstance(value, int | float):
        return epoch(None, relative=value)
    return epoch(value)
