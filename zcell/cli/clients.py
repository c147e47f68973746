"""The one-shot clients of actors: ``zcell status``, ``actors``, ``spawn``, ``send``,
``throw``, ``scatter`` and ``kill``. Each joins the mesh as a node that hosts
nothing, waits until it sees it, acts, prints and leaves (``common.run_client``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .common import (
    UsageError,
    add_command,
    client,
    client_options,
    join,
    jsonable,
    poll,
    short,
    show,
    table,
)

if TYPE_CHECKING:
    from zcell import ActorProxy, Node

    from .common import Subcommands


def register(sub: Subcommands) -> None:
    """Add the clients' subcommands, in the order ``zcell --help`` lists them."""
    status = add_command(
        sub,
        "status",
        "the live members of the mesh",
        ["zcell status", "zcell status --cluster prod --host 0.0.0.0 --json"],
        client(cmd_status),
    )
    client_options(status, timeout=False)

    actors = add_command(
        sub,
        "actors",
        "the actor directory (optionally one type)",
        ["zcell actors", "zcell actors examples.hello.Greeter --json"],
        client(cmd_actors),
    )
    actors.add_argument("type", nargs="?", metavar="TYPE", help="actor type name")
    client_options(actors, timeout=False)

    spawn = add_command(
        sub,
        "spawn",
        "start an actor; prints its id",
        [
            "zcell spawn examples.hello.Greeter greeting=Salut",
            "ID=$(zcell spawn examples.hello.Greeter --on api-1)",
        ],
        client(cmd_spawn),
    )
    spawn.add_argument("type", metavar="TYPE", help="actor type name, e.g. examples.hello.Greeter")
    spawn.add_argument("kwargs", nargs="*", metavar="k=v", help="arguments of state.__init__")
    spawn.add_argument("--on", metavar="NODE", help="node name or id to place it on")
    client_options(spawn)

    send = add_command(
        sub,
        "send",
        "call a method of one actor; prints the return value",
        ["zcell send 3f9c2a7e greet who=shell", "zcell send $ID greet who='\"007\"' --json"],
        client(cmd_send),
    )
    _actor_id(send)
    _method_arguments(send)

    for name, summary, example, command in [
        (
            "throw",
            "call a method of one actor of a type (round-robin)",
            "zcell throw examples.hello.Greeter greet who=anyone",
            cmd_throw,
        ),
        (
            "scatter",
            "call a method of every actor of a type",
            "zcell scatter examples.hello.Greeter greet who=everyone --json",
            cmd_scatter,
        ),
    ]:
        by_type = add_command(sub, name, summary, [example], client(command))
        by_type.add_argument("type", metavar="TYPE", help="actor type name")
        _method_arguments(by_type)

    kill = add_command(
        sub,
        "kill",
        "stop an actor wherever it is",
        ["zcell kill 3f9c2a7e"],
        client(cmd_kill),
    )
    _actor_id(kill)
    client_options(kill)


def _actor_id(parser: argparse.ArgumentParser) -> None:
    """``ID``: ``send`` and ``kill`` take an id or a unique prefix (``_find_actor``)."""
    parser.add_argument("id", metavar="ID", help="actor id, or a unique prefix of one")


def _method_arguments(parser: argparse.ArgumentParser) -> None:
    """``METHOD [k=v ...]`` and the client options, as ``send``, ``throw`` and
    ``scatter`` take them after the actor (or type) they name."""
    parser.add_argument("method", metavar="METHOD")
    parser.add_argument("kwargs", nargs="*", metavar="k=v", help="handler arguments")
    client_options(parser)


# --------------------------------------------------------------------------- the mesh


def cmd_status(node: Node, args: argparse.Namespace) -> int:
    """One line per member (the client itself left out)."""
    join(node, args, settle=True)
    members = sorted(_others(node), key=lambda n: n["name"])
    leader = _beat_leader(node)
    if args.json:
        keys = ("name", "id", "endpoints", "actors", "types", "uptime", "load")
        out = [
            dict(
                {k: m.get(k) for k in keys},
                endpoint=m["endpoints"].get("inbox"),
                beat_leader=m["name"] == leader,
            )
            for m in members
        ]
        print(json.dumps(out))
        return 0
    rows = [
        [
            m["name"] + (" (beat leader)" if m["name"] == leader else ""),
            m["endpoints"].get("inbox", ""),
            str(m["actors"]),
            _duration(m["uptime"]),
            str(m["load"]),
            ", ".join(m["types"]) or "-",
        ]
        for m in members
    ]
    table(rows, ["NAME", "ENDPOINT", "ACTORS", "UPTIME", "LOAD", "TYPES"])
    return 0


def _beat_leader(node: Node) -> str | None:
    """The name of the beat candidate that leads (sends), if one does (docs/beat.md)."""
    from zcell import ZcellError

    for ref in node.actors("zcell.beat.candidate"):
        try:
            status = ref.send("status", {}, timeout=2.0)
        except ZcellError:
            continue
        if isinstance(status, dict) and status.get("leading"):
            return str(status.get("node"))
    return None


