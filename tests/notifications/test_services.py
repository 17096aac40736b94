"""Notification services on real PostgreSQL: delivery attempts and retries, failing channels, platform events, and
the credentials of a destination kept out of what is recorded."""

import datetime as dt

import pytest
from django.utils import timezone

from controlplane.errors import ValidationFailed
from notifications import services as notification_services
from notifications import tasks
from notifications.models import Delivery, DeliveryAttempt, EmailNotice, NotificationChannel, PlatformEvent
from tests.alerts.test_tasks import Receiver, eager, private_webhooks, webhook_channel  # noqa: F401 - fixtures
from tests.mail import send_to_port
from tests.outage import closed_port, redis_unreachable, silent_port

pytestmark = pytest.mark.django_db


def test_delivery_task_retries_with_backoff_countdown_when_receiver_fails(owner_org, private_webhooks, monkeypatch):
    failing = Receiver(status=503)
    try:
        channel, _ = webhook_channel(owner_org.organization, failing.url)
        delivery = Delivery.objects.create(
            organization=owner_org.organization, channel=channel, kind="test", payload={"event": "test"}
        )
        countdowns = []

        def fake_retry(self_, *args, countdown=None, **kwargs):
            countdowns.append(countdown)
            return RuntimeError("retry")

        monkeypatch.setattr(tasks.deliver_notification, "retry", lambda **kw: fake_retry(None, **kw))
        with pytest.raises(RuntimeError):
            tasks.deliver_notification.run(delivery.pk)
        failing.status = 200
        tasks.deliver_notification.run(delivery.pk)
    finally:
        failing.stop()
    delivery.refresh_from_db()
    assert countdowns == [30]
    assert delivery.status == "succeeded"
    assert list(delivery.attempt_rows.values_list("ok", "status_code")) == [(False, 503), (True, 200)]


class Retried(Exception):
    """What the task raises in place of Celery's Retry."""


@pytest.mark.parametrize(
    ("status", "retry_after", "countdown"),
    [
        (429, "900", 900),  # longer than our first gap (30 s): the receiver's wait
        (503, "900", 900),
        (429, "5", 30),  # shorter: our gap
        (429, "soon", 30),  # unreadable: our gap
        (429, "86400", 21600),  # a day: at most our longest gap
        (500, "900", 30),  # a 500's Retry-After asks for nothing (RFC 9110: 503 and 3xx)
    ],
)
def test_delivery_waits_as_long_as_the_receiver_asks_when_it_answers_with_retry_after(
    owner_org, private_webhooks, monkeypatch, status, retry_after, countdown
):
    throttling = Receiver(status=status, headers={"Retry-After": retry_after})
    try:
        channel, _ = webhook_channel(owner_org.organization, throttling.url)
        delivery = Delivery.objects.create(
            organization=owner_org.organization, channel=channel, kind="test", payload={"event": "test"}
        )
        countdowns = []
        monkeypatch.setattr(
            tasks.deliver_notification, "retry", lambda countdown=None, **kw: countdowns.append(countdown) or Retried()
        )
        before = timezone.now()
        with pytest.raises(Retried):
            tasks.deliver_notification.run(delivery.pk)
    finally:
        throttling.stop()
    delivery.refresh_from_db()
    assert countdowns == [countdown]
    assert delivery.status == "retrying"
    waited = (delivery.next_attempt_at - before).total_seconds()
    assert countdown <= waited < countdown + 30
    assert list(delivery.attempt_rows.values_list("ok", "status_code")) == [(False, status)]


def failing_for_a_day(organization) -> NotificationChannel:
    return NotificationChannel.objects.create(
        organization=organization,
        name="dead",
        type="email",
        config={"addresses": ["x@example.com"]},
        failing_since=timezone.now() - dt.timedelta(hours=25),
    )


