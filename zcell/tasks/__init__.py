"""Celery's face on the mesh: apps, tasks, results (see docs/tasks.md).

``App`` and the errors are re-exported by ``zcell``; this package is the task
layer, above ``zcell.actors`` and the mesh, below the command line.
"""

from .app import App
from .errors import (
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
from .result import TaskResult
from .task import Task
from .worker import Worker

__all__ = [
    "App",
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
