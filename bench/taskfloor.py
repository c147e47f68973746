"""The task floor: a task's round trip in zcell's shape, with no zcell code.

    python -m bench.taskfloor [--quick] [--json]

What bounds ``add.delay(2, 2).get()`` and task throughput in a design like
zcell's, measured on the same machine with plain pyzmq, msgpack and gevent:

- the worker (a child process): a ROUTER on loopback, every task in a greenlet
  of its own (as ``zcell worker`` runs them), the reply ``[id, value]``;
- the client: the program thread hands each task to a loop thread (a gevent hub
  in a thread of its own, woken by an async watcher, as a zcell node's loop is),
  which encodes it (a map with the keys of a zcell task message), pushes it on a
  DEALER to a worker with a free slot, reads the replies and wakes the program
  thread waiting in ``get()`` (a lock released from the loop).

Figures (each the p50 of the run, or a rate):

- ``echo``: the program thread's own DEALER to the worker, ``b"e"`` answered inline
  (no greenlet, no map): the raw round trip, the denominator of the ratios;
- ``direct``: a task from the program thread's own DEALER, the reply read there
  (no loop thread: the shape zcell's ``send`` from a program thread has);
- ``loop``: a task through the loop thread, as ``delay().get()`` goes;
- ``rate_slots``: 20k tasks handed over, then every result gathered, pushed only
  to a worker's free slots (4 each, as zcell's dispatcher pushes), one worker and
  two; ``rate_prefetch``: up to 16 a worker (its slots x 4, the default
  ``worker_prefetch_multiplier``: what Celery's prefetch gives), ``rate_open``:
  every task pushed at once (no bound); ``client_us``: the client's CPU a task
  (every thread).

Nothing of zcell is imported in either process but the task message's field
names, read once to build the template; bench/README.md, "The task floor",
compares the figures with zcell's own.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

import msgpack
import zmq

SLOTS = 4  # a worker's free slots, as ``zcell worker -c 4`` in bench.tasks
PREFETCH = 4  # Celery's (and zcell's) worker_prefetch_multiplier
FULL = {"rtt": (300, 3000), "rate": 20000, "rounds": 3}
QUICK = {"rtt": (20, 200), "rate": 1000, "rounds": 1}
WAIT = 30.0  # seconds any one result may take before the run fails


def worker_main(parent: int) -> int:
    """Child: answer tasks, each in a greenlet of its own; echo inline."""
    import gevent

    from bench._lean import drain, lean_send
    from bench._proc import die_with_parent

    die_with_parent(parent)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.sndhwm = sock.rcvhwm = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(json.dumps({"port": port}), flush=True)
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def run(routing: bytes, frame: bytes) -> None:
        msg = unpackb(frame)
        x, y = msg["args"]
        lean_send(sock, [routing, packb([msg["id"], x + y])])

    for routing, frame in drain(sock):
        if frame == b"e":
            lean_send(sock, [routing, b"e"])
        else:
            gevent.spawn(run, routing, frame)
    return 0


class LoopClient:
    """The client's loop thread and what the program thread calls into."""

    def __init__(self, ports: list[int], slots: int | None, template: dict[str, Any]) -> None:
        self.ports, self.slots, self.template = ports, slots, template
        self.incoming: collections.deque[tuple[int, list[Any], list[Any]]] = collections.deque()
        self.ids = itertools.count()
        self._up = threading.Event()
        threading.Thread(target=self._run, daemon=True, name="taskfloor-loop").start()
        if not self._up.wait(10.0):
            raise RuntimeError("the loop thread did not start")

    # -- the program thread

    def delay(self, x: int, y: int) -> list[Any]:
        lock = threading.Lock()
        lock.acquire()
        box: list[Any] = [lock, None]
        self.incoming.append((next(self.ids), [x, y], box))
        self._wake.send()
        return box

    @staticmethod
    def get(box: list[Any]) -> Any:
        if not box[0].acquire(timeout=WAIT):
            raise TimeoutError(f"no result within {WAIT}s")
        return box[1]

    # -- the loop thread

    def _run(self) -> None:
        import gevent

        from bench._lean import _state, _wake_parked, drain

        hub = gevent.get_hub()
        ctx = zmq.Context()
        self.socks = []
        for port in self.ports:
            sock = ctx.socket(zmq.DEALER)
            sock.sndhwm = sock.rcvhwm = 0
            sock.connect(f"tcp://127.0.0.1:{port}")
            self.socks.append(sock)
        self.free = [self.slots if self.slots is not None else -1 for _ in self.ports]
        self.waiting: collections.deque[tuple[int, list[Any], list[Any]]] = collections.deque()
        self.pending: dict[int, list[Any]] = {}
        self.turn = 0
        packb, unpackb, template = msgpack.packb, msgpack.unpackb, self.template

        def send(i: int, task: tuple[int, list[Any], list[Any]]) -> None:
            task_id, args, box = task
            msg = dict(template)
            msg["id"], msg["args"] = task_id, args
            self.pending[task_id] = box
            sock = self.socks[i]
            sock.send(packb(msg), zmq.NOBLOCK)  # no high-water mark: never Again
            st = _state(sock)
            if st.parked:  # the reader's wake-up may have been consumed by this send
                _wake_parked(sock, st)

        def pump() -> None:
            waiting, free, n = self.waiting, self.free, len(self.socks)
            while waiting:
                for _ in range(n):
                    i = self.turn = (self.turn + 1) % n
                    if free[i] != 0:
                        break
                else:
                    return
                if free[i] > 0:
                    free[i] -= 1
                send(i, waiting.popleft())

        def take() -> None:
            incoming, waiting = self.incoming, self.waiting
            while incoming:
                waiting.append(incoming.popleft())
            pump()

        def reader(i: int) -> None:
            pending, free = self.pending, self.free
            for frames in drain(self.socks[i]):
                task_id, value = unpackb(frames[0])
                box = pending.pop(task_id)
                box[1] = value
                box[0].release()
                if free[i] >= 0:
                    free[i] += 1
                if self.waiting:
                    pump()

        self._wake = hub.loop.async_()
        self._wake.start(take)
        readers = [gevent.spawn(reader, i) for i in range(len(self.socks))]
        self._up.set()
        gevent.joinall(readers)