def test_administrators_get_notice_when_channel_failed_for_a_day(
    owner_org, mailoutbox, django_capture_on_commit_callbacks, eager
):
    channel = failing_for_a_day(owner_org.organization)
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.failing_channels_check() == 1
    assert [m.to for m in mailoutbox] == [[owner_org.owner.email]]
    assert "failing for a day" in mailoutbox[0].subject
    assert PlatformEvent.objects.filter(kind="channel_failing", subject=channel.public_id).count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.failing_channels_check() == 0
    assert len(mailoutbox) == 1


def test_platform_event_emails_administrators_when_no_channel(
    owner_org, mailoutbox, django_capture_on_commit_callbacks, eager
):
    with django_capture_on_commit_callbacks(execute=True):
        notification_services.platform_event_notify(
            organization=owner_org.organization,
            kind="invoice_payment_failed",
            subject="inv_x",
            message="Your card was declined.",
            severity="critical",
        )
    assert [m.to for m in mailoutbox] == [[owner_org.owner.email]]


def test_platform_event_reaches_platform_channels_once_when_dedup_key_repeats(
    owner_org, eager, private_webhooks, django_capture_on_commit_callbacks
):
    receiver = Receiver()
    try:
        webhook_channel(owner_org.organization, receiver.url)
        webhook_channel(owner_org.organization, receiver.url, platform_events=False)
        for _ in range(2):
            with django_capture_on_commit_callbacks(execute=True):
                event = notification_services.platform_event_notify(
                    organization=owner_org.organization,
                    kind="invoice_overdue",
                    subject="inv_1",
                    message="Invoice inv_1 is 14 days overdue.\nPay it to keep your deployments running.",
                    severity="critical",
                    dedup_key="invoice_overdue:inv_1:14",
                )
            if _ == 0:
                assert event is not None and event.kind == "invoice_overdue"
            else:
                assert event is None
    finally:
        receiver.stop()
    [body] = receiver.bodies()  # one channel takes platform events, and the repeat sent nothing
    assert body["event"] == "platform.invoice_overdue" and body["subject"] == "inv_1"
    assert body["summary"] == "Invoice inv_1 is 14 days overdue." and body["severity"] == "critical"
    assert PlatformEvent.objects.filter(organization=owner_org.organization).count() == 1
    assert Delivery.objects.get().kind == "platform"


@pytest.mark.parametrize(
    "kind",
    [
        "invoice_payment_failed",
        "invoice_overdue",
        "deployment_stopped_for_billing",
        "annual_renewal_reminder",
        "vat_number_invalid",
        "premium_trial_reminder",
        "premium_trial_ended",
    ],
)
def test_billing_kinds_are_sent_by_email_when_organization_has_no_channel(
    owner_org, mailoutbox, django_capture_on_commit_callbacks, eager, kind
):
    with django_capture_on_commit_callbacks(execute=True):
        notification_services.platform_event_notify(
            organization=owner_org.organization, kind=kind, subject="acct_1", message=f"About {kind}."
        )
    [mail] = mailoutbox
    assert mail.to == [owner_org.owner.email] and mail.subject == f"[NOTICE] About {kind}."


def test_platform_event_refused_when_kind_or_severity_unknown(owner_org):
    with pytest.raises(ValueError, match="kind"):
        notification_services.platform_event_notify(
            organization=owner_org.organization, kind="bogus", subject="x", message="m"
        )
    with pytest.raises(ValueError, match="severity"):
        notification_services.platform_event_notify(
            organization=owner_org.organization, kind="invoice_overdue", subject="x", message="m", severity="fatal"
        )
    assert not PlatformEvent.objects.exists()


def test_platform_event_is_not_sent_when_callers_transaction_rolls_back(
    owner_org, mailoutbox, django_capture_on_commit_callbacks
):
    from django.db import transaction

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            notification_services.platform_event_notify(
                organization=owner_org.organization, kind="premium_trial_ended", subject="org_x", message="Ended."
            )
            raise RuntimeError("the change it told of failed")
    assert mailoutbox == [] and not PlatformEvent.objects.exists() and not EmailNotice.objects.exists()


