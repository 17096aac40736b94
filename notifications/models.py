"""Notification channels, deliveries with every attempt made, and platform events.

Fields and constraints only: every write goes through notifications.services. The tables were created by the alerts
app and keep their names (`db_table`), so moving the models here moved no row. Nothing here knows an alert: a
delivery about one carries its public id, never a key into the alerts app's tables.
"""

from django.db import models
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import no_control_characters


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class NotificationChannel(models.Model):
    class Type(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "Webhook"
        SLACK = "slack", "Slack"
        PAGERDUTY = "pagerduty", "PagerDuty"

    public_id = PublicIdField(prefix="chn")
    organization = models.ForeignKey(
        "organizations.Organization", on_delete=models.CASCADE, related_name="notification_channels"
    )
    name = models.CharField(max_length=100, validators=[no_control_characters])
    type = models.CharField(max_length=16, choices=Type.choices)
    # What may be shown (API, admin, audit log): email {"addresses"}; webhook {"url", "headers"} with the URL's
    # credentials and every header value masked; slack {"url"} with its secret path masked; pagerduty {}.
    config = models.JSONField(default=dict, blank=True)
    # Fernet token (controlplane.crypto) of the whole config as JSON, credentials included: webhook and Slack only.
    config_encrypted = models.TextField(blank=True, editable=False)
    # Fernet token: the webhook signing secret or the PagerDuty routing key.
    secret_encrypted = models.TextField(blank=True, editable=False)
    is_default = models.BooleanField(default=True, help_text="Receives alerts of rules that name no channel.")
    platform_events = models.BooleanField(default=True, help_text="Receives platform events (failed deployments…).")
    enabled = models.BooleanField(default=True)
    failing_since = models.DateTimeField(null=True, blank=True)
    failure_notice_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "alerts_notificationchannel"
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.name} ({self.type}, {self.public_id})"


class Delivery(models.Model):
    """One notification to one channel, with every attempt made to deliver it."""

    class Kind(models.TextChoices):
        FIRE = "fire", "Alert fired"
        RESOLVE = "resolve", "Alert resolved"
        REPEAT = "repeat", "Alert still firing"
        TEST = "test", "Test"
        PLATFORM = "platform", "Platform event"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RETRYING = "retrying", "Retrying"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    public_id = PublicIdField(prefix="dlv")
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="deliveries")
    # The alert it tells of (`alt_…`), or "" for a test or a platform event. A record of what was sent: it stays when
    # the alert is deleted with its rule.
    alert_public_id = models.CharField(max_length=32, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "alerts_delivery"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["channel", "-created_at"], name="delivery_channel_time"),
            models.Index(fields=["completed_at"], name="delivery_completed"),
        ]


class DeliveryAttempt(models.Model):
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.PositiveSmallIntegerField()
    ok = models.BooleanField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "alerts_deliveryattempt"
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="delivery_attempt_unique")]


class PlatformEvent(models.Model):
    """Something the platform tells an organization (a deployment failed, a payment failed…); notified once."""

    class Kind(models.TextChoices):
        DEPLOYMENT_FAILED = "deployment_failed", "Deployment failed to provision"
        INVOICE_PAYMENT_FAILED = "invoice_payment_failed", "Invoice payment failed"
        INVOICE_OVERDUE = "invoice_overdue", "Invoice overdue"
        DEPLOYMENT_STOPPED_FOR_BILLING = "deployment_stopped_for_billing", "Deployment stopped for billing"
        ANNUAL_RENEWAL_REMINDER = "annual_renewal_reminder", "Annual plan renewal reminder"
        VAT_NUMBER_INVALID = "vat_number_invalid", "VAT number invalid"
        PREMIUM_TRIAL_REMINDER = "premium_trial_reminder", "Premium trial ending soon"
        PREMIUM_TRIAL_ENDED = "premium_trial_ended", "Premium trial ended"
        MAINTENANCE_SCHEDULED = "maintenance_scheduled", "Maintenance scheduled"
        MAINTENANCE_CANCELLED = "maintenance_cancelled", "Maintenance cancelled"
        CHANNEL_FAILING = "channel_failing", "Notification channel failing"
        VPC_PEERING_EXPIRED = "vpc_peering_expired", "VPC peering expired awaiting you"

    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    subject = models.CharField(max_length=64, help_text="Public id of what it is about.")
    severity = models.CharField(max_length=8, choices=Severity.choices)
    message = models.TextField()
    dedup_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "alerts_platformevent"
        constraints = [models.UniqueConstraint(fields=["organization", "dedup_key"], name="platform_event_once")]


class EmailNotice(models.Model):
    """An e-mail that no channel carries (to a billing contact, or to an organization's administrators when it has
    no channel for platform events), kept until it is sent: written in the transaction of the change it tells of,
    sent by a worker, retried with backoff, and sent again by the resume sweep if its message was lost (Redis down)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    subject = models.TextField()
    body = models.TextField()
    recipients = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="email_notice_due"),
            models.Index(fields=["completed_at"], name="email_notice_completed"),
        ]
