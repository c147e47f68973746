"""Back-pressure: a flood of fire-and-forget messages, the receiver frozen midway."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import time

import pytest
from conftest import SLOW, start_zcell_node

N = 1_000_000

SENDER = textwrap.dedent(
    """
    import json, resource, sys, time
    from zcell import Node
    from zcell_test_actors import Sink
    n = int(sys.argv[2])
    with Node("sender", discovery="static", peers=[sys.argv[1]], heartbeat=2.0) as node:
        node.wait_for(nodes=2, timeout=10)
        ref = node.spawn(Sink, on="sink", n=n)
        started = time.monotonic()
        for i in range(n):
            # Back-pressure: while the receiver is frozen this waits (up to 60 s).
            ref.send.take(i=i, nowait=True, timeout=60)
            if i and i % 100_000 == 0:
                print("sent", i, flush=True)
        print("all sent", flush=True)
        end = time.monotonic() + 120
        while True:
            report = ref.send.report(timeout=30)
            if report["count"] >= n or time.monotonic() > end:
                break
            time.sleep(0.2)
        report["seconds"] = round(time.monotonic() - started, 2)
        report["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("result", json.dumps(report), flush=True)
    """
)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_million_nowait_messages_arrive_exactly_once_through_a_freeze(procs):
    receiver, inbox = start_zcell_node(procs, "sink", "--heartbeat", "2")
    sender = procs([sys.executable, "-c", SENDER, inbox, str(N)])
    sender.wait_for_line(r"sent 300000", 120 * SLOW)
    receiver.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    time.sleep(3)  # the sender now feels back-pressure; heartbeat grace is 5.2 s
    receiver.send_signal(signal.SIGCONT)
    assert time.monotonic() - frozen_at < 5
    line = sender.wait_for_line(r"result (.*)", 200 * SLOW)
    report = json.loads(line.group(1))
    print(report)
    assert report["count"] == N
    assert report["duplicates"] == 0
    assert report["missing"] == 0
    assert report["rss_peak_mib"] < 300
    assert peak_rss_mib(receiver.pid) < 300
