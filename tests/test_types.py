"""Types: the modules docs/architecture.md calls strict pass ``mypy --strict``.

CI runs ``mypy zcell`` with pyproject.toml's settings; these tests hold those
settings to the list of strict modules and to every per-module flag of
``--strict``, and check the modules against ``mypy --strict`` itself.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from conftest import ROOT, child_env

#: The strict modules (mypy module patterns), as docs/architecture.md lists them.
STRICT_MODULES = [
    "zcell",
    "zcell.__main__",
    "zcell.errors",
    "zcell._wire.*",
    "zcell._transport.*",
    "zcell._mesh.*",
    "zcell.control.*",
    "zcell.actors.*",
    "zcell.cli.*",
    "zcell.tasks.*",
    "zcell.dashboard.*",
    "zcell.monitor.*",
]
#: What ``mypy --strict`` turns on, less warn_redundant_casts (global only) and
#: less ``strict`` itself (in an overrides table mypy applies it to every module).
STRICT_FLAGS = {
    "disallow_any_generics": True,
    "disallow_subclassing_any": True,
    "disallow_untyped_calls": True,
    "disallow_untyped_defs": True,
    "disallow_incomplete_defs": True,
    "check_untyped_defs": True,
    "disallow_untyped_decorators": True,
    "warn_unused_ignores": True,
    "warn_return_any": True,
    "implicit_reexport": False,
    "strict_equality": True,
    "extra_checks": True,
}


def _mypy_config() -> dict[str, Any]:
    """The [tool.mypy] table of pyproject.toml."""
    with open(Path(ROOT) / "pyproject.toml", "rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["mypy"]
    return config


def _mypy_targets(pattern: str) -> list[str]:
    """mypy's command-line target for a module pattern: a package for ``x.*``."""
    if pattern.endswith(".*"):
        return ["-p", pattern[:-2]]
    return ["-m", pattern]


def test_pyproject_makes_exactly_the_strict_modules_strict() -> None:
    config = _mypy_config()
    strict = [o for o in config.get("overrides", []) if o.get("disallow_untyped_defs")]
    assert len(strict) == 1, "one overrides table holds the strict modules"
    assert strict[0]["module"] == STRICT_MODULES
    assert {k: v for k, v in strict[0].items() if k != "module"} == STRICT_FLAGS
    assert "strict" not in config, (
        "global strict would cover modules not listed (a new package joins explicitly)"
    )
    assert config.get("warn_redundant_casts") is True


def test_architecture_page_names_the_strict_modules() -> None:
    page = (Path(ROOT) / "docs" / "architecture.md").read_text()
    types = page.split("## Types", 1)[1].split("\n## ", 1)[0]
    for pattern in STRICT_MODULES:
        assert f"`{pattern}`" in types, pattern


def test_strict_modules_pass_mypy_strict(tmp_path: Path) -> None:
    args = [arg for pattern in STRICT_MODULES for arg in _mypy_targets(pattern)]
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "", "--strict"]
        + ["--ignore-missing-imports", "--follow-imports", "silent"]
        + ["--cache-dir", str(tmp_path), *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert run.returncode == 0, run.stdout + run.stderr
