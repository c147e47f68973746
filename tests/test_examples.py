"""Every script in examples/ runs, prints what it promises, and is importable as a module
whose actors a ``zcell node -A examples.X`` can host (or, for the task examples, whose
tasks a ``zcell worker -A examples.X`` runs)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import uuid

import pytest
from conftest import ROOT, SLOW, child_env

from zcell import Actor
from zcell.tasks import Task

#: For each example: regexes its output must match, line by line, in this order
#: (other lines may come between them).
EXPECTED = {
    "hello": [
        r"^send: +Hello, world! \(from \S+\)$",
        r"^call: +Bonjour, le monde! \(from \S+\) \[SUCCESS\]$",
        r"^select: +(Hello|Bonjour), whoever you are! \(from \S+\)$",
        r"^scatter: Bonjour, everyone! \(from \S+\)$",
        r"^scatter: Hello, everyone! \(from \S+\)$",
        r"^first: +(Hello|Bonjour), first! \(from \S+\)$",
    ],
    "logger": [
        r"^logger1: the quick brown fox \.\.\. \(send: logger1\)$",
        r"^logger[12]: the quick brown fox \.\.\. \(throw: logger1 or logger2\)$",
        r"^logger2: I will be printed from logger2$",
        r"^logger1: I will be printed from logger1$",
    ],
    "counter": [
        r"^greenlets: counted \[1, 2, 3, 4, 5\]$",
        r"^Increasing 0 with one$",
        r"^Increasing 4 with one$",
        r"^Done with counting$",
        r"^outbox: counted \[1, 2, 3, 4, 5\]$",
    ],
    "chat": [
        r"^users live on \S+$",
        r"^alice said hi, read by \['bob', 'carol'\]$",
        r"^bob answered, read by \['alice', 'carol'\]$",
        r"^alice's inbox: \['<bob> hello alice'\]$",
        r"^bob's inbox: \['<alice> hi all'\]$",
        r"^carol's inbox: \['<alice> hi all', '<bob> hello alice'\]$",
    ],
    "multiply": [
        r"^worker: none found within a second; starting zcell worker -A examples\.multiply$",
        r"^multiply\.delay\(4, 5\) = 20 \(ran on multiply-worker\)$",
        r"^app\.send_task\('tasks\.multiply', args=\[2, 2\]\) = 4 \(ran on multiply-worker\)$",
        r"^multiply\(6, 7\) = 42 \(ran here: no message\)$",
    ],
}
#: The examples that define tasks (for ``zcell worker -A``), not actors.
TASK_EXAMPLES = {"multiply"}


def unique_cluster() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def run_example(name: str, cluster: str) -> str:
    done = subprocess.run(
        [sys.executable, os.path.join("examples", f"{name}.py"), "--cluster", cluster],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * SLOW,
        env=child_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def assert_in_order(output: str, patterns: list[str]) -> None:
    lines = output.splitlines()
    i = 0
    for pattern in patterns:
        while i < len(lines) and not re.search(pattern, lines[i]):
            i += 1
        assert i < len(lines), f"no line matching {pattern!r} (in order) in:\n{output}"
        i += 1


def test_every_example_has_a_test():
    scripts = {f[:-3] for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py")} - {
        "__init__"
    }
    assert scripts == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_example_script_runs_and_prints_what_it_promises(name):
    out = run_example(name, unique_cluster())
    assert_in_order(out, EXPECTED[name])
    if name == "logger":  # the scatter's two lines come in either order
        scattered = re.findall(r"^(logger\d): .*\(scatter: both\)$", out, re.M)
        assert sorted(scattered) == ["logger1", "logger2"]


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - TASK_EXAMPLES))
def test_importing_an_example_runs_nothing_and_its_actors_have_importable_type_names(name, capsys):
    module = importlib.import_module(f"examples.{name}")
    assert capsys.readouterr() == ("", "")
    actors = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Actor) and obj.__module__ == module.__name__
    ]
    assert actors
    for cls in actors:
        # The explicit name is the one a node that imports the module computes.
        assert cls.name == f"examples.{name}.{cls.__qualname__}"


def test_a_zcell_node_hosts_the_chat_users_and_posts_cross_nodes(procs):
    cluster = unique_cluster()
    node = procs(["zcell", "node", "-A", "examples.chat", "--name", "hall", "--cluster", cluster])
    node.wait_for_line(r"^  actors:\s+examples\.chat\.User$", 15 * SLOW)
    node.wait_for_line("^ready$", 15 * SLOW)
    out = run_example("chat", cluster)
    assert_in_order(out, EXPECTED["chat"][1:])
    homes = re.search(r"^users live on (.*)$", out, re.M)
    assert homes is not None
    assert "hall" in homes.group(1).split(", ") and len(homes.group(1).split(", ")) == 2


@pytest.mark.parametrize("name", sorted(TASK_EXAMPLES))
def test_importing_a_task_example_runs_nothing_and_registers_its_tasks(name, capsys):
    module = importlib.import_module(f"examples.{name}")
    assert capsys.readouterr() == ("", "")
    tasks = [obj for obj in vars(module).values() if isinstance(obj, Task)]
    assert tasks
    for task in tasks:
        assert module.app.tasks[task.name] is task


def test_the_multiply_client_uses_a_zcell_worker_already_in_the_mesh(procs):
    cluster = unique_cluster()
    argv = ["zcell", "worker", "-A", "examples.multiply", "--name", "service"]
    worker = procs([*argv, "--cluster", cluster])
    worker.wait_for_line(r"tasks\.multiply", 15 * SLOW)  # the banner lists it
    worker.wait_for_line("^ready$", 15 * SLOW)
    out = run_example("multiply", cluster)
    assert_in_order(
        out,
        [
            r"^worker: found one in the mesh$",
            r"^multiply\.delay\(4, 5\) = 20 \(ran on service\)$",
            r"^app\.send_task\('tasks\.multiply', args=\[2, 2\]\) = 4 \(ran on service\)$",
        ],
    )
