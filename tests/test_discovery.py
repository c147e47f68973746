"""zcell._mesh.discovery against real zeroconf on loopback: no mocks.

Every test uses its own random cluster name, so concurrent runs (and other zcell
processes on this host) cannot disturb it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from zcell._mesh.discovery import PROTOCOL_VERSION, SERVICE_TYPE, Discovery, DiscoveryError, PeerAd

ROOT = Path(__file__).resolve().parents[1]
_ports = itertools.count(20000, 3)


def new_cluster() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


class Peers:
    """An on_peer callback that records ads and lets a test wait for one."""

    def __init__(self) -> None:
        self.ads: list[PeerAd] = []
        self._cond = threading.Condition()

    def __call__(self, ad: PeerAd) -> None:
        with self._cond:
            self.ads.append(ad)
            self._cond.notify_all()

    def wait_for(self, node_id: str, timeout: float) -> PeerAd | None:
        with self._cond:
            self._cond.wait_for(lambda: self.find(node_id) is not None, timeout)
            return self.find(node_id)

    def find(self, node_id: str) -> PeerAd | None:
        return next((ad for ad in self.ads if ad.node_id == node_id), None)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll a condition nobody can signal (a counter) until a deadline."""
    deadline, tick = time.monotonic() + timeout, threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.02)
    return True


MakeNode = Callable[..., tuple[Discovery, Peers]]


@pytest.fixture
def make_node() -> Iterator[MakeNode]:
    """Build Discovery objects (not started) and stop every one of them afterwards."""
    made: list[Discovery] = []

    def make(
        cluster: str,
        *,
        host: str = "127.0.0.1",
        secure: bool = False,
        on_peer: Callable[[PeerAd], None] | None = None,
    ) -> tuple[Discovery, Peers]:
        peers, port = Peers(), next(_ports)
        d = Discovery(
            cluster=cluster,
            node_id=uuid.uuid4().hex,
            name=f"node-{port}",
            host=host,
            inbox_port=port,
            pub_port=port + 1,
            hb_port=port + 2,
            secure=secure,
            on_peer=on_peer or peers,
        )
        made.append(d)
        return d, peers

    yield make
    for d in made:
        t0 = time.monotonic()
        d.stop()
        assert time.monotonic() - t0 < 2.0, "stop() must be bounded"


@pytest.fixture
def raw_zeroconf() -> Iterator[Zeroconf]:
    """A plain zeroconf responder on loopback, for ads zcell would never send."""
    zc = Zeroconf(interfaces=["127.0.0.1"])
    yield zc
    zc.close()


def register(zc: Zeroconf, name: str, properties: dict[bytes, bytes | None]) -> None:
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        port=next(_ports),
        properties=properties,
        parsed_addresses=["127.0.0.1"],
        server=f"{name}.local.",
    )
    # Not the sync API: it would wait ~0.5 s for all three announcements per ad.
    coro = zc.async_register_service(info, cooperating_responders=True)
    assert zc.loop is not None
    asyncio.run_coroutine_threadsafe(coro, zc.loop).result(2)


def txt(cluster: str, **overrides: str) -> dict[bytes, bytes | None]:
    fields = {"cluster": cluster, "id": uuid.uuid4().hex, "name": "raw"}
    fields |= {"inbox": "1", "pub": "2", "hb": "3", "secure": "0", "proto": str(PROTOCOL_VERSION)}
    fields |= overrides
    return {k.encode(): v.encode() for k, v in fields.items()}


@pytest.mark.timeout(20)
def test_two_nodes_in_one_process_find_each_other_within_a_second(make_node: MakeNode) -> None:
    cluster = new_cluster()
    a, a_peers = make_node(cluster)
    b, b_peers = make_node(cluster, secure=True)
    t0 = time.monotonic()
    a.start()
    b.start()
    assert time.monotonic() - t0 < 0.5, "start() must return quickly"

    ad_of_b = a_peers.wait_for(b.node_id, timeout=1.0)
    ad_of_a = b_peers.wait_for(a.node_id, timeout=max(0.0, 1.0 - (time.monotonic() - t0)))

    assert ad_of_b is not None and ad_of_a is not None, f"took over 1 s: {a.stats} {b.stats}"
    port = int(ad_of_b.inbox.rsplit(":", 1)[1])
    assert ad_of_b == PeerAd(
        cluster=cluster,
        node_id=b.node_id,
        name=f"node-{port}",
        inbox=f"tcp://127.0.0.1:{port}",
        pub=f"tcp://127.0.0.1:{port + 1}",
        hb=f"tcp://127.0.0.1:{port + 2}",
        secure=True,
        proto=PROTOCOL_VERSION,
    )
    assert ad_of_a.secure is False and ad_of_a.inbox.startswith("tcp://127.0.0.1:")
    assert a_peers.find(a.node_id) is None and b_peers.find(b.node_id) is None, "saw itself"
    assert a.stats["bad_ads"] == b.stats["bad_ads"] == 0


