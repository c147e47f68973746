"""The house: zcell's layers, checked on the source (see docs/architecture.md).

Limits are named once; no import cycle exists between zcell modules at run time;
imports point down the layers (a lower layer never imports a higher one); the
architecture page describes every module and names only code that exists.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import SLOW

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
    """id() of each AST node inside a module-level ALL_CAPS assignment -> the name."""
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


# -- imports point down the layers ------------------------------------------------------

#: The layers, lowest first (docs/architecture.md draws them). A module may import
#: its own layer and the ones below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("zcell.errors",),
    ("zcell._wire",),
    ("zcell.control",),  # the op registry alone: the node owns one, layers add ops
    ("zcell._transport",),
    ("zcell._mesh",),
    ("zcell.actors",),
    ("zcell.monitor",),  # inspect, control and events: on every node, under the task layer
    ("zcell.node",),  # Node = the mesh node with the actor layer plugged in
    ("zcell.tasks",),
    ("zcell.dashboard",),  # the web dashboard: a client of the monitor and task layers
    ("zcell", "zcell.__main__", "zcell.cli"),
)
#: Edges up the layers that stay until their modules are reworked, as (importer,
#: imported). None today: where the mesh must call up (hosting, proxies), it declares
#: a Protocol (``_mesh/node.py:ActorLayer``) and ``zcell/node.py`` plugs the actor
#: layer in.
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()

#: Cycles that stay until their modules are reworked, as the edge that closes each.
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()


def _modules() -> dict[str, Path]:
    """Every zcell module (a package by its __init__) -> its source file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The zcell modules ``module`` imports at run time (any depth, not under TYPE_CHECKING)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        stack.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in known and name != module}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts.pop()
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def _layer(module: str) -> int:
    """The layer of a module: the longest prefix named in LAYERS."""
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports as a path, or None (depth-first, colouring)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_no_import_cycle_between_zcell_modules_at_run_time():
    graph = _graph()
    for importer, imported in KNOWN_CYCLE_EDGES:
        graph[importer].discard(imported)
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_point_down_the_layers():
    upward = sorted(
        f"{name} -> {dep}"
        for name, deps in _graph().items()
        for dep in deps
        if _layer(dep) > _layer(name) and (name, dep) not in KNOWN_UPWARD
    )
    assert not upward, f"a lower layer imports a higher one: {upward}"


def test_the_known_upward_imports_are_still_there():
    """An exception that was removed is taken off its list, so it cannot come back."""
    graph = _graph()
    known = KNOWN_UPWARD | KNOWN_CYCLE_EDGES
    gone = sorted(f"{a} -> {b}" for a, b in known if b not in graph.get(a, set()))
    assert not gone, f"remove from KNOWN_UPWARD or KNOWN_CYCLE_EDGES: {gone}"


def test_type_checking_imports_and_relative_imports_are_resolved():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from .. import wire\n"
        "from .sockets import Socket\n"
        "if TYPE_CHECKING:\n"
        "    from .._mesh.node import Node\n"
        "def f():\n"
        "    from ..actors.proxy import ActorProxy\n"
    )
    known = {"zcell.wire", "zcell._transport.sockets", "zcell._mesh.node", "zcell.actors.proxy"}
    found = _imports(tree, "zcell._transport.x", False, known)
    assert found == {"zcell.wire", "zcell._transport.sockets", "zcell.actors.proxy"}


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Import order hides cycles: each module is imported with no zcell module loaded."""
    names = sorted(name for name in _modules() if not name.endswith("__main__"))
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'zcell' or m.startswith('zcell.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120 * SLOW
    )
    assert done.returncode == 0, done.stderr


# -- the architecture page matches the code --------------------------------------------

ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
OUTSIDE_PACKAGE = frozenset({"tests", "bench", "docs", "examples"})


def _defines(path: Path, qualname: str) -> bool:
    """Whether ``path`` defines ``qualname`` (``Class.method`` or ``function``)."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in qualname.split("."):
        found = [
            node
            for node in scope
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == part
        ]
        if not found:
            return False
        scope = found[0].body
    return True


def _architecture_problems(text: str) -> list[str]:
    """Modules the page leaves out, and the files and functions it names that do not exist."""
    problems = [
        f"not described: zcell/{path.relative_to(PACKAGE).as_posix()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py" or path.parent == PACKAGE
        if f"zcell/{path.relative_to(PACKAGE).as_posix()}" not in text
    ]
    for match in re.finditer(r"`(?:zcell/)?((?:_?\w+/)*\w+\.py)(?::([\w.]+))?`", text):
        if match.group(1).split("/")[0] in OUTSIDE_PACKAGE:
            continue
        path = PACKAGE / match.group(1)
        if not path.exists():
            problems.append(f"no such file: {match.group(0)}")
        elif match.group(2) and not _defines(path, match.group(2)):
            problems.append(f"no such function: {match.group(0)}")
    return problems


def test_the_architecture_page_describes_every_module_and_names_only_real_code():
    assert _architecture_problems(ARCHITECTURE.read_text(encoding="utf-8")) == []


def test_the_architecture_check_notices_a_function_that_is_gone():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert _architecture_problems(text + "`_mesh/messaging.py:Messaging._gone`") == [
        "no such function: `_mesh/messaging.py:Messaging._gone`"
    ]


