"""Tests of tests/netns.py on real network namespaces (root + iproute2; nft for partitions)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from netns import Mesh, NetnsError, mesh_fixture, netns_list, nft_available, probe

pytestmark = pytest.mark.netns

mesh3 = mesh_fixture(3)

PY = sys.executable

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(512)
    s.sendto(data, addr)
"""

# sends to every address every 0.2 s, prints the sorted list of those that answered
ECHO_CLIENT = """
import json, socket, sys, time
port, limit, addrs = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.05)
got, end, next_send = set(), time.monotonic() + limit, 0.0
while time.monotonic() < end and len(got) < len(addrs):
    if time.monotonic() >= next_send:
        for a in set(addrs) - got:
            try:
                s.sendto(b"x", (a, port))
            except OSError:
                pass
        next_send = time.monotonic() + 0.2
    try:
        got.add(s.recvfrom(512)[1][0])
    except OSError:
        pass
print(json.dumps(sorted(got)))
"""

MCAST_RECEIVER = """
import socket, sys
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(512)
    print("got", data.decode(), "from", addr[0], flush=True)
"""

MCAST_SENDER = """
import socket, sys, time
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
i = 0
while True:
    s.sendto(f"m{i}".encode(), (group, port))
    i += 1
    time.sleep(0.05)
"""

MDNS_GROUP = "224.0.0.251"


@pytest.fixture(autouse=True)
def _needs_netns():
    reason = probe()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


@pytest.fixture
def needs_nft():
    reason = nft_available()
    if reason is not None:
        pytest.skip(f"nft bridge tables unavailable: {reason}")


def ours(mesh: Mesh) -> list[str]:
    return [n for n in netns_list() if n.startswith(mesh.prefix)]


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (PID 1 here may not reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[3])


def start_echo(mesh: Mesh) -> int:
    port = random.randrange(20000, 60000)
    procs = [h.popen([PY, "-c", ECHO_SERVER, str(port)]) for h in mesh.hosts]
    for p in procs:
        p.wait_for_line("^ready$", timeout=5)
    return port


def replies(mesh: Mesh, src: int, dsts: list[int], port: int, limit: float) -> set[int]:
    """Indexes of the hosts in `dsts` that answered a UDP echo from host `src`."""
    addrs = [mesh.hosts[d].address for d in dsts]
    cp = mesh.hosts[src].run([PY, "-c", ECHO_CLIENT, str(port), str(limit), *addrs])
    assert cp.returncode == 0, cp.stderr
    got = set(json.loads(cp.stdout))
    return {d for d in dsts if mesh.hosts[d].address in got}


def eventually_replies(mesh, src, dsts, port, deadline=5.0) -> set[int]:
    end = time.monotonic() + deadline
    while True:
        got = replies(mesh, src, dsts, port, limit=1.0)
        if got == set(dsts) or time.monotonic() > end:
            return got


# ------------------------------------------------------------------------ probes / setup


def test_probes_are_cached_and_clean_up():
    assert probe() is None
    assert probe() is probe()
    assert probe.cache_info().hits >= 1  # type: ignore[attr-defined]
    assert nft_available() is nft_available()
    # uncached runs leave no namespace behind
    assert probe.__wrapped__() is None  # type: ignore[attr-defined]
    nft_available.__wrapped__()  # type: ignore[attr-defined]
    assert not [n for n in netns_list() if n.startswith(f"zcprobe-{os.getpid()}-")]


def test_three_hosts_up(mesh3):
    assert len(mesh3.hosts) == 3
    assert [h.index for h in mesh3.hosts] == [0, 1, 2]
    assert sorted(ours(mesh3)) == sorted([h.ns for h in mesh3.hosts] + [mesh3.switch])
    net = mesh3.subnet.rsplit(".", 1)[0]
    assert [h.address for h in mesh3.hosts] == [f"{net}.1", f"{net}.2", f"{net}.3"]
    for h in mesh3.hosts:
        addr = h.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        assert f"inet {h.address}/24" in addr
        routes = h.run(["ip", "route"]).stdout
        assert "224.0.0.0/4 dev eth0" in routes
        assert "default" not in routes  # the /24 exists only inside the mesh
        links = h.run(["ip", "-o", "link"]).stdout
        assert "lo:" in links and "eth0@" in links and "state UP" in links
        # IPv6 link-local is fixed and never "tentative" (no DAD delay)
        addr6 = h.run(["ip", "-o", "-6", "addr", "show", "dev", "eth0"]).stdout
        assert "tentative" not in addr6
    # the bridge is not in the root namespace
    root = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=5)
    assert f"{mesh3.prefix}" not in root.stdout


