"""``zcell events``: the mesh's events, as lines (``--dump``) or a live view.

A one-shot client that subscribes (``zcell.monitor.EventStream``) and either
prints a line per event (``--dump``; ``--json``: one object per line) or keeps
a `zcell.monitor.State` and redraws a live view in place (workers, running
tasks, recent tasks, rates) with ``rich``. Runs until Ctrl-C/SIGTERM or
``--duration``. Nodes publish only with events enabled (``zcell worker -E`` or
``zcell control enable_events``).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .common import add_command, join, jsonable, lines
from .inspect import app_client, mesh_options_with_app

if TYPE_CHECKING:
    from rich.console import RenderableType

    from zcell import Node
    from zcell.monitor import EventStream, State

    from .common import Subcommands

__all__ = ["register", "render"]

#: Redraws of the live view per second.
REFRESH_PER_SECOND = 4
#: Finished tasks the live view lists under the running ones.
RECENT_TASKS = 10


def register(sub: Subcommands) -> None:
    """Add ``zcell events``."""
    events = add_command(
        sub,
        "events",
        "watch the mesh's events: a live view of workers and tasks, or --dump lines",
        [
            "zcell events",
            "zcell events --dump --json",
            "zcell -A proj events --dump --types task-failed,task-retried",
        ],
        app_client(cmd_events),
    )
    events.add_argument("--dump", action="store_true", help="print a line per event")
    events.add_argument("--types", metavar="T1,T2", help="only these event types")
    events.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    mesh_options_with_app(events)


def cmd_events(node: Node, args: argparse.Namespace) -> int:
    """Subscribe, then dump or show events until stopped."""
    from zcell.monitor import EventStream

    join(node, args, settle=False)
    types = [t for t in (args.types or "").split(",") if t] or None
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    end = None if args.duration is None else time.monotonic() + args.duration
    with EventStream(node, types) as stream:
        try:
            if args.dump:
                _dump(stream, args.json, stop, end)
            else:
                _live(stream, stop, end)
        except KeyboardInterrupt:
            pass
    return 0


def _running(stop: list[int], end: float | None) -> bool:
    return not stop and (end is None or time.monotonic() < end)


def _dump(stream: EventStream, as_json: bool, stop: list[int], end: float | None) -> None:
    while _running(stop, end):
        event = stream.next(0.2)
        if event is not None:
            lines(json.dumps(jsonable(event)) if as_json else _line(event))


def _line(event: dict[str, Any]) -> str:
    """``time hostname type key=value ...`` for one event."""
    stamp = datetime.fromtimestamp(float(event.get("timestamp") or 0)).strftime("%H:%M:%S.%f")
    skip = {"type", "hostname", "timestamp", "clock", "pid", "traceback"}
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip and v is not None)
    return f"{stamp[:-3]} {event.get('hostname')} {event.get('type')} {rest}".rstrip()


def _live(stream: EventStream, stop: list[int], end: float | None) -> None:
    from rich.live import Live

    from zcell.monitor import State

    state = State()
    with Live(render(state), refresh_per_second=REFRESH_PER_SECOND, screen=False) as live:
        last = 0.0
        while _running(stop, end):
            event = stream.next(1.0 / REFRESH_PER_SECOND)
            while event is not None:
                state.event(event)
                event = stream.next(0)
            if time.monotonic() - last >= 1.0 / REFRESH_PER_SECOND:
                live.update(render(state))
                last = time.monotonic()


def render(state: State, now: float | None = None) -> RenderableType:
    """The live view of ``state``: workers, running tasks, recent tasks, rates."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    workers = Table(title="workers", expand=True)
    for column in ("worker", "status", "active", "processed", "load", "heartbeat"):
        workers.add_column(column)
    for w in state.workers.values():
        seen = f"{now - w.last_heartbeat:.0f}s ago" if w.last_heartbeat else "-"
        load = " ".join(f"{x:.2f}" for x in w.loadavg) or "-"
        status = "online" if w.alive(now) else "offline"
        workers.add_row(w.hostname, status, str(w.active), str(w.processed), load, seen)
    running = Table(title="running tasks", expand=True)
    for column in ("id", "task", "worker", "runtime", "args"):
        running.add_column(column)
    for t in state.running():
        took = f"{now - t.started:.1f}s" if t.started else "-"
        running.add_row(t.uuid, t.name or "?", t.hostname or "?", took, str(t.args or ""))
    recent = Table(title="recent tasks", expand=True)
    for column in ("id", "task", "state", "worker", "runtime"):
        recent.add_column(column)
    done = [t for t in state.tasks.values() if t.state != "STARTED"][-RECENT_TASKS:]
    for t in reversed(done):
        took = f"{t.runtime:.3f}s" if isinstance(t.runtime, int | float) else "-"
        recent.add_row(t.uuid, t.name or "?", t.state, t.hostname or "?", took)
    counts = state.counts
    summary = Text(
        f"events: {state.event_count} ({state.rate(now):.1f}/s)   "
        f"succeeded: {counts['task-succeeded']}   failed: {counts['task-failed']}   "
        f"retried: {counts['task-retried']}   Ctrl-C to quit"
    )
    return Group(workers, running, recent, summary)
