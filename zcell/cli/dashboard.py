"""``zcell dashboard``: a mesh member serving a live web dashboard (docs/dashboard.md).

It joins the mesh like any client (``-A`` fills in the mesh settings not
given), subscribes to events, asks the nodes once a second and serves the
pages, the JSON API and ``/metrics`` until SIGINT/SIGTERM. Nothing else to run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import TYPE_CHECKING

from .common import UsageError, add_command, lines
from .inspect import app_client, mesh_options_with_app

if TYPE_CHECKING:
    from zcell import App, Node

    from .common import Subcommands

__all__ = ["register"]

#: Tasks remembered by default (``--max-tasks``).
MAX_TASKS = 10_000


def register(sub: Subcommands) -> None:
    """Add ``zcell dashboard``."""
    dash = add_command(
        sub,
        "dashboard",
        "serve a live web dashboard of the mesh: workers, tasks, actors, rates, actions",
        [
            "zcell dashboard",
            "zcell -A proj dashboard --port 5555 --basic-auth admin:secret",
            "zcell dashboard --address 0.0.0.0 --max-tasks 50000",
        ],
        app_client(cmd_dashboard),
    )
    dash.add_argument("--port", type=int, default=5555, help="HTTP port (default 5555; 0: any)")
    dash.add_argument("--address", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    dash.add_argument(
        "--basic-auth", metavar="USER:PASSWORD", help="ask every request for these credentials"
    )
    dash.add_argument(
        "--max-tasks",
        type=int,
        default=MAX_TASKS,
        metavar="N",
        help=f"most tasks remembered, the oldest dropped first (default {MAX_TASKS})",
    )
    dash.add_argument(
        "--forget-offline",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds an offline worker stays listed, greyed (default 300)",
    )
    mesh_options_with_app(dash)
    dash.set_defaults(wait=0.0)


def cmd_dashboard(node: Node, args: argparse.Namespace) -> int:
    """Serve the dashboard from ``node`` until stopped."""
    from zcell.dashboard import Dashboard

    _check(args)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = _app(node, args)
    try:
        dashboard = Dashboard(
            node,
            app,
            address=args.address,
            port=args.port,
            max_tasks=args.max_tasks,
            basic_auth=args.basic_auth,
            forget_offline=args.forget_offline,
        ).start()
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.address}:{args.port}: {exc}") from exc
    url = f"http://{args.address}:{dashboard.port}/"
    if args.json:
        lines(json.dumps({"event": "ready", "name": node.name, "url": url, "pid": os.getpid()}))
    else:
        lines(f"zcell dashboard {node.name} (pid {os.getpid()})", f"  url:       {url}", "ready")
    dashboard.serve_forever()
    return 0


def _check(args: argparse.Namespace) -> None:
    if args.max_tasks < 1:
        raise UsageError("--max-tasks must be at least 1")
    if args.basic_auth is not None and ":" not in args.basic_auth:
        raise UsageError("--basic-auth takes USER:PASSWORD")


def _app(node: Node, args: argparse.Namespace) -> App:
    """The ``-A`` app (or a bare one) on the dashboard's node, for the actions."""
    from zcell import App

    app: App
    spec = args.app or getattr(args, "global_app", None)
    if spec:
        from .tasks import find_app

        app = find_app(spec)
    else:
        app = App("zcell-dashboard")
    app.use_node(node)
    return app
