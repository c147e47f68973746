"""``zcell inspect ...`` and ``zcell control ...``: ask the mesh's nodes, merge replies.

One-shot clients (``common.run_client``) of the public control API: a
`zcell.monitor.Control` on the client node asks every other member (with
``-A proj``, whose mesh settings it uses, or for a task operation: the workers). Replies are
printed per node; a node that did not answer in time is named and makes the
exit code 1 (docs/monitoring.md).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import (
    UsageError,
    add_command,
    client_options,
    join,
    jsonable,
    lines,
    run_client,
)

if TYPE_CHECKING:
    from zcell import Node
    from zcell.monitor import Control, Replies

    from .common import ClientCommand, Command, Subcommands

__all__ = [
    "CONTROL_OPS",
    "INSPECT_OPS",
    "app_client",
    "control_for",
    "mesh_options_with_app",
    "register",
]

#: Actor types of queue consumers: the nodes hosting one are workers.
QUEUE_TYPES = "zcell.queue."
#: Seconds to wait for the nodes' replies (Celery's default).
DEFAULT_TIMEOUT = 1.0
#: ``zcell inspect`` operations.
INSPECT_OPS = (
    "ping", "active", "scheduled", "reserved", "revoked", "registered", "stats",
    "active_queues", "query_task", "actors",
)  # fmt: skip
#: ``zcell control`` operations -> how their positional words become arguments.
CONTROL_OPS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "enable_events": lambda w: _none(w),
    "disable_events": lambda w: _none(w),
    "shutdown": lambda w: _none(w),
    "rate_limit": lambda w: {"task": _word(w, 0, "TASK"), "rate": _rate(_word(w, 1, "RATE"))},
    "time_limit": lambda w: {
        "task": _word(w, 0, "TASK"),
        "soft": _seconds(_word(w, 1, "SOFT")),
        "hard": _seconds(w[2]) if len(w) > 2 else None,
    },
    "pool_grow": lambda w: {"n": _count(w)},
    "pool_shrink": lambda w: {"n": _count(w)},
    "add_consumer": lambda w: {"queue": _word(w, 0, "QUEUE")},
    "cancel_consumer": lambda w: {"queue": _word(w, 0, "QUEUE")},
}


def register(sub: Subcommands) -> None:
    """Add ``zcell inspect`` and ``zcell control``."""
    inspect = add_command(
        sub,
        "inspect",
        "ask the nodes what they run, hold, know and count; replies per node",
        [
            "zcell inspect active",
            "zcell -A proj inspect registered --destination w1,w2 --json",
            "zcell inspect query_task 4c6f0a52-... --timeout 2",
        ],
        app_client(cmd_inspect),
    )
    inspect.add_argument("op", choices=INSPECT_OPS, metavar="OP", help=", ".join(INSPECT_OPS))
    inspect.add_argument("ids", nargs="*", metavar="ID", help="task ids (query_task)")
    _common(inspect)

    control = add_command(
        sub,
        "control",
        "steer the nodes: events, rate and time limits, pool size, queues, shutdown",
        [
            "zcell control enable_events",
            "zcell -A proj control rate_limit proj.tasks.add 10/s",
            "zcell control pool_grow 2 --destination w1",
            "zcell control add_consumer hipri",
        ],
        app_client(cmd_control),
    )
    control.add_argument("op", choices=list(CONTROL_OPS), metavar="OP", help=", ".join(CONTROL_OPS))
    control.add_argument("words", nargs="*", metavar="ARG", help="the operation's arguments")
    _common(control)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--destination", metavar="N1,N2", help="node names to ask")
    mesh_options_with_app(parser)
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the replies (default {DEFAULT_TIMEOUT:g})",
    )


def mesh_options_with_app(parser: argparse.ArgumentParser) -> None:
    """A one-shot client's options plus ``-A``: whose mesh settings fill in the
    options not given (as ``zcell worker -A`` does)."""
    parser.add_argument("-A", "--app", metavar="APP", help="the app (module or module:attr)")
    client_options(parser, timeout=False)
    parser.set_defaults(cluster=None, host=None)


def app_client(command: ClientCommand) -> Command:
    """``common.client`` for a command that takes ``-A``: the app's mesh settings
    fill in the options not given, then the client node runs ``command``."""

    def run(args: argparse.Namespace) -> int:
        spec = args.app or getattr(args, "global_app", None)
        conf: Any = None
        if spec:
            from .tasks import find_app

            conf = find_app(spec).conf
        args.cluster = args.cluster or (conf.cluster if conf else "zcell")
        args.host = args.host or (conf.host if conf else "127.0.0.1")
        if conf is not None:
            args.peer = list(args.peer) + [p for p in conf.peers if p not in args.peer]
            args.no_mdns = args.no_mdns or conf.discovery == "static"
        return run_client(command, args)

    return run


def control_for(node: Node, args: argparse.Namespace) -> tuple[Control, list[str]]:
    """The control client and the nodes to ask: ``--destination``, else every
    other member; with ``-A``, or for an operation only workers answer, every worker."""
    from zcell.monitor import Control
    from zcell.monitor.service import ACTOR_OPS

    wanted = [d.strip() for d in (args.destination or "").split(",") if d.strip()]
    if not wanted:
        others = [m for m in node.nodes() if not m["self"]]
        if args.app or getattr(args, "global_app", None) or args.op not in ACTOR_OPS:
            others = [m for m in others if any(t.startswith(QUEUE_TYPES) for t in m["types"])]
        wanted = [m["name"] for m in others]
    return Control(node), wanted


def cmd_inspect(node: Node, args: argparse.Namespace) -> int:
    """Run an inspect operation on the nodes; print each node's reply."""
    join(node, args, settle=True)
    control, destination = control_for(node, args)
    arguments = {"ids": args.ids} if args.op == "query_task" else {}
    replies = control.broadcast(args.op, arguments, destination, True, args.timeout)
    assert replies is not None
    return _report(replies, args)


