"""What a large directory costs: joins, spawn placement and throws with N actors.

``python -m bench.directory [--actors 50000] [--joins 3] [--json]``

One node hosts N actors; two more join, then a fourth joins and leaves
``--joins`` times. It prints how long each joiner took to see every actor and the
CPU seconds the process (all nodes) spent meanwhile, then the mean time of a
spawn placed by the mesh and of a throw, both from a program thread. All nodes
share one process on purpose: it measures the directory's work (placement,
round-robin, snapshots), not the transport. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import uuid

from zcell import Actor, Node
from zcell.actors.actor import type_name_of


class Idle(Actor):
    name = "bench.directory.Idle"  # also when run as __main__

    class state(Actor.state):
        def ping(self) -> str:
            return self.actor.id


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def host_many(node: Node, actor: type[Actor], n: int) -> None:
    """Start ``n`` actors of type ``actor`` in the node's loop, 2000 at a time (the
    API would spend minutes in round trips). tests/test_reliability_resources.py
    uses it too."""
    spawn, name = node.hosting._spawn, type_name_of(actor)
    for start in range(0, n, 2000):
        count = min(2000, n - start)
        node._run(
            lambda c=count: [
                spawn({"type": name, "id": uuid.uuid4().hex}, node.id) for _ in range(c)
            ]
        )


def _join(name: str, seed: str, members: int, actors: int) -> tuple[Node, float, float]:
    """Start a node, wait until it sees every actor; (node, seconds, CPU seconds)."""
    start, cpu = time.monotonic(), _cpu()
    node = Node(name, discovery="static", actors=[Idle], peers=[seed]).start()
    node.wait_for(nodes=members, timeout=60)
    deadline = time.monotonic() + 60
    while len(node.directory.actors) < actors and time.monotonic() < deadline:
        time.sleep(0.002)
    return node, time.monotonic() - start, _cpu() - cpu


def run(actors: int, joins: int) -> dict[str, object]:
    big = Node("big", discovery="static", actors=[Idle]).start()
    nodes = [big]
    try:
        host_many(big, Idle, actors)
        seed = big.endpoints["inbox"]
        report: dict[str, object] = {"actors": actors, "joins": []}
        for name in ("b", "c"):
            node, took, cpu = _join(name, seed, len(nodes) + 1, actors)
            nodes.append(node)
            report["joins"].append({"node": name, "seconds": took, "cpu": cpu})  # type: ignore[attr-defined]
        for k in range(joins):
            node, took, cpu = _join(f"d{k}", seed, 4, actors)
            report["joins"].append({"node": node.name, "seconds": took, "cpu": cpu})  # type: ignore[attr-defined]
            node.stop(timeout=0.5)
            time.sleep(0.5)
        b = nodes[1]
        start = time.monotonic()
        for _ in range(100):
            b.spawn(Idle)
        report["spawn_ms"] = (time.monotonic() - start) * 10
        ref = b.lookup(next(iter(big.hosting.actors)))
        start = time.monotonic()
        for _ in range(200):
            ref.throw.ping()
        report["throw_ms"] = (time.monotonic() - start) * 5
        return report
    finally:
        for node in reversed(nodes):
            node.stop(timeout=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.directory", description=__doc__)
    parser.add_argument("--actors", type=int, default=50000)
    parser.add_argument("--joins", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.actors, args.joins)
    if args.json:
        print(json.dumps(report))
        return 0
    for join in report["joins"]:  # type: ignore[attr-defined]
        print(f"join {join['node']}: sees all in {join['seconds']:.2f}s, {join['cpu']:.2f} CPU s")
    print(
        f"spawn (placed by the mesh): {report['spawn_ms']:.2f} ms; throw: {report['throw_ms']:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
