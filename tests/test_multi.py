"""Workers run for real: `zcell multi` (background workers with pid and log files),
`zcell worker --processes` (a supervisor restarting its children and passing
signals on) and log files reopened on SIGHUP. Real processes; every process a test
starts is killed by pid at teardown (pids from pid files and banners)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zcell_test_tasks as t
from conftest import SLOW, child_env, unique_cluster, wait_until

from zcell.cli.daemon import alive, die_with_parent, read_pid
from zcell.cli.multi import specs

BANNER = re.compile(r"^zcell worker (\S+) \(.*pid (\d+)\)$", re.M)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The directory multi runs in; at teardown every pid in its pid files and
    banners (workers, supervisors, children) is SIGKILLed."""
    yield tmp_path
    pids = {read_pid(str(p)) for p in tmp_path.glob("*.pid")}
    for log in tmp_path.glob("*.log*"):
        pids |= {int(pid) for _, pid in BANNER.findall(log.read_text(errors="replace"))}
    for pid in pids - {None, os.getpid()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]


def multi(cwd: Path, *words: str) -> subprocess.CompletedProcess[str]:
    """``zcell multi WORDS`` run in ``cwd``; returns the finished process."""
    argv = [sys.executable, "-m", "zcell", "multi", *words]
    return subprocess.run(
        argv, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=60 * SLOW
    )


def worker_words(cluster: str, *names: str) -> list[str]:
    return [*names, "-A", "zcell_test_tasks", "--no-mdns", f"--cluster={cluster}"]


def banner(log: Path, name: str, timeout: float = 15) -> dict[str, str]:
    """Wait until ``log`` holds worker ``name``'s banner and ``ready``; its lines."""
    text = ""

    def ready() -> bool:
        nonlocal text
        text = log.read_text(errors="replace") if log.exists() else ""
        return bool(re.search(rf"^zcell worker {re.escape(name)} \(", text, re.M)) and (
            "\nready\n" in text
        )

    wait_until(ready, timeout, f"{name}'s banner in {log}")
    fields = dict(re.findall(r"^  (\w+):\s+(.*)$", text, re.M))
    fields["pid"] = re.search(rf"^zcell worker {re.escape(name)} .*pid (\d+)\)", text, re.M)[1]  # type: ignore[index]
    return fields


def host() -> str:
    return specs(["x"])[0].name.partition("@")[2]


def test_multi_parses_names_counts_and_per_worker_options_as_celery() -> None:
    words = ["3", "-A", "proj", "-Q:1,2", "images,video", "-Q:3", "data", "-Q", "default"]
    workers = specs([*words, "--pidfile=/run/%n.pid", "--loglevel=debug", "-c:zcell2", "4"])
    assert [w.name for w in workers] == [f"zcell{i}@{host()}" for i in (1, 2, 3)]
    assert [w.argv[w.argv.index("-Q") + 1] for w in workers] == ["images,video"] * 2 + ["data"]
    assert [w.pidfile for w in workers] == ["/run/zcell1.pid", "/run/zcell2.pid", "/run/zcell3.pid"]
    assert workers[0].logfile == "zcell1%I.log"  # %I: the worker's (its --processes child)
    assert "--loglevel=debug" in workers[2].argv and "--pidfile=/run/%n.pid" not in workers[0].argv
    assert [("-c" in w.argv) for w in workers] == [False, True, False]


def test_multi_start_runs_workers_in_the_background_with_their_options_then_stop_ends_them(
    workdir: Path,
) -> None:
    cluster = unique_cluster()
    words = worker_words(cluster, "w1", "w2", "w3") + ["-Q:1-2", "images,video", "-Q", "data"]
    started = multi(workdir, "start", *words)
    assert started.returncode == 0, started.stdout + started.stderr
    seen = {n: banner(workdir / f"{n}.log", f"{n}@{host()}") for n in ("w1", "w2", "w3")}
    assert [seen[n]["queues"] for n in ("w1", "w2", "w3")] == ["images, video"] * 2 + ["data"]
    pids = {n: read_pid(str(workdir / f"{n}.pid")) for n in seen}
    assert pids == {n: int(seen[n]["pid"]) for n in seen} and all(map(alive, pids.values()))  # type: ignore[arg-type]

    again = multi(workdir, "start", *words)
    assert again.returncode == 1 and again.stdout.count("already running") == 3
    assert {n: read_pid(str(workdir / f"{n}.pid")) for n in seen} == pids

    stopped = multi(workdir, "stop", "w1", "w2", "w3")
    assert stopped.returncode == 0 and stopped.stdout.count("SIGTERM sent") == 3
    wait_until(lambda: not any(map(alive, pids.values())), 15, "the workers to exit")  # type: ignore[arg-type]
    assert not list(workdir.glob("*.pid")), "a worker that stops removes its pid file"


def test_stopwait_returns_once_the_running_task_has_finished(
    workdir: Path, task_app: Any, tmp_path: Path
) -> None:
    cluster = unique_cluster()
    assert multi(workdir, "start", *worker_words(cluster, "w1")).returncode == 0
    seen = banner(workdir / "w1.log", f"w1@{host()}")
    app = task_app(cluster=cluster, peers=[seen["inbox"]])
    wait_until(lambda: app.node.actors("zcell.queue.celery"), 10, "the worker's queue")
    runs = tmp_path / "runs"
    result = t.mark.delay(str(runs), 1.5, "finished")
    wait_until(runs.exists, 10, "the task to start")
    done = multi(workdir, "stopwait", "w1", "--timeout=30")
    assert done.returncode == 0 and "w1@" in done.stdout and ": stopped" in done.stdout
    assert not alive(int(seen["pid"]))
    assert result.get(timeout=5 * SLOW) == "finished"  # it ran to its end before the exit


