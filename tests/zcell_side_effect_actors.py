"""An actor module whose import leaves a visible trace (for tests/test_hostile.py).

Importing it appends this process's pid to the file named by the environment
variable ``ZCELL_TEST_IMPORT_MARKER`` (when set), so a test can tell whether a
node process ever imported it. Nothing else in the suite imports it.
"""

from __future__ import annotations

import os

from zcell import Actor

MARKER_ENV = "ZCELL_TEST_IMPORT_MARKER"

_marker = os.environ.get(MARKER_ENV)
if _marker:
    with open(_marker, "a", encoding="utf-8") as _f:
        _f.write(f"imported by {os.getpid()}\n")


class Intruder(Actor):
    class state(Actor.state):
        def hello(self) -> str:
            return "this code should never have been imported by the target"
