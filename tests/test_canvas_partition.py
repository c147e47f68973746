"""A chord whose member's report is lost (its worker cut off from the coordinator
for longer than a report waits) still completes once they meet again: the
coordinator asks the mesh for the outcomes it has not heard (network namespaces,
nft). Without that it waited for ever: a chord that hangs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SLOW, child_env, in_host, start_zcell_worker
from netns import Mesh, mesh_fixture, nft_available

from zcell.tasks.followup import MEET_WAIT

pytestmark = pytest.mark.netns

mesh3 = mesh_fixture(3)
HB = 0.3

SUBMIT = """
import os
import time
import zcell_test_tasks as t
from zcell import chord

t.app.conf.update(cluster={cluster!r}, peers=[{peer!r}], host={host!r})
t.app.node.wait_for(type="zcell.queue.slow", timeout=20)
t.app.node.wait_for(type="zcell.queue.celery", timeout=20)
print("go", flush=True)
deadline = time.monotonic() + 60  # the test cuts the member's worker off the coordinator
while not os.path.exists({go!r}) and time.monotonic() < deadline:
    time.sleep(0.05)
res = chord([t.slow_add.s(20, 22).set(queue="slow")], t.xsum.s())()
print("applied", flush=True)
try:
    print("result", res.get(timeout={timeout}), flush=True)
except Exception as exc:
    print("error", type(exc).__name__, exc, flush=True)
t.app.close()
"""


def _worker(mesh: Mesh, i: int, cluster: str, queue: str, peer: str | None) -> tuple[Any, str]:
    """``zcell worker -Q queue`` on host ``i``: (proc, inbox)."""
    host = mesh.hosts[i]
    extra = ("-Q", queue, "--host", host.address, "--heartbeat", str(HB))
    return start_zcell_worker(in_host(host), f"w{i}", cluster, *extra, peer=peer)


def test_a_chord_whose_report_was_lost_completes_when_the_coordinator_asks(
    mesh3: Mesh, tmp_path: Path
) -> None:
    reason = nft_available()
    if reason is not None:
        pytest.skip(f"nft unavailable: {reason}")
    cluster = f"chord-{time.time_ns() % 10**8}"
    # h1 runs the header (queue "slow"); h2 consumes the body's queue: it coordinates.
    coordinator, inbox = _worker(mesh3, 2, cluster, "celery", None)
    _worker(mesh3, 1, cluster, "slow", inbox)
    script, go = tmp_path / "submit.py", tmp_path / "go"
    timeout = MEET_WAIT + 20 * SLOW
    script.write_text(
        SUBMIT.format(
            cluster=cluster,
            peer=inbox,
            host=mesh3.hosts[0].address,
            timeout=timeout,
            go=str(go),
        )
    )
    submitter = mesh3.hosts[0].popen([sys.executable, str(script)], env=child_env())
    submitter.wait_for_line("^go$", 30 * SLOW)
    mesh3.partition(1, 2)
    time.sleep(6 * HB)  # w1 sees w2 down: its report waits to meet it, MEET_WAIT at most
    go.touch()
    submitter.wait_for_line("^applied$", 10 * SLOW)
    time.sleep(MEET_WAIT + 2.0)  # the report is given up (logged and counted)
    mesh3.unpartition(1, 2)
    line = submitter.wait_for_line(r"^(result|error) .*", timeout + 10).group(0)
    assert line == "result 42", line
    # Found by asking the mesh, not by a report that came late after all.
    coordinator.wait_for_line("report never came; its outcome was asked of the mesh", 5)
