"""The dashboard's web side: pages, the JSON API (Flower's shape), actions,
server-sent events and ``/metrics``, as a Bottle app.

Every handler runs as a greenlet of the dashboard's gevent hub (the main
thread's; see `zcell.dashboard.Dashboard`); calls to the mesh wait on the node's
flags, which yield to that hub, so one slow node never stalls the other pages.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import bottle
import gevent

from ..errors import ZcellError
from . import metrics

if TYPE_CHECKING:
    from ..tasks import App
    from .board import Board

__all__ = ["STATIC", "make_app"]

#: The vendored front-end files (plain JS, CSS, no build step).
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: Seconds between two looks for a change to push to the page.
PUSH_EVERY = 0.25
#: Seconds between two keep-alive comments on an idle event stream.
KEEPALIVE = 15.0
#: Seconds an action waits for the node(s) to answer.
ACTION_TIMEOUT = 2.0
#: Tasks ``/api/tasks`` lists without a ``limit``.
DEFAULT_LIMIT = 1000
#: The single page's routes (the page's script draws the view the path names).
PAGES = ("/workers", "/tasks", "/task/<uuid>", "/actors")


def make_app(board: Board, app: App, basic_auth: str | None = None) -> bottle.Bottle:
    """The WSGI app serving ``board``; actions go through ``app`` (its control,
    ``send_task``). With ``basic_auth`` ("user:password") every route asks for it."""
    web = bottle.Bottle()
    if basic_auth:
        web.install(_auth_plugin(basic_auth))
    _pages(web)
    _api(web, board)
    _actions(web, board, app)
    return web


def _auth_plugin(basic_auth: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A plugin refusing any request without the right credentials (401)."""
    user, _, password = basic_auth.partition(":")

    def plugin(callback: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = bottle.request.auth or ("", "")
            ok_user = hmac.compare_digest(str(given[0]).encode(), user.encode())
            ok_password = hmac.compare_digest(str(given[1] or "").encode(), password.encode())
            if not (ok_user and ok_password):
                headers = {"WWW-Authenticate": 'Basic realm="zcell dashboard"'}
                raise bottle.HTTPError(401, "401 Unauthorized: wrong user or password", **headers)
            return callback(*args, **kwargs)

        return wrapper

    return plugin


def _pages(web: bottle.Bottle) -> None:
    def index() -> Any:
        return bottle.static_file("index.html", root=STATIC)

    web.route("/", "GET", lambda: bottle.redirect("/workers"))
    for path in PAGES:
        web.route(path, "GET", index)
    web.route("/static/<path:path>", "GET", lambda path: bottle.static_file(path, root=STATIC))


def _api(web: bottle.Bottle, board: Board) -> None:
    def tasks() -> dict[str, Any]:
        q = bottle.request.query
        limit = q.get("limit") or str(DEFAULT_LIMIT)
        if not limit.isdigit():
            raise bottle.HTTPError(400, "limit must be a whole number")
        return board.tasks(
            state=q.get("state") or None,
            name=q.get("name") or q.get("taskname") or None,
            worker=q.get("worker") or q.get("workername") or None,
            limit=int(limit),
        )

    def task_info(uuid: str) -> dict[str, Any]:
        task = board.task(uuid)
        if task is None:
            raise bottle.HTTPError(404, f"Unknown task '{uuid}' (or forgotten: see --max-tasks)")
        return task

    def metrics_text() -> str:
        bottle.response.content_type = "text/plain; version=0.0.4; charset=utf-8"
        return metrics.render(board)

    web.route("/api/workers", "GET", board.workers)
    web.route("/api/tasks", "GET", tasks)
    web.route("/api/task/info/<uuid>", "GET", task_info)
    web.route("/api/actors", "GET", lambda: {"actors": board.actor_rows()})
    web.route("/api/summary", "GET", board.summary)
    web.route("/api/events", "GET", lambda: _stream(board))
    web.route("/metrics", "GET", metrics_text)


def _stream(board: Board) -> Iterator[str]:
    """Server-sent events: the board's summary each time it changed (checked
    every ``PUSH_EVERY`` s), so the page updates without a reload."""
    bottle.response.content_type = "text/event-stream"
    bottle.response.set_header("Cache-Control", "no-cache")
    bottle.response.set_header("X-Accel-Buffering", "no")

    def chunks() -> Iterator[str]:
        yield "retry: 1000\n\n"
        last, quiet = -1, 0.0
        while True:
            if board.version != last:
                last, quiet = board.version, 0.0
                yield f"data: {json.dumps(board.summary())}\n\n"
            elif quiet >= KEEPALIVE:
                quiet = 0.0
                yield ": keep-alive\n\n"
            gevent.sleep(PUSH_EVERY)
            quiet += PUSH_EVERY

    return chunks()


def _actions(web: bottle.Bottle, board: Board, app: App) -> None:
    def revoke(uuid: str) -> dict[str, Any]:
        terminate = bottle.request.query.get("terminate", "").lower() in ("1", "true", "yes")
        _guard(lambda: app.control.revoke(uuid, terminate=terminate))
        return {"message": f"Revoked '{uuid}'" + (" (terminated)" if terminate else "")}

    def apply(name: str) -> dict[str, Any]:
        body = _json_body()
        options = body.get("options") or {}
        if not isinstance(options, dict) or not isinstance(body.get("kwargs") or {}, dict):
            raise bottle.HTTPError(400, "kwargs and options must be JSON objects")
        result = _guard(
            lambda: app.send_task(name, body.get("args") or [], body.get("kwargs") or {}, **options)
        )
        return {"task-id": result.id, "state": "PENDING"}

    def worker_op(op: str, arguments: Callable[[], dict[str, Any]]) -> Callable[[str], Any]:
        def run(name: str) -> dict[str, Any]:
            if name not in {m["name"] for m in board.node.nodes()}:
                raise bottle.HTTPError(404, f"Unknown worker '{name}' (not in the mesh now)")
            args = arguments()
            replies = _guard(lambda: app.control.broadcast(op, args, [name], True, ACTION_TIMEOUT))
            return _reply(name, op, replies)

        return run

    def queue() -> dict[str, Any]:
        name = bottle.request.query.get("queue", "")
        if not name:
            raise bottle.HTTPError(400, "give the queue: ?queue=NAME")
        return {"queue": name}

    def count() -> dict[str, Any]:
        n = bottle.request.query.get("n", "1")
        if not n.isdigit():
            raise bottle.HTTPError(400, "n must be a whole number")
        return {"n": int(n)}

    web.route("/api/task/revoke/<uuid>", "POST", revoke)
    web.route("/api/task/async-apply/<name>", "POST", apply)
    web.route("/api/worker/shutdown/<name>", "POST", worker_op("shutdown", dict))
    web.route("/api/worker/pool/grow/<name>", "POST", worker_op("pool_grow", count))
    web.route("/api/worker/pool/shrink/<name>", "POST", worker_op("pool_shrink", count))
    web.route("/api/worker/queue/add-consumer/<name>", "POST", worker_op("add_consumer", queue))
    web.route(
        "/api/worker/queue/cancel-consumer/<name>", "POST", worker_op("cancel_consumer", queue)
    )


def _json_body() -> dict[str, Any]:
    raw = bottle.request.body.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bottle.HTTPError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise bottle.HTTPError(400, 'the body must be a JSON object: {"args", "kwargs", "options"}')
    return body


def _guard(action: Callable[[], Any]) -> Any:
    """Run an action; a zcell error or a bad option is a 400 that says why."""
    try:
        return action()
    except (ZcellError, TypeError, ValueError) as exc:
        raise bottle.HTTPError(400, f"{type(exc).__name__}: {exc}") from exc


def _reply(name: str, op: str, replies: Any) -> dict[str, Any]:
    """A worker's answer to a control action, or a 503 saying it did not answer."""
    if replies is None or name in replies.missing:
        raise bottle.HTTPError(503, f"'{name}' did not answer {op} in {ACTION_TIMEOUT:g}s")
    if name in replies.errors:
        raise bottle.HTTPError(400, f"{name}: {replies.errors[name]}")
    reply = replies[name]
    if isinstance(reply, dict) and "error" in reply:
        raise bottle.HTTPError(400, f"{name}: {reply['error']}")
    return {"message": f"{op} sent to '{name}'", "reply": reply}
