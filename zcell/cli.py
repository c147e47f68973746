"""The ``zcell`` command: ``zcell node`` runs a node until SIGINT/SIGTERM.

A thin client of the public API: ``main(argv=None) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="zcell", help="mesh name (default: zcell)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: LAN)")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="tcp://HOST:PORT",
        help="inbox endpoint of a node to join (repeatable)",
    )
    parser.add_argument("--no-mdns", action="store_true", help="static discovery: no multicast")
    parser.add_argument("--secret-file", metavar="F", help="file holding the cluster secret")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zcell", description="A brokerless actor mesh.")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run a node until SIGINT/SIGTERM")
    node.add_argument(
        "-A",
        "--actors",
        action="append",
        default=[],
        metavar="MODULE",
        help="module (or module:Class) whose actors this node hosts",
    )
    node.add_argument("--name", help="node name (default: <hostname>-<pid>)")
    node.add_argument("--port", type=int, default=0, help="inbox port (default: random)")
    node.add_argument("--concurrency", type=int, default=1000)
    node.add_argument("--heartbeat", type=float, default=1.0, help=argparse.SUPPRESS)
    node.add_argument("--loglevel", default="info")
    node.add_argument(
        "--no-patch",
        action="store_true",
        help="do not gevent-monkey-patch (handlers must not block)",
    )
    _common(node)
    return parser


def read_secret(path: str | None) -> str | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().strip() or None


def cmd_node(args: argparse.Namespace) -> int:
    if not args.no_patch:
        # Before any user module is imported, so their blocking I/O cooperates.
        from gevent import monkey

        monkey.patch_all()
    logging.basicConfig(
        level=getattr(logging, str(args.loglevel).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from zcell import Node

    stop = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
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
    ).start()
    types = sorted(n for n in node.nodes()[0]["types"])
    print(f"zcell node {node.name} (id {node.id})", flush=True)
    print(f"  cluster:   {node.cluster}")
    for kind, endpoint in node.endpoints.items():
        print(f"  {kind + ':':<10} {endpoint}")
    print(f"  actors:    {', '.join(types) or '(none)'}")
    mode = "static" if args.no_mdns else "mdns"
    print(f"  discovery: {mode}" + (f" + peers {', '.join(args.peer)}" if args.peer else ""))
    print(f"  patched:   {'no' if args.no_patch else 'yes'}")
    print("ready", flush=True)
    try:
        while not stop:
            time.sleep(0.1)
    finally:
        node.stop()
        print(f"zcell node {node.name} stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "node":
        return cmd_node(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
