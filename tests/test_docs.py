"""The documentation site builds, its reference covers the public surface, and the
guides' code runs.

The site is built strictly (a broken reference, link or snippet is an error), as
``.ci/run`` does; without MkDocs installed (``pip install -e '.[docs]'``) that test
is skipped. Code blocks of the guides are of three kinds, by their fence:

- ```` ```python ```` whose lines are all ``--8<--`` includes: parts of examples/,
  which test_examples.py runs;
- ```` ```python {.fragment} ````: needs context the guide gives in prose; compiled only;
- any other ```` ```python ````: self-contained; run as a script, in a cluster of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, SLOW, run_block

import zcell

DOCS = os.path.join(ROOT, "docs")
#: The guides whose code blocks this module runs (the other pages are reference).
GUIDES = ("index.md", "actors.md", "canvas.md")
FENCE = re.compile(r"^```python(?: (\{\.fragment\}))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(kind: str) -> list[tuple[str, str]]:
    """(page:line, code) of the guides' Python blocks of one kind (see the docstring)."""
    found = []
    for page in GUIDES:
        with open(os.path.join(DOCS, page), encoding="utf-8") as f:
            text = f.read()
        for m in FENCE.finditer(text):
            code = m.group(2)
            include = all(line.startswith("--8<--") for line in code.splitlines())
            block_kind = "fragment" if m.group(1) else "include" if include else "script"
            if block_kind == kind:
                found.append((f"{page}:{text.count(chr(10), 0, m.start()) + 1}", code))
    return found


def where_ids(kind: str) -> list[str]:
    return [where for where, _ in python_blocks(kind)]


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60 * SLOW,
    )
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "reference" / "index.html", encoding="utf-8") as f:
        reference = f.read()
    # Signatures and docstrings rendered, not just headings.
    assert "wait_for" in reference and "not reached within" in reference


def test_the_reference_documents_every_public_name():
    with open(os.path.join(DOCS, "reference.md"), encoding="utf-8") as f:
        reference = f.read()
    documented = set(re.findall(r"^::: zcell\.(\w+)$", reference, re.MULTILINE))
    aliases = {name for name in zcell.__all__ if name not in documented and name in reference}
    assert documented | aliases == set(zcell.__all__)
    assert aliases == {"NoReplyError"}  # another name for CallTimeout, said in prose


def test_the_guides_have_code_of_each_kind():
    assert python_blocks("include") and python_blocks("fragment") and python_blocks("script")


@pytest.mark.parametrize("where,code", python_blocks("script"), ids=where_ids("script"))
def test_a_guide_script_runs(where, code, tmp_path):
    done = run_block(code, tmp_path)
    assert done.returncode == 0, f"{where}:\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("where,code", python_blocks("fragment"), ids=where_ids("fragment"))
def test_a_guide_fragment_compiles(where, code):
    compile(code, where, "exec")
