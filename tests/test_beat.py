"""Beat: periodic tasks sent by one leader among `zcell worker -B` candidates,
each tick run once through joins, crashes, graceful stops and partitions; a
delivery seen twice by a worker runs once; crontab across DST changes."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import zcell_test_tasks as t
from conftest import SLOW, start_beat_worker, start_zcell_worker, unique_cluster, wait_until

from zcell import App
from zcell.errors import ZcellError
from zcell.schedules import crontab
from zcell.tasks.beat import CANDIDATE_TYPE, Beat, BeatEntry

EVERY = 0.5


def _ticks(path: Path) -> list[str]:
    """The tick ids that ran (one line per run)."""
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def _due_ids(since: float, until: float) -> set[str]:
    """The ids of the ticks due in (since, until]."""
    entry = BeatEntry("tick", {"task": "x", "schedule": EVERY})
    return {entry.tick_id("zcell_test_beat", d) for d in entry.schedule.due(since, until)}


def _once_each(path: Path, since: float, until: float) -> None:
    ran = _ticks(path)
    twice = {tick for tick in ran if ran.count(tick) > 1}
    # Each run's line names the worker it ran on: which ones ran a tick twice.
    runs = [line for line in path.read_text().splitlines() if line.split()[0] in twice]
    assert not twice, f"a tick ran twice: {runs} (of {len(ran)} runs)"
    missing = _due_ids(since, until) - set(ran)
    assert not missing, f"{len(missing)} tick(s) due in the window never ran"


def _candidates(
    procs: Any,
    make_node: Any,
    monkeypatch: Any,
    tmp_path: Path,
    names: list[str],
    observer_name: str = "observer",
    **env: str,
) -> tuple[dict[str, Any], Any, Path]:
    """Start `zcell worker -B` candidates named ``names``; returns (procs by name,
    an observer node in the mesh, named ``observer_name``, the ticks file)."""
    path = tmp_path / "ticks"
    monkeypatch.setenv("ZCELL_TEST_BEAT_FILE", str(path))
    monkeypatch.setenv("ZCELL_TEST_BEAT_EVERY", str(EVERY))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cluster = unique_cluster()
    started: dict[str, Any] = {}
    inbox = None
    for name in names:
        started[name], first = start_beat_worker(procs, name, cluster, peer=inbox)
        inbox = inbox or first
    observer = make_node(observer_name, cluster=cluster, peers=[inbox], heartbeat=0.3)
    wait_until(
        lambda: len(observer.actors(CANDIDATE_TYPE)) == len(names), 10 * SLOW, "the candidates"
    )
    return started, observer, path


def _worker_of_ticks(procs: Any, monkeypatch: Any, tmp_path: Path) -> tuple[Path, str, str]:
    """The tests' schedule in the environment and a worker ``w1`` that runs its
    ticks (no beat of its own), in a cluster of its own: (the ticks file, the
    cluster, w1's inbox)."""
    path = tmp_path / "ticks"
    monkeypatch.setenv("ZCELL_TEST_BEAT_FILE", str(path))
    monkeypatch.setenv("ZCELL_TEST_BEAT_EVERY", str(EVERY))
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster, app="zcell_test_beat")
    return path, cluster, inbox


def _status(observer: Any, name: str) -> dict[str, Any]:
    ids = {n["name"]: n["id"] for n in observer.nodes()}
    (ref,) = [r for r in observer.actors(CANDIDATE_TYPE) if r.node_id == ids.get(name)]
    status: dict[str, Any] = ref.send("status", {}, timeout=5)
    return status


def _candidate_here(node: Any, path: Path, quorum: int | None = None) -> Beat:
    """A beat candidate of the tests' schedule on ``node``, a node of this process
    (so that a test can stop its beat, or give it other heartbeats, or a fixed
    ``beat_quorum``)."""
    app = App("zcell_test_beat", discovery="static")
    app.conf.beat_quorum = quorum
    app.conf.beat_schedule = {
        "tick": {"task": "zcell_test_beat.tick", "schedule": EVERY, "args": [str(path)]}
    }
    app.use_node(node)
    return Beat(app, node).start()


def _b2_takes_over(started: dict[str, Any], observer: Any, sig: int) -> None:
    """Two ticks in, signal the leader b1 with ``sig``; wait for b2 to lead, and
    for three more ticks."""
    time.sleep(2 * EVERY)
    started["b1"].send_signal(sig)
    wait_until(lambda: _status(observer, "b2")["leading"], 5 * SLOW, "b2 to lead")
    time.sleep(3 * EVERY)


