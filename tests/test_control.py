"""Control operations: a per-node registry of named functions (zcell/control).

The registry alone (no sockets), then through real nodes: an operation one node
registers is callable from another, an unknown one fails typed, and two nodes in
one process answer only their own operations.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import SLOW

from zcell import NoSuchMethod
from zcell.control import ControlRegistry


def _echo(args: dict[str, Any], src: str) -> Any:
    """Return the arguments and the caller's id."""
    return [args, src]


# -- the registry alone -----------------------------------------------------------------


def test_a_registered_operation_runs_by_name_with_args_and_caller():
    registry = ControlRegistry()
    registry.add(_echo, "echo")
    assert registry.run("echo", {"x": 1}, "caller") == [{"x": 1}, "caller"]


def test_an_operation_is_named_after_its_function_unless_told_and_its_docstring_is_help():
    registry = ControlRegistry()
    registry.add(_echo)
    assert registry.names() == ["_echo"]
    assert registry.help() == {"_echo": "Return the arguments and the caller's id."}


def test_an_unknown_operation_raises_no_such_method_naming_the_known_ones():
    registry = ControlRegistry()
    registry.add(_echo, "echo")
    with pytest.raises(NoSuchMethod, match="unknown control operation 'nope'.*echo"):
        registry.run("nope", {}, "caller")


def test_a_taken_name_is_refused_until_removed():
    registry = ControlRegistry()
    registry.add(_echo, "echo")
    with pytest.raises(ValueError, match="already registered"):
        registry.add(_echo, "echo")
    registry.remove("echo")
    registry.add(_echo, "echo")
    assert registry.names() == ["echo"]


# -- through nodes ----------------------------------------------------------------------


def test_every_node_answers_the_actor_operations_each_with_help(make_node):
    node = make_node()
    help_text = node.control.help()
    for op in ("spawn", "kill", "bind", "unbind", "snapshot"):
        assert help_text[op], f"{op} has no help text"


def test_an_operation_registered_on_one_node_is_callable_from_another(mesh):
    a, b = mesh(2)
    a.control.add(_echo, "echo")
    assert b._ctrl(a.id, "echo", {"x": [1, 2]}, 5.0 * SLOW) == [{"x": [1, 2]}, b.id]


def test_an_unknown_operation_fails_typed_across_the_mesh(mesh):
    a, b = mesh(2)
    with pytest.raises(NoSuchMethod, match="unknown control operation 'nope'"):
        b._ctrl(a.id, "nope", {}, 5.0 * SLOW)


def test_two_nodes_in_one_process_keep_their_own_operations(mesh):
    a, b = mesh(2)
    a.control.add(_echo, "echo")
    assert "echo" not in b.control.names()
    with pytest.raises(NoSuchMethod):
        a._ctrl(b.id, "echo", {}, 5.0 * SLOW)
