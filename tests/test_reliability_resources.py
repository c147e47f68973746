"""Resources and races: the outbound queue's wake-ups, thread ports that end with
their threads, and a directory that stays cheap with many actors.

The outbound races are made deterministic with a real thread that pauses itself
(``sys.settrace``) at the exact line where the race lies, while the node's real
loop drains the queue.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from conftest import SLOW, Unwalkable, child_env, count_walks, wait_until
from zcell_test_actors import Counter, Echo, Logger

from bench.directory import host_many
from zcell._mesh import outbound
from zcell._mesh.directory import Directory, Roster
from zcell._mesh.result import AsyncResult, PendingCalls
from zcell.errors import CallTimeout

# -- item 12: Outbound.put ---------------------------------------------------


def _pause_in_put(line_has: str, when: Callable[[Any], bool]) -> Callable[..., Any]:
    """A tracer for the current thread: the first time ``Outbound.put`` (or a method
    it calls) is about to run a line containing ``line_has`` while ``when(outbound)`` holds, wait (up to
    2 s) until the loop has emptied that queue and gone idle, then go on."""
    done: list[bool] = []
    source = Path(outbound.__file__).read_text().splitlines()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and not done and line_has in source[frame.f_lineno - 1]:
            out = frame.f_locals["self"]
            if when(out):
                done.append(True)
                end = time.monotonic() + 2 * SLOW
                while out._queue and time.monotonic() < end:
                    time.sleep(0.001)
                time.sleep(0.05)  # the sender greenlet goes back to sleep
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == outbound.__file__:
            return local
        return None

    tracer.done = done  # type: ignore[attr-defined]
    return tracer


def _in_thread(fn: Callable[[], Any], timeout: float) -> Any:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(("error", exc))
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the sending thread is still blocked"
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def test_a_frame_queued_while_the_loop_drains_the_last_one_is_still_sent(make_node):
    node = make_node("solo", actors=[Echo])
    ref = node.spawn(Echo)
    # A plain thread sending to its own node's actor goes through the outbound queue.
    tracer = _pause_in_put("queue.append(", lambda out: bool(out._queue))

    def sends() -> Any:
        sys.settrace(tracer)
        for i in range(2000):
            ref.send.echo(value=i, nowait=True)
            if tracer.done:  # type: ignore[attr-defined]
                break
        sys.settrace(None)
        assert tracer.done, "never caught the queue non-empty at the append"  # type: ignore[attr-defined]
        return [ref.send.echo(value=f"after {i}", timeout=2 * SLOW) for i in range(3)]

    assert _in_thread(sends, 20 * SLOW) == ["after 0", "after 1", "after 2"]


def test_a_full_queue_that_drains_before_the_wait_begins_does_not_sleep_a_deadline(make_node):
    node = make_node("solo", actors=[Echo])
    ref = node.spawn(Echo)
    ref.send.echo(value=0)
    limit = 1000
    tracer = _pause_in_put("self._space = Flag()", lambda out: len(out._queue) >= limit)

    def floods() -> float:
        node._loop.submit(time.sleep, 0.3 * SLOW)  # the loop stops reading meanwhile
        sys.settrace(tracer)
        for i in range(limit):
            ref.send.echo(value=i, nowait=True)
        start = time.monotonic()
        ref.send.echo(value="one more", nowait=True, timeout=10 * SLOW)  # waits for room
        took = time.monotonic() - start
        sys.settrace(None)
        assert tracer.done  # type: ignore[attr-defined]
        return took

    took = _in_thread(floods, 30 * SLOW)
    assert took < 3 * SLOW, f"waited {took:.1f}s for room in a queue that was empty"
    assert ref.send.echo(value="last") == "last"


# -- item 16: a program thread's port ends with its thread ---------------------

_MANY_THREADS = r"""
import json, os, resource, sys, threading, time

_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))

from zcell import Node, ZcellError
from zcell_test_actors import Counter, Echo, Logger