@pytest.mark.timeout(20)
def test_a_late_joiner_finds_an_established_node_within_a_second(make_node: MakeNode) -> None:
    """Just after its own announcements, an established node may not answer queries
    for ~1 s (RFC 6762 rate limit); it must greet a newcomer instead."""
    cluster = new_cluster()
    old, old_peers = make_node(cluster)
    old.start()
    threading.Event().wait(0.7)  # not a sync: lets old's 3 announcements (~0.45 s) end
    new, new_peers = make_node(cluster)
    new.start()
    assert new_peers.wait_for(old.node_id, 1.0) is not None, new.stats
    assert old_peers.wait_for(new.node_id, 1.0) is not None, old.stats


@pytest.mark.timeout(20)
def test_an_ad_names_the_exact_loopback_address_the_node_binds(make_node: MakeNode) -> None:
    cluster = new_cluster()
    a, _ = make_node(cluster, host="127.0.0.2")
    b, b_peers = make_node(cluster)
    b.start()
    a.start()
    ad = b_peers.wait_for(a.node_id, timeout=1.0)
    assert ad is not None and ad.inbox.startswith("tcp://127.0.0.2:")


@pytest.mark.timeout(20)
def test_nodes_of_different_clusters_never_see_each_other(make_node: MakeNode) -> None:
    cluster = new_cluster()
    a, a_peers = make_node(cluster)
    b, b_peers = make_node(cluster)
    other, other_peers = make_node(new_cluster())
    for d in (other, a, b):
        d.start()
    assert a_peers.wait_for(b.node_id, 1.0) and b_peers.wait_for(a.node_id, 1.0)

    # Give the foreign ads ample time to arrive and (wrongly) be reported.
    assert other_peers.wait_for(a.node_id, timeout=1.5) is None
    assert a_peers.find(other.node_id) is None and b_peers.find(other.node_id) is None
    assert other_peers.ads == []
    # The foreign ads were heard and filtered, not merely missed.
    assert a.stats["other_cluster"] >= 1 and other.stats["other_cluster"] >= 2


