"""The Celery beat scheduler: django-celery-beat's DatabaseScheduler plus a liveness file touched on every tick.

Beat has no control channel a probe could ping; its loop calls tick() at least every max_interval (5 s for the
database scheduler), so a file older than a few minutes means the loop hangs. Nothing here changes what is scheduled.
"""

from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

from controlplane import liveness


class LivenessDatabaseScheduler(DatabaseScheduler):  # type: ignore[misc]  # django-celery-beat ships no types
    def tick(self, *args: Any, **kwargs: Any) -> float:
        liveness.touch(settings.BEAT_LIVENESS_FILE)
        interval: float = super().tick(*args, **kwargs)
        return interval