def _check(value: Any, expected: int) -> None:
    if value != expected:
        raise RuntimeError(f"a task answered {value!r}, not {expected!r}: results were mixed up")


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e6


def _rtt(fn: Any, warm: int, n: int) -> dict[str, float]:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"p50_us": round(statistics.median(times) * 1e6, 1), "p99_us": round(_p(times, 0.99), 1)}


def _rate(client: LoopClient, n: int) -> dict[str, float]:
    c0, t0 = _cpu(), time.perf_counter()
    boxes = [client.delay(i, i) for i in range(n)]
    for i, box in enumerate(boxes):
        _check(client.get(box), 2 * i)
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"tasks_s": round(n / dt), "client_us": round(cpu / n * 1e6, 1)}


def template() -> dict[str, Any]:
    """A task message with the keys and typical values of a zcell one."""
    from zcell.tasks.message import make

    msg = make(id="0", name="bench.taskapp.add", args=[2, 2], kwargs={}, queue="celery")
    msg["reply_to"] = None  # a proxy in zcell: an extension type here it is not
    return msg


def zcell_figures(cfg: dict[str, Any], children: list[Any]) -> dict[str, Any]:
    """zcell's own ``delay().get()`` and throughput in the same run, against two
    ``zcell worker -c 4`` children (bench.tasks' workers ``w1`` and ``w2``)."""
    import uuid

    from bench._proc import Child, ChildError
    from bench.tasks import _wait_for_queues

    cluster = f"bench-taskfloor-{uuid.uuid4().hex[:8]}"

    def start(name: str, peer: str | None) -> str:
        args = ["--worker", name, "--cluster", cluster] + (["--peer", peer] if peer else [])
        child = Child(f"worker[{name}]", "bench.tasks", args)
        children.append(child)
        line = child.readline(timeout=30.0)
        if not line.startswith("{"):
            raise ChildError(f"{child.name}: unexpected output {line!r}\n{child.stderr_tail()}")
        inbox: str = json.loads(line)["endpoints"]["inbox"]
        return inbox

    peer = start("w1", None)
    start("w2", peer)
    from bench import taskapp

    app, add = taskapp.app, taskapp.add
    app.conf.update(cluster=cluster, peers=[peer], discovery="static")
    try:
        _wait_for_queues(app, {"solo": 1, "celery": 2})
        warm, n = cfg["rtt"]
        out: dict[str, Any] = {
            "zcell_delay": _rtt(
                lambda: _check(add.apply_async((2, 2), queue="solo").get(timeout=WAIT), 4), warm, n
            )
        }

        def rate(queue: str) -> dict[str, float]:
            c0, t0 = _cpu(), time.perf_counter()
            results = [add.apply_async((i, i), queue=queue) for i in range(cfg["rate"])]
            for i, result in enumerate(results):
                _check(result.get(timeout=WAIT), 2 * i)
            dt, cpu = time.perf_counter() - t0, _cpu() - c0
            return {
                "tasks_s": round(cfg["rate"] / dt),
                "client_us": round(cpu / cfg["rate"] * 1e6, 1),
            }

        for name, queue in (("zcell_rate_1", "solo"), ("zcell_rate_2", "celery")):
            runs = [rate(queue) for _ in range(cfg["rounds"])]
            out[name] = max(runs, key=lambda r: r["tasks_s"]) | {"runs": runs}
        return out
    finally:
        app.close(timeout=1.0)


