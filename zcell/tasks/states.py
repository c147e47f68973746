"""Task states, with Celery's names."""

from __future__ import annotations

__all__ = [
    "FAILURE",
    "PENDING",
    "READY_STATES",
    "RECEIVED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
]

PENDING = "PENDING"  # unknown, or waiting at its submitter for a worker
RECEIVED = "RECEIVED"  # a worker holds it (reserved, or held for its ETA)
STARTED = "STARTED"  # running (reported only with track_started)
RETRY = "RETRY"  # failed and will run again
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"  # revoked, expired, or terminated

#: The final states: the outcome is in.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
