"""The actor floor: an actor's ``send`` in zcell's shape, with no zcell code.

    python -m bench.actorfloor [--quick] [--json] [--zcell]

What bounds an actor-to-actor ``send`` (a handler that calls another actor and
waits for its reply) in a design like zcell's, measured on the same machine with
plain pyzmq, msgpack and gevent, beside the floor's ``lean-inline`` variant that
the targets of ``python -m bench`` divide by. Both ends run a gevent hub and use
the floor's lean integration (:mod:`bench._lean`); a request is
``["q", id, reply_to, route]`` and its reply ``["r", id, value]``.

- ``lean``: the floor's ``lean-inline``: the client sends on its DEALER and reads
  the reply there; the server answers inline in its reader. The denominator.
- ``pool``: the server runs each request in a greenlet of its own, taken from a
  pool of parked greenlets and woken by a hub callback, as a zcell node runs
  handlers (``Host``); the client as in ``lean``. The shape of a program
  thread's ``send``.
- ``actor_dealer``: the server as in ``pool``; the caller is a greenlet that sends
  and waits (``hub.switch()``) while a reader greenlet reads the caller's own
  inbox (a ROUTER) and resumes it with a hub callback, as an actor's handler
  waits for its reply. The server replies over a DEALER of its own to that
  inbox, as a zcell node answers another node today.
- ``actor_conn``: the same, but the reply goes back on the connection the
  request came on and the caller's reader reads it there.
- ``chain``: four servers as ``actor_dealer``'s; a request carries the rest of
  its route, and each handler passes it on to the next server and waits for
  the reply (ten handlers round the four, as ``bench.mesh``'s chain); the
  figure is a tenth of the round trip, a hop.

``--zcell`` adds zcell's own figures in the same run: a program thread's ``send``
to ``s1``'s ``Ping``, an actor's (``Pinger`` on ``c1``) and ``bench.mesh``'s
chain of ten ``Chain`` actors over ``s1``..``s4``: the shapes ``pool``,
``actor_dealer`` and ``chain`` have. Each variant runs in fresh processes, the variants in
turn, ``rounds`` times; a figure is the median of its rounds' p50 (and p99).
bench/README.md, "The actor floor", compares the figures with the targets.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import uuid
from typing import Any

import msgpack
import zmq

from bench.floor import _percentile, time_calls

#: variant: (how the server runs a request, where it replies, the client's shape)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "lean": ("inline", "conn", "lean"),
    "pool": ("pool", "conn", "lean"),
    "actor_dealer": ("pool", "dealer", "actor"),
    "actor_conn": ("pool", "conn", "actor"),
    "chain": ("pool", "dealer", "chain"),
}
SERVERS = 4  # the chain's servers, as bench.mesh's s1..s4
CHAIN_DEPTH = 10  # handlers in a chain, as bench.mesh's
FULL: dict[str, Any] = {"rtt": (500, 5000), "rounds": 3}
QUICK: dict[str, Any] = {"rtt": (50, 300), "rounds": 1}
PAYLOAD = b"x" * 16
LIFETIME = 300.0  # seconds a server child lives at most
WAIT = 60.0  # seconds one variant's client may take


def server_main(run: str, reply: str, parent: int) -> int:
    """Child: answer requests on a ROUTER, inline or each in a pooled greenlet; a
    request with a route is passed on along it first (a chain's hop)."""
    import itertools

    import gevent
    from greenlet import getcurrent, greenlet

    from bench._lean import drain, lean_send
    from bench._proc import die_with_parent

    die_with_parent(parent)
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.ROUTER)
    inbox.linger = 0
    port = inbox.bind_to_random_port("tcp://127.0.0.1")
    me = f"tcp://127.0.0.1:{port}"
    outs: dict[str, Any] = {}
    packb, unpackb = msgpack.packb, msgpack.unpackb
    hub = gevent.get_hub()
    ids = itertools.count()
    waiting: dict[int, Any] = {}  # request id -> the handler waiting for its reply

    def out(endpoint: str) -> Any:
        sock = outs.get(endpoint)
        if sock is None:
            sock = outs[endpoint] = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(endpoint)
        return sock

    def forward(route: list[str]) -> int:
        # As an actor's handler calling the next: send, wait for the inbox's reader.
        rid = next(ids)
        waiting[rid] = getcurrent()
        lean_send(out(route[0]), [packb(["q", rid, me, route[1:]])])
        value: int = hub.switch()[2]
        return value

    def handle(routing: bytes, msg: list[Any]) -> None:
        _, rid, reply_to, route = msg
        answer = packb(["r", rid, forward(route) + 1 if route else 1])
        if reply == "dealer" and reply_to is not None:
            lean_send(out(reply_to), [answer])
        else:
            lean_send(inbox, [routing, answer])

    runnable: collections.deque[tuple[bytes, list[Any]]] = collections.deque()
    idle: list[Any] = []
    waking = [False]

    def worker() -> None:
        # As zcell's Host: run what is admitted; park when there is nothing.
        this = getcurrent()
        while True:
            waking[0] = False
            while runnable:
                job = runnable.popleft()
                if runnable and not waking[0]:
                    wake()  # a spare, in case this one blocks
                handle(*job)
            idle.append(this)
            hub.switch()

    def wake() -> None:
        waking[0] = True
        g = idle.pop() if idle else greenlet(worker, parent=hub)
        hub.loop.run_callback(g.switch)

    print(json.dumps({"port": port}), flush=True)
    with gevent.Timeout(LIFETIME, False):
        for routing, frame in drain(inbox):
            msg = unpackb(frame)
            if msg[0] == "r":  # a reply to one of our handlers' requests
                handler = waiting.pop(msg[1], None)
                if handler is not None:
                    hub.loop.run_callback(handler.switch, msg)
            elif run == "inline":
                handle(routing, msg)
            else:
                runnable.append((routing, msg))
                if not waking[0]:
                    wake()
    return 0