def run(quick: bool = False, with_zcell: bool = False) -> dict[str, Any]:
    import subprocess

    cfg = QUICK if quick else FULL
    warm, n = cfg["rtt"]
    children = []
    try:
        ports = []
        for _ in range(2):
            child = subprocess.Popen(
                [sys.executable, "-m", "bench.taskfloor", "--worker", "--parent", str(os.getpid())],
                stdout=subprocess.PIPE,
                text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            children.append(child)
            assert child.stdout is not None
            ports.append(json.loads(child.stdout.readline())["port"])
        tpl = template()
        ctx = zmq.Context()
        own = ctx.socket(zmq.DEALER)
        own.connect(f"tcp://127.0.0.1:{ports[0]}")
        own.rcvtimeo = int(WAIT * 1000)
        task = msgpack.packb(dict(tpl, id=-1, args=[2, 2]))

        def echo() -> None:
            own.send(b"e")
            own.recv()

        def direct() -> None:
            own.send(task)
            _check(msgpack.unpackb(own.recv())[1], 4)

        out: dict[str, Any] = {"echo": _rtt(echo, warm, n), "direct": _rtt(direct, warm, n)}
        one = LoopClient(ports[:1], SLOTS, tpl)
        out["loop"] = _rtt(lambda: _check(one.get(one.delay(2, 2)), 4), warm, n)
        clients = {
            "rate_slots_1": one,
            "rate_slots_2": LoopClient(ports, SLOTS, tpl),
            "rate_prefetch_1": LoopClient(ports[:1], SLOTS * PREFETCH, tpl),
            "rate_prefetch_2": LoopClient(ports, SLOTS * PREFETCH, tpl),
            "rate_open_1": LoopClient(ports[:1], None, tpl),
            "rate_open_2": LoopClient(ports, None, tpl),
        }
        for name, client in clients.items():
            _rate(client, min(1000, cfg["rate"]))  # warm-up
            runs = [_rate(client, cfg["rate"]) for _ in range(cfg["rounds"])]
            out[name] = max(runs, key=lambda r: r["tasks_s"]) | {"runs": runs}
        if with_zcell:
            out |= zcell_figures(cfg, children)
        return out
    finally:
        for child in children:
            child.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.taskfloor", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--zcell", action="store_true", help="also zcell's delay().get() and rates, same run"
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        assert a.parent is not None
        return worker_main(a.parent)
    out = run(quick=a.quick, with_zcell=a.zcell)
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    echo = out["echo"]["p50_us"]
    for name in ("echo", "direct", "loop", "zcell_delay"):
        r = out.get(name)
        if r is None:
            continue
        print(
            f"{name:14s} p50 {r['p50_us']:8.1f} us  p99 {r['p99_us']:8.1f} us  {r['p50_us'] / echo:5.2f}x echo"
        )
    for name in (
        "rate_slots_1",
        "rate_slots_2",
        "rate_open_1",
        "rate_open_2",
        "zcell_rate_1",
        "zcell_rate_2",
    ):
        r = out.get(name)
        if r is None:
            continue
        print(f"{name:14s} {r['tasks_s']:8d} tasks/s  client {r['client_us']:6.1f} us a task")
    return 0


if __name__ == "__main__":
    sys.exit(main())
