"""Deliveries whose retry was lost (a killed worker, a flushed Redis) are re-enqueued by the sweep, once.

The last test lets a real Celery worker on the real Redis pick the re-enqueued delivery up and post it to a real
receiver on loopback.
"""

import datetime as dt
import threading
import time
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from notifications import services as notification_services
from notifications import tasks
from notifications.models import Delivery
from tests.alerts.test_tasks import Receiver

pytestmark = pytest.mark.django_db


def email_channel(organization):
    channel, _ = notification_services.channel_create(
        organization=organization, actor=None, name="ops", type="email", config={"addresses": ["ops@example.com"]}
    )
    return channel


def delivery(channel, *, status, attempts=0, next_attempt_at=None, created_at=None, completed_at=None):
    return Delivery.objects.create(
        organization=channel.organization,
        channel=channel,
        kind="test",
        payload={"event": "test", "summary": "hello"},
        status=status,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        created_at=created_at or timezone.now(),
        completed_at=completed_at,
    )


@pytest.fixture
def enqueued():
    with mock.patch.object(tasks.deliver_notification, "delay") as delay:
        yield delay


def test_stale_retrying_delivery_is_reenqueued_once_when_swept_twice(
    owner_org, enqueued, django_capture_on_commit_callbacks
):
    now = timezone.now()
    stale = delivery(
        email_channel(owner_org.organization),
        status="retrying",
        attempts=2,
        next_attempt_at=now - dt.timedelta(minutes=10),
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.deliveries_resume(now=now) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.deliveries_resume(now=now + dt.timedelta(minutes=1)) == 0
    enqueued.assert_called_once_with(stale.pk, 2)  # with the attempt count it was re-sent at
    stale.refresh_from_db()
    assert stale.next_attempt_at == now and stale.status == "retrying" and stale.attempts == 2
    # Still stuck a grace later (the re-sent message was lost too): sent again.
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.deliveries_resume(now=now + dt.timedelta(minutes=6)) == 1
    assert enqueued.call_count == 2


def test_only_deliveries_stuck_past_the_grace_are_reenqueued(owner_org, enqueued, django_capture_on_commit_callbacks):
    now = timezone.now()
    channel = email_channel(owner_org.organization)
    old = now - dt.timedelta(minutes=10)
    never_sent = delivery(channel, status="pending", created_at=old)
    lost_retry = delivery(channel, status="retrying", attempts=1, next_attempt_at=old)
    delivery(channel, status="pending", created_at=now - dt.timedelta(minutes=1))  # its message is on its way
    delivery(channel, status="retrying", attempts=1, next_attempt_at=now - dt.timedelta(minutes=2))  # just due
    delivery(channel, status="retrying", attempts=1, next_attempt_at=now + dt.timedelta(minutes=30))  # waiting
    delivery(channel, status="succeeded", attempts=1, created_at=old)
    delivery(channel, status="failed", attempts=6, created_at=old)
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.deliveries_resume(now=now) == 2
    assert sorted(c.args[0] for c in enqueued.call_args_list) == sorted([never_sent.pk, lost_retry.pk])


def test_a_late_message_and_its_resent_copy_make_one_attempt(owner_org, settings):
    # The sweep re-sent a retry that was only late: both messages carry attempts=1, and only one goes through.
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    receiver = Receiver(status=500)
    try:
        channel, _ = notification_services.channel_create(
            organization=owner_org.organization, actor=None, name="hook", type="webhook", config={"url": receiver.url}
        )
        stale = delivery(
            channel, status="retrying", attempts=1, next_attempt_at=timezone.now() - dt.timedelta(minutes=10)
        )
        first, delay = notification_services.delivery_attempt(delivery_id=stale.pk, expected_attempts=1)
        assert (first.status, first.attempts, len(receiver.requests)) == ("retrying", 2, 1) and delay
        second, delay = notification_services.delivery_attempt(delivery_id=stale.pk, expected_attempts=1)
        assert (second.status, second.attempts, len(receiver.requests), delay) == ("retrying", 2, 1, None)
        # The retry of the attempt that went through carries attempts=2 and is made.
        receiver.status = 200
        third, _ = notification_services.delivery_attempt(delivery_id=stale.pk, expected_attempts=2)
        assert (third.status, len(receiver.requests)) == ("succeeded", 2)
        assert list(third.attempt_rows.values_list("number", "ok")) == [(2, False), (3, True)]
    finally:
        receiver.stop()


def test_nothing_is_enqueued_when_the_sweep_rolls_back(owner_org, enqueued, django_capture_on_commit_callbacks):
    from django.db import transaction

    now = timezone.now()
    stale = delivery(email_channel(owner_org.organization), status="pending", created_at=now - dt.timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            notification_services.deliveries_resume(now=now)
            raise RuntimeError("the caller failed")
    enqueued.assert_not_called()
    stale.refresh_from_db()
    assert stale.next_attempt_at is None


def test_beat_runs_the_sweep_every_five_minutes_on_the_notifications_queue(settings):
    from celery.schedules import crontab

    from controlplane.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["alerts.resume_deliveries"]
    assert entry["task"] == tasks.resume_deliveries.name == "alerts.resume_deliveries"
    assert entry["schedule"] == crontab(minute="*/5")
    assert app.amqp.router.route({}, tasks.resume_deliveries.name)["queue"].name == "notifications"


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_reenqueue_a_delivery_once(owner_org, enqueued):
    now = timezone.now()
    channel = email_channel(owner_org.organization)
    stale = [
        delivery(channel, status="retrying", attempts=1, next_attempt_at=now - dt.timedelta(minutes=10))
        for _ in range(20)
    ]
    barrier = threading.Barrier(4)
    counts, errors = [], []

    def sweep():
        try:
            barrier.wait()
            counts.append(notification_services.deliveries_resume(now=now))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sum(counts) == 20
    assert sorted(c.args[0] for c in enqueued.call_args_list) == sorted(d.pk for d in stale)


@pytest.fixture
def worker(monkeypatch, settings, request):
    """A real worker that may post to loopback receivers (it reads the flag from its environment)."""
    monkeypatch.setenv("ALLOW_PRIVATE_WEBHOOKS", "true")
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    return request.getfixturevalue("celery_worker")


@pytest.mark.django_db(transaction=True)
def test_real_worker_delivers_a_lost_retry_once_swept(worker, owner_org):
    receiver = Receiver()
    try:
        channel, _ = notification_services.channel_create(
            organization=owner_org.organization, actor=None, name="hook", type="webhook", config={"url": receiver.url}
        )
        # As a worker killed between two attempts leaves it: one failed attempt, the retry's message gone.
        lost = delivery(
            channel, status="retrying", attempts=1, next_attempt_at=timezone.now() - dt.timedelta(minutes=20)
        )
        assert notification_services.deliveries_resume() == 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lost.refresh_from_db()
            if lost.status == "succeeded":
                break
            time.sleep(0.1)
        assert lost.status == "succeeded", worker.logs()
        assert lost.attempts == 2
        assert [b["event"] for b in receiver.bodies()] == ["test"]
        assert notification_services.deliveries_resume() == 0
    finally:
        receiver.stop()
