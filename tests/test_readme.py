"""The README runs, so it cannot drift.

Fenced blocks are tested according to their info string:

- ```` ```python ````: self-contained; run as a script.
- ```` ```python fragment ````: needs context the README gives in prose; compiled only.
- ```` ```console node-banner ````: ``$ zcell node -A examples.hello`` and its banner;
  the test starts that node and compares.
- ```` ```pycon test-with-node ````: a Python session, run with doctest (``...``
  matches anything) against a fresh ``zcell node -A examples.hello``.
- ```` ```console test-with-node ````: ``$ zcell ...`` commands run against a fresh
  ``zcell node -A examples.hello``; each output line must match (``...`` matches
  anything, runs of spaces match any spacing, and a 32-hex actor id in the README
  stands for the id the command really printed, in later commands too).
- ```` ```console test-with-worker ````: ``$ zcell ...`` commands run against a fresh
  ``zcell worker -A proj`` started in ``examples/`` (Celery's "Next Steps" project).
- ```` ```sh ```` and ```` ```text ````: the two commands and the CLI synopsis,
  checked below (``zcell demo`` itself runs in test_cli.py).

Every ``Node(`` in a run block gets a cluster of its own, so that tests never meet
other nodes on this machine.
"""

from __future__ import annotations

import argparse
import doctest
import os
import re
import shlex
from dataclasses import dataclass

import pytest
from conftest import ROOT, SLOW, child_env, run_block, unique_cluster, with_cluster
from netns import Proc

from zcell.cli import build_parser, main

README = os.path.join(ROOT, "README.md")


@dataclass
class Block:
    lang: str
    tags: tuple[str, ...]
    text: str
    line: int  # 1-based line of the opening fence

    def __repr__(self) -> str:
        return f"<{self.lang} {' '.join(self.tags)} block at README.md:{self.line}>"


def read_readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = read_readme().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*(.*)$", lines[i])
        if m and m.group(1):
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(m.group(1), tuple(m.group(2).split()), "\n".join(body), start + 1))
        i += 1
    return blocks


def blocks_of(lang: str, *tags: str) -> list[Block]:
    return [b for b in readme_blocks() if b.lang == lang and b.tags == tags]


def start_hello_node(procs, cluster: str):
    node = procs(["zcell", "node", "-A", "examples.hello", "--cluster", cluster])
    node.wait_for_line("^ready$", 15 * SLOW)
    return node


# ----------------------------------------------------------------------------- structure


def test_the_first_code_blocks_are_the_two_commands_demo_then_tests():
    first, second = readme_blocks()[:2]
    assert (first.lang, first.text) == ("sh", "pip install -e . && zcell demo")
    assert (second.lang, second.text) == ("sh", "pip install -e '.[test]' && pytest -n 2")
    # CI runs the second one (quietly: -q is the only difference).
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert second.text in {line.replace(" -q", "") for line in ci.splitlines()}


def test_every_block_is_of_a_kind_this_module_tests():
    known = {
        ("sh", ()),
        ("text", ()),
        ("python", ()),
        ("python", ("fragment",)),
        ("console", ("node-banner",)),
        ("pycon", ("test-with-node",)),
        ("console", ("test-with-node",)),
        ("console", ("test-with-worker",)),
    }
    assert {(b.lang, b.tags) for b in readme_blocks()} <= known
    assert blocks_of("pycon", "test-with-node") and blocks_of("console", "test-with-node")


def test_the_cli_reference_names_every_subcommand_and_option():
    text = read_readme()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        assert f"zcell {name}" in text, name
        for action in sub._actions:
            options = [o for o in action.option_strings if o not in ("-h", "--help")]
            if options and action.help != argparse.SUPPRESS:
                assert any(re.search(rf"(?<![\w-]){o}\b", text) for o in options), (
                    f"zcell {name} {options} is not in the README"
                )


# ----------------------------------------------------------------------------- code


