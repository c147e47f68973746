"""What a worker running in the background needs: pid files, a log file that
logrotate can rotate (reopened on SIGHUP), Celery's ``%n``/``%h``/``%I``
expansion of their paths, and a child that ends with the process that started it.

Shared by ``zcell worker`` (its ``--pidfile`` and ``--logfile``, added by
``supervise.worker_options``), the ``--processes`` supervisor (``supervise.py``)
and ``zcell multi`` (``multi.py``); ``die_with_parent`` by the supervisor's
children and the demo's nodes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Iterator

from .common import Failure, UsageError

# --------------------------------------------------------------------------- names and paths


def nodename(name: str) -> str:
    """``w1`` -> ``w1@<hostname>``, as Celery names its nodes (a full name is kept)."""
    return name if "@" in name else f"{name}@{socket.gethostname()}"


def expand(template: str, name: str, index: str | None = None) -> str:
    """Celery's node format: ``%h`` the full node name, ``%n`` its part before
    ``@``, ``%d`` the part after it, ``%i``/``%I`` the ``--processes`` child index
    (``%I`` is ``-N`` in a child and empty elsewhere); ``%%`` is a ``%``.

    With ``index=None`` the ``%i``/``%I`` are left for the worker to expand, as
    ``zcell multi`` does (only the worker knows whether it is a child)."""
    short, _, domain = name.partition("@")
    table = {"h": name, "n": short, "d": domain or socket.gethostname()}
    if index is not None:
        table.update(i=index or "0", I=f"-{index}" if index else "")
    out, i = [], 0
    while i < len(template):
        code = template[i + 1] if template[i] == "%" and i + 1 < len(template) else ""
        if code == "%" and index is not None:
            out.append("%")
        elif code in table:
            out.append(table[code])
        else:
            out.append(template[i : i + 2] if code else template[i])
        i += 2 if code else 1
    return "".join(out)


# --------------------------------------------------------------------------- pid files


def read_pid(path: str) -> int | None:
    """The pid a pid file holds (None: no file, or not a pid)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:  # no /proc: kill(0) is all we know
        return True


def running_pid(path: str) -> int | None:
    """The pid of the live process ``path`` names; None when the file is absent or stale."""
    pid = read_pid(path)
    return pid if pid is not None and alive(pid) else None


@contextlib.contextmanager
def pidfile(path: str | None) -> Iterator[None]:
    """Hold ``path`` (this process's pid in it) while the block runs.

    A live pid file refuses the start (``Failure``, exit code 1); a stale one (its
    process died without removing it: SIGKILL, power loss) is replaced. The file is
    removed at the end only while it still holds our pid."""
    if not path:
        yield
        return
    pid = running_pid(path)
    if pid is not None and pid != os.getpid():
        raise Failure(
            f"pid file {path} says a worker runs as pid {pid}: stop it first "
            "(zcell multi stop, or kill it), or choose another --pidfile"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # stale
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:  # another worker started at the same moment
        raise Failure(f"pid file {path} was created by another process: {exc}") from exc
    except OSError as exc:
        raise UsageError(f"cannot write --pidfile {path}: {exc}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        if read_pid(path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(path)


# --------------------------------------------------------------------------- log files


def log_to(path: str | None) -> None:
    """Send this process's stdout and stderr (banner, logging, tracebacks) to
    ``path``, appending, and reopen it on SIGHUP: after logrotate moved the file, the
    next line goes to a new one at ``path``.

    At the file-descriptor level, so that whatever holds ``sys.stderr`` (logging's
    handler, C extensions, a crash's traceback) follows the reopened file."""
    if not path:
        return
    reopen_log(path)

    def on_sighup(signum: int, frame: object) -> None:
        reopen_log(path)

    signal.signal(signal.SIGHUP, on_sighup)


def reopen_log(path: str) -> None:
    """Point stdout and stderr at ``path`` (appending), a new file if it was moved."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot open --logfile {path}: {exc}") from exc
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def die_with_parent(parent: int, signum: int) -> None:  # pragma: no cover - in the child
    """In a child before exec (``preexec_fn``): be sent ``signum`` when the process
    ``parent`` that started it dies (Linux); if it died before this ran, no signal
    would come, so the child ends here. Elsewhere the child outlives a killed parent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