def test_hosts_reach_each_other(mesh3):
    port = start_echo(mesh3)
    for src in range(3):
        others = [d for d in range(3) if d != src]
        assert replies(mesh3, src, others, port, limit=3.0) == set(others)


def test_multicast_between_hosts(mesh3):
    port = random.randrange(20000, 60000)
    receivers = [
        h.popen([PY, "-c", MCAST_RECEIVER, MDNS_GROUP, str(port)]) for h in mesh3.hosts[1:]
    ]
    for r in receivers:
        r.wait_for_line("^ready$", timeout=5)
    mesh3.hosts[0].popen([PY, "-c", MCAST_SENDER, MDNS_GROUP, str(port)])
    for r in receivers:
        m = r.wait_for_line(r"^got m\d+ from (\S+)$", timeout=5)
        assert m.group(1) == mesh3.hosts[0].address


# ------------------------------------------------------------------------------- faults


def test_cut_and_heal(mesh3):
    port = start_echo(mesh3)
    assert replies(mesh3, 0, [1, 2], port, limit=3.0) == {1, 2}
    mesh3.cut(1)
    assert replies(mesh3, 0, [1, 2], port, limit=0.6) == {2}
    assert replies(mesh3, 1, [0, 2], port, limit=0.6) == set()
    mesh3.heal(1)
    assert eventually_replies(mesh3, 0, [1, 2], port) == {1, 2}
    assert eventually_replies(mesh3, 1, [0, 2], port) == {0, 2}


def test_partition_blocks_only_the_pair(mesh3, needs_nft):
    port = start_echo(mesh3)
    mesh3.partition(0, 1)
    assert replies(mesh3, 2, [0, 1], port, limit=3.0) == {0, 1}
    assert replies(mesh3, 0, [1, 2], port, limit=0.6) == {2}
    assert replies(mesh3, 1, [0, 2], port, limit=0.6) == {2}

    # multicast from 0 reaches 2 but not 1
    mport = random.randrange(20000, 60000)
    r1, r2 = (
        mesh3.hosts[i].popen([PY, "-c", MCAST_RECEIVER, MDNS_GROUP, str(mport)]) for i in (1, 2)
    )
    r1.wait_for_line("^ready$", timeout=5)
    r2.wait_for_line("^ready$", timeout=5)
    mesh3.hosts[0].popen([PY, "-c", MCAST_SENDER, MDNS_GROUP, str(mport)])
    r2.wait_for_line(r"^got m5 ", timeout=5)  # 6 datagrams went out meanwhile
    assert not [line for line in r1.lines() if line.startswith("got")]

    mesh3.unpartition(0, 1)
    mesh3.unpartition(0, 1)  # no-op
    assert eventually_replies(mesh3, 0, [1, 2], port) == {1, 2}
    r1.wait_for_line(r"^got m\d+ from ", timeout=5)


def test_sigstop_sigcont(mesh3):
    port = start_echo(mesh3)
    server = mesh3.hosts[1].procs[0]
    server.send_signal(signal.SIGSTOP)
    assert replies(mesh3, 0, [1, 2], port, limit=0.6) == {2}
    server.send_signal(signal.SIGCONT)
    assert eventually_replies(mesh3, 0, [1, 2], port) == {1, 2}


# ----------------------------------------------------------------------------- teardown


