"""Seeing and steering a running mesh: inspect, control and events.

Every node gets a `Monitor` (``node.monitor``) that puts the inspect and control
operations on its op registry (``node.control``) and publishes events while
someone subscribes; `Control` is the client side, for a plain actor program
(``Control(node)``) and for the task layer (``app.control``); `EventStream`
receives events and `State` folds them into workers and tasks.
See docs/monitoring.md.
"""

from .client import Control, Inspect, Replies
from .events import EventPublisher, EventStream
from .service import Monitor
from .state import State

__all__ = [
    "Control",
    "EventPublisher",
    "EventStream",
    "Inspect",
    "Monitor",
    "Replies",
    "State",
]