@pytest.mark.parametrize("block", blocks_of("python"), ids=repr)
def test_a_self_contained_python_block_runs(block, tmp_path):
    done = run_block(block.text, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("block", blocks_of("python", "fragment"), ids=repr)
def test_a_fragment_compiles(block):
    compile(block.text, f"README.md:{block.line}", "exec")


def test_the_walkthrough_node_prints_the_banner_the_readme_shows(procs):
    (block,) = blocks_of("console", "node-banner")
    command, *expected = block.text.splitlines()
    assert command == "$ zcell node -A examples.hello"
    cluster = unique_cluster()
    node = start_hello_node(procs, cluster)
    banner = node.lines()[: len(expected)]
    expected = [line.replace("cluster:   zcell", f"cluster:   {cluster}") for line in expected]
    assert_lines_match(expected, banner, {})


def test_the_walkthrough_python_session_works_against_a_zcell_node(procs):
    (block,) = blocks_of("pycon", "test-with-node")
    start_hello_node(procs, cluster := unique_cluster())
    globs: dict = {}
    test = doctest.DocTestParser().get_doctest(
        with_cluster(block.text, cluster), globs, "README walkthrough", README, block.line
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    try:
        runner.run(test, out=report.append)
    finally:
        for value in globs.values():  # a session that failed half-way still stops
            if type(value).__name__ == "Node":
                value.stop(timeout=1)
    assert runner.failures == 0, "".join(report)
    assert runner.tries >= 10


def test_the_walkthrough_shell_session_works_against_a_zcell_node(procs, capsys):
    (block,) = blocks_of("console", "test-with-node")
    start_hello_node(procs, cluster := unique_cluster())
    ids: dict[str, str] = {}
    for command, expected in console_session(block.text):
        for readme_id, real_id in ids.items():
            command = command.replace(readme_id, real_id)
        argv = shlex.split(command)
        assert argv[0] == "zcell"
        code = main([*argv[1:], "--cluster", cluster])
        out, err = capsys.readouterr()
        assert code == 0, f"$ {command}\n{out}{err}"
        assert_lines_match(expected, out.splitlines(), ids, command)


def test_the_tasks_shell_session_works_against_a_zcell_worker(procs, capsys):
    (block,) = blocks_of("console", "test-with-worker")
    cluster = unique_cluster()
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "examples"), env["PYTHONPATH"]])
    worker = Proc(["zcell", "worker", "-A", "proj", "--cluster", cluster], None, env=env)
    try:
        worker.wait_for_line("^ready$", 15 * SLOW)
        for command, expected in console_session(block.text):
            argv = shlex.split(command)
            assert argv[0] == "zcell"
            code = main([*argv[1:], "--cluster", cluster])
            out, err = capsys.readouterr()
            assert code == 0, f"$ {command}\n{out}{err}"
            assert_lines_match(expected, out.splitlines(), {}, command)
    finally:
        worker.kill()


def console_session(text: str) -> list[tuple[str, list[str]]]:
    session: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            session.append((line[2:], []))
        else:
            session[-1][1].append(line)
    return session


HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")


def assert_lines_match(
    expected: list[str], actual: list[str], ids: dict[str, str], command: str = ""
) -> None:
    """Match line by line; bind README ids (32 hex digits) to the ids really printed."""
    assert len(actual) == len(expected), f"$ {command}\nexpected:\n{expected}\ngot:\n{actual}"
    for want, got in zip(expected, actual, strict=True):
        unbound: list[str] = []
        parts = []
        for token in want.split():
            for readme_id, real_id in ids.items():
                token = token.replace(readme_id, real_id)
            if HEX_ID.fullmatch(token) and token not in ids.values():
                unbound.append(token)
                parts.append("([0-9a-f]{32})")
            else:
                parts.append(re.escape(token).replace(r"\.\.\.", ".*?"))
        m = re.fullmatch(r"\s*" + r"\s+".join(parts) + r"\s*", got)
        assert m is not None, f"$ {command}\nexpected: {want!r}\ngot:      {got!r}"
        ids.update(zip(unbound, m.groups(), strict=True))
