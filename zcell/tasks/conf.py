"""``app.conf``: Celery's setting names, with zcell's defaults, and nothing else.

A typo must not pass silently, so an unknown name raises ``UnknownSetting``
naming the closest valid one. The mesh keys (``cluster``, ``peers``,
``discovery``, ``host``, ``secret``) say which mesh the app's node joins; they
are refused (``SettingLocked``) while that node runs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import did_you_mean
from .errors import NoBrokerNeeded, SettingLocked, UnknownSetting

__all__ = ["MESH_KEYS", "Settings", "warn_ignored"]

#: The settings that choose the app's mesh (also ``App`` keyword arguments).
MESH_KEYS = ("cluster", "peers", "discovery", "host", "secret")

#: Accepted for Celery compatibility and ignored (with one warning).
_IGNORED = ("broker", "backend", "broker_url", "result_backend")

DEFAULTS: dict[str, Any] = {
    "task_default_queue": "celery",
    "task_routes": None,
    "result_expires": 86400.0,
    "result_max_records": 100_000,
    "task_acks_late": False,
    "task_time_limit": None,
    "task_soft_time_limit": None,
    "task_default_rate_limit": None,
    "task_track_started": False,
    "task_ignore_result": False,
    "task_send_sent_event": False,  # the submitter publishes task-sent
    "worker_send_task_events": False,  # as `zcell worker -E`
    # Celery's default: the number of CPUs. Tasks run in greenlets, so I/O-bound
    # work can take far more (-c 100); CPU-bound work wants --processes.
    "worker_concurrency": os.cpu_count() or 1,
    "worker_prefetch_multiplier": 4,
    "beat_schedule": {},
    "beat_quorum": None,  # candidates a leader must see to send; None: a majority
    "beat_max_catchup": 300.0,  # seconds a new leader looks back for missed ticks
    "timezone": "UTC",
    "task_pending_max": 100_000,
    "task_pending_wait": 10.0,
    "task_max_redeliveries": 3,
    "cluster": "zcell",
    "peers": [],
    "discovery": "mdns",
    "host": "127.0.0.1",
    "secret": None,
}


def warn_ignored(name: str) -> None:
    """The one warning for ``broker=``/``backend=``: zcell needs neither."""
    warnings.warn(
        f"zcell ignores {name}=: tasks go straight from the submitter to a worker over "
        "the mesh, and results come back the same way; no broker or result backend is "
        "needed (remove the argument to silence this warning)",
        NoBrokerNeeded,
        stacklevel=4,
    )


class Settings:
    """The app's configuration: ``conf.x``, ``conf["x"]``, ``conf.update(...)``.

    Args:
        locked: Called before a mesh key changes; returns True while the app's
            node runs (the change is then refused).
    """

    def __init__(self, locked: Callable[[], bool] = lambda: False) -> None:
        object.__setattr__(self, "_values", dict(DEFAULTS))
        object.__setattr__(self, "_locked", locked)
        object.__setattr__(self, "_warned", False)

    # -- reading ------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> Any:
        values: dict[str, Any] = self._values
        if name not in values:
            raise self._unknown(name)
        return values[name]

    def live(self) -> Mapping[str, Any]:
        """Every setting by name: the hot paths read this (a method call a
        setting was a share of ``delay()``). The same dict for the app's life,
        changed in place by ``update``: keep it, read it, never write it."""
        values: dict[str, Any] = self._values
        return values

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def get(self, name: str, default: Any = None) -> Any:
        """The setting's value, or ``default`` for a name that is no setting."""
        return self._values.get(name, default)

    # -- writing ------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, name: str, value: Any) -> None:
        if name in _IGNORED:
            self.ignore(name)
            return
        if name not in self._values:
            raise self._unknown(name)
        if name in MESH_KEYS and self._locked():
            raise SettingLocked(
                f"cannot change {name!r} while the app's node runs: call app.close() "
                "first; the next use starts a node with the new settings"
            )
        if name == "peers":
            value = [str(p) for p in (value or ())]
        self._values[name] = value

    def update(self, mapping: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Set several settings at once (each checked as ``conf[name] = value``)."""
        for name, value in dict(mapping or {}, **kwargs).items():
            self[name] = value

    def ignore(self, name: str) -> None:
        """Accept a broker/backend setting, warning once per app that it is ignored."""
        if not self._warned:
            object.__setattr__(self, "_warned", True)
            warn_ignored(name)

    def _unknown(self, name: str) -> UnknownSetting:
        return UnknownSetting(
            f"no setting {name!r}{did_you_mean(name, self._values)}; the settings are "
            "Celery's names (see docs/tasks.md)"
        )

    def __repr__(self) -> str:
        return f"<Settings {self._values!r}>"