SLOW = float(os.environ.get("ZCELL_TEST_SLOW", "1"))
server = Node("server", discovery="static", actors=[Echo]).start()
client = Node("client", discovery="static", peers=[server.endpoints["inbox"]]).start()
client.wait_for(nodes=2, timeout=10 * SLOW)
ref = client.spawn(Echo, on="server")
errors = []


def fds():
    return len(os.listdir("/proc/self/fd"))


def one(i):
    try:
        assert ref.send.echo(value=i) == i
        assert ref.call.echo(value=-i).get(timeout=5 * SLOW) == -i
    except Exception as exc:
        errors.append(repr(exc))


def threads(n, width):
    peak = 0
    for start in range(0, n, width):
        batch = [threading.Thread(target=one, args=(start + k,)) for k in range(width)]
        for t in batch:
            t.start()
        for t in batch:
            t.join(30 * SLOW)
        peak = max(peak, fds())
    return peak


before = fds()
peak = threads(N_THREADS, 8)

# Ports of the threads that just ended are freed by the loop, a moment later:
# let that finish (bounded), so that no descriptor frees itself after the filling.
settle_by = time.monotonic() + 10 * SLOW
last = (-1, -1)
while time.monotonic() < settle_by:
    now = (len(client._messaging.ports), fds())
    if now == last:
        break
    last = now
    time.sleep(0.5)

# With the descriptors used up, a new thread's call fails with a zcell error.
filler = []
try:
    while True:
        filler.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
exhausted = []
def starved():
    try:
        ref.send.echo(value="starved", timeout=2 * SLOW)
    except Exception as exc:
        exhausted.append((isinstance(exc, ZcellError), type(exc).__name__, str(exc)))
t = threading.Thread(target=starved)
t.start()
t.join(30 * SLOW)
for fd in filler:
    os.close(fd)
threads(16, 8)  # and once there are descriptors again, threads work again

late = Node("late", discovery="static", peers=[server.endpoints["inbox"]]).start()
client.wait_for(nodes=3, timeout=10 * SLOW)
late.wait_for(nodes=3, timeout=10 * SLOW)
print(json.dumps({"before": before, "peak": peak, "errors": errors[:3], "n_errors": len(errors),
                  "exhausted": exhausted, "ports": len(client._messaging.ports), "members": len(client.nodes())}))
for node in (late, client, server):
    node.stop(timeout=0.5)