def test_kill_leaves_a_stale_pid_file_that_start_replaces_and_restart_gives_a_new_process(
    workdir: Path,
) -> None:
    words = worker_words(unique_cluster(), "w1")
    assert multi(workdir, "start", *words).returncode == 0
    first = int(banner(workdir / "w1.log", f"w1@{host()}")["pid"])
    killed = multi(workdir, "kill", "w1")
    assert killed.returncode == 0 and "SIGKILL sent" in killed.stdout
    wait_until(lambda: not alive(first), 10, "the killed worker to die")
    assert read_pid(str(workdir / "w1.pid")) == first  # stale: nobody removed it

    assert multi(workdir, "start", *words).returncode == 0
    second = read_pid(str(workdir / "w1.pid"))
    assert second not in (None, first) and alive(second)  # type: ignore[arg-type]
    restarted = multi(workdir, "restart", *words)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    third = read_pid(str(workdir / "w1.pid"))
    assert not alive(second) and third not in (None, second) and alive(third)  # type: ignore[arg-type]
    assert multi(workdir, "stopwait", "w1").returncode == 0
    assert not alive(third)  # type: ignore[arg-type]


def test_show_and_names_print_each_worker(workdir: Path) -> None:
    shown = multi(workdir, "show", "2", "-A", "proj", "-c:2", "3")
    assert shown.returncode == 0
    first, second = shown.stdout.splitlines()
    assert "worker -A proj -n zcell1@" in first and "-c" not in first.split()
    assert "-c 3" in second and "--logfile=zcell2%I.log" in second
    names = multi(workdir, "names", "a", "b@elsewhere")
    assert names.stdout.split() == [f"a@{host()}", "b@elsewhere"]


def _supervisor(procs: Any, workdir: Path, name: str, *extra: str) -> Any:
    argv = ["zcell", "worker", "-A", "zcell_test_tasks", "--no-mdns", "--name", name]
    return procs([*argv, "--cluster", unique_cluster(), "--processes", "2", *extra])


def _children(workdir: Path, name: str) -> dict[str, int]:
    """The newest pid of each child of supervisor ``name``, from its log files."""
    found: dict[str, int] = {}
    for log in sorted(workdir.glob(f"{name}-*.log")):
        for child, pid in BANNER.findall(log.read_text(errors="replace")):
            found[child] = int(pid)
    return found


def test_processes_restarts_a_killed_child_and_sigterm_stops_them_all(
    procs: Any, workdir: Path
) -> None:
    sup = _supervisor(procs, workdir, "s", f"--logfile={workdir}/%n%I.log")
    first = {n: banner(workdir / f"{n}.log", n)["pid"] for n in ("s-1", "s-2")}
    os.kill(int(first["s-1"]), signal.SIGKILL)
    wait_until(lambda: _children(workdir, "s")["s-1"] != int(first["s-1"]), 15, "s-1 restarted")
    restarted = _children(workdir, "s")
    assert alive(restarted["s-1"]) and restarted["s-2"] == int(first["s-2"])
    assert (
        "s-1 (pid" in (workdir / "s.log").read_text()
        and "restarting it" in (workdir / "s.log").read_text()
    )

    banner(workdir / "s-1.log", "s-1")
    os.kill(sup.pid, signal.SIGTERM)
    wait_until(lambda: sup.returncode is not None, 20, "the supervisor to exit")
    assert sup.returncode == 0
    assert not any(alive(pid) for pid in _children(workdir, "s").values())


def test_a_killed_supervisor_takes_its_children_with_it(procs: Any, workdir: Path) -> None:
    sup = _supervisor(procs, workdir, "k", f"--logfile={workdir}/%n%I.log")
    children = [int(banner(workdir / f"{n}.log", n)["pid"]) for n in ("k-1", "k-2")]
    os.kill(sup.pid, signal.SIGKILL)  # no chance to stop them itself
    wait_until(lambda: not any(alive(pid) for pid in children), 15, "the children to exit")


def test_a_child_whose_parent_died_before_it_could_ask_to_follow_it_ends_itself() -> None:
    """The parent's death signal is asked for in the child, after fork: a parent that
    died before then sends none, so the child must look and end itself."""
    argv = [sys.executable, "-c", "pass"]
    following = subprocess.run(argv, preexec_fn=lambda: die_with_parent(os.getppid(), 15))
    assert following.returncode == 0
    orphaned = subprocess.run(argv, preexec_fn=lambda: die_with_parent(1, 15))  # not ours
    assert orphaned.returncode == 1


def test_sighup_reopens_the_log_files_of_the_supervisor_and_its_children(
    procs: Any, workdir: Path
) -> None:
    sup = _supervisor(procs, workdir, "h", f"--logfile={workdir}/%n%I.log")
    for n in ("h-1", "h-2"):
        banner(workdir / f"{n}.log", n)
    logs = ["h.log", "h-1.log", "h-2.log"]
    for log in logs:
        (workdir / log).rename(workdir / f"{log}.1")  # what logrotate does
    os.kill(sup.pid, signal.SIGHUP)
    wait_until(lambda: all((workdir / log).exists() for log in logs), 10, "the new log files")
    os.kill(sup.pid, signal.SIGTERM)
    wait_until(lambda: sup.returncode is not None, 20, "the supervisor to exit")
    assert "stopped" in (workdir / "h-1.log").read_text()
    assert "stopped" not in (workdir / "h-1.log.1").read_text()
    assert "all 2 processes stopped" in (workdir / "h.log").read_text()
