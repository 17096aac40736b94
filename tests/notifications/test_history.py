"""Finished deliveries and e-mail notices are forgotten after NOTIFICATION_HISTORY_DAYS; ones still owed never are."""

import datetime as dt

import pytest
from django.utils import timezone

from notifications import services as notification_services
from notifications import tasks
from notifications.models import Delivery, DeliveryAttempt, EmailNotice
from tests.notifications.test_delivery_resume import delivery as email_delivery
from tests.notifications.test_delivery_resume import email_channel

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 6, 30, 12, 0, tzinfo=dt.UTC)


def finished_delivery(channel, *, status, completed_at, attempts=1):
    started = completed_at - dt.timedelta(hours=1) if completed_at else NOW - dt.timedelta(days=400)
    delivery = email_delivery(channel, status=status, attempts=attempts, created_at=started, completed_at=completed_at)
    for number in range(1, attempts + 1):
        DeliveryAttempt.objects.create(delivery=delivery, number=number, ok=status == "succeeded")
    return delivery


def notice(*, status, completed_at, created_days_ago=400):
    return EmailNotice.objects.create(
        subject="Invoice overdue",
        body="Please pay.",
        recipients=["billing@example.com"],
        status=status,
        created_at=NOW - dt.timedelta(days=created_days_ago),
        completed_at=completed_at,
    )


def test_finished_history_older_than_the_days_is_forgotten_and_owed_or_recent_history_kept(owner_org, settings):
    settings.NOTIFICATION_HISTORY_DAYS = 30
    channel = email_channel(owner_org.organization)
    cutoff = NOW - dt.timedelta(days=30)
    old_succeeded = finished_delivery(channel, status="succeeded", completed_at=cutoff - dt.timedelta(seconds=1))
    old_failed = finished_delivery(channel, status="failed", completed_at=NOW - dt.timedelta(days=200), attempts=7)
    recent = finished_delivery(channel, status="succeeded", completed_at=cutoff + dt.timedelta(seconds=1))
    # Owed, however old: a retry still to come, or a first try whose message was lost (the sweep sends it again).
    retrying = finished_delivery(channel, status="retrying", completed_at=None, attempts=3)
    pending = finished_delivery(channel, status="pending", completed_at=None, attempts=0)
    old_sent = notice(status="sent", completed_at=NOW - dt.timedelta(days=31))
    old_failed_notice = notice(status="failed", completed_at=NOW - dt.timedelta(days=90))
    recent_notice = notice(status="sent", completed_at=NOW - dt.timedelta(days=29))
    pending_notice = notice(status="pending", completed_at=None)

    assert notification_services.notifications_prune(now=NOW) == (2, 2)

    assert set(Delivery.objects.values_list("pk", flat=True)) == {recent.pk, retrying.pk, pending.pk}
    assert not DeliveryAttempt.objects.filter(delivery_id__in=[old_succeeded.pk, old_failed.pk]).exists()
    assert DeliveryAttempt.objects.filter(delivery=retrying).count() == 3  # a kept delivery keeps its attempts
    assert set(EmailNotice.objects.values_list("pk", flat=True)) == {recent_notice.pk, pending_notice.pk}
    assert not EmailNotice.objects.filter(pk__in=[old_sent.pk, old_failed_notice.pk]).exists()
    # Run again: nothing more to forget.
    assert notification_services.notifications_prune(now=NOW) == (0, 0)


def test_a_history_larger_than_one_batch_is_forgotten_whole(owner_org, settings, monkeypatch):
    settings.NOTIFICATION_HISTORY_DAYS = 90
    monkeypatch.setattr(notification_services, "NOTIFICATIONS_PRUNE_BATCH", 3)
    channel = email_channel(owner_org.organization)
    old = NOW - dt.timedelta(days=91)
    for _ in range(7):
        finished_delivery(channel, status="succeeded", completed_at=old, attempts=2)
        notice(status="sent", completed_at=old)
    kept = finished_delivery(channel, status="succeeded", completed_at=NOW)

    assert notification_services.notifications_prune(now=NOW) == (7, 7)
    assert list(Delivery.objects.values_list("pk", flat=True)) == [kept.pk]
    assert DeliveryAttempt.objects.count() == 1 and not EmailNotice.objects.exists()


def test_the_channels_delivery_list_no_longer_shows_a_forgotten_delivery(owner_org, key_client, settings):
    settings.NOTIFICATION_HISTORY_DAYS = 90
    channel = email_channel(owner_org.organization)
    now = timezone.now()
    forgotten = finished_delivery(channel, status="failed", completed_at=now - dt.timedelta(days=91))
    kept = finished_delivery(channel, status="succeeded", completed_at=now - dt.timedelta(days=89))
    url = f"/api/v1/organizations/{owner_org.id}/notification-channels/{channel.public_id}/deliveries"
    client = key_client(owner_org.owner_secret)
    assert {d["id"] for d in client.get(url).json()["results"]} == {forgotten.public_id, kept.public_id}

    tasks.prune_notifications()

    assert [d["id"] for d in client.get(url).json()["results"]] == [kept.public_id]


def test_beat_forgets_old_history_every_hour_on_the_notifications_queue(settings):
    from celery.schedules import crontab

    from controlplane.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["alerts.prune_notifications"]
    assert entry["task"] == tasks.prune_notifications.name == "alerts.prune_notifications"
    assert entry["schedule"] == crontab(minute=47)
    assert app.amqp.router.route({}, tasks.prune_notifications.name)["queue"].name == "notifications"
