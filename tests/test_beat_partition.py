"""Beat across a network partition 2 | 1 (network namespaces, nft): the side that
holds a majority of the candidates keeps ticking, each tick once; the minority
side, which held the leader, stops and says why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import SLOW, in_host, start_zcell_worker, wait_until
from netns import Mesh, mesh_fixture, nft_available

pytestmark = pytest.mark.netns

mesh3 = mesh_fixture(3)
HB = 0.3


def _ran(path: Path) -> list[tuple[str, str]]:
    """(tick id, worker) of each run."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(line.split()[0], line.split()[1]) for line in lines]


def _candidate(mesh: Mesh, i: int, cluster: str, peer: str | None) -> tuple[Any, str]:
    """``zcell worker -B -A zcell_test_beat`` on host ``i``: (proc, inbox)."""
    host = mesh.hosts[i]
    extra = ("-B", "-c", "4", "--host", host.address, "--heartbeat", str(HB))
    name = f"b{i}"
    return start_zcell_worker(
        in_host(host), name, cluster, *extra, peer=peer, app="zcell_test_beat"
    )


def test_a_partition_keeps_the_majority_ticking_and_stops_the_minority(
    mesh3: Mesh, monkeypatch: Any, tmp_path: Path
) -> None:
    reason = nft_available()
    if reason is not None:
        pytest.skip(f"nft unavailable: {reason}")
    path = tmp_path / "ticks"
    monkeypatch.setenv("ZCELL_TEST_BEAT_FILE", str(path))
    monkeypatch.setenv("ZCELL_TEST_BEAT_EVERY", "0.5")
    cluster = f"beat-{time.time_ns() % 10**8}"
    b0, inbox = _candidate(mesh3, 0, cluster, None)
    _candidate(mesh3, 1, cluster, inbox)
    _candidate(mesh3, 2, cluster, inbox)
    wait_until(lambda: {w for _, w in _ran(path)} >= {"b0", "b1", "b2"}, 15 * SLOW, "all run")

    mesh3.partition(0, 1)  # b0, the leader, alone on its side
    mesh3.partition(0, 2)
    b0.wait_for_line("beat paused on b0", 10 * SLOW)
    settled = len(_ran(path))
    time.sleep(4 * 0.5)
    after = _ran(path)[settled:]
    assert after, "the majority side stopped ticking"
    assert all(w != "b0" for _, w in after), f"the minority side ticked: {after}"
    ids = [i for i, _ in after]
    assert len(ids) == len(set(ids)), f"a tick ran twice on the majority side: {after}"
