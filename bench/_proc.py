"""Child-process plumbing for benchmarks.

Parent side: :class:`Child` starts ``python -m ...`` with piped output, feeds its
stdout lines to a queue from a reader thread (no select() on buffered pipes),
keeps a tail of stderr, and kills the child by its pid. Every child still alive
is killed at interpreter exit.

Child side: :func:`die_with_parent` (SIGKILL when the parent dies, Linux) and
:func:`pin_to` (CPU affinity). Its own, not ``zcell.cli.daemon.die_with_parent``:
the peers' children (Celery, Dramatiq, zerorpc, Ray) must not import zcell.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the directory holding bench/

_EOF = object()
_live: dict[int, subprocess.Popen[str]] = {}
_live_lock = threading.Lock()


class ChildError(RuntimeError):
    """A child exited, misbehaved or missed a deadline."""


class Child:
    """A benchmark child process: ``sys.executable -m module *args``."""

    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        full_env = dict(os.environ if env is None else env)
        path = full_env.get("PYTHONPATH")
        full_env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
        argv = [sys.executable, "-m", module, *args, "--parent", str(os.getpid())]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        with _live_lock:
            _live[self.pid] = self.proc
        self._lines: queue.Queue[object] = queue.Queue()
        self._err: collections.deque[str] = collections.deque(maxlen=40)
        self._threads = [
            threading.Thread(target=self._pump_out, name=f"{name}-out", daemon=True),
            threading.Thread(target=self._pump_err, name=f"{name}-err", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(_EOF)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line.rstrip("\n"))

    def stderr_tail(self) -> str:
        return "\n".join(self._err)

    def readline(self, timeout: float) -> str:
        """The next stdout line; ChildError on EOF or when *timeout* (s) passes."""
        try:
            item = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise ChildError(
                f"{self.name} (pid {self.pid}): no output within {timeout:.1f}s\n"
                + self.stderr_tail()
            ) from None
        if item is _EOF:
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                rc = None
            for t in self._threads:
                t.join(timeout=1)
            raise ChildError(
                f"{self.name} (pid {self.pid}) exited with {rc}\n" + self.stderr_tail()
            )
        assert isinstance(item, str)
        return item

    def kill(self) -> None:
        """SIGKILL this child (by its pid) if it still runs, and reap it."""
        _kill(self.proc)
        for t in self._threads:
            t.join(timeout=2)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    with _live_lock:
        _live.pop(proc.pid, None)


@atexit.register
def _kill_all() -> None:
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        _kill(proc)


def spawn_zcell(args: Sequence[str]) -> subprocess.Popen[str]:
    """``python -m zcell *args`` from the directory holding bench/ (its zcell), its
    output and errors on one text pipe, in a session of its own, killed when this
    process dies however it ends. The caller reads the pipe and kills the group."""
    parent = os.getpid()
    return subprocess.Popen(
        [sys.executable, "-m", "zcell", *args], cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, preexec_fn=lambda: die_with_parent(parent),
    )  # fmt: skip


def die_with_parent(parent_pid: int | None) -> None:
    """Child side: get SIGKILLed when the parent dies; exit now if it already has."""
    if parent_pid is None:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(3)


def pin_to(cpu: int | None) -> list[int]:
    """Pin this process to *cpu* (if given); return its affinity afterwards."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))
