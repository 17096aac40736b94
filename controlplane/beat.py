"""The Celery beat scheduler: django-celery-beat's DatabaseScheduler, plus a liveness file touched on every tick and a
shutdown that a second signal cannot hang.

Beat has no control channel a probe could ping; its loop calls tick() at least every max_interval (5 s for the
database scheduler), so a file older than a few minutes means the loop hangs. Nothing here changes what is scheduled.
"""

from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

from controlplane import liveness


class LivenessDatabaseScheduler(DatabaseScheduler):  # type: ignore[misc]  # django-celery-beat ships no types
    _syncing = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        liveness.touch(settings.BEAT_LIVENESS_FILE)
        interval: float = super().tick(*args, **kwargs)
        return interval

    def sync(self) -> None:
        # Celery's SIGINT and SIGTERM handler writes the schedule, then exits. A second signal (Ctrl-C reaches `make
        # run`'s whole group before its stop sends SIGTERM; Kubernetes may repeat one) ran the handler again inside
        # the first write: on the same psycopg connection, whose lock that write holds, so beat waited for ever. The
        # nested write is skipped; the handler's exit then ends the first one (its entries' last runs are written by
        # the next beat's first sync at the latest).
        if self._syncing:
            return
        self._syncing = True
        try:
            super().sync()
        finally:
            self._syncing = False
