"""The ``zcell`` command.

``zcell node`` runs a node until SIGINT/SIGTERM; ``zcell demo`` runs the guided
tour; the other subcommands are one-shot clients: each starts a ``Node`` that
hosts nothing, joins the mesh, waits until it sees it, acts, prints and leaves.

A thin client of the public API: ``main(argv=None) -> int``. Exit codes: 0
success, 1 remote error, timeout, unknown actor or no mesh found, 2 usage error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # zcell is imported late: `zcell node` monkey-patches first
    from zcell import Node

__all__ = ["main", "build_parser", "parse_kv", "read_secret"]

#: Seconds a one-shot client waits to find the mesh (``--wait``).
DEFAULT_WAIT = 3.0
#: A one-shot client acts once membership and directory were quiet this long.
SETTLE = 0.2
LOGLEVELS = ("debug", "info", "warning", "error", "critical")

_client_names = itertools.count(1)


class UsageError(Exception):
    """Bad arguments: reported on stderr, exit code 2."""


class Failure(Exception):
    """The command ran but failed (no mesh, unknown actor...): exit code 1."""


# --------------------------------------------------------------------------- parser


def _common(parser: argparse.ArgumentParser) -> None:
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


def _client_options(parser: argparse.ArgumentParser, timeout: bool = True) -> None:
    _common(parser)
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


def _version() -> str:
    """The installed distribution's version (the package metadata, not a copy)."""
    try:
        return importlib.metadata.version("zcell")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``zcell`` argument parser (every subcommand and option)."""
    parser = argparse.ArgumentParser(
        prog="zcell",
        description="zcell: a brokerless actor mesh over ZeroMQ.",
        epilog="Start with `zcell demo`. Exit codes: 0 success, 1 remote error, timeout "
        "or unknown actor, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"zcell {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = sub.add_parser("node", help="run a node until SIGINT/SIGTERM")
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
    _common(node)

    status = sub.add_parser("status", help="the live members of the mesh")
    _client_options(status, timeout=False)

    actors = sub.add_parser("actors", help="the actor directory (optionally one type)")
    actors.add_argument("type", nargs="?", metavar="TYPE", help="actor type name")
    _client_options(actors, timeout=False)

    spawn = sub.add_parser("spawn", help="start an actor; prints its id")
    spawn.add_argument("type", metavar="TYPE", help="actor type name, e.g. examples.hello.Greeter")
    spawn.add_argument("kwargs", nargs="*", metavar="k=v", help="arguments of state.__init__")
    spawn.add_argument("--on", metavar="NODE", help="node name or id to place it on")
    _client_options(spawn)

    send = sub.add_parser("send", help="call a method of one actor; prints the return value")
    send.add_argument("id", metavar="ID", help="actor id")
    send.add_argument("method", metavar="METHOD")
    send.add_argument("kwargs", nargs="*", metavar="k=v", help="handler arguments")
    _client_options(send)

    throw = sub.add_parser("throw", help="call a method of one actor of a type (round-robin)")
    throw.add_argument("type", metavar="TYPE")
    throw.add_argument("method", metavar="METHOD")
    throw.add_argument("kwargs", nargs="*", metavar="k=v", help="handler arguments")
    _client_options(throw)

    scatter = sub.add_parser("scatter", help="call a method of every actor of a type")
    scatter.add_argument("type", metavar="TYPE")
    scatter.add_argument("method", metavar="METHOD")
    scatter.add_argument("kwargs", nargs="*", metavar="k=v", help="handler arguments")
    _client_options(scatter)

    kill = sub.add_parser("kill", help="stop an actor wherever it is")
    kill.add_argument("id", metavar="ID", help="actor id")
    _client_options(kill)

    demo = sub.add_parser("demo", help="start a small local mesh and show every primitive")
    demo.add_argument(
        "--nodes", type=int, default=3, metavar="N", help="node processes to start (2-9, default 3)"
    )
    _common(demo)
    demo.set_defaults(cluster=None)
    return parser


# --------------------------------------------------------------------------- helpers


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


def _jsonable(value: Any) -> Any:
    """Make a reply printable as JSON (proxies become {"id", "type", "node"})."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, BaseException):
        return _error_object(value)
    if hasattr(value, "node_id") and hasattr(value, "id") and hasattr(value, "name"):
        return {"id": value.id, "type": value.name, "node": value.node_id}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _error_object(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"error": type(exc).__name__}
    type_name = getattr(exc, "type_name", "")
    if type_name:  # a RemoteError: the remote type, message and traceback
        out["type"] = type_name
        out["message"] = getattr(exc, "remote_message", "")
        out["traceback"] = getattr(exc, "remote_traceback", "")
    else:
        out["message"] = str(exc)
    return out


def _show(value: Any, as_json: bool) -> None:
    if not as_json and isinstance(value, str):
        print(value)
    else:
        print(json.dumps(_jsonable(value), ensure_ascii=False))


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- zcell node


