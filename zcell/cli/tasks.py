"""``zcell worker``, ``zcell call``, ``zcell result``: the task layer's commands.

A worker is a ``zcell node`` that also runs an app's tasks (it shares the node
command's start-up and run loop); ``call`` and ``result`` are one-shot clients
of the public task API (``App.send_task``, ``App.AsyncResult``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .common import UsageError, add_command, error_object, lines, mesh_options, short
from .node import LOGLEVELS, _import_actors, _start, _stop_on_signals, prepare, serve
from .supervise import worker_options

if TYPE_CHECKING:
    from zcell import App, Node, TaskResult
    from zcell.tasks.beat import Beat

    from .common import Subcommands

__all__ = ["find_app", "register", "start_beat"]

#: The least handler bound of a worker's node (``zcell node``'s default).
NODE_CONCURRENCY = 1000
#: Seconds a stopping worker lets its running tasks finish.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds a one-shot client waits to see a worker (or another agent) in the mesh.
FIND_TIMEOUT = 5.0


def register(sub: Subcommands) -> None:
    """Add ``zcell worker``, ``zcell call`` and ``zcell result``."""
    worker = add_command(
        sub,
        "worker",
        "run a worker: a node that runs an app's tasks, until SIGINT/SIGTERM",
        ["zcell worker -A proj -l info", "zcell worker -A proj -Q hipri,celery -c 8 -n w1"],
        cmd_worker,
    )
    worker.add_argument("-A", "--app", required=True, metavar="APP", help="module or module:attr")
    worker.add_argument("-Q", "--queues", metavar="Q1,Q2", help="queues to consume")
    worker.add_argument(
        "-c", "--concurrency", dest="worker_concurrency", type=int, metavar="N",
        help="tasks running at once (default: the app's worker_concurrency)",
    )  # fmt: skip
    worker.add_argument("-n", "--name", help="node name, unique in the mesh")
    worker.add_argument(
        "-B", "--beat", action="store_true", help="also be a beat candidate (docs/beat.md)"
    )
    worker.add_argument("-l", "--loglevel", default="info", type=str.lower, choices=LOGLEVELS)
    worker.add_argument("--port", type=int, default=0, help="inbox port (default: random)")
    worker.add_argument("--heartbeat", type=float, default=1.0, help=argparse.SUPPRESS)
    worker.add_argument("--no-patch", action="store_true", help="do not gevent-monkey-patch")
    worker.add_argument(
        "-E", "--task-events", action="store_true",
        help="publish events (sent only while someone subscribes: zcell events)",
    )  # fmt: skip
    mesh_options(worker)
    worker.set_defaults(cluster=None, host=None)  # unset: the app's conf decides
    worker_options(worker)  # --processes, --pidfile, --logfile (supervise.py)

    call = add_command(
        sub,
        "call",
        "send a task by name; print its id (or its result with --wait)",
        [
            "zcell call proj.tasks.add --args '[2, 2]'",
            "zcell call proj.tasks.add --args '[2, 2]' --wait --timeout 10",
        ],
        cmd_call,
    )
    call.add_argument("task", metavar="NAME", help="the task's name")
    call.add_argument("--args", default="[]", help="JSON list of positional arguments")
    call.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    call.add_argument("--queue", help="queue to send it to (default: the routing)")
    call.add_argument("--countdown", type=float, metavar="S", help="run it S seconds from now")
    call.add_argument("--wait", action="store_true", help="wait for the result and print it")
    call.add_argument("--timeout", type=float, metavar="S", help="bound on --wait")
    mesh_options(call)

    result = add_command(
        sub,
        "result",
        "print a task's result (or its state while it has none)",
        ["zcell result 4c6f0a52-...", "zcell result 4c6f0a52-... --timeout 10 --json"],
        cmd_result,
    )
    result.add_argument("id", metavar="ID", help="the task id")
    result.add_argument("--timeout", type=float, metavar="S", help="wait up to S for the outcome")
    mesh_options(result)


# --------------------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGINT/SIGTERM; running tasks then finish (bounded)."""
    prepare(args)
    app = find_app(args.app)
    _import_actors(list(app.include))
    _mesh_from_app(args, app)
    from zcell.tasks import Worker

    queues = [q for q in (args.queues or "").split(",") if q] or None
    stop = _stop_on_signals()
    node, me = _start(args)
    app.use_node(node)
    try:
        worker = Worker(app, node, queues, concurrency=args.worker_concurrency).start()
    except (TypeError, ValueError) as exc:
        node.stop(timeout=1.0)
        raise UsageError(str(exc)) from exc
    if args.task_events:
        node.monitor.events.enable()
    beat = start_beat(app, node) if args.beat else None
    _worker_banner(app, worker, me, args)
    serve(node, stop, args, lambda: _finish(worker, beat))
    return 0


