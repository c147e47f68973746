"""The app, its settings, tasks and routing: what needs no worker."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
import zcell_test_tasks as t
from conftest import unique_cluster

from zcell import (
    App,
    NoBrokerNeeded,
    ProtocolError,
    SerializationError,
    SettingLocked,
    TaskPendingFull,
    UnknownSetting,
    ZcellError,
)
from zcell.tasks import message
from zcell.tasks.records import REREAD, Expiring
from zcell.tasks.routing import route


def test_an_unknown_setting_is_a_typed_error_naming_the_closest_one() -> None:
    app = App("x")
    with pytest.raises(UnknownSetting, match="did you mean result_expires"):
        app.conf.result_expire = 10
    with pytest.raises(AttributeError):
        _ = app.conf.task_default_queu
    with pytest.raises(KeyError):
        app.conf.update(task_acks_lat=True)
    with pytest.raises(ZcellError):
        App("y", worker_concurency=2)


def test_settings_read_and_write_by_attribute_item_and_update() -> None:
    app = App("x", result_expires=60)
    app.conf.update(task_default_queue="q1")
    app.conf["worker_prefetch_multiplier"] = 2
    app.conf.task_acks_late = True
    assert app.conf.result_expires == 60
    assert app.conf["task_default_queue"] == "q1"
    assert app.conf.worker_prefetch_multiplier == 2
    assert app.conf.task_acks_late is True
    assert app.conf.task_default_queue == "q1"


def test_broker_and_backend_are_accepted_and_ignored_with_one_warning() -> None:
    with pytest.warns(NoBrokerNeeded, match="needed") as warned:
        app = App("proj", broker="amqp://", backend="rpc://", include=["proj.tasks"])
    assert len(warned) == 1
    assert app.include == ["proj.tasks"]


def test_mesh_settings_are_locked_while_the_apps_node_runs() -> None:
    app = App("x", cluster=unique_cluster(), discovery="static")
    try:
        app.node  # noqa: B018 - starts the client node
        with pytest.raises(SettingLocked, match=r"app\.close\(\)"):
            app.conf.cluster = "other"
        app.conf.result_expires = 5  # other settings may change
    finally:
        app.close(timeout=0)
    app.conf.cluster = unique_cluster()  # allowed again after close()


def test_task_names_default_to_module_and_function_and_options_are_checked() -> None:
    app = App("x")

    @app.task
    def plain() -> int:
        return 1

    @app.task(name="custom.name", queue="hipri")
    def named() -> int:
        return 2

    assert plain.name == f"{__name__}.plain"
    assert app.tasks["custom.name"] is named
    assert named.queue == "hipri"
    with pytest.raises(TypeError, match="max_retrys"):
        app.task(max_retrys=3)(lambda: None)
    with pytest.raises(KeyError, match="did you mean"):
        app.tasks["custom.nam"]


def test_calling_a_task_runs_it_here_without_a_message() -> None:
    assert t.add(2, 3) == 5
    assert t.whoami()["id"] == ""  # bound: an eager request


def test_routing_order_queue_option_then_routes_then_task_queue_then_default() -> None:
    routes = [{"proj.tasks.mul": {"queue": "exact"}}, {"proj.tasks.*": "glob"}]
    common: dict[str, Any] = {"routes": routes, "task_queue": "own", "default": "celery"}
    assert route("proj.tasks.mul", queue="given", **common) == "given"
    assert route("proj.tasks.mul", queue=None, **common) == "exact"
    assert route("proj.tasks.add", queue=None, **common) == "glob"
    assert route("other.add", queue=None, **common) == "own"
    assert (
        route("other.add", queue=None, routes=None, task_queue=None, default="celery") == "celery"
    )
    exact_beats_glob = {"a.*": {"queue": "glob"}, "a.b": {"queue": "exact"}}
    assert (
        route("a.b", queue=None, routes=exact_beats_glob, task_queue=None, default="d") == "exact"
    )
    with pytest.raises(ValueError, match="queue name"):
        route("a", queue="bad queue", routes=None, task_queue=None, default="d")


def test_a_malformed_task_message_is_a_protocol_error() -> None:
    good = message.make(id="1", name="n", args=[], kwargs={}, queue="q", reply_to=None)
    missing = {k: v for k, v in good.items() if k != "queue"}
    for bad in (None, [], {**good, "args": "x"}, {**good, "retries": True}, {**good, "id": ""}):
        with pytest.raises(ProtocolError):
            message.check(bad)
    with pytest.raises(ProtocolError, match="without 'queue'"):
        message.check(missing)
    with pytest.raises(ProtocolError, match="reply_to"):
        message.check(good)  # no agent to claim at

    class Agent:
        def send(self) -> None: ...

    class Count(int):
        pass

    # A subclass of a field's type will do (an in-process push is not decoded).
    sent = {**good, "reply_to": Agent(), "retries": Count(1)}
    assert message.check(sent) is sent


def test_eta_is_utc_seconds_and_naive_datetimes_are_utc() -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    aware = naive.replace(tzinfo=UTC)
    assert message.epoch(naive) == message.epoch(aware) == aware.timestamp()


@pytest.mark.parametrize(
    "bad",
    [
        object(),
        2**64,
        -(2**63) - 1,
        "\udc80",
        ["ok", b"x", {"k": object()}],
        {1: {2: set()}},
        {(1, 2): "tuple key"},
        [msgpack.Timestamp(1)],
        {"k": [msgpack.ExtType(5, b"")]},
    ],
    ids=[
        "object",
        "uint64-overflow",
        "int64-underflow",
        "lone-surrogate",
        "nested",
        "set",
        "tuple-key",
        "timestamp",
        "ext-type",
    ],
)
def test_arguments_that_do_not_serialise_raise_at_once(task_app: Any, bad: Any) -> None:
    """Plain arguments are passed without encoding them twice: the shortcut must
    still refuse whatever cannot travel."""
    app = task_app(cluster=unique_cluster(), peers=[])
    with pytest.raises(SerializationError):
        t.add.delay(bad, 1)
    with pytest.raises(SerializationError):
        t.add.apply_async((1,), {"y": bad})
    assert app.node.statistics()["members"] == 1


def test_a_sent_task_message_has_every_field_of_message_make_in_its_order(task_app: Any) -> None:
    """``send_task`` builds its message as one literal (for speed): it must stay
    the message ``message.make`` defines, which the worker checks."""
    task_app(cluster=unique_cluster(), peers=[])
    sent = t.add.apply_async((1, 2), queue="nobody_here")._entry.msg
    made = message.make(
        id=sent["id"], name=sent["name"], args=[1, 2], kwargs={}, queue="nobody_here",
        root_id=sent["id"], reply_to=sent["reply_to"],
    )  # fmt: skip
    assert list(sent) == list(made)
    assert sent == made
    message.check(dict(sent))


def test_only_a_message_of_plain_fields_skips_the_codecs_walk(task_app: Any) -> None:
    """What ``send_task`` lets a push leave unwalked (``codec.Checked``): fields
    zcell made or of plain types; anything else the codec walks at each push."""
    from zcell.tasks.app import _plain_message

    task_app(cluster=unique_cluster(), peers=[])
    msg = t.add.apply_async((1, 2), queue="nobody_here")._entry.msg
    agent = msg["reply_to"]
    report = {"id": "c", "i": 0, "to": agent}
    assert _plain_message(msg, {})
    assert _plain_message({**msg, "chord": report, "watchers": [agent]}, {"chord": report})
    refused = [
        ({}, {"headers": {}}),
        ({}, {"chain": []}),
        ({"time_limit": "5"}, {}),
        ({"root_id": ("a", "b")}, {}),
        ({"parent_id": 3}, {}),
        ({"watchers": [agent, {"x": 1}]}, {}),
        ({"chord": {**report, (1, 2): 3}}, {}),
        ({"chord": {"id": "c", "i": "0", "to": agent}}, {}),
        ({"chord": {"id": "c", "i": 0, "to": "agent"}}, {}),
    ]
    for fields, options in refused:
        assert not _plain_message({**msg, **fields}, options), (fields, options)


def test_task_ids_are_random_uuids_unique_across_a_fork() -> None:
    ids = {message.new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for task_id in list(ids)[:100]:
        parsed = uuid.UUID(task_id)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == task_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out
        os.write(write, message.new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child != message.new_id()


def test_more_than_task_pending_max_waiting_tasks_raise_task_pending_full(task_app: Any) -> None:
    app = task_app(cluster=unique_cluster(), peers=[])
    app.conf.update(task_pending_max=2, task_pending_wait=0.2)
    try:
        t.add.delay(1, 1)
        t.add.delay(1, 2)  # no worker: both wait here
        with pytest.raises(TaskPendingFull, match="task_pending_max"):
            t.add.delay(1, 3)
    finally:
        app.conf.update(task_pending_max=100_000, task_pending_wait=10.0)


def test_the_worker_finds_the_app_as_celery_does() -> None:
    from zcell.cli.common import UsageError
    from zcell.cli.tasks import find_app

    assert find_app("zcell_test_tasks") is t.app  # module.app
    assert find_app("zcell_test_tasks:app") is t.app  # exact
    with pytest.raises(UsageError, match="no App named 'nope'"):
        find_app("zcell_test_tasks:nope")
    with pytest.raises(UsageError, match="tried json.app, json.celery, any App in json"):
        find_app("json")


def test_records_expire_stay_bounded_and_follow_their_settings() -> None:
    """The store of finished tasks' records (and revoked ids, and deliveries seen):
    its settings are read again every ``REREAD`` seconds, not at every put."""
    now = [1000.0]
    ttl, most = [10.0], [3]
    store = Expiring(lambda: ttl[0], lambda: most[0], clock=lambda: now[0])
    for i in range(5):
        store.put(f"t{i}", i)
    assert len(store) == 3 and store.get("t0") is None and store.get("t4") == 4
    now[0] += 10.5  # all expired: invisible at once, dropped at the next reading
    assert store.get("t4") is None and "t3" not in store
    store.put("a", 1)
    assert [k for k, _, _ in store.items()] == ["a"]
    most[0], ttl[0] = 1, 100.0  # changed settings apply within REREAD seconds
    store.put("b", 2)
    now[0] += REREAD
    store.put("c", 3)
    assert [k for k, _, _ in store.items()] == ["c"]
    now[0] += 50
    assert store.get("c") == 3  # kept for the new ttl
