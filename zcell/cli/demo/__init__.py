"""``zcell demo``: the guided tour (``tour.py``) and the actors its nodes host
(``actors.py``), kept apart from the commands a mesh is run with."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..common import add_command, mesh_options

if TYPE_CHECKING:
    from ..common import Subcommands


def register(sub: Subcommands) -> None:
    """Add ``zcell demo``."""
    demo = add_command(
        sub,
        "demo",
        "start a small local mesh and show every primitive",
        ["zcell demo", "zcell demo --nodes 5 --json"],
        _run,
    )
    demo.add_argument(
        "--nodes", type=int, default=3, metavar="N", help="node processes to start (2-9, default 3)"
    )
    mesh_options(demo)
    demo.set_defaults(cluster=None)  # a cluster of its own, unless --cluster names one


def _run(args: argparse.Namespace) -> int:
    """Import the tour only when it runs: the other commands never need it."""
    from .tour import run_demo

    return run_demo(args)
