"""Metric samples and rollups, collector state, alert rules, alerts and their history, silences.

Fields and constraints only: writes go through alerts.collection, alerts.rules, alerts.defaults and alerts.evaluate,
every read the API makes through alerts.selectors. Channels and deliveries are the notifications app's.
"One alert per rule and subject" is the unique constraint's guarantee, not the evaluator's.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import no_control_characters
from notifications.models import Severity  # alert rules and alerts share the notifications app's severities


class MetricSample(models.Model):
    """One raw value of one metric of one deployment; kept 48 hours. A missing sample is a gap, never a zero."""

    # No database foreign key: a minute brings 140,000 rows for 10,000 deployments, and a per-row key check was a
    # third of storing them. Samples are written only for deployments the collector just read, deployments are
    # never removed from their table (deletion is a status), and Django still cascades if one ever is.
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    name = models.CharField(max_length=32)
    ts = models.DateTimeField()
    value = models.FloatField()

    class Meta:
        indexes = [
            models.Index(fields=["deployment", "name", "ts"], name="metric_sample_series"),
            # Evaluation aggregates one window across every deployment; pruning deletes by age.
            models.Index(fields=["ts"], name="metric_sample_ts"),
        ]


class MetricRollup(models.Model):
    """Five minutes of one metric of one deployment; kept 30 days."""

    BUCKET_SECONDS = 300

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="+", db_index=False)
    name = models.CharField(max_length=32)
    bucket = models.DateTimeField(help_text="Start of the five-minute bucket.")
    avg = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    last = models.FloatField()
    sum = models.FloatField()
    count = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "name", "bucket"], name="metric_rollup_unique")]
        indexes = [models.Index(fields=["bucket"], name="metric_rollup_bucket")]


class CollectorState(models.Model):
    """Where collection of one deployment stands: the broker-log offset, previous counters, and availability."""

    deployment = models.OneToOneField(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="collector_state"
    )
    log_offset = models.BigIntegerField(default=0)
    state = models.JSONField(default=dict, blank=True)
    available = models.BooleanField(default=True)
    # Set while the broker does not answer: the `metrics_unavailable` condition. Its series show a gap meanwhile.
    unavailable_since = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # The default rules (alerts.defaults keys) this deployment was given, so none is given twice and one the user
    # deleted stays deleted. Not in `state`: each collection replaces that with the collector's own.
    default_rule_keys = models.JSONField(default=list, blank=True)


class AlertRule(models.Model):
    class Kind(models.TextChoices):
        METRIC = "metric", "Metric threshold"
        CERTIFICATE_EXPIRY = "certificate_expiry", "TLS certificate expiring"
        VPC_PEERING = "vpc_peering", "VPC peering abnormal"
        BUDGET = "budget", "Budget on spend"
        DEPLOYMENT_UNAVAILABLE = "deployment_unavailable", "Deployment unavailable"

    class BudgetScope(models.TextChoices):
        PROJECT = "project", "The project's spend"
        ORGANIZATION = "organization", "The whole organization's spend"

    class Aggregation(models.TextChoices):
        AVG = "avg", "Average"
        MAX = "max", "Maximum"
        MIN = "min", "Minimum"
        SUM = "sum", "Sum"
        LAST = "last", "Last value"
        COUNT = "count", "Number of samples"

    class Operator(models.TextChoices):
        GT = ">", "greater than"
        GE = ">=", "greater than or equal"
        LT = "<", "less than"
        LE = "<=", "less than or equal"
        EQ = "==", "equal"
        NE = "!=", "not equal"

    class ThresholdUnit(models.TextChoices):
        ABSOLUTE = "absolute", "In the metric's unit"
        PERCENT_OF_TIER_LIMIT = "percent_of_tier_limit", "Percent of the tier's limit"

    public_id = PublicIdField(prefix="rule")
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="alert_rules")
    # Null: the rule applies to every deployment of the project.
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.CASCADE, null=True, blank=True, related_name="alert_rules"
    )
    name = models.CharField(max_length=100, validators=[no_control_characters])
    kind = models.CharField(max_length=32, choices=Kind.choices, default=Kind.METRIC)
    metric = models.CharField(max_length=32, blank=True)
    aggregation = models.CharField(max_length=8, choices=Aggregation.choices, default=Aggregation.AVG)
    window_seconds = models.PositiveIntegerField(default=300)
    operator = models.CharField(max_length=2, choices=Operator.choices, default=Operator.GT)
    threshold = models.FloatField()
    threshold_unit = models.CharField(max_length=24, choices=ThresholdUnit.choices, default=ThresholdUnit.ABSOLUTE)
    for_seconds = models.PositiveIntegerField(default=0)
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)
    enabled = models.BooleanField(default=True)
    # Null: notify once when it fires, and once when it resolves.
    repeat_interval_seconds = models.PositiveIntegerField(null=True, blank=True, default=3600)
    # Empty: the organization's channels marked `default` receive it.
    channels = models.ManyToManyField("notifications.NotificationChannel", blank=True, related_name="rules")
    # The seed default this rule was created from ("" for a user's own rule): creating defaults twice is a no-op.
    default_key = models.CharField(max_length=32, blank=True)
    # Budget rules only ("" and nulls otherwise). Money is integer minor units of `budget_currency`, never a float:
    # `threshold` of a budget rule is the same amount in major units, for display only.
    budget_scope = models.CharField(max_length=16, choices=BudgetScope.choices, blank=True)
    budget_minor = models.BigIntegerField(null=True, blank=True)
    budget_currency = models.CharField(max_length=3, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "default_key"], condition=~Q(default_key=""), name="alert_rule_default_once"
            ),
            models.CheckConstraint(condition=~Q(kind="metric") | ~Q(metric=""), name="alert_rule_metric_named"),
            # A budget rule is about spend, never one deployment, and always has its amount, currency and scope.
            models.CheckConstraint(
                condition=(~Q(kind="budget") & Q(budget_minor__isnull=True, budget_currency="", budget_scope=""))
                | (
                    Q(
                        kind="budget",
                        deployment__isnull=True,
                        budget_minor__gt=0,
                        budget_scope__in=["project", "organization"],
                    )
                    & ~Q(budget_currency="")
                ),
                name="alert_rule_budget_fields",
            ),
        ]
        indexes = [models.Index(fields=["enabled", "kind"], name="alert_rule_enabled")]

    def __str__(self):
        return f"{self.name} ({self.public_id})"


class AlertStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class Alert(models.Model):
    """The one alert of a rule about one subject; it cycles pending -> firing -> resolved.

    The subject is the deployment, or, for a budget rule (no deployment), the rule's project or its organization.
    """

    public_id = PublicIdField(prefix="alt")
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="+")
    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    # Null for a budget alert: its subject is the project or the organization (the rule's budget_scope).
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.CASCADE, null=True, blank=True, related_name="alerts"
    )
    status = models.CharField(max_length=8, choices=AlertStatus.choices)
    since = models.DateTimeField(help_text="When the current status began.")
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    summary = models.CharField(max_length=300, blank=True)
    last_evaluated_at = models.DateTimeField(null=True, blank=True)
    # Null until someone was told it fired in this episode; reset when it resolves.
    last_notified_at = models.DateTimeField(null=True, blank=True)
    acknowledged_until = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    acknowledgement_comment = models.CharField(max_length=500, blank=True)
    # Budget alerts only: the spend last compared and the budget it was compared with, in minor units of `currency`.
    spend_minor = models.BigIntegerField(null=True, blank=True)
    budget_minor = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "deployment"], name="alert_one_per_rule_subject"),
            # NULLs are distinct in a unique index: a rule without a deployment needs its own "one alert" guarantee.
            models.UniqueConstraint(
                fields=["rule"], condition=Q(deployment__isnull=True), name="alert_one_per_rule_without_deployment"
            ),
        ]
        indexes = [models.Index(fields=["organization", "status", "-since"], name="alert_org_status")]

    def __str__(self):
        return f"{self.rule.name} on {self.subject_label}: {self.status}"

    @property
    def subject_label(self) -> str:
        if self.deployment_id is not None:
            return str(self.deployment_id)
        return "organization" if self.rule.budget_scope == AlertRule.BudgetScope.ORGANIZATION else "project"


class AlertEvent(models.Model):
    """The history of an alert: transitions, notifications sent or withheld, acknowledgements. Never updated."""

    class Kind(models.TextChoices):
        PENDING = "pending", "Pending"
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"
        NOTIFIED = "notified", "Notification sent"
        SUPPRESSED = "suppressed", "Notification withheld"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    value = models.FloatField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]


class Silence(models.Model):
    """Withholds notifications of the project's alerts that match every matcher, between starts_at and ends_at."""

    MATCHER_KEYS = ("deployment", "rule", "metric", "severity")

    public_id = PublicIdField(prefix="sil")
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="silences")
    # {"deployment": "dep_…", "rule": "rule_…", "metric": "connections", "severity": "critical"}; empty matches all.
    matchers = models.JSONField(default=dict, blank=True)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    comment = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-starts_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="silence_ends_after_start")
        ]
