"""Celery's face on the mesh: apps, tasks, results (see docs/tasks.md).

``App`` and the errors are re-exported by ``zcell``; this package is the task
layer, above ``zcell.actors`` and the mesh, below the command line.
"""

from .app import App
from .canvas import Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from .errors import (
    ChordError,
    MaxRetriesExceededError,
    NoBrokerNeeded,
    NotRegistered,
    Retry,
    SettingLocked,
    SoftTimeLimitExceeded,
    TaskError,
    TaskPendingFull,
    TaskRevokedError,
    TaskTimeout,
    TimeLimitExceeded,
    UnknownSetting,
    WorkerLostError,
)
from .groupresult import GroupResult
from .result import TaskResult
from .task import Task
from .worker import Worker

__all__ = [
    "App",
    "ChordError",
    "GroupResult",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "signature",
    "xmap",
    "xstarmap",
    "MaxRetriesExceededError",
    "NoBrokerNeeded",
    "NotRegistered",
    "Retry",
    "SettingLocked",
    "SoftTimeLimitExceeded",
    "TaskError",
    "Task",
    "TaskPendingFull",
    "TaskResult",
    "TaskRevokedError",
    "TaskTimeout",
    "TimeLimitExceeded",
    "UnknownSetting",
    "Worker",
    "WorkerLostError",
]
