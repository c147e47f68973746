"""The ``zcell`` command.

``zcell node`` runs a node until SIGINT/SIGTERM; ``zcell demo`` runs the guided
tour; the other subcommands are one-shot clients: each starts a ``Node`` that
hosts nothing, joins the mesh, waits until it sees it, acts, prints and leaves.

A thin client of the public API: ``main(argv=None) -> int``. Exit codes: 0
success, 1 remote error, timeout, unknown actor or no mesh found, 2 usage error.

One module per command family, each with a ``register(sub)`` that adds its
subcommands (``common.add_command``: a one-line summary, examples, and the
function that runs it). A new family is a new module and one line in
``FAMILIES``; ``main`` runs whatever the parsed subcommand names.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import beat, clients, dashboard, demo, events, inspect, multi, node, tasks
from .common import Failure, UsageError, parse_kv, read_secret

if TYPE_CHECKING:
    from .common import Subcommands

__all__ = ["FAMILIES", "build_parser", "main", "parse_kv", "read_secret"]

#: Each family's ``register``, in the order ``zcell --help`` lists their commands.
FAMILIES: tuple[Callable[[Subcommands], None], ...] = (
    node.register,
    tasks.register,
    multi.register,
    beat.register,
    inspect.register,
    events.register,
    dashboard.register,
    clients.register,
    demo.register,
)


def _version() -> str:
    """The installed distribution's version (the package metadata, not a copy)."""
    try:
        return importlib.metadata.version("zcell")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def build_parser(
    families: Sequence[Callable[[Subcommands], None]] = FAMILIES,
) -> argparse.ArgumentParser:
    """The ``zcell`` argument parser: every subcommand the ``families`` register."""
    parser = argparse.ArgumentParser(
        prog="zcell",
        description="zcell: a brokerless actor mesh over ZeroMQ.",
        epilog="Start with `zcell demo`. Exit codes: 0 success, 1 remote error, timeout "
        "or unknown actor, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"zcell {_version()}")
    parser.add_argument(
        "-A", "--app", dest="global_app", metavar="APP",
        help="the app for inspect, control and events (Celery's `celery -A proj ...`)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in families:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zcell`` command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `worker --processes`
    try:
        code: int = args.run(args)
        return code
    except UsageError as exc:
        print(f"zcell {args.command}: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:  # `zcell node` (the clients report their own failures)
        print(f"zcell {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
