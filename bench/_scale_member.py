"""A ``zcell node`` that also prints its membership events with a monotonic clock.

    python -m bench._scale_member <zcell node arguments>

Runs the CLI's own ``zcell node`` (so it monkey-patches as a user's node does) and
prints ``@<time.monotonic()> ready|joined|down <name>`` lines, for :mod:`bench.scale`
to time convergence and detection on the clock every namespace shares (the
machine's CLOCK_MONOTONIC), without the delay of the parent reading a pipe.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time

# The node's own log lines (zcell/_mesh/membership.py): "zcell: <name> joined (...)",
# "zcell: <name> is down (<reason>)".
_EVENT = re.compile(r"^zcell: (\S+) (joined|is down) \((.*)\)$")
_OUT = threading.Lock()  # the node's loop and the main thread both report


def _report(what: str) -> None:
    """One whole ``@<monotonic> <what>`` line (print() may interleave threads)."""
    with _OUT:
        sys.stdout.write(f"@{time.monotonic():.6f} {what}\n")
        sys.stdout.flush()


class _Events(logging.Handler):
    """Turn the membership log lines into timestamped event lines on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        m = _EVENT.match(record.getMessage())
        if m is not None:
            kind = "joined" if m.group(2) == "joined" else "down"
            _report(f"{kind} {m.group(1)} {m.group(3)}")


def main(argv: list[str]) -> int:
    """Run ``zcell node`` with *argv*, reporting events and the moment it is ready."""
    logger = logging.getLogger("zcell")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Events())
    from zcell.cli import main as zcell_main
    from zcell.cli import node as cli_node

    banner = cli_node._banner

    def banner_then_ready(*args: object) -> None:
        banner(*args)  # type: ignore[arg-type]
        _report("ready")

    cli_node._banner = banner_then_ready  # type: ignore[assignment]
    return zcell_main(["node", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
