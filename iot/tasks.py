"""Celery tasks of the IoT platform: one service call each, retries declared on the decorator."""

from __future__ import annotations

import datetime

from celery import shared_task
from django.db import InterfaceError, OperationalError

from iot import trials

TRANSIENT = (OperationalError, InterfaceError)


@shared_task(name="iot.sweep_premium_trials", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def sweep_premium_trials(now: str | None = None) -> dict:
    """Reminders, the end and deletions of Premium trials. `now` (ISO 8601) is for tests that freeze the clock."""
    return trials.premium_trials_sweep(now=datetime.datetime.fromisoformat(now) if now else None)
