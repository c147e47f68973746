"""Schedules of periodic tasks (Celery's ``celery.schedules``): see docs/beat.md."""

from .tasks.schedules import Schedule, crontab, schedule

__all__ = ["Schedule", "crontab", "schedule"]