def cmd_control(node: Node, args: argparse.Namespace) -> int:
    """Run a control operation on the nodes; print each node's reply."""
    arguments = CONTROL_OPS[args.op](args.words)  # usage errors before joining
    join(node, args, settle=True)
    control, destination = control_for(node, args)
    replies = control.broadcast(args.op, arguments, destination, True, args.timeout)
    assert replies is not None
    return _report(replies, args)


def _report(replies: Replies, args: argparse.Namespace) -> int:
    """Print the replies (``--json``: one object); 1 when a node is missing or failed."""
    failed = bool(replies.missing or replies.errors) or not (replies or replies.errors)
    if args.json:
        out = {"replies": jsonable(dict(replies)), "missing": replies.missing}
        out["errors"] = replies.errors
        print(json.dumps(out, ensure_ascii=False))
        return 1 if failed else 0
    text: list[str] = []
    for name in sorted(replies):
        text.append(f"-> {name}: OK")
        text.extend(f"    {line}" for line in _lines(replies[name]))
    for name, error in sorted(replies.errors.items()):
        text.append(f"-> {name}: ERROR {error}")
    for name in replies.missing:
        text.append(f"-> {name}: no reply within {args.timeout:g}s")
    if not (replies or replies.errors or replies.missing):
        text.append("no nodes to ask (start a worker, or check --destination)")
    lines(*text)
    return 1 if failed else 0


def _lines(reply: Any) -> list[str]:
    """A reply as lines: one per list item or dict key (each as compact JSON)."""
    if isinstance(reply, list):
        return [f"* {json.dumps(jsonable(item), ensure_ascii=False)}" for item in reply] or [
            "- empty -"
        ]
    if isinstance(reply, dict):
        return [f"{k}: {json.dumps(jsonable(v), ensure_ascii=False)}" for k, v in reply.items()]
    return [json.dumps(jsonable(reply), ensure_ascii=False)]


# --------------------------------------------------------------------------- arguments


def _none(words: list[str]) -> dict[str, Any]:
    if words:
        raise UsageError(f"this operation takes no arguments, not {' '.join(words)!r}")
    return {}


def _word(words: list[str], i: int, what: str) -> str:
    if len(words) <= i:
        raise UsageError(f"missing {what}")
    return words[i]


def _rate(text: str) -> str | None:
    return None if text.lower() in ("none", "0", "") else text


def _seconds(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise UsageError(f"time limits are seconds, not {text!r}") from exc


def _count(words: list[str]) -> int:
    text = words[0] if words else "1"
    if not text.isdigit():
        raise UsageError(f"N must be a whole number, not {text!r}")
    return int(text)
