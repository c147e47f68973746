"""Celery's "Next Steps" project on zcell: ``cd examples && zcell worker -A proj``."""