def _mesh_from_app(args: argparse.Namespace, app: App) -> None:
    """The node options: the command's flags, else the app's mesh settings."""
    conf = app.conf
    args.actors = []
    # The node's handler bound: room for every task the worker may hold (each
    # waits in a handler) and for other messages; tasks have their own bound (-c).
    held = (args.worker_concurrency or conf.worker_concurrency) * conf.worker_prefetch_multiplier
    args.concurrency = max(NODE_CONCURRENCY, 2 * held)
    args.cluster = args.cluster or conf.cluster
    args.host = args.host or conf.host
    args.peer = list(args.peer) + [p for p in conf.peers if p not in args.peer]
    args.no_mdns = args.no_mdns or conf.discovery == "static"
    if not args.secret_file and conf.secret:
        os.environ.setdefault("ZCELL_SECRET", str(conf.secret))


def _finish(worker: Any, beat: Any = None) -> None:
    if beat is not None:
        beat.stop()  # first: another candidate takes over while tasks finish
    left = worker.stop(SHUTDOWN_TIMEOUT)
    if left:
        print(
            f"zcell worker: {left} task(s) still ran after {SHUTDOWN_TIMEOUT:g}s", file=sys.stderr
        )


def start_beat(app: App, node: Node) -> Beat:
    """Make ``node`` a beat candidate of ``app`` (a bad schedule is a usage error)."""
    from zcell.tasks.beat import Beat

    try:
        return Beat(app, node).start()
    except (TypeError, ValueError) as exc:
        node.stop(timeout=1.0)
        raise UsageError(f"beat_schedule: {exc}") from exc


def find_app(spec: str) -> App:
    """The app ``-A spec`` names, found as Celery does (see docs/tasks.md)."""
    from zcell import App

    module_name, _, attr = spec.partition(":")
    module = _import(module_name, spec)
    if attr:
        found = getattr(module, attr, None)
        if isinstance(found, App):
            return found
        raise UsageError(f"-A {spec}: {module_name} has no App named {attr!r}")
    tried: list[str] = []
    for candidate in (module, *_submodules(module_name, spec)):
        app = _app_in(candidate, tried)
        if app is not None:
            return app
    raise UsageError(
        f"no zcell App found for -A {spec}; tried {', '.join(tried)}. Create one "
        "(app = zcell.App(...)) or name it: -A module:attr"
    )


def _import(name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"cannot import -A {spec}: {exc}") from exc


def _submodules(name: str, spec: str) -> list[ModuleType]:
    """``name.app`` and ``name.celery``, where they exist."""
    found = []
    for sub in ("app", "celery"):
        try:
            found.append(importlib.import_module(f"{name}.{sub}"))
        except ModuleNotFoundError as exc:
            if exc.name not in (f"{name}.{sub}", name):
                raise UsageError(f"cannot import {name}.{sub} for -A {spec}: {exc}") from exc
    return found


def _app_in(module: ModuleType, tried: list[str]) -> App | None:
    """``module.app``, ``module.celery``, else any App in the module."""
    from zcell import App

    for attr in ("app", "celery"):
        tried.append(f"{module.__name__}.{attr}")
        if isinstance(getattr(module, attr, None), App):
            app: App = getattr(module, attr)
            return app
    tried.append(f"any App in {module.__name__}")
    return next((v for v in vars(module).values() if isinstance(v, App)), None)


