"""mDNS discovery: advertise this node and report peers of the same cluster.

Each :class:`Discovery` owns one Zeroconf instance attached to an asyncio loop that
runs in a *real* OS thread of its own. Zeroconf would start its own thread, but after
``gevent.monkey.patch_all()`` that "thread" is a greenlet on the hub of whichever
thread created it, and when that is a gevent threadpool worker its hub never runs
again: mDNS would stall. Owning a native thread behaves the same in both modes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import ifaddr  # zeroconf's own dependency: lists interface addresses
from gevent import monkey
from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..errors import ZcellError

__all__ = ["PROTOCOL_VERSION", "SERVICE_TYPE", "Discovery", "DiscoveryError", "PeerAd"]

PROTOCOL_VERSION = 1
SERVICE_TYPE = "_zcell._tcp.local."
_PORT_END = 65_536  # a TCP port is below this
_RESOLVE_MS = 3000
_QM = DNSQuestionType.QM
_START_TIMEOUT = 5.0  # a safeguard only: start normally takes a few milliseconds
_STOP_TIMEOUT = 1.8  # goodbyes take ~0.25 s; stop() is promised to end within 2 s

log = logging.getLogger(__name__)
# The unpatched primitive: under patch_all, threading.Thread would start a greenlet.
_start_native_thread = monkey.get_original("_thread", "start_new_thread")


class DiscoveryError(ZcellError, RuntimeError):
    """mDNS could not be started (bad host, port 5353 unusable, zeroconf failure).

    Fall back to ``discovery="static"`` with ``peers=`` when multicast is unavailable.
    """


@dataclass(frozen=True, slots=True)
class PeerAd:
    """One peer's advertisement, as resolved from mDNS."""

    cluster: str
    node_id: str
    name: str
    inbox: str
    pub: str
    hb: str
    secure: bool
    proto: int


