"""Publishing Celery tasks from service code so that a broker outage never fails, hangs or rolls back a request.

`enqueue_on_commit(task, *args, **kwargs)` publishes after the current transaction commits; `publish(task, …)` does it
now (inside a callback that already runs on commit). A failure to publish is logged and counted, never raised: every
task published this way must have a sweep that finds the work again from the database (the reconcile sweep, the
delivery resume sweep…). This module must never retry by itself or wait longer than the broker timeouts in settings.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

import kombu.exceptions
import redis
from django.conf import settings
from django.db import transaction

from controlplane import metrics
from controlplane.celery import app as celery_app
from controlplane.outage import Breaker

logger = logging.getLogger(__name__)

# What a broker outage raises from `delay`: kombu wraps connection errors in OperationalError; redis-py's own errors
# and socket errors can surface from a half-open connection.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    redis.RedisError,
    ConnectionError,
    TimeoutError,
)


class Publishable(Protocol):
    """A Celery task, as far as publishing needs: its name and `delay`."""

    name: str

    def delay(self, *args: Any, **kwargs: Any) -> Any: ...


broker = Breaker("celery-broker", open_seconds=lambda: float(settings.BROKER_OUTAGE_RETRY_SECONDS))


def publish(task: Publishable, *args: Any, **kwargs: Any) -> bool:
    """Send `task` now; False (logged and counted) when the broker is unreachable. Never raises for a broker outage.

    While the broker is known to be down (a failure in the last BROKER_OUTAGE_RETRY_SECONDS) nothing is attempted, so a
    burst of requests does not each wait out a timeout. Eager mode (tests) runs the task inline: its errors propagate.
    """
    if celery_app.conf.task_always_eager:
        task.delay(*args, **kwargs)
        return True
    if not broker.allow():
        metrics.TASK_PUBLISH_FAILURES.labels(task.name, "broker_down").inc()
        return False
    try:
        task.delay(*args, **kwargs)
    except BROKER_ERRORS as exc:
        metrics.TASK_PUBLISH_FAILURES.labels(task.name, "error").inc()
        if broker.failed():
            metrics.TASK_BROKER_UNREACHABLE.set(1)
            logger.error("celery broker unreachable: %s not published, left to its sweep (%s)", task.name, exc)
        else:
            logger.warning("celery broker still unreachable: %s not published", task.name)
        return False
    if broker.succeeded():
        metrics.TASK_BROKER_UNREACHABLE.set(0)
        logger.warning("celery broker reachable again")
    return True


def enqueue_on_commit(task: Publishable, *args: Any, **kwargs: Any) -> None:
    """Publish `task(*args, **kwargs)` once the current transaction commits (at once outside a transaction); a
    rollback sends nothing, and a broker outage is logged and counted, never raised into the request."""
    transaction.on_commit(functools.partial(publish, task, *args, **kwargs))
