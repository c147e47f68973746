"""What every command family shares: how a subcommand is declared, the mesh
options, the secret file, ``k=v`` arguments, output, and the one-shot client
(a ``Node`` that hosts nothing, joins, acts, prints and leaves).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # zcell is imported late: `zcell node` monkey-patches first
    from zcell import Node

    #: What ``add_subparsers()`` returns: where a family adds its subcommands.
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

#: Seconds a one-shot client waits to find the mesh (``--wait``).
DEFAULT_WAIT = 3.0
#: A one-shot client acts once membership and directory were quiet this long.
SETTLE = 0.2

#: A subcommand's body: the parsed arguments in, the exit code out.
Command = Callable[[argparse.Namespace], int]
#: A one-shot client's body: it gets the started client node too.
ClientCommand = Callable[["Node", argparse.Namespace], int]

_client_names = itertools.count(1)


class UsageError(Exception):
    """Bad arguments: reported on stderr, exit code 2."""


class Failure(Exception):
    """The command ran but failed (no mesh, unknown actor...): exit code 1."""


# --------------------------------------------------------------------------- declaring


def add_command(
    sub: Subcommands, name: str, summary: str, examples: Sequence[str], run: Command
) -> argparse.ArgumentParser:
    """Add ``zcell NAME``: one line for ``zcell --help`` and its own ``--help``, the
    examples under it (shown as typed), and the function that runs it."""
    lines = "\n".join(f"  {example}" for example in examples)
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"examples:\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def mesh_options(parser: argparse.ArgumentParser) -> None:
    """The options that say which mesh to be part of, and ``--json``."""
    group = parser.add_argument_group("mesh")
    group.add_argument("--cluster", default="zcell", help="mesh name (default: zcell)")
    group.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind, and where mDNS runs (default 127.0.0.1: this machine; "
        "0.0.0.0: the LAN)",
    )
    group.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="tcp://HOST:PORT",
        help="inbox endpoint of a node to join (repeatable; works with or without mDNS)",
    )
    group.add_argument(
        "--no-mdns", action="store_true", help="static discovery: no multicast, --peer only"
    )
    group.add_argument(
        "--secret-file",
        metavar="FILE",
        help="file holding the cluster secret (surrounding whitespace ignored)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def client_options(parser: argparse.ArgumentParser, timeout: bool = True) -> None:
    """A one-shot client's options: the mesh, ``--wait`` and (to wait for a reply)
    ``--timeout``."""
    mesh_options(parser)
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="S",
        help=f"seconds to wait for the mesh to be found (default {DEFAULT_WAIT:g})",
    )
    if timeout:
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            metavar="S",
            help="bound on the wait for the reply (default 5)",
        )


# --------------------------------------------------------------------------- input


def read_secret(path: str | None) -> str | None:
    """The secret in ``path`` without surrounding whitespace (None: no file, or empty)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as exc:
        raise UsageError(f"cannot read --secret-file: {exc}") from exc


def parse_kv(items: Sequence[str]) -> dict[str, Any]:
    """``["n=5", "msg=hi", "tags=[1,2]"]`` -> ``{"n": 5, "msg": "hi", "tags": [1, 2]}``.

    A value is parsed as JSON when it can be, else taken as a string (quote it as
    JSON, ``'x="5"'``, to pass the string ``"5"``).
    """
    kwargs: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.isidentifier():
            raise UsageError(f"expected key=value, got {item!r}")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    return kwargs


# --------------------------------------------------------------------------- output


def jsonable(value: Any) -> Any:
    """Make a reply printable as JSON (proxies become {"id", "type", "node"})."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, BaseException):
        return error_object(value)
    if hasattr(value, "node_id") and hasattr(value, "id") and hasattr(value, "name"):
        return {"id": value.id, "type": value.name, "node": value.node_id}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def error_object(exc: BaseException) -> dict[str, Any]:
    """An error as ``--json`` prints it; a remote one with its type and traceback."""
    out: dict[str, Any] = {"error": type(exc).__name__}
    type_name = getattr(exc, "type_name", "")
    if type_name:  # a RemoteError: the remote type, message and traceback
        out["type"] = type_name
        out["message"] = getattr(exc, "remote_message", "")
        out["traceback"] = getattr(exc, "remote_traceback", "")
    else:
        out["message"] = str(exc)
    return out


def short(exc: BaseException) -> str:
    """An error in one line, as stderr shows it (the remote type for a remote one)."""
    if isinstance(exc, Failure):
        return str(exc)
    type_name = getattr(exc, "type_name", "")
    if type_name:
        return f"{type_name}: {getattr(exc, 'remote_message', '')}"
    return f"{type(exc).__name__}: {exc}"


def show(value: Any, as_json: bool) -> None:
    """Print a reply: a string as it is, anything else (or with ``--json``) as JSON."""
    if not as_json and isinstance(value, str):
        print(value)
    else:
        print(json.dumps(jsonable(value), ensure_ascii=False))


def table(rows: list[list[str]], header: list[str]) -> None:
    """Print left-aligned columns, as wide as their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def lines(*text: str) -> None:
    """Write whole lines in one write: the node's threads log to stderr meanwhile,
    and with unbuffered output (PYTHONUNBUFFERED) print() writes the newline on
    its own, so a reader of both streams could see a log line glued to ours."""
    sys.stdout.write("".join(line + "\n" for line in text))
    sys.stdout.flush()


