"""Membership and liveness: who is in the mesh, first-hand.

A node knows a peer only through direct contact, verified both ways: each side
knocks (a HELLO with a challenge) on the inbox the other claims, and a peer
becomes a member once it has sent our challenge back (docs/protocol.md §8). Its
frames are then accepted only from its own connections (routing-id prefix) and
its own SUB. Gossip (the member lists in WELCOMEs) and mDNS ads only suggest
addresses to knock on; knocks are bounded and close their DEALERs when
unanswered. A verified joiner whose name is taken is told so (REFUSED) on its
own connection. A member that stays silent for 2.6 heartbeat intervals is
declared down: its actors leave the directory and calls in flight
to it fail with ``NodeDown``. This mixin also publishes the numbered changes to
the node's own actors and pulls peers' snapshots when it sees a gap.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
import zmq

from .. import _wire as wire
from .._transport.sockets import Socket
from .._wire import (
    DIRECTORY,
    HELLO,
    LEAVING,
    PROTOCOL_VERSION,
    REFUSED,
    WELCOME,
)
from ..errors import (
    CallTimeout,
    IncompatibleProtocol,
    NodeDown,
    ZcellError,
)
from .directory import Member
from .result import ScatterResult
from .threadport import NOTIFY_DOWN

__all__ = ["Membership"]


if TYPE_CHECKING:
    import itertools

    from .._transport.heartbeat import HeartbeatThread
    from .._transport.loop import LoopThread
    from .._transport.sockets import Context
    from .directory import Directory
    from .outbound import Outbound
    from .plug import Hosting
    from .threadport import ThreadPort

log = logging.getLogger(__name__)
V = PROTOCOL_VERSION
INF = float("inf")

PREFIX = 12  # bytes of a connection's routing id that name the node behind it
MAX_KNOCKS = 32  # unverified addresses being knocked on at once
MAX_KNOCKS_PER_SOURCE = 2  # ... of which one connection's HELLOs (or gossip) may cause
KNOCK_TIMEOUT = 2.0  # seconds an address has to answer a knock
MAX_SEEDS = 256  # addresses (gossip, mDNS) kept to knock on again


@dataclass
class Knock:
    """A HELLO we sent to an address, waiting for its challenge to come back."""

    nonce: str
    expiry: float
    source: bytes  # routing prefix of the connection that made us knock (b"": ours)
    answered: str = ""  # the address's own challenge we sent back (last one)


class Membership:
    """Node mixin: members, liveness, gossip, directory news (see module doc)."""

    # Provided by Node and its Messaging mixin (declared here for type checkers).
    _ctrl: Callable[[str, str, dict[str, Any], float], Any]
    _fail_pending: Callable[[int, Any, BaseException], None]
    _publish: Callable[..., None]
    _codec: wire.Codec
    _ctx: Context | None
    _dealers: dict[str, Socket]
    _dir_seq: int
    _hb: HeartbeatThread | None
    _knocks: dict[str, Knock]
    _by_prefix: dict[bytes, Member]
    _route_key: bytes
    _route_n: itertools.count[int]
    _on_frame: Callable[..., None]  # a Node method
    _clashes: set[tuple[str, str]]
    _inbox: Socket
    _info: Callable[[], dict[str, Any]]  # a Node method
    _node_label: Callable[[str], str]  # a Node method
    _refused: Callable[..., None]  # a Node method
    _started_at: float
    _loop: LoopThread
    _members: dict[str, Member]
    _notify_pub: Any  # a plain zmq PUB (None until the node starts)
    _outbound: dict[str, Outbound]
    _pending: dict[int, tuple[Any, str, float | None]]
    _ports: list[ThreadPort]
    _ports_lock: Any
    _seeds: dict[str, float]
    _state: str
    _subscribed: set[str]
    boot: str
    cluster: str
    directory: Directory
    endpoints: dict[str, str]
    heartbeat: float
    host_: Hosting
    id: str
    name: str
    secret: str | None
    stats: dict[str, int]

    def _routing_id(self, endpoint: str) -> bytes:
        """The identity of a new DEALER of ours to ``endpoint``'s inbox.

        Its first ``PREFIX`` bytes are the same for all our connections to that
        endpoint (the loop's DEALER, each program thread's) and differ per
        endpoint, so a peer learns only the prefix we use towards it; the
        counter makes each connection's identity unique at its ROUTER.
        """
        digest = hashlib.blake2b(
            endpoint.encode(), key=self._route_key, digest_size=PREFIX - 1
        ).digest()
        return b"z" + digest + next(self._route_n).to_bytes(4, "big")

    def _dealer_for(self, endpoint: str) -> Socket:
        dealer = self._dealers.get(endpoint)
        if dealer is None or dealer.closed:
            assert self._ctx is not None
            dealer = self._ctx.socket(zmq.DEALER, self._loop.hub)
            dealer.connect(endpoint, self._routing_id(endpoint))
            self._dealers[endpoint] = dealer
        return dealer

    def _close_dealer(self, endpoint: str) -> None:
        """Close our DEALER to ``endpoint`` (a peer gone, a knock unanswered)."""
        dealer = self._dealers.pop(endpoint, None)
        if dealer is not None:
            dealer.close()
            if self._ctx is not None and dealer in self._ctx.sockets:
                self._ctx.sockets.remove(dealer)

    def _sender(self, routing: bytes | None, via: Member | None) -> Member | None:
        """The member a frame came from: the one whose connection (inbox) or
        whose PUB (``via``) carried it; None for a stranger's."""
        if via is not None:
            return via
        if routing is None:
            return None
        return self._by_prefix.get(routing[:PREFIX])

    def _hello(self, endpoint: str, echo: str = "", source: bytes = b"") -> None:
        """Knock on ``endpoint``: a HELLO with a fresh challenge, answering ``echo``.

        Whoever answers the challenge (a HELLO or WELCOME echoing it) is at that
        address: that is how a node is verified before it becomes a member.
        Knocks are bounded (``MAX_KNOCKS``, ``MAX_KNOCKS_PER_SOURCE`` for those
        one connection's HELLOs cause) and expire after ``KNOCK_TIMEOUT``; a
        knock that is not answered closes its DEALER.
        """
        if endpoint == self.endpoints.get("inbox"):
            return
        knock = self._knocks.get(endpoint)
        if knock is None:
            if not echo and any(m.inbox == endpoint for m in self._members.values()):
                return
            busy = len(self._knocks) >= MAX_KNOCKS or (
                source
                and sum(1 for k in self._knocks.values() if k.source == source)
                >= MAX_KNOCKS_PER_SOURCE
            )
            if busy:
                self.stats["refused_knocks"] += 1
                return
            knock = Knock(uuid.uuid4().hex, time.monotonic() + KNOCK_TIMEOUT, source)
            self._knocks[endpoint] = knock
        elif not echo:
            return  # already knocking there
        if echo:
            knock.answered = echo
        frame = self._codec.encode([V, HELLO, self._info(), knock.nonce, echo])
        gevent.spawn(self._hello_send, endpoint, frame)

    def _hello_send(self, endpoint: str, frame: bytes) -> None:
        try:
            dealer = self._dealer_for(endpoint)
            dealer.send(frame, time.monotonic() + KNOCK_TIMEOUT)
        except (ZcellError, OSError) as exc:
            log.debug("zcell: hello to %s not delivered yet: %s", endpoint, exc)

    def _answers_knock(self, endpoint: str, echo: str) -> bool:
        """Whether ``echo`` is the challenge we sent to ``endpoint`` (still valid)."""
        knock = self._knocks.get(endpoint)
        return bool(echo) and knock is not None and hmac.compare_digest(knock.nonce, echo)

    def _expire_knocks(self, now: float) -> None:
        """Forget unanswered knocks, closing DEALERs that no member uses."""
        inboxes = {m.inbox for m in self._members.values()}
        for endpoint, knock in list(self._knocks.items()):
            if knock.expiry < now:
                del self._knocks[endpoint]
                if endpoint not in inboxes:
                    self._close_dealer(endpoint)

    def _drain_dealers(self) -> None:
        """Read what came back on our DEALERs, before a queue fills (see
        ``Context.raw_socket`` on libzmq's abort). Replies come to the inbox,
        so the only frame a peer may send here is a REFUSED answering our HELLO:
        it came from the node at that address, the one we knocked on."""
        for endpoint, dealer in list(self._dealers.items()):
            for frame in dealer.take_incoming():
                self._on_dealer_frame(frame, endpoint)

    def _on_dealer_frame(self, frame: bytes, endpoint: str) -> None:
        """A refusal of this very node (id and boot) stops it (see ``Node._refused``);
        a refusal of another is stale; anything else is a bad frame. A refusal
        in another major version is that node refusing ours."""
        try:
            msg = self._codec.decode(frame)
        except wire.VersionMismatch as exc:
            refusal = wire.foreign_refusal(exc)
            if refusal is None:
                self.stats["dropped_bad_frames"] += 1
            elif refusal[:2] != (self.id, self.boot):
                self.stats["dropped_stale"] += 1
            else:
                self._refused(
                    f"refused by the node at {endpoint} (protocol {exc.major}, this node "
                    f"{wire.mine()}): {refusal[2][:500]}",
                    IncompatibleProtocol,
                )
            return
        except ZcellError:
            self.stats["dropped_bad_frames"] += 1
            return
        if msg[1] != REFUSED:
            self.stats["dropped_bad_frames"] += 1
        elif msg[2] != self.id or msg[3] != self.boot:
            self.stats["dropped_stale"] += 1
        else:
            self._refused(f"refused by the node at {endpoint}: {msg[4][:500]}")

    def _in_cluster(self, info: dict[str, Any]) -> bool:
        if info["cluster"] != self.cluster:
            self.stats["dropped_stale"] += 1
            return False
        if info["id"] == self.id:
            self.stats["dropped_forged"] += 1
            return False
        return True

    def _add_member(self, info: dict[str, Any], routing: bytes) -> Member | None:
        """Admit the node that answered our knock on ``info["inbox"]``.

        ``routing`` is the identity of the connection the answer came on: its
        prefix is the node's from now on. A live member is never taken over by
        another node claiming its id (a restart has a new id).
        """
        now = time.monotonic()
        if self._check_frozen(now) or (self._hb is not None and now < self._hb.quiet_until):
            return None  # just woke from a process stop: let the stale backlog drain
        member = self._members.get(info["id"])
        if member is not None:
            if member.boot == info["boot"] and member.inbox == info["inbox"]:
                member.last_seen = now
                self._bind(member, routing)
                return member
            if member.inbox != info["inbox"]:
                self.stats["dropped_forged"] += 1
                log.warning(
                    "zcell: refused node at %s claiming the id of %s (at %s)",
                    info["inbox"],
                    member.name,
                    member.inbox,
                )
                return None
            self._member_down(member, "restarted with a new boot id")
        # A node restarted on the same inbox address is a new member: the old
        # one is gone for good.
        for old in list(self._members.values()):
            if old.inbox == info["inbox"]:
                self._member_down(old, "replaced by a new node at the same address")
        # Names are unique in a mesh: a second node under a name in use is refused
        # (told so once its knock is verified: _refuse; let in once the name is free).
        clash = self._name_clash(info)
        if clash is not None:
            self.stats["name_clashes"] += 1
            if (info["name"], info["id"]) not in self._clashes:
                self._clashes.add((info["name"], info["id"]))
                log.error("zcell: refused node %s at %s: %s", info["name"], info["inbox"], clash[0])
            return None
        member = Member.from_info(info)
        member.dealer = self._dealer_for(member.inbox)
        member.subscribed = member.id in self._subscribed
        self._members[member.id] = member
        self._bind(member, routing)
        self._subscribe(member)
        log.info("zcell: %s joined (%s)", member.name, member.inbox)
        # Tell the others: a node that joined through us before this one did
        # would otherwise never hear of it (gossip suggests; they verify).
        others = [m for m in self._members.values() if m is not member]
        if others:
            # Without our actors: they have them, and a join must not cost
            # every member a copy of every other member's directory.
            news = self._welcome_frame([self._member_info(member)], snapshot=False)
            for other in others:
                gevent.spawn(self._send_quiet, other, news)
        return member

    def _bind(self, member: Member, routing: bytes) -> None:
        """Frames claiming ``member`` are accepted from connections with this prefix."""
        prefix = routing[:PREFIX]
        if member.prefix != prefix:
            if self._by_prefix.get(member.prefix) is member:
                del self._by_prefix[member.prefix]
            member.prefix = prefix
        self._by_prefix[prefix] = member

    def _subscribe(self, member: Member) -> None:
        """A SUB of its own for each member: what arrives on it is that member's."""
        assert self._ctx is not None
        sub = self._ctx.socket(zmq.SUB, self._loop.hub)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        # A topic nothing is published on: its arrival at the member's XPUB
        # tells it exactly when this SUB is connected.
        sub.setsockopt(zmq.SUBSCRIBE, b"\xff" + self.id.encode())
        member.sub = sub
        try:
            sub.connect(member.pub)
            sub.connect(member.hb)
        except ZcellError:
            log.warning("zcell: cannot subscribe to %s", member.name)
        member.reader = gevent.spawn(self._read_member, member, sub)

    def _read_member(self, member: Member, sub: Socket) -> None:
        for frame in sub.recv_loop():
            self._on_frame(frame, True, None, member)

    def _unsubscribe(self, member: Member) -> None:
        sub, reader = member.sub, member.reader
        member.sub = member.reader = None
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)
        if sub is not None:
            sub.close()
            if self._ctx is not None and sub in self._ctx.sockets:
                self._ctx.sockets.remove(sub)

    def _welcome_frame(
        self, members: list[dict[str, Any]], echo: str = "", snapshot: bool = True
    ) -> bytes:
        # News of a member to the others carries no actors (nil): each node's
        # actors travel once to each joiner, not to every member per join.
        actors = self.host_.snapshot() if snapshot else None
        return self._codec.encode([V, WELCOME, self._info(), self._dir_seq, actors, members, echo])

    def _full_welcome(self, member: Member, echo: str) -> None:
        """Our directory and the other members, for a node just verified."""
        others = [self._member_info(m) for m in self._members.values() if m is not member]
        gevent.spawn(self._send_quiet, member, self._welcome_frame(others, echo))

    def _name_clash(self, info: dict[str, Any]) -> tuple[str, bool] | None:
        """Why ``info``'s name is taken here, and whether to tell its node to go.

        Told to go: a node whose name a live member holds, or that we hold and
        had first (the older start wins, so of two twins that meet exactly one
        goes). Not told: a holder that is leaving or silent (maybe a crash
        being restarted): the newcomer keeps knocking and gets in once it is gone.
        """
        name = info["name"]
        if name == self.name:
            mine = (self._started_at, self.id)
            theirs = (info.get("started"), info["id"])
            go = type(theirs[0]) in (int, float) and theirs > mine
            holder = f"node {self.name} at {self.endpoints['inbox']}"
        else:
            other = next((m for m in self._members.values() if m.name == name), None)
            if other is None:
                return None
            alive = time.monotonic() - other.last_seen < 1.5 * self.heartbeat
            go = alive and not other.leaving
            holder = f"node {other.name} at {other.inbox}"
        return (
            f"the name {name!r} is already used by {holder} in cluster {self.cluster!r}; "
            "give one of them another name (--name / Node(name=...))",
            go,
        )

    def _on_hello(self, msg: list[Any], routing: bytes | None) -> None:
        info, nonce, echo = msg[2], msg[3], msg[4]
        if routing is None or not self._in_cluster(info):
            return
        if wire.minors(info)[0] > wire.PROTOCOL_MINOR:
            # It no longer speaks our minors (the rule says it then bumps the
            # major: this is a broken node). Never a member, nothing to say.
            self.stats["refused_versions"] += 1
            return
        inbox = info["inbox"]
        if self._answers_knock(inbox, echo) and self._knocks[inbox].answered == nonce:
            # It answered the challenge we sent to its inbox (it is there), and
            # we answered its own: both sides are verified. We admit it first
            # and say so with a WELCOME; it admits us on that.
            member = self._add_member(info, routing)
            if member is not None:
                self._full_welcome(member, nonce)
            else:
                self._refuse(info, routing)
            return
        # Not verified yet (or it is, but has not verified us): knock on the
        # inbox it claims, answering its challenge. Only there does anything
        # about us (our own info) go, never the other members.
        self._hello(inbox, nonce, routing[:PREFIX])

    def _refuse(self, info: dict[str, Any], routing: bytes) -> None:
        """Tell a verified joiner whose name is taken here to go (if it should).

        Sent over its HELLO's own connection (the joiner's DEALER to us), so only
        that node reads it, and only once it answered our challenge: a stranger
        learns nothing about members from a HELLO. No WELCOME follows, so the
        joiner does not admit us either.
        """
        clash = self._name_clash(info)
        if clash is not None and clash[1]:
            refusal = [V, REFUSED, info["id"], info["boot"], clash[0]]
            self._inbox.send_coalesced(routing, self._codec.encode(refusal))

    def _refuse_version(self, exc: wire.VersionMismatch, routing: bytes) -> None:
        """Answer a HELLO of another major version of our cluster: a refusal in
        ours, on its own connection, naming both versions.

        Unverified (we cannot read the rest of its frames), it learns only our
        version; the joiner heeds it only from the node it knocked on, in its
        first seconds, like a refusal of its name.
        """
        info = wire.foreign_hello(exc)
        if info is None or info["cluster"] != self.cluster:
            return
        self.stats["refused_versions"] += 1
        reason = (
            f"it speaks zcell protocol {wire.mine()} and the joiner "
            f"{wire.stated(exc.major, info)}; nodes of two major versions cannot mesh: "
            "run one major version of zcell on every node (zcell --version)"
        )
        refusal = [V, REFUSED, info["id"], info["boot"], reason]
        self._inbox.send_coalesced(routing, self._codec.encode(refusal))

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

    def _on_welcome(self, msg: list[Any], routing: bytes | None) -> None:
        info, seq, actors, members, echo = msg[2], msg[3], msg[4], msg[5], msg[6]
        if routing is None or not self._in_cluster(info):
            return
        if self._answers_knock(info["inbox"], echo):
            known = self._members.get(info["id"])
            member = self._add_member(info, routing)
            if member is not None and member is not known:
                self._full_welcome(member, "")
        else:
            # News from a member: only over its own connection.
            member = self._sender(routing, None)
            if member is None or member.id != info["id"] or member.boot != info["boot"]:
                self.stats["dropped_forged"] += 1
                return
            member.last_seen = time.monotonic()
        if member is None:
            return
        if actors is not None:  # None: news of a member, our copy stands (else resync)
            if seq >= member.dir_seq:  # welcomes may be overtaken by directory news
                member.dir_seq = seq
                self.directory.replace_node(member.id, actors)
            member.synced = True
        # Gossip only suggests addresses; membership needs first-hand contact.
        now = time.monotonic()
        for other in members:
            if other["cluster"] == self.cluster and other["id"] not in self._members:
                if other["id"] != self.id and len(self._seeds) < MAX_SEEDS:
                    self._seeds.setdefault(other["inbox"], now + 60.0)
                    self._hello(other["inbox"], source=member.prefix)

    def _claimed_by(self, msg: list[Any], via: Member | None, routing: bytes | None) -> Any:
        """The member a piece of news names (msg[2], msg[3]: id, boot), if it
        came from that member itself; None otherwise (forgeries counted)."""
        member = self._members.get(msg[2])
        if member is None or member.boot != msg[3]:
            return None
        if via is None and routing is None:
            return member  # from this node itself
        if self._sender(routing, via) is not member:
            self.stats["dropped_forged"] += 1
            return None
        return member

    def _on_heartbeat(self, msg: list[Any], via: Member | None = None) -> None:
        member = self._claimed_by(msg, via, None)
        if member is None:
            return
        member.last_seen = time.monotonic()
        member.load = msg[5]
        member.n_actors = msg[6]
        if (msg[4] > member.dir_seq or not member.synced) and not member.syncing:
            gevent.spawn(self._resync, member)

    def _on_directory(self, msg: list[Any], via: Member | None = None) -> None:
        member = self._claimed_by(msg, via, None)
        if member is None:
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

    def _on_leave(
        self, msg: list[Any], via: Member | None = None, routing: bytes | None = None
    ) -> None:
        member = self._claimed_by(msg, via, routing)
        if member is None:
            return
        from_pub = via is not None
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
        if self._by_prefix.get(member.prefix) is member:
            del self._by_prefix[member.prefix]
        self._unsubscribe(member)
        self._close_dealer(member.inbox)
        self._knocks.pop(member.inbox, None)
        # It may come back (a healed partition): keep knocking for a while (each
        # knock opens a DEALER that closes again when nobody answers).
        if self._seeds.get(member.inbox, 0) != INF:
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
            for rid, (result, node_id, deadline) in list(self._pending.items()):
                if deadline is not None and now > deadline + 0.05:
                    if isinstance(result, ScatterResult):
                        self._pending.pop(rid, None)
                    else:
                        late = f"no reply from node {self._node_label(node_id)} to request {rid}"
                        self._fail_pending(rid, result, CallTimeout(f"{late} in time"))
            # Before expiring knocks: a refusal may be waiting on a knock's DEALER.
            self._drain_dealers()
            self._expire_knocks(now)
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
            self.stats["mdns_ads_other_secret"] += 1  # says why nobody is found
            return  # it could never complete a handshake with us
        self.stats["mdns_ads"] += 1
        member = self._members.get(ad.node_id)
        if member is None and (ad.inbox in self._seeds or len(self._seeds) < MAX_SEEDS):
            self._seeds[ad.inbox] = max(self._seeds.get(ad.inbox, 0.0), time.monotonic() + 600.0)
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
