"""Membership and liveness: who is in the mesh, first-hand.

A node knows a peer only through direct contact, verified both ways: each side
knocks (a HELLO with a challenge) on the inbox the other claims, and a peer
becomes a member once it has sent our challenge back (docs/protocol.md §8). Its
frames are then accepted only from its own connections (routing-id prefix) and
its own SUB. Gossip (the member lists in WELCOMEs) and mDNS ads only suggest
addresses to knock on; knocks are bounded and close their DEALERs when
unanswered. A verified joiner whose name is taken is told so (REFUSED) on its
own connection. Requests of a node that admitted us before we admitted it
(they overtook its WELCOME) are held until its WELCOME comes (``held.py``),
then run. ``Monitors`` (monitors.py) decides when a member is down (a watched
member silent for 2.6 heartbeat intervals, its own interval when longer than
ours; a suspected one silent while we check it ourselves); this module carries
it out: its actors leave the directory and calls in flight to it fail with
``NodeDown``.
``DirectoryNews`` publishes the numbered changes to the node's own actors;
``Membership`` pulls peers' snapshots when it sees a gap.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
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
    IncompatibleProtocol,
    NameTaken,
    NodeDown,
    NodeStopped,
    ZcellError,
)
from .directory import PREFIX, Member
from .monitors import Monitors

__all__ = ["DirectoryNews", "Membership"]


if TYPE_CHECKING:
    from ..control.registry import ControlRegistry
    from .directory import Directory
    from .discovery import PeerAd
    from .held import HeldFrames
    from .plug import Hosting
    from .state import Shared

log = logging.getLogger(__name__)
PROTOCOL = PROTOCOL_VERSION
INF = float("inf")

MAX_KNOCKS = 32  # unverified addresses being knocked on at once; a knock of our
# own (not answering another's) only while fewer than half are: the rest is room
# to answer the knocks of others, so that nodes busy knocking still meet.
MAX_KNOCKS_PER_SOURCE = 2  # ... of which one connection's HELLOs (or gossip) may cause
KNOCK_TIMEOUT = 2.0  # seconds an address has to answer a knock
MAX_SEEDS = 256  # addresses (gossip, mDNS) kept to knock on again
DRAIN_PER_TICK = 8  # members' DEALERs read for stray frames per housekeeping tick

#: How a frame from a member's SUB is received (``Node._on_frame``).
OnFrame = Callable[[bytes, bool, bytes | None, Member | None], None]


@dataclass
class Knock:
    """A HELLO we sent to an address, waiting for its challenge to come back."""

    nonce: str
    expiry: float
    source: bytes  # routing prefix of the connection that made us knock (b"": ours)
    answered: str = ""  # the address's own challenge we sent back (last one)


class DirectoryNews:
    """The numbered changes to this node's own actors (and types), published.

    Peers notice a gap in the numbers and pull a snapshot; the number also
    travels in heartbeats and WELCOMEs.
    """

    def __init__(
        self,
        node_id: str,
        boot: str,
        directory: Directory,
        publish: Callable[[list[Any], float], None],
    ) -> None:
        self._id = node_id
        self._boot = boot
        self._directory = directory
        self._publish = publish
        self.seq = 0

    def last_seq(self) -> int:
        """The number of the last change announced."""
        return self.seq

    def announce(self, op: str, actor_id: str, type_name: str) -> None:
        """Publish a change to this node's own actors (or types)."""
        self.seq += 1
        if op == "+":
            self._directory.add(actor_id, type_name, self._id)
        elif op == "-":
            self._directory.remove(actor_id)
        try:
            self._publish(
                [PROTOCOL, DIRECTORY, self._id, self._boot, self.seq, op, [actor_id, type_name]],
                1.0,
            )
        except ZcellError as exc:
            # Peers notice the gap in the numbers and pull a snapshot.
            log.debug("zcell: directory news not published: %s", exc)