class Discovery:
    """Registers this node's ``_zcell._tcp`` service and browses for its peers.

    Args:
        cluster: Mesh name; ads of other clusters are ignored.
        node_id: Unique per node start; also the service instance name (<= 63 bytes).
        name: The node's human-readable name.
        host: The node's bind address: any 127.x uses mDNS on loopback only,
            ``"0.0.0.0"`` all interfaces, another address that interface.
        inbox_port: Port of the inbox socket (also the SRV port).
        pub_port: Port of the PUB socket.
        hb_port: Port of the heartbeat socket.
        secure: Whether the node uses a cluster secret (only the flag is advertised).
        on_peer: Called with a :class:`PeerAd` for every added or updated peer of
            this cluster, from Discovery's own thread; it must not block.

    Raises:
        DiscoveryError: ``host`` is not an IP address or an ad field is too long.
    """

    def __init__(
        self,
        *,
        cluster: str,
        node_id: str,
        name: str,
        host: str,
        inbox_port: int,
        pub_port: int,
        hb_port: int,
        secure: bool,
        on_peer: Callable[[PeerAd], None],
    ) -> None:
        self.cluster, self.node_id, self._on_peer = cluster, node_id, on_peer
        # Written only on the loop thread; the node may read it from anywhere.
        self.stats = dict.fromkeys(
            ("peers", "bad_ads", "other_cluster", "unresolved", "callback_errors"), 0
        )
        try:
            ip = ipaddress.ip_address(host)
        except ValueError as exc:
            raise DiscoveryError(f"host must be an IP address, got {host!r}") from exc
        ifaces = _ipv4_interfaces()
        self._nets = [iface.network for iface in ifaces]
        self._interfaces: InterfaceChoice | list[str]
        if ip.is_loopback:
            # mDNS runs on 127.0.0.1 (zeroconf cannot use ::1); the ad names the exact
            # bind address, which may be another 127.x.
            self._interfaces, addresses = ["127.0.0.1"], [host]
        elif ip.is_unspecified:
            lan = [str(iface.ip) for iface in ifaces if not iface.is_loopback]
            self._interfaces, addresses = InterfaceChoice.All, lan or ["127.0.0.1"]
        else:
            self._interfaces, addresses = [host], [host]
        txt = {
            "cluster": cluster,
            "id": node_id,
            "name": name,
            "inbox": str(inbox_port),
            "pub": str(pub_port),
            "hb": str(hb_port),
            "secure": "1" if secure else "0",
            "proto": str(PROTOCOL_VERSION),
        }
        too_long = any(len(f"{k}={v}".encode()) > 255 for k, v in txt.items())
        if too_long or len(node_id.encode()) > 63:
            raise DiscoveryError("node_id must fit 63 bytes and each TXT entry 255 bytes")
        self._own_name = f"{node_id}.{SERVICE_TYPE}"
        self._info = ServiceInfo(
            SERVICE_TYPE,
            self._own_name,
            port=inbox_port,
            properties=txt,
            parsed_addresses=addresses,
            server=f"{node_id}.local.",
        )
        self._lock = threading.Lock()
        self._state = "new"  # -> "running" -> "stopped"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._greeting: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Register the service and start browsing; returns within milliseconds.

        Raises:
            DiscoveryError: Zeroconf could not start, or stop() was already called.
        """
        with self._lock:
            if self._state == "running":
                return
            if self._state == "stopped":
                raise DiscoveryError("a stopped Discovery cannot be restarted")
            ready: concurrent.futures.Future[asyncio.AbstractEventLoop] = (
                concurrent.futures.Future()
            )
            try:
                _start_native_thread(self._run_loop, (ready,))
                self._loop = ready.result(_START_TIMEOUT)
                self._call(self._async_start(), _START_TIMEOUT)
            except Exception as exc:
                if self._loop is not None:
                    self._shutdown(time.monotonic() + _STOP_TIMEOUT)
                self._state = "stopped"
                raise DiscoveryError(f"mDNS discovery failed to start: {exc!r}") from exc
            self._state = "running"

    def stop(self) -> None:
        """Unregister (peers get goodbyes) and close zeroconf; idempotent, < 2 s."""
        with self._lock:
            was_running, self._state = self._state == "running", "stopped"
            if was_running:
                self._shutdown(time.monotonic() + _STOP_TIMEOUT)

    # -- everything below runs on, or hands work to, the private loop thread --

    def _run_loop(self, ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        # The loop is created here so that, when patched, gevent's selector binds to
        # this thread's hub.
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            ready.set_result(loop)
            loop.run_forever()
        finally:
            loop.close()
            self._exited.set_result(None)

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(max(timeout, 0.0))

    def _shutdown(self, deadline: float) -> None:
        assert self._loop is not None
        try:
            self._call(self._async_stop(), deadline - time.monotonic())
        except Exception:  # a hung close must not make stop() hang or raise
            log.warning("zeroconf did not close cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        try:
            self._exited.result(max(deadline - time.monotonic(), 0.0))
        except concurrent.futures.TimeoutError:
            log.warning("discovery thread did not exit in time; abandoning it")

    async def _async_start(self) -> None:
        self._aiozc = AsyncZeroconf(interfaces=self._interfaces)
        # QM (multicast-answer) questions only: with several nodes on one host all
        # bound to port 5353, a unicast (QU) answer reaches just one of their sockets,
        # often not the asker's, and a late joiner would wait ~1 s for the next query.
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, SERVICE_TYPE, [self._on_change], question_type=_QM
        )
        # Node ids are unique per start, so probing for name conflicts (~1.3 s) is
        # pointless. The returned announcement task is not awaited: its 3 broadcasts
        # span ~0.5 s and the first goes out immediately.
        await self._aiozc.async_register_service(self._info, cooperating_responders=True)

    async def _async_stop(self) -> None:
        if self._greeting is not None:
            self._greeting.cancel()
        # The loop is ours alone: besides our resolutions, this cancels zeroconf's
        # announcement task, which could otherwise re-add us right after the goodbye
        # (or die pending when the loop closes).
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._aiozc is not None:
            await self._aiozc.async_close()  # sends the goodbye packets

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Removals are ignored: a killed node lingers in mDNS caches for up to an hour,
        # so liveness must come from heartbeats, never from here.
        if state_change is ServiceStateChange.Removed or name == self._own_name:
            return
        # Resolving may need a network round trip; the browser callback must not wait.
        added = state_change is ServiceStateChange.Added
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name, added))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _greet(self, zc: Zeroconf) -> None:
        """Re-announce ourselves once, for peers that just appeared."""
        self._greeting = None
        if not zc.done:
            zc.async_send(zc.generate_service_broadcast(self._info, None))

    async def _resolve(self, zc: Zeroconf, name: str, added: bool) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc, _RESOLVE_MS, _QM):
            self.stats["unresolved"] += 1
            return
        ad = self._parse(info)
        if ad is None:
            return
        if added and self._greeting is None:
            # A newcomer of our cluster. Our own announcements may be over, and then
            # RFC 6762's one-second rule can hold our answers to its queries for ~1 s;
            # one extra announcement (coalesced over a burst of arrivals) makes
            # discovery mutual within milliseconds.
            self._greeting = asyncio.get_running_loop().call_later(0.02, self._greet, zc)
        self.stats["peers"] += 1
        try:
            self._on_peer(ad)
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("on_peer callback failed for %s", ad.name)

    def _parse(self, info: AsyncServiceInfo) -> PeerAd | None:
        """Return the peer's ad, or None (counted) when it is foreign, ours or malformed."""
        try:
            txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            if txt["cluster"] != self.cluster:
                self.stats["other_cluster"] += 1
                return None
            if txt["id"] == self.node_id:
                return None
            proto, ports = int(txt["proto"]), [int(txt[k]) for k in ("inbox", "pub", "hb")]
            if proto != PROTOCOL_VERSION or txt["secure"] not in ("0", "1"):
                raise ValueError("foreign protocol version or malformed field")
            if not txt["id"] or not all(0 < port < _PORT_END for port in ports):
                raise ValueError("malformed id or port")
            v4, v6 = (info.parsed_addresses(v) for v in (IPVersion.V4Only, IPVersion.V6Only))
            host = _pick_address(v4, self._nets) or f"[{v6[0]}]"  # IndexError: none at all
            inbox, pub, hb = (f"tcp://{host}:{port}" for port in ports)
            sec = txt["secure"] == "1"
            ad = PeerAd(self.cluster, txt["id"], txt["name"], inbox, pub, hb, sec, proto)
        except (KeyError, ValueError, IndexError, UnicodeDecodeError):
            self.stats["bad_ads"] += 1
            log.debug("ignoring malformed zcell ad %s", info.name, exc_info=True)
            return None
        return ad


def _ipv4_interfaces() -> list[ipaddress.IPv4Interface]:
    """This host's IPv4 interface addresses, with their networks."""
    return [
        ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if ip.is_IPv4
    ]


def _pick_address(addresses: list[str], nets: list[ipaddress.IPv4Network]) -> str | None:
    """Prefer an address on one of our own networks: a 0.0.0.0 peer advertises all
    of its interfaces (docker bridges included), not all of which we can reach."""
    for addr in addresses:
        if any(ipaddress.ip_address(addr) in net for net in nets):
            return addr
    return addresses[0] if addresses else None
