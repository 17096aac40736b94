"""Every write of notifications: channels, deliveries and their attempts, retries, failing-channel notices, platform
events.

User-facing changes are keyword-only, audited in their transaction, and enqueue their tasks on commit. Network I/O
(DNS checks, receivers, SMTP) never runs inside a database transaction. A credential (webhook URL userinfo or query
tokens, custom header values, a Slack hook's path, signing secrets, routing keys) is stored encrypted and never
returned, logged or audited. Nothing here imports deployments, billing or alerts: they call in.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import smtplib
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import get_connection, send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from audit.services import audit_record
from controlplane import crypto
from controlplane.errors import FieldError, Unavailable, ValidationFailed, model_clean
from controlplane.metrics import NOTIFICATION_FAILURES
from controlplane.tasks import Publishable, publish
from controlplane.validators import CONTROL_CHARACTER_CODE, control_character_message, find_control_character
from notifications import channels as senders
from notifications import text, urlsafety
from notifications.models import (
    Delivery,
    DeliveryAttempt,
    EmailNotice,
    NotificationChannel,
    PlatformEvent,
    Severity,
)
from organizations.access import Principal
from organizations.models import Organization
from organizations.services import organization_require_open

# A channel's configuration: its keys depend on its type (addresses for email, url and headers for a webhook...).
ChannelConfig = dict[str, Any]

logger = logging.getLogger(__name__)

CHANNEL_FAILURE_NOTICE_AFTER = dt.timedelta(days=1)
# How long an attempt holds its delivery: longer than any sender's timeout. A worker that dies mid-attempt leaves the
# delivery to deliveries_resume once this and its grace have passed.
DELIVERY_ATTEMPT_LEASE = dt.timedelta(minutes=2)
# A retry is a Celery message with a countdown; one lost with its worker or its Redis is re-sent after this grace.
DELIVERY_RESUME_GRACE = dt.timedelta(minutes=5)
DELIVERY_RESUME_BATCH = 1000
# Types whose config holds credentials: stored whole only as `config_encrypted`, shown masked as `config`.
_ENCRYPTED_CONFIG_TYPES = (NotificationChannel.Type.WEBHOOK, NotificationChannel.Type.SLACK)


def _allow_private() -> bool:
    return bool(getattr(settings, "ALLOW_PRIVATE_WEBHOOKS", False))


# -- channel configuration ------------------------------------------------------------------------------------------


def channel_config(channel: NotificationChannel) -> ChannelConfig:
    """The channel's whole config, credentials included: for sending, never for showing."""
    if channel.type in _ENCRYPTED_CONFIG_TYPES and channel.config_encrypted:
        config: ChannelConfig = json.loads(crypto.decrypt_str(channel.config_encrypted))
        return config
    return dict(channel.config)


def public_config(type: str, config: ChannelConfig) -> ChannelConfig:
    """What may be shown of a config: the API, the admin and the audit log see only this."""
    if type == NotificationChannel.Type.WEBHOOK:
        return {
            "url": urlsafety.mask_url(config.get("url") or "", first_segment_only=True),
            "headers": {name: urlsafety.MASK for name in config.get("headers") or {}},
        }
    if type == NotificationChannel.Type.SLACK:
        # The path of a Slack hook is its credential.
        return {"url": urlsafety.mask_url(config.get("url") or "", secret_path=True)}
    return dict(config)


def _store_config(channel: NotificationChannel, config: ChannelConfig) -> None:
    channel.config = public_config(channel.type, config)
    channel.config_encrypted = (
        crypto.encrypt_str(json.dumps(config, sort_keys=True)) if channel.type in _ENCRYPTED_CONFIG_TYPES else ""
    )


def _validate_name(name: object) -> None:
    """A name reaches mail subjects and chat lines: one line, no control characters (a `\r` in a channel's name once
    broke every email it sent)."""
    found = find_control_character(name) if isinstance(name, str) else None
    if found is not None:
        raise ValidationFailed([FieldError("name", control_character_message(*found), CONTROL_CHARACTER_CODE)])


def _dns_unavailable(exc: urlsafety.ResolverUnavailable) -> Unavailable:
    """A destination that cannot be checked yet: the caller is told to try again, not that the URL is wrong."""
    return Unavailable(f"{exc}; nothing was saved. Try again in a minute.", retry_after=60)


