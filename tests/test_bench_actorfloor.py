"""Smoke test of the actor floor: ``python -m bench.actorfloor --quick --json --zcell``.

Structure only; timings depend on the machine and are never asserted. The run
itself checks every reply's id (a mixed-up reply fails it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import run_bench_json

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "lean",
    "pool",
    "actor_dealer",
    "actor_conn",
    "chain",
    "zcell_send",
    "zcell_actor",
    "zcell_chain",
)
CHAINS = ("chain", "zcell_chain")


def test_actorfloor_quick_json_with_zcell() -> None:
    result = run_bench_json("bench.actorfloor", "--quick", "--json", "--zcell", timeout=120)
    assert set(result) == set(FIGURES), sorted(result)
    for name in FIGURES:
        m = result[name]
        assert 0 < m["p50_us"] <= m["p99_us"], (name, m)
        assert len(m["runs"]) == 1 and m["runs"][0]["p50_us"] == m["p50_us"], (name, m)
        assert m["ratio"] == round(m["p50_us"] / result["lean"]["p50_us"], 3), (name, m)
    for name in CHAINS:
        m = result[name]
        assert m["per_hop_p50_us"] == round(m["p50_us"] / 10, 1), (name, m)
        assert m["hop_ratio"] == round(m["per_hop_p50_us"] / result["lean"]["p50_us"], 3)


def test_actorfloor_client_fails_when_a_reply_is_mixed_up() -> None:
    """The harness checks what it times: a server that answers the wrong id fails the run."""
    code = (
        "import sys, bench.actorfloor as f\n"
        "real = f.msgpack.packb\n"
        "f.msgpack.packb = lambda m: real(['r', m[1] + 1, m[2]] if m[0] == 'r' else m)\n"
        "sys.exit(f.main(sys.argv[1:]))\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code, "--server", "pool", "conn"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        client = subprocess.run(
            [sys.executable, "-m", "bench.actorfloor", "--client", str(port), "actor_conn"]
            + ["--counts", "1,5"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode != 0
        assert "reply ['r', 1, 1] to request 0" in client.stderr, client.stderr[-2000:]
    finally:
        server.kill()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