def test_transport_error_recorded_without_url_credentials_when_receiver_unreachable(owner_org, private_webhooks):
    port = closed_port()  # a port nobody listens on
    channel, _ = notification_services.channel_create(
        organization=owner_org.organization,
        actor=None,
        name="hook",
        type="webhook",
        config={"url": f"http://bob:pass-word-1@127.0.0.1:{port}/in?token=tok-secret-1&x=1"},
    )
    delivery = Delivery.objects.create(
        organization=owner_org.organization, channel=channel, kind="test", payload={"event": "test"}
    )
    _, delay = notification_services.delivery_attempt(delivery_id=delivery.pk)
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert delay == 30 and attempt.ok is False and attempt.error  # refused connection: retried
    assert "tok-secret-1" not in attempt.error and "pass-word-1" not in attempt.error


def test_email_subject_is_one_line_when_summary_has_control_characters(
    owner_org, mailoutbox, django_capture_on_commit_callbacks
):
    channel, _ = notification_services.channel_create(
        organization=owner_org.organization,
        actor=None,
        name="mail",
        type="email",
        config={"addresses": ["ops@example.com"]},
    )
    delivery = Delivery.objects.create(
        organization=owner_org.organization,
        channel=channel,
        kind="fire",
        payload={"event": "alert.firing", "summary": "rule\rwith\nbreaks\x0bin it"},
    )
    _, delay = notification_services.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delay is None and delivery.status == "succeeded"
    assert mailoutbox[0].subject == "[FIRING] rule with breaks in it"


def test_channel_created_directly_refused_when_name_has_control_characters(owner_org):
    with pytest.raises(ValidationFailed) as refused:
        notification_services.channel_create(
            organization=owner_org.organization,
            actor=None,
            name="ops\r\nBcc: everyone@example.com",
            type="email",
            config={"addresses": ["ops@example.com"]},
        )
    assert [e.field for e in refused.value.errors] == ["name"]
    assert not NotificationChannel.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_change_stands_and_sweep_sends_later_when_redis_is_down_at_commit(owner_org, private_webhooks, settings):
    """A real unreachable broker (a closed port), not a stand-in: the platform event commits, nothing raises to the
    caller, and the resume sweep enqueues the delivery once Redis is back."""
    from controlplane import tasks as publishing
    from controlplane.celery import app

    receiver = Receiver()
    webhook_channel(owner_org.organization, receiver.url)
    with redis_unreachable():
        event = notification_services.platform_event_notify(
            organization=owner_org.organization, kind="invoice_overdue", subject="inv_9", message="Overdue."
        )
        assert publishing.broker.failing  # the publish was tried and failed, and said so
    assert event is not None and PlatformEvent.objects.filter(pk=event.pk).exists()
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("pending", 0)

    app.conf.task_always_eager = True
    try:
        later = timezone.now() + dt.timedelta(minutes=6)
        assert notification_services.deliveries_resume(now=later) == 1
    finally:
        app.conf.task_always_eager = False
        receiver.stop()
    delivery.refresh_from_db()
    assert delivery.status == "succeeded"
    assert [b["event"] for b in receiver.bodies()] == ["platform.invoice_overdue"]


def test_email_notice_is_kept_and_sent_by_the_sweep_when_redis_and_smtp_are_down_at_commit(
    owner_org, settings, django_capture_on_commit_callbacks
):
    """Real unreachable parts (closed ports for Redis and for SMTP), then a real SMTP server: the notice commits
    with the change, its one try from the web process fails, and the resume sweep sends it once both are back."""
    from controlplane.celery import app
    from tests.mail import SmtpReceiver

    send_to_port(settings, closed_port())
    settings.EMAIL_TIMEOUT = 5
    with redis_unreachable(), django_capture_on_commit_callbacks(execute=True):
        notification_services.email_notice_on_commit(
            subject="Payment failed", body="Your card was declined.", recipients=["billing@customer.example"]
        )
    notice = EmailNotice.objects.get()
    assert (notice.status, notice.attempts) == ("pending", 1) and notice.last_error  # tried once, kept

    smtp = SmtpReceiver()
    smtp.start()
    smtp.use_in(settings)
    app.conf.task_always_eager = True
    try:
        assert notification_services.email_notices_resume(now=timezone.now()) == 0  # its retry is not due yet
        later = timezone.now() + dt.timedelta(minutes=7)
        with django_capture_on_commit_callbacks(execute=True):
            assert notification_services.email_notices_resume(now=later) == 1
        assert notification_services.email_notices_resume(now=later + dt.timedelta(minutes=10)) == 0  # sent: done
    finally:
        app.conf.task_always_eager = False
        smtp.close()
    [mail] = smtp.wait_for(1)
    assert mail["To"] == "billing@customer.example" and mail["Subject"] == "Payment failed"
    assert len(smtp.messages) == 1
    notice.refresh_from_db()
    assert (notice.status, notice.attempts) == ("sent", 2) and notice.completed_at is not None