def _validate_channel(
    *, type: str, config: ChannelConfig, secret: str | None, previous: ChannelConfig | None = None
) -> ChannelConfig:
    """The whole config to store, or ValidationFailed naming the field at fault. `previous` is the stored config of
    the channel being changed: a header value given as "…" (as the API shows it) keeps its stored value."""
    if type == NotificationChannel.Type.EMAIL:
        addresses = config.get("addresses")
        if not isinstance(addresses, list) or not addresses or len(addresses) > 20:
            raise ValidationFailed({"config.addresses": "Give 1 to 20 email addresses."})
        for address in addresses:
            try:
                if not isinstance(address, str):
                    raise ValidationError("not a string")
                validate_email(address)
            except ValidationError:
                raise ValidationFailed({"config.addresses": f"{address!r} is not an email address."}) from None
        return {"addresses": addresses}
    if type == NotificationChannel.Type.WEBHOOK:
        url, headers = config.get("url"), config.get("headers") or {}
        if isinstance(url, str) and urlsafety.MASK in url:
            raise ValidationFailed({"config.url": "This is the URL as shown, masked: give the whole URL."})
        try:
            urlsafety.validate_webhook_url(url, allow_private=_allow_private())
        except ValueError as exc:
            raise ValidationFailed({"config.url": str(exc)}) from exc
        except urlsafety.ResolverUnavailable as exc:
            raise _dns_unavailable(exc) from exc
        if isinstance(headers, dict):
            kept = (previous or {}).get("headers") or {}
            unknown = [name for name, value in headers.items() if value == urlsafety.MASK and name not in kept]
            if unknown:
                raise ValidationFailed({"config.headers": f"No stored value to keep for {', '.join(unknown)}."})
            headers = {name: kept[name] if value == urlsafety.MASK else value for name, value in headers.items()}
        problems = senders.header_problems(headers)
        if problems:
            raise ValidationFailed({"config.headers": problems})
        return {"url": url, "headers": headers}
    if type == NotificationChannel.Type.SLACK:
        url = config.get("url")
        try:
            if _allow_private():
                urlsafety.validate_webhook_url(url, allow_private=True)
            else:
                urlsafety.validate_slack_webhook_url(url)
        except ValueError as exc:
            raise ValidationFailed({"config.url": str(exc)}) from exc
        except urlsafety.ResolverUnavailable as exc:
            raise _dns_unavailable(exc) from exc
        return {"url": url}
    if type == NotificationChannel.Type.PAGERDUTY:
        try:
            urlsafety.validate_pagerduty_routing_key(secret)
        except ValueError as exc:
            raise ValidationFailed({"config.routing_key": str(exc)}) from exc
        return {}
    raise ValidationFailed({"type": f"Unknown channel type {type!r}."})


# -- channels -------------------------------------------------------------------------------------------------------


def channel_create(
    *,
    organization: Organization,
    actor: Principal | None,
    name: str,
    type: str,
    config: ChannelConfig,
    is_default: bool = True,
    platform_events: bool = True,
    enabled: bool = True,
) -> tuple[NotificationChannel, str | None]:
    """Create a channel; a webhook's signing secret is returned here, once, and never shown again."""
    _validate_name(name)
    config = dict(config or {})
    secret = None
    if type == NotificationChannel.Type.PAGERDUTY:
        secret = config.pop("routing_key", None)
    stored = _validate_channel(type=type, config=config, secret=secret)
    shown = None
    if type == NotificationChannel.Type.WEBHOOK:
        secret = shown = "whsec_" + secrets.token_urlsafe(32)
    channel = NotificationChannel(
        organization=organization,
        name=name,
        type=type,
        secret_encrypted=crypto.encrypt_str(secret) if secret else "",
        is_default=is_default,
        platform_events=platform_events,
        enabled=enabled,
    )
    _store_config(channel, stored)
    model_clean(channel, exclude=["organization"])
    # Validation resolved the webhook's host (DNS) above: network I/O stays outside the transaction.
    with transaction.atomic():
        # Locked before the channel, in organization_delete's order (it locks the row, then disables every channel):
        # a channel created while its organization is deleted is seen by the deletion or refused.
        organization_require_open(organization_id=organization.pk)
        channel.save()
        audit_record(
            actor=actor,
            organization=organization,
            action="notification_channel.create",
            target=channel,
            summary={"name": name, "type": type, "config": channel.config},
        )
    return channel, shown