def cmd_actors(node: Node, args: argparse.Namespace) -> int:
    """The actor directory, sorted by type, node and id."""
    join(node, args, settle=True)
    names = _node_names(node)
    refs = sorted(node.actors(args.type), key=lambda r: (r.name, names.get(r.node_id, ""), r.id))
    out = [_actor_object(r, names) for r in refs]
    if args.json:
        print(json.dumps(out))
    elif out:
        table([[a["id"], a["type"], a["node"]] for a in out], ["ID", "TYPE", "NODE"])
    else:
        what = f"of type {args.type} " if args.type else ""
        print(f"no actors {what}in the mesh", file=sys.stderr)
    return 0


def _others(node: Node) -> list[dict[str, Any]]:
    return [n for n in node.nodes() if not n.get("self")]


def _node_names(node: Node) -> dict[str, str]:
    return {n["id"]: n["name"] for n in node.nodes()}


def _actor_object(ref: ActorProxy, names: dict[str, str]) -> dict[str, str]:
    """An actor as ``spawn --json`` and ``actors --json`` print it (one shape for both;
    ``name`` repeats ``type``, the key ``spawn --json`` has always had)."""
    node = names.get(ref.node_id, ref.node_id)
    return {"id": ref.id, "type": ref.name, "name": ref.name, "node": node, "node_id": ref.node_id}


def _duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# --------------------------------------------------------------------------- actors


def cmd_spawn(node: Node, args: argparse.Namespace) -> int:
    """Start an actor (on ``--on``, else where placement puts it); print its id."""
    join(node, args, settle=True)  # settled: placement picks the least-loaded node

    def placeable() -> bool:
        members = _others(node)
        if args.on is not None:
            return any(args.on in (m["name"], m["id"]) for m in members)
        return any(args.type in m["types"] for m in members)

    poll(placeable, args)  # if it never becomes true, spawn says why (NoNodeForType)
    ref = node.spawn(args.type, args.kw, on=args.on, timeout=args.timeout)
    if args.json:
        print(json.dumps(_actor_object(ref, _node_names(node))))
    else:
        print(ref.id)
    return 0


def _find_actor(node: Node, args: argparse.Namespace) -> ActorProxy:
    """The actor whose id is ``args.id`` or starts with it (the demo and reprs
    print 8-digit prefixes); an ambiguous prefix is a usage error."""
    from zcell import NoSuchActor

    join(node, args, settle=False)
    if not poll(lambda: bool(_matching(node, args.id)), args):
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


def _matching(node: Node, prefix: str) -> list[ActorProxy]:
    """The actors whose id is ``prefix`` (just that one) or starts with it."""
    refs = [r for r in node.actors() if r.id.startswith(prefix)]
    exact = [r for r in refs if r.id == prefix]
    return exact or sorted(refs, key=lambda r: r.id)


def _wait_type(node: Node, args: argparse.Namespace, settle: bool) -> ActorProxy:
    """An actor of type ``args.type`` once one is known; else NoSuchActor with a hint."""
    from zcell import NoSuchActor

    join(node, args, settle=settle)
    if not poll(lambda: bool(node.actors(args.type)), args):
        from zcell.errors import did_you_mean

        known = {r.name for r in node.actors()}.union(*(n["types"] for n in node.nodes()))
        raise NoSuchActor(
            f"no actor of type {args.type} in cluster {args.cluster!r}"
            f"{did_you_mean(args.type, known)}; spawn one with `zcell spawn {args.type}`"
        )
    return node.actors(args.type)[0]


def cmd_send(node: Node, args: argparse.Namespace) -> int:
    """Call one actor by id (or prefix); print the return value."""
    ref = _find_actor(node, args)
    show(ref.send(args.method, args.kw, timeout=args.timeout), args.json)
    return 0


def cmd_throw(node: Node, args: argparse.Namespace) -> int:
    """Call one actor of a type; print the return value."""
    ref = _wait_type(node, args, settle=False)
    show(ref.throw(args.method, args.kw, timeout=args.timeout), args.json)
    return 0


def cmd_scatter(node: Node, args: argparse.Namespace) -> int:
    """Call every actor of a type; print each reply as it arrives (exit 1 if one failed)."""
    ref = _wait_type(node, args, settle=True)  # settled: every actor of the type is known
    replies = ref.scatter(args.method, args.kw, timeout=args.timeout, propagate=False)
    from zcell import ZcellError

    failed = False
    collected = []
    for reply in replies:
        if isinstance(reply, ZcellError):
            failed = True
            if not args.json:
                print(f"error: {short(reply)}", file=sys.stderr)
        elif not args.json:
            show(reply, False)
        collected.append(reply)
    if args.json:
        print(json.dumps(jsonable(collected), ensure_ascii=False))
    return 1 if failed else 0


def cmd_kill(node: Node, args: argparse.Namespace) -> int:
    """Stop one actor by id (or prefix), wherever it runs."""
    ref = _find_actor(node, args)
    node.kill(ref, timeout=args.timeout)
    if args.json:
        print(json.dumps({"killed": ref.id, "type": ref.name}))
    else:
        print(f"killed {ref.id} ({ref.name})")
    return 0
