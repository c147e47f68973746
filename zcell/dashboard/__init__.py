"""A live web dashboard of the mesh, in the spirit of Flower: ``zcell dashboard``.

`Dashboard` is a mesh member that subscribes to events, asks the nodes (stats,
queues, actors) once a second and serves pages, a JSON API in Flower's shape,
server-sent events and Prometheus ``/metrics``. See docs/dashboard.md.
"""

from .board import Board
from .server import Dashboard

__all__ = ["Board", "Dashboard"]