def channel_update(
    *,
    channel: NotificationChannel,
    actor: Principal | None,
    name: str | None = None,
    config: ChannelConfig | None = None,
    is_default: bool | None = None,
    platform_events: bool | None = None,
    enabled: bool | None = None,
) -> NotificationChannel:
    if name is not None:
        _validate_name(name)
    validated = None
    if config is not None:
        # Validated before the row lock: a webhook's host is resolved (DNS), and no lock waits on the network.
        config = dict(config)
        new_key = None
        if channel.type == NotificationChannel.Type.PAGERDUTY and "routing_key" in config:
            new_key = config.pop("routing_key")
        secret = new_key if new_key is not None else crypto.decrypt_str(channel.secret_encrypted) or None
        stored = channel_config(channel)
        validated = (
            _validate_channel(type=channel.type, config={**stored, **config}, secret=secret, previous=stored),
            new_key,
        )
    with transaction.atomic():
        return _channel_update_locked(
            channel,
            actor,
            validated,
            name=name,
            is_default=is_default,
            platform_events=platform_events,
            enabled=enabled,
        )


def _channel_update_locked(
    channel: NotificationChannel,
    actor: Principal | None,
    validated: tuple[ChannelConfig, str | None] | None,
    **values: str | bool | None,
) -> NotificationChannel:
    """channel_update's writes, under the channel's row lock; `validated` is (config, new PagerDuty key or None)."""
    organization_require_open(organization_id=channel.organization_id)  # as in channel_create, before the channel
    channel = NotificationChannel.objects.select_for_update().get(pk=channel.pk)
    changes: dict[str, Any] = {}
    if validated is not None:
        config, new_key = validated
        _store_config(channel, config)
        if new_key is not None:
            channel.secret_encrypted = crypto.encrypt_str(new_key)
        changes["config"] = channel.config
    for field, value in values.items():
        if value is not None and getattr(channel, field) != value:
            changes[field] = [getattr(channel, field), value]
            setattr(channel, field, value)
    model_clean(channel, exclude=["organization"])
    channel.save()
    audit_record(
        actor=actor,
        organization=channel.organization,
        action="notification_channel.update",
        target=channel,
        summary=changes,
    )
    return channel


@transaction.atomic
def organization_channels_disable(*, organization: Organization, now: dt.datetime) -> dict[str, list[str]]:
    """Disable every channel of `organization` as it closes (registered with organizations.closing): nobody is left
    to tell, so no delivery, platform event or failing-channel notice goes out for it again. Runs in
    organization_delete's transaction; returns the channels it disabled for that deletion's audit summary."""
    channels = NotificationChannel.objects.select_for_update().filter(organization=organization, enabled=True)
    disabled = sorted(channels.values_list("public_id", flat=True))
    NotificationChannel.objects.filter(public_id__in=disabled).update(enabled=False, updated_at=now)
    return {"disabled_notification_channels": disabled}


@transaction.atomic
def channel_delete(*, channel: NotificationChannel, actor: Principal | None) -> None:
    audit_record(
        actor=actor,
        organization=channel.organization,
        action="notification_channel.delete",
        target=channel,
        summary={"name": channel.name, "type": channel.type},
    )
    channel.delete()


@transaction.atomic
def channel_test(*, channel: NotificationChannel, actor: Principal | None) -> Delivery:
    """The "send test" action: one test delivery through the channel, attempted and retried like any other."""
    now = timezone.now()
    payload = {
        "event": "test",
        "summary": f"Test notification for channel {channel.name}",
        "severity": "info",
        "organization": channel.organization.public_id,
        "channel": channel.public_id,
        "sent_at": now.isoformat(),
    }
    delivery = Delivery(
        organization=channel.organization, channel=channel, kind=Delivery.Kind.TEST, payload=payload, created_at=now
    )
    deliveries_enqueue([delivery])
    audit_record(
        actor=actor,
        organization=channel.organization,
        action="notification_channel.test",
        target=channel,
        summary={"delivery": delivery.public_id},
    )
    return delivery


