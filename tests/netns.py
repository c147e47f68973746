"""Virtual hosts on one machine with Linux network namespaces (stdlib only).

Layout of a :class:`Mesh` of N hosts, all names carrying a per-run prefix such as
``zc1a2b3c-`` so that parallel runs and leftovers never clash::

    <prefix>sw   "switch" namespace: bridge br0 (mcast_snooping 0) with ports p0..pN-1
    <prefix>hI   one namespace per host: lo up, eth0 (veth peer of pI),
                 10.213.<run>.<I+1>/24, fe80::<I+1>/64 (no DAD), route 224.0.0.0/4 dev eth0

The bridge lives in its own namespace, so the root namespace (and its firewall) never
sees the traffic.  ``cut``/``heal`` take a switch port down/up; ``partition`` installs
an nft bridge table in the switch namespace.  ``close`` SIGKILLs the process groups
started through the hosts, then deletes every namespace.

Use::

    with Mesh(3) as mesh:
        p = mesh.hosts[0].popen(["python3", "-m", "zcell", "node"])
        p.wait_for_line(r"ready", timeout=5)
        mesh.cut(1)

or, in pytest, ``mesh3 = mesh_fixture(3)`` in a conftest/test module.
"""

from __future__ import annotations

import atexit
import functools
import os
import queue
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Literal

__all__ = [
    "Host",
    "Mesh",
    "NetnsError",
    "Proc",
    "mesh_fixture",
    "nft_available",
    "probe",
]

CMD_TIMEOUT = 10.0  # bound for every `ip`/`nft` call
KILL_WAIT = 3.0  # how long close() waits for killed processes, in total
_NAME_OK = re.compile(r"[A-Za-z0-9_.-]{1,40}\Z")
_HAVE_IPV6 = os.path.isdir("/proc/sys/net/ipv6")
_EOF = object()


class NetnsError(RuntimeError):
    """An `ip`/`nft` command failed while building or changing a mesh."""


