"""The per-node registry of control operations, each one small function by name.

A control call (``CTRL`` frame, see docs/protocol.md) names an operation and
carries a dict of arguments; the receiving node looks the name up here instead
of walking an if-chain, so a layer adds an operation without touching the core.
The registry belongs to one node (no process-wide table): two nodes in one
process answer only what each was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import NoSuchMethod

__all__ = ["ControlOp", "ControlRegistry"]

#: An operation: ``op(args, src)`` -> a msgpack-able value; ``src`` is the
#: calling node's id. It raises a `ZcellError` to refuse (sent back typed).
ControlOp = Callable[[dict[str, Any], str], Any]


class ControlRegistry:
    """The control operations one node answers, by name, with their help text."""

    def __init__(self) -> None:
        self._ops: dict[str, ControlOp] = {}

    def add(self, op: ControlOp, name: str | None = None) -> ControlOp:
        """Register ``op`` under ``name`` (default: its ``__name__``).

        Usable as a decorator (``@registry.add``). The docstring's first line
        is the operation's help text, so write one.

        Raises:
            ValueError: the name is taken: remove the old operation first, so
                a layer never replaces another's by accident.
        """
        key = name or op.__name__
        if key in self._ops:
            raise ValueError(f"control operation {key!r} is already registered; remove it first")
        self._ops[key] = op
        return op

    def remove(self, name: str) -> None:
        """Forget an operation (a no-op if it is not registered)."""
        self._ops.pop(name, None)

    def names(self) -> list[str]:
        """The registered operations' names, sorted."""
        return sorted(self._ops)

    def help(self) -> dict[str, str]:
        """Each operation's help text: the first line of its docstring."""
        return {name: _first_line(op.__doc__) for name, op in sorted(self._ops.items())}

    def run(self, name: str, args: dict[str, Any], src: str) -> Any:
        """Run the operation ``name`` for the node ``src``.

        Raises:
            NoSuchMethod: no such operation here (the message lists the ones
                there are); whatever the operation raises.
        """
        op = self._ops.get(name)
        if op is None:
            raise NoSuchMethod(
                f"unknown control operation {name!r}; this node answers {self.names()}"
            )
        return op(args, src)


def _first_line(doc: str | None) -> str:
    """The summary line of a docstring, or "" when there is none."""
    return (doc or "").strip().split("\n", 1)[0]
