"""zcell: a brokerless actor mesh for Python over ZeroMQ.

Nodes find each other (mDNS or static peers) and host actors; any program can
spawn actors anywhere and talk to them with ``send``, ``throw``, ``scatter`` and
``emit``. Every message runs in its own greenlet. See README.md, and the API
reference (docs/reference.md, built from these docstrings: ``mkdocs serve``).
"""

from ._mesh.result import AsyncResult, first_reply
from .actors.actor import Actor, Next
from .actors.proxy import ActorProxy, forward, stop_forward
from .errors import (
    ActorStopped,
    CallTimeout,
    IncompatibleProtocol,
    NameTaken,
    NodeDown,
    NodeStopped,
    NoNodeForType,
    NoReplyError,
    NoSuchActor,
    NoSuchMethod,
    ProtocolError,
    RemoteError,
    SerializationError,
    ZcellError,
)
from .node import Node
from .tasks import (
    App,
    ChordError,
    GroupResult,
    MaxRetriesExceededError,
    NoBrokerNeeded,
    NotRegistered,
    Retry,
    SettingLocked,
    SoftTimeLimitExceeded,
    TaskError,
    TaskPendingFull,
    TaskResult,
    TaskRevokedError,
    TaskTimeout,
    TimeLimitExceeded,
    UnknownSetting,
    WorkerLostError,
    chain,
    chord,
    chunks,
    group,
    signature,
)

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorProxy",
    "ActorStopped",
    "App",
    "AsyncResult",
    "CallTimeout",
    "ChordError",
    "GroupResult",
    "IncompatibleProtocol",
    "MaxRetriesExceededError",
    "NameTaken",
    "Next",
    "NoBrokerNeeded",
    "NoNodeForType",
    "NoReplyError",
    "NoSuchActor",
    "NoSuchMethod",
    "Node",
    "NodeDown",
    "NodeStopped",
    "NotRegistered",
    "ProtocolError",
    "RemoteError",
    "Retry",
    "SerializationError",
    "SettingLocked",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskPendingFull",
    "TaskResult",
    "TaskRevokedError",
    "TaskTimeout",
    "TimeLimitExceeded",
    "UnknownSetting",
    "WorkerLostError",
    "ZcellError",
    "chain",
    "chord",
    "chunks",
    "first_reply",
    "forward",
    "group",
    "signature",
    "stop_forward",
]
