"""Celery's face on the mesh: apps, tasks, results (see docs/tasks.md).

``App`` and the errors are re-exported by ``zcell``; this package is the task
layer, above ``zcell.actors`` and the mesh, below the command line.
"""

from .errors import (
    MaxRetriesExceededError,
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

__all__ = [
    "MaxRetriesExceededError",
    "NotRegistered",
    "Retry",
    "SettingLocked",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskPendingFull",
    "TaskRevokedError",
    "TaskTimeout",
    "TimeLimitExceeded",
    "UnknownSetting",
    "WorkerLostError",
]