def test_email_notice_tried_at_commit_waits_seconds_not_email_timeout_when_redis_is_down_and_smtp_silent(
    owner_org, settings, django_capture_on_commit_callbacks
):
    """A mail server that accepts the connection and never greets, while the broker is down: the try made where the
    change committed (perhaps a web request) gives up after EMAIL_REQUEST_TIMEOUT, and the notice is kept."""
    import time

    with silent_port() as port:
        send_to_port(settings, port)
        settings.EMAIL_TIMEOUT, settings.EMAIL_REQUEST_TIMEOUT = 30, 1
        started = time.monotonic()
        with redis_unreachable(), django_capture_on_commit_callbacks(execute=True):
            notification_services.email_notice_on_commit(
                subject="Payment failed", body="Your card was declined.", recipients=["billing@customer.example"]
            )
        assert time.monotonic() - started < 5
    notice = EmailNotice.objects.get()
    assert (notice.status, notice.attempts) == ("pending", 1) and "timed out" in notice.last_error


def test_email_notice_message_delivered_twice_sends_once_when_a_sweep_resent_a_late_one(owner_org, mailoutbox):
    notice = EmailNotice.objects.create(subject="s", body="b", recipients=["a@customer.example"])
    assert notification_services.email_notice_attempt(notice_id=notice.pk, expected_attempts=0) is None
    assert notification_services.email_notice_attempt(notice_id=notice.pk, expected_attempts=0) is None
    assert len(mailoutbox) == 1
    notice.refresh_from_db()
    assert (notice.status, notice.attempts) == ("sent", 1)


def test_email_notice_that_can_never_be_sent_fails_at_once_and_is_not_retried_when_its_subject_breaks_a_header(
    owner_org, mailoutbox, caplog
):
    from controlplane.metrics import NOTIFICATION_FAILURES

    counted = NOTIFICATION_FAILURES.labels(channel_type="email")._value.get()
    notice = EmailNotice.objects.create(subject="Invoice\nBcc: x@evil.example", body="b", recipients=["a@c.example"])
    assert notification_services.email_notice_attempt(notice_id=notice.pk, expected_attempts=0) is None
    notice.refresh_from_db()
    assert (notice.status, notice.attempts) == ("failed", 1) and "newlines" in notice.last_error
    assert mailoutbox == [] and NOTIFICATION_FAILURES.labels(channel_type="email")._value.get() == counted + 1
    assert notification_services.email_notices_resume(now=timezone.now() + dt.timedelta(days=1)) == 0


class FlakySmtp:
    """An email backend whose server refuses the first `failures` connections, then delivers to mailoutbox."""

    failures = 0

    def __init__(self, *args, **kwargs):
        from django.core.mail.backends.locmem import EmailBackend

        self._delivered = EmailBackend(*args, **kwargs)

    def send_messages(self, messages):
        import smtplib

        if FlakySmtp.failures > 0:
            FlakySmtp.failures -= 1
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return self._delivered.send_messages(messages)