def _run(
    argv: list[str], *, input: str | None = None, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess:
    """Run a helper command, bounded in time; raise NetnsError on failure."""
    try:
        cp = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    except OSError as e:
        raise NetnsError(f"cannot run {argv[0]}: {e}") from e
    if cp.returncode != 0:
        what = " ".join(argv)
        if input:
            what += " <<EOF\n" + input + "EOF"
        raise NetnsError(f"exit {cp.returncode}: {what}\n{(cp.stderr or cp.stdout).strip()}")
    return cp


def _batch(lines: Iterable[str], *, ns: str | None = None, force: bool = False) -> None:
    """Run several `ip` commands in one process (`ip [-n ns] -batch -`)."""
    argv = ["ip"]
    if ns is not None:
        argv += ["-n", ns]
    if force:
        argv.append("-force")
    argv += ["-batch", "-"]
    _run(argv, input="".join(line + "\n" for line in lines))


def netns_list() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids_in_netns(names: Iterable[str]) -> dict[str, list[int]]:
    """Pids of processes living in each named namespace (scans /proc, kills nothing)."""
    inodes: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(f"/run/netns/{name}")
        except OSError:
            continue
        inodes[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {}
    if not inodes:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        owner = inodes.get((st.st_dev, st.st_ino))
        if owner is not None and not _is_zombie(int(entry)):
            found.setdefault(owner, []).append(int(entry))
    return found


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


# --------------------------------------------------------------------------- probes


def _probe_ns_ops(name: str, steps: list[tuple[str, list[str], str | None]]) -> str | None:
    """Create namespace `name`, run `steps`, always delete it. Return a reason or None."""
    try:
        _run(["ip", "netns", "add", name])
    except NetnsError as e:
        return f"cannot create a network namespace: {e}"
    try:
        for what, argv, stdin in steps:
            try:
                _run(argv, input=stdin)
            except NetnsError as e:
                return f"cannot {what}: {e}"
        return None
    finally:
        try:
            _run(["ip", "netns", "del", name])
        except NetnsError:
            pass


def _probe_name() -> str:
    return f"zcprobe-{os.getpid()}-{secrets.token_hex(3)}"


@functools.cache
def probe() -> str | None:
    """None when network namespaces work here, else the reason why not (cached)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (euid is not 0)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = _probe_name()
    ipn = ["ip", "-n", name]
    steps: list[tuple[str, list[str], str | None]] = [
        (
            "create a bridge",
            ipn + ["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"],
            None,
        ),
        ("create a veth pair", ipn + ["link", "add", "v0", "type", "veth", "peer", "v1"], None),
        ("attach a veth to a bridge", ipn + ["link", "set", "v0", "master", "br0"], None),
        ("bring links up", ipn + ["link", "set", "br0", "up"], None),
        ("run a command in a namespace", ["ip", "netns", "exec", name, "true"], None),
    ]
    reason = _probe_ns_ops(name, steps)
    if reason is None and name in netns_list():
        return f"cannot delete the probe namespace {name}"
    return reason


def _nft_ruleset(pairs: Iterable[tuple[int, int]]) -> str:
    rules = "".join(
        f'    iifname "p{a}" oifname "p{b}" drop\n    iifname "p{b}" oifname "p{a}" drop\n'
        for a, b in sorted(pairs)
    )
    # "add table; delete table; add table {...}" = replace atomically, in one transaction
    return (
        "table bridge zcell\n"
        "delete table bridge zcell\n"
        "table bridge zcell {\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"{rules}"
        "  }\n"
        "}\n"
    )


@functools.cache
def nft_available() -> str | None:
    """None when nft bridge tables work in a namespace here, else the reason (cached)."""
    reason = probe()
    if reason is not None:
        return reason
    if shutil.which("nft") is None:
        return "the `nft` command is not installed (Debian: apt-get install nftables)"
    name = _probe_name()
    exec_nft = ["ip", "netns", "exec", name, "nft", "-f", "-"]
    return _probe_ns_ops(name, [("load an nft bridge table", exec_nft, _nft_ruleset([(0, 1)]))])


# --------------------------------------------------------------------------- processes


class Proc:
    """A process started in a host, in its own process group; output read by a thread."""

    def __init__(
        self, argv: list[str], host: Host | None, env: dict | None = None, stdin: int | None = None
    ):
        """``host=None`` runs the process on this machine (no namespace)."""
        self.argv = list(argv)
        self.host = host
        full_env = dict(os.environ if env is None else env)
        # Python children write to a pipe: without this their prints sit in a buffer.
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.popen: subprocess.Popen = subprocess.Popen(
            ([] if host is None else ["ip", "netns", "exec", host.ns]) + self.argv,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            env=full_env,
            start_new_session=True,
        )
        self.pid: int = self.popen.pid  # == its process group id
        self._queue: queue.Queue = queue.Queue()
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._cursor = 0  # lines before this were consumed by a wait_for_line match
        self._eof = False
        self._reader = threading.Thread(
            target=self._read, name=f"netns-reader-{self.pid}", daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        return f"<Proc pid={self.pid} host={self.host and self.host.ns} argv={self.argv!r} rc={self.popen.returncode}>"

    def _read(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        try:
            for line in stream:
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._queue.put(_EOF)

    def _drain(self, timeout: float = 0.0) -> None:
        """Move queued output into self._lines, first waiting up to `timeout` for
        something to arrive (the wait is done without holding the lock)."""
        first: list = []
        if timeout > 0:
            try:
                first.append(self._queue.get(timeout=timeout))
            except queue.Empty:
                return
        with self._lock:
            while True:
                if first:
                    item = first.pop()
                else:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        return
                if item is _EOF:
                    self._eof = True
                else:
                    self._lines.append(item)

    def lines(self) -> list[str]:
        """Every output line read so far (stdout and stderr merged, newlines stripped)."""
        self._drain()
        with self._lock:
            return list(self._lines)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def wait_for_line(self, pattern: str | re.Pattern, timeout: float) -> re.Match:
        """Wait for an output line matching `pattern` (re.search) and return the match.

        Lines up to and including the previous match are skipped, so waiting twice for
        the same pattern waits for a second occurrence; lines scanned by a call that
        timed out stay available to the next call.  Raises TimeoutError, with the
        output so far, when `timeout` passes or the process exits without a match.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        i = self._cursor
        while True:
            self._drain()
            with self._lock:
                while i < len(self._lines):
                    m = rx.search(self._lines[i])
                    i += 1
                    if m is not None:
                        self._cursor = i
                        return m
                eof = self._eof
            if eof:
                try:  # EOF comes a moment before the exit status can be reaped
                    self.popen.wait(min(max(deadline - time.monotonic(), 0.01), 1.0))
                except subprocess.TimeoutExpired:  # it closed its output and runs on
                    pass
                why = f"output ended (process exit code {self.popen.returncode})"
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f"no match within {timeout}s"
                break
            self._drain(remaining)
        seen = self.lines()
        tail = seen[-200:]
        err = TimeoutError(
            f"{why}: pattern {rx.pattern!r} from {self!r}; "
            f"output ({len(seen)} lines{', last 200' if len(seen) > 200 else ''}):\n"
            + "\n".join(tail)
        )
        err.output = seen  # type: ignore[attr-defined]
        raise err

    def _signal_group(self, sig: int) -> bool:
        """killpg our own group, unless its id could now belong to someone else."""
        if self.popen.returncode is not None and os.path.exists(f"/proc/{self.pid}"):
            # our leader was reaped and its pid is reused: that group is not ours
            return False
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the process group (e.g. SIGSTOP/SIGCONT to freeze a node)."""
        self._signal_group(sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """os.killpg on this process's own group; reaps it after a SIGKILL."""
        self._signal_group(sig)
        if sig == signal.SIGKILL:
            try:
                self.popen.wait(KILL_WAIT)
            except subprocess.TimeoutExpired:
                pass
            self._close_pipe(1.0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Send `sig` to the group, wait up to `timeout`, then SIGKILL the group."""
        self._signal_group(sig)
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            # a stopped process would not act on it until continued
            self._signal_group(signal.SIGCONT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)
        self._close_pipe(1.0)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; raises subprocess.TimeoutExpired."""
        return self.popen.wait(timeout)

    def _close_pipe(self, timeout: float) -> None:
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        self._reader.join(max(timeout, 0))
        if not self._reader.is_alive() and self.popen.stdout is not None:
            # a child in another session may still hold the pipe: then leave it open
            try:
                self.popen.stdout.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- hosts


class Host:
    """One virtual host: a network namespace with eth0 plugged into the mesh's switch."""

    def __init__(self, mesh: Mesh, index: int, ns: str, address: str, address6: str):
        self.mesh = mesh
        self.index = index
        self.ns = ns
        self.address = address  # IPv4 on eth0, e.g. "10.213.7.2"
        self.address6 = address6  # IPv6 link-local on eth0 (use with scope %eth0)
        self.procs: list[Proc] = []

    def __repr__(self) -> str:
        return f"<Host {self.index} {self.ns} {self.address}>"

    def popen(self, argv: list[str], env: dict | None = None) -> Proc:
        """Start `argv` inside this host in its own process group (killed by close()).
        `env` defaults to os.environ; PYTHONUNBUFFERED=1 is added unless set."""
        if self.mesh.closed:
            raise RuntimeError(f"{self.mesh!r} is closed")
        proc = Proc(argv, self, env)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
        """Run `argv` to completion inside this host and capture stdout/stderr (text).
        On timeout its whole process group is killed and TimeoutExpired is raised."""
        full = ["ip", "netns", "exec", self.ns, *argv]
        p = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            if p.poll() is None:  # leader unreaped, so its group id is still ours
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                out, err = p.communicate(timeout=2)
            except subprocess.TimeoutExpired:  # a grandchild in another session
                p.kill()
                out, err = "", ""
                for stream in (p.stdout, p.stderr):
                    if stream is not None:
                        stream.close()
                p.wait(2)
            raise subprocess.TimeoutExpired(full, timeout, out, err) from None
        return subprocess.CompletedProcess(full, p.returncode, out, err)


# --------------------------------------------------------------------------- mesh

_open_meshes: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_meshes() -> None:
    for mesh in list(_open_meshes):
        mesh.close()


class Mesh:
    """N virtual hosts on one bridge, each in its own network namespace."""

    def __init__(self, n_hosts: int, prefix: str | None = None):
        if not 1 <= n_hosts <= 250:
            raise ValueError("n_hosts must be in 1..250")
        if prefix is None:
            prefix = f"zc{secrets.token_hex(3)}-"
        if not _NAME_OK.match(prefix):
            raise ValueError(f"bad namespace prefix {prefix!r}")
        self.prefix = prefix
        self.switch = f"{prefix}sw"
        octet = random.randrange(256)
        self.subnet = f"10.213.{octet}.0/24"
        self.hosts: list[Host] = [
            Host(self, i, f"{prefix}h{i}", f"10.213.{octet}.{i + 1}", f"fe80::{i + 1:x}")
            for i in range(n_hosts)
        ]
        self.partitions: set[tuple[int, int]] = set()
        self.close_errors: list[str] = []  # what close() could not do (it never raises)
        self.closed = False
        self._started = False

    def __repr__(self) -> str:
        return f"<Mesh {self.prefix}* hosts={len(self.hosts)} {self.subnet}>"

    def __enter__(self) -> Mesh:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _names(self) -> list[str]:
        return [h.ns for h in self.hosts] + [self.switch]

    def _start(self) -> None:
        if self._started:
            raise RuntimeError("a Mesh can be started once")
        clash = sorted(set(netns_list()) & set(self._names()))
        if clash:  # not ours: close() must not delete them, so fail before owning any
            self.closed = True
            raise NetnsError(f"namespaces already exist: {', '.join(clash)}")
        self._started = True
        _open_meshes.add(self)
        try:
            _batch(f"netns add {name}" for name in [self.switch] + [h.ns for h in self.hosts])
            sw = ["link add br0 type bridge mcast_snooping 0", "link set br0 up"]
            for h in self.hosts:
                sw += [
                    f"link add p{h.index} type veth peer name eth0 netns {h.ns}",
                    f"link set p{h.index} master br0",
                    f"link set p{h.index} up",
                ]
            _batch(sw, ns=self.switch)
            for h in self.hosts:
                cmds = ["link set lo up", f"addr add {h.address}/24 dev eth0"]
                if _HAVE_IPV6:
                    # a fixed link-local address without DAD: usable at once, no "tentative"
                    cmds += [
                        "link set eth0 addrgenmode none",
                        f"addr add {h.address6}/64 dev eth0 nodad",
                    ]
                cmds += ["link set eth0 up", "route add 224.0.0.0/4 dev eth0"]
                _batch(cmds, ns=h.ns)
        except BaseException:
            self.close()
            raise

    # -- faults ---------------------------------------------------------------

    def _check(self, i: int) -> None:
        if self.closed or not self._started:
            raise RuntimeError(f"{self!r} is not running")
        if not 0 <= i < len(self.hosts):
            raise IndexError(f"no host {i} in {self!r}")

    def cut(self, i: int) -> None:
        """Unplug host i: its switch port goes down (no signal to anyone else)."""
        self._check(i)
        _run(["ip", "-n", self.switch, "link", "set", f"p{i}", "down"])

    def heal(self, i: int) -> None:
        """Plug host i back in."""
        self._check(i)
        _run(["ip", "-n", self.switch, "link", "set", f"p{i}", "up"])

    def partition(self, a: int, b: int) -> None:
        """Drop all frames between hosts a and b (both ways) at the switch (needs nft)."""
        self._check(a)
        self._check(b)
        if a == b:
            raise ValueError("cannot partition a host from itself")
        self._set_partitions(self.partitions | {(min(a, b), max(a, b))})

    def unpartition(self, a: int, b: int) -> None:
        """Undo partition(a, b); a no-op when they are not partitioned."""
        self._check(a)
        self._check(b)
        self._set_partitions(self.partitions - {(min(a, b), max(a, b))})

    def _set_partitions(self, pairs: set[tuple[int, int]]) -> None:
        if pairs == self.partitions:
            return
        reason = nft_available()
        if reason is not None:
            raise NetnsError(f"partitions need nft: {reason}")
        _run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"], input=_nft_ruleset(pairs))
        self.partitions = pairs

    # -- teardown -------------------------------------------------------------

    def close(self) -> None:
        """SIGKILL our process groups, then delete every namespace. Idempotent, never
        raises, bounded in time; problems are recorded in self.close_errors."""
        if self.closed:
            return
        self.closed = True
        _open_meshes.discard(self)
        procs = [p for h in self.hosts for p in h.procs]
        try:
            for p in procs:
                p._signal_group(signal.SIGKILL)
            deadline = time.monotonic() + KILL_WAIT
            for p in procs:
                try:
                    p.popen.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    self.close_errors.append(f"{p!r} did not die after SIGKILL")
            for p in procs:
                p._close_pipe(max(deadline - time.monotonic(), 0.05))
        except Exception as e:
            self.close_errors.append(f"killing processes: {e!r}")
        if not self._started:
            return
        names = self._names()
        try:
            for name, pids in _pids_in_netns(names).items():
                # not ours to kill: `ip netns del` still removes the name
                self.close_errors.append(f"processes left in {name}: {pids}")
        except Exception as e:
            self.close_errors.append(f"scanning /proc: {e!r}")
        try:
            _batch((f"netns del {n}" for n in names), force=True)
        except NetnsError:
            pass  # some did not exist (failed start); checked below
        try:
            left = [n for n in netns_list() if n in names]
            for n in left:
                try:
                    _run(["ip", "netns", "del", n])
                except NetnsError as e:
                    self.close_errors.append(str(e))
        except Exception as e:
            self.close_errors.append(f"checking namespaces: {e!r}")


# --------------------------------------------------------------------------- pytest


Scope = Literal["session", "package", "module", "class", "function"]


def mesh_fixture(n: int, *, scope: Scope = "function", name: str | None = None):
    """A pytest fixture yielding a started Mesh of `n` hosts; skipped with the probe's
    reason when namespaces are unusable; always closed.  Bind it to a name in a
    conftest or test module: ``mesh3 = mesh_fixture(3)``."""
    import pytest  # only needed when used as a fixture

    def _mesh():
        reason = probe()
        if reason is not None:
            pytest.skip(f"network namespaces unavailable: {reason}")
        with Mesh(n) as mesh:
            yield mesh

    _mesh.__name__ = name or f"mesh{n}"
    return pytest.fixture(scope=scope, name=name)(_mesh)
