"""The house: zcell's layers, checked on the source (see docs/architecture.md).

Limits are named once; (further down) imports point down the layers.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import zcell

PACKAGE = Path(zcell.__file__).parent
#: The layers this test holds to "one place for each limit" (the CLI and the wire
#: are other packages' business).
LIMITED = ("_transport", "_mesh", "actors", "control")
#: An int literal this large is a limit (a bound, a port range, a size), not arithmetic.
LIMIT_AT_LEAST = 10_000


def _sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (PACKAGE / package).rglob("*.py"))


def _constant_names(tree: ast.Module) -> dict[int, str]:
    """Line of each int literal inside a module-level ALL_CAPS assignment -> its name."""
    named: dict[int, str] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(node, ast.AnnAssign):
            target = node.target
        if isinstance(target, ast.Name) and target.id.lstrip("_").isupper():
            for inner in ast.walk(node):
                named[id(inner)] = target.id
    return named


def test_every_limit_is_a_named_constant_written_once():
    inline: list[str] = []
    defined: dict[str, list[str]] = defaultdict(list)
    for path in _sources(*LIMITED):
        tree = ast.parse(path.read_text())
        named = _constant_names(tree)
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and type(node.value) is int:
                if node.value < LIMIT_AT_LEAST:
                    continue
                if id(node) not in named:
                    inline.append(f"{where}:{node.lineno} {node.value}")
                elif str(where) not in defined[named[id(node)]]:
                    defined[named[id(node)]].append(str(where))
    assert not inline, f"name these limits as module constants: {inline}"
    twice = {name: paths for name, paths in defined.items() if len(paths) > 1}
    assert not twice, f"one place for each limit: {twice}"
