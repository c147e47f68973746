"""``zcell beat``: a node that is a beat candidate only (sends periodic tasks).

``zcell worker -B`` makes a worker a candidate too (``tasks.start_beat``). Any number
of candidates may run; one leads (docs/beat.md).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from .common import add_command, lines, mesh_options
from .node import LOGLEVELS, _start, _stop_on_signals, prepare, serve
from .tasks import _mesh_from_app, find_app, start_beat

if TYPE_CHECKING:
    from zcell import App, Node
    from zcell.tasks.beat import Beat

    from .common import Subcommands

__all__ = ["register"]


def register(sub: Subcommands) -> None:
    """Add ``zcell beat``."""
    beat = add_command(
        sub,
        "beat",
        "run a beat candidate: sends an app's periodic tasks while it leads",
        ["zcell beat -A proj -l info", "zcell beat -A proj -n beat-2"],
        cmd_beat,
    )
    beat.add_argument("-A", "--app", required=True, metavar="APP", help="module or module:attr")
    beat.add_argument("-n", "--name", help="node name, unique in the mesh")
    beat.add_argument("-l", "--loglevel", default="info", type=str.lower, choices=LOGLEVELS)
    beat.add_argument("--port", type=int, default=0, help="inbox port (default: random)")
    beat.add_argument("--heartbeat", type=float, default=1.0, help=argparse.SUPPRESS)
    beat.add_argument("--no-patch", action="store_true", help="do not gevent-monkey-patch")
    mesh_options(beat)
    beat.set_defaults(cluster=None, host=None, worker_concurrency=None)


def cmd_beat(args: argparse.Namespace) -> int:
    """Run a beat candidate until SIGINT/SIGTERM; it then hands over at once."""
    prepare(args)
    app = find_app(args.app)
    _mesh_from_app(args, app)
    stop = _stop_on_signals()
    node, _ = _start(args)
    app.use_node(node)
    beat = start_beat(app, node)
    _banner(app, node, beat, args)
    serve(node, stop, args, beat.stop)
    return 0


def _banner(app: App, node: Node, beat: Beat, args: argparse.Namespace) -> None:
    entries = [f"{e.name}: {e.task} {e.schedule!r}" for e in beat.entries]
    if args.json:
        banner: dict[str, Any] = {
            "event": "ready", "name": node.name, "id": node.id, "app": app.main,
            "cluster": node.cluster, "endpoints": node.endpoints, "entries": entries,
            "pid": os.getpid(),
        }  # fmt: skip
        lines(json.dumps(banner))
        return
    text = [f"zcell beat {node.name} (id {node.id}, pid {os.getpid()})"]
    text.append(f"  app:      {app.main or repr(app)}")
    text.append(f"  cluster:  {node.cluster}")
    for kind, endpoint in node.endpoints.items():
        text.append(f"  {kind + ':':<9} {endpoint}")
    text.append("  schedule:")
    text += [f"    . {e}" for e in entries] or ["    (empty)"]
    text.append("ready")
    lines(*text)
