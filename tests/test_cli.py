"""The ``zcell`` command: ``zcell node``, the one-shot clients, and ``zcell demo``.

Nodes run as child ``zcell node`` processes; most clients run in-process through
``main(argv)`` (a real ``Node`` on real sockets, without an interpreter start per
call), and a few through the installed ``zcell`` script, for its exit codes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import SLOW, child_env, run_cli, unique_cluster
from netns import Proc
from zcell_test_actors import Echo

from zcell.cli import parse_kv, read_secret

ECHO = "zcell_test_actors.Echo"


def node_argv(name: str, cluster: str, *extra: str) -> list[str]:
    return [
        "zcell",
        "node",
        "-A",
        "zcell_test_actors",
        "--name",
        name,
        "--cluster",
        cluster,
        *extra,
    ]


@dataclass
class Workers:
    """Two ``zcell node`` children, w1 and w2, in a cluster of their own (mDNS)."""

    cluster: str
    inbox: dict[str, str] = field(default_factory=dict)

    @property
    def args(self) -> list[str]:
        """Join through w1 without multicast: the quick way (mDNS is tested on its own)."""
        return ["--cluster", self.cluster, "--no-mdns", "--peer", self.inbox["w1"]]

    @property
    def mdns_args(self) -> list[str]:
        return ["--cluster", self.cluster]


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    mesh = Workers(unique_cluster())
    started: list[Proc] = []
    try:
        for name in ("w1", "w2"):
            started.append(Proc(node_argv(name, mesh.cluster), None, env=child_env()))
        for name, proc in zip(("w1", "w2"), started, strict=True):
            mesh.inbox[name] = proc.wait_for_line(r"inbox:\s+(\S+)", 15 * SLOW).group(1)
            proc.wait_for_line("^ready$", 15 * SLOW)
        yield mesh
    finally:
        for proc in started:
            proc.stop()


# ----------------------------------------------------------------------------- zcell node


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_node_started_a_moment_ago_is_found_and_it_stops_gracefully_with_exit_0(
    procs, capsys, tmp_path, sig
):
    cluster = unique_cluster()
    secret = tmp_path / "secret"
    secret.write_text("  s3cret-value \n")
    node = procs(node_argv("fresh", cluster, "--secret-file", str(secret)))
    banner = [
        node.wait_for_line(p, 15 * SLOW).group(0)
        for p in (
            r"^zcell node fresh \(id \w+, pid \d+\)$",
            rf"^  cluster:\s+{cluster}$",
            r"^  inbox:\s+tcp://127\.0\.0\.1:\d+$",
            rf"^  actors:\s+.*{ECHO}",
            r"^  discovery:\s+mdns$",
            r"^  patched:\s+yes$",
            r"^ready$",
        )
    ]
    assert banner[-1] == "ready"

    started = time.monotonic()
    code, out, err = run_cli(
        capsys, "status", "--json", "--cluster", cluster, "--secret-file", str(secret)
    )
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)] == ["fresh"]
    assert time.monotonic() - started < 3 * SLOW

    node.send_signal(sig)
    assert node.wait(10 * SLOW) == 0
    node.wait_for_line(r"^zcell node fresh stopped$", 5 * SLOW)


def test_zcell_node_patches_so_a_sleeping_handler_does_not_delay_others_and_no_patch_opts_out(
    make_node, procs
):
    cluster = unique_cluster()
    parent = make_node("parent", cluster=cluster)
    peer = ["--no-mdns", "--peer", parent.endpoints["inbox"]]
    patched = procs(node_argv("patched", cluster, *peer))
    unpatched = procs(node_argv("unpatched", cluster, *peer, "--no-patch"))
    patched.wait_for_line(r"^  patched:\s+yes$", 15 * SLOW)
    unpatched.wait_for_line(r"^  patched:\s+no$", 15 * SLOW)
    parent.wait_for(nodes=3, timeout=10 * SLOW)
    refs = {name: parent.spawn(Echo, on=name) for name in ("patched", "unpatched")}

    # Both start a 3 s time.sleep; direct messages from one sender start in order,
    # so each echo below reaches its node while that node's block() is running.
    blocks = {name: ref.call.block(seconds=3, timeout=15) for name, ref in refs.items()}
    t0 = time.monotonic()
    assert refs["patched"].send.echo(value="quick", timeout=10) == "quick"
    patched_latency = time.monotonic() - t0
    assert refs["unpatched"].send.echo(value="late", timeout=10) == "late"
    unpatched_latency = time.monotonic() - t0

    assert patched_latency < 1.5, "a patched node let time.sleep stall its other handlers"
    assert unpatched_latency > 2.0, "--no-patch should let time.sleep block the node"
    assert [blocks[name].get() for name in ("patched", "unpatched")] == [3, 3]


# ----------------------------------------------------------------------------- clients


def test_status_lists_every_live_member_but_not_the_client_itself(workers, capsys):
    code, out, err = run_cli(capsys, "status", "--json", *workers.mdns_args)
    assert code == 0, err
    members = sorted(json.loads(out), key=lambda m: m["name"])
    assert [m["name"] for m in members] == ["w1", "w2"]
    for m in members:
        assert m["endpoint"] == workers.inbox[m["name"]]
        assert isinstance(m["actors"], int) and m["load"] >= 0 and m["uptime"] > 0
        assert ECHO in m["types"]

    code, out, err = run_cli(capsys, "status", *workers.mdns_args)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "ENDPOINT", "ACTORS", "UPTIME", "LOAD", "TYPES"]
    assert [row.split()[:2] for row in rows] == [
        ["w1", workers.inbox["w1"]],
        ["w2", workers.inbox["w2"]],
    ]


def test_a_client_joins_through_a_peer_without_mdns_and_learns_the_whole_mesh(workers, capsys):
    code, out, err = run_cli(capsys, "status", "--json", *workers.args)
    assert code == 0, err
    assert sorted(m["name"] for m in json.loads(out)) == ["w1", "w2"]


def test_spawn_json_gives_id_name_and_node_and_kv_arguments_reach_the_constructor(workers, capsys):
    code, out, err = run_cli(
        capsys, "spawn", ECHO, "tag=from-cli", "--on", "w2", "--json", *workers.mdns_args
    )
    assert code == 0, err
    spawned = json.loads(out)
    assert spawned["name"] == ECHO and spawned["node"] == "w2"
    assert re.fullmatch(r"[0-9a-f]{32}", spawned["id"])

    code, out, err = run_cli(capsys, "send", spawned["id"], "whoami", "--json", *workers.args)
    assert code == 0, err
    assert json.loads(out) == {"tag": "from-cli", "id": spawned["id"], "node": "w2"}


def test_spawn_prints_the_id_alone_and_actors_lists_it_with_its_node(workers, capsys):
    code, out, err = run_cli(capsys, "spawn", ECHO, "--on", "w1", *workers.args)
    assert code == 0, err
    actor_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", actor_id)

    code, out, err = run_cli(capsys, "actors", ECHO, *workers.args)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "TYPE", "NODE"]
    assert [actor_id, ECHO, "w1"] in [row.split() for row in rows]

    code, out, err = run_cli(
        capsys, "actors", "zcell_test_actors.Unregistered", "--json", *workers.args
    )
    assert (code, json.loads(out)) == (0, [])


def test_send_prints_strings_as_they_are_and_other_values_as_json(workers, capsys):
    code, out, _ = run_cli(capsys, "spawn", ECHO, *workers.args)
    actor_id = out.strip()
    assert run_cli(capsys, "send", actor_id, "echo", "value=plain text", *workers.args)[:2] == (
        0,
        "plain text\n",
    )
    code, out, _ = run_cli(
        capsys, "send", actor_id, "echo", 'value={"n": [1, 2.5, null]}', *workers.args
    )
    assert (code, json.loads(out)) == (0, {"n": [1, 2.5, None]})


@pytest.mark.parametrize(
    "item, expected",
    [
        ("n=5", {"n": 5}),
        ("who=world", {"who": "world"}),
        ('code="007"', {"code": "007"}),
        ("tags=[1, 2]", {"tags": [1, 2]}),
        ('d={"a": null}', {"d": {"a": None}}),
        ("flag=true", {"flag": True}),
        ("empty=", {"empty": ""}),
        ("eq=a=b", {"eq": "a=b"}),
    ],
)
def test_kv_values_parse_as_json_when_they_can_else_as_strings(item, expected):
    assert parse_kv([item]) == expected


def test_a_secret_file_is_read_without_surrounding_whitespace(tmp_path):
    path = tmp_path / "s"
    path.write_text("\n  abc def \t\n")
    assert read_secret(str(path)) == "abc def"
    path.write_text("   \n")
    assert read_secret(str(path)) is None


def test_throw_returns_the_reply_of_one_actor_of_the_type(workers, capsys):
    run_cli(capsys, "spawn", ECHO, "--on", "w1", *workers.args)
    code, out, err = run_cli(capsys, "actors", ECHO, "--json", *workers.args)
    ids = {a["id"] for a in json.loads(out)}
    code, out, err = run_cli(capsys, "throw", ECHO, "whoami", "--json", *workers.args)
    assert code == 0, err
    assert json.loads(out)["id"] in ids


def test_scatter_prints_one_reply_per_actor_of_the_type(workers, capsys):
    run_cli(capsys, "spawn", ECHO, "--on", "w1", *workers.args)
    run_cli(capsys, "spawn", ECHO, "--on", "w2", *workers.args)
    code, out, _ = run_cli(capsys, "actors", ECHO, "--json", *workers.args)
    directory = {a["id"]: a["node"] for a in json.loads(out)}

    code, out, err = run_cli(
        capsys, "scatter", ECHO, "whoami", "--json", "--timeout", "5", *workers.args
    )
    assert code == 0, err
    replies = json.loads(out)
    assert {r["id"]: r["node"] for r in replies} == directory
    assert len(replies) == len(directory)

    code, out, err = run_cli(capsys, "scatter", ECHO, "whoami", *workers.args)
    assert code == 0, err
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == sorted(directory)


def test_scatter_with_failing_handlers_prints_the_errors_and_exits_1(workers, capsys):
    run_cli(capsys, "spawn", ECHO, *workers.args)
    code, out, err = run_cli(capsys, "scatter", ECHO, "fail", "kind=ValueError", *workers.args)
    assert code == 1
    assert "error: ValueError: boom" in err


def test_kill_stops_the_actor_and_a_second_kill_finds_no_such_actor(workers, capsys):
    code, out, _ = run_cli(capsys, "spawn", ECHO, *workers.args)
    actor_id = out.strip()
    code, out, err = run_cli(capsys, "kill", actor_id, *workers.args)
    assert (code, out.strip()) == (0, f"killed {actor_id} ({ECHO})"), err
    code, out, _ = run_cli(capsys, "actors", "--json", *workers.args)
    assert actor_id not in {a["id"] for a in json.loads(out)}
    code, out, err = run_cli(capsys, "kill", actor_id, "--wait", "0.3", *workers.args)
    assert code == 1
    assert "NoSuchActor" in err


def test_a_remote_error_exits_1_with_the_remote_type_message_and_traceback(workers, capsys):
    code, out, _ = run_cli(capsys, "spawn", ECHO, *workers.args)
    code, out, err = run_cli(
        capsys, "send", out.strip(), "fail", "kind=KeyError", "message=gone", *workers.args
    )
    assert code == 1
    assert "KeyError: 'gone'" in err
    assert "remote traceback" in err and "zcell_test_actors.py" in err


def test_a_call_past_its_timeout_exits_1_with_call_timeout(workers, capsys):
    code, out, _ = run_cli(capsys, "spawn", ECHO, *workers.args)
    code, out, err = run_cli(
        capsys,
        "send",
        out.strip(),
        "sleep",
        "seconds=3",
        "--timeout",
        "0.3",
        "--json",
        *workers.args,
    )
    assert code == 1
    assert json.loads(out)["error"] == "CallTimeout"


def test_an_unknown_actor_exits_1(workers, capsys):
    code, out, err = run_cli(capsys, "send", "0" * 32, "echo", "--wait", "0.3", *workers.args)
    assert code == 1
    assert "NoSuchActor" in err
    code, out, err = run_cli(
        capsys, "throw", "no.such.Type", "echo", "--wait", "0.3", *workers.args
    )
    assert code == 1
    assert "no actor of type no.such.Type" in err


def test_no_mesh_found_exits_1_and_says_how_to_start_one(capsys):
    code, out, err = run_cli(capsys, "status", "--cluster", unique_cluster(), "--wait", "0.3")
    assert code == 1
    assert "no zcell node found" in err and "zcell node -A" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["send", "someid", "echo", "not-a-pair"],
        ["send", "someid"],
        ["scatter", "T", "m", "--timeout", "soon"],
        ["status", "--no-mdns"],
        ["frobnicate"],
        [],
    ],
    ids=["bad-kv", "missing-method", "bad-timeout", "no-mdns-without-peer", "unknown", "none"],
)
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err


def test_the_installed_script_exits_0_for_help_1_for_errors_and_2_for_usage(tmp_path):
    cluster = unique_cluster()
    commands = {
        0: ["zcell", "--help"],
        1: ["zcell", "status", "--cluster", cluster, "--wait", "0.2"],
        2: ["zcell", "node", "-A", "no_such_module_for_zcell", "--cluster", cluster],
    }
    running = {
        code: subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=tmp_path,
        )
        for code, argv in commands.items()
    }
    for code, popen in running.items():
        out, err = popen.communicate(timeout=30 * SLOW)
        assert popen.returncode == code, (commands[code], out, err)
    assert "cannot import -A no_such_module_for_zcell" in running[2].communicate()[1]


# ----------------------------------------------------------------------------- zcell demo


def _pids(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"\bpid (\d+)", text)]


def _is_running_zcell(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"zcell" in cmdline and state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_zcell_demo_narrates_every_primitive_across_nodes_and_exits_0_within_30s():
    started = time.monotonic()
    done = subprocess.run(
        ["zcell", "demo"], capture_output=True, text=True, timeout=60 * SLOW, env=child_env()
    )
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert elapsed < 30 * SLOW
    for expected in [
        "it sees 4 members",
        "'Hello, world! (from demo-1)'",
        "result.state -> 'PENDING'",
        "result.state -> 'SUCCESS'",
        "KeyError: 'missing'",
        "per node: demo-1 2, demo-2 2, demo-3 2",
        "demo-1: 2 jobs",
        "| demo-2: logger2: I will be printed from logger2",
        "| demo-1: logger1: I will be printed from logger1",
        "demo-1 -> demo-2 -> demo-1 -> demo-2",
        "NodeDown after",
        "node.nodes() -> demo-1, demo-2, demo-main",
        "node.actors(Worker) has 2 left",
        "Stopped demo-1, demo-2",
    ]:
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert out.index("logger2: I will be printed") < out.index("logger1: I will be printed")
    pids = _pids(out)
    assert len(pids) == 3
    assert not [pid for pid in pids if _is_running_zcell(pid)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_the_demo_and_every_node_it_started(procs):
    demo = procs(["zcell", "demo", "--json"])
    demo.wait_for_line(r'"text": "1\. spawn', 20 * SLOW)
    demo.send_signal(signal.SIGINT)
    assert demo.wait(15 * SLOW) == 130
    lines = demo.lines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert any("Interrupted" in r["text"] for r in records)
    pids = _pids("\n".join(r["text"] for r in records))
    assert len(pids) == 3
    deadline = time.monotonic() + 5 * SLOW
    while [pid for pid in pids if _is_running_zcell(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _is_running_zcell(pid)]


def test_demo_refuses_a_mesh_too_small_or_too_large(capsys):
    assert run_cli(capsys, "demo", "--nodes", "1")[0] == 2
    assert run_cli(capsys, "demo", "--nodes", "10")[0] == 2
