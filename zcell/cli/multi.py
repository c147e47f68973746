"""``zcell multi``: start, stop and restart background workers, as ``celery multi``.

``zcell multi start w1 w2 -A proj -Q:1 images -Q default`` starts one ``zcell
worker`` per name (or ``3``: ``zcell1..zcell3``), each in a session of its own with
its output in a log file, and returns; each worker holds its pid file, which the
other actions read. The argument syntax is Celery's: short options take the next
word as value (``-Q images``), long ones need ``=`` (``--loglevel=debug``), and
``-OPT:SELECTOR`` gives an option to some workers only, a selector being a name,
an index (1-based), a range ``1-3`` or a list ``4,5``. Everything that is not
multi's own (``--pidfile``, ``--logfile``, ``--range-prefix``, ``--timeout``) is
passed on to each worker.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .common import UsageError, add_command, lines
from .daemon import alive, expand, nodename, read_pid, running_pid

if TYPE_CHECKING:
    from .common import Subcommands

#: Celery's defaults, in the current directory.
DEFAULT_PIDFILE = "%n.pid"
DEFAULT_LOGFILE = "%n%I.log"
#: ``zcell multi start 3`` names its workers zcell1..zcell3.
DEFAULT_PREFIX = "zcell"
#: Seconds ``start`` waits for a worker to write its pid file (or to fail).
START_TIMEOUT = 15.0
#: Default bound, in seconds, on ``stopwait`` (a worker lets its tasks finish first).
STOPWAIT_TIMEOUT = 60.0
#: multi's own options, not passed on to the workers.
OWN = ("--pidfile", "--logfile", "--range-prefix", "--timeout")
ACTIONS = ("start", "restart", "stop", "stopwait", "kill", "show", "names")

Options = dict[str, str | None]


def register(sub: Subcommands) -> None:
    """Add ``zcell multi``."""
    multi = add_command(
        sub,
        "multi",
        "start, stop or restart background workers with pid and log files (as celery multi)",
        [
            "zcell multi start w1 w2 -A proj -l info",
            "zcell multi start 5 -A proj -Q:1-3 images,video -Q:4,5 data -Q default",
            "zcell multi stopwait w1 w2 --pidfile=/var/run/zcell/%n.pid",
            "zcell multi restart w1 w2 -A proj --logfile=/var/log/zcell/%n%I.log",
        ],
        run_multi,
    )
    multi.add_argument("action", choices=ACTIONS)
    multi.add_argument(
        "words", nargs=argparse.REMAINDER, metavar="NAMES|N [OPTIONS]",
        help="worker names or a count, then options: multi's --pidfile=%%n.pid, "
        "--logfile=%%n%%I.log, --range-prefix=zcell, --timeout=S (stopwait), the rest "
        "for each `zcell worker`; -OPT:SELECTOR VALUE for some workers only",
    )  # fmt: skip


# --------------------------------------------------------------------------- parsing


@dataclass
class Parsed:
    """The words of a ``zcell multi`` command line, as Celery's parser reads them."""

    names: list[str] = field(default_factory=list)
    options: Options = field(default_factory=dict)
    selected: list[tuple[str, Options]] = field(default_factory=list)  # (selector, options)

    def add(self, option: str, value: str | None) -> None:
        name, colon, selector = option.partition(":")
        if not colon:
            self.options[name] = value
        elif selector:
            self.selected.append((selector, {name: value}))
        else:
            raise UsageError(f"{option}: name the workers after the colon (-Q:1-3 q1)")


def parse(words: Sequence[str]) -> Parsed:
    """Celery's rules: a short option takes the next word unless it starts with
    ``-``; a long one takes a value only after ``=``; other words are names."""
    parsed = Parsed()
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            option, eq, value = word.partition("=")
            parsed.add(option, value if eq else None)
        elif word.startswith("-") and len(word) > 1:
            takes = i + 1 < len(words) and not words[i + 1].startswith("-")
            parsed.add(word, words[i + 1] if takes else None)
            i += takes
        else:
            parsed.names.append(word)
        i += 1
    return parsed


def _selects(selector: str, index: int, name: str) -> bool:
    """Whether ``-OPT:selector`` is for worker ``index`` (1-based) named ``name``."""
    for part in selector.split(","):
        bounds = re.fullmatch(r"(\d+)-(\d+)", part)
        if bounds and int(bounds[1]) <= index <= int(bounds[2]):
            return True
        if part == str(index) or part in (name, name.partition("@")[0]):
            return True
    return False


@dataclass
class Spec:
    """One worker of the command line: its node name, files and ``zcell`` argv."""

    name: str
    pidfile: str
    logfile: str
    argv: list[str]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "zcell", *self.argv]