# -- deliveries -----------------------------------------------------------------------------------------------------


def deliveries_enqueue(deliveries: list[Delivery]) -> None:
    """Store these deliveries and, once the caller's transaction commits, send each to a worker (one attempt each,
    retried with backoff). Every notification, whoever sends it, goes out through here."""
    Delivery.objects.bulk_create(deliveries, batch_size=1000)
    ids = [d.pk for d in deliveries]

    def enqueue() -> None:
        from notifications.tasks import deliver_notification

        # With Redis down the change that queued them still stands (and answers): publish() logs and counts the
        # failure, and deliveries_resume sends what was never enqueued once its grace has passed.
        for pk in ids:
            publish(deliver_notification, pk, 0)

    transaction.on_commit(enqueue)


EMAIL_ERRORS = (smtplib.SMTPException, OSError)


def email_notice_send(*, subject: str, body: str, recipients: list[str], timeout: float | None = None) -> None:
    """Send a notice by email now (a worker's retried task calls this); raises EMAIL_ERRORS for the caller to retry.
    `timeout` bounds each SMTP step instead of EMAIL_TIMEOUT."""
    connection = get_connection(timeout=timeout) if timeout is not None else None
    send_mail(subject, body, None, recipients, connection=connection)


def email_notice_failure_record(*, subject: str, recipients: list[str], error: BaseException) -> None:
    """A notice that could not be sent, after its retries: logged and counted, never silent."""
    NOTIFICATION_FAILURES.labels(channel_type="email").inc()
    logger.error("email notice %r to %d recipient(s) not sent: %s", subject, len(recipients), error)


# An e-mail notice is tried this many times, 1, 2, 4 … 32 minutes apart: a mail server down for about an hour still
# gets it. Then it is marked failed, logged and counted.
EMAIL_NOTICE_ATTEMPTS = 7
# How long an attempt holds its notice: longer than Django's SMTP timeout. A worker that dies mid-attempt leaves the
# notice to email_notices_resume once this and its grace have passed.
EMAIL_NOTICE_ATTEMPT_LEASE = dt.timedelta(minutes=2)


def email_notice_on_commit(*, subject: str, body: str, recipients: list[str]) -> EmailNotice:
    """Keep the notice in the caller's transaction (nothing leaves for a change that rolled back) and, once that
    commits, hand it to a worker, which retries an SMTP or network failure with backoff. With the Celery broker
    unreachable it is tried from here at once; if that fails too, the resume sweep sends it later."""
    notice = EmailNotice.objects.create(subject=subject, body=body, recipients=list(recipients))

    def send() -> None:
        from notifications.tasks import deliver_email_notice

        if not publish(deliver_email_notice, notice.pk, 0):
            # Tried here, where a request may be waiting: a mail server that does not answer costs it seconds.
            timeout = min(settings.EMAIL_TIMEOUT, settings.EMAIL_REQUEST_TIMEOUT)
            email_notice_attempt(notice_id=notice.pk, expected_attempts=0, timeout=timeout)

    transaction.on_commit(send)
    return notice


def email_notice_attempt(
    *, notice_id: int, expected_attempts: int | None = None, timeout: float | None = None
) -> tuple[int, int] | None:
    """Try to send the notice once. Returns (seconds before the next try, tries made so far), or None when it is
    done (sent, failed for good, or not this message's to try).

    The try is claimed by counting it, conditionally on the count the message carries: a duplicate message (a sweep
    re-sending one that was only late) finds the count moved on and does nothing."""
    claim = EmailNotice.objects.filter(pk=notice_id, status=EmailNotice.Status.PENDING)
    if expected_attempts is not None:
        claim = claim.filter(attempts=expected_attempts)
    if not claim.update(attempts=F("attempts") + 1, next_attempt_at=timezone.now() + EMAIL_NOTICE_ATTEMPT_LEASE):
        return None
    notice = EmailNotice.objects.get(pk=notice_id)
    try:
        email_notice_send(subject=notice.subject, body=notice.body, recipients=notice.recipients, timeout=timeout)
    except EMAIL_ERRORS as exc:
        attempts = int(notice.attempts)
        if attempts >= EMAIL_NOTICE_ATTEMPTS:
            _email_notice_failed(notice, exc)
            return None
        delay = 60 * 2 ** (attempts - 1)
        EmailNotice.objects.filter(pk=notice.pk).update(
            next_attempt_at=timezone.now() + dt.timedelta(seconds=delay), last_error=_error_text(exc)
        )
        logger.warning("email notice %s: try %d failed (%s); again in %d s", notice.pk, attempts, exc, delay)
        return delay, attempts
    except Exception as exc:  # noqa: BLE001 - not the relay's doing (a header Django refuses): it would fail again
        logger.exception("email notice %s cannot be sent", notice.pk)
        _email_notice_failed(notice, exc)
        return None
    EmailNotice.objects.filter(pk=notice.pk).update(
        status=EmailNotice.Status.SENT, completed_at=timezone.now(), next_attempt_at=None
    )
    return None


