"""The hosting side of a node: hosted actors, a greenlet per message, the outbox.

Every request runs in its own greenlet, so a handler that blocks on another
actor (or on its own actor) parks only itself. ``concurrency`` bounds how many
handlers run at once, but a request whose call chain already holds a slot here
is never held back, so the bound cannot bring deadlock back. Replies never
reach this module: the node's reader completes them inline.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent import GreenletExit
from gevent.event import Event
from greenlet import getcurrent, greenlet

from .._wire import (
    DECLINED,
    ERROR,
    F_EMIT,
    F_NOWAIT,
    F_THROW,
    OK,
    R_CHAIN,
    R_FLAGS,
    R_ID,
    R_KWARGS,
    R_METHOD,
    R_ORIGIN,
    R_SEEN,
    R_SRC,
    R_TARGET,
    R_TTL,
    REQ,
    SCATTER,
    ZERROR,
)
from ..errors import NoNodeForType, NoSuchActor, NoSuchMethod, error_wire
from .actor import Actor, MessageContext, Next, _State, handler_table, new_state
from .proxy import ActorProxy

if TYPE_CHECKING:
    from .._mesh.node import Node
    from .._mesh.plug import MeshLinks
    from ..control.registry import ControlRegistry

log = logging.getLogger(__name__)

__all__ = ["HandlerKilled", "Host"]

_MAX_IDLE_WORKERS = 256  # parked workers kept for reuse
_QUEUE_HIGH = 10_000  # requests held back by the concurrency bound: pause reading
_QUEUE_LOW = 2_000  # ... and resume below this
_STOPPED_KEPT = 10_000  # recently killed ids remembered, to answer ActorStopped


class HandlerKilled(GreenletExit):  # type: ignore[misc]  # gevent is untyped: GreenletExit is Any
    """Raised inside a handler whose actor is killed (or whose node stops)."""


class Hosted:
    """Book-keeping for one hosted actor."""

    __slots__ = ("actor", "state", "bindings", "greenlets", "handlers", "handled")

    def __init__(self, actor: Actor, state: Any) -> None:
        self.actor = actor
        self.state = state
        self.bindings: list[tuple[str, list[str]]] = []  # (kind, [id, type, node])
        self.greenlets: set[Any] = set()  # each with ``zcell_job``: (method, started)
        self.handled = 0  # messages taken by a handler (inspect: ``actors``)
        self.handlers = handler_table(type(state))


class Host:
    """Runs requests on the actors a node hosts."""

    def __init__(self, node: Node, links: MeshLinks) -> None:
        self.node = node  # its public API, which the actors see too
        self._mesh = links  # the rest of what hosting needs from the node
        self.actors: dict[str, Hosted] = {}
        # Indexes, so that neither a scatter nor an actor gone from the mesh walks
        # every actor hosted here: type -> its actors here; and the id of an
        # actor another one here forwards its emits to (a direct binding) -> those.
        self._of_type: dict[str, dict[str, None]] = {}
        self._bound_to: dict[str, set[str]] = {}
        self.in_flight = 0
        self.queue: collections.deque[tuple[list[Any], float | None, str]] = collections.deque()
        self._chains: dict[int, int] = {}
        self._stopped: dict[str, None] = {}  # recently killed ids, to answer ActorStopped
        self._runnable: collections.deque[tuple[list[Any], float | None, str]] = collections.deque()
        self._idle: list[Any] = []  # parked worker greenlets
        self._waking = False  # a worker is scheduled and has not started yet
        self._drained: Event | None = None
        self._hub: Any = None  # set by the node once its loop runs (attach)
        #: Told of each actor started ("+") or stopped ("-") here: (sign, id, type)
        #: (the monitor publishes actor-spawned / actor-stopped events).
        self.on_change: Callable[[str, str, str], None] | None = None

    def attach(self, hub: Any) -> None:
        """The node's loop runs: handlers run (and wake workers) on this hub."""
        self._hub = hub

    # ------------------------------------------------------------------ admission

    def request(self, msg: list[Any]) -> None:
        ttl = msg[R_TTL]
        deadline = None if ttl is None else time.monotonic() + ttl / 1000
        self._admit(msg, deadline, msg[R_TARGET])

    def scatter(self, msg: list[Any]) -> None:
        ttl = msg[R_TTL]
        deadline = None if ttl is None else time.monotonic() + ttl / 1000
        for actor_id in list(self._of_type.get(msg[R_TARGET], ())):
            self._admit(msg, deadline, actor_id)

    def _admit(self, msg: list[Any], deadline: float | None, actor_id: str) -> None:
        chain = msg[R_CHAIN]
        if self.in_flight < self.node.concurrency or chain in self._chains:
            self._start(msg, deadline, actor_id)
        else:
            self.queue.append((msg, deadline, actor_id))

    def _start(self, msg: list[Any], deadline: float | None, actor_id: str) -> None:
        self.in_flight += 1
        chain = msg[R_CHAIN]
        self._chains[chain] = self._chains.get(chain, 0) + 1
        self._runnable.append((msg, deadline, actor_id))
        if not self._waking:
            self._wake_worker()

    def _wake_worker(self) -> None:
        """Schedule one more worker: a parked one, else a new one.

        While jobs wait there is always exactly one worker on its way, so a job
        whose handler blocks never holds up the next one, and a burst costs one
        wake-up rather than one per message.
        """
        self._waking = True
        if self._idle:
            self._hub.loop.run_callback(self._idle.pop().switch)
        else:
            self._hub.loop.run_callback(greenlet(self._worker, parent=self._hub).switch)

    def _worker(self) -> None:
        """Run admitted requests one at a time; park when there are none."""
        runnable, idle, me = self._runnable, self._idle, getcurrent()
        while True:
            self._waking = False  # this worker has arrived
            while runnable:
                job = runnable.popleft()
                if runnable and not self._waking:
                    self._wake_worker()  # a spare, in case this handler blocks
                try:
                    self._run(*job)
                except BaseException:
                    # Never let a failure escape into the hub (it would end the loop).
                    log.exception("zcell: request processing failed")
            # Out of work: the replies coalesced meanwhile leave now, not after
            # whatever else the loop runs before it blocks.
            self.node.flush_replies()
            if len(idle) >= _MAX_IDLE_WORKERS:
                return
            idle.append(me)
            self._hub.switch()

    def _done(self, chain: int) -> None:
        self.in_flight -= 1
        n = self._chains[chain] - 1
        if n:
            self._chains[chain] = n
        else:
            del self._chains[chain]
        queue = self.queue
        while queue and self.in_flight < self.node.concurrency:
            self._start(*queue.popleft())
        if self._drained is not None and len(queue) <= _QUEUE_LOW:
            self._drained.set()
            self._drained = None

    def run_admitted(self) -> None:
        """(The inbox reader) let the admitted requests run now, if any wait.

        Called before the reader checks its socket for more: their replies are
        sent first, so one check of the socket covers both (see ``recv_loop``).
        """
        if self._runnable:
            gevent.sleep(0)

    def backlogged(self) -> bool:
        """Too many requests wait for a slot: the inbox reader should pause."""
        return len(self.queue) > _QUEUE_HIGH

    def wait_for_room(self) -> None:
        """Called by the inbox reader: pause while too many requests wait for a slot."""
        if self.backlogged():
            if self._drained is None:
                self._drained = Event()
            self._drained.wait(1.0)

    # ------------------------------------------------------------------ running

    def _run(self, msg: list[Any], deadline: float | None, actor_id: str) -> None:
        node = self.node
        try:
            if deadline is not None and time.monotonic() > deadline:
                # The caller has given up: running it now would be a surprise.
                node.stats["dropped_expired"] += 1
                return
            if msg[R_FLAGS] & F_EMIT:
                self._outbox(msg)
            else:
                self._handle(msg, deadline, actor_id)
        finally:
            self._done(msg[R_CHAIN])

    def _handle(self, msg: list[Any], deadline: float | None, actor_id: str) -> None:
        node = self.node
        flags = msg[R_FLAGS]
        nowait = flags & F_NOWAIT
        is_scatter = msg[1] == SCATTER

        hosted = self.actors.get(actor_id)
        if hosted is None:
            if actor_id in self._stopped:
                self._answer(
                    msg, actor_id, ZERROR, ["ActorStopped", f"actor {actor_id} was stopped"]
                )
            elif not is_scatter:
                self._answer(
                    msg,
                    actor_id,
                    ZERROR,
                    ["NoSuchActor", f"no actor {actor_id} on node {node.name}"],
                )
            return
        g = getcurrent()
        g.zcell_ctx = MessageContext(hosted.actor, msg[R_ORIGIN], deadline, msg[R_CHAIN])
        method = msg[R_METHOD]
        g.zcell_job = (method, time.time())  # inspect: ``active``, with its runtime
        hosted.greenlets.add(g)
        hosted.handled += 1
        try:
            if method in hosted.handlers:
                value = getattr(hosted.state, method)(**msg[R_KWARGS])
            elif hasattr(hosted.state, "default_receive"):
                value = hosted.state.default_receive(method, msg[R_KWARGS])
            else:
                # Answered here, not raised: a NoSuchMethod raised by a nested
                # call inside a handler is that handler's error (a RemoteError).
                self._answer(
                    msg,
                    actor_id,
                    ZERROR,
                    [
                        "NoSuchMethod",
                        f"{hosted.actor.name} has no handler {method!r}; handlers: "
                        f"{sorted(hosted.handlers)}",
                    ],
                )
                return
        except HandlerKilled:
            self._answer(
                msg,
                actor_id,
                ZERROR,
                ["ActorStopped", f"actor {actor_id} stopped while handling {method}"],
            )
        except Next:
            if is_scatter:
                self._answer(msg, actor_id, DECLINED, None)
            elif flags & F_THROW:
                self._throw_on(msg, hosted)
            else:
                self._answer(
                    msg,
                    actor_id,
                    ZERROR,
                    ["NoSuchActor", f"actor {actor_id} declined {method} (Next)"],
                )
        except NoSuchMethod as exc:
            if _raised_by(exc, "default_receive"):  # it declines the name itself
                self._answer(msg, actor_id, ZERROR, ["NoSuchMethod", str(exc)])
            else:  # a nested call's: this handler's error
                self._failed(msg, actor_id, hosted, exc)
        except BaseException as exc:
            # Any BaseException (SystemExit, KeyboardInterrupt, GreenletExit...)
            # fails this message only: escaping, it would end the node's loop.
            self._failed(msg, actor_id, hosted, exc)
        else:
            if not nowait:
                self._answer(msg, actor_id, OK, value)
        finally:
            hosted.greenlets.discard(g)
            g.zcell_ctx = None  # the worker greenlet is reused

    def _failed(self, msg: list[Any], actor_id: str, hosted: Hosted, exc: BaseException) -> None:
        """A handler raised: count it, log it if nobody waits, answer ERROR."""
        node = self.node
        node.stats["errors"] += 1
        if msg[R_FLAGS] & F_NOWAIT:
            node.stats["nowait_failures"] += 1
            log.error(
                "zcell: %s.%s (fire and forget) failed",
                hosted.actor.name,
                msg[R_METHOD],
                exc_info=exc,
            )
        self._answer(msg, actor_id, ERROR, self.error_info(exc))

    def _answer(self, msg: list[Any], actor_id: str, status: int, value: Any) -> None:
        """Reply to a request (not to a fire-and-forget one)."""
        if msg[R_FLAGS] & F_NOWAIT:
            return
        self.node.reply(
            msg[R_SRC],
            msg[R_ID],
            status,
            value,
            msg[R_TTL],
            actor_id if msg[1] == SCATTER else None,
            msg[13] if len(msg) > 13 else None,  # a direct reply's connection
        )

    @staticmethod
    def error_info(exc: BaseException) -> list[Any]:
        """The wire form of a handler's error (docs/protocol.md, status ERROR)."""
        return error_wire(exc)

    def _throw_on(self, msg: list[Any], hosted: Hosted) -> None:
        """A throw was declined here: pass it to an actor of the type that has not seen it."""
        node = self.node
        seen = list(msg[R_SEEN] or [])
        if hosted.actor.id not in seen:
            seen.append(hosted.actor.id)
        picked = node.directory.next_of_type(hosted.actor.name, exclude=set(seen))
        if picked is None:
            if not msg[R_FLAGS] & F_NOWAIT:
                node.reply(
                    msg[R_SRC],
                    msg[R_ID],
                    ZERROR,
                    [
                        "NoSuchActor",
                        f"every actor of type {hosted.actor.name} declined {msg[R_METHOD]} (Next)",
                    ],
                    msg[R_TTL],
                )
            return
        actor_id, node_id = picked
        seen.append(actor_id)
        forwarded = list(msg)
        forwarded[R_TARGET] = actor_id
        forwarded[R_SEEN] = seen
        try:
            self._mesh.send(node_id, forwarded, time.monotonic() + 5.0)
        except Exception as exc:
            log.warning("zcell: could not pass a declined throw on: %s", exc)

    def _outbox(self, msg: list[Any]) -> None:
        """Deliver an emitted message to the source actor's bindings, or to itself."""
        node = self.node
        hosted = self.actors.get(msg[R_TARGET])
        if hosted is None:
            log.warning("zcell: emit to unknown actor %s dropped", msg[R_TARGET])
            node.stats["nowait_failures"] += 1
            return
        source = hosted.actor.ref
        method, kwargs = msg[R_METHOD], msg[R_KWARGS]
        if not hosted.bindings:
            direct = list(msg)
            direct[1] = REQ
            direct[R_FLAGS] = F_NOWAIT
            direct[R_ORIGIN] = source
            self._handle(direct, None, hosted.actor.id)
            return
        for kind, (target_id, type_name, node_id) in list(hosted.bindings):
            target = ActorProxy(node, target_id or "", type_name, node_id or "")
            mode = {"direct": "send", "round-robin": "throw", "scatter": "scatter"}[kind]
            try:
                self._mesh.deliver(mode, target, method, kwargs, {"nowait": True}, origin=source)
            except Exception as exc:
                node.stats["nowait_failures"] += 1
                log.warning(
                    "zcell: outbox of %s could not deliver to %s: %s",
                    hosted.actor.name,
                    type_name,
                    exc,
                )

    # ------------------------------------------------------------------ control

    def add_control_ops(self, registry: ControlRegistry) -> None:
        """Offer the actor operations to the other nodes (see zcell/control)."""
        registry.add(self._spawn, "spawn")
        registry.add(self._kill_op, "kill")
        registry.add(self._bind_op, "bind")
        registry.add(self._unbind_op, "unbind")
        registry.add(self._snapshot_op, "snapshot")

    def _kill_op(self, args: dict[str, Any], src: str) -> None:
        """Stop a hosted actor: {"id": actor id}."""
        self.kill(_str(args, "id"))

    def _bind_op(self, args: dict[str, Any], src: str) -> None:
        """Forward an actor's emits: {"source": id, "kind": kind, "target": [id, type, node]}."""
        hosted, target = self._binding_args(args)
        binding = (_str(args, "kind"), target)
        if binding not in hosted.bindings:
            hosted.bindings.append(binding)
            if binding[0] == "direct" and target[0]:
                self._bound_to.setdefault(target[0], set()).add(hosted.actor.id)

    def _unbind_op(self, args: dict[str, Any], src: str) -> None:
        """Stop forwarding an actor's emits to a target (by id, or by type if no id)."""
        hosted, target = self._binding_args(args)
        kept: list[tuple[str, list[str]]] = []
        dropped: list[tuple[str, list[str]]] = []
        for b in hosted.bindings:
            matches = b[1][0] == target[0] if target[0] else b[1][1] == target[1]
            (dropped if matches else kept).append(b)
        hosted.bindings = kept
        self._unbound(hosted.actor.id, dropped)

    def _binding_args(self, args: dict[str, Any]) -> tuple[Hosted, list[str]]:
        """The hosted source actor and the [id, type, node] target of a (un)bind."""
        hosted = self.actors.get(_str(args, "source"))
        if hosted is None:
            raise NoSuchActor(f"no actor {args.get('source')} on node {self.node.name}")
        target = args.get("target")
        if not (
            isinstance(target, list)
            and len(target) == 3
            and all(isinstance(x, str) for x in target)
        ):
            raise NoSuchActor("malformed binding target")
        return hosted, target

    def _snapshot_op(self, args: dict[str, Any], src: str) -> list[Any]:
        """This node's directory sequence, hosted actors and actor types (for a joiner)."""
        return [self._mesh.directory_seq(), self.snapshot(), sorted(self._mesh.types)]

    def _spawn(self, args: dict[str, Any], src: str) -> list[str]:
        """Start an actor of a registered type: {"type": name, "id": id, "kwargs": dict}."""
        node = self.node
        type_name = _str(args, "type")
        actor_id = _str(args, "id")
        kwargs = args.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise NoSuchActor("spawn kwargs must be a dict")
        cls = self._mesh.types.get(type_name)
        if cls is None:
            log.warning(
                "zcell: refused to spawn unregistered type %r (asked by %s)", type_name, src
            )
            raise NoNodeForType(
                f"node {node.name} does not host actor type {type_name!r} (it hosts "
                f"{sorted(self._mesh.types) or 'nothing'}); start a node with "
                f"`zcell node -A {type_name.rsplit('.', 1)[0]}`"
            )
        if actor_id in self.actors:
            raise NoSuchActor(f"actor id {actor_id} is already in use")
        ref = ActorProxy(node, actor_id, type_name, node.id, cls)
        actor = cls(ref, node)
        state = new_state(cls.state, actor, node, kwargs)
        self.actors[actor_id] = Hosted(actor, state)
        self._of_type.setdefault(actor.name, {})[actor_id] = None
        self._announce("+", actor_id, type_name)
        on_start = getattr(state, "on_start", None)
        if on_start is None or getattr(type(state), "on_start", None) is _State.on_start:
            on_start = getattr(state, "on_agent_ready", None)
        if on_start is not None:
            gevent.spawn(self._hook, actor, on_start, "on_start")
        return [actor_id, type_name]

    def _announce(self, sign: str, actor_id: str, type_name: str) -> None:
        """Tell the mesh (and ``on_change``) that an actor started or stopped here."""
        self._mesh.announce(sign, actor_id, type_name)
        if self.on_change is not None:
            self.on_change(sign, actor_id, type_name)

    @staticmethod
    def _hook(actor: Actor, fn: Any, what: str) -> None:
        try:
            fn()
        except BaseException:  # even SystemExit: it would end the node's loop
            log.exception("zcell: %s of %s failed", what, actor)

    def _kill_handlers(self, hosted: Hosted) -> None:
        """Raise HandlerKilled in the handlers running for this actor (from the hub, later)."""

        def throw(g: Any) -> None:
            if g in hosted.greenlets:  # still inside this actor's handler
                g.throw(HandlerKilled)

        for g in list(hosted.greenlets):
            self._hub.loop.run_callback(throw, g)

    def _stop_hook(self, hosted: Hosted) -> None:
        on_stop = getattr(hosted.state, "on_stop", None)
        if on_stop is not None:
            self._hook(hosted.actor, on_stop, "on_stop")

    def kill(self, actor_id: str, reason: str = "killed") -> None:
        hosted = self.actors.pop(actor_id, None)
        if hosted is None:
            raise NoSuchActor(f"no actor {actor_id} on node {self.node.name}")
        self._unindex(actor_id, hosted)
        self._stopped[actor_id] = None
        if len(self._stopped) > _STOPPED_KEPT:
            del self._stopped[next(iter(self._stopped))]
        self._announce("-", actor_id, hosted.actor.name)
        self._kill_handlers(hosted)
        self._stop_hook(hosted)

    def snapshot(self) -> list[list[str]]:
        return [[actor_id, h.actor.name] for actor_id, h in self.actors.items()]

    def forget_binding_target(self, actor_id: str) -> None:
        """Drop direct bindings to an actor that is gone."""
        for source in self._bound_to.pop(actor_id, ()):
            hosted = self.actors.get(source)
            if hosted is not None:
                hosted.bindings = [
                    b for b in hosted.bindings if not (b[0] == "direct" and b[1][0] == actor_id)
                ]

    def _unindex(self, actor_id: str, hosted: Hosted) -> None:
        """An actor no longer hosted here leaves the indexes."""
        of_type = self._of_type.get(hosted.actor.name)
        if of_type is not None:
            of_type.pop(actor_id, None)
            if not of_type:
                del self._of_type[hosted.actor.name]
        self._unbound(actor_id, hosted.bindings)

    def _unbound(self, source: str, bindings: list[tuple[str, list[str]]]) -> None:
        """``source`` no longer forwards to the targets of these direct ``bindings``."""
        for kind, (target_id, _, _) in bindings:
            sources = self._bound_to.get(target_id) if kind == "direct" else None
            if sources is not None:
                sources.discard(source)
                if not sources:
                    del self._bound_to[target_id]

    def drain(self, timeout: float) -> None:
        """Stop: let in-flight handlers finish until ``timeout``, fail the rest, run on_stop."""
        deadline = time.monotonic() + timeout
        while (self.in_flight or self.queue) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        while self.queue:
            msg, _, actor_id = self.queue.popleft()
            if not msg[R_FLAGS] & F_NOWAIT:
                self.node.reply(
                    msg[R_SRC],
                    msg[R_ID],
                    ZERROR,
                    ["ActorStopped", f"node {self.node.name} stopped"],
                    1000,
                )
        for actor_id in list(self.actors):
            hosted = self.actors.pop(actor_id)
            self._unindex(actor_id, hosted)
            self._stopped[actor_id] = None
            self._kill_handlers(hosted)
            self._stop_hook(hosted)
        gevent.sleep(0)  # let killed handlers send their ActorStopped replies

    def end_workers(self) -> None:
        """End the parked workers, in the loop thread before it ends: a greenlet
        still suspended when its thread is gone is never freed (nor the node)."""
        idle, self._idle = self._idle, []
        for worker in idle:
            self._hub.loop.run_callback(worker.throw, GreenletExit)
        gevent.sleep(0)


def _raised_by(exc: BaseException, function: str) -> bool:
    """Whether ``exc`` was raised in the body of a function of that name (not deeper)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name == function


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise NoSuchActor(f"control call lacks {key!r}")
    return value
