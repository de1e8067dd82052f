"""Celery tasks that drive generation: ``celery -A tasks worker``."""

from __future__ import annotations

from bridge.settings import Settings
from tasks.celery_app import create_celery

celery_app = create_celery(Settings())

__all__ = ["celery_app"]