def _error_text(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:500]


def _email_notice_failed(notice: EmailNotice, exc: BaseException) -> None:
    """Tried for the last time: marked failed, logged and counted."""
    EmailNotice.objects.filter(pk=notice.pk).update(
        status=EmailNotice.Status.FAILED, completed_at=timezone.now(), next_attempt_at=None, last_error=_error_text(exc)
    )
    email_notice_failure_record(subject=notice.subject, recipients=notice.recipients, error=exc)


def email_notices_resume(*, now: dt.datetime | None = None, grace: dt.timedelta = DELIVERY_RESUME_GRACE) -> int:
    """Re-enqueue e-mail notices left behind: a try due more than `grace` ago (its message lost with a worker or with
    Redis), or never tried though kept more than `grace` ago. Claimed as deliveries_resume claims deliveries."""
    from notifications.tasks import deliver_email_notice

    now = now or timezone.now()
    cutoff = now - grace
    stale = Q(status=EmailNotice.Status.PENDING) & (
        Q(next_attempt_at__lt=cutoff) | Q(next_attempt_at__isnull=True, created_at__lt=cutoff)
    )
    count = _resume(EmailNotice.objects.filter(stale), deliver_email_notice, now=now)
    if count:
        logger.warning("re-enqueued %d stale e-mail notices", count)
    return count


