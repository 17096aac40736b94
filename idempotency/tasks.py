"""Forgets idempotency records once they can no longer be replayed."""

import datetime

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from idempotency.models import IdempotencyRecord


@shared_task(name="idempotency.prune_records")
def prune_records() -> int:
    cutoff = timezone.now() - datetime.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
