"""The live apps of this process, for signatures made from a task name alone.

``zcell.signature("proj.tasks.add").delay()`` needs an app to send with, as in
Celery (its "current app"): the one that registered the name, or the only one.
Held weakly: an app nobody holds is gone from here too.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import App

__all__ = ["app_for", "register_app"]

_apps: weakref.WeakSet[App] = weakref.WeakSet()


def register_app(app: App) -> None:
    """Known from now on (``App.__init__`` calls it)."""
    _apps.add(app)


def app_for(names: list[str]) -> App:
    """The app that registered the first of ``names`` (or the only live app).

    Raises:
        TypeError: No app (or several, none with that task) to send it with.
    """
    apps = list(_apps)
    for name in names:
        for app in apps:
            if name in app.tasks:
                return app
    if len(apps) == 1:
        return apps[0]
    raise TypeError(
        f"no app to send {names[:1]} with: {len(apps)} apps live and none registered it; "
        "make the signature with app.signature(name, ...) or signature(name, app=app)"
    )
