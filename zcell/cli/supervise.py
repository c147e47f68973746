"""``zcell worker --processes P``: P worker processes under one supervisor.

A node is one process and, for Python code, one core; a host with P cores runs P
nodes. The supervisor runs no node and imports no app: it starts P children, each
``zcell worker`` with the same arguments and a name of its own (``<name>-1`` ...
``<name>-P``), so the mesh sees P consumers. It restarts a child that dies (after
a backoff that doubles while children keep dying young), forwards SIGTERM, SIGINT
and SIGHUP to them, and exits once they have all stopped.

Each child runs in a process group of its own, so that a Ctrl-C in the terminal
reaches it once (through the supervisor), not twice (a second signal forces a
worker out without letting its tasks finish); and it is sent SIGTERM by the kernel
if the supervisor dies, so no child outlives it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .common import Command, UsageError, lines
from .daemon import die_with_parent, expand, log_to, nodename, pidfile, reopen_log

log = logging.getLogger(__name__)

#: Seconds before the first restart of a child; doubled per young death, up to the max.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A child that ran this long before dying was healthy: its backoff starts over.
STABLE_AFTER = 10.0
#: Seconds between two looks at the children.
TICK = 0.05
#: A child's exit code that no restart can mend (a usage error): everything stops.
USAGE_ERROR = 2


@dataclass
class Child:
    """One worker process and its restart state."""

    index: int
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    young_deaths: int = 0
    restart_at: float | None = field(default=0.0)  # None: not to be (re)started


class Supervisor:
    """Starts, watches, restarts and signals the children of one ``zcell worker``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = args.name or f"{socket.gethostname()}-{os.getpid()}"
        self.children = [Child(i) for i in range(1, args.processes + 1)]
        self.signals: list[int] = []
        self.stopping = False
        self.code = 0

    def run(self) -> int:
        """Supervise until every child has stopped; the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda signum, frame: self.signals.append(signum))
        self._banner()
        while not (self.stopping and not self._running()):
            self._handle_signals()
            for child in self.children:
                self._watch(child)
            time.sleep(TICK)
        lines(f"zcell worker {self.base}: all {len(self.children)} processes stopped")
        return self.code

    def _running(self) -> list[Child]:
        return [c for c in self.children if c.popen is not None and c.popen.poll() is None]

    def _handle_signals(self) -> None:
        """Signals are only queued by the handler and sent on from here: no signal
        handler re-enters the loop while it starts a child."""
        while self.signals:
            signum = self.signals.pop(0)
            logfile = self._logfile("")
            if signum == signal.SIGHUP:
                if logfile:
                    reopen_log(logfile)
            else:
                self._stop()
            for child in self._running():
                assert child.popen is not None
                child.popen.send_signal(signum)

    def _stop(self) -> None:
        self.stopping = True
        for child in self.children:
            child.restart_at = None

    def _watch(self, child: Child) -> None:
        """Start a child that is due; note one that died and plan its restart."""
        now = time.monotonic()
        if child.popen is None or child.popen.poll() is not None:
            if child.popen is not None and child.restart_at == 0.0:
                self._died(child, child.popen.returncode, now)
            elif child.restart_at is not None and now >= child.restart_at:
                self._spawn(child, now)

    def _died(self, child: Child, code: int, now: float) -> None:
        if code == USAGE_ERROR:
            log.error("%s exited with a usage error: stopping all", self._name(child))
            self.code = USAGE_ERROR
            self._stop()
            self.signals.append(signal.SIGTERM)
            return
        lived = now - child.started
        child.young_deaths = 0 if lived >= STABLE_AFTER else child.young_deaths + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(child.young_deaths - 1, 0))
        child.restart_at = now + delay
        log.warning(
            "%s (pid %s) exited with code %s after %.1fs: restarting it in %gs",
            self._name(child), child.popen.pid if child.popen else "?", code, lived, delay,
        )  # fmt: skip

    def _spawn(self, child: Child, now: float) -> None:
        argv = [sys.executable, "-m", "zcell", *self.args.argv, "--processes=1", "--pidfile="]
        argv += ["-n", self._name(child)]
        logfile = self._logfile(str(child.index))
        if logfile:
            argv.append(f"--logfile={logfile}")
        supervisor = os.getpid()
        child.popen = subprocess.Popen(
            argv, process_group=0, preexec_fn=lambda: die_with_parent(supervisor, signal.SIGTERM)
        )
        child.started, child.restart_at = now, 0.0

    def _name(self, child: Child) -> str:
        """``w1-2`` for child 2 of ``w1``; ``w1-2@host`` for child 2 of ``w1@host``."""
        short, at, host = self.base.partition("@")
        return f"{short}-{child.index}{at}{host}"

    def _logfile(self, index: str) -> str | None:
        """The ``--logfile`` with ``%I`` as ``-N`` for child N, empty for the supervisor."""
        path = self.args.logfile
        return expand(path, nodename(self.base), index) if path else None

    def _banner(self) -> None:
        names = [self._name(c) for c in self.children]
        if self.args.json:
            banner = {"event": "supervising", "pid": os.getpid(), "processes": names}
            lines(json.dumps(banner))
        else:
            lines(f"zcell worker {self.base} (supervisor pid {os.getpid()}): {', '.join(names)}")


def supervise(args: argparse.Namespace) -> int:
    """Run ``zcell worker --processes P`` (P > 1): the supervisor, until all children stop."""
    logging.basicConfig(
        level=getattr(logging, args.loglevel.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    supervisor = Supervisor(args)
    log_to(supervisor._logfile(""))
    name = nodename(supervisor.base)
    with pidfile(expand(args.pidfile, name, "") if args.pidfile else None):
        return supervisor.run()


# --------------------------------------------------------------------------- zcell worker


def worker_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--processes``, ``--pidfile`` and ``--logfile`` to ``zcell worker``, and
    wrap the command it runs: P > 1 hands over to the supervisor; otherwise the pid
    file is held and the log file opened around the worker."""
    group = parser.add_argument_group("running in the background")
    group.add_argument(
        "--processes", type=int, default=1, metavar="P",
        help="run P worker processes (nodes <name>-1..P) under one supervisor that "
        "restarts a child that dies (default 1: this process is the worker)",
    )  # fmt: skip
    group.add_argument(
        "--pidfile", metavar="FILE",
        help="write the pid here; a live pid file refuses the start (%%n, %%h expand)",
    )  # fmt: skip
    group.add_argument(
        "--logfile", metavar="FILE",
        help="append output and logs here, reopened on SIGHUP (%%n, %%h, %%I expand)",
    )  # fmt: skip
    parser.set_defaults(run=_daemonised(parser.get_default("run")))


def _daemonised(run: Command) -> Command:
    def run_worker(args: argparse.Namespace) -> int:
        if args.processes < 1:
            raise UsageError("--processes must be at least 1")
        if args.processes > 1:
            return supervise(args)
        # A --processes child gets its paths expanded by the supervisor (%I: -N).
        name = nodename(args.name) if args.name else socket.gethostname()
        pid_path = expand(args.pidfile, name, "") if args.pidfile else None
        log_to(expand(args.logfile, name, "") if args.logfile else None)
        with pidfile(pid_path):
            return run(args)

    return run_worker