# -- collaborators reach each other through typed interfaces --------------------------

#: The packages whose modules reach other objects only through their public names
#: (``_mesh``'s collaborators get what they need as explicit, typed arguments).
THROUGH_INTERFACES = ("_mesh", "actors")
#: Private attributes a module still reads on objects of another module's classes,
#: as (module, attribute), each with its reason. Keep it short.
KNOWN_FRIENDS: frozenset[tuple[str, str]] = frozenset(
    {
        # AsyncResult completes in one step under its Flag's lock (Flag.set inlined:
        # the outcome and the flag must change together, and it is every reply's path).
        ("_mesh/result.py", "_is_set"),
        ("_mesh/result.py", "_waiters"),
        # A program thread's port completes its own calls' results as it reads
        # the replies, and polls their flags in its read loop (its hot path).
        ("_mesh/threadport.py", "_flag"),
        ("_mesh/threadport.py", "_is_set"),
        ("_mesh/threadport.py", "_deadline"),
        ("_mesh/threadport.py", "_complete"),
        # The default timeout of the actor's class, read on every send.
        ("_mesh/messaging.py", "_cls"),
        # A proxy calls its node through the Mesh Protocol it declares
        # (actors/proxy.py): private, so that it stays out of the user's API, and
        # bound once by the node (Node._compose) so that a send is one call.
        ("actors/proxy.py", "_deliver"),
        ("actors/proxy.py", "_node_label"),
        ("actors/proxy.py", "_class_for"),
        ("actors/actor.py", "_node"),  # an Actor's node is its proxy's
    }
)


def _is_protocol(cls: ast.ClassDef) -> bool:
    return any(ast.unparse(base) in ("Protocol", "typing.Protocol") for base in cls.bases)


def _own_privates(tree: ast.Module) -> set[str]:
    """Private names this module's own (non-Protocol) classes define: methods,
    class attributes, slots and ``self._x`` assignments."""
    names: set[str] = set()
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef) or _is_protocol(cls):
            continue
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if ast.unparse(node.value) in ("self", "cls"):
                    names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_")}


def _foreign_privates(tree: ast.Module) -> list[str]:
    """Private attributes read on another object (not ``self``/``cls``) that this
    module's own classes do not define: another module's internals."""
    own = _own_privates(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") or node.attr in own:
            continue
        owner = ast.unparse(node.value)
        if owner not in ("self", "cls"):
            found.append(f"{owner}.{node.attr}")
    return found


def _friend_reads() -> dict[tuple[str, str], list[str]]:
    """(module, attribute) -> where it is read, for every module checked."""
    reads: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in _sources(*THROUGH_INTERFACES):
        module = path.relative_to(PACKAGE).as_posix()
        for read in _foreign_privates(ast.parse(path.read_text())):
            reads[(module, read.rsplit(".", 1)[1])].append(read)
    return reads


def test_mesh_and_actor_modules_read_no_private_attribute_of_another_module():
    unknown = {key: where for key, where in _friend_reads().items() if key not in KNOWN_FRIENDS}
    assert not unknown, f"reach these through a typed interface (or a public name): {unknown}"


def test_the_known_friends_are_still_there():
    """A friend that is gone is taken off the list, so that it cannot come back."""
    gone = sorted(KNOWN_FRIENDS - set(_friend_reads()))
    assert not gone, f"remove from KNOWN_FRIENDS: {gone}"


def test_the_private_attribute_check_notices_one():
    code = (
        "class Mine:\n"
        "    def _own(self): self._x = other._mine\n"
        "def f(node, mine):\n"
        "    node._members; node.stats; mine._own(); self._y; node.messaging._pending\n"
    )
    assert sorted(_foreign_privates(ast.parse(code))) == [
        "node._members",
        "node.messaging._pending",
        "other._mine",
    ]


# -- one way to do each thing -----------------------------------------------------------


def _calls_in(path: Path, cls: str, method: str) -> set[str]:
    """The names a method of a class calls (``f(...)`` and ``self.f(...)``)."""
    tree = ast.parse(path.read_text())
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    func = next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == method)
    return {
        ast.unparse(node.func).removeprefix("self.")
        for node in ast.walk(func)
        if isinstance(node, ast.Call)
    }


@pytest.mark.parametrize("method", ["send", "try_send", "send_multipart"])
def test_every_send_of_a_socket_goes_through_the_one_fast_path(method):
    calls = _calls_in(PACKAGE / "_transport" / "sockets.py", "Socket", method)
    assert "_send_now" in calls
    assert not calls & {"_send", "_put_parts", "raw.send"}, "send through _send_now"


#: A figure that goes stale: microseconds, a rate, "measured".
MEASUREMENT = re.compile(r"\d(?:\.\d+)?\s?(?:µs|us|ns)\b|\d+k?\s?(?:msgs?|calls)/s|\bmeasured\b")


def test_code_gives_reasons_and_leaves_the_figures_to_the_bench_readme():
    """Measurements go stale: bench/README.md ("Why the code is shaped this way") has them."""
    quoted = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in _sources("")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if MEASUREMENT.search(line)
    ]
    assert not quoted, f"move the figures to bench/README.md: {quoted}"