def _text_of(payload: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) for email and chat channels."""
    event = payload.get("event", "")
    status = {"alert.firing": "FIRING", "alert.resolved": "RESOLVED", "test": "TEST"}.get(event, "NOTICE")
    if payload.get("repeat"):
        status = "STILL FIRING"
    subject = text.one_line(f"[{status}] {payload.get('summary', '')}", 200)
    lines = [payload.get("summary", ""), ""]
    for key in (
        "severity",
        "deployment",
        "project",
        "organization",
        "value",
        "threshold",
        "fired_at",
        "resolved_at",
        "message",
    ):
        if payload.get(key) not in (None, ""):
            lines.append(f"{key}: {payload[key]}")
    budget = payload.get("budget")
    if isinstance(budget, dict):
        lines.append(f"spend ({budget['metric']}, {budget['scope']}): {budget['spend']} {budget['currency']}")
        lines.append(f"budget: {budget['budget']} {budget['currency']}")
    return subject, "\n".join(lines)


def _send(channel: NotificationChannel, delivery: Delivery) -> senders.DeliveryResult:
    payload = delivery.payload
    config = channel_config(channel)
    if channel.type == NotificationChannel.Type.EMAIL:
        subject, body = _text_of(payload)
        return senders.send_email(config["addresses"], subject, body)
    if channel.type == NotificationChannel.Type.WEBHOOK:
        return senders.send_webhook(
            config["url"],
            payload,
            secret=crypto.decrypt_str(channel.secret_encrypted),
            headers=config.get("headers"),
            allow_private=_allow_private(),
        )
    if channel.type == NotificationChannel.Type.SLACK:
        subject, body = _text_of(payload)
        return senders.send_slack(config["url"], f"*{subject}*\n{body}", allow_private=_allow_private())
    if channel.type == NotificationChannel.Type.PAGERDUTY:
        resolve = payload.get("event") == "alert.resolved"
        severity = {"critical": "critical", "warning": "warning"}.get(payload.get("severity"), "info")
        return senders.send_pagerduty(
            crypto.decrypt_str(channel.secret_encrypted),
            action="resolve" if resolve else "trigger",
            dedup_key=payload.get("alert") or f"{payload.get('event')}:{delivery.public_id}",
            summary=payload.get("summary") or payload.get("event", "notification"),
            severity=severity,
            source=payload.get("deployment") or payload.get("organization") or "controlplane",
            custom_details=payload,
            events_url=getattr(settings, "PAGERDUTY_EVENTS_URL", senders.PAGERDUTY_EVENTS_URL),
            allow_private=_allow_private(),
        )
    return senders.DeliveryResult(False, None, "", f"unknown channel type {channel.type}", 0)


def delivery_attempt(*, delivery_id: int, expected_attempts: int | None = None) -> tuple[Delivery | None, int | None]:
    """Make one attempt; record it. Returns (delivery, seconds before the next attempt or None when done).

    The attempt is claimed first by counting it, conditionally: a message carries the number of attempts made when
    it was sent, so a duplicate of it (a sweep re-sending a message that was only late) finds the count moved on and
    does nothing. Messages without the number (sent before it existed) are attempted as they come.
    """
    claim = Delivery.objects.filter(pk=delivery_id, status__in=[Delivery.Status.PENDING, Delivery.Status.RETRYING])
    if expected_attempts is not None:
        claim = claim.filter(attempts=expected_attempts)
    if not claim.update(attempts=F("attempts") + 1, next_attempt_at=timezone.now() + DELIVERY_ATTEMPT_LEASE):
        return Delivery.objects.filter(pk=delivery_id).first(), None
    found = Delivery.objects.select_related("channel", "channel__organization").filter(pk=delivery_id).first()
    if found is None:  # its channel was deleted, and the delivery with it: nothing to send
        return None, None
    delivery, channel = found, found.channel
    if not channel.enabled:
        result = senders.DeliveryResult(False, None, "", "channel disabled", 0)
    else:
        result = _send(channel, delivery)  # outside any transaction: the receiver may take seconds
    now = timezone.now()
    with transaction.atomic():
        locked = Delivery.objects.select_for_update().filter(pk=delivery.pk).first()
        if locked is None:  # the channel was deleted while the receiver answered: nothing left to record or retry
            return None, None
        delivery = locked
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            ok=result.ok,
            status_code=result.status_code,
            response_body=result.response_body,
            error=result.error[:500],
            duration_ms=result.duration_ms,
            created_at=now,
        )
        delay = None
        if result.ok:
            delivery.status, delivery.completed_at, delivery.next_attempt_at = Delivery.Status.SUCCEEDED, now, None
        else:
            NOTIFICATION_FAILURES.labels(channel_type=channel.type).inc()
            delay = senders.next_retry_delay(attempts_made=delivery.attempts) if result.retryable else None
            if delay is not None and result.retry_after is not None:
                # The receiver's Retry-After, when longer than our gap: an earlier try would be refused again and
                # spend one of the delivery's attempts.
                delay = max(delay, result.retry_after)
            if delay is None:
                delivery.status, delivery.completed_at, delivery.next_attempt_at = Delivery.Status.FAILED, now, None
            else:
                delivery.status = Delivery.Status.RETRYING
                delivery.next_attempt_at = now + dt.timedelta(seconds=delay)
        delivery.save(update_fields=["status", "completed_at", "next_attempt_at"])
        if channel.enabled:  # a disabled channel's receiver was not tried: its health is not in question
            _channel_health(channel.pk, ok=result.ok, now=now)
    return delivery, delay


def deliveries_resume(*, now: dt.datetime | None = None, grace: dt.timedelta = DELIVERY_RESUME_GRACE) -> int:
    """Re-enqueue deliveries left behind: due more than `grace` ago (a lost retry), or never attempted though created
    more than `grace` ago (a lost first message). Returns how many were re-enqueued.

    Rows are claimed under FOR UPDATE SKIP LOCKED and their next_attempt_at moved to now in the same transaction, so
    a concurrent sweep neither waits nor re-enqueues them again; the message goes out once that claim commits.
    A message that was only late, not lost, and the re-sent one carry the same attempt count: delivery_attempt
    lets one of them through.
    """
    from notifications.tasks import deliver_notification

    now = now or timezone.now()
    cutoff = now - grace
    open_statuses = [Delivery.Status.PENDING, Delivery.Status.RETRYING]
    stale = Q(status__in=open_statuses, next_attempt_at__lt=cutoff) | Q(
        status=Delivery.Status.PENDING, attempts=0, next_attempt_at__isnull=True, created_at__lt=cutoff
    )
    count = _resume(Delivery.objects.filter(stale), deliver_notification, now=now)
    if count:
        logger.warning("re-enqueued %d stale deliveries", count)
    return count


def _resume(stale: QuerySet[Any], task: Publishable, *, now: dt.datetime) -> int:
    """Claim up to DELIVERY_RESUME_BATCH of the `stale` rows under FOR UPDATE SKIP LOCKED, move their next_attempt_at
    to `now` in the same transaction, and once that commits send `task(pk, attempts)` for each: with the attempt
    count it was re-sent at, so that of a message that was only late and its re-sent copy, one makes the attempt.
    Still lost (Redis down)? The next sweep finds them again."""
    with transaction.atomic():
        rows = list(
            stale.select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", "attempts")[:DELIVERY_RESUME_BATCH]
        )
        if not rows:
            return 0
        stale.model.objects.filter(pk__in=[pk for pk, _ in rows]).update(next_attempt_at=now)

        def enqueue() -> None:
            for pk, attempts in rows:
                publish(task, pk, attempts)

        transaction.on_commit(enqueue)
    return len(rows)


# -- history --------------------------------------------------------------------------------------------------------

NOTIFICATIONS_PRUNE_BATCH = 2000


def notifications_prune(*, now: dt.datetime | None = None) -> tuple[int, int]:
    """Forget the deliveries (their attempts with them) and e-mail notices that finished, sent or failed, more than
    NOTIFICATION_HISTORY_DAYS ago. One still owed (pending, retrying) is kept whatever its age. Deletes
    NOTIFICATIONS_PRUNE_BATCH rows per statement, so no long lock is held on a large history. Returns how many
    deliveries and notices were forgotten."""
    cutoff = (now or timezone.now()) - dt.timedelta(days=settings.NOTIFICATION_HISTORY_DAYS)
    deliveries = _delete_in_batches(
        Delivery.objects.filter(status__in=[Delivery.Status.SUCCEEDED, Delivery.Status.FAILED], completed_at__lt=cutoff)
    )
    notices = _delete_in_batches(
        EmailNotice.objects.filter(
            status__in=[EmailNotice.Status.SENT, EmailNotice.Status.FAILED], completed_at__lt=cutoff
        )
    )
    if deliveries or notices:
        logger.info("forgot %d deliveries and %d e-mail notices finished before %s", deliveries, notices, cutoff)
    return deliveries, notices


def _delete_in_batches(rows: QuerySet[Any]) -> int:
    deleted = 0
    while batch := list(rows.order_by("pk").values_list("pk", flat=True)[:NOTIFICATIONS_PRUNE_BATCH]):
        _, per_model = rows.filter(pk__in=batch).delete()  # the row and its cascade in one transaction
        deleted += per_model.get(rows.model._meta.label, 0)
    return deleted


# -- failing channels -----------------------------------------------------------------------------------------------


def _channel_health(channel_id: int, *, ok: bool, now: dt.datetime) -> None:
    channel = NotificationChannel.objects.select_for_update().get(pk=channel_id)
    if ok:
        if channel.failing_since is not None:
            channel.failing_since = channel.failure_notice_sent_at = None
            channel.save(update_fields=["failing_since", "failure_notice_sent_at"])
        return
    if channel.failing_since is None:
        channel.failing_since = now
        channel.save(update_fields=["failing_since"])
    elif channel.failure_notice_sent_at is None and now - channel.failing_since >= CHANNEL_FAILURE_NOTICE_AFTER:
        _send_failure_notice(channel, now)


def administrator_emails(organization: Organization) -> list[str]:
    """The addresses of the organization's owners and administrators: who hears of what no channel carries."""
    from organizations.roles import Role

    return sorted(
        {
            m.user.email
            for m in organization.memberships.select_related("user")
            if {Role.OWNER, Role.ADMINISTRATOR} & set(m.roles) and m.user.email
        }
    )


