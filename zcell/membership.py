"""Membership and liveness: who is in the mesh, first-hand.

A node knows a peer only through direct contact: a HELLO it received or a
WELCOME answering its own. Gossip (the member lists in WELCOMEs) and mDNS ads
only suggest addresses to knock on. A member that stays silent for 2.6 heartbeat
intervals is declared down: its actors leave the directory and calls in flight
to it fail with ``NodeDown``. This mixin also publishes the numbered changes to
the node's own actors and pulls peers' snapshots when it sees a gap.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import zmq

from . import wire
from .directory import Member
from .errors import (
    CallTimeout,
    NodeDown,
    ZcellError,
)
from .result import ScatterResult
from .threadport import NOTIFY_DOWN
from .transport import Socket
from .wire import (
    DIRECTORY,
    HELLO,
    LEAVING,
    PROTOCOL_VERSION,
    WELCOME,
)

__all__ = ["Membership"]


if TYPE_CHECKING:
    from .heartbeat import HeartbeatThread
    from .outbound import Outbound
    from .transport import Context

log = logging.getLogger("zcell.node")
V = PROTOCOL_VERSION


class Membership:
    """Node mixin: members, liveness, gossip, directory news (see module doc)."""

    # Provided by Node and its Messaging mixin (declared here for type checkers).
    _ctrl: Any
    _fail_pending: Any
    _publish: Any
    _codec: Any
    _ctx: Context | None
    _dealers: dict[str, Socket]
    _dir_seq: Any
    _hb: HeartbeatThread | None
    _hello_inflight: set[str]
    _clashes: set[tuple[str, str]]
    _info: Any  # a Node method
    _loop: Any
    _members: dict[str, Member]
    _notify_pub: Any
    _outbound: dict[str, Outbound]
    _pending: dict[int, tuple[Any, str, float | None]]
    _ports: list[Any]
    _ports_lock: Any
    _seeds: dict[str, float]
    _state: Any
    _sub: Any
    _subscribed: set[str]
    boot: Any
    cluster: Any
    directory: Any
    endpoints: dict[str, str]
    heartbeat: Any
    host_: Any
    id: Any
    name: Any
    secret: Any
    stats: dict[str, int]

    def _dealer_for(self, endpoint: str) -> Socket:
        dealer = self._dealers.get(endpoint)
        if dealer is None or dealer.closed:
            assert self._ctx is not None
            dealer = self._ctx.socket(zmq.DEALER, self._loop.hub)
            dealer.connect(endpoint)
            self._dealers[endpoint] = dealer
        return dealer

    def _hello(self, endpoint: str) -> None:
        """Introduce ourselves to the node at ``endpoint`` (it answers WELCOME)."""
        if endpoint == self.endpoints.get("inbox") or endpoint in self._hello_inflight:
            return
        if any(m.inbox == endpoint for m in self._members.values()):
            return
        self._hello_inflight.add(endpoint)
        gevent.spawn(self._hello_send, endpoint)

    def _hello_send(self, endpoint: str) -> None:
        try:
            dealer = self._dealer_for(endpoint)
            dealer.send(self._codec.encode([V, HELLO, self._info()]), time.monotonic() + 1.0)
        except (ZcellError, OSError) as exc:
            log.debug("zcell: hello to %s not delivered yet: %s", endpoint, exc)
        finally:
            self._hello_inflight.discard(endpoint)

    def _add_member(self, info: dict[str, Any]) -> Member | None:
        if info["cluster"] != self.cluster or info["id"] == self.id:
            if info["cluster"] != self.cluster:
                self.stats["dropped_stale"] += 1
            return None
        now = time.monotonic()
        if self._check_frozen(now) or (self._hb is not None and now < self._hb.quiet_until):
            return None  # just woke from a process stop: let the stale backlog drain
        member = self._members.get(info["id"])
        if member is not None:
            if member.boot == info["boot"]:
                member.last_seen = time.monotonic()
                return member
            self._member_down(member, "restarted with a new boot id")
        # A node restarted on the same inbox address is a new member: the old
        # one is gone for good.
        for old in list(self._members.values()):
            if old.inbox == info["inbox"]:
                self._member_down(old, "replaced by a new node at the same address")
        # Names are unique in a mesh: a second node under a name in use is refused
        # (it is let in once the first one has gone, e.g. a restart elsewhere).
        name = info["name"]
        holder = self.name if name == self.name else None
        for other in self._members.values():
            if other.name == name:
                holder = f"{other.name} at {other.inbox}"
        if holder is not None:
            self.stats["name_clashes"] += 1
            if (name, info["id"]) not in self._clashes:
                self._clashes.add((name, info["id"]))
                log.error(
                    "zcell: refused node %s at %s: the name is already used by %s in "
                    "cluster %s; give one of them another name (--name / Node(name=...))",
                    name,
                    info["inbox"],
                    holder,
                    self.cluster,
                )
            return None
        member = Member.from_info(info)
        member.dealer = self._dealer_for(member.inbox)
        member.subscribed = member.id in self._subscribed
        self._members[member.id] = member
        try:
            self._sub.connect(member.pub)
            self._sub.connect(member.hb)
        except ZcellError:
            log.warning("zcell: cannot subscribe to %s", member.name)
        log.info("zcell: %s joined (%s)", member.name, member.inbox)
        # Tell the others: a node that joined through us before this one did
        # would otherwise never hear of it (gossip suggests; they verify).
        others = [m for m in self._members.values() if m is not member]
        if others:
            news = self._welcome_frame([self._member_info(member)])
            for other in others:
                gevent.spawn(self._send_quiet, other, news)
        return member

    def _welcome_frame(self, members: list[dict[str, Any]]) -> bytes:
        return self._codec.encode(
            [V, WELCOME, self._info(), self._dir_seq, self.host_.snapshot(), members]
        )

    def _on_hello(self, info: dict[str, Any]) -> None:
        known = info["id"] in self._members
        member = self._add_member(info)
        if member is None:
            return
        welcome = self._welcome_frame(
            [self._member_info(m) for m in self._members.values() if m.id != member.id]
        )
        gevent.spawn(self._welcome_and_sync, member, welcome, not known)

    def _welcome_and_sync(self, member: Member, welcome: bytes, sync: bool) -> None:
        self._send_quiet(member, welcome)
        if sync:
            # A HELLO carries no directory: pull the newcomer's snapshot now
            # (after our WELCOME, which makes us a member on its side).
            self._resync(member)

    def _send_quiet(self, member: Member, frame: bytes) -> None:
        try:
            member.dealer.send(frame, time.monotonic() + 2.0)
        except ZcellError as exc:
            log.debug("zcell: could not answer %s: %s", member.name, exc)

    def _member_info(self, m: Member) -> dict[str, Any]:
        return {
            "id": m.id,
            "boot": m.boot,
            "name": m.name,
            "cluster": m.cluster,
            "inbox": m.inbox,
            "pub": m.pub,
            "hb": m.hb,
        }

    def _on_welcome(self, msg: list[Any]) -> None:
        info, seq, actors, members = msg[2], msg[3], msg[4], msg[5]
        member = self._add_member(info)
        if member is None:
            return
        if seq >= member.dir_seq:  # welcomes may be overtaken by directory news
            member.dir_seq = seq
            self.directory.replace_node(member.id, actors)
        member.synced = True
        # Gossip only suggests addresses; membership needs first-hand contact.
        now = time.monotonic()
        for other in members:
            if other["cluster"] == self.cluster and other["id"] not in self._members:
                if other["id"] != self.id:
                    self._seeds.setdefault(other["inbox"], now + 60.0)
                    self._hello(other["inbox"])

    def _on_heartbeat(self, msg: list[Any]) -> None:
        member = self._members.get(msg[2])
        if member is None or member.boot != msg[3]:
            return
        member.last_seen = time.monotonic()
        member.load = msg[5]
        member.n_actors = msg[6]
        if (msg[4] > member.dir_seq or not member.synced) and not member.syncing:
            gevent.spawn(self._resync, member)

    def _on_directory(self, msg: list[Any]) -> None:
        member = self._members.get(msg[2])
        if member is None or member.boot != msg[3]:
            return
        seq, op, (actor_id, type_name) = msg[4], msg[5], msg[6]
        if seq <= member.dir_seq:
            return
        if seq != member.dir_seq + 1:
            gevent.spawn(self._resync, member)
            return
        member.dir_seq = seq
        if op == "+":
            self.directory.add(actor_id, type_name, member.id)
        elif op == "-":
            self.directory.remove(actor_id)
            self._actor_gone(actor_id)
        else:
            member.types.add(type_name)

    def _resync(self, member: Member) -> None:
        if member.syncing:
            return
        member.syncing = True
        try:
            seq, actors, types = self._ctrl(member.id, "snapshot", {}, 5.0)
        except ZcellError as exc:
            log.debug("zcell: snapshot from %s failed: %s", member.name, exc)
            return
        finally:
            member.syncing = False
        if self._members.get(member.id) is member and seq >= member.dir_seq:
            member.dir_seq = seq
            member.types = set(types)
            wire.check_actor_list(actors)
            self.directory.replace_node(member.id, actors)
            member.synced = True

    def _on_leave(self, msg: list[Any], from_pub: bool = False) -> None:
        member = self._members.get(msg[2])
        if member is None or member.boot != msg[3]:
            return
        if msg[1] == LEAVING:
            member.leaving = True
        elif from_pub:
            # The copy sent to our inbox comes after the node's last replies;
            # this one may overtake them, so give those a moment.
            member.leaving = True
            gevent.spawn_later(0.3, self._left, member)
        else:
            self._left(member)

    def _left(self, member: Member) -> None:
        self._member_down(member, "left")
        self._seeds.pop(member.inbox, None)

    def _member_down(self, member: Member, reason: str) -> None:
        if self._members.get(member.id) is not member:
            return
        del self._members[member.id]
        log.info("zcell: %s is down (%s)", member.name, reason)
        gone = self.directory.remove_node(member.id)
        for actor_id in gone:
            self._actor_gone(actor_id)
        error = NodeDown(f"node {member.name} went down ({reason}); the outcome is unknown")
        out = self._outbound.pop(member.id, None)
        if out is not None:
            out.close(error)
        # Replies already at a program thread's port complete their calls first.
        with self._ports_lock:
            ports = list(self._ports)
        busy = {port for port in ports if not port.settle(member.id, error)}
        for rid, (result, node_id, _) in list(self._pending.items()):
            if isinstance(result, ScatterResult):
                result._node_down(member.id)
            elif node_id == member.id and getattr(result, "_port", None) not in busy:
                self._fail_pending(rid, result, error)
        # After failing them: a thread woken by this news finds its results failed.
        self._notify_pub.send(NOTIFY_DOWN + member.id.encode())
        for endpoint in (member.pub, member.hb):
            self._sub.disconnect(endpoint)
        dealer = self._dealers.pop(member.inbox, None)
        if dealer is not None:
            dealer.close()
            if self._ctx is not None and dealer in self._ctx.sockets:
                self._ctx.sockets.remove(dealer)
        # It may come back (a healed partition): keep knocking for a while.
        if self._seeds.get(member.inbox, 0) != float("inf"):
            self._seeds[member.inbox] = time.monotonic() + 300.0

    def _actor_gone(self, actor_id: str) -> None:
        self.host_.forget_binding_target(actor_id)

    def _check_frozen(self, now: float) -> bool:
        """After a process stop as long as peers wait, drop every member.

        Every peer has declared us down meanwhile (see
        ``HeartbeatThread.stopped_since``), and what reached our sockets while we
        were stopped is stale: requests whose callers got ``NodeDown`` or gave up.
        With the senders no longer members, ``_admit`` drops them; ``_add_member``
        re-admits nobody for a short quiet period, so that this backlog (read
        within milliseconds of waking) is gone before the seeds' knocking rejoins.
        """
        hb = self._hb
        if hb is None or self._state != "running":
            return False
        since = hb.stopped_since(now)
        if since is None:
            return False
        hb.quiet_until = now + max(0.5, self.heartbeat)
        log.warning(
            "zcell: node %s was stopped for %.1fs (heartbeats too): its peers "
            "have declared it down; dropping them, rejoining in %.1fs",
            self.name,
            now - since,
            hb.quiet_until - now,
        )
        for member in list(self._members.values()):
            self._member_down(member, "this node was stopped")
        return True

    def _housekeeping(self) -> None:
        """Liveness checks, expired calls, and knocking on seeds that are not members."""
        interval = min(0.2 * self.heartbeat, 0.25)
        down_after = 2.6 * self.heartbeat
        last = time.monotonic()
        next_knock = 0.0
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            if self._hb is not None:
                self._hb.loop_tick = now  # the watchdog's sign of life
            frozen = self._check_frozen(now)
            if now - last > interval + self.heartbeat:
                # Our own loop was blocked: the heartbeats queued meanwhile have
                # not been read yet, so give everyone a grace period (unless the
                # whole process was stopped: then they have dropped us).
                log.warning("zcell: node %s loop was blocked for %.1fs", self.name, now - last)
                if not frozen:
                    for member in self._members.values():
                        member.last_seen = max(member.last_seen, now)
            last = now
            for member in list(self._members.values()):
                if now - member.last_seen > down_after:
                    self._member_down(member, f"silent for {now - member.last_seen:.1f}s")
            for rid, (result, _, deadline) in list(self._pending.items()):
                if deadline is not None and now > deadline + 0.05:
                    if isinstance(result, ScatterResult):
                        self._pending.pop(rid, None)
                    else:
                        self._fail_pending(
                            rid, result, CallTimeout(f"no reply to request {rid} in time")
                        )
            if now >= next_knock and not (self._hb and now < self._hb.quiet_until):
                next_knock = now + 1.0
                member_inboxes = {m.inbox for m in self._members.values()}
                for endpoint, expiry in list(self._seeds.items()):
                    if expiry < now:
                        del self._seeds[endpoint]
                    elif endpoint not in member_inboxes:
                        self._hello(endpoint)

    def _on_ad(self, ad: Any) -> None:
        if self._state not in ("starting", "running") or ad.cluster != self.cluster:
            return
        if ad.secure != (self.secret is not None):
            return  # it could never complete a handshake with us
        member = self._members.get(ad.node_id)
        if member is None:
            self._seeds[ad.inbox] = time.monotonic() + 600.0
            self._hello(ad.inbox)

    def _announce(self, op: str, actor_id: str, type_name: str) -> None:
        """Publish a change to this node's own actors (or types)."""
        self._dir_seq += 1
        if op == "+":
            self.directory.add(actor_id, type_name, self.id)
        elif op == "-":
            self.directory.remove(actor_id)
        try:
            self._publish(
                [V, DIRECTORY, self.id, self.boot, self._dir_seq, op, [actor_id, type_name]],
                timeout=1.0,
            )
        except ZcellError as exc:
            # Peers notice the gap in the numbers and pull a snapshot.
            log.debug("zcell: directory news not published: %s", exc)