def client_main(ports: list[int], variant: str, warm: int, n: int, parent: int) -> int:
    """Child: time ``n`` requests one at a time in ``variant``'s shape; print the result."""
    import gevent
    from greenlet import getcurrent

    from bench._lean import drain, lean_recv, lean_send
    from bench._proc import die_with_parent

    die_with_parent(parent)
    _, reply, shape = VARIANTS[variant]
    ctx = zmq.Context()
    packb, unpackb = msgpack.packb, msgpack.unpackb
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"tcp://127.0.0.1:{ports[0]}")
    # A chain: the head on the first server, then round the ring (bench.mesh's layout).
    ring = [f"tcp://127.0.0.1:{p}" for p in ports]
    route = [ring[i % len(ring)] for i in range(1, CHAIN_DEPTH)] if shape == "chain" else []
    expect = CHAIN_DEPTH if shape == "chain" else 1

    if shape != "actor":

        def call(i: int) -> Any:
            lean_send(dealer, [packb(["q", i, None, route])])
            return unpackb(lean_recv(dealer)[0])

    else:
        hub = gevent.get_hub()
        waiter: list[Any] = [None]  # the greenlet waiting for its reply (one at a time)
        reply_to = None
        source = dealer
        if reply == "dealer":
            inbox = ctx.socket(zmq.ROUTER)
            inbox.linger = 0
            reply_to = f"tcp://127.0.0.1:{inbox.bind_to_random_port('tcp://127.0.0.1')}"
            source = inbox

        def reader() -> None:
            for frames in drain(source):
                msg = unpackb(frames[-1])  # [routing, frame] on the inbox
                resume, waiter[0] = waiter[0], None
                if resume is not None:  # it checks the id
                    hub.loop.run_callback(resume.switch, msg)

        gevent.spawn(reader)

        def call(i: int) -> Any:
            waiter[0] = getcurrent()
            lean_send(dealer, [packb(["q", i, reply_to, route])])
            return hub.switch()

    samples: list[int] = []

    def check(i: int, got: Any) -> None:
        if got[1] != i or got[2] != expect:
            raise RuntimeError(f"reply {got!r} to request {i}")

    def run() -> None:
        samples.extend(time_calls(call, warm, n, check))

    runner = gevent.spawn(run)
    runner.join(WAIT)
    if not runner.ready():
        raise TimeoutError(f"{variant}: {n} requests not done in {WAIT:.0f}s")
    runner.get()  # re-raise its error
    result = _summary(samples)
    if shape == "chain":
        result["per_hop_p50_us"] = round(result["p50_us"] / CHAIN_DEPTH, 1)
    print(json.dumps(result), flush=True)
    return 0


def _summary(sorted_ns: list[int]) -> dict[str, float]:
    return {
        "p50_us": round(_percentile(sorted_ns, 0.50), 1),
        "p99_us": round(_percentile(sorted_ns, 0.99), 1),
    }


def _variant_round(variant: str, warm: int, n: int) -> dict[str, float]:
    from bench._proc import Child, ChildError

    run, reply, shape = VARIANTS[variant]
    servers = []
    try:
        for i in range(SERVERS if shape == "chain" else 1):
            servers.append(
                Child(f"server[{variant}:{i}]", "bench.actorfloor", ["--server", run, reply])
            )
        ports = ",".join(str(json.loads(s.readline(timeout=30.0))["port"]) for s in servers)
        if shape == "chain":
            warm, n = _chain_counts(warm, n)
        args = ["--client", ports, variant, "--counts", f"{warm},{n}"]
        client = Child(f"client[{variant}]", "bench.actorfloor", args)
        try:
            line = client.readline(timeout=WAIT + 30.0)
            try:
                result: dict[str, float] = json.loads(line)
            except ValueError:
                raise ChildError(f"{client.name}: {line!r}\n{client.stderr_tail()}") from None
            return result
        finally:
            client.kill()
    finally:
        for server in servers:
            server.kill()


