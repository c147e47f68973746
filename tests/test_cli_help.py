"""The ``zcell`` command's help and layout: every subcommand says what it does and
shows an example, found from the parser itself, so a new command family is held
to the same rule without editing this file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from conftest import SLOW, child_env

from zcell.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_parser_has_subcommands():
    assert {"node", "demo", "status", "spawn", "send"} <= set(_subcommands())


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_each_subcommand_help_has_a_one_line_description_and_an_example(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    usage, _, rest = out.partition("\n\n")
    assert usage.startswith(f"usage: zcell {name}"), out
    description = rest.split("\n\n", 1)[0]
    assert description.strip() and "\n" not in description.strip(), (
        f"zcell {name} --help: the description is not one line:\n{out}"
    )
    assert not description.startswith(("positional arguments", "options", "mesh")), out
    examples = out.partition("\nexamples:\n")[2]
    assert f"  zcell {name}" in examples, f"zcell {name} --help shows no example:\n{out}"


def test_python_dash_m_zcell_is_the_same_command():
    done = subprocess.run(
        [sys.executable, "-m", "zcell", "status", "--help"],
        capture_output=True,
        text=True,
        timeout=30 * SLOW,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "examples:\n  zcell status" in done.stdout


def _hello_family(sub):
    """A command family from elsewhere: one module, one ``register``."""
    from zcell.cli.common import add_command

    hello = add_command(sub, "hello", "say hello", ["zcell hello --who you"], _hello)
    hello.add_argument("--who", default="world")


def _hello(args):
    print(f"hello, {args.who}")
    return 0


def test_a_new_command_family_adds_its_subcommands_without_touching_the_others(capsys):
    from zcell.cli import FAMILIES

    parser = build_parser((*FAMILIES, _hello_family))
    args = parser.parse_args(["hello", "--who", "newcomer"])
    assert args.run(args) == 0
    assert capsys.readouterr().out == "hello, newcomer\n"
    assert parser.parse_args(["status"]).command == "status"
    with pytest.raises(SystemExit):
        parser.parse_args(["hello", "--help"])
    assert "examples:\n  zcell hello --who you" in capsys.readouterr().out