def specs(words: Sequence[str]) -> list[Spec]:
    """The workers ``words`` describe, each with its own options."""
    parsed = parse(words)
    prefix = parsed.options.get("--range-prefix") or DEFAULT_PREFIX
    names = parsed.names
    if len(names) == 1 and names[0].isdigit():
        names = [f"{prefix}{i}" for i in range(1, int(names[0]) + 1)]
    if not names:
        raise UsageError("name the workers (zcell multi start w1 w2 ...) or give a count")
    return [_spec(parsed, index, nodename(name)) for index, name in enumerate(names, 1)]


def _spec(parsed: Parsed, index: int, name: str) -> Spec:
    options = dict(parsed.options)
    for selector, chosen in parsed.selected:
        if _selects(selector, index, name):
            options.update(chosen)
    pidfile = expand(options.get("--pidfile") or DEFAULT_PIDFILE, name)
    logfile = expand(options.get("--logfile") or DEFAULT_LOGFILE, name)  # %I: the worker's
    argv = ["worker"]
    for option, value in options.items():
        if option in OWN:
            continue
        if value is None:
            argv.append(option)
        else:
            argv += [f"{option}={value}"] if option.startswith("--") else [option, value]
    argv += ["-n", name, f"--pidfile={pidfile}", f"--logfile={logfile}"]
    return Spec(name, pidfile, logfile, argv)


# --------------------------------------------------------------------------- actions


def run_multi(args: argparse.Namespace) -> int:
    """Run one action over every worker named; exit code 1 when one failed."""
    workers = specs(args.words)
    parsed = parse(args.words)
    timeout = _timeout(parsed.options.get("--timeout"))
    actions: dict[str, Callable[[list[Spec]], bool]] = {
        "start": start,
        "stop": lambda ws: signal_all(ws, signal.SIGTERM),
        "stopwait": lambda ws: stopwait(ws, timeout),
        "kill": lambda ws: signal_all(ws, signal.SIGKILL),
        "restart": lambda ws: stopwait(ws, timeout) and start(ws),
        "show": lambda ws: _print(shlex.join(w.command()) for w in ws),
        "names": lambda ws: _print(w.name for w in ws),
    }
    return 0 if actions[args.action](workers) else 1


def _timeout(text: str | None) -> float:
    try:
        return float(text) if text else STOPWAIT_TIMEOUT
    except ValueError as exc:
        raise UsageError(f"--timeout must be a number of seconds, not {text!r}") from exc


def _print(items: Iterable[str]) -> bool:
    lines(*items)
    return True


def start(workers: list[Spec]) -> bool:
    """Start each worker that is not running; True when all of them run."""
    ok = True
    for worker in workers:
        pid = running_pid(worker.pidfile)
        if pid is not None:
            lines(f"{worker.name}: already running (pid {pid}, {worker.pidfile}): not started")
            ok = False
            continue
        ok = _start(worker) and ok
    return ok


def _start(worker: Spec) -> bool:
    """Start one worker in the background; wait (bounded) until it holds its pid file."""
    logfile = expand(worker.logfile, worker.name, "")
    try:
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                worker.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,  # no terminal: a daemon
            )  # fmt: skip
    except OSError as exc:
        lines(f"{worker.name}: FAILED to start: {exc}")
        return False
    deadline = time.monotonic() + START_TIMEOUT
    while read_pid(worker.pidfile) != proc.pid and proc.poll() is None:
        if time.monotonic() > deadline:
            lines(
                f"{worker.name}: no pid file after {START_TIMEOUT:g}s (pid {proc.pid}); see {logfile}"
            )
            return False
        time.sleep(0.02)
    if proc.poll() is not None:
        lines(f"{worker.name}: FAILED (exit code {proc.returncode}); see {logfile}")
        return False
    lines(f"{worker.name}: started (pid {proc.pid}, log {logfile})")
    return True


def signal_all(workers: list[Spec], signum: int) -> bool:
    """Send ``signum`` to each running worker; a stale pid file is removed."""
    for worker in workers:
        pid = running_pid(worker.pidfile)
        if pid is None:
            _not_running(worker)
            continue
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            _not_running(worker)
            continue
        lines(f"{worker.name}: {signal.Signals(signum).name} sent (pid {pid})")
    return True


def _not_running(worker: Spec) -> None:
    if os.path.exists(worker.pidfile):
        os.unlink(worker.pidfile)
        lines(f"{worker.name}: not running (stale pid file {worker.pidfile} removed)")
    else:
        lines(f"{worker.name}: not running")


def stopwait(workers: list[Spec], timeout: float) -> bool:
    """SIGTERM, then wait until each worker has exited: its running tasks and
    handlers finished first (the worker's graceful stop). False after ``timeout``."""
    pids = {w.name: running_pid(w.pidfile) for w in workers}
    signal_all(workers, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = {name: pid for name, pid in pids.items() if pid is not None}
    while waiting and time.monotonic() < deadline:
        for name, pid in list(waiting.items()):
            if not alive(pid):
                lines(f"{name}: stopped")
                del waiting[name]
        time.sleep(0.05)
    for name, pid in waiting.items():
        lines(f"{name}: still running after {timeout:g}s (pid {pid}); `zcell multi kill` ends it")
    return not waiting
