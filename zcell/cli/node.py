"""``zcell node``: run a node that hosts actors until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import Failure, UsageError, add_command, lines, mesh_options, read_secret

if TYPE_CHECKING:
    from zcell import Node

    from .common import Subcommands

LOGLEVELS = ("debug", "info", "warning", "error", "critical")


def register(sub: Subcommands) -> None:
    """Add ``zcell node``."""
    node = add_command(
        sub,
        "node",
        "run a node until SIGINT/SIGTERM",
        [
            "zcell node -A examples.hello",
            "zcell node -A myapp.actors --name api-1 --host 0.0.0.0 --secret-file secret.txt",
        ],
        cmd_node,
    )
    node.add_argument(
        "-A",
        "--actors",
        action="append",
        default=[],
        metavar="MODULE",
        help="module (or module:Class) whose actors this node hosts (repeatable)",
    )
    node.add_argument("--name", help="node name, unique in the mesh (default: <hostname>-<pid>)")
    node.add_argument("--port", type=int, default=0, help="inbox port (default: random)")
    node.add_argument(
        "--concurrency",
        type=int,
        default=1000,
        metavar="N",
        help="most handlers running at once (default 1000)",
    )
    node.add_argument("--heartbeat", type=float, default=1.0, help=argparse.SUPPRESS)
    node.add_argument(
        "--loglevel",
        default="info",
        type=str.lower,
        choices=LOGLEVELS,
        help="logging level (default info)",
    )
    node.add_argument(
        "--no-patch",
        action="store_true",
        help="do not gevent-monkey-patch: handlers must then never block",
    )
    mesh_options(node)


def cmd_node(args: argparse.Namespace) -> int:
    """Run a node until SIGINT/SIGTERM, then stop gracefully (exit 0)."""
    prepare(args)
    if args.no_mdns and not args.peer:
        logging.getLogger("zcell").info("static discovery without --peer: waiting to be joined")
    _import_actors(args.actors)
    stop = _stop_on_signals()
    node, me = _start(args)
    _banner(node, me, args)
    serve(node, stop, args)
    return 0


def prepare(args: argparse.Namespace) -> None:
    """Before any user module loads: monkey-patch (unless --no-patch), set up
    logging, and make the current directory importable."""
    if not args.no_patch:
        # Before zcell or any user module is imported, so that their blocking
        # I/O (sockets, time.sleep, database clients) yields to other handlers.
        from gevent import monkey

        monkey.patch_all()
    logging.basicConfig(
        level=getattr(logging, args.loglevel.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # As `python -m` and celery do: modules in the current directory can be named.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def serve(
    node: Node,
    stop: list[int],
    args: argparse.Namespace,
    before_stop: Callable[[], None] | None = None,
) -> None:
    """Run until a signal (or the node stops itself), then ``before_stop()`` and a
    graceful stop. Raises ``Failure`` when the node stopped itself."""
    # The ``shutdown`` control operation stops it as SIGTERM does.
    node.monitor.on_shutdown = lambda: stop.append(signal.SIGTERM)
    try:
        while not stop and node.failure is None:
            time.sleep(0.1)
    finally:
        if before_stop is not None:
            before_stop()
        node.stop()
        if args.json:
            lines(json.dumps({"event": "stopped", "name": node.name}))
        else:
            lines(f"zcell {args.command} {node.name} stopped")
    if node.failure is not None:  # it stopped itself: e.g. its name is taken
        raise Failure(str(node.failure))


def _import_actors(specs: list[str]) -> None:
    """Import each ``-A`` module now, so that a typo is a usage error, not a log line."""
    for spec in specs:
        module = spec.partition(":")[0]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"cannot import -A {spec}: {exc}{_dotted_hint(module)}") from exc


def _stop_on_signals() -> list[int]:
    """SIGINT/SIGTERM append to the returned list; a second one exits at once."""
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if stop:  # a second Ctrl-C: the user does not want to wait
            print("zcell node: forced exit", file=sys.stderr, flush=True)
            os._exit(1)
        stop.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _start(args: argparse.Namespace) -> tuple[Node, dict[str, Any]]:
    """The started node and its own entry in ``nodes()``; bad options are usage errors."""
    from zcell import Node, NodeStopped

    node = None
    try:
        node = Node(
            args.name,
            cluster=args.cluster,
            host=args.host,
            port=args.port,
            peers=args.peer,
            discovery="static" if args.no_mdns else "mdns",
            actors=args.actors,
            secret=read_secret(args.secret_file),
            heartbeat=args.heartbeat,
            concurrency=args.concurrency,
        )
        return node, node.start().nodes()[0]
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    except NodeStopped as exc:  # refused (NameTaken) while starting, or just after
        raise Failure(str(getattr(node, "failure", None) or exc)) from exc


def _banner(node: Node, me: dict[str, Any], args: argparse.Namespace) -> None:
    """Print who the node is and where it listens, then ``ready`` (or one JSON line)."""
    mode = "static" if args.no_mdns else "mdns"
    if args.json:
        banner = {
            "event": "ready",
            "name": node.name,
            "id": node.id,
            "cluster": node.cluster,
            "endpoints": node.endpoints,
            "actors": me["types"],
            "discovery": mode,
            "peers": args.peer,
            "patched": not args.no_patch,
            "pid": os.getpid(),
        }
        lines(json.dumps(banner))
        return
    text = [f"zcell node {node.name} (id {node.id}, pid {os.getpid()})"]
    text.append(f"  cluster:   {node.cluster}")
    for kind, endpoint in node.endpoints.items():
        text.append(f"  {kind + ':':<10} {endpoint}")
    text.append(f"  actors:    {', '.join(me['types']) or '(none)'}")
    peers = f" + peers {', '.join(args.peer)}" if args.peer else ""
    text.append(f"  discovery: {mode}{peers}")
    text.append(f"  patched:   {'no' if args.no_patch else 'yes'}")
    text.append("ready")
    lines(*text)


def _dotted_hint(module: str) -> str:
    """``examples/hello.py`` -> a hint to name the module as Python does."""
    if not (module.endswith(".py") or os.sep in module or "/" in module):
        return ""
    dotted = module.removesuffix(".py").replace(os.sep, ".").replace("/", ".").strip(".")
    return f"; -A takes a module name, not a file: -A {dotted}"
