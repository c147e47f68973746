"""Which queue a task goes to: ``queue=`` > ``task_routes`` > the task's queue >
``task_default_queue`` (Celery's order).

``task_routes`` is a dict (or a list of dicts, tried in order) mapping exact task
names or glob patterns (``"proj.tasks.*"``) to ``{"queue": name}`` (or to a
queue name as a plain string); exact names win over patterns within one dict.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["QUEUE_ACTOR_PREFIX", "check_queue", "queue_actor_name", "route"]

#: A worker that consumes queue Q hosts one actor of type ``zcell.queue.Q``.
QUEUE_ACTOR_PREFIX = "zcell.queue."

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")

#: Queue names found valid lately (every task's queue is checked: a set lookup
#: costs a tenth of the match). Cleared when full: names may be made per tenant.
_checked: set[str] = set()
_CHECKED_MAX = 1024


def check_queue(name: object) -> str:
    """A valid queue name, or ``ValueError`` saying what a queue name may hold."""
    if type(name) is str and name in _checked:
        return name
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        raise ValueError(f"bad queue name {name!r}: use 1-200 letters, digits and _ . : @ -")
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()  # threads share it: a set's own ops are atomic
    _checked.add(name)
    return name


def queue_actor_name(queue: str) -> str:
    """The actor type name of the consumers of ``queue``."""
    return QUEUE_ACTOR_PREFIX + check_queue(queue)


def route(
    name: str,
    *,
    queue: str | None,
    routes: Any,
    task_queue: str | None,
    default: str,
) -> str:
    """The queue for task ``name`` (see the module doc for the order)."""
    if queue:
        return check_queue(queue)
    routed = _from_routes(name, routes)
    if routed:
        return check_queue(routed)
    return check_queue(task_queue or default)


def _from_routes(name: str, routes: Any) -> str | None:
    if not routes:
        return None
    tables = routes if isinstance(routes, list | tuple) else [routes]
    for table in tables:
        if not isinstance(table, Mapping):
            raise TypeError(f"task_routes entries must be dicts, not {type(table).__name__}")
        hit = table.get(name)
        if hit is None:
            hit = next((v for k, v in table.items() if fnmatch.fnmatchcase(name, k)), None)
        if hit is not None:
            return hit if isinstance(hit, str) else hit.get("queue")
    return None