def cmd_node(args: argparse.Namespace) -> int:
    """Run a node until SIGINT/SIGTERM, then stop gracefully (exit 0)."""
    if not args.no_patch:
        # Before zcell or any user module is imported, so that their blocking I/O
        # (sockets, time.sleep, database clients) yields to other handlers.
        from gevent import monkey

        monkey.patch_all()
    logging.basicConfig(
        level=getattr(logging, args.loglevel.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # As `python -m` and celery do: modules in the current directory can be named.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if args.no_mdns and not args.peer:
        logging.getLogger("zcell").info("static discovery without --peer: waiting to be joined")
    for spec in args.actors:
        module = spec.partition(":")[0]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"cannot import -A {spec}: {exc}{_dotted_hint(module)}") from exc

    from zcell import Node, NodeStopped

    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if stop:  # a second Ctrl-C: the user does not want to wait
            print("zcell node: forced exit", file=sys.stderr, flush=True)
            os._exit(1)
        stop.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
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
        me = node.start().nodes()[0]
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    except NodeStopped as exc:  # refused (NameTaken) while starting, or just after
        raise Failure(str(getattr(node, "failure", None) or exc)) from exc
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
        _lines(json.dumps(banner))
    else:
        lines = [f"zcell node {node.name} (id {node.id}, pid {os.getpid()})"]
        lines.append(f"  cluster:   {node.cluster}")
        for kind, endpoint in node.endpoints.items():
            lines.append(f"  {kind + ':':<10} {endpoint}")
        lines.append(f"  actors:    {', '.join(me['types']) or '(none)'}")
        peers = f" + peers {', '.join(args.peer)}" if args.peer else ""
        lines.append(f"  discovery: {mode}{peers}")
        lines.append(f"  patched:   {'no' if args.no_patch else 'yes'}")
        lines.append("ready")
        _lines(*lines)
    try:
        while not stop and node.failure is None:
            time.sleep(0.1)
    finally:
        node.stop()
        if args.json:
            _lines(json.dumps({"event": "stopped", "name": node.name}))
        else:
            _lines(f"zcell node {node.name} stopped")
    if node.failure is not None:  # it stopped itself: e.g. its name is taken
        raise Failure(str(node.failure))
    return 0


def _dotted_hint(module: str) -> str:
    """``examples/hello.py`` -> a hint to name the module as Python does."""
    if not (module.endswith(".py") or os.sep in module or "/" in module):
        return ""
    dotted = module.removesuffix(".py").replace(os.sep, ".").replace("/", ".").strip(".")
    return f"; -A takes a module name, not a file: -A {dotted}"


def _lines(*lines: str) -> None:
    """Write whole lines in one write: the node's threads log to stderr meanwhile,
    and with unbuffered output (PYTHONUNBUFFERED) print() writes the newline on
    its own, so a reader of both streams could see a log line glued to ours."""
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


# --------------------------------------------------------------------------- clients


def _client_node(args: argparse.Namespace) -> Node:
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


def _join(node: Node, args: argparse.Namespace, settle: bool) -> None:
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


def _poll(check: Callable[[], bool], args: argparse.Namespace) -> bool:
    deadline = time.monotonic() + args.wait
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _others(node: Node) -> list[dict[str, Any]]:
    return [n for n in node.nodes() if not n.get("self")]


def _node_names(node: Node) -> dict[str, str]:
    return {n["id"]: n["name"] for n in node.nodes()}


def _actor_object(ref: Any, names: dict[str, str]) -> dict[str, str]:
    """An actor as ``spawn --json`` and ``actors --json`` print it (one shape for both;
    ``name`` repeats ``type``, the key ``spawn --json`` has always had)."""
    node = names.get(ref.node_id, ref.node_id)
    return {"id": ref.id, "type": ref.name, "name": ref.name, "node": node, "node_id": ref.node_id}


def cmd_status(node: Node, args: argparse.Namespace) -> int:
    _join(node, args, settle=True)
    members = sorted(_others(node), key=lambda n: n["name"])
    if args.json:
        keys = ("name", "id", "endpoints", "actors", "types", "uptime", "load")
        out = [
            dict({k: m.get(k) for k in keys}, endpoint=m["endpoints"].get("inbox")) for m in members
        ]
        print(json.dumps(out))
        return 0
    rows = [
        [
            m["name"],
            m["endpoints"].get("inbox", ""),
            str(m["actors"]),
            _duration(m["uptime"]),
            str(m["load"]),
            ", ".join(m["types"]) or "-",
        ]
        for m in members
    ]
    _table(rows, ["NAME", "ENDPOINT", "ACTORS", "UPTIME", "LOAD", "TYPES"])
    return 0


def cmd_actors(node: Node, args: argparse.Namespace) -> int:
    _join(node, args, settle=True)
    names = _node_names(node)
    refs = sorted(node.actors(args.type), key=lambda r: (r.name, names.get(r.node_id, ""), r.id))
    out = [_actor_object(r, names) for r in refs]
    if args.json:
        print(json.dumps(out))
    elif out:
        _table([[a["id"], a["type"], a["node"]] for a in out], ["ID", "TYPE", "NODE"])
    else:
        what = f"of type {args.type} " if args.type else ""
        print(f"no actors {what}in the mesh", file=sys.stderr)
    return 0


def cmd_spawn(node: Node, args: argparse.Namespace) -> int:
    _join(node, args, settle=True)  # settled: placement picks the least-loaded node

    def placeable() -> bool:
        members = _others(node)
        if args.on is not None:
            return any(args.on in (m["name"], m["id"]) for m in members)
        return any(args.type in m["types"] for m in members)

    _poll(placeable, args)  # if it never becomes true, spawn says why (NoNodeForType)
    ref = node.spawn(args.type, args.kw, on=args.on, timeout=args.timeout)
    if args.json:
        print(json.dumps(_actor_object(ref, _node_names(node))))
    else:
        print(ref.id)
    return 0


def _find_actor(node: Node, args: argparse.Namespace) -> Any:
    """The actor whose id is ``args.id`` or starts with it (the demo and reprs
    print 8-digit prefixes); an ambiguous prefix is a usage error."""
    from zcell import NoSuchActor

    _join(node, args, settle=False)
    if not _poll(lambda: bool(_matching(node, args.id)), args):
        raise NoSuchActor(f"no actor with id {args.id} in cluster {args.cluster!r}")
    found = _matching(node, args.id)
    if len(found) > 1:
        some = ", ".join(f"{r.id} ({r.name})" for r in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise UsageError(
            f"id prefix {args.id!r} is ambiguous: {len(found)} actors match ({some}{more}); "
            "give more digits"
        )
    return found[0]


def _matching(node: Node, prefix: str) -> list[Any]:
    """The actors whose id is ``prefix`` (just that one) or starts with it."""
    refs = [r for r in node.actors() if r.id.startswith(prefix)]
    exact = [r for r in refs if r.id == prefix]
    return exact or sorted(refs, key=lambda r: r.id)


def _wait_type(node: Node, args: argparse.Namespace, settle: bool) -> Any:
    from zcell import NoSuchActor

    _join(node, args, settle=settle)
    if not _poll(lambda: bool(node.actors(args.type)), args):
        from zcell.errors import did_you_mean

        known = {r.name for r in node.actors()}.union(*(n["types"] for n in node.nodes()))
        raise NoSuchActor(
            f"no actor of type {args.type} in cluster {args.cluster!r}"
            f"{did_you_mean(args.type, known)}; spawn one with `zcell spawn {args.type}`"
        )
    return node.actors(args.type)[0]


def cmd_send(node: Node, args: argparse.Namespace) -> int:
    ref = _find_actor(node, args)
    _show(ref.send(args.method, args.kw, timeout=args.timeout), args.json)
    return 0


def cmd_throw(node: Node, args: argparse.Namespace) -> int:
    ref = _wait_type(node, args, settle=False)
    _show(ref.throw(args.method, args.kw, timeout=args.timeout), args.json)
    return 0


def cmd_scatter(node: Node, args: argparse.Namespace) -> int:
    ref = _wait_type(node, args, settle=True)  # settled: every actor of the type is known
    replies = ref.scatter(args.method, args.kw, timeout=args.timeout, propagate=False)
    from zcell import ZcellError

    failed = False
    collected = []
    for reply in replies:
        if isinstance(reply, ZcellError):
            failed = True
            if not args.json:
                print(f"error: {_short(reply)}", file=sys.stderr)
        elif not args.json:
            _show(reply, False)
        collected.append(reply)
    if args.json:
        print(json.dumps(_jsonable(collected), ensure_ascii=False))
    return 1 if failed else 0


def cmd_kill(node: Node, args: argparse.Namespace) -> int:
    ref = _find_actor(node, args)
    node.kill(ref, timeout=args.timeout)
    if args.json:
        print(json.dumps({"killed": ref.id, "type": ref.name}))
    else:
        print(f"killed {ref.id} ({ref.name})")
    return 0


def _short(exc: BaseException) -> str:
    if isinstance(exc, Failure):
        return str(exc)
    type_name = getattr(exc, "type_name", "")
    if type_name:
        return f"{type_name}: {getattr(exc, 'remote_message', '')}"
    return f"{type(exc).__name__}: {exc}"


CLIENTS: dict[str, Callable[[Node, argparse.Namespace], int]] = {
    "status": cmd_status,
    "actors": cmd_actors,
    "spawn": cmd_spawn,
    "send": cmd_send,
    "throw": cmd_throw,
    "scatter": cmd_scatter,
    "kill": cmd_kill,
}


def _run_client(args: argparse.Namespace) -> int:
    from zcell import ZcellError

    args.kw = parse_kv(getattr(args, "kwargs", []))  # usage errors before joining
    node = _client_node(args)
    try:
        return CLIENTS[args.command](node, args)
    except (ZcellError, Failure) as exc:
        if args.json:
            print(json.dumps(_error_object(exc)))
        else:
            print(f"zcell {args.command}: {_short(exc)}", file=sys.stderr)
            remote_tb = getattr(exc, "remote_traceback", "")
            if remote_tb:
                print("remote traceback:\n" + remote_tb.rstrip(), file=sys.stderr)
        return 1
    finally:
        node.stop(timeout=1.0)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zcell`` command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "node":
            return cmd_node(args)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        return _run_client(args)
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