@pytest.mark.parametrize(("failures", "delivered"), [(2, True), (tasks.EMAIL_RETRIES + 1, False)])
def test_email_notice_is_retried_then_counted_and_logged_never_silent_when_smtp_fails(
    owner_org, mailoutbox, django_capture_on_commit_callbacks, eager, settings, caplog, failures, delivered
):
    from controlplane.metrics import NOTIFICATION_FAILURES

    settings.EMAIL_BACKEND = "tests.notifications.test_services.FlakySmtp"
    FlakySmtp.failures = failures
    counted = NOTIFICATION_FAILURES.labels(channel_type="email")._value.get()
    with django_capture_on_commit_callbacks(execute=True):
        notification_services.platform_event_notify(
            organization=owner_org.organization,
            kind="invoice_overdue",
            subject="inv_y",
            message="Your invoice is overdue.",
            severity="critical",
        )
    assert [m.to for m in mailoutbox] == ([[owner_org.owner.email]] if delivered else [])
    assert NOTIFICATION_FAILURES.labels(channel_type="email")._value.get() == counted + (0 if delivered else 1)
    assert ("not sent" in caplog.text) is not delivered


def test_delivery_attempt_returns_quietly_when_its_channel_is_deleted_during_the_send(
    owner_org, private_webhooks, monkeypatch
):
    # The channel (and, with it, its deliveries) deleted while the receiver was answering: nothing is left to record,
    # and the task ends as for a missing row, without an error or a retry.
    channel, _ = webhook_channel(owner_org.organization, "http://127.0.0.1:9/hook")
    delivery = Delivery.objects.create(
        organization=owner_org.organization, channel=channel, kind="test", payload={"event": "test"}
    )

    def deleted_while_sending(sent_channel, sent_delivery):
        notification_services.channel_delete(channel=sent_channel, actor=None)
        return notification_services.senders.DeliveryResult(False, 503, "", "HTTP 503", 5, retryable=True)

    monkeypatch.setattr(notification_services, "_send", deleted_while_sending)
    assert notification_services.delivery_attempt(delivery_id=delivery.pk) == (None, None)
    tasks.deliver_notification.run(delivery.pk)  # a message still queued for it finds nothing to do
    assert not Delivery.objects.filter(pk=delivery.pk).exists()
    assert not DeliveryAttempt.objects.filter(delivery_id=delivery.pk).exists()


def test_no_failing_notice_when_the_channel_was_disabled_while_it_failed(
    owner_org, mailoutbox, django_capture_on_commit_callbacks, eager
):
    # Administrators who disabled a failing channel (or whose last queued delivery met it disabled) turned it off:
    # a notice a day later that "alerts routed to it are not reaching anyone" is not news, it is noise.
    channel = failing_for_a_day(owner_org.organization)
    delivery = Delivery.objects.create(
        organization=owner_org.organization, channel=channel, kind="test", payload={"event": "test"}
    )
    notification_services.channel_update(channel=channel, actor=None, enabled=False)
    notification_services.delivery_attempt(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.failing_channels_check() == 0
    assert mailoutbox == []
    assert not PlatformEvent.objects.filter(kind="channel_failing").exists()


def test_response_recorded_without_the_channels_credentials_when_the_receiver_echoes_the_request(
    owner_org, private_webhooks
):
    # Echo services and many error pages quote the request back. Whoever may read deliveries (an Auditor: the
    # channel:read scope) sees the channel's config masked, and must not read its credentials in a response instead.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = f"{self.requestline}\n{self.headers}".encode()
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        channel, _ = notification_services.channel_create(
            organization=owner_org.organization,
            actor=None,
            name="hook",
            type="webhook",
            config={
                "url": f"http://bob:pass-word-1@127.0.0.1:{port}/in/path-secret-1?token=tok-secret-1",
                "headers": {"X-Api-Key": "hdr-secret-1"},
            },
        )
        delivery = Delivery.objects.create(
            organization=owner_org.organization, channel=channel, kind="test", payload={"event": "test"}
        )
        notification_services.delivery_attempt(delivery_id=delivery.pk)
    finally:
        server.shutdown()
        server.server_close()
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.status_code == 400 and "POST /in/" in attempt.response_body
    for secret in ("tok-secret-1", "path-secret-1", "hdr-secret-1", "Ym9iOnBhc3Mtd29yZC0x"):  # the last: bob's Basic
        assert secret not in attempt.response_body