def _send_failure_notice(channel: NotificationChannel, now: dt.datetime) -> None:
    recipients = administrator_emails(channel.organization)
    channel.failure_notice_sent_at = now
    channel.save(update_fields=["failure_notice_sent_at"])
    PlatformEvent.objects.get_or_create(
        organization=channel.organization,
        dedup_key=f"channel_failing:{channel.public_id}:{channel.failing_since}",
        defaults={
            "kind": PlatformEvent.Kind.CHANNEL_FAILING,
            "subject": channel.public_id,
            "severity": Severity.WARNING,
            "message": f"Notification channel {channel.name} has failed every delivery since "
            f"{channel.failing_since:%Y-%m-%d %H:%M} UTC.",
        },
    )
    if not recipients:
        return
    subject = text.one_line(f"Notification channel {channel.name!r} has been failing for a day", 200)
    body = (
        f"Every delivery to the {channel.type} channel {channel.name} ({channel.public_id}) of "
        f"{channel.organization.name} has failed since {channel.failing_since:%Y-%m-%d %H:%M} UTC.\n"
        f"Alerts routed to it are not reaching anyone. See its delivery history in the console or at "
        f"{settings.PUBLIC_URL}/api/v1/organizations/{channel.organization.public_id}/notification-channels/"
        f"{channel.public_id}/deliveries"
    )
    # By email, never through a channel: the failing channel cannot carry its own notice.
    email_notice_on_commit(subject=subject, body=body, recipients=recipients)


