"""Celery tasks of the IoT platform: ids in, one service call each, retries declared on the decorator."""

from __future__ import annotations

import datetime

from celery import shared_task
from django.db import InterfaceError, OperationalError

from deployments.drivers.base import TemporaryDriverError
from iot import trials

TRANSIENT = (OperationalError, InterfaceError)


@shared_task(name="iot.sweep_premium_trials", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def sweep_premium_trials(now: str | None = None) -> dict:
    """Reminders, the end and deletions of Premium trials. `now` (ISO 8601) is for tests that freeze the clock."""
    return trials.premium_trials_sweep(now=datetime.datetime.fromisoformat(now) if now else None)


@shared_task(
    name="iot.sync_codecs_emqx",
    ignore_result=True,
    autoretry_for=(TemporaryDriverError,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=20,
    soft_time_limit=60,
    time_limit=90,
)
def sync_codecs_emqx(deployment_id: int) -> None:
    from iot import codecs

    codecs.codecs_push_emqx(deployment_id=deployment_id)


@shared_task(name="iot.sweep_codecs_emqx", ignore_result=True)
def sweep_codecs_emqx() -> int:
    """Push every EMQX-hosted Premium deployment's codec rules again (a push does nothing when EMQX agrees)."""
    from iot import codecs

    ids = codecs.emqx_deployments_with_codecs()
    for deployment_id in ids:
        sync_codecs_emqx.delay(deployment_id)
    return len(ids)