SUBPROCESS_NODES = r"""
import sys
if sys.argv[1] == "patched":
    from gevent import monkey
    monkey.patch_all()
import json, time, uuid
import gevent, gevent.event
from gevent import monkey
from zcell._mesh.discovery import Discovery

assert monkey.is_module_patched("threading") == (sys.argv[1] == "patched")
cluster, results = sys.argv[2], {}
native_lock = monkey.get_original("_thread", "allocate_lock")
found_flags = {"main": native_lock(), "threaded": native_lock()}
for flag in found_flags.values():
    flag.acquire()

def node(label, other, port):
    # What a zcell node does: it owns a hub, hands on_peer calls (made from another
    # thread) to it through an async watcher, and runs start/stop in its threadpool.
    hub = gevent.get_hub()
    found, ads = gevent.event.Event(), []
    watcher = hub.loop.async_()
    watcher.start(found.set)
    def on_peer(ad):
        ads.append(ad)
        watcher.send()
    d = Discovery(cluster=cluster, node_id=uuid.uuid4().hex, name=label,
                  host="127.0.0.1", inbox_port=port, pub_port=port + 1, hb_port=port + 2,
                  secure=False, on_peer=on_peer)
    t0 = time.monotonic()
    hub.threadpool.apply(d.start)
    r = results[label] = {"start_s": time.monotonic() - t0, "started": time.monotonic()}
    r["found"] = time.monotonic() if found.wait(5) else None
    r["peer"] = ads[0].name if ads else None
    # Keep advertising until the other node has found us too, as a real node would.
    found_flags[label].release()
    hub.threadpool.apply(found_flags[other].acquire, (True, 5))
    t0 = time.monotonic()
    hub.threadpool.apply(d.stop)
    r["stop_s"] = time.monotonic() - t0
    watcher.close()

done = native_lock()
done.acquire()
def in_own_thread():
    try:
        node("threaded", "main", 31000)
    finally:
        done.release()
monkey.get_original("_thread", "start_new_thread")(in_own_thread, ())
node("main", "threaded", 32000)
assert done.acquire(True, 10), "the node thread did not finish"
print(json.dumps(results))
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["patched", "unpatched"])
def test_nodes_with_their_own_gevent_hubs_find_each_other(mode: str) -> None:
    """patch_all() or not, a node in the main thread and one in a native thread with
    its own hub (start/stop run in the hub's threadpool) find each other in < 1 s."""
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_NODES, mode, new_cluster()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "destroyed" not in proc.stderr, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    both_started = max(r["started"] for r in results.values())
    assert results["main"]["peer"] == "threaded" and results["threaded"]["peer"] == "main"
    for label, r in results.items():
        assert r["start_s"] < 0.5, (label, r)
        assert r["found"] is not None and r["found"] - both_started < 1.0, (label, r)
        assert r["stop_s"] < 2.0, (label, r)


@pytest.mark.timeout(20)
def test_a_node_started_from_a_thread_keeps_working_after_that_thread_ends(
    make_node: MakeNode,
) -> None:
    cluster = new_cluster()
    a, a_peers = make_node(cluster)
    starter = threading.Thread(target=a.start)
    starter.start()
    starter.join(5)
    assert not starter.is_alive()

    b, b_peers = make_node(cluster)
    b.start()
    assert a_peers.wait_for(b.node_id, 1.0) is not None
    assert b_peers.wait_for(a.node_id, 1.0) is not None


@pytest.mark.timeout(20)
def test_malformed_and_foreign_ads_are_counted_and_never_reported(
    make_node: MakeNode, raw_zeroconf: Zeroconf
) -> None:
    cluster = new_cluster()
    d, peers = make_node(cluster)
    d.start()
    bad = {
        "foreign": {b"path": b"/printer", b"rp": None},
        "newer_protocol": txt(cluster, proto=str(PROTOCOL_VERSION + 1)),
        "port_not_a_number": txt(cluster, inbox="http"),
        "port_out_of_range": txt(cluster, hb="70000"),
        "secure_not_a_flag": txt(cluster, secure="yes"),
        "not_utf8": {**txt(cluster), b"name": b"\xff\xfe"},
    }
    for name, properties in bad.items():
        register(raw_zeroconf, name, properties)
    good_id = uuid.uuid4().hex
    register(raw_zeroconf, "good", txt(cluster, id=good_id, name="good"))

    assert peers.wait_for(good_id, 2.0) is not None, d.stats
    assert wait_until(lambda: d.stats["bad_ads"] >= len(bad), timeout=3.0), d.stats
    assert [ad.name for ad in peers.ads] == ["good"]


@pytest.mark.timeout(20)
def test_a_raising_on_peer_is_counted_and_discovery_goes_on(make_node: MakeNode) -> None:
    cluster = new_cluster()
    called = threading.Event()

    def on_peer(ad: PeerAd) -> None:
        called.set()
        raise RuntimeError("node bug")

    a, _ = make_node(cluster, on_peer=on_peer)
    b, b_peers = make_node(cluster)
    a.start()
    b.start()
    assert called.wait(1.0)
    assert b_peers.wait_for(a.node_id, 1.0) is not None
    assert wait_until(lambda: a.stats["callback_errors"] >= 1, timeout=1.0)


@pytest.mark.timeout(20)
def test_stop_says_goodbye_is_idempotent_and_bounded(
    make_node: MakeNode, raw_zeroconf: Zeroconf
) -> None:
    d, _ = make_node(new_cluster())
    own_name = f"{d.node_id}.{SERVICE_TYPE}"
    added, removed = threading.Event(), threading.Event()

    def watch(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if name == own_name:
            (removed if state_change is ServiceStateChange.Removed else added).set()

    browser = ServiceBrowser(raw_zeroconf, SERVICE_TYPE, handlers=[watch])
    try:
        d.start()
        d.start()  # a second start is a no-op
        assert added.wait(2.0)
        t0 = time.monotonic()
        d.stop()
        assert time.monotonic() - t0 < 2.0
        assert removed.wait(1.0), "peers must see the goodbye"
        t0 = time.monotonic()
        d.stop()
        assert time.monotonic() - t0 < 0.1
    finally:
        browser.cancel()
    with pytest.raises(DiscoveryError):
        d.start()


def test_stop_before_start_is_harmless(make_node: MakeNode) -> None:
    d, _ = make_node(new_cluster())
    d.stop()
    d.stop()


@pytest.mark.parametrize("host", ["localhost", "", "eth0"])
def test_a_host_that_is_not_an_ip_address_is_rejected(make_node: MakeNode, host: str) -> None:
    with pytest.raises(DiscoveryError, match="IP address"):
        make_node(new_cluster(), host=host)


def test_an_ad_that_cannot_fit_a_txt_record_is_rejected(make_node: MakeNode) -> None:
    with pytest.raises(DiscoveryError, match="255 bytes"):
        make_node("c" * 300)


_txt_strings = st.one_of(st.binary(max_size=20), st.sampled_from([b"1", b"0", b"70000", b"-1"]))


@settings(max_examples=200, deadline=None)
@given(
    properties=st.dictionaries(
        st.sampled_from([b"cluster", b"id", b"name", b"inbox", b"pub", b"hb"])
        | st.sampled_from([b"secure", b"proto"])
        | st.binary(min_size=1, max_size=8).filter(lambda k: b"=" not in k),
        st.none() | _txt_strings | st.just(b"c"),
        max_size=12,
    )
)
def test_any_txt_record_gives_an_ad_or_a_counted_drop(
    properties: dict[bytes, bytes | None],
) -> None:
    d = Discovery(
        cluster="c",
        node_id="me",
        name="n",
        host="127.0.0.1",
        inbox_port=1,
        pub_port=2,
        hb_port=3,
        secure=False,
        on_peer=lambda ad: None,
    )
    info = ServiceInfo(
        SERVICE_TYPE,
        f"x.{SERVICE_TYPE}",
        port=1,
        properties=properties,
        parsed_addresses=["127.0.0.1"],
    )
    ad = d._parse(info)  # type: ignore[arg-type]  # the same fields as AsyncServiceInfo
    if ad is not None:
        assert ad.cluster == "c" and ad.proto == PROTOCOL_VERSION and ad.inbox.startswith("tcp://")
    assert sum(d.stats.values()) <= 1
