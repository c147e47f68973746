"""The canvas: signatures and the work-flows made of them (docs/canvas.md).

A ``Signature`` is plain data in Celery's shape, a dict with ``task``, ``args``,
``kwargs``, ``options``, ``subtask_type`` and ``immutable``, so it travels as an
argument and inside task messages unchanged (msgpack), and comes back as the
right class through ``Signature.from_dict``. One class per primitive:
``chain``, ``group``, ``chord``, ``xmap``, ``xstarmap``, ``chunks``.

Applying a work-flow decides every task id up front (``freeze``), so the
submitter holds a result for each task at once, including the ones that
workers will send later: those results are *watched* (the executing worker
pushes their outcome to the submitter's agent, named in the message). What
runs after a task travels with it: a chain's rest in the message's ``chain``
field, a chord header member's report address in its ``chord`` field
(``followup.py`` acts on both on the worker; ``chord.py`` is the coordinator).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard, cast

from .apps import app_for
from .message import new_id
from .request import current_request

if TYPE_CHECKING:
    from .app import App
    from .groupresult import GroupResult
    from .result import TaskResult
    from .runtime import Runtime
    from .task import Task

    Result = TaskResult | GroupResult

__all__ = [
    "MAP_TASK",
    "STARMAP_TASK",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "signature",
    "xmap",
    "xstarmap",
]


#: The builtin tasks map/starmap/chunks run as (``builtins.py``: every worker has them).
MAP_TASK = "zcell.map"
STARMAP_TASK = "zcell.starmap"


def _is_task(value: Any) -> TypeGuard[Task]:
    """A ``Task`` (duck-typed: this module sits below ``task.py``)."""
    return callable(getattr(value, "s", None)) and hasattr(value, "app")


class Signature(dict[str, Any]):
    """One task invocation as data: ``add.s(2, 2)``, ``add.si(2)``,
    ``zcell.signature("proj.tasks.add", args=(2, 2), countdown=10)``.

    Partial arguments given when it is called are prepended to its own
    (unless it is immutable); keyword arguments are merged, the new ones winning;
    options are merged too.
    """

    TYPES: ClassVar[dict[str, type[Signature]]] = {}
    subtask: ClassVar[str | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.subtask:
            Signature.TYPES[cls.subtask] = cls

    def __init__(
        self,
        task: Task | str | dict[str, Any] | None = None,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        subtask_type: str | None = None,
        immutable: bool = False,
        app: App | None = None,
        **ex: Any,
    ) -> None:
        if isinstance(task, dict):  # a signature as data (from the wire, or a copy)
            data = _copy(task)  # a new map (a Signature's items copied as a dict's)
            app = app or getattr(task, "_app", None)
        else:
            if _is_task(task):
                name: str | None = task.name
                app = app or task.app
            else:  # a task name (or None)
                name = cast("str | None", task)
            data = {
                "task": name,
                "args": list(args or ()),
                "kwargs": dict(kwargs or {}),
                "options": dict(options or {}, **ex),
                "subtask_type": subtask_type or self.subtask,
                "immutable": bool(immutable),
            }
        super().__init__(data)
        self._app = app

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: App | None = None) -> Signature:
        """The signature ``data`` describes, as its primitive's class."""
        if not isinstance(data, dict) or not isinstance(data.get("task"), str | type(None)):
            raise TypeError(f"not a signature: {data!r}")
        kind = Signature.TYPES.get(data.get("subtask_type") or "", Signature)
        return kind(data, app=app)

    # -- the fields ------------------------------------------------------------

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> list[Any]:
        return self["args"]  # type: ignore[no-any-return]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self["kwargs"]  # type: ignore[no-any-return]

    @property
    def options(self) -> dict[str, Any]:
        return self["options"]  # type: ignore[no-any-return]

    @property
    def subtask_type(self) -> str | None:
        return self.get("subtask_type")

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def id(self) -> str | None:
        """The task id, once decided (``freeze``)."""
        return self.options.get("task_id")

    @property
    def app(self) -> App:
        """The app that sends it: the task's, the running task's, or the one
        that registered its name (Celery's current app)."""
        request = current_request()
        owner_app = getattr(request.owner, "app", None) if request is not None else None
        return self._app or owner_app or app_for(self._names())

    def _names(self) -> list[str]:
        return [self.task]

    # -- building ----------------------------------------------------------------

    def clone(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature:
        """A copy, with partial ``args`` prepended, ``kwargs`` and options merged."""
        new = Signature.from_dict(self, self._app)
        if args or kwargs or opts:  # else the copy is the clone (a group's members)
            new._merge_into(tuple(args or ()), dict(kwargs or {}), opts)
        return new

    def _merge_into(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], opts: dict[str, Any]
    ) -> None:
        if not self.immutable:
            self["args"] = [*args, *self.args]
            self["kwargs"] = {**self.kwargs, **kwargs}
        self.options.update(opts)

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set options (and ``immutable``) on this signature; returns it."""
        if immutable is not None:
            self["immutable"] = bool(immutable)
        self.options.update(options)
        return self

    def link(self, callback: Signature) -> Signature:
        """Send ``callback`` with this task's result when it succeeds."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def on_error(self, errback: Signature) -> Signature:
        """Send ``errback`` with this task's id when it fails."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if isinstance(other, chain):
            return chain(self, *other.tasks)
        if isinstance(other, Signature):
            return chain(self, other)
        return NotImplemented

    # -- ids and results (the submitter's side) --------------------------------

    def freeze(self, root_id: str | None = None) -> str:
        """Decide the task id (and the canvas's root id) now; returns the id."""
        opts = self.options
        if "task_id" not in opts:
            opts["task_id"] = new_id()
        if root_id is not None:
            opts.setdefault("root_id", root_id)
        return str(opts["task_id"])

    def leaves(self) -> list[Signature]:
        """The task signatures inside (itself for a plain one)."""
        return [self]

    def last(self) -> Signature:
        """The signature whose outcome is this one's (a chain's last, a chord's body)."""
        return self

    def watch_by(self, agent: Any) -> None:
        """Have the task(s) push their outcome to ``agent`` (the submitter's)."""
        for leaf in self.leaves():
            leaf.options.setdefault("watchers", [agent])

    def result(self, app: App, runtime: Runtime) -> Result:
        """The result object of a frozen signature that someone else sends."""
        from .result import TaskResult

        task_id = self.freeze()
        entry = runtime.node.call_in_loop(runtime.dispatcher.watch, task_id, self.task)
        return TaskResult(task_id, app, entry)

    # -- calling ---------------------------------------------------------------

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send it, with partial ``args``/``kwargs`` and options merged."""
        app = self.app
        return self.apply(app, app._runtime(), tuple(args or ()), dict(kwargs or {}), options)

    def delay(self, *args: Any, **kwargs: Any) -> Result:
        """``apply_async`` with star arguments."""
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, now (no message), with the partial arguments."""
        sig = self.clone(args, kwargs)
        return self.app.tasks[self.task](*sig.args, **sig.kwargs)

    def apply(
        self,
        app: App,
        runtime: Runtime,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Result:
        """Send it through ``runtime`` (the submitter's, or a worker's that
        carries a work-flow on); the canvas's own options win over the call's."""
        # Nothing to merge: no copy (send_task copies the arguments, and the
        # options are merged into a new dict below).
        sig = self.clone(args, kwargs) if args or kwargs else self
        opts = {**_inherited(options), **sig.options}
        if options.get("root_id"):
            opts.setdefault("root_id", options["root_id"])
        return app.send_task(sig.task, sig.args, sig.kwargs, _runtime=runtime, **opts)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"


def _copy(value: Any) -> Any:
    """A copy of the data's maps and lists; other values (actor proxies) shared.

    Plain values are taken as they are, without a call each: a group's members
    are copied a few times on their way out, and the calls were most of it."""
    if isinstance(value, dict):
        return {k: v if type(v) in _SHARED else _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [v if type(v) in _SHARED else _copy(v) for v in value]
    return value


#: Values a copy shares (immutable, never a map or list).
_SHARED = frozenset({str, int, float, bool, bytes, type(None)})


def _inherited(options: dict[str, Any]) -> dict[str, Any]:
    """What a composite passes on to its members from the call's options."""
    return {k: v for k, v in options.items() if k not in ("task_id", "root_id")}


def _root(options: dict[str, Any]) -> str | None:
    """The root id of a canvas being applied: given, or the running task's root
    (None: the canvas's first id becomes its root)."""
    if options.get("root_id"):
        return str(options["root_id"])
    request = current_request()
    return request.root_id if request is not None else None


def signature(
    name: Task | str | dict[str, Any],
    args: Iterable[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    app: App | None = None,
    **options: Any,
) -> Signature:
    """A signature of the task ``name`` (this program needs not have its code),
    or the signature a dict describes."""
    if isinstance(name, dict):
        return Signature.from_dict(name, app)
    return Signature(name, args, kwargs, options, app=app)


def maybe_signature(value: Any, app: App | None = None) -> Signature:
    """``value`` as a Signature (a Task becomes its empty signature)."""
    if isinstance(value, Signature):
        return value
    if _is_task(value):
        return value.s()
    return Signature.from_dict(value, app)


class _Composite(Signature):
    """A signature made of signatures (kept in its ``kwargs``, as data)."""

    def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None:
        if len(tasks) == 1 and isinstance(tasks[0], dict):
            super().__init__(tasks[0], app=app)
            return
        flat: list[Any] = []
        for t in tasks:
            is_many = isinstance(t, Iterable) and not isinstance(t, dict | str)
            flat.extend(t if is_many else [t])
        super().__init__(
            "",
            # Copies, as Celery's chain clones its steps: one signature object may
            # appear twice (``[add.s(1)] * 9``) or in two work-flows, and each
            # member gets its own id when frozen.
            kwargs={"tasks": [_owned(maybe_signature(t, app), t) for t in flat]},
            options=options,
            app=app or _first_app(flat),
        )

    @property
    def tasks(self) -> list[Signature]:
        """The member signatures (as their classes)."""
        members = self.kwargs["tasks"]
        for i, t in enumerate(members):
            if not isinstance(t, Signature):
                members[i] = Signature.from_dict(t, self._app)
        return members  # type: ignore[no-any-return]

    def _names(self) -> list[str]:
        return [n for t in self.tasks for n in t._names()]

    def leaves(self) -> list[Signature]:
        return [leaf for t in self.tasks for leaf in t.leaves()]

    def __call__(self, *args: Any, **kwargs: Any) -> Result:
        """Apply it (as Celery does for work-flows: ``chain(...)().get()``)."""
        return self.apply_async(args, kwargs)

    def clone(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature:
        new = Signature.from_dict(self, self._app)
        new.options.update(opts)
        return new


def _owned(sig: Signature, given: Any) -> Signature:
    """``sig`` itself when ``maybe_signature`` made it, else a copy of the caller's."""
    return sig.clone() if sig is given else sig


def _first_app(tasks: list[Any]) -> App | None:
    for t in tasks:
        app = t.app if _is_task(t) else getattr(t, "_app", None)
        if app is not None:
            return app
    return None


class chain(_Composite):  # noqa: N801 - Celery's name
    """``chain(a, b, c)`` = ``a | b | c``: each result is prepended to the next
    task's arguments (unless immutable). The rest travels with each message."""

    subtask = "chain"

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks)
        if isinstance(other, Signature):
            return chain(*self.tasks, other)
        return NotImplemented

    def steps(self) -> list[Signature]:
        """The members with nested chains flattened, and a group followed by
        anything made a chord (Celery's upgrade)."""
        flat: list[Signature] = []
        for t in self.tasks:
            if isinstance(t, chunks):
                t = t.group()
            flat.extend(t.steps() if isinstance(t, chain) else [t])
        out: list[Signature] = []
        for t in flat:
            if out and isinstance(out[-1], group):
                out[-1] = chord(out[-1], t, app=self._app)
            else:
                out.append(t)
        if not out:
            raise ValueError("an empty chain has nothing to run")
        self.kwargs["tasks"] = out  # normalised in place: ids frozen on these stay
        return out

    def freeze(self, root_id: str | None = None) -> str:
        steps = self.steps()
        first = steps[0].freeze(root_id)
        root = root_id or first
        ids = [s.freeze(root) for s in steps]
        self.options.setdefault("task_id", ids[-1])
        return ids[-1]

    def leaves(self) -> list[Signature]:
        return [leaf for t in self.steps() for leaf in t.leaves()]

    def last(self) -> Signature:
        return self.steps()[-1].last()

    def result(self, app: App, runtime: Runtime) -> Result:
        return self._results(app, runtime, self.steps())[-1]

    @staticmethod
    def _results(app: App, runtime: Runtime, steps: list[Signature]) -> list[Result]:
        results = [s.result(app, runtime) for s in steps]
        for before, after in itertools.pairwise(results):
            _root_of(after).parent = before
        return results

    def apply(
        self,
        app: App,
        runtime: Runtime,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Result:
        self.freeze(_root(options))
        steps = self.steps()
        first, rest = steps[0], steps[1:]
        _move_report(options, steps[-1])
        for step in rest:
            step.watch_by(runtime.agent)
        later = self._results(app, runtime, rest) if rest else []
        head = first.apply(app, runtime, args, kwargs, {**options, "chain": list(rest)})
        if later:
            _root_of(later[0]).parent = head
            _follows(runtime, later[-1])
            return later[-1]
        return head


def _follows(runtime: Runtime, last: Result) -> None:
    """Tell the dispatcher which watched step follows which (one task after one
    task), so that a step lost with the worker that was to send it fails instead
    of being waited for (strays.py)."""
    from .result import TaskResult

    pairs: list[tuple[str, str]] = []
    step: Any = last
    while step is not None and step.parent is not None:
        if isinstance(step, TaskResult) and isinstance(step.parent, TaskResult):
            pairs.append((step.id, step.parent.id))
        step = step.parent
    if pairs:
        runtime.node.call_in_loop(runtime.dispatcher.strays.follows, pairs)


def _root_of(result: Result) -> Any:
    """Where a step's ``parent`` goes: past its own parents (a chord's result is
    its body's, whose parent is the header's ``GroupResult``)."""
    while result.parent is not None:
        result = result.parent
    return result


def _move_report(options: dict[str, Any], last: Signature) -> None:
    """A chord header member reports from its last task: move the report there."""
    report = options.pop("chord", None)
    if report is not None:
        for leaf in [last.last()]:
            leaf.options["chord"] = report


class group(_Composite):  # noqa: N801 - Celery's name
    """``group(sigs)``: the members run in parallel; its result is a
    ``GroupResult`` whose ``get()`` lists their results in the members' order."""

    subtask = "group"

    def freeze(self, root_id: str | None = None) -> str:
        gid = super().freeze(root_id)
        for t in self.tasks:
            t.freeze(root_id or self.options.get("root_id") or gid)
        return gid

    def last(self) -> Signature:
        raise TypeError(
            "a group cannot be a chord header member (its result is a list): "
            "make it a chord of its own, or flatten it into the header"
        )

    def result(self, app: App, runtime: Runtime) -> Result:
        from .groupresult import GroupResult

        gid = self.freeze()
        return GroupResult(gid, [t.result(app, runtime) for t in self.tasks], app)

    def apply(
        self,
        app: App,
        runtime: Runtime,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Result:
        from .groupresult import GroupResult

        rest = options.pop("chain", None)
        if rest:  # a group with more after it is a chord (from the wire)
            body, after = maybe_signature(rest[0], app), rest[1:]
            return chord(self, body, app=app).apply(
                app, runtime, args, kwargs, {**options, "chain": after}
            )
        if options.get("chord") is not None:
            self.last()  # raises: a group cannot report as one member
        gid = self.freeze(_root(options))
        root = self.options.get("root_id", gid)
        member_opts = {**_inherited(options), "root_id": root}
        results = [t.apply(app, runtime, args, kwargs, dict(member_opts)) for t in self.tasks]
        return GroupResult(gid, results, app)


class chord(Signature):  # noqa: N801 - Celery's name
    """``chord(header, body)``: the header's members run in parallel; the body
    gets the list of their results once all succeeded (``chord.py``)."""

    subtask = "chord"

    def __init__(
        self,
        header: Any = None,
        body: Any = None,
        app: App | None = None,
        **options: Any,
    ) -> None:
        if isinstance(header, dict) and body is None and header.get("subtask_type") == "chord":
            super().__init__(header, app=app)
            return
        members = header if isinstance(header, group) else group(header, app=app)
        kwargs = {"header": members, "body": maybe_signature(body, app) if body else None}
        super().__init__("", kwargs=kwargs, options=options, app=app or members._app)

    @property
    def header(self) -> group:
        header = self.kwargs["header"]
        if not isinstance(header, group):
            sig = Signature.from_dict(header, self._app)
            header = self.kwargs["header"] = sig if isinstance(sig, group) else group(sig)
        return header

    @property
    def body(self) -> Signature:
        body = self.kwargs["body"]
        if body is None:
            raise TypeError("a chord needs a body: chord(header, body) or chord(header)(body)")
        if not isinstance(body, Signature):
            body = self.kwargs["body"] = Signature.from_dict(body, self._app)
        return body

    def _names(self) -> list[str]:
        return self.header._names() + (self.body._names() if self.kwargs["body"] else [])

    def freeze(self, root_id: str | None = None) -> str:
        cid = self.header.freeze(root_id)
        return self.body.freeze(root_id or self.header.options.get("root_id") or cid)

    def leaves(self) -> list[Signature]:
        return self.header.leaves() + self.body.leaves()

    def last(self) -> Signature:
        return self.body.last()

    def result(self, app: App, runtime: Runtime) -> Result:
        self.freeze()
        header = self.header.result(app, runtime)
        body = self.body.result(app, runtime)
        body.parent = header
        return body

    def __call__(self, *args: Any, **kwargs: Any) -> Result:
        """Apply it; ``chord(header)(body)`` gives the body then."""
        if self.kwargs["body"] is None and len(args) == 1 and isinstance(args[0], dict):
            self.kwargs["body"] = maybe_signature(args[0], self._app)
            return self.apply_async()
        return self.apply_async(args, kwargs)

    def clone(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature:
        new = Signature.from_dict(self, self._app)
        new.options.update(opts)
        return new

    def apply(
        self,
        app: App,
        runtime: Runtime,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Result:
        # The app (above this module) knows the coordinator: chord.py.
        result: Result = app._start_chord(self, runtime, args, kwargs, options)
        return result


class xmap(Signature):  # noqa: N801 - Celery's name
    """``task.map(it)``: one task that runs ``task(item)`` for each item."""

    subtask = "xmap"

    def __init__(self, task: Any = None, it: Iterable[Any] = (), app: App | None = None) -> None:
        if isinstance(task, dict) and task.get("subtask_type") == self.subtask:
            super().__init__(task, app=app)
            return
        sig = maybe_signature(task, app)
        super().__init__(
            self.builtin, args=[dict(sig), [_plain(i) for i in it]], app=app or sig._app
        )
        self["subtask_type"] = self.subtask

    builtin: ClassVar[str] = MAP_TASK

    def _names(self) -> list[str]:
        return [str(self.args[0]["task"])] if self.args else []


class xstarmap(xmap):  # noqa: N801 - Celery's name
    """``task.starmap(it)``: one task that runs ``task(*item)`` for each item."""

    subtask = "xstarmap"
    builtin = STARMAP_TASK


def _plain(item: Any) -> Any:
    return list(item) if isinstance(item, tuple) else item


class chunks(Signature):  # noqa: N801 - Celery's name
    """``task.chunks(it, n)``: the argument tuples in ``it`` split into tasks of
    ``n`` calls each (a group of ``starmap`` tasks; ``.group()`` gives it)."""

    subtask = "chunks"

    def __init__(
        self, task: Any = None, it: Iterable[Any] = (), n: int = 1, app: App | None = None
    ) -> None:
        if isinstance(task, dict) and task.get("subtask_type") == self.subtask:
            super().__init__(task, app=app)
            return
        if int(n) < 1:
            raise ValueError("chunks(it, n) needs n >= 1")
        sig = maybe_signature(task, app)
        kwargs = {"task": dict(sig), "it": [_plain(i) for i in it], "n": int(n)}
        super().__init__(sig.task, kwargs=kwargs, app=app or sig._app)
        self["subtask_type"] = self.subtask

    def group(self) -> group:
        """The group of ``starmap`` tasks, one per chunk of ``n``."""
        task, items, n = self.kwargs["task"], self.kwargs["it"], self.kwargs["n"]
        parts = [items[i : i + n] for i in range(0, len(items), n)]
        return group([xstarmap(task, part, app=self._app) for part in parts], app=self._app)

    def leaves(self) -> list[Signature]:
        return self.group().leaves()

    def __call__(self, *args: Any, **kwargs: Any) -> Result:
        return self.apply_async(args, kwargs)

    def apply(
        self,
        app: App,
        runtime: Runtime,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> Result:
        return self.group().apply(app, runtime, args, kwargs, options)
