"""The seeds' calling examples hold verbatim with zcell's imports, against real
`zcell worker` processes: Celery's "Next Steps" (002) on examples/proj, and the
intro post (001) on examples/multiply.py."""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, SLOW, unique_cluster, wait_until

from zcell import App, NoBrokerNeeded

EXAMPLES = os.path.join(ROOT, "examples")


def _worker(procs: Any, app: str, name: str, cluster: str, *extra: str, peer: str | None = None):
    """``zcell worker -A <app>`` (start_zcell_worker's, with another app)."""
    argv = ["zcell", "worker", "-A", app, "--no-mdns", "--name", name, "--cluster", cluster]
    argv += [*extra, *(["--peer", peer] if peer else [])]
    proc = procs(argv)
    inbox = proc.wait_for_line(r"inbox:\s+(\S+)", 15 * SLOW).group(1)
    proc.wait_for_line("^ready$", 15 * SLOW)
    return proc, inbox


@pytest.fixture
def proj(procs: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """examples/proj importable here and in the workers: `zcell worker -A proj -Q
    hipri,celery` (w1) and `-Q lopri` (w2); the app pointed at them."""
    monkeypatch.syspath_prepend(EXAMPLES)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([EXAMPLES, os.environ.get("PYTHONPATH", "")]))
    from proj.celery import app

    cluster = unique_cluster()
    _, inbox = _worker(procs, "proj", "w1", cluster, "-Q", "hipri,celery")
    _worker(procs, "proj", "w2", cluster, "-Q", "lopri", peer=inbox)
    app.close(timeout=0)
    app.conf.update(cluster=cluster, peers=[inbox], discovery="static")
    for queue in ("celery", "hipri", "lopri"):
        wait_until(lambda q=queue: app.node.actors(f"zcell.queue.{q}"), 10, f"a {queue} consumer")
    yield app
    app.close(timeout=0)


def test_next_steps_calling_examples_hold_verbatim(proj: Any) -> None:
    from proj.celery import app
    from proj.tasks import add

    assert add.delay(2, 2).get(timeout=10 * SLOW) == 4
    assert add.apply_async((2, 2)).get(timeout=10 * SLOW) == 4
    later = add.apply_async((2, 2), queue='lopri', countdown=10)  # fmt: skip
    assert add(2, 2) == 4

    res = add.delay(2, 2)
    assert res.get(timeout=1) == 4
    assert str(uuid.UUID(res.id)) == res.id

    res = add.delay(2)
    with pytest.raises(TypeError, match="add()"):
        res.get(timeout=1)
    assert isinstance(res.get(propagate=False), TypeError)
    assert res.failed() is True
    assert res.successful() is False
    assert res.state == 'FAILURE'  # fmt: skip

    res = app.AsyncResult('this-id-does-not-exist')  # fmt: skip
    assert res.state == 'PENDING'  # fmt: skip

    hipri = add.apply_async((2, 2), queue='hipri')  # fmt: skip
    assert hipri.get(timeout=10 * SLOW) == 4 and hipri.worker == "w1"

    # The countdown=10 task: held by lopri's worker, not run yet (10 s at the earliest).
    wait_until(lambda: later.state == "RECEIVED", 5, "lopri's worker to hold it")
    assert not later.ready()
    later.revoke()
    # The same call with a short countdown, for speed: it runs on lopri's worker, late.
    sent = time.time()
    soon = add.apply_async((2, 2), queue='lopri', countdown=0.5)  # fmt: skip
    assert soon.get(timeout=10 * SLOW) == 4 and soon.worker == "w2"
    assert soon.date_done is not None and soon.date_done.timestamp() - sent >= 0.5


def test_the_intro_post_s_app_and_send_task_hold_verbatim(procs: Any) -> None:
    cluster = unique_cluster()
    _, inbox = _worker(procs, "examples.multiply", "w1", cluster)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = App('tasks', broker='redis://localhost:6379/0', backend='redis://localhost:6379/0')  # fmt: skip
    assert [w.category for w in caught] == [NoBrokerNeeded]
    assert "no broker or result backend is needed" in str(caught[0].message)
    app.conf.update(cluster=cluster, peers=[inbox], discovery="static")
    with app:
        wait_until(lambda: app.node.actors("zcell.queue.celery"), 10, "the worker")
        promise = app.send_task('tasks.multiply', args=[2, 2])  # fmt: skip
        assert promise.get(timeout=10 * SLOW) == 4
