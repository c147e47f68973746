"""A node lives whatever its program does; nodes in child processes; threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import SLOW, start_zcell_node
from zcell_test_actors import Echo

HOSTING_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from zcell import Node
    from zcell_test_actors import Echo
    node = Node("child", discovery="static", peers=[sys.argv[1]], heartbeat=0.3,
                actors=[Echo]).start()
    ref = node.spawn(Echo, on="child")
    print("hosting", ref.id, flush=True)
    {idle}
    node.stop()
    print("done", flush=True)
    """
)


def _watch_membership(node, name: str, seconds: float) -> bool:
    """True when ``name`` stayed a member for the whole period."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if name not in {n["name"] for n in node.nodes()}:
            return False
        time.sleep(0.05)
    return True


def _hosted_proxy(node, line):
    actor_id = line.group(1)
    end = time.monotonic() + 5 * SLOW
    while time.monotonic() < end:
        try:
            return node.lookup(actor_id)
        except KeyError:
            time.sleep(0.02)
    raise AssertionError("the child's actor never reached the directory")


@pytest.mark.parametrize(
    "idle",
    ["time.sleep(4)", "import threading; threading.Event().wait(4)"],
    ids=["time.sleep", "blocking-wait"],
)
def test_an_unpatched_script_that_sleeps_keeps_serving(make_node, procs, idle):
    node = make_node("parent", heartbeat=0.3)
    script = HOSTING_SCRIPT.format(idle=idle)
    child = procs([sys.executable, "-c", script, node.endpoints["inbox"]])
    ref = _hosted_proxy(node, child.wait_for_line(r"hosting (\w+)", 10 * SLOW))
    time.sleep(0.5)  # the child is now inside its sleep
    for i in range(20):
        assert ref.send.echo(value=i) == i
    # 0.3 s heartbeats: a node silent for ~0.8 s would be declared down.
    assert _watch_membership(node, "child", 2.0)
    child.wait_for_line("done", 10 * SLOW)


def test_a_script_at_a_repl_prompt_keeps_serving(make_node, procs):
    node = make_node("parent", heartbeat=0.3)
    script = HOSTING_SCRIPT.format(idle="pass").replace("node.stop()", "")
    child = procs(
        [sys.executable, "-i", "-c", script, node.endpoints["inbox"]], stdin=subprocess.PIPE
    )
    ref = _hosted_proxy(node, child.wait_for_line(r"hosting (\w+)", 10 * SLOW))
    # The interpreter now blocks reading its prompt from our (silent) pipe.
    time.sleep(0.5)
    assert [ref.send.echo(value=i) for i in range(10)] == list(range(10))
    assert _watch_membership(node, "child", 1.5)
    child.popen.stdin.write("node.stop(); print('bye')\n")
    child.popen.stdin.flush()
    child.wait_for_line("bye", 10 * SLOW)


def test_proxies_work_from_several_threads_at_once(mesh):
    a, b = mesh(2, actors=[Echo])
    ref = a.spawn(Echo, on="n1")
    errors: list[BaseException] = []
    results: dict[int, list[int]] = {}

    def worker(k: int) -> None:
        try:
            results[k] = [ref.send.echo(value=k * 1000 + i) for i in range(50)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30 * SLOW)
    assert not errors
    assert results == {k: [k * 1000 + i for i in range(50)] for k in range(8)}


def test_a_cpu_hogging_handler_does_not_get_its_node_declared_down(make_node, procs):
    node = make_node("parent", heartbeat=0.3)
    script = HOSTING_SCRIPT.format(idle="time.sleep(6)")
    child = procs([sys.executable, "-c", script, node.endpoints["inbox"]])
    ref = _hosted_proxy(node, child.wait_for_line(r"hosting (\w+)", 10 * SLOW))
    hog = ref.call.hog(seconds=3, timeout=10)
    # 3 s of pure CPU in the child's loop: ten heartbeat periods.
    assert _watch_membership(node, "child", 3.2)
    assert hog.get() > 0
    assert ref.send.echo(value="after") == "after"


def test_a_zcell_node_child_process_hosts_actors_and_stops_gracefully(make_node, procs):
    node = make_node("parent")
    child, _ = start_zcell_node(procs, "worker", "--peer", node.endpoints["inbox"])
    node.wait_for(nodes=2, timeout=10 * SLOW)
    ref = node.spawn(Echo)  # placed on the only node that registered Echo
    assert ref.node_id != node.id
    assert ref.send.whoami()["node"] == "worker"
    started = time.monotonic()
    child.stop()  # SIGTERM: graceful
    assert child.popen.returncode == 0
    end = time.monotonic() + 5 * SLOW
    while len(node.nodes()) > 1 and time.monotonic() < end:
        time.sleep(0.02)
    assert len(node.nodes()) == 1
    assert time.monotonic() - started < 3 * SLOW
    assert node.actors(Echo) == []