def _leads(observer: Any, name: str) -> bool:
    """Whether candidate ``name`` leads (False while the observer does not list it)."""
    try:
        return bool(_status(observer, name)["leading"])
    except (ValueError, ZcellError):
        return False


# --------------------------------------------------------------------------- schedules


def test_crontab_next_runs_keep_local_time_across_dst_changes() -> None:
    tz = "America/New_York"
    zone = ZoneInfo(tz)
    nine = crontab(minute=0, hour=9)
    start = datetime(2026, 3, 7, 8, 0, tzinfo=zone).timestamp()
    runs = nine.due(start, start + 2.5 * 86400, tz)
    local = [datetime.fromtimestamp(r, zone) for r in runs]
    assert [(d.day, d.hour, d.minute) for d in local] == [(7, 9, 0), (8, 9, 0), (9, 9, 0)]
    assert runs[1] - runs[0] == 23 * 3600  # the spring-forward day is 23 hours long
    # 01:30 happens twice on the fall-back day: it runs once.
    half_past_one = crontab(minute=30, hour=1)
    start = datetime(2026, 10, 31, 12, 0, tzinfo=zone).timestamp()
    runs = half_past_one.due(start, start + 2 * 86400, tz)
    assert [datetime.fromtimestamp(r, zone).day for r in runs] == [1, 2]
    assert runs[1] - runs[0] == 25 * 3600
    # Celery's field syntax: weekdays by name, steps.
    weekdays = crontab(minute="*/30", hour="9-10", day_of_week="mon-fri")
    saturday = datetime(2026, 3, 7, 0, 0, tzinfo=zone).timestamp()
    first = datetime.fromtimestamp(weekdays.next_after(saturday, tz), zone)
    assert (first.weekday(), first.hour, first.minute) == (0, 9, 0)


def test_a_bad_crontab_field_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid crontab"):
        crontab(minute="61")


# --------------------------------------------------------------------------- de-dup


def test_a_task_id_delivered_twice_runs_once(procs: Any, task_app: Any, tmp_path: Path) -> None:
    cluster = unique_cluster()
    _, inbox = start_zcell_worker(procs, "w1", cluster)
    app = task_app(cluster=cluster, peers=[inbox])
    wait_until(lambda: app.node.actors("zcell.queue.celery"), 10 * SLOW, "the consumer")
    path = tmp_path / "runs"
    first = t.mark.apply_async((str(path),), {"value": 1}, task_id="tick-1")
    assert first.get(timeout=10 * SLOW) == 1
    again = t.mark.apply_async((str(path),), {"value": 2}, task_id="tick-1")
    assert again.get(timeout=10 * SLOW) == 1  # the outcome of the run there was
    assert len(path.read_text().splitlines()) == 1


# --------------------------------------------------------------------------- candidates


@pytest.mark.parametrize("count", [2, 3])
def test_every_tick_runs_once_with_several_candidates(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path, count: int
) -> None:
    names = ["b1", "b2", "b3"][:count]
    _, observer, path = _candidates(procs, make_node, monkeypatch, tmp_path, names)
    since = time.time()
    time.sleep(3 * EVERY * SLOW)
    until = time.time() - 1.0
    wait_until(lambda: len(_ticks(path)) >= 4, 10 * SLOW, "ticks")
    _once_each(path, since, until)
    status = _status(observer, "b1")
    assert status["leader"] == "b1" and status["leading"] and status["paused"] is None
    (entry,) = status["entries"]
    assert entry["name"] == "tick" and entry["next_run"] > entry["last_run"] > since
    follower = _status(observer, names[-1])
    assert not follower["leading"] and follower["entries"][0]["last_run"] > since