def _worker_banner(app: App, worker: Any, me: dict[str, Any], args: argparse.Namespace) -> None:
    node = worker.node
    tasks = sorted(app.tasks)
    if args.json:
        banner = {
            "event": "ready", "name": node.name, "id": node.id, "app": app.main,
            "cluster": node.cluster, "endpoints": node.endpoints, "queues": worker.queues,
            "concurrency": worker.concurrency, "tasks": tasks, "pid": os.getpid(),
        }  # fmt: skip
        lines(json.dumps(banner))
        return
    text = [f"zcell worker {node.name} (id {node.id}, pid {os.getpid()})"]
    text.append(f"  app:         {app.main or repr(app)}")
    text.append(f"  cluster:     {node.cluster}")
    for kind, endpoint in node.endpoints.items():
        text.append(f"  {kind + ':':<12} {endpoint}")
    text.append(f"  queues:      {', '.join(worker.queues)}")
    text.append(f"  concurrency: {worker.concurrency} (prefetch x{worker.prefetch})")
    text.append("  tasks:")
    text += [f"    . {name}" for name in tasks] or ["    (none)"]
    text.append("ready")
    lines(*text)


# --------------------------------------------------------------------------- clients


def _client_app(args: argparse.Namespace) -> App:
    from zcell import App
    from zcell.cli.common import read_secret

    if args.no_mdns and not args.peer:
        raise UsageError("--no-mdns needs at least one --peer tcp://HOST:PORT to join")
    return App(
        f"zcell-{args.command}",
        cluster=args.cluster,
        host=args.host,
        peers=args.peer,
        discovery="static" if args.no_mdns else "mdns",
        secret=read_secret(args.secret_file),
    )


def _json_arg(text: str, what: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--{what} is not JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise UsageError(f"--{what} must be a JSON {'list' if kind is list else 'object'}")
    return value


def cmd_call(args: argparse.Namespace) -> int:
    """Send a task by name; print its id, or with ``--wait`` its result."""
    from zcell import ZcellError

    task_args = _json_arg(args.args, "args", list)
    task_kwargs = _json_arg(args.kwargs, "kwargs", dict)
    app = _client_app(args)
    try:
        options = {"queue": args.queue, "countdown": args.countdown}
        result = app.send_task(args.task, task_args, task_kwargs, **options)
        if not args.wait:
            lines(json.dumps({"id": result.id}) if args.json else result.id)
            return 0
        return _report(result, args, lambda: result.get(timeout=args.timeout))
    except ZcellError as exc:
        return _failed(exc, args)
    finally:
        app.close()


def cmd_result(args: argparse.Namespace) -> int:
    """Print a task's result (its state while it has none)."""
    from zcell import ZcellError

    app = _client_app(args)
    try:
        _see_agents(app)
        result = app.AsyncResult(args.id)
        if args.timeout is None and not result.ready():
            lines(json.dumps({"id": args.id, "state": result.state}) if args.json else result.state)
            return 0
        return _report(result, args, lambda: result.get(timeout=args.timeout or 0.0))
    except ZcellError as exc:
        return _failed(exc, args)
    finally:
        app.close(timeout=0.0)


def _see_agents(app: App) -> None:
    """Wait (bounded) until the mesh's task agents other than ours are known."""
    from zcell.tasks.runtime import AGENT_TYPE

    node = app.node
    app._runtime()
    deadline = time.monotonic() + FIND_TIMEOUT
    while len(node.actors(AGENT_TYPE)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)


def _report(result: TaskResult, args: argparse.Namespace, get: Any) -> int:
    value = get()
    if args.json:
        lines(json.dumps({"id": result.id, "state": result.state, "result": value}))
    else:
        lines(json.dumps(value))
    return 0


def _failed(exc: BaseException, args: argparse.Namespace) -> int:
    if args.json:
        lines(json.dumps(error_object(exc)))
    else:
        print(f"zcell {args.command}: {short(exc)}", file=sys.stderr)
    return 1