def failing_channels_check(*, now: dt.datetime | None = None) -> int:
    """Notify administrators of channels failing for a day even when no new attempt happened to notice it. A channel
    they disabled is not: they turned it off, and nothing is routed to it."""
    now = now or timezone.now()
    count = 0
    for pk in NotificationChannel.objects.filter(
        failing_since__lte=now - CHANNEL_FAILURE_NOTICE_AFTER, failure_notice_sent_at__isnull=True, enabled=True
    ).values_list("pk", flat=True):
        with transaction.atomic():
            channel = NotificationChannel.objects.select_for_update().select_related("organization").get(pk=pk)
            if channel.failure_notice_sent_at is None and channel.failing_since is not None and channel.enabled:
                _send_failure_notice(channel, now)
                count += 1
    return count


# -- platform events ------------------------------------------------------------------------------------------------


@transaction.atomic
def platform_event_notify(
    *,
    organization: Organization,
    kind: str,
    subject: str,
    message: str,
    severity: str = "warning",
    dedup_key: str | None = None,
) -> PlatformEvent | None:
    """Tell an organization about something the platform did or saw, through its platform-event channels (or, when
    it has none, by email to its owners and administrators). Once per dedup key: returns None for a repeat.

    Runs in the caller's transaction when there is one: the event commits with the change it tells of, and the
    deliveries and emails leave after that commit, never for a change that rolled back.
    """
    if kind not in PlatformEvent.Kind.values:
        raise ValueError(f"unknown platform event kind {kind!r}")
    if severity not in Severity.values:
        raise ValueError(f"severity must be one of {', '.join(Severity.values)}")
    dedup_key = dedup_key or f"{kind}:{subject}:{timezone.now().isoformat()}"
    event, created = PlatformEvent.objects.get_or_create(
        organization=organization,
        dedup_key=dedup_key[:200],
        defaults={"kind": kind, "subject": subject, "message": message, "severity": severity},
    )
    if not created:
        return None
    now = timezone.now()
    payload = {
        "event": f"platform.{kind}",
        "summary": message.splitlines()[0][:200] if message else kind,
        "message": message,
        "severity": severity,
        "subject": subject,
        "organization": organization.public_id,
        "sent_at": now.isoformat(),
    }
    channels = list(NotificationChannel.objects.filter(organization=organization, platform_events=True, enabled=True))
    if channels:
        deliveries_enqueue(
            [
                Delivery(
                    organization=organization, channel=c, kind=Delivery.Kind.PLATFORM, payload=payload, created_at=now
                )
                for c in channels
            ]
        )
    else:
        recipients = administrator_emails(organization)
        if recipients:
            subject_line, body = _text_of(payload)
            email_notice_on_commit(subject=subject_line, body=body, recipients=recipients)
    return event
