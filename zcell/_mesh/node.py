"""``Node``: one process's seat in the mesh.

A node binds a ROUTER inbox (requests, control calls and every reply arrive
there), an XPUB (scatter requests, directory and membership news) and a
heartbeat PUB owned by a small sender thread. For every live peer it connects a
DEALER to the peer's inbox and its SUB to the peer's PUB and heartbeat PUB.

Everything runs in the node's own OS thread with its own gevent hub (see
``loop.py``); public methods called from other threads hand their work to it.
Requests run in a greenlet each (``hosting.py``), so handlers may block on other
actors, themselves included, without deadlock.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import socket as _socket
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Self

import gevent
import msgpack
import zmq
from gevent.event import Event

from .. import _wire as wire
from .._transport.heartbeat import HeartbeatThread, thread_cpu_clock
from .._transport.loop import Flag, LoopThread, real_thread
from .._transport.security import ZapHandler, derive_keys
from .._transport.sockets import Context, bind_random
from .._wire import (
    C_ARGS,
    C_ID,
    C_OP,
    C_SRC,
    C_TTL,
    CTRL,
    DIRECTORY,
    ERROR,
    F_DIRECT,
    F_THROW,
    HEARTBEAT,
    HELLO,
    LEAVING,
    LEFT,
    OK,
    PROTOCOL_VERSION,
    REP,
    REQ,
    SCATTER,
    WELCOME,
    ZERROR,
)
from ..control.registry import ControlRegistry
from ..errors import (
    CallTimeout,
    NameTaken,
    NodeStopped,
    NoNodeForType,
    NoSuchActor,
    ProtocolError,
    RemoteError,
    ZcellError,
    did_you_mean,
)
from .context import current_context
from .directory import Directory, Member, Roster
from .discovery import Discovery
from .held import HeldFrames
from .membership import DirectoryNews, Membership
from .messaging import Messaging
from .plug import ActorLayer, Hosting, MeshLinks
from .result import AsyncResult, PendingCalls
from .state import Lifecycle, Shared, Sockets

if TYPE_CHECKING:
    from ..actors.actor import Actor
    from ..actors.proxy import ActorProxy

log = logging.getLogger(__name__)

__all__ = ["Node"]

PROTOCOL = PROTOCOL_VERSION
_names = itertools.count(1)  # only to number default names: "<host>-<pid>", "-2", ...
# The inbox reader lets the admitted handlers run after this many frames, so
# that their replies leave while a caller's next burst is read: reading a long
# backlog first would hold every reply back until its end.
_YIELD_EVERY = 32
#: Seconds after its start in which a node obeys a refusal of its name (at least).
_REFUSAL_WINDOW = 5.0
# stop(timeout) returns within timeout + this: announcing, closing ports and
# sockets normally take milliseconds, and a loop blocked by a handler must not
# hold the caller (or the interpreter's exit) much longer than asked.
_STOP_GRACE = 2.5
# The drain a node left running gets when the interpreter exits (see _stop_at_exit).
_EXIT_DRAIN = 2.0
# Started nodes not yet stopped: left gracefully at interpreter exit and disowned
# in a forked child. Weak, so that it never keeps a node alive.
_live: weakref.WeakSet[Node] = weakref.WeakSet()


def _default_name() -> str:
    n = next(_names)
    base = f"{_socket.gethostname()}-{os.getpid()}"
    return base if n == 1 else f"{base}-{n}"


class Node:
    """The mesh node: lifecycle, sockets, receive dispatch, and the public API.

    It hosts actors and makes proxies through its ``actor_layer``; programs create
    ``zcell.Node`` (``zcell/node.py``), which plugs the actor layer in and documents
    the arguments. The work is done by collaborators it composes, each given what
    it needs explicitly: ``Roster`` (members), ``PendingCalls`` (replies matched),
    ``Messaging`` (frames out), ``DirectoryNews`` and ``Membership`` (joining,
    liveness, gossip), and the actor layer's ``Hosting``.
    """

    #: The layer that hosts actors and makes proxies: the mesh calls up through it
    #: (``zcell.Node`` plugs in ``actors/layer.py:ACTORS``).
    actor_layer: ClassVar[ActorLayer]

    def __init__(
        self,
        name: str | None = None,
        *,
        cluster: str = "zcell",
        host: str = "127.0.0.1",
        port: int = 0,
        peers: Iterable[str] = (),
        discovery: str = "mdns",
        actors: Iterable[Any] = (),
        secret: str | None = None,
        heartbeat: float = 1.0,
        concurrency: int = 1000,
        max_message_size: int = wire.DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        if discovery not in ("mdns", "static"):
            raise ValueError(f'discovery must be "mdns" or "static", not {discovery!r}')
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < heartbeat <= wire.MAX_BEAT:
            raise ValueError(f"heartbeat must be positive, at most {wire.MAX_BEAT:g} seconds")
        if not hasattr(self, "actor_layer"):
            raise TypeError("the mesh node needs an actor layer: create a zcell.Node")
        self._layer = self.actor_layer
        self.id = uuid.uuid4().hex[:16]
        self.boot = uuid.uuid4().hex[:8]
        self.name = name or _default_name()
        self.cluster = cluster
        self.host = host
        self.port = port
        self.discovery = discovery
        self.secret = secret if secret is not None else os.environ.get("ZCELL_SECRET") or None
        # scrypt is slow by design (bench/README.md): derive the CURVE keys once per node.
        self._curve = derive_keys(self.secret, cluster) if self.secret is not None else None
        self.heartbeat = heartbeat
        self.concurrency = concurrency
        self.max_message_size = max_message_size
        self.endpoints: dict[str, str] = {}  # filled at start: "inbox", "pub", "hb"
        self._peers = list(peers)
        self._actor_specs = list(actors)
        self._types: dict[str, type[Actor]] = {}
        self._known: dict[str, type[Actor]] = {}
        self.directory = Directory()
        self._scatter_seen: dict[tuple[str, int], None] = {}
        self._frozen_checked = 0.0  # when _admit last looked for a process stop
        self._quiet = False  # what it found: just woke from one (_woke)
        self._life = Lifecycle()
        self._pid = os.getpid()
        self._tasks: list[gevent.Greenlet] = []  # the node's own long-running greenlets
        self._loop = LoopThread(f"zcell-{self.name}")
        self._stop_event: Event | None = None
        # What the decoders make a proxy in a message with.
        self._proxy_maker = self._layer.proxy_maker(self)
        self._codec = wire.Codec(self._proxy_maker, max_message_size)
        self._sockets = Sockets()
        self._disc: Discovery | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "messages_in",
                "messages_out",
                "errors",
                "dropped_bad_frames",
                "dropped_stale",
                "dropped_expired",
                "late_replies",
                "nowait_failures",
                "send_failures",
                "name_clashes",
                "dropped_forged",  # frames claiming a member (or us) on another's connection
                "refused_knocks",  # HELLOs not answered: too many unverified joiners at once
                "refused_auth",  # connections ZAP refused (no or another secret)
                "undeliverable_replies",  # see statistics()
                "mdns_ads",  # ads of peers of this cluster heard (each change)
                "mdns_ads_other_secret",  # ... ignored: one side has a secret, the other not
                "internal_errors",  # bugs in dispatch, failed internal tasks (logged)
                "dropped_newer_kinds",  # kinds of a newer minor a member speaks and we do not
                "refused_versions",  # HELLOs of another protocol version (refused)
                "suspicions",  # members' word that a member went silent, checked first-hand
                "suspicions_refuted",  # ... of which we heard the member ourselves
                "probes_unanswered",  # probes of members we do not watch, unanswered
                "held_early",  # requests from a node joining us, before its WELCOME (held.py)
                "held_replayed",  # ... run once the WELCOME made it a member
                "held_expired",  # ... dropped: no WELCOME in time (also in dropped_stale)
            ),
            0,
        )
        #: The control operations this node answers (spawn, kill, ...; add yours).
        self.control = ControlRegistry()
        self._compose()
        #: The error that made this node stop itself (``NameTaken``,
        #: ``IncompatibleProtocol``), or None.
        self.failure: ZcellError | None = None

    def _compose(self) -> None:
        """Make the collaborators, each given what it needs, and bind the hot
        paths once: proxies, hosting and the receive dispatch call the
        collaborators' methods directly, with no layer in between."""
        roster = self._roster = Roster(self.id, self.name)
        self._members = roster.members  # read here; Membership writes it
        self._node_label = roster.label
        pending = self._calls = PendingCalls(roster, self.stats, self._loop)
        self._pending = pending.table
        self._on_reply = pending.on_reply
        shared = Shared(
            node_id=self.id, boot=self.boot, name=self.name,
            roster=roster, pending=pending, stats=self.stats,
            sockets=self._sockets, life=self._life, loop=self._loop,
            codec=self._codec, directory=self.directory,
        )  # fmt: skip
        messaging = self._messaging = Messaging(
            shared,
            make_proxy=self._proxy_maker,
            on_frame=self._on_frame,
            check_running=self._check_running,
            max_message_size=self.max_message_size,
        )
        self._deliver = messaging.deliver
        self._ctrl = messaging.ctrl
        #: Start a control call to a member: ``ctrl_async(node_id, op, args,
        #: timeout)`` -> ``AsyncResult`` (the monitor fans out with it).
        self.ctrl_async = messaging.ctrl_async
        #: (The loop) call an actor, its outcome handed to a function:
        #: ``call_then(ref, method, kwargs, then)`` (``Messaging.call_then``).
        self.call_then = messaging.call_then
        #: Send a reply (``Messaging.reply``); what hosting answers requests with.
        self.reply = messaging.reply
        #: Send the direct replies coalesced so far (``Messaging.flush_replies``).
        self.flush_replies = messaging.flush_replies
        #: ``with node.corked():`` (the loop) what this greenlet sends to other
        #: nodes in the block leaves together, at its end at the latest
        #: (``Messaging.corked``).
        self.corked = messaging.corked
        news = self._news = DirectoryNews(self.id, self.boot, self.directory, messaging.publish)
        links = MeshLinks(
            types=self._types,
            directory_seq=news.last_seq,
            announce=news.announce,
            send=messaging.send_message,
            deliver=messaging.deliver,
        )
        #: The actor layer's side of this node: its hosted actors and their handlers.
        self.hosting: Hosting = self._layer.host(self, links)
        self.hosting.add_control_ops(self.control)
        # Requests that overtake the WELCOME of a node joining us wait for it.
        self._held = HeldFrames(self.stats)
        self._membership = Membership(
            shared,
            cluster=self.cluster, heartbeat=self.heartbeat, secure=self.secret is not None,
            endpoints=self.endpoints, news=news, hosting=self.hosting,
            ctrl=messaging.ctrl, node_down=messaging.node_down,  # what it asks of Messaging
            on_frame=self._on_frame, info=self._info, refused=self._refused,  # of the node
            held=self._held, vitals=self._vitals,
        )  # fmt: skip
        self._membership.add_control_ops(self.control)

    # ------------------------------------------------------------------ lifecycle

    @property
    def _state(self) -> str:
        """Where the node is in its life (``Lifecycle.state``; set through ``_life``)."""
        return self._life.state

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> Self:
        """Bind, start the loop thread, join the mesh.

        Args:
            timeout: Seconds to wait for the sockets to bind and the loop to run.

        Returns:
            The node itself, so that ``node = Node().start()`` reads as one step.

        Raises:
            NodeStopped: The node was already started once; create a new ``Node``.
        """
        if self._life.state != "new":
            raise NodeStopped(f"node {self.name} was already started; create a new Node")
        for spec in self._actor_specs:
            for cls in self._layer.resolve(spec):
                self._types[cls.name] = cls
        self._known.update(self._types)
        self._life.state = "starting"
        # Before the first HELLO: of two nodes with one name, the older keeps it.
        self._life.started_at = time.time()
        self._loop.start(self._main)
        try:
            self._loop.call(self._start_in_loop, timeout=timeout)
        except BaseException:
            self._life.state = "running"
            self.stop(timeout=1)
            raise
        self._life.state = "running"
        _live.add(self)
        if self.failure is not None:  # refused while starting (see _refused)
            self.stop(timeout=1)
            raise self.failure
        return self

    def _refused(self, reason: str, error: type[NodeStopped] = NameTaken) -> None:
        """A member refused us (our name is taken, or our version): stop, visibly.

        Heeded only in the first seconds of the node's life, when the newcomer
        is the one to go; later (a healed partition) it is logged, not obeyed,
        so that nobody can stop an established node by refusing its knock.
        """
        if self.failure is not None or self._life.state not in ("starting", "running"):
            return
        if time.time() - self._life.started_at > max(_REFUSAL_WINDOW, 5 * self.heartbeat):
            log.error("zcell: node %s was %s (ignored: it is past its start)", self.name, reason)
            return
        self.failure = error(f"node {self.name} was {reason}")
        log.error("zcell: %s; stopping", self.failure)
        if self._life.state == "running":  # else start() raises it
            real_thread(self.stop)

    def _main(self) -> None:
        self._stop_event = Event()
        self._stop_event.wait()

    def _start_in_loop(self) -> None:
        hub = self._loop.hub
        self.hosting.attach(hub)
        sockets = self._sockets
        ctx = sockets.ctx = Context(self.max_message_size, self.heartbeat, self._curve)
        if self._curve is not None:
            # Before any socket binds: ZAP is consulted only if a handler is there.
            ZapHandler(ctx, hub, self._curve, self.stats).start()
        sockets.inbox = ctx.socket(zmq.ROUTER, hub)
        # Direct replies to a connection that is gone or full fail instead of
        # vanishing: they are counted (statistics()["undeliverable_replies"]).
        sockets.inbox.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A member's DEALER that reconnects keeps its routing id (directory.py:Roster):
        # the new connection takes it over from the dead one.
        sockets.inbox.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sockets.pub = ctx.socket(zmq.XPUB, hub)
        sockets.pub.setsockopt(zmq.XPUB_NODROP, 1)
        # Program threads waiting in their own ports hear of nodes going down here.
        sockets.notify = ctx.zmq.socket(zmq.PUB)
        sockets.notify.setsockopt(zmq.LINGER, 0)
        sockets.notify.bind(self._messaging.notify_endpoint)
        inbox = bind_random(sockets.inbox, self.host, self.port)
        pub = bind_random(sockets.pub, self.host)
        sockets.hb = HeartbeatThread(
            ctx.zmq,
            self.host,
            self.heartbeat,
            self._heartbeat_frame,
            self._configure_hb,
            loop_cpu=thread_cpu_clock(),  # this is the loop thread
            name=self.name,
        )
        hb = sockets.hb.start()
        if self.host in ("0.0.0.0", "*"):
            hb = hb.replace("0.0.0.0", inbox.split("//")[1].rsplit(":", 1)[0])
        self.endpoints.update(inbox=inbox, pub=pub, hb=hb)
        self._tasks = [
            gevent.spawn(self._supervise, task)
            for task in (self._read_inbox, self._read_pub, self._housekeeping)
        ]
        for peer in self._peers:
            self._membership.add_peer(peer)
        if self.discovery == "mdns":
            self._start_discovery()

    def _supervise(self, task: Callable[[], None]) -> None:
        """Run one of the node's own tasks (a socket reader, housekeeping) for good.

        Such a task only ends when the node stops. If it fails or returns before
        that, it is a bug or a broken socket: log it and start it again, waiting
        longer after each failure in a row (up to 5 s) so that a task that keeps
        failing does not spin.
        """
        name = task.__name__
        backoff = 0.05
        while True:
            started = time.monotonic()
            try:
                task()
                what = "ended"
            except BaseException:  # noqa: BLE001 - even SystemExit: the loop must go on
                if self._life.state not in ("starting", "running"):
                    return
                log.exception("zcell: node %s internal task %s failed", self.name, name)
                what = "failed"
            if self._life.state not in ("starting", "running"):
                return
            if time.monotonic() - started > 60:
                backoff = 0.05  # not a failure in a row
            log.error(
                "zcell: node %s internal task %s %s unexpectedly; restarting it in %.2fs",
                self.name,
                name,
                what,
                backoff,
            )
            self.stats["internal_errors"] += 1
            gevent.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _configure_hb(self, sock: zmq.Socket[bytes]) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10)
        if self._curve is not None:
            self._curve.secure(sock, zmq.PUB)

    def _start_discovery(self) -> None:
        def port(endpoint: str) -> int:
            return int(endpoint.rsplit(":", 1)[1])

        self._disc = Discovery(
            cluster=self.cluster,
            node_id=self.id,
            name=self.name,
            host=self.host,
            inbox_port=port(self.endpoints["inbox"]),
            pub_port=port(self.endpoints["pub"]),
            hb_port=port(self.endpoints["hb"]),
            secure=self.secret is not None,
            on_peer=lambda ad: self._loop.submit(self._membership.on_ad, ad),
        )
        self._loop.hub.threadpool.apply(self._disc.start)

    def stop(self, timeout: float = 5.0) -> None:
        """Leave the mesh gracefully.

        Announces the departure (no new work is placed here), lets in-flight
        handlers finish until ``timeout`` (their nested calls still work; new
        work from this program is refused), fails what is left with
        ``ActorStopped``, runs ``on_stop`` hooks, announces that it has left and
        closes everything. Returns within ``timeout`` + 2.5 s even when a
        handler blocks the loop (the node then closes once its loop is free).
        Called from one of this node's own handlers, it starts the stop and
        returns at once, so that the handler can finish. Idempotent.

        Args:
            timeout: Seconds that in-flight handlers get to finish.
        """
        if self._life.state == "forked":
            return  # the parent's sockets: nothing of ours to close here
        if self._life.state in ("stopping", "stopped"):
            if self._life.state == "stopping" and not self._loop.in_loop():
                self._loop.join(timeout + _STOP_GRACE)
            return
        if self._life.state == "new":
            self._life.state = "stopped"
            return
        self._life.state = "stopping"
        _live.discard(self)
        if self._loop.in_loop():
            # A greenlet of its own: the drain waits for the calling handler,
            # and kills handlers that outlast it, which must not kill the stop.
            gevent.spawn(self._stop_in_loop, timeout)
            return
        deadline = time.monotonic() + timeout + _STOP_GRACE
        try:
            self._loop.call(self._stop_in_loop, timeout, timeout=timeout + _STOP_GRACE)
        except CallTimeout:
            log.warning(
                "zcell: node %s did not stop within %.1fs: a handler blocks its loop; "
                "it closes once the loop is free",
                self.name,
                timeout + _STOP_GRACE,
            )
        except Exception:
            log.exception("zcell: node %s did not stop cleanly", self.name)
        finally:
            self._life.state = "stopped"
        self._loop.join(max(0.0, deadline - time.monotonic()))

    def _stop_in_loop(self, timeout: float) -> None:
        try:
            self._messaging.publish([PROTOCOL, LEAVING, self.id, self.boot], 0.5)
            self.hosting.drain(timeout)
            # LEFT goes to each member's inbox over the same DEALER as our
            # replies, so it cannot overtake a reply still on the wire.
            left = self._codec.encode([PROTOCOL, LEFT, self.id, self.boot])
            for member in list(self._members.values()):
                try:
                    if member.dealer is not None:
                        member.dealer.try_send(left)
                except ZcellError:
                    pass
            self._messaging.publish([PROTOCOL, LEFT, self.id, self.boot], 0.5)
        except Exception:
            log.debug("zcell: leave announcement failed", exc_info=True)
        if self._disc is not None:
            try:
                self._loop.hub.threadpool.apply(self._disc.stop)
            except Exception:
                log.debug("zcell: discovery stop failed", exc_info=True)
        self._messaging.close(NodeStopped(f"node {self.name} stopped"))
        sockets = self._sockets
        if sockets.hb is not None:
            sockets.hb.stop()
        gevent.sleep(0.02)  # let the LEFT frame reach the wire before closing
        if sockets.ctx is not None:
            for sock in list(sockets.ctx.sockets):
                sock.close()
            sockets.ctx.zmq.term()
        # A greenlet still suspended when its thread ends can never be freed, nor
        # what its frames hold (the whole node): end them here, in their thread.
        readers = [m.reader for m in self._members.values() if m.reader is not None]
        gevent.killall(self._tasks + readers + self._membership.pending(), timeout=1.0)
        self.hosting.end_workers()
        self._life.state = "stopped"
        assert self._stop_event is not None
        self._stop_event.set()

    def _check_running(self, nested: bool = False) -> None:
        """Raise NodeStopped unless the node serves; ``nested``: a message sent by a
        handler, which may still go out while a graceful stop drains it."""
        if self._life.state != "running":
            if nested and self._life.state == "stopping" and self._draining_handler():
                return
            if self._life.state == "new":
                raise NodeStopped(f"node {self.name} is not started: call start() or use `with`")
            if self._life.state == "forked":
                raise NodeStopped(
                    f"node {self.name} belongs to the process that forked this one "
                    f"(pid {self._pid}); its sockets cannot be used here: create a new "
                    "Node in the child"
                )
            raise NodeStopped(f"node {self.name} is stopped; create a new Node")

    def _draining_handler(self) -> bool:
        """True in one of this node's handlers (which a stop lets finish)."""
        return self._loop.in_loop() and current_context() is not None

    def _forked(self) -> None:
        """In a forked child: disown the parent's node without touching its sockets
        (their I/O threads do not exist here; using them would hang)."""
        if self._life.state in ("running", "stopping", "starting"):
            self._life.state = "forked"

    def _run(self, fn: Any, *args: Any, timeout: float | None = 30.0) -> Any:
        """Run ``fn`` in the loop thread (directly when already there)."""
        if self._loop.in_loop():
            return fn(*args)
        return self._loop.call(fn, *args, timeout=timeout)

    # ------------------------------------------------------------------ identity

    def _info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "boot": self.boot,
            "name": self.name,
            "cluster": self.cluster,
            "inbox": self.endpoints["inbox"],
            "pub": self.endpoints["pub"],
            "hb": self.endpoints["hb"],
            "types": sorted(self._types),
            "started": self._life.started_at or time.time(),
            "proto": wire.speaks(),
            "beat": self.heartbeat,
        }

    def _heartbeat_frame(self) -> bytes:
        # Called from the heartbeat thread: its own packb, no shared packer.
        frame: bytes = msgpack.packb([PROTOCOL, HEARTBEAT, self.id, self.boot, *self._vitals()])
        return frame

    def _vitals(self) -> list[int]:
        """What a heartbeat (and a probe's answer) says: the number of the last
        directory change, requests in flight, actors hosted."""
        return [self._news.seq, self.hosting.in_flight, len(self.hosting.actors)]

    def _class_for(self, type_name: str) -> type[Actor] | None:
        return self._known.get(type_name)

    # ------------------------------------------------------------------ receiving

    def _read_inbox(self) -> None:
        on_frame = self._on_frame
        host = self.hosting
        n = 0
        inbox = self._sockets.inbox
        assert inbox is not None  # the node runs
        for frames in inbox.recv_loop(before_peek=host.run_admitted):
            # [routing id, frame, ...]: a program thread's port sends the frames
            # it coalesced as the parts of one message (threadport.py).
            routing = frames[0]
            for i in range(1, len(frames)):
                on_frame(frames[i], False, routing)
            n += len(frames) - 1
            if n >= _YIELD_EVERY:
                # Under a burst, let the handlers admitted so far run (and reply).
                n = 0
                gevent.sleep(0)
                # Too much held back by the concurrency bound: stop reading, so
                # ZeroMQ's high-water marks push back on the senders. Never while
                # a reply is awaited here: replies arrive on this socket too.
                while host.backlogged() and not self._pending:
                    host.wait_for_room()

    # The node's own tasks are named for its logs ("internal task _housekeeping
    # failed"); the work is the membership's.

    def _read_pub(self) -> None:
        """(Task) Which members' SUBs reach our XPUB: ``Membership.read_pub``."""
        self._membership.read_pub()

    def _housekeeping(self) -> None:
        """(Task) Liveness, expired calls, knocks: ``Membership.housekeeping``."""
        self._membership.housekeeping()

    def _on_heartbeat(self, msg: list[Any], via: Member) -> None:
        """A member's heartbeat (about once a second each): ``Membership.on_heartbeat``."""
        self._membership.on_heartbeat(msg, via)

    def _on_frame(
        self,
        frame: bytes,
        from_pub: bool = False,
        routing: bytes | None = None,
        via: Member | None = None,
    ) -> None:
        """Handle one frame: from our inbox (``routing``: the connection's
        identity), from a member's PUB (``via``: that member), or from this node
        itself (neither). Who a frame claims to be from is checked against that."""
        try:
            msg = self._codec.decode(frame)
        except ProtocolError as exc:
            self._on_bad_frame(exc, routing, via)
            return
        except Exception:  # a proxy factory or hook must never kill the reader
            self.stats["dropped_bad_frames"] += 1
            log.exception("zcell: dropped a frame that failed to decode")
            return
        self.stats["messages_in"] += 1
        kind = msg[1]
        try:
            if kind == REP:
                self._on_reply(msg, routing)
            elif kind == REQ:
                if self._admit(msg, routing, via, frame):
                    if msg[wire.R_FLAGS] & F_DIRECT and routing is not None:
                        msg.append(routing)  # the reply goes back on this connection
                    self.hosting.request(msg)
            elif kind == SCATTER:
                if self._admit(msg, routing, via, frame) and self._first_scatter(msg):
                    self.hosting.scatter(msg)
            elif kind == HEARTBEAT:
                if via is not None:
                    self._on_heartbeat(msg, via)
            elif kind == CTRL:
                if self._admit_ctrl(msg, routing, frame):
                    gevent.spawn(self._on_ctrl, msg)
            elif kind == DIRECTORY:
                if via is not None:
                    self._membership.on_directory(msg, via)
            elif kind == HELLO:
                self._membership.on_hello(msg, routing)
            elif kind == WELCOME:
                self._membership.on_welcome(msg, routing)
            elif kind in (LEAVING, LEFT):
                self._membership.on_leave(msg, via, routing)
            else:  # REFUSED counts only on the DEALER of our HELLO (_drain_dealers)
                self.stats["dropped_stale"] += 1
        except Exception:
            # The frame was valid: this is a bug on our side, not bad input.
            self.stats["internal_errors"] += 1
            log.exception("zcell: message of kind %s could not be handled", kind)

    def _on_bad_frame(self, exc: ProtocolError, routing: bytes | None, via: Member | None) -> None:
        """Count a frame that failed its check; answer a HELLO of another major.

        A kind we lack from a member that speaks a newer minor is that minor's
        news, not hostile input: counted apart. From anyone else it is malformed.
        """
        if isinstance(exc, wire.UnknownKind):
            sender = self._roster.sender(routing, via)
            if sender is not None and sender.minors[1] > wire.PROTOCOL_MINOR:
                self.stats["dropped_newer_kinds"] += 1
                return
        self.stats["dropped_bad_frames"] += 1
        log.debug("zcell: dropped a bad frame: %s", exc)
        if isinstance(exc, wire.VersionMismatch) and routing is not None:
            self._membership.refuse_version(exc, routing)

    def _admit(
        self, msg: list[Any], routing: bytes | None, via: Member | None, frame: bytes
    ) -> bool:
        """Requests only from current members (right boot id) over their own
        connections, and not past deadline.

        A declined throw that another member passes on (``F_THROW``, with the
        actors that have seen it) keeps its caller as source: it is admitted
        from any member's connection, as the protocol's one relay. A request
        from the connection of a node joining us, whose WELCOME it overtook,
        is held (``frame``, ``HeldFrames``) and comes back here once that node
        is a member.
        """
        if routing is None and via is None:
            return True  # from this node itself
        src = msg[wire.R_SRC]
        now = time.monotonic()
        if now - self._frozen_checked > 0.01:  # inline: this runs for every request
            self._look_for_stop(now)
        if self._quiet:
            self.stats["dropped_stale"] += 1
            return False
        sender = self._roster.sender(routing, via)
        if sender is None or sender.id != src:
            relayed = msg[1] == REQ and msg[wire.R_FLAGS] & F_THROW and msg[wire.R_SEEN]
            if sender is None or not relayed:
                if sender is None and self._hold_early(src, routing, frame, now):
                    return False
                self._drop_claim(src)
                return False
        boot = self.boot if src == self.id else getattr(self._members.get(src), "boot", None)
        if boot != msg[wire.R_BOOT]:
            self.stats["dropped_stale"] += 1
            return False
        sender.last_seen = now
        return True

    def _look_for_stop(self, now: float) -> None:
        """Whether this node is in the quiet period after a process stop, when it
        admits no peer's frame (``Membership.check_frozen``): noted in ``_quiet``.

        Right after a SIGSTOP/SIGCONT the inbox holds requests whose callers
        gave up long ago: look for that before admitting any of them. A stop
        shows as a jump of the clock, so looking every 10 ms is enough.
        """
        self._frozen_checked = now
        membership = self._membership
        self._quiet = membership.check_frozen(now) or membership.quiet(now)

    def _woke(self, now: float) -> bool:
        """`_look_for_stop` for a control request: True (counted as stale) when
        it arrives in the quiet period."""
        if now - self._frozen_checked > 0.01:
            self._look_for_stop(now)
        if self._quiet:
            self.stats["dropped_stale"] += 1
        return self._quiet

    def _hold_early(self, src: str, routing: bytes | None, frame: bytes, now: float) -> bool:
        """Hold a request from a connection that is no member's when it is a
        joining node's (``HeldFrames``): its WELCOME is on the way, and then it
        comes back through admission. Never one that claims a member or us:
        that is a forgery now, whatever comes."""
        if routing is None or src == self.id or src in self._members:
            return False
        return self._held.hold(routing, frame, now)

    def _drop_claim(self, src: str) -> None:
        """Count a frame from a connection that is not its claimed sender's."""
        forged = src == self.id or src in self._members
        self.stats["dropped_forged" if forged else "dropped_stale"] += 1

    def _admit_ctrl(self, msg: list[Any], routing: bytes | None, frame: bytes) -> bool:
        if routing is None:
            return True  # from this node itself
        src = msg[C_SRC]
        now = time.monotonic()
        if self._woke(now):
            return False
        sender = self._roster.sender(routing, None)
        if sender is None and self._hold_early(src, routing, frame, now):
            return False
        if sender is None or sender.id != src:
            self._drop_claim(src)
            return False
        if sender.boot != msg[wire.C_BOOT]:
            self.stats["dropped_stale"] += 1
            return False
        return True

    def _first_scatter(self, msg: list[Any]) -> bool:
        # A scatter can arrive twice (PUB and direct) around a subscription.
        key = (msg[wire.R_SRC], msg[wire.R_ID])
        seen = self._scatter_seen
        if key in seen:
            return False
        seen[key] = None
        if len(seen) > 4096:
            for old in list(itertools.islice(seen, 2048)):
                del seen[old]
        return True

    def _on_ctrl(self, msg: list[Any]) -> None:
        """Run a control operation (looked up in ``self.control``) and reply."""
        rid, src, op, args = msg[C_ID], msg[C_SRC], msg[C_OP], msg[C_ARGS]
        ttl = msg[C_TTL]
        try:
            value = self.control.run(op, args, src)
        except ZcellError as exc:
            if isinstance(exc, RemoteError):  # a nested call's error: relay it
                self.reply(src, rid, ERROR, self.hosting.error_info(exc), ttl)
            else:
                self.reply(src, rid, ZERROR, [type(exc).__name__, str(exc)], ttl)
        except BaseException as exc:  # a constructor may raise anything, even SystemExit
            self.reply(src, rid, ERROR, self.hosting.error_info(exc), ttl)
        else:
            self.reply(src, rid, OK, value, ttl)

    # ------------------------------------------------------------------ public API

    def register(self, cls: type[Actor]) -> None:
        """Allow this node to host ``cls`` (as ``Node(actors=[cls])`` does at start)."""
        name = self._layer.type_name(cls)
        self._known[name] = cls
        if self._types.get(name) is not cls:
            self._types[name] = cls
            if self._life.state == "running":
                self._run(self._news.announce, "t", "", name)

    def spawn(
        self,
        cls: Any,
        kwargs: dict[str, Any] | None = None,
        *,
        on: str | None = None,
        nowait: bool = False,
        timeout: float | None = None,
        **kw: Any,
    ) -> ActorProxy:
        """Start an actor somewhere in the mesh and return its proxy.

        Args:
            cls: An Actor class or its type-name string.
            kwargs: Keyword arguments for ``state.__init__`` (or give them as ``**kw``).
            on: Node name or id to place it on. Default: the least-loaded node
                that registered the type; only when none did, this node (when the
                program has the class).
            nowait: Return the proxy without waiting for the actor to start. A
                failure is logged (an error); no answer within ``timeout`` is
                logged as a warning: the actor may still have started.
            timeout: Bound on the wait (default ``Actor.default_timeout``).

        Raises:
            NoNodeForType: no node can host the type.
            RemoteError: the state's constructor raised.
            TypeError: a ``__main__`` class without an explicit ``name``.
        """
        self._check_running()
        name = self._layer.type_name(cls)
        args = dict(kwargs or {}, **kw)
        if isinstance(cls, type):
            self._known.setdefault(name, cls)
        if timeout is None:
            timeout = self._layer.timeout_of(cls)
        node_id = self._place(name, cls, on)
        actor_id = uuid.uuid4().hex
        proxy = self._layer.proxy(self, actor_id, name, node_id, cls)
        self._messaging.encode([args])  # SerializationError before anything is sent
        if nowait:
            started = self._messaging.ctrl_async(
                node_id, "spawn", {"type": name, "kwargs": args, "id": actor_id}, timeout
            )
            started.link(functools.partial(_log_failed_spawn, name, self._node_label(node_id)))
            return proxy
        self._ctrl(node_id, "spawn", {"type": name, "kwargs": args, "id": actor_id}, timeout)
        self._run(self.directory.add, actor_id, name, node_id)
        return proxy

    def _place(self, name: str, cls: Any, on: str | None) -> str:
        # Runs in the caller's thread: copies before iterating what the loop mutates.
        if on is not None:
            if on in (self.id, self.name):
                return self.id
            for member in list(self._members.values()):
                if on in (member.id, member.name):
                    return member.id
            raise NoNodeForType(f"no node named {on!r} in the mesh; nodes: {self._node_names()}")
        candidates = (
            [(self.directory.count_on(self.id), self.name, self.id)] if name in self._types else []
        )
        for member in list(self._members.values()):
            if name in member.types and not member.leaving:
                candidates.append((self.directory.count_on(member.id), member.name, member.id))
        if candidates:
            return min(candidates)[2]
        if isinstance(cls, type):
            self.register(cls)
            return self.id
        hosted = set(self._types).union(*(m.types for m in list(self._members.values())))
        if "." in name:
            module = name.rsplit(".", 1)[0]
            how = f"Start one that does: `zcell node -A {module}`, or Node(actors=[{name!r}])"
        else:  # not `zcell node -A Greeter`: there is no such module
            how = "A type name is MODULE.CLASS, e.g. examples.hello.Greeter"
        raise NoNodeForType(
            f"no node in the mesh hosts actor type {name!r}{did_you_mean(name, hosted)}; "
            f"nodes: {self._node_names()}. {how}"
        )

    def _node_names(self) -> str:
        names = [f"{self.name} (hosts {sorted(self._types) or 'nothing'})"]
        names += [
            f"{m.name} (hosts {sorted(m.types) or 'nothing'})" for m in self._members.values()
        ]
        return ", ".join(names)

    def select(self, cls: Any) -> ActorProxy:
        """A proxy for some existing actor of this type, anywhere in the mesh.

        Raises:
            NoSuchActor: there is none.
        """
        self._check_running()
        name = self._layer.type_name(cls)
        group = list(self.directory.of_type(name).items())
        if not group:
            raise NoSuchActor(f"no actor of type {name} in the mesh; spawn one with node.spawn")
        # Prefer a local actor, else the first known.
        local = [g for g in group if g[1] == self.id]
        actor_id, node_id = (local or group)[0]
        return self._layer.proxy(self, actor_id, name, node_id, cls)

    def kill(self, actor: Any, timeout: float | None = None) -> None:
        """Stop an actor wherever it is (``on_stop`` runs).

        Args:
            actor: Its proxy (or ``Actor``) or its id.
            timeout: Bound on the wait (default ``Actor.default_timeout``).

        Raises:
            NoSuchActor: unknown id.
            TypeError: ``actor`` is neither a proxy nor an id.
        """
        self._check_running()
        address = self._layer.address(actor)
        if address is not None:
            actor_id, _, node_id = address
        elif isinstance(actor, str):
            entry = self.directory.actors.get(actor)
            if entry is None:
                raise NoSuchActor(f"no actor with id {actor} in the mesh")
            actor_id, node_id = actor, entry[1]
        else:
            raise TypeError(f"kill() takes an actor proxy or id, not {type(actor).__name__}")
        if timeout is None:
            timeout = self._layer.timeout_of(None)
        self._ctrl(node_id, "kill", {"id": actor_id}, timeout)
        self._run(self.directory.remove, actor_id)

    def lookup(self, actor_id: str) -> ActorProxy:
        """A proxy for a known actor id.

        Raises:
            NoSuchActor: The id is not in the mesh's directory.
        """
        self._check_running()
        entry = self.directory.actors.get(actor_id)
        if entry is None:
            raise NoSuchActor(f"no actor with id {actor_id} in the mesh")
        return self._layer.proxy(self, actor_id, entry[0], entry[1])

    def actors(self, type: Any = None) -> list[ActorProxy]:  # noqa: A002 - API name
        """The mesh directory, as proxies.

        Args:
            type: Only actors of this type (an Actor class or type name).
        """
        self._check_running()
        proxy = self._layer.proxy
        if type is None:
            return [proxy(self, a, t, n) for a, (t, n) in list(self.directory.actors.items())]
        # The type's index, not the whole directory: the task dispatcher asks for a
        # queue's consumers at every round, whatever else the mesh holds.
        name = self._layer.type_name(type)
        return [proxy(self, a, name, n) for a, n in list(self.directory.of_type(name).items())]

    def nodes(self) -> list[dict[str, Any]]:
        """Live members, this node included: id, name, endpoints, actors, and more."""
        self._check_running()
        count_on = self.directory.count_on
        now = time.time()
        out = [
            {
                "id": self.id,
                "name": self.name,
                "endpoints": dict(self.endpoints),
                "actors": len(self.hosting.actors),
                "types": sorted(self._types),
                "uptime": now - self._life.started_at,
                "load": self.hosting.in_flight,
                "self": True,
            }
        ]
        for m in list(self._members.values()):
            out.append(
                {
                    "id": m.id,
                    "name": m.name,
                    "endpoints": {"inbox": m.inbox, "pub": m.pub, "hb": m.hb},
                    "actors": count_on(m.id),
                    "types": sorted(m.types),
                    "uptime": now - m.started if m.started else 0.0,
                    "load": m.load,
                    "self": False,
                }
            )
        return out

    def woke_at(self) -> float:
        """``time.monotonic()`` when this node last came back from a process stop
        that its peers took for a crash (SIGSTOP, a paused VM: docs/failure.md,
        "Process stop"); 0.0 if it never did. Work that waited here then may have
        been given up on by those who sent it, and sent elsewhere."""
        return self._membership.woke_at

    def statistics(self) -> dict[str, int]:
        """Counters: messages in/out, errors, dropped bad frames, in-flight, actors..."""
        stats = dict(self.stats)
        self._messaging.add_port_counters(stats)
        if self._sockets.inbox is not None:
            # Direct replies whose caller's connection was gone or full.
            stats["undeliverable_replies"] += self._sockets.inbox.undeliverable
        stats["in_flight"] = self.hosting.in_flight
        stats["queued"] = len(self.hosting.queue)
        stats["actors_hosted"] = len(self.hosting.actors)
        stats["pending_calls"] = len(self._pending)
        stats["members"] = len(self._members) + 1
        return stats

    def wait_for(
        self,
        nodes: int | None = None,
        type: Any = None,
        timeout: float = 10.0,  # noqa: A002
    ) -> None:
        """Block until the mesh has ``nodes`` members (itself included) and/or an actor
        of ``type``.

        Args:
            nodes: The number of members to wait for.
            type: An Actor class or type name to wait for an actor of.
            timeout: Seconds to wait.

        Raises:
            CallTimeout: not reached within ``timeout`` seconds.
        """
        self._check_running()
        name = self._layer.type_name(type) if type is not None else None
        deadline = time.monotonic() + timeout
        while True:
            # A member counts once its directory snapshot is in.
            have = 1 + sum(1 for m in list(self._members.values()) if m.synced)
            ok = (nodes is None or have >= nodes) and (
                name is None or bool(self.directory.of_type(name))
            )
            if ok:
                return
            if time.monotonic() >= deadline:
                want = []
                if nodes is not None:
                    want.append(f"{nodes} nodes (have {have})")
                if name is not None:
                    want.append(f"an actor of type {name}")
                raise CallTimeout(
                    f"mesh did not reach {' and '.join(want)} within {timeout}s; check that "
                    "the other nodes run with the same cluster and can reach this host"
                )
            Flag().wait(0.01)

    def in_loop(self) -> bool:
        """True when called from this node's loop thread (any greenlet there).

        For layers above the mesh that act differently there (the task layer
        hands work over from other threads). The loop thread's own id, not
        ``threading.get_ident()``: under gevent's monkey-patching (``zcell
        worker``) that is the running greenlet's.
        """
        return self._loop.in_loop()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` soon in this node's loop thread; returns at once.

        For layers above the mesh (the task layer) whose state lives in the loop
        thread: a program thread hands work to it here instead of racing it.
        ``fn`` runs as a hub callback: it must not block (spawn a greenlet to
        wait). Its exceptions are logged, never raised.

        Raises:
            NodeStopped: The node is not running.
        """
        self._check_running(nested=True)
        self._loop.submit(fn, *args)

    def call_in_loop(self, fn: Callable[..., Any], *args: Any, timeout: float | None = 30.0) -> Any:
        """Run ``fn(*args)`` in a greenlet of this node's loop and return its value.

        Directly when called from the loop thread; from any other thread it
        waits at most ``timeout`` seconds (``fn``'s exception is raised here).

        Raises:
            NodeStopped: The node is not running.
            CallTimeout: The loop did not run ``fn`` to its end within ``timeout``.
        """
        self._check_running(nested=True)
        return self._run(fn, *args, timeout=timeout)

    def _binding(
        self, op: str, source: ActorProxy, target: Any, kind: str, timeout: float | None = None
    ) -> None:
        self._check_running()
        address = self._layer.address(target)
        if address is not None:
            spec = list(address)
        elif kind == "direct" and op != "unbind":
            raise TypeError("a direct binding needs an actor proxy as its target")
        else:
            spec = ["", self._layer.type_name(target), ""]
        self._ctrl(
            source.node_id,
            op,
            {"source": source.id, "target": spec, "kind": kind},
            self._layer.timeout_of(None) if timeout is None else timeout,
        )

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.id} {self._life.state}>"


def _stop_at_exit() -> None:
    """A program that ends without stop() (a script, a REPL left with Ctrl-D)
    leaves gracefully instead of like a crash; bounded, so the exit never hangs."""
    for node in list(_live):
        node.stop(timeout=_EXIT_DRAIN)


def _disown_after_fork() -> None:
    for node in list(_live):
        node._forked()
    _live.clear()


atexit.register(_stop_at_exit)
os.register_at_fork(after_in_child=_disown_after_fork)


def _log_failed_spawn(type_name: str, node: str, result: AsyncResult) -> None:
    if not result.failed():
        return
    error = result.get(propagate=False)
    if isinstance(error, CallTimeout):
        # No answer is not a failure: a node working through many spawns may
        # have started it after the caller stopped waiting (or dropped it, late).
        log.warning(
            "zcell: a nowait spawn of %s on node %s got no answer in time; it may have "
            "started: spawn with a longer timeout=, or without nowait to know",
            type_name,
            node,
        )
    else:
        log.error("zcell: a nowait spawn of %s on node %s failed: %s", type_name, node, error)