def test_close_kills_processes_and_removes_namespaces():
    mesh = Mesh(3)
    with mesh:
        h0, h1, h2 = mesh.hosts
        plain = h0.popen(["sleep", "1000"])
        tree = h1.popen(["sh", "-c", "sleep 1000 & echo kid $!; sleep 1000 & echo kid $!; wait"])
        stubborn = h2.popen(
            [
                PY,
                "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "print('up', flush=True); time.sleep(1000)",
            ]
        )
        kids = [int(tree.wait_for_line(r"^kid (\d+)$", timeout=5).group(1)) for _ in range(2)]
        stubborn.wait_for_line("^up$", timeout=5)
        pids = [plain.pid, tree.pid, stubborn.pid, *kids]
        assert all(alive(p) for p in pids)
        assert len(ours(mesh)) == 4
    t0 = time.monotonic()
    mesh.close()  # idempotent
    assert time.monotonic() - t0 < 0.5
    assert mesh.close_errors == []
    assert ours(mesh) == []
    assert not [p for p in pids if alive(p)]
    assert [p.popen.returncode for p in (plain, tree, stubborn)] == [-9, -9, -9]
    with pytest.raises(RuntimeError):
        h0.popen(["true"])


def test_close_on_failing_test_body():
    with pytest.raises(ZeroDivisionError):
        with Mesh(2) as mesh:
            p = mesh.hosts[0].popen(["sleep", "1000"])
            1 / 0  # noqa: B018
    assert ours(mesh) == []
    assert not alive(p.pid)


def test_close_leaves_foreign_sessions_alone():
    """A process that escaped our process groups (setsid) is reported, not killed."""
    with Mesh(1) as mesh:
        p = mesh.hosts[0].popen(["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 & echo esc $!"])
        esc = int(p.wait_for_line(r"^esc (\d+)$", timeout=5).group(1))
        deadline = time.monotonic() + 5
        while session_of(esc) == p.pid:  # until setsid() has run in the child
            assert time.monotonic() < deadline
            time.sleep(0.01)
    try:
        assert ours(mesh) == []  # the names are gone even so
        assert alive(esc)
        assert any(str(esc) in e for e in mesh.close_errors), mesh.close_errors
    finally:
        os.kill(esc, signal.SIGKILL)


def test_existing_names_are_not_touched():
    with Mesh(1) as first:
        second = Mesh(1, prefix=first.prefix)
        with pytest.raises(NetnsError, match="already exist"):
            second.__enter__()
        second.close()
        assert len(ours(first)) == 2
    assert ours(first) == []


# ------------------------------------------------------------------------------ Proc


def test_wait_for_line_times_out(mesh3):
    p = mesh3.hosts[0].popen(["sh", "-c", "echo started; sleep 1000"])
    p.wait_for_line("started", timeout=5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no match within 0.3s") as ei:
        p.wait_for_line("never", timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 1.0
    assert "started" in str(ei.value)


def test_wait_for_line_stops_at_exit(mesh3):
    p = mesh3.hosts[0].popen(["sh", "-c", "echo a; echo b >&2; echo a; exit 3"])
    t0 = time.monotonic()
    assert p.wait_for_line("^a$", timeout=5)
    assert p.wait_for_line(r"^b$", timeout=5)  # stderr is merged
    assert p.wait_for_line("^a$", timeout=5)  # the second "a"
    with pytest.raises(TimeoutError, match="exit code 3") as ei:
        p.wait_for_line("^a$", timeout=10)
    assert time.monotonic() - t0 < 2
    assert ei.value.output == ["a", "b", "a"]  # type: ignore[attr-defined]
    assert p.lines() == ["a", "b", "a"]
    assert p.wait(5) == 3


def test_popen_env_run_and_stop(mesh3):
    h = mesh3.hosts[2]
    # It waits for the signal: input() would end it at once (its stdin is empty),
    # and under load it could exit 1 before the SIGTERM landed.
    code = "import os, time; print(os.environ['ZC_X']); time.sleep(60)"
    p = h.popen([PY, "-c", code], env={"ZC_X": "42"})
    p.wait_for_line("^42$", timeout=5)  # PYTHONUNBUFFERED=1 is added
    p.stop()
    assert p.popen.returncode == -signal.SIGTERM
    cp = h.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
    assert cp.returncode == 0 and h.address in cp.stdout
    with pytest.raises(subprocess.TimeoutExpired):
        h.run(["sleep", "1000"], timeout=0.2)
    k = h.popen(["sleep", "1000"])
    k.kill()
    assert k.popen.returncode == -signal.SIGKILL
