"""Reads of notifications: an organization's channels, a channel's deliveries with every attempt.

Every read takes its tenant (or the object that carries it) explicitly and owns its select_related and
prefetch_related. Nothing here writes, and nothing here decrypts a credential.
"""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from notifications.models import Delivery, DeliveryAttempt, NotificationChannel
from organizations.models import Organization


def channel_list(*, organization: Organization) -> QuerySet[NotificationChannel]:
    return NotificationChannel.objects.filter(organization=organization)


def delivery_list(*, channel: NotificationChannel) -> QuerySet[Delivery]:
    return (
        Delivery.objects.filter(channel=channel)
        .select_related("channel")
        .prefetch_related(Prefetch("attempt_rows", queryset=DeliveryAttempt.objects.order_by("number")))
    )