# --------------------------------------------------------------------------- one-shot clients


def client(command: ClientCommand) -> Command:
    """A subcommand body that runs ``command`` on a client node, which it stops after."""
    return lambda args: run_client(command, args)


def run_client(command: ClientCommand, args: argparse.Namespace) -> int:
    """Start the client node, run ``command``, report a zcell error (exit code 1)."""
    from zcell import ZcellError

    args.kw = parse_kv(getattr(args, "kwargs", []))  # usage errors before joining
    node = client_node(args)
    try:
        return command(node, args)
    except (ZcellError, Failure) as exc:
        if args.json:
            print(json.dumps(error_object(exc)))
        else:
            print(f"zcell {args.command}: {short(exc)}", file=sys.stderr)
            remote_tb = getattr(exc, "remote_traceback", "")
            if remote_tb:
                print("remote traceback:\n" + remote_tb.rstrip(), file=sys.stderr)
        return 1
    finally:
        node.stop(timeout=1.0)


def client_node(args: argparse.Namespace) -> Node:
    """A started node that hosts nothing, named after the command and this process."""
    if args.no_mdns and not args.peer:
        raise UsageError("--no-mdns needs at least one --peer tcp://HOST:PORT to join")
    if args.wait < 0:
        raise UsageError("--wait must not be negative")
    from zcell import Node

    n = next(_client_names)
    name = f"zcell-{args.command}-{socket.gethostname()}-{os.getpid()}" + (f"-{n}" if n > 1 else "")
    return Node(
        name,
        cluster=args.cluster,
        host=args.host,
        peers=args.peer,
        discovery="static" if args.no_mdns else "mdns",
        secret=read_secret(args.secret_file),
    ).start()


def join(node: Node, args: argparse.Namespace, settle: bool) -> None:
    """Wait until the mesh is found (another member) and, with ``settle``, until
    membership and directory have been quiet for ``SETTLE`` seconds."""
    deadline = time.monotonic() + args.wait
    while len(node.nodes()) < 2:
        if time.monotonic() >= deadline:
            raise Failure(_not_found(node, args))
        time.sleep(0.01)
    if not settle:
        return

    def view() -> Any:
        return sorted((n["id"], n["actors"], tuple(n["types"])) for n in node.nodes())

    # Quiet for SETTLE, but never longer than the --wait budget (at least SETTLE more).
    end = max(deadline, time.monotonic() + SETTLE)
    last, quiet_since = view(), time.monotonic()
    while time.monotonic() - quiet_since < SETTLE and time.monotonic() < end:
        time.sleep(0.01)
        now = view()
        if now != last:
            last, quiet_since = now, time.monotonic()


def _not_found(node: Node, args: argparse.Namespace) -> str:
    """Why no member was found, as far as mDNS tells: a secret missing, extra or wrong."""
    stats = node.statistics()
    cluster, secret = args.cluster, node.secret is not None
    how = "--secret-file FILE or the ZCELL_SECRET environment variable"
    if stats["mdns_ads_other_secret"] and not secret:
        return (
            f"cluster {cluster!r} uses a secret (its nodes' mDNS ads say so) and this client "
            f"has none: pass the cluster's secret with {how}"
        )
    if stats["mdns_ads_other_secret"]:
        return (
            f"the nodes of cluster {cluster!r} use no secret (their mDNS ads say so) but this "
            "client has one: drop --secret-file and unset ZCELL_SECRET"
        )
    if stats["mdns_ads"] and secret:
        return (
            f"nodes of cluster {cluster!r} were found by mDNS but none let this client in "
            f"within {args.wait:g}s: its secret is probably not the cluster's (check {how}), "
            "or they cannot be reached from here"
        )
    where = f"peers {', '.join(args.peer)}" if args.no_mdns else "mDNS on " + args.host
    return (
        f"no zcell node found in cluster {cluster!r} within {args.wait:g}s "
        f"({where}); start one with `zcell node -A MODULE`, or pass --peer / --wait"
    )


def poll(check: Callable[[], bool], args: argparse.Namespace) -> bool:
    """Whether ``check()`` became true within ``--wait`` seconds."""
    deadline = time.monotonic() + args.wait
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