def zcell_round(warm: int, n: int, children: list[Any], state: dict[str, Any]) -> dict[str, Any]:
    """zcell's program-thread ``send`` and actor-to-actor ``send`` to a ``Ping``
    (``zcell node -A bench.actors`` children ``s1`` and ``c1``, started once)."""
    from bench import actors as A
    from bench._proc import Child

    if "node" not in state:
        from zcell import Node

        cluster = f"bench-actorfloor-{uuid.uuid4().hex[:8]}"

        def start(name: str, peer: str | None) -> str:
            args = ["--node", name, "--cluster", cluster] + (["--peer", peer] if peer else [])
            child = Child(f"node[{name}]", "bench.mesh", args)
            children.append(child)
            inbox: str = json.loads(child.readline(timeout=30.0))["endpoints"]["inbox"]
            return inbox

        peer = start("s1", None)
        for name in [f"s{i}" for i in range(2, SERVERS + 1)] + ["c1"]:
            start(name, peer)
        node = state["node"] = Node(
            "bench-actorfloor", cluster=cluster, discovery="static", peers=[peer]
        )
        node.start()
        node.wait_for(nodes=SERVERS + 2, timeout=30)
        state["ping"] = node.spawn(A.Ping, on="s1")
        state["pinger"] = node.spawn(A.Pinger, on="c1")
        state["chain"] = [
            node.spawn(A.Chain, on=f"s{(i % SERVERS) + 1}") for i in range(CHAIN_DEPTH)
        ]
    ping, pinger, chain = state["ping"], state["pinger"], state["chain"]
    send = ping.send.ping

    def check_ping(i: int, got: Any) -> None:
        if got != i:
            raise RuntimeError(f"reply {got!r} to ping {i}")

    def check_chain(_: int, depth: Any) -> None:
        if depth != CHAIN_DEPTH:
            raise RuntimeError(f"chain returned depth {depth}")

    samples = time_calls(lambda i: send(x=i, timeout=10), warm, n, check_ping)
    a2a = pinger.send.rtt(target=ping, warm=warm, n=n, timeout=WAIT)["sorted_ns"]
    head, rest = chain[0], chain[1:]
    hops = time_calls(
        lambda _: head.send.chain(refs=rest, timeout=10), *_chain_counts(warm, n), check_chain
    )
    out = {
        "zcell_send": _summary(samples),
        "zcell_actor": _summary(a2a),
        "zcell_chain": _summary(hops),
    }
    out["zcell_chain"]["per_hop_p50_us"] = round(out["zcell_chain"]["p50_us"] / CHAIN_DEPTH, 1)
    return out


def _chain_counts(warm: int, n: int) -> tuple[int, int]:
    """A chain is ten round trips: a tenth of the counts (at least a few)."""
    return max(2, warm // 10), max(10, n // 10)


def run(quick: bool = False, with_zcell: bool = False) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    warm, n = cfg["rtt"]
    rounds: dict[str, list[dict[str, float]]] = {}
    children: list[Any] = []
    state: dict[str, Any] = {}
    try:
        for _ in range(cfg["rounds"]):
            for variant in VARIANTS:
                rounds.setdefault(variant, []).append(_variant_round(variant, warm, n))
            if with_zcell:
                for name, figure in zcell_round(warm, n, children, state).items():
                    rounds.setdefault(name, []).append(figure)
    finally:
        if "node" in state:
            state["node"].stop(timeout=5)
        for child in children:
            child.kill()
    out: dict[str, Any] = {}
    for name, runs in rounds.items():
        out[name] = {
            "p50_us": statistics.median(r["p50_us"] for r in runs),
            "p99_us": statistics.median(r["p99_us"] for r in runs),
            "runs": runs,
        }
        if "per_hop_p50_us" in runs[0]:
            out[name]["per_hop_p50_us"] = statistics.median(r["per_hop_p50_us"] for r in runs)
    lean = out["lean"]["p50_us"]
    for figure in out.values():
        figure["ratio"] = round(figure["p50_us"] / lean, 3)
        if "per_hop_p50_us" in figure:
            figure["hop_ratio"] = round(figure["per_hop_p50_us"] / lean, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.actorfloor", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--zcell", action="store_true", help="also zcell's own sends, same run")
    p.add_argument("--server", nargs=2, metavar=("RUN", "REPLY"), help=argparse.SUPPRESS)
    p.add_argument("--client", nargs=2, metavar=("PORTS", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--counts", help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.server:
        return server_main(a.server[0], a.server[1], a.parent)
    if a.client:
        warm, n = (int(x) for x in a.counts.split(","))
        ports = [int(port) for port in a.client[0].split(",")]
        return client_main(ports, a.client[1], warm, n, a.parent)
    out = run(quick=a.quick, with_zcell=a.zcell)
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    for name, r in out.items():
        runs = " / ".join(f"{x['p50_us']:.0f}" for x in r["runs"])
        hop = r.get("per_hop_p50_us")
        print(
            f"{name:14s} p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us  "
            + (
                f"{r['ratio']:5.2f}x lean"
                if hop is None
                else f"a hop {hop:.1f} us, {r['hop_ratio']:.2f}x lean"
            )
            + f"  (rounds: {runs})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
