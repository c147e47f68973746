"""Each zcell module logs under its own name (``zcell.<package>.<module>``), so a
program can turn up one part (``logging.getLogger("zcell._transport")``) and
``caplog``/handlers on ``"zcell"`` still see every record."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from conftest import SLOW

import zcell
from zcell import NoNodeForType

PACKAGE = Path(zcell.__file__).parent


def _module_loggers(path: Path) -> list[ast.Call]:
    """The ``logging.getLogger(...)`` calls assigned at a module's top level."""
    tree = ast.parse(path.read_text())
    return [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and ast.unparse(node.value.func) == "logging.getLogger"
    ]


def test_every_module_logger_is_named_after_its_module():
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}: {ast.unparse(call)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for call in _module_loggers(path)
        if [ast.unparse(arg) for arg in call.args] != ["__name__"]
    ]
    assert not wrong, f"use logging.getLogger(__name__): {wrong}"


def test_a_refused_spawn_is_logged_by_the_hosting_module(mesh, caplog):
    a, b = mesh(2)
    with caplog.at_level(logging.WARNING, logger="zcell"):
        with pytest.raises(NoNodeForType):
            a._ctrl(b.id, "spawn", {"type": "nowhere.Thing", "id": "t1"}, 5.0 * SLOW)
    names = {r.name for r in caplog.records if "refused to spawn" in r.getMessage()}
    assert names == {"zcell.actors.hosting"}