"""


def test_thousands_of_short_lived_threads_do_not_run_out_of_descriptors():
    script = _MANY_THREADS.replace("FD_LIMIT", "256").replace("N_THREADS", "2000")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["n_errors"] == 0, report["errors"]
    # Each thread's port is freed when the thread ends: the count stays flat.
    assert report["peak"] < report["before"] + 80, report
    assert report["ports"] < 50, report
    # Out of descriptors, the caller gets a zcell error that says what to do.
    assert len(report["exhausted"]) == 1 and report["exhausted"][0][0], report
    assert "descriptor" in report["exhausted"][0][2], report
    assert report["members"] == 3


# -- item 18: the directory's indexes ----------------------------------------


def _directory(nodes: int, per_node: int, type_name: str = "T") -> Directory:
    directory = Directory()
    for n in range(nodes):
        for i in range(per_node):
            directory.add(f"a{n}-{i}", type_name, f"node{n}")
    return directory


def test_count_on_follows_adds_removes_and_replaced_nodes():
    directory = _directory(3, 100)
    assert [directory.count_on(f"node{n}") for n in range(3)] == [100, 100, 100]
    directory.add("a0-0", "T", "node0")  # the same entry again (news after a spawn)
    directory.remove("a0-1")
    directory.add("a1-0", "T", "node2")  # an id now elsewhere
    assert [directory.count_on(f"node{n}") for n in range(3)] == [99, 99, 101]
    assert sorted(directory.remove_node("node1")) == sorted(f"a1-{i}" for i in range(1, 100))
    directory.replace_node("node2", [["x", "T"], ["y", "U"]])
    assert directory.count_on("node1") == 0 and directory.count_on("node2") == 2
    assert directory.count_on("nowhere") == 0
    assert set(directory.actors) == {f"a0-{i}" for i in range(100) if i != 1} | {"x", "y"}
    assert set(directory.of_type("U")) == {"y"} and len(directory.of_type("T")) == 100


def test_round_robin_visits_every_actor_of_a_type_once_per_cycle():
    directory = _directory(4, 25)
    directory.add("other", "U", "node0")
    picks = [directory.next_of_type("T") for _ in range(200)]
    assert all(p is not None and p[1] == directory.actors[p[0]][1] for p in picks)
    ids = [p[0] for p in picks if p is not None]
    assert sorted(ids[:100]) == sorted(ids[100:]) == sorted(directory.of_type("T"))
    assert directory.next_of_type("U") == ("other", "node0")
    assert directory.next_of_type("nothing") is None


def test_round_robin_skips_excluded_actors_and_avoided_nodes():
    directory = _directory(3, 50)
    seen = {f"a0-{i}" for i in range(10)}
    for _ in range(300):
        picked = directory.next_of_type("T", exclude=seen, avoid={"node1"})
        assert picked is not None and picked[0] not in seen and picked[1] != "node1"
    # Only avoided nodes left: one of theirs rather than nothing.
    picked = directory.next_of_type("T", avoid={"node0", "node1", "node2"})
    assert picked is not None
    assert directory.next_of_type("T", exclude=set(directory.of_type("T"))) is None


def test_round_robin_stays_fair_while_actors_come_and_go():
    directory = _directory(1, 10)
    for i in range(10):
        directory.remove(f"a0-{i}")
        directory.add(f"b{i}", "T", "node1")
    assert directory.count_on("node0") == 0
    picks = {directory.next_of_type("T")[0] for _ in range(10)}  # type: ignore[index]
    assert picks == {f"b{i}" for i in range(10)}


def test_with_twenty_thousand_actors_joins_spawns_and_throws_stay_correct(make_node):
    big = make_node("big", actors=[Echo])
    host_many(big, Echo, 20000)  # in its loop: one by one would take most of the test
    seed = [big.endpoints["inbox"]]
    b = make_node("b", actors=[Echo], peers=seed)
    c = make_node("c", actors=[Echo], peers=seed)  # b hears of it: no copy of big's actors
    for node in (big, b, c):
        node.wait_for(nodes=3, timeout=10 * SLOW)
    wait_until(
        lambda: b.directory.count_on(big.id) == c.directory.count_on(big.id) == 20000,
        10,
        "both newcomers see all of big's actors",
    )
    assert len(b.actors(Echo)) == 20000
    # Placement: the least-loaded nodes that host the type, in turn.
    placed = [b.spawn(Echo).node_id for _ in range(10)]
    assert placed == [b.id, c.id] * 5
    wait_until(lambda: big.directory.count_on(c.id) == 5, 5, "big hears of c's actors")
    # Throws: round-robin over all 20010, so each goes to another actor.
    ids = [b.lookup(next(iter(big.hosting.actors))).throw.whoami()["id"] for _ in range(100)]
    assert len(set(ids)) == 100
    # The counts follow kills.
    b.kill(b.lookup(next(iter(big.hosting.actors))))
    wait_until(lambda: c.directory.count_on(big.id) == 19999, 5, "c sees the kill")


def test_actors_of_a_type_and_nodes_do_not_walk_the_whole_directory(make_node):
    # The task dispatcher asks for a queue's consumers at every round: with 100k
    # actors of other types in the mesh, a walk of the directory each time made
    # every task wait for it.
    big = make_node("big", actors=[Echo])
    host_many(big, Echo, 2000)
    b = make_node("b", actors=[], peers=[big.endpoints["inbox"]])
    b.wait_for(nodes=2, timeout=10 * SLOW)
    wait_until(lambda: b.directory.count_on(big.id) == 2000, 10, "b sees big's actors")
    count_walks(b, b.directory, "actors")
    echoes = b.actors(Echo)
    assert len(echoes) == 2000 and {p.node_id for p in echoes} == {big.id}
    assert b.actors("no.such.type") == []
    counts = {n["name"]: n["actors"] for n in b.nodes()}
    assert counts == {"big": 2000, "b": 0}
    assert Unwalkable.walks == 0


def test_a_scatter_and_actors_gone_elsewhere_do_not_walk_every_actor_hosted_here(make_node):
    # A scatter looked at every actor its node hosts for those of its type, and
    # every actor gone from the mesh (one by one, or all of a dead node's) made
    # each node look at every actor it hosts for bindings to drop.
    a = make_node("a", actors=[Counter, Echo, Logger])
    b = make_node("b", actors=[Echo, Logger], peers=[a.endpoints["inbox"]])
    for node in (a, b):
        node.wait_for(nodes=2, timeout=10 * SLOW)
    host_many(a, Counter, 2000)
    echoes = [a.spawn(Echo, on=a.id) for _ in range(3)]
    source = a.spawn(Logger, on=a.id)
    doomed = a.spawn(Logger, on=b.id)
    source.add_binding(doomed)
    count_walks(a, a.hosting, "actors")
    replies = list(a.lookup(echoes[0].id).scatter.whoami(timeout=5 * SLOW))
    assert sorted(r["id"] for r in replies) == sorted(e.id for e in echoes)
    b.kill(doomed)
    wait_until(lambda: doomed.id not in a.directory.actors, 5 * SLOW, "a hears of the kill")
    gone = b.spawn(Echo, on=b.id)
    wait_until(lambda: gone.id in a.directory.actors, 5 * SLOW, "a hears of the spawn")
    b.stop()  # a dead node's actors leave every directory
    wait_until(lambda: gone.id not in a.directory.actors, 10 * SLOW, "a drops b's actors")
    assert Unwalkable.walks == 0
    # The binding to the killed actor is gone: the source's emits come back to it.
    source.emit("log", {"msg": "to myself"})
    wait_until(lambda: source.send.history() == [["to myself", source.id]], 5, "the emit")


def test_expiring_calls_looks_at_the_calls_due_not_at_every_call_pending():
    # The loop expires calls five times a second: a walk of every pending call
    # each time took a share of a core, and stalled the loop, with many in flight.
    pending = PendingCalls(Roster("me", "me"), {})
    pending.table = Unwalkable()  # type: ignore[assignment]
    Unwalkable.walks = 0
    now = time.monotonic()
    far = [AsyncResult(rid, now + 600) for rid in range(20000)]
    soon = [AsyncResult(rid, now + 0.1) for rid in range(20000, 20005)]
    for result in far + soon:
        pending.add(result.id, result, "node1", result._deadline)
    for _ in range(10):
        pending.expire(now)
    assert not any(r.ready() for r in far + soon)
    pending.expire(now + 1.0)
    for result in soon:
        assert isinstance(result.get(timeout=0, propagate=False), CallTimeout)
    assert not any(r.ready() for r in far) and len(pending.table) == 20000
    assert Unwalkable.walks == 0
    # Answered calls leave the heap with a rebuild once they are most of it.
    for result in far[:19000]:
        pending.forget(result.id)
    pending.expire(now + 1.0)
    assert len(pending._heap) <= 1024 + 2 * len(pending.table)
    pending.expire(now + 601.0)
    assert all(isinstance(r.get(timeout=0, propagate=False), CallTimeout) for r in far[19000:])
    assert not pending.table


def test_a_port_whose_thread_ended_with_a_call_in_flight_is_freed_after_the_reply(mesh):
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")
    results: list[Any] = []
    before = len(a._messaging.ports)  # this thread's, if it has one
    thread = threading.Thread(target=lambda: results.append(ref.call.sleep(seconds=0.3)))
    thread.start()
    thread.join(5 * SLOW)
    assert len(a._messaging.ports) == before + 1  # the call's reply will come to that port
    assert results[0].get(timeout=5 * SLOW) == 0.3  # waited on from another thread
    wait_until(lambda: len(a._messaging.ports) == before, 5, "the ended thread's port is freed")
    assert a.statistics()["messages_out"] >= 1  # what it counted is kept