def test_with_three_candidates_a_killed_leader_loses_no_tick_and_doubles_none(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    started, observer, path = _candidates(
        procs, make_node, monkeypatch, tmp_path, ["b1", "b2", "b3"]
    )
    since = time.time()
    _b2_takes_over(started, observer, signal.SIGKILL)
    until = time.time() - 1.0
    _once_each(path, since, until)
    assert _status(observer, "b3")["leader"] == "b2"
    assert _status(observer, "b2")["caught_up"] >= 1  # sent late, not skipped


def test_a_leader_paused_long_enough_to_be_thought_dead_doubles_no_tick(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    # A stop-the-world pause (SIGSTOP: a long GC, a stalled VM) looks like a
    # crash to the others, but the leader comes back believing it still leads.
    started, observer, path = _candidates(
        procs, make_node, monkeypatch, tmp_path, ["b1", "b2", "b3"]
    )
    since = time.time()
    try:
        _b2_takes_over(started, observer, signal.SIGSTOP)
    finally:
        started["b1"].send_signal(signal.SIGCONT)
    wait_until(lambda: _leads(observer, "b1"), 10 * SLOW, "b1 to lead again")
    time.sleep(3 * EVERY)
    until = time.time() - 1.0
    _once_each(path, since, until)


def test_a_leader_whose_beat_stopped_while_its_node_lives_is_replaced(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    # The leader is this process's node a1 (the lowest name). Its beat stops but
    # its node lives and heartbeats, so the directory lists it for ever: the others
    # take the next candidate for the leader once the leases they gave a1 end
    # unrenewed, not when (if ever) its node is declared down.
    started, a1, path = _candidates(
        procs, make_node, monkeypatch, tmp_path, ["b2", "b3"], observer_name="a1"
    )
    beat = _candidate_here(a1, path)
    since = time.time()
    wait_until(lambda: _leads(a1, "a1"), 5 * SLOW, "a1 to lead")
    time.sleep(2 * EVERY)
    a1.call_in_loop(beat.end)
    # Leases end within a second or two; the bound is wider because this process
    # may stall under load, and a1 then rejoins first (a CI run: its loop blocked
    # for 1.3 s, its peers declared it down). What it guards against is "never".
    wait_until(lambda: _leads(a1, "b2"), 10 * SLOW, "b2 to lead")
    status = _status(a1, "b2")
    assert "a1" in status["candidates"] and status["passed"] == ["a1"]
    time.sleep(3 * EVERY)
    until = time.time() - 1.0
    _once_each(path, since, until)


def test_a_leader_with_slower_heartbeats_than_the_others_keeps_the_lead(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    # Each candidate counts a lease in its own heartbeats: a1 (1 s) would take a
    # lease to last longer than b2 and b3 (0.3 s) give it, renew it too late, and
    # find itself passed over while it still sends.
    started, observer, path = _candidates(procs, make_node, monkeypatch, tmp_path, ["b2", "b3"])
    a1 = make_node("a1", cluster=observer.cluster, peers=[observer.endpoints["inbox"]])
    _candidate_here(a1, path)
    since = time.time()
    handed = lambda: _leads(observer, "a1") and not _leads(observer, "b2")  # noqa: E731
    wait_until(handed, 5 * SLOW, "a1 to lead in b2's place")
    views = []
    for _ in range(40):  # about 4 s: six of a1's lease renewals
        views.append((_status(observer, "b2"), _status(observer, "b3")))
        time.sleep(0.1)
    assert _leads(observer, "a1")
    strays = [(v["node"], v["leading"], v["passed"]) for pair in views for v in pair]
    # a1 is never passed over. b2 may be: when it led before a1 joined, the lease
    # b3 gave it ends unrenewed once it follows a1 (a CI run saw b3 pass b2 over).
    assert not [s for s in strays if s[1] or "a1" in s[2]], strays
    until = time.time() - 1.0
    _once_each(path, since, until)


@pytest.mark.parametrize("when", ["catching-up", "sending"])
def test_a_follower_that_stalls_costs_the_leader_no_other_lease(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path, when: str
) -> None:
    # b2 stops a while. The leader asks each candidate for its lease on its own,
    # and renews them beside its rounds: b2's ask, or the leader's question to the
    # mesh which ticks ran (caught up right after taking the lead, and waiting for
    # b2's agent), holds up no renewal of b3's lease, which would end meanwhile
    # and pass the leader over.
    started, observer, path = _candidates(procs, make_node, monkeypatch, tmp_path, ["b2", "b3"])
    a1 = make_node("a1", cluster=observer.cluster, peers=[observer.endpoints["inbox"]])
    beat = _candidate_here(a1, path)
    handed = lambda: _leads(observer, "a1") and not _leads(observer, "b2")  # noqa: E731
    wait_until(handed, 5 * SLOW, "a1 to lead in b2's place")
    if when == "sending":
        sending = lambda: a1.call_in_loop(beat.status)["sent"] > 0  # noqa: E731
        wait_until(sending, 5 * SLOW, "a1 to send")
    sent = a1.call_in_loop(beat.status)["sent"]
    started["b2"].send_signal(signal.SIGSTOP)
    views = []
    try:
        for _ in range(25):  # 2.5 s: four lease lengths at b3, one of a1's asks' waits
            views.append(_status(observer, "b3"))
            time.sleep(0.1)
        leading = a1.call_in_loop(beat.status)
    finally:
        started["b2"].send_signal(signal.SIGCONT)
    # a1 is never passed over, and b3 never leads. b2 may be passed over: the lease
    # b3 gave it when it led before a1 ends unrenewed (a CI run saw it, as in the
    # test above).
    strays = [(v["leading"], v["passed"]) for v in views if v["leading"] or "a1" in v["passed"]]
    assert not strays, strays
    assert leading["leading"], leading
    if when == "sending":  # and it went on sending (a tick every 0.5 s)
        assert leading["sent"] >= sent + 3, leading


def test_the_first_leader_sends_every_tick_due_since_it_became_a_candidate(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    # No leader yet, so no word of a tick: the first one to lead sends all those
    # that fell due while it waited (here for a quorum), not only the last few
    # heartbeats' (a candidate that joins just before a tick and leads a little
    # later than its join wait lost that tick so).
    path, cluster, inbox = _worker_of_ticks(procs, monkeypatch, tmp_path)
    a1 = make_node("a1", cluster=cluster, peers=[inbox], heartbeat=0.3)
    first = _candidate_here(a1, path, quorum=2)
    since = time.time()
    time.sleep(4 * EVERY)  # a1 alone: paused, the quorum is 2
    assert not _ticks(path)
    assert "needs 2 (beat_quorum); start more" in a1.call_in_loop(first.status)["paused"]
    a2 = make_node("a2", cluster=cluster, peers=[inbox], heartbeat=0.3)
    _candidate_here(a2, path, quorum=2)
    wait_until(lambda: a1.call_in_loop(first.status)["leading"], 5 * SLOW, "a1 to lead")
    time.sleep(2 * EVERY)
    until = time.time() - 1.0
    _once_each(path, since, until)
    assert a1.call_in_loop(first.status)["caught_up"] >= 4


def test_a_candidate_joining_a_mesh_with_a_leader_never_leads_alone_meanwhile(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    # A candidate that sees no other yet is a quorum of one: leading then, it would
    # send the ticks the leader sends, until the directory shows it the others.
    started, observer, path = _candidates(procs, make_node, monkeypatch, tmp_path, ["b1"])
    wait_until(lambda: _leads(observer, "b1"), 5 * SLOW, "b1 to lead")
    b2 = make_node(
        "b2", cluster=observer.cluster, peers=[observer.endpoints["inbox"]], heartbeat=0.3
    )
    beat = _candidate_here(b2, path)
    views = []
    for _ in range(150):  # 1.5 s: five of b2's heartbeats
        views.append(b2.call_in_loop(beat.status))
        time.sleep(0.01)
    assert not [v for v in views if v["leading"]], [v["candidates"] for v in views][:5]
    assert views[-1]["candidates"] == ["b1", "b2"] and _leads(observer, "b1")


def test_with_two_candidates_a_graceful_stop_hands_over_at_once(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    started, observer, path = _candidates(procs, make_node, monkeypatch, tmp_path, ["b1", "b2"])
    since = time.time()
    time.sleep(2 * EVERY)
    started["b1"].send_signal(signal.SIGTERM)
    # At once: well before the ~3 heartbeats a crash takes to be noticed.
    wait_until(lambda: _status(observer, "b2")["leading"], 0.6 * SLOW, "b2 to lead")
    time.sleep(3 * EVERY)
    until = time.time() - 1.0
    _once_each(path, since, until)


@pytest.mark.parametrize("quorum", ["", "1"])
def test_with_two_candidates_a_crash_pauses_the_survivor_unless_quorum_is_one(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path, quorum: str
) -> None:
    env = {"ZCELL_TEST_BEAT_QUORUM": quorum}
    started, observer, path = _candidates(
        procs, make_node, monkeypatch, tmp_path, ["b1", "b2"], **env
    )
    time.sleep(2 * EVERY)
    started["b1"].kill(signal.SIGKILL)
    gone = lambda: "b1" not in _status(observer, "b2")["candidates"]  # noqa: E731
    wait_until(gone, 5 * SLOW, "b1 to be gone")
    status = _status(observer, "b2")
    if quorum:
        assert status["leading"] and status["paused"] is None
        before = len(_ticks(path))
        wait_until(lambda: len(_ticks(path)) > before + 1, 5 * SLOW, "ticks from b2")
    else:
        assert not status["leading"]
        assert "paused" in status["paused"] and "b1" in status["paused"]
        before = len(_ticks(path))
        time.sleep(3 * EVERY)
        assert len(_ticks(path)) == before


def test_status_marks_the_beat_leader_and_the_beat_control_op_shows_the_schedule(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path, capsys: Any
) -> None:
    from conftest import run_cli

    _, observer, path = _candidates(procs, make_node, monkeypatch, tmp_path, ["b1", "b2"])
    wait_until(lambda: _status(observer, "b1")["sent"] > 0, 5 * SLOW, "a tick")
    # b2's arrival grows the quorum to two: b1 leads again once b2 gave it a lease.
    wait_until(
        lambda: _leads(observer, "b1") and _status(observer, "b1")["leases"] == ["b2"],
        5 * SLOW,
        "b1 to lead with b2's lease",
    )
    inbox = next(n for n in observer.nodes() if n["name"] == "b1")["endpoints"]["inbox"]
    cluster = observer.cluster
    code, out, _ = run_cli(capsys, "status", "--cluster", cluster, "--no-mdns", "--peer", inbox)
    assert code == 0
    assert "b1 (beat leader)" in out and "b2 (beat leader)" not in out
    b2 = next(n["id"] for n in observer.nodes() if n["name"] == "b2")
    status = observer._ctrl(b2, "beat", {}, 5.0)
    assert status["leader"] == "b1" and not status["leading"]
    assert [e["name"] for e in status["entries"]] == ["tick"]
    # inspect scheduled lists each candidate's periodic entries with their runs.
    from zcell.monitor import Control

    scheduled = Control(observer).inspect(timeout=5.0).scheduled()
    periodic = {n: [i for i in items if "periodic" in i] for n, items in scheduled.items()}
    assert [i["leader"] for i in periodic["b1"]] == [True]
    assert [i["leader"] for i in periodic["b2"]] == [False]
    assert [i["paused"] for i in periodic["b1"]] == [None]  # a whole mesh: not paused
    entry = periodic["b1"][0]["periodic"]
    assert entry["name"] == "tick" and entry["task"] == "zcell_test_beat.tick"
    assert entry["last_run"] is not None and entry["next_run"] > entry["last_run"]


def test_zcell_beat_is_a_candidate_that_only_sends(
    procs: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    path, cluster, inbox = _worker_of_ticks(procs, monkeypatch, tmp_path)
    argv = ["zcell", "beat", "-A", "zcell_test_beat", "--no-mdns", "--name", "a-beat"]
    beat = procs([*argv, "--cluster", cluster, "--heartbeat", "0.3", "--peer", inbox])
    beat.wait_for_line(r"^\s+\. tick: zcell_test_beat.tick <schedule every 0.5s>$", 15 * SLOW)
    beat.wait_for_line("^ready$", 15 * SLOW)
    wait_until(lambda: len(_ticks(path)) >= 2, 10 * SLOW, "ticks")
    workers = {line.split()[1] for line in path.read_text().splitlines()}
    assert workers == {"w1"}  # the beat node consumes no queue


def test_a_bad_beat_schedule_is_a_usage_error(procs: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("ZCELL_TEST_BEAT_BAD", "1")
    argv = ["zcell", "beat", "-A", "zcell_test_beat", "--no-mdns", "--name", "bad"]
    proc = procs([*argv, "--cluster", unique_cluster()])
    proc.wait_for_line(r"beat_schedule\['bad'\] needs 'task' and 'schedule'", 15 * SLOW)
    assert proc.popen.wait(timeout=15 * SLOW) == 2


def test_an_entry_without_catch_up_skips_the_ticks_missed_in_a_hand_over(
    procs: Any, make_node: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    names = ["b1", "b2", "b3"]
    env = {"ZCELL_TEST_BEAT_SKIP": "1"}
    started, observer, path = _candidates(procs, make_node, monkeypatch, tmp_path, names, **env)
    time.sleep(2 * EVERY)
    # Killed just before a tick is due, so that one falls in the hand-over (which
    # can take less than EVERY: a window with none due would show nothing).
    now = time.time()
    time.sleep((-now) % EVERY - 0.05 if (-now) % EVERY > 0.1 else (-now) % EVERY + EVERY - 0.05)
    killed = time.time()
    started["b1"].kill(signal.SIGKILL)
    wait_until(lambda: _status(observer, "b2")["leading"], 5 * SLOW, "b2 to lead")
    took_over = time.time()
    time.sleep(3 * EVERY)
    ran = _ticks(path)
    assert len(ran) == len(set(ran))
    assert _due_ids(killed, took_over) - set(ran), "no tick of the hand-over was skipped"
    assert _due_ids(took_over + 1.0, time.time() - 0.5) <= set(ran)
    assert _status(observer, "b2")["caught_up"] == 0