class Membership:
    """Members, liveness, gossip (see module doc), for one node.

    It is the one writer of the members table (``Roster``); it owns the knocks,
    the seeds (addresses to knock on again) and the DEALERs to members' inboxes.
    """

    def __init__(
        self,
        shared: Shared,
        *,
        cluster: str,
        heartbeat: float,
        secure: bool,
        endpoints: Mapping[str, str],
        news: DirectoryNews,
        hosting: Hosting,
        ctrl: Callable[[str, str, dict[str, Any], float], Any],
        node_down: Callable[[str, ZcellError], None],
        on_frame: OnFrame,
        info: Callable[[], dict[str, Any]],
        refused: Callable[[str, type[NodeStopped]], None],
        held: HeldFrames,
        vitals: Callable[[], list[Any]],
    ) -> None:
        self._shared = shared
        self._members = shared.roster.members
        self._cluster = cluster
        self._heartbeat = heartbeat
        self._secure = secure
        self._endpoints = endpoints
        self._news = news
        self._hosting = hosting
        self._ctrl = ctrl  # a control call (snapshots of members' directories)
        self._node_down = node_down  # fail what was sent to a member gone
        self._on_frame = on_frame
        self._info = info  # this node's HELLO info
        self._refused = refused  # a member refused this node: it stops
        self._held = held  # requests of nodes joining us that overtook their WELCOME
        self._dealers: dict[str, Socket] = {}
        self._newcomers: list[Member] = []  # joined since the last news of joins
        # Departures heard on a PUB, applied a moment later (``on_leave``): ended
        # at stop, since one still pending when the loop's thread ends keeps the node.
        self._leaving: set[gevent.Greenlet] = set()
        self._drain_turn: Iterator[str] = iter(())  # the DEALERs left to read this round
        self._seeds: dict[str, float] = {}  # inbox endpoint -> expiry (inf: forever)
        self._knocks: dict[str, Knock] = {}
        self._clashes: set[tuple[str, str]] = set()  # (name, node id) refused, logged once
        self._subscribed: set[str] = set()  # ids of the members whose SUB reached our XPUB
        #: ``time.monotonic()`` when this node last woke from a process stop that its
        #: peers took for a crash (``check_frozen``); 0.0 if it never did.
        self.woke_at = 0.0
        # Who watches whom, suspicions and probes (monitors.py): when a member is down.
        self._monitors = Monitors(
            shared.node_id, self._members, shared.stats,
            heartbeat=heartbeat, beat_of=self.beat_of, ctrl=ctrl,
            member_down=self._member_down, on_vitals=self._vitals_heard, vitals=vitals,
        )  # fmt: skip

    def add_control_ops(self, registry: ControlRegistry) -> None:
        """Answer members' suspicions and probes (``Monitors``)."""
        self._monitors.add_control_ops(registry)

    def add_peer(self, endpoint: str) -> None:
        """Knock on ``endpoint`` now and for good (``Node(peers=...)``)."""
        self._seeds[endpoint] = INF
        self._hello(endpoint)

    def _dealer_for(self, endpoint: str) -> Socket:
        dealer = self._dealers.get(endpoint)
        if dealer is None or dealer.closed:
            ctx = self._shared.sockets.ctx
            assert ctx is not None  # the node runs
            dealer = ctx.socket(zmq.DEALER, self._shared.loop.hub)
            self._sparse_pings(dealer)
            dealer.connect(endpoint, self._shared.roster.routing_id(endpoint))
            self._dealers[endpoint] = dealer
        return dealer

    def _sparse_pings(self, sock: Socket) -> None:
        """A member's connection pings sparsely (``Context.sparse_pings``)."""
        ctx = self._shared.sockets.ctx
        assert ctx is not None  # the node runs
        ctx.sparse_pings(sock.raw)

    def _close_dealer(self, endpoint: str) -> None:
        """Close our DEALER to ``endpoint`` (a peer gone, a knock unanswered)."""
        dealer = self._dealers.pop(endpoint, None)
        if dealer is not None:
            dealer.close()
            self._forget_socket(dealer)

    def _hello(self, endpoint: str, echo: str = "", source: bytes = b"") -> None:
        """Knock on ``endpoint``: a HELLO with a fresh challenge, answering ``echo``.

        Whoever answers the challenge (a HELLO or WELCOME echoing it) is at that
        address: that is how a node is verified before it becomes a member.
        Knocks are bounded (``MAX_KNOCKS``, half of it for our own knocks,
        ``MAX_KNOCKS_PER_SOURCE`` for those one connection's HELLOs cause), end
        when the node becomes a member, and expire after ``KNOCK_TIMEOUT``; a
        knock that is not answered closes its DEALER.
        """
        if endpoint == self._endpoints.get("inbox"):
            return
        knock = self._knocks.get(endpoint)
        if knock is None:
            if not echo and any(m.inbox == endpoint for m in self._members.values()):
                return
            busy = len(self._knocks) >= (MAX_KNOCKS if echo else MAX_KNOCKS // 2) or (
                source
                and sum(1 for k in self._knocks.values() if k.source == source)
                >= MAX_KNOCKS_PER_SOURCE
            )
            if busy:
                self._shared.stats["refused_knocks"] += 1
                return
            knock = Knock(uuid.uuid4().hex, time.monotonic() + KNOCK_TIMEOUT, source)
            self._knocks[endpoint] = knock
        elif not echo:
            return  # already knocking there
        if echo:
            knock.answered = echo
        frame = self._shared.codec.encode([PROTOCOL, HELLO, self._info(), knock.nonce, echo])
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
        expired = [endpoint for endpoint, knock in self._knocks.items() if knock.expiry < now]
        if not expired:
            return
        inboxes = {m.inbox for m in self._members.values()}
        for endpoint in expired:
            del self._knocks[endpoint]
            if endpoint not in inboxes:
                self._close_dealer(endpoint)

    def _drain_dealers(self) -> None:
        """Read what came back on our DEALERs, before a queue fills (see
        ``Context.raw_socket`` on libzmq's abort). Replies come to the inbox,
        so the only frame a peer may send here is a REFUSED answering our HELLO:
        it came from the node at that address, the one we knocked on. The
        DEALERs of open knocks are read every time; members' DEALERs, on which
        nothing is expected, ``DRAIN_PER_TICK`` a time in turn, so that an idle
        node's housekeeping does not grow with the mesh."""
        endpoints = [e for e in self._knocks if e in self._dealers]
        turn = self._drain_turn
        for _ in range(min(DRAIN_PER_TICK, len(self._dealers))):
            endpoint = next(turn, None)
            if endpoint is None:  # a new round over the DEALERs of this moment
                turn = self._drain_turn = iter(list(self._dealers))
                endpoint = next(turn, None)
            if endpoint is not None and endpoint not in self._knocks:
                endpoints.append(endpoint)
        for endpoint in endpoints:
            dealer = self._dealers.get(endpoint)
            if dealer is not None:
                for frame in dealer.take_incoming():
                    self._on_dealer_frame(frame, endpoint)

    def _on_dealer_frame(self, frame: bytes, endpoint: str) -> None:
        """A refusal of this very node (id and boot) stops it (see ``Node._refused``);
        a refusal of another is stale; anything else is a bad frame. A refusal
        in another major version is that node refusing ours."""
        try:
            msg = self._shared.codec.decode(frame)
        except wire.VersionMismatch as exc:
            refusal = wire.foreign_refusal(exc)
            if refusal is None:
                self._shared.stats["dropped_bad_frames"] += 1
            elif refusal[:2] != (self._shared.node_id, self._shared.boot):
                self._shared.stats["dropped_stale"] += 1
            else:
                self._refused(
                    f"refused by the node at {endpoint} (protocol {exc.major}, this node "
                    f"{wire.mine()}): {refusal[2][:500]}",
                    IncompatibleProtocol,
                )
            return
        except ZcellError:
            self._shared.stats["dropped_bad_frames"] += 1
            return
        if msg[1] != REFUSED:
            self._shared.stats["dropped_bad_frames"] += 1
        elif msg[2] != self._shared.node_id or msg[3] != self._shared.boot:
            self._shared.stats["dropped_stale"] += 1
        else:
            self._refused(f"refused by the node at {endpoint}: {msg[4][:500]}", NameTaken)

    def _in_cluster(self, info: dict[str, Any]) -> bool:
        if info["cluster"] != self._cluster:
            self._shared.stats["dropped_stale"] += 1
            return False
        if info["id"] == self._shared.node_id:
            self._shared.stats["dropped_forged"] += 1
            return False
        return True

    def _add_member(self, info: dict[str, Any], routing: bytes) -> Member | None:
        """Admit the node that answered our knock on ``info["inbox"]``.

        ``routing`` is the identity of the connection the answer came on: its
        prefix is the node's from now on. A live member is never taken over by
        another node claiming its id (a restart has a new id).
        """
        now = time.monotonic()
        if self.check_frozen(now) or self.quiet(now):
            return None  # just woke from a process stop: let the stale backlog drain
        member = self._members.get(info["id"])
        if member is not None:
            if member.boot == info["boot"] and member.inbox == info["inbox"]:
                member.last_seen = now
                self._shared.roster.claim_prefix(member, routing)
                self._knocks.pop(member.inbox, None)  # answered: its slot is free
                return member
            if member.inbox != info["inbox"]:
                self._shared.stats["dropped_forged"] += 1
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
            self._shared.stats["name_clashes"] += 1
            if (info["name"], info["id"]) not in self._clashes:
                self._clashes.add((info["name"], info["id"]))
                log.error("zcell: refused node %s at %s: %s", info["name"], info["inbox"], clash[0])
            if info["name"] == self._shared.name and not clash[1] and _started(info) is not None:
                # A twin that started before us, verified: of two twins exactly one
                # goes, and it is us. Its own refusal would come only with a knock
                # the other way (mDNS twins knock at once; the first to verify is
                # luck): seconds later, maybe past our window, and then neither went.
                self._refused(
                    f"refused by the node at {info['inbox']}: the name {info['name']!r} is "
                    f"already used by node {info['name']} at {info['inbox']}, started before "
                    f"this one, in cluster {self._cluster!r}; give one of them another name "
                    "(--name / Node(name=...))",
                    NameTaken,
                )
            return None
        member = Member.from_info(info)
        member.dealer = self._dealer_for(member.inbox)
        member.subscribed = member.id in self._subscribed
        self._members[member.id] = member
        self._shared.roster.claim_prefix(member, routing)
        self._knocks.pop(member.inbox, None)  # answered: its slot is free
        self._subscribe(member)
        self._monitors.rewatch()
        log.info("zcell: %s joined (%s)", member.name, member.inbox)
        # Tell the others (at the next housekeeping tick): a node that joined
        # through us before this one did would otherwise never hear of it
        # (gossip suggests; they verify).
        self._newcomers.append(member)
        return member

    def _tell_newcomers(self) -> None:
        """Send every member one piece of news naming the members that joined
        since the last: while a mesh forms, each node then tells each member of
        a batch of joins, not of every join (that cost each node O(members²))."""
        newcomers = [m for m in self._newcomers if self._members.get(m.id) is m]
        self._newcomers.clear()
        if not newcomers or len(self._members) < 2:
            return
        # Without our actors: they have them, and a join must not cost every
        # member a copy of every other member's directory. A member finds itself
        # in the list and skips it.
        news = self._welcome_frame([self._member_info(m) for m in newcomers], snapshot=False)
        for other in list(self._members.values()):
            if newcomers != [other]:  # news of itself alone tells it nothing
                gevent.spawn(self._send_quiet, other, news)

    def _forget_socket(self, sock: Socket) -> None:
        """A closed socket of ours leaves the context's list (closed at stop)."""
        ctx = self._shared.sockets.ctx
        if ctx is not None and sock in ctx.sockets:
            ctx.sockets.remove(sock)

    def _subscribe(self, member: Member) -> None:
        """A SUB of its own for each member: what arrives on it is that member's."""
        ctx = self._shared.sockets.ctx
        assert ctx is not None  # the node runs
        sub = ctx.socket(zmq.SUB, self._shared.loop.hub)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sparse_pings(sub)
        # A topic nothing is published on: its arrival at the member's XPUB
        # tells it exactly when this SUB is connected.
        sub.setsockopt(zmq.SUBSCRIBE, b"\xff" + self._shared.node_id.encode())
        member.sub = sub
        try:
            sub.connect(member.pub)  # its heartbeats too, if we watch it (Monitors)
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
            self._forget_socket(sub)

    def _welcome_frame(
        self, members: list[dict[str, Any]], echo: str = "", snapshot: bool = True
    ) -> bytes:
        # News of a member to the others carries no actors (nil): each node's
        # actors travel once to each joiner, not to every member per join.
        actors = self._hosting.snapshot() if snapshot else None
        return self._shared.codec.encode(
            [PROTOCOL, WELCOME, self._info(), self._news.seq, actors, members, echo]
        )

    def _full_welcome(self, member: Member, echo: str) -> None:
        """Our directory and the other members, for a node just verified."""
        others = [self._member_info(m) for m in self._members.values() if m is not member]
        frame = self._welcome_frame(others, echo)
        # At once when it can go without waiting: the new member admits us only on
        # this WELCOME, so it must be on the connection before our first request.
        dealer = member.dealer
        if dealer is None or not dealer.try_send(frame):
            gevent.spawn(self._send_quiet, member, frame)

    def _name_clash(self, info: dict[str, Any]) -> tuple[str, bool] | None:
        """Why ``info``'s name is taken here, and whether to tell its node to go.

        Told to go: a node whose name a live member holds, or that we hold and
        had first (the older start wins, so of two twins that meet exactly one
        goes). Not told: a holder that is leaving or silent (maybe a crash
        being restarted): the newcomer keeps knocking and gets in once it is gone.
        """
        name = info["name"]
        if name == self._shared.name:
            started = _started(info)
            go = started is not None and (started, info["id"]) > (
                self._shared.life.started_at,
                self._shared.node_id,
            )
            holder = f"node {self._shared.name} at {self._endpoints['inbox']}"
        else:
            other = next((m for m in self._members.values() if m.name == name), None)
            if other is None:
                return None
            # Only a holder heard first-hand (one we watch): a twin is also told
            # by the holder itself and its watchers.
            alive = self._monitors.heard_within(other, time.monotonic(), 1.5)
            go = alive and not other.leaving
            holder = f"node {other.name} at {other.inbox}"
        return (
            f"the name {name!r} is already used by {holder} in cluster {self._cluster!r}; "
            "give one of them another name (--name / Node(name=...))",
            go,
        )

    def on_hello(self, msg: list[Any], routing: bytes | None) -> None:
        info, nonce, echo = msg[2], msg[3], msg[4]
        if routing is None or not self._in_cluster(info):
            return
        if wire.minors(info)[0] > wire.PROTOCOL_MINOR:
            # It no longer speaks our minors (the rule says it then bumps the
            # major: this is a broken node). Never a member, nothing to say.
            self._shared.stats["refused_versions"] += 1
            return
        inbox = info["inbox"]
        if self._answers_knock(inbox, echo) and self._knocks[inbox].answered == nonce:
            # It answered the challenge we sent to its inbox (it is there), and
            # we answered its own: both sides are verified. We admit it first
            # and say so with a WELCOME; it admits us on that.
            member = self._add_member(info, routing)
            if member is not None:
                self._full_welcome(member, nonce)
                self._replay(member)
            else:
                self._refuse(info, routing)
            return
        if self._answers_knock(inbox, echo):
            # It is at that inbox and admits us once we answer below, before
            # its WELCOME makes it a member here: hold the requests it sends
            # meanwhile (over this connection's prefix), while the knock lasts.
            self._held.expect(routing[:PREFIX], self._knocks[inbox].expiry)
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
            refusal = [PROTOCOL, REFUSED, info["id"], info["boot"], clash[0]]
            self._send_on(routing, refusal)

    def refuse_version(self, exc: wire.VersionMismatch, routing: bytes) -> None:
        """Answer a HELLO of another major version of our cluster: a refusal in
        ours, on its own connection, naming both versions.

        Unverified (we cannot read the rest of its frames), it learns only our
        version; the joiner heeds it only from the node it knocked on, in its
        first seconds, like a refusal of its name.
        """
        info = wire.foreign_hello(exc)
        if info is None or info["cluster"] != self._cluster:
            return
        self._shared.stats["refused_versions"] += 1
        reason = (
            f"it speaks zcell protocol {wire.mine()} and the joiner "
            f"{wire.stated(exc.major, info)}; nodes of two major versions cannot mesh: "
            "run one major version of zcell on every node (zcell --version)"
        )
        refusal = [PROTOCOL, REFUSED, info["id"], info["boot"], reason]
        self._send_on(routing, refusal)

    def _send_on(self, routing: bytes, message: list[Any]) -> None:
        """Answer on the connection ``routing`` of our inbox (a joiner's own)."""
        inbox = self._shared.sockets.inbox
        assert inbox is not None  # the node runs
        inbox.send_coalesced(routing, self._shared.codec.encode(message))

    def _send_quiet(self, member: Member, frame: bytes) -> None:
        dealer = member.dealer
        assert dealer is not None  # set as it was admitted
        try:
            dealer.send(frame, time.monotonic() + 2.0)
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

    def on_welcome(self, msg: list[Any], routing: bytes | None) -> None:
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
            member = self._shared.roster.sender(routing, None)
            if member is None or member.id != info["id"] or member.boot != info["boot"]:
                self._shared.stats["dropped_forged"] += 1
                return
            member.last_seen = time.monotonic()
        if member is None:
            return
        if actors is not None:  # None: news of a member, our copy stands (else resync)
            if seq >= member.dir_seq:  # welcomes may be overtaken by directory news
                member.dir_seq = seq
                self._shared.directory.replace_node(member.id, actors)
            member.synced = True
        # Gossip only suggests addresses; membership needs first-hand contact.
        now = time.monotonic()
        for other in members:
            if other["cluster"] == self._cluster and other["id"] not in self._members:
                if other["id"] != self._shared.node_id and len(self._seeds) < MAX_SEEDS:
                    self._seeds.setdefault(other["inbox"], now + 60.0)
                    self._hello(other["inbox"], source=member.prefix)
        self._replay(member)

    def _replay(self, member: Member) -> None:
        """Run what ``member``'s connections sent before its WELCOME made it a
        member here (``HeldFrames``), in arrival order, as if it came now: the
        normal admission, now that its prefix is a member's. Called once the
        WELCOME (or HELLO) that admitted it is handled, before the inbox reader
        reads on, so later frames of the same connections cannot overtake them."""
        for routing, frame in self._held.release(member.prefix):
            self._shared.stats["messages_in"] -= 1  # counted once, as it arrived
            self._on_frame(frame, False, routing, None)

    def _claimed_by(self, msg: list[Any], via: Member | None, routing: bytes | None) -> Any:
        """The member a piece of news names (msg[2], msg[3]: id, boot), if it
        came from that member itself; None otherwise (forgeries counted)."""
        member = self._members.get(msg[2])
        if member is None or member.boot != msg[3]:
            return None
        if via is None and routing is None:
            return member  # from this node itself
        if self._shared.roster.sender(routing, via) is not member:
            self._shared.stats["dropped_forged"] += 1
            return None
        return member

    def on_heartbeat(self, msg: list[Any], via: Member | None = None) -> None:
        member = self._claimed_by(msg, via, None)
        if member is None:
            return
        member.last_seen = time.monotonic()
        self._vitals_heard(member, msg[4:7])

    def _vitals_heard(self, member: Member, vitals: list[Any]) -> None:
        """A member's directory number, load and actor count (three ints, from a
        heartbeat or a probe's answer): pull its directory when we missed news."""
        seq, load, n_actors = vitals
        member.load, member.n_actors = load, n_actors
        if (seq > member.dir_seq or not member.synced) and not member.syncing:
            gevent.spawn(self._resync, member)

    def on_directory(self, msg: list[Any], via: Member | None = None) -> None:
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
            self._shared.directory.add(actor_id, type_name, member.id)
        elif op == "-":
            self._shared.directory.remove(actor_id)
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
            self._shared.directory.replace_node(member.id, actors)
            member.synced = True

    def on_leave(
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
            later = gevent.spawn_later(0.3, self._left, member)
            self._leaving.add(later)
            later.link(self._leaving.discard)
        else:
            self._left(member)

    def pending(self) -> list[gevent.Greenlet]:
        """The greenlets of this membership that a stop must end (see ``_leaving``)."""
        return list(self._leaving)

    def _left(self, member: Member) -> None:
        self._member_down(member, "left")
        self._seeds.pop(member.inbox, None)

    def _member_down(self, member: Member, reason: str) -> None:
        if self._members.get(member.id) is not member:
            return
        del self._members[member.id]
        log.info("zcell: %s is down (%s)", member.name, reason)
        gone = self._shared.directory.remove_node(member.id)
        for actor_id in gone:
            self._actor_gone(actor_id)
        error = NodeDown(f"node {member.name} went down ({reason}); the outcome is unknown")
        self._node_down(member.id, error)
        self._shared.roster.release_prefix(member)
        self._unsubscribe(member)
        self._close_dealer(member.inbox)
        self._knocks.pop(member.inbox, None)
        self._monitors.forget(member)
        # It may come back (a healed partition): keep knocking for a while (each
        # knock opens a DEALER that closes again when nobody answers).
        if self._seeds.get(member.inbox, 0) != INF:
            self._seeds[member.inbox] = time.monotonic() + 300.0

    def _actor_gone(self, actor_id: str) -> None:
        self._hosting.forget_binding_target(actor_id)

    def check_frozen(self, now: float) -> bool:
        """After a process stop (or a stuck loop's paused heartbeats) as long as
        peers wait, drop every member.

        Every peer has declared us down meanwhile (see
        ``HeartbeatThread.stopped_since``), and what reached our sockets while we
        were stopped is stale: requests whose callers got ``NodeDown`` or gave up.
        With the senders no longer members, ``_admit`` drops them; ``_add_member``
        re-admits nobody for a short quiet period, so that this backlog (read
        within milliseconds of waking) is gone before the seeds' knocking rejoins.
        """
        hb = self._shared.sockets.hb
        if hb is None or self._shared.life.state != "running":
            return False
        since = hb.stopped_since(now)
        if since is None:
            return False
        # First, before anything that may yield (logging waits for a lock that
        # the heartbeat thread may hold): a greenlet that reads the inbox
        # meanwhile must find the quiet period on (`quiet`, checked by _admit).
        hb.quiet_until = now + max(0.5, self._heartbeat)
        self.woke_at = now
        for member in list(self._members.values()):
            self._member_down(member, "this node was stopped")
        log.warning(
            "zcell: node %s sent no heartbeat for %.1fs (its process was stopped, or "
            "its loop stuck): its peers have declared it down; dropped them, "
            "rejoining in %.1fs",
            self._shared.name,
            now - since,
            hb.quiet_until - now,
        )
        return True

    def quiet(self, now: float) -> bool:
        """Whether this node just woke from a process stop (`check_frozen`): it
        admits no frame from a peer, and re-admits no peer, until then."""
        hb = self._shared.sockets.hb
        return hb is not None and now < hb.quiet_until

    def beat_of(self, member: Member) -> float:
        """The heartbeat interval to judge ``member`` by: its own (node info
        ``beat``), never shorter than ours (a member that does not state it
        is judged by ours)."""
        return max(self._heartbeat, member.beat)

    def housekeeping(self) -> None:
        """Liveness checks, expired calls, and knocking on seeds that are not members."""
        interval = min(0.2 * self._heartbeat, 0.25)
        last = time.monotonic()
        next_knock = 0.0
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            if self._shared.sockets.hb is not None:
                self._shared.sockets.hb.loop_tick = now  # the watchdog's sign of life
            frozen = self.check_frozen(now)
            if now - last > interval + self._heartbeat:
                # Our own loop was blocked: the heartbeats queued meanwhile have
                # not been read yet, so give everyone a grace period (unless the
                # whole process was stopped: then they have dropped us).
                log.warning(
                    "zcell: node %s loop was blocked for %.1fs", self._shared.name, now - last
                )
                if not frozen:
                    for member in self._members.values():
                        member.last_seen = max(member.last_seen, now)
            last = now
            self._monitors.check(now)
            if self._newcomers:
                self._tell_newcomers()
            self._shared.pending.expire(now)
            self._held.expire(now)
            # Before expiring knocks: a refusal may be waiting on a knock's DEALER.
            self._drain_dealers()
            self._expire_knocks(now)
            if now >= next_knock and not self.quiet(now):
                next_knock = now + 1.0
                self._knock_on_seeds(now)

    def _knock_on_seeds(self, now: float) -> None:
        """Knock on the addresses we know of that are not members, as many as our
        half of the knock budget allows: those knocked on go to the back of the
        line, so that the next round knocks on the others first."""
        room = MAX_KNOCKS // 2 - len(self._knocks)
        member_inboxes = {m.inbox for m in self._members.values()}
        for endpoint, expiry in list(self._seeds.items()):
            if expiry < now:
                del self._seeds[endpoint]
            elif room > 0 and endpoint not in member_inboxes and endpoint not in self._knocks:
                room -= 1
                self._hello(endpoint)
                self._seeds[endpoint] = self._seeds.pop(endpoint)

    def read_pub(self) -> None:
        """Read our XPUB's subscription messages: which members' SUBs reach it."""
        pub = self._shared.sockets.pub
        assert pub is not None  # the node runs
        # Subscription messages: b"\x01" (subscribe) / b"\x00" + topic.
        # Sends poke this reader; the recheck is a safety net, once a second so
        # that an idle node does not wake 20 times a second for it.
        for frames in pub.recv_loop(recheck=1.0):
            data = frames[0]
            if len(data) > 1 and data[1:2] == b"\xff":
                node_id = data[2:].decode("ascii", "replace")
                if data[0] == 1:
                    self._subscribed.add(node_id)
                else:
                    self._subscribed.discard(node_id)
                member = self._members.get(node_id)
                if member is not None:
                    member.subscribed = data[0] == 1

    def on_ad(self, ad: PeerAd) -> None:
        if self._shared.life.state not in ("starting", "running") or ad.cluster != self._cluster:
            return
        if ad.secure != self._secure:
            self._shared.stats["mdns_ads_other_secret"] += 1  # says why nobody is found
            return  # it could never complete a handshake with us
        self._shared.stats["mdns_ads"] += 1
        member = self._members.get(ad.node_id)
        if member is None and (ad.inbox in self._seeds or len(self._seeds) < MAX_SEEDS):
            self._seeds[ad.inbox] = max(self._seeds.get(ad.inbox, 0.0), time.monotonic() + 600.0)
            self._hello(ad.inbox)


def _started(info: dict[str, Any]) -> float | None:
    """When a node says it started (wall clock), if it says so as a number."""
    started = info.get("started")
    return started if type(started) in (int, float) else None
