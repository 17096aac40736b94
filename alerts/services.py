"""Every write of monitoring and alerting: samples and rollups, collection, rules, evaluation, alerts, silences,
channels, deliveries and platform events.

User-facing changes are keyword-only, atomic, audited, and enqueue their tasks on commit. Collection and evaluation
are system work: set-based (one statement per kind of row, whatever the number of deployments), never audited.
Network I/O (brokers, receivers) never runs inside a database transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import Avg, Count, F, Max, Min, Q, QuerySet, Sum
from django.utils import timezone

from alerts import channels as senders
from alerts import evaluation, urlsafety
from alerts.metrics import (
    BUDGET_METRICS,
    METRICS,
    SPEND_FORECAST,
    SPEND_MONTH_TO_DATE,
    validate_budget_metric_name,
    validate_metric_name,
)
from alerts.models import (
    Alert,
    AlertEvent,
    AlertRule,
    AlertStatus,
    CollectorState,
    Delivery,
    DeliveryAttempt,
    MetricRollup,
    MetricSample,
    NotificationChannel,
    PlatformEvent,
    Silence,
)
from audit.services import audit_record
from billing.money import minor_units, round_half_up, to_decimal
from controlplane.metrics import NOTIFICATION_FAILURES
from controlplane.tasks import publish
from organizations.access import acting_user

logger = logging.getLogger(__name__)

RAW_RETENTION = dt.timedelta(hours=48)
ROLLUP_RETENTION = dt.timedelta(days=30)
CHANNEL_FAILURE_NOTICE_AFTER = dt.timedelta(days=1)

# Which tier limit a percent threshold refers to, per metric.
TIER_LIMIT_FIELDS = {
    "connections": "max_connections",
    "sessions": "max_connections",
    "messages_received_rate": "messages_per_second",
    "messages_sent_rate": "messages_per_second",
}


def collect_interval_seconds() -> int:
    return int(getattr(settings, "COLLECT_INTERVAL_SECONDS", 60))


# -- samples and rollups -------------------------------------------------------------------------------------------


def samples_store(*, rows: Iterable[tuple[int, str, dt.datetime, float]]) -> int:
    """Insert raw samples (deployment id, metric name, time, value) set-based: one statement for any number.

    A value that is not a finite number is not stored: its series shows a gap, never a made-up value."""
    rows = [row for row in rows if math.isfinite(row[3])]
    if not rows:
        return 0
    if connection.vendor == "postgresql":
        # COPY: no model instances, no SQL text per row, and PostgreSQL's fastest path for many rows. The text is
        # built here rather than row by row through psycopg: a minute's samples share one timestamp, formatted once.
        stamps: dict[dt.datetime, str] = {}
        lines = []
        for deployment_id, name, ts, value in rows:
            stamp = stamps.get(ts)
            if stamp is None:
                if ts.tzinfo is None:
                    raise ValueError("sample times must be timezone-aware")
                stamp = stamps[ts] = ts.isoformat()
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}")
            lines.append(f"{int(deployment_id)}\t{name}\t{stamp}\t{float(value)!r}\n")
        with connection.cursor() as cursor:
            with cursor.cursor.copy(
                f"COPY {MetricSample._meta.db_table} (deployment_id, name, ts, value) FROM STDIN"
            ) as copy:
                copy.write("".join(lines))
        return len(rows)
    MetricSample.objects.bulk_create(
        [MetricSample(deployment_id=d, name=n, ts=t, value=v) for d, n, t, v in rows], batch_size=2000
    )
    return len(rows)


def _bucket_start(ts: dt.datetime) -> dt.datetime:
    seconds = int(ts.timestamp()) // MetricRollup.BUCKET_SECONDS * MetricRollup.BUCKET_SECONDS
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def rollups_compute(*, now: dt.datetime | None = None, lookback: dt.timedelta = dt.timedelta(minutes=15)) -> int:
    """(Re)compute the five-minute buckets that closed within `lookback`; idempotent, so late samples are counted."""
    now = now or timezone.now()
    end = _bucket_start(now)
    start = _bucket_start(now - lookback)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                INSERT INTO {MetricRollup._meta.db_table}
                       (deployment_id, name, bucket, avg, min, max, last, sum, count)
                SELECT deployment_id, name,
                       to_timestamp(floor(extract(epoch FROM ts) / %(b)s) * %(b)s) AS bucket,
                       avg(value), min(value), max(value), (array_agg(value ORDER BY ts DESC))[1], sum(value),
                       count(*)
                  FROM {MetricSample._meta.db_table}
                 WHERE ts >= %(start)s AND ts < %(end)s
              GROUP BY deployment_id, name, bucket
                ON CONFLICT (deployment_id, name, bucket) DO UPDATE
                   SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last,
                       sum = EXCLUDED.sum, count = EXCLUDED.count
                """,
                {"b": MetricRollup.BUCKET_SECONDS, "start": start, "end": end},
            )
            return cursor.rowcount
    # The embedded SQLite default: few deployments, so the buckets are computed here.
    groups: dict[tuple, list[tuple[dt.datetime, float]]] = defaultdict(list)
    for dep, name, ts, value in MetricSample.objects.filter(ts__gte=start, ts__lt=end).values_list(
        "deployment_id", "name", "ts", "value"
    ):
        groups[(dep, name, _bucket_start(ts))].append((ts, value))
    rollups = []
    for (dep, name, bucket), points in groups.items():
        values = [v for _, v in sorted(points)]
        rollups.append(
            MetricRollup(
                deployment_id=dep,
                name=name,
                bucket=bucket,
                avg=sum(values) / len(values),
                min=min(values),
                max=max(values),
                last=values[-1],
                sum=sum(values),
                count=len(values),
            )
        )
    MetricRollup.objects.bulk_create(
        rollups,
        update_conflicts=True,
        unique_fields=["deployment", "name", "bucket"],
        update_fields=["avg", "min", "max", "last", "sum", "count"],
    )
    return len(rollups)


def metrics_prune(*, now: dt.datetime | None = None) -> tuple[int, int]:
    now = now or timezone.now()
    raw, _ = MetricSample.objects.filter(ts__lt=now - RAW_RETENTION).delete()
    rolled, _ = MetricRollup.objects.filter(bucket__lt=now - ROLLUP_RETENTION).delete()
    return raw, rolled


# -- collection ----------------------------------------------------------------------------------------------------


def _collect_local(deployment, state: CollectorState, timeout: float):
    from alerts.collectors.mosquitto import collect_mosquitto
    from deployments.selectors import monitor_credentials

    endpoints = deployment.endpoints or {}
    username, password = monitor_credentials(deployment)
    return collect_mosquitto(
        host=endpoints.get("host") or deployment.region.bind_address,
        port=int((endpoints.get("ports") or {}).get("mqtt") or 0),
        username=username,
        password=password,
        log_path=(deployment.observed_details or {}).get("log_path"),
        log_offset=state.log_offset,
        previous=state.state,
        timeout=timeout,
    )


def _emqx_credentials(deployment) -> tuple[str, str]:
    """The bootstrap API key the reconciler gave the EMQX cluster: its name, and the secret stored encrypted."""
    from controlplane import crypto
    from deployments.reconcile import API_KEY_NAME

    return API_KEY_NAME, crypto.decrypt_str(deployment.api_secret_encrypted)


def _collect_kubernetes(deployment, state: CollectorState, timeout: float):
    from alerts.collectors import CollectResult
    from alerts.collectors.emqx import EmqxMonitorApi, collect_emqx

    base_url = (deployment.observed_details or {}).get("management_url")
    if not base_url:
        return CollectResult(state=state.state, available=False, error="no management URL observed yet")
    key, secret = _emqx_credentials(deployment)
    api = EmqxMonitorApi(base_url, key, secret, timeout=timeout)
    try:
        return collect_emqx(api, state.state)
    finally:
        api.close()


COLLECTORS = {"local": _collect_local, "kubernetes": _collect_kubernetes}


def deployment_collect(*, deployment_id: int) -> CollectorState | None:
    """Collect one running deployment: store its samples, or record the gap and `metrics_unavailable`."""
    from deployments.models import Deployment, Status

    deployment = Deployment.objects.select_related("region", "tier").filter(pk=deployment_id).first()
    if deployment is None or deployment.status != Status.RUNNING:
        return None
    state, _ = CollectorState.objects.get_or_create(deployment=deployment)
    timeout = float(getattr(settings, "COLLECT_TIMEOUT_SECONDS", 5))
    collector = COLLECTORS.get(deployment.region.driver)
    try:
        result = collector(deployment, state, timeout) if collector else None
    except Exception as exc:  # noqa: BLE001 - a broken collector is recorded as unavailable, never a stuck task
        logger.exception("collector failed for %s", deployment.public_id)
        from alerts.collectors import CollectResult

        result = CollectResult(
            state=state.state, log_offset=state.log_offset, available=False, error=f"{type(exc).__name__}: {exc}"
        )
    now = timezone.now()
    with transaction.atomic():
        state = CollectorState.objects.select_for_update().get(pk=state.pk)
        state.last_attempt_at = now
        if result is None:
            state.available, state.last_error = False, f"no collector for driver {deployment.region.driver!r}"
            state.unavailable_since = state.unavailable_since or now
        elif result.available:
            samples_store(rows=[(deployment.pk, name, now, float(value)) for name, value in result.values.items()])
            state.available, state.unavailable_since, state.last_success_at = True, None, now
            state.state, state.log_offset, state.last_error = result.state, result.log_offset, result.error
        else:
            # No samples at all: the series shows a gap, not zeros; the collector's state is kept for next time.
            state.available, state.last_error = False, result.error[:2000]
            state.unavailable_since = state.unavailable_since or now
        state.save()
    return state


def running_deployment_ids() -> list[int]:
    from deployments.models import Deployment, Status

    return list(Deployment.objects.filter(status=Status.RUNNING).values_list("pk", flat=True))


# -- default rules -------------------------------------------------------------------------------------------------

GB = 1024**3


@dataclasses.dataclass(frozen=True)
class DefaultRule:
    key: str
    name: str
    kind: str = AlertRule.Kind.METRIC
    metric: str = ""
    aggregation: str = "max"
    window_seconds: int = 300
    operator: str = ">"
    threshold: float = 0
    threshold_unit: str = AlertRule.ThresholdUnit.ABSOLUTE
    for_seconds: int = 0
    severity: str = "warning"
    repeat_interval_seconds: int | None = 3600


# The seed system's fixed alert events (DESIGN §7), as editable rules on every deployment.
DEFAULT_RULES: tuple[DefaultRule, ...] = (
    DefaultRule(
        "connections_high",
        "Connections above 80% of the tier's limit",
        metric="connections",
        threshold=80,
        threshold_unit=AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT,
        for_seconds=300,
    ),
    DefaultRule(
        "traffic_daily",
        "Traffic above 100 GB in 24 hours",
        metric="traffic_bytes",
        aggregation="sum",
        window_seconds=86400,
        threshold=100 * GB,
        repeat_interval_seconds=86400,
    ),
    DefaultRule(
        "certificate_expiring",
        "TLS certificate expiring within 30 days",
        kind=AlertRule.Kind.CERTIFICATE_EXPIRY,
        aggregation="min",
        window_seconds=86400,
        operator="<",
        threshold=30,
        repeat_interval_seconds=86400,
    ),
    DefaultRule("auth_failures", "Authentication failures", metric="auth_failure_rate", threshold=0.1),
    DefaultRule("acl_denied", "ACL denials", metric="acl_denied_rate", threshold=0.1),
    DefaultRule("messages_dropped", "Messages dropped", metric="messages_dropped_rate", aggregation="avg", threshold=1),
    DefaultRule(
        "rate_limit",
        "Message rate at the tier's limit",
        metric="messages_received_rate",
        operator=">=",
        threshold=100,
        threshold_unit=AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT,
        for_seconds=120,
    ),
    DefaultRule(
        "vpc_peering_abnormal",
        "VPC peering abnormal",
        metric="vpc_peering_abnormal",  # fed every minute and on every change by networking
        aggregation="last",
        threshold=0,
        severity="critical",
    ),
    DefaultRule(
        "rule_resource_down",
        "Rule-engine resource down",
        metric="rule_resource_down",
        threshold=0,
        for_seconds=120,
        severity="critical",
    ),
    DefaultRule("rule_failures", "Rule-engine failures", metric="rule_failed_rate", aggregation="avg", threshold=0),
)


def _default_rule_rows(deployments: Sequence) -> list[AlertRule]:
    rows = []
    for deployment in deployments:
        for d in DEFAULT_RULES:
            rows.append(
                AlertRule(
                    organization_id=deployment.project.organization_id,
                    project_id=deployment.project_id,
                    deployment=deployment,
                    name=d.name,
                    kind=d.kind,
                    metric=d.metric,
                    aggregation=d.aggregation,
                    window_seconds=d.window_seconds,
                    operator=d.operator,
                    threshold=d.threshold,
                    threshold_unit=d.threshold_unit,
                    for_seconds=d.for_seconds,
                    severity=d.severity,
                    repeat_interval_seconds=d.repeat_interval_seconds,
                    default_key=d.key,
                )
            )
    return rows


@transaction.atomic
def create_default_rules(*, deployment) -> int:
    """Give a deployment the default rules once; later calls (and rules the user since deleted) change nothing."""
    state, _ = CollectorState.objects.get_or_create(deployment=deployment)
    state = CollectorState.objects.select_for_update().get(pk=state.pk)
    if state.state.get("defaults_created"):
        return 0
    rows = _default_rule_rows([deployment])
    AlertRule.objects.bulk_create(rows, ignore_conflicts=True)
    state.state = {**state.state, "defaults_created": True}
    state.save(update_fields=["state"])
    return len(rows)


def default_rules_ensure(*, deployment_ids: Sequence[int] | None = None) -> int:
    """Create the default rules of every listed (or every) live deployment that never had them, set-based."""
    from deployments.models import Deployment, DesiredState

    qs = Deployment.objects.exclude(desired_state=DesiredState.DELETED).select_related("project")
    if deployment_ids is not None:
        qs = qs.filter(pk__in=deployment_ids)
    missing = list(
        qs.exclude(pk__in=CollectorState.objects.filter(state__defaults_created=True).values("deployment_id"))
    )
    if not missing:
        return 0
    with transaction.atomic():
        AlertRule.objects.bulk_create(_default_rule_rows(missing), ignore_conflicts=True, batch_size=5000)
        have = set(CollectorState.objects.filter(deployment__in=missing).values_list("deployment_id", flat=True))
        CollectorState.objects.bulk_create(
            [CollectorState(deployment=d, state={"defaults_created": True}) for d in missing if d.pk not in have],
            batch_size=5000,
        )
        for state in CollectorState.objects.filter(deployment_id__in=have).select_for_update():
            state.state = {**state.state, "defaults_created": True}
            state.save(update_fields=["state"])
    return len(missing)


# -- rules ---------------------------------------------------------------------------------------------------------

RULE_FIELDS = (
    "name",
    "kind",
    "metric",
    "aggregation",
    "window_seconds",
    "operator",
    "threshold",
    "threshold_unit",
    "for_seconds",
    "severity",
    "enabled",
    "repeat_interval_seconds",
    "budget_scope",
)
# Spend only ever rises during a month: a budget is exceeded, never undershot.
BUDGET_OPERATORS = (">", ">=")
_BUDGET_AMOUNT = re.compile(r"^(\d{1,13})(?:\.(\d+))?$")


def _budget_minor(raw, currency: str) -> int:
    """A budget given as a decimal string in major units ("250.00") -> integer minor units of `currency`, exactly."""
    if isinstance(raw, str) and raw.strip().startswith("-"):
        raise ValidationError({"budget_amount": ["A budget is an amount above zero."]})
    match = _BUDGET_AMOUNT.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise ValidationError(
            {
                "budget_amount": [
                    f'Give the budget as a decimal string in {currency}, such as "250.00" (no exponent, no float).'
                ]
            }
        )
    digits = minor_units(currency)
    if len(match.group(2) or "") > digits:
        allowed = f"at most {digits} decimal places" if digits else "no decimal places"
        raise ValidationError({"budget_amount": [f"{currency} amounts have {allowed}."]})
    minor = round_half_up(Decimal(raw), currency)  # exact: the digits fit the currency's minor unit
    if minor <= 0:
        raise ValidationError({"budget_amount": ["A budget is an amount above zero."]})
    return minor


def _set_budget(rule: AlertRule, *, budget_amount, organization) -> None:
    """Store the budget in minor units of the billing account's currency, and its display-only float threshold."""
    from billing.selectors import billing_account_for

    if rule.kind != AlertRule.Kind.BUDGET:
        raise ValidationError({"budget_amount": [f"Only a budget rule has a budget; this is a {rule.kind} rule."]})
    currency = billing_account_for(organization=organization).currency
    rule.budget_minor, rule.budget_currency = _budget_minor(budget_amount, currency), currency
    rule.threshold = float(to_decimal(rule.budget_minor, currency))


def _validate_rule(rule: AlertRule) -> None:
    errors: dict[str, list[str]] = {}
    if rule.kind == AlertRule.Kind.METRIC:
        try:
            rule.metric = validate_metric_name(rule.metric)
        except ValueError as exc:
            errors["metric"] = [str(exc)]
    elif rule.kind == AlertRule.Kind.BUDGET:
        try:
            validate_budget_metric_name(rule.metric)
        except ValueError as exc:
            errors["metric"] = [str(exc)]
        if rule.operator not in BUDGET_OPERATORS:
            errors["operator"] = [f"A budget rule fires when spend is {' or '.join(BUDGET_OPERATORS)} the budget."]
        if rule.deployment_id is not None:
            errors["deployment"] = [
                "A budget rule watches the spend of the project or the organization "
                "(budget_scope), never one deployment."
            ]
        if rule.threshold_unit != AlertRule.ThresholdUnit.ABSOLUTE:
            errors["threshold_unit"] = ["A budget is an amount of money, not a percent of a tier limit."]
        if rule.budget_scope not in AlertRule.BudgetScope.values:
            errors["budget_scope"] = [f"Expected one of {', '.join(AlertRule.BudgetScope.values)}."]
        if rule.budget_minor is None and "budget_amount" not in errors:
            errors["budget_amount"] = ["A budget rule needs its amount."]
    elif rule.metric:
        errors["metric"] = [f"A {rule.kind} rule has no metric."]
    if rule.window_seconds < collect_interval_seconds():
        errors["window_seconds"] = [
            f"The window must be at least the collection interval ({collect_interval_seconds()} s)."
        ]
    if rule.window_seconds > RAW_RETENTION.total_seconds():
        errors["window_seconds"] = [f"The window must be at most {int(RAW_RETENTION.total_seconds())} s (48 h)."]
    if rule.kind != AlertRule.Kind.BUDGET and rule.budget_scope:
        errors["budget_scope"] = [f"Only a budget rule has a budget scope; this is a {rule.kind} rule."]
    if rule.threshold is None:
        errors["threshold"] = ["This field is required."]
    if (
        rule.threshold_unit == AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT
        and rule.kind == AlertRule.Kind.METRIC
        and rule.metric not in TIER_LIMIT_FIELDS
        and "metric" not in errors
    ):
        errors["threshold_unit"] = [f"Only {', '.join(TIER_LIMIT_FIELDS)} have a tier limit to take a percentage of."]
    if rule.repeat_interval_seconds is not None and rule.repeat_interval_seconds < collect_interval_seconds():
        errors["repeat_interval_seconds"] = [
            f"The repeat interval must be at least the collection interval ({collect_interval_seconds()} s)."
        ]
    if errors:
        raise ValidationError(errors)
    rule.full_clean(exclude=["organization", "project", "deployment", "channels"])


def _check_channels(organization, channels) -> list[NotificationChannel]:
    channels = list(channels or [])
    for channel in channels:
        if channel.organization_id != organization.pk:
            raise ValidationError({"channels": ["No such notification channel."]})
    return channels


def _rule_summary(rule: AlertRule) -> dict:
    summary = {f: getattr(rule, f) for f in RULE_FIELDS}
    summary["deployment"] = rule.deployment.public_id if rule.deployment_id else None
    if rule.budget_minor is not None:
        summary["budget_amount"] = str(to_decimal(rule.budget_minor, rule.budget_currency))
        summary["budget_currency"] = rule.budget_currency
    return summary


@transaction.atomic
def alert_rule_create(
    *, project, actor, deployment=None, channels=(), budget_amount: str | None = None, **fields
) -> AlertRule:
    """Create a rule. A budget rule (`kind="budget"`) takes `budget_amount`, a decimal string in the billing
    account's currency, instead of a threshold; its scope defaults to the project."""
    if deployment is not None and deployment.project_id != project.pk:
        raise ValidationError({"deployment": ["No such deployment in this project."]})
    unknown = set(fields) - set(RULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown rule fields {sorted(unknown)}")
    rule = AlertRule(organization=project.organization, project=project, deployment=deployment, **fields)
    if rule.kind == AlertRule.Kind.BUDGET:
        if fields.get("threshold") is not None:
            raise ValidationError({"threshold": ["A budget rule is set with budget_amount, not a threshold."]})
        rule.budget_scope = rule.budget_scope or AlertRule.BudgetScope.PROJECT
    if budget_amount is not None or rule.kind == AlertRule.Kind.BUDGET:
        if budget_amount is None:
            raise ValidationError({"budget_amount": ["A budget rule needs its amount."]})
        _set_budget(rule, budget_amount=budget_amount, organization=project.organization)
    _validate_rule(rule)
    rule.save()
    rule.channels.set(_check_channels(project.organization, channels))
    audit_record(
        actor=actor,
        organization=project.organization,
        action="alert_rule.create",
        target=rule,
        summary=_rule_summary(rule),
    )
    return rule


@transaction.atomic
def alert_rule_update(
    *, rule: AlertRule, actor, channels=None, budget_amount: str | None = None, **fields
) -> AlertRule:
    rule = (
        AlertRule.objects.select_for_update(of=("self",)).select_related("deployment", "organization").get(pk=rule.pk)
    )
    if rule.kind == AlertRule.Kind.BUDGET and "threshold" in fields:
        raise ValidationError({"threshold": ["A budget rule is set with budget_amount, not a threshold."]})
    changes = {}
    for name, value in fields.items():
        if name not in RULE_FIELDS:
            raise TypeError(f"unknown rule field {name!r}")
        if getattr(rule, name) != value:
            changes[name] = [getattr(rule, name), value]
            setattr(rule, name, value)
    if budget_amount is not None:
        before = (rule.budget_minor, rule.budget_currency)
        _set_budget(rule, budget_amount=budget_amount, organization=rule.organization)
        if (rule.budget_minor, rule.budget_currency) != before:
            changes["budget_amount"] = [
                None if before[0] is None else str(to_decimal(*before)),
                str(to_decimal(rule.budget_minor, rule.budget_currency)),
            ]
    _validate_rule(rule)
    rule.save()
    if channels is not None:
        channels = _check_channels(rule.organization, channels)
        rule.channels.set(channels)
        changes["channels"] = [c.public_id for c in channels]
    audit_record(actor=actor, organization=rule.organization, action="alert_rule.update", target=rule, summary=changes)
    return rule


@transaction.atomic
def alert_rule_delete(*, rule: AlertRule, actor) -> None:
    audit_record(
        actor=actor,
        organization=rule.organization,
        action="alert_rule.delete",
        target=rule,
        summary={"name": rule.name},
    )
    rule.delete()


# -- silences and acknowledgements ---------------------------------------------------------------------------------


def _validate_matchers(project, matchers: dict) -> dict:
    if not isinstance(matchers, dict):
        raise ValidationError({"matchers": ["Matchers must be an object."]})
    unknown = sorted(set(matchers) - set(Silence.MATCHER_KEYS))
    if unknown:
        raise ValidationError(
            {"matchers": [f"Unknown matcher {', '.join(unknown)}; expected {', '.join(Silence.MATCHER_KEYS)}."]}
        )
    for key, value in matchers.items():
        if not isinstance(value, str) or not value:
            raise ValidationError({f"matchers.{key}": ["A matcher is a non-empty string."]})
    if "metric" in matchers and matchers["metric"] not in BUDGET_METRICS:
        try:
            matchers["metric"] = validate_metric_name(matchers["metric"])
        except ValueError as exc:
            raise ValidationError({"matchers.metric": [str(exc)]}) from exc
    if "severity" in matchers and matchers["severity"] not in evaluation.SEVERITIES:
        raise ValidationError({"matchers.severity": [f"Expected one of {', '.join(evaluation.SEVERITIES)}."]})
    if "deployment" in matchers and not project.deployments.filter(public_id=matchers["deployment"]).exists():
        raise ValidationError({"matchers.deployment": ["No such deployment in this project."]})
    if "rule" in matchers and not AlertRule.objects.filter(project=project, public_id=matchers["rule"]).exists():
        raise ValidationError({"matchers.rule": ["No such alert rule in this project."]})
    return matchers


@transaction.atomic
def silence_create(
    *, project, actor, matchers: dict, starts_at: dt.datetime | None, ends_at: dt.datetime, comment: str = ""
) -> Silence:
    starts_at = starts_at or timezone.now()
    if ends_at is None:
        raise ValidationError({"ends_at": ["A silence needs an end."]})
    if ends_at <= starts_at:
        raise ValidationError({"ends_at": ["The end must be after the start."]})
    silence = Silence(
        organization=project.organization,
        project=project,
        matchers=_validate_matchers(project, dict(matchers or {})),
        starts_at=starts_at,
        ends_at=ends_at,
        comment=comment,
        created_by=acting_user(actor),
    )
    silence.full_clean(exclude=["organization", "project", "created_by"])
    silence.save()
    audit_record(
        actor=actor,
        organization=project.organization,
        action="silence.create",
        target=silence,
        summary={
            "matchers": silence.matchers,
            "starts_at": starts_at.isoformat(),
            "ends_at": ends_at.isoformat(),
            "comment": comment,
        },
    )
    return silence


@transaction.atomic
def silence_expire(*, silence: Silence, actor) -> Silence:
    """End a silence now; it stays in the list as history."""
    now = timezone.now()
    if silence.ends_at > now:
        silence.ends_at = max(now, silence.starts_at + dt.timedelta(microseconds=1))
        silence.save(update_fields=["ends_at"])
    audit_record(
        actor=actor,
        organization=silence.organization,
        action="silence.expire",
        target=silence,
        summary={"ends_at": silence.ends_at.isoformat()},
    )
    return silence


def silence_matches(silence: Silence, *, deployment: str | None, rule: str, metric: str, severity: str) -> bool:
    """Whether a silence's matchers all hold for an alert of this rule (public ids) about this deployment (None for a
    budget alert, which no deployment matcher matches)."""
    wanted = {"deployment": deployment, "rule": rule, "metric": metric, "severity": severity}
    return all(wanted.get(key) == value for key, value in silence.matchers.items())


@transaction.atomic
def alert_acknowledge(*, alert: Alert, actor, until: dt.datetime, comment: str = "") -> Alert:
    now = timezone.now()
    if until <= now:
        raise ValidationError({"until": ["Acknowledge until a time in the future."]})
    alert = Alert.objects.select_for_update().get(pk=alert.pk)
    if alert.status != AlertStatus.FIRING:
        from controlplane.api.problems import Conflict

        raise Conflict(f"Only a firing alert can be acknowledged; this one is {alert.status}.")
    alert.acknowledged_until, alert.acknowledgement_comment = until, comment
    alert.acknowledged_by = acting_user(actor)
    alert.save(update_fields=["acknowledged_until", "acknowledgement_comment", "acknowledged_by"])
    AlertEvent.objects.create(
        alert=alert, kind=AlertEvent.Kind.ACKNOWLEDGED, message=f"until {until.isoformat()}: {comment}"[:500]
    )
    audit_record(
        actor=actor,
        organization=alert.organization,
        action="alert.acknowledge",
        target=alert,
        summary={"until": until.isoformat(), "comment": comment},
    )
    return alert


# -- evaluation ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvaluationSummary:
    rules: int = 0
    evaluated: int = 0
    changed: int = 0
    notifications: int = 0


def _aggregates(*, deployment_ids, pairs: dict[int, set[str]], now: dt.datetime) -> dict:
    """(deployment id, metric, window) -> {avg, min, max, sum, count, last} over `now - window < ts <= now`."""
    out: dict[tuple[int, str, int], dict] = {}
    for window, names in pairs.items():
        qs = MetricSample.objects.filter(ts__gt=now - dt.timedelta(seconds=window), ts__lte=now, name__in=names)
        if deployment_ids is not None:
            qs = qs.filter(deployment_id__in=deployment_ids)
        rows = (
            qs.values("deployment_id", "name")
            .annotate(avg=Avg("value"), min=Min("value"), max=Max("value"), sum=Sum("value"), count=Count("id"))
            .order_by()
        )
        for row in rows:
            out[(row["deployment_id"], row["name"], window)] = row
    return out


def _last_values(*, deployment_ids, needed: dict[int, set[str]], now: dt.datetime) -> dict:
    out = {}
    for window, names in needed.items():
        qs = MetricSample.objects.filter(ts__gt=now - dt.timedelta(seconds=window), ts__lte=now, name__in=names)
        if deployment_ids is not None:
            qs = qs.filter(deployment_id__in=deployment_ids)
        if connection.vendor == "postgresql":
            rows = (
                qs.order_by("deployment_id", "name", "-ts")
                .distinct("deployment_id", "name")
                .values_list("deployment_id", "name", "value")
            )
        else:
            rows = qs.order_by("deployment_id", "name", "ts").values_list("deployment_id", "name", "value")
        for dep, name, value in rows:
            out[(dep, name, window)] = value
    return out


def _facts(kind: str, deployment_ids) -> dict[int, float]:
    """Per-deployment values of the non-metric rules, from the deployments app's models when it has them."""
    from django.apps import apps

    models_ = apps.all_models.get("deployments", {})
    if kind == AlertRule.Kind.CERTIFICATE_EXPIRY:
        model = models_.get("tlscertificate")
        field = next((f for f in ("not_after", "expires_at") if model and _has_field(model, f)), None)
        if model is None or field is None:
            return {}
        qs = model.objects.filter(deployment_id__in=deployment_ids).values("deployment_id").annotate(v=Min(field))
        now = timezone.now()
        return {r["deployment_id"]: (r["v"] - now).total_seconds() / 86400 for r in qs if r["v"]}
    if kind == AlertRule.Kind.VPC_PEERING:
        model = models_.get("vpcpeering")
        if model is None or not _has_field(model, "status"):
            return {}
        qs = (
            model.objects.filter(deployment_id__in=deployment_ids)
            .values("deployment_id")
            .annotate(v=Count("id", filter=Q(status="failed")))
        )
        return {r["deployment_id"]: float(r["v"]) for r in qs}
    return {}


def _has_field(model, name: str) -> bool:
    return any(f.name == name for f in model._meta.get_fields())


def _spec_for(rule_row: dict, cache: dict) -> evaluation.RuleSpec:
    """The pure evaluator's spec; aggregation happened in SQL, so it aggregates the one value it is given."""
    key = (
        rule_row["metric"] or "rule_resource_down",
        rule_row["window_seconds"],
        rule_row["operator"],
        rule_row["threshold"],
        rule_row["threshold_unit"],
        rule_row["for_seconds"],
        rule_row["severity"],
        rule_row["repeat_interval_seconds"],
    )
    spec = cache.get(key)
    if spec is None:
        # Non-metric rules carry no metric; the evaluator only validates the name, so any vocabulary name stands in.
        spec = evaluation.RuleSpec(
            metric=key[0],
            aggregation="last",
            window_seconds=key[1],
            operator=key[2],
            threshold=key[3],
            threshold_is_percent=key[4] == AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT,
            for_seconds=key[5],
            severity=key[6],
            repeat_interval_seconds=key[7],
        )
        cache[key] = spec
    return spec


def _maintenance_ids(deployment_ids, now: dt.datetime | None = None) -> set[int]:
    """Deployments in maintenance at `now`: a restart in flight, or an announced window covering it. One query."""
    from deployments.models import ACTIVE_OPERATION_STATES, OPEN_MAINTENANCE_STATES, MaintenanceWindow, Operation

    now = now or timezone.now()
    restarting = Operation.objects.filter(kind=Operation.Kind.RESTART, status__in=ACTIVE_OPERATION_STATES)
    windows = MaintenanceWindow.objects.filter(status__in=OPEN_MAINTENANCE_STATES, starts_at__lte=now, ends_at__gt=now)
    if deployment_ids is not None:
        restarting = restarting.filter(deployment_id__in=deployment_ids)
        windows = windows.filter(deployment_id__in=deployment_ids)
    # order_by(): the models' default ordering has no place in a UNION (SQLite refuses it outright).
    return set(
        restarting.order_by()
        .values_list("deployment_id", flat=True)
        .union(windows.order_by().values_list("deployment_id", flat=True))
    )


_RULE_ROW_FIELDS = (
    "id",
    "public_id",
    "organization_id",
    "project_id",
    "deployment_id",
    "name",
    "kind",
    "metric",
    "aggregation",
    "window_seconds",
    "operator",
    "threshold",
    "threshold_unit",
    "for_seconds",
    "severity",
    "repeat_interval_seconds",
)
# Kinds rules_evaluate decides per deployment; budget rules have their own evaluation (budget_rules_evaluate).
DEPLOYMENT_RULE_KINDS = (AlertRule.Kind.METRIC, AlertRule.Kind.CERTIFICATE_EXPIRY, AlertRule.Kind.VPC_PEERING)


def _rules_of(live: dict, ids, kinds) -> QuerySet:
    rule_qs = AlertRule.objects.filter(enabled=True, kind__in=kinds)
    if ids is not None:
        projects = {v[1] for v in live.values()}
        rule_qs = rule_qs.filter(Q(deployment_id__in=ids) | Q(deployment__isnull=True, project_id__in=projects))
    return rule_qs


def _targets(rule: dict, live: dict, project_deployments: dict) -> list[int]:
    if rule["deployment_id"]:
        return [rule["deployment_id"]] if rule["deployment_id"] in live else []
    return project_deployments.get(rule["project_id"], [])


def _metric_candidates_python(*, now, ids, live, project_deployments) -> list[tuple[int, int, float | None]]:
    """(rule id, deployment id, value) of the metric rules that are breached now or hold an unresolved alert.

    Every rule and every aggregate is read into Python; the embedded SQLite default has few of each.
    """
    rule_rows = list(_rules_of(live, ids, [AlertRule.Kind.METRIC]).values(*_RULE_ROW_FIELDS))
    windows: dict[int, set[str]] = defaultdict(set)
    last_needed: dict[int, set[str]] = defaultdict(set)
    for rule in rule_rows:
        windows[rule["window_seconds"]].add(rule["metric"])
        if rule["aggregation"] == "last":
            last_needed[rule["window_seconds"]].add(rule["metric"])
    aggregates = _aggregates(deployment_ids=ids, pairs=windows, now=now)
    lasts = _last_values(deployment_ids=ids, needed=last_needed, now=now) if last_needed else {}
    unresolved = set(
        Alert.objects.filter(rule_id__in=[r["id"] for r in rule_rows])
        .exclude(status=AlertStatus.RESOLVED)
        .values_list("rule_id", "deployment_id")
    )
    spec_cache: dict = {}
    out = []
    for rule in rule_rows:
        spec = _spec_for(rule, spec_cache)
        limit_field = TIER_LIMIT_FIELDS.get(rule["metric"])
        for dep_id in _targets(rule, live, project_deployments):
            key = (dep_id, rule["metric"], rule["window_seconds"])
            if rule["aggregation"] == "last":
                value = lasts.get(key)
            else:
                agg = aggregates.get(key)
                value = None if agg is None else float(agg[rule["aggregation"]])
            _, _, max_conn, mps = live[dep_id]
            tier_limit = {"max_connections": max_conn, "messages_per_second": mps}.get(limit_field)
            if (rule["id"], dep_id) in unresolved or _breached(spec, value, tier_limit):
                out.append((rule["id"], dep_id, value))
    return out


def _metric_candidates_sql(*, now, ids) -> list[tuple[int, int, float | None]]:
    """The same answer as _metric_candidates_python, computed by PostgreSQL in one statement.

    With 10,000 deployments there are 100,000 metric rules and 80,000 aggregates, of which a few hundred matter:
    the breach test runs where the data is, with the same float arithmetic as `_breached`, and only the pairs that
    are breached or hold an unresolved alert come back. tests/alerts pins both paths to the same candidates.
    """
    from deployments.models import Deployment, DesiredState, Tier

    q = connection.ops.quote_name
    params: dict = {
        "now": now,
        "deleted": DesiredState.DELETED,
        "metric": AlertRule.Kind.METRIC,
        "percent": AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT,
        "unresolved": [AlertStatus.PENDING, AlertStatus.FIRING],
        "ids": ids,
    }
    limit_cases = []
    for i, (metric, field) in enumerate(sorted(TIER_LIMIT_FIELDS.items())):
        params[f"limit_metric_{i}"] = metric
        limit_cases.append(f"WHEN %(limit_metric_{i})s THEN l.{q(Tier._meta.get_field(field).column)}")
    # A limit of zero or none makes a percent threshold unbreachable, as in _breached.
    threshold = (
        f"CASE WHEN r.threshold_unit = %(percent)s THEN NULLIF(CASE r.metric {' '.join(limit_cases)} END, 0) "
        f"* r.threshold / 100.0::float8 ELSE r.threshold END"
    )
    only_ids = "AND d.id = ANY(%(ids)s)" if ids is not None else ""
    only_sample_ids = "AND s.deployment_id = ANY(%(ids)s)" if ids is not None else ""
    tier_columns = ", ".join(f"t.{q(Tier._meta.get_field(f).column)}" for f in sorted(set(TIER_LIMIT_FIELDS.values())))
    operators = " ".join(
        f"WHEN '{op}' THEN v.value {op if op != '==' else '='} v.threshold" for op in AlertRule.Operator.values
    )
    rule_table, sample_table = q(AlertRule._meta.db_table), q(MetricSample._meta.db_table)
    pair_columns = (
        f"r.id AS rule_id, l.id AS deployment_id, r.metric, r.aggregation, r.window_seconds, r.operator, "
        f"{threshold} AS threshold"
    )
    window = "s.ts > %(now)s - make_interval(secs => w.window_seconds) AND s.ts <= %(now)s"
    sql = f"""
    WITH live AS (
        SELECT d.id, d.project_id, {tier_columns}
          FROM {q(Deployment._meta.db_table)} d JOIN {q(Tier._meta.db_table)} t ON t.id = d.tier_id
         WHERE d.desired_state <> %(deleted)s {only_ids}
    ), pairs AS (
        SELECT {pair_columns} FROM {rule_table} r JOIN live l ON l.id = r.deployment_id
         WHERE r.enabled AND r.kind = %(metric)s
        UNION ALL
        SELECT {pair_columns} FROM {rule_table} r JOIN live l ON l.project_id = r.project_id
         WHERE r.enabled AND r.kind = %(metric)s AND r.deployment_id IS NULL
    ), windows AS (
        SELECT metric, window_seconds, bool_or(aggregation = 'last') AS needs_last FROM pairs GROUP BY 1, 2
    ), agg AS (
        SELECT s.deployment_id, s.name, w.window_seconds, avg(s.value) AS avg, max(s.value) AS max,
               min(s.value) AS min, sum(s.value) AS sum, count(*)::float8 AS count
          FROM {sample_table} s JOIN windows w ON w.metric = s.name AND {window} {only_sample_ids}
         GROUP BY 1, 2, 3
    ), lasts AS (
        SELECT DISTINCT ON (s.deployment_id, s.name, w.window_seconds) s.deployment_id, s.name, w.window_seconds,
               s.value
          FROM {sample_table} s JOIN windows w ON w.needs_last AND w.metric = s.name AND {window} {only_sample_ids}
         ORDER BY s.deployment_id, s.name, w.window_seconds, s.ts DESC
    ), valued AS (
        SELECT p.rule_id, p.deployment_id, p.operator, p.threshold,
               CASE p.aggregation WHEN 'avg' THEN a.avg WHEN 'max' THEN a.max WHEN 'min' THEN a.min
                                  WHEN 'sum' THEN a.sum WHEN 'count' THEN a.count WHEN 'last' THEN la.value END AS value
          FROM pairs p
          LEFT JOIN agg a ON a.deployment_id = p.deployment_id AND a.name = p.metric
                         AND a.window_seconds = p.window_seconds
          LEFT JOIN lasts la ON la.deployment_id = p.deployment_id AND la.name = p.metric
                            AND la.window_seconds = p.window_seconds
    )
    SELECT v.rule_id, v.deployment_id, v.value
      FROM valued v
      LEFT JOIN {q(Alert._meta.db_table)} al ON al.rule_id = v.rule_id AND al.deployment_id = v.deployment_id
     WHERE al.status = ANY(%(unresolved)s) OR CASE v.operator {operators} END
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(rule_id, dep_id, value) for rule_id, dep_id, value in cursor.fetchall()]


def _fact_candidates(*, ids, live, project_deployments) -> list[tuple[int, int, float | None]]:
    """(rule id, deployment id, value) of the certificate and VPC-peering rules that have a value or an alert."""
    kinds = [AlertRule.Kind.CERTIFICATE_EXPIRY, AlertRule.Kind.VPC_PEERING]
    facts = {kind: _facts(kind, ids if ids is not None else list(live)) for kind in kinds}
    with_alerts = Alert.objects.filter(rule__kind__in=kinds)
    if ids is not None:
        with_alerts = with_alerts.filter(deployment_id__in=ids)
    alerted = set(with_alerts.values_list("rule_id", "deployment_id"))
    # Only rules that can matter are read: those of deployments with a fact, project-wide ones, and alerted ones.
    with_facts = {dep for values in facts.values() for dep in values}
    if not with_facts and not alerted:
        return []
    rule_qs = _rules_of(live, ids, kinds).filter(
        Q(deployment_id__in=with_facts) | Q(deployment__isnull=True) | Q(pk__in={r for r, _ in alerted})
    )
    out = []
    for rule_id, kind, deployment_id, project_id in rule_qs.values_list("id", "kind", "deployment_id", "project_id"):
        targets = _targets({"deployment_id": deployment_id, "project_id": project_id}, live, project_deployments)
        for dep_id in targets:
            value = facts[kind].get(dep_id)
            if value is not None or (rule_id, dep_id) in alerted:
                out.append((rule_id, dep_id, value))
    return out


def rules_evaluate(*, now: dt.datetime | None = None, deployment_ids: Sequence[int] | None = None) -> EvaluationSummary:
    """Evaluate every enabled rule against every deployment it covers (all live ones, or those listed).

    Only the (rule, deployment) pairs that can change anything are read in full: those breached now and those
    holding an unresolved alert (on PostgreSQL the breach test itself runs in the database). Their lifecycle is
    alerts.evaluation's pure `evaluate`; writes are one statement per kind of row.
    """
    from deployments.models import Deployment, DesiredState

    now = now or timezone.now()
    ids = list(deployment_ids) if deployment_ids is not None else None
    default_rules_ensure(deployment_ids=ids)

    deployments_qs = Deployment.objects.exclude(desired_state=DesiredState.DELETED)
    if ids is not None:
        deployments_qs = deployments_qs.filter(pk__in=ids)
    live = {
        row[0]: row[1:]
        for row in deployments_qs.values_list(
            "pk", "public_id", "project_id", "tier__max_connections", "tier__messages_per_second"
        )
    }
    if ids is not None:
        ids = list(live)
    project_deployments: dict[int, list[int]] = defaultdict(list)
    for dep_id, (_, project_id, _, _) in live.items():
        project_deployments[project_id].append(dep_id)

    if connection.vendor == "postgresql":
        candidates = _metric_candidates_sql(now=now, ids=ids)
    else:
        candidates = _metric_candidates_python(now=now, ids=ids, live=live, project_deployments=project_deployments)
    candidates += _fact_candidates(ids=ids, live=live, project_deployments=project_deployments)
    summary = EvaluationSummary(rules=_rules_of(live, ids, DEPLOYMENT_RULE_KINDS).count())
    if not candidates:
        return summary  # the usual minute of a healthy deployment: nothing breached, nothing to resolve

    rules = {r["id"]: r for r in AlertRule.objects.filter(pk__in={c[0] for c in candidates}).values(*_RULE_ROW_FIELDS)}
    alerts = {
        (a.rule_id, a.deployment_id): a
        for a in Alert.objects.filter(rule_id__in=rules, deployment_id__in={c[1] for c in candidates})
    }
    silences_by_project: dict[int, list[Silence]] = defaultdict(list)
    for silence in Silence.objects.filter(
        project_id__in={r["project_id"] for r in rules.values()}, starts_at__lte=now, ends_at__gt=now
    ):
        silences_by_project[silence.project_id].append(silence)
    maintenance = _maintenance_ids(ids, now=now)

    spec_cache: dict = {}
    new_alerts: list[Alert] = []
    changed_alerts: list[Alert] = []
    events: list[tuple[Alert, str, float | None, str]] = []
    notifications: list[tuple[Alert, str]] = []

    for rule_id, dep_id, value in candidates:
        rule = rules[rule_id]
        public_id, _, max_conn, mps = live[dep_id]
        alert = alerts.get((rule_id, dep_id))
        limit_field = TIER_LIMIT_FIELDS.get(rule["metric"])
        tier_limit = {"max_connections": max_conn, "messages_per_second": mps}.get(limit_field)
        spec = _spec_for(rule, spec_cache)
        breached = _breached(spec, value, tier_limit)
        if not breached and (alert is None or alert.status == AlertStatus.RESOLVED):
            continue  # a fact with a value that breaches nothing, and no alert to resolve
        silenced = any(
            silence_matches(
                silence, deployment=public_id, rule=rule["public_id"], metric=rule["metric"], severity=rule["severity"]
            )
            for silence in silences_by_project.get(rule["project_id"], ())
        )
        state = (
            None
            if alert is None
            else evaluation.AlertState(
                status=alert.status,
                since=alert.since,
                last_notified_at=alert.last_notified_at,
                acknowledged_until=alert.acknowledged_until,
                silenced=silenced,
            )
        )
        in_maintenance = dep_id in maintenance
        # A new alert has no state to carry the silence: the evaluator's other withholding switch stands in for it.
        transition = evaluation.evaluate(
            spec,
            [] if value is None else [(now, value)],
            now,
            state,
            tier_limit,
            maintenance=in_maintenance or (silenced and alert is None),
        )
        summary.evaluated += 1
        if transition.status is None:
            continue
        if alert is None:
            alert = Alert(
                organization_id=rule["organization_id"],
                project_id=rule["project_id"],
                rule_id=rule["id"],
                deployment_id=dep_id,
                status=transition.status,
                since=now,
                severity=rule["severity"],
                created_at=now,
            )
            new_alerts.append(alert)
        elif (
            not transition.changed
            and transition.notify is None
            and (value is None or alert.status == AlertStatus.RESOLVED)
        ):
            continue
        else:
            changed_alerts.append(alert)
        alert.severity = rule["severity"]
        alert.last_evaluated_at = now
        if value is not None:
            alert.value, alert.threshold = value, transition.threshold
        alert.summary = _alert_summary(rule, public_id, value, transition.threshold)[:300]
        if transition.changed:
            summary.changed += 1
            _apply_transition(alert, transition, now)
            events.append((alert, transition.status, value, transition.reason))
            if transition.suppressed_by:
                events.append(
                    (
                        alert,
                        AlertEvent.Kind.SUPPRESSED,
                        value,
                        f"notification withheld: {'silence' if silenced else 'maintenance'}",
                    )
                )
        if transition.notify is not None:
            _note_notification(alert, transition, value, now, events, notifications)

    summary.notifications = _evaluation_save(
        new_alerts=new_alerts,
        changed_alerts=changed_alerts,
        fields=_ALERT_STATE_FIELDS,
        events=events,
        notifications=notifications,
        rule_objects=None,
        live=live,
        now=now,
    )
    return summary


_ALERT_STATE_FIELDS = [
    "status",
    "since",
    "fired_at",
    "resolved_at",
    "severity",
    "value",
    "threshold",
    "summary",
    "last_evaluated_at",
    "last_notified_at",
    "acknowledged_until",
]


def _note_notification(
    alert: Alert,
    transition: evaluation.Transition,
    value: float | None,
    now: dt.datetime,
    events: list,
    notifications: list,
) -> None:
    kind = {"fire": Delivery.Kind.FIRE, "resolve": Delivery.Kind.RESOLVE, "repeat": Delivery.Kind.REPEAT}[
        transition.notify
    ]
    alert.last_notified_at = None if kind == Delivery.Kind.RESOLVE else now
    notifications.append((alert, kind))
    events.append((alert, AlertEvent.Kind.NOTIFIED, value, f"{kind} notification"))


def _evaluation_save(
    *,
    new_alerts: list[Alert],
    changed_alerts: list[Alert],
    fields: list[str],
    events: list,
    notifications: list[tuple[Alert, str]],
    rule_objects: dict[int, AlertRule] | None,
    live: dict,
    now: dt.datetime,
) -> int:
    """Write what an evaluation decided, one statement per kind of row; returns the notifications queued.

    A concurrent evaluation may have created one of the new alerts first: the unique constraints keep theirs, and
    this run's copy is dropped with its events and notifications (theirs went out). The public id, generated here
    for each new alert, tells which insert won.
    """
    if not (new_alerts or changed_alerts):
        return 0
    with transaction.atomic():
        if new_alerts:
            Alert.objects.bulk_create(new_alerts, ignore_conflicts=True, batch_size=5000)
            saved = dict(
                Alert.objects.filter(public_id__in=[a.public_id for a in new_alerts]).values_list("public_id", "pk")
            )
            for alert in new_alerts:
                alert.pk = saved.get(alert.public_id)
        _alerts_update(changed_alerts, fields)
        AlertEvent.objects.bulk_create(
            [
                AlertEvent(alert_id=a.pk, kind=k, value=v, message=m[:500], created_at=now)
                for a, k, v, m in events
                if a.pk
            ],
            batch_size=5000,
        )
        notifications = [(a, k) for a, k in notifications if a.pk]
        if not notifications:
            return 0
        if rule_objects is None:
            rule_objects = AlertRule.objects.select_related("project", "organization", "deployment").in_bulk(
                {a.rule_id for a, _ in notifications}
            )
        return _notify_alerts(notifications, rule_objects, live, now)


def _alerts_update(alerts: list[Alert], fields: list[str]) -> None:
    """Save these fields of many alerts in one statement.

    On PostgreSQL an UPDATE … FROM unnest(arrays): Django's bulk_update builds a CASE WHEN per field and row, which
    takes seconds for the few hundred firing alerts a full evaluation refreshes.
    """
    if not alerts:
        return
    if connection.vendor != "postgresql":
        Alert.objects.bulk_update(alerts, fields, batch_size=500)
        return
    q = connection.ops.quote_name
    columns = [Alert._meta.get_field(name) for name in fields]
    arrays = [[a.pk for a in alerts]] + [
        [f.get_db_prep_save(getattr(a, f.attname), connection) for a in alerts] for f in columns
    ]
    unnest = ", ".join(["%s::bigint[]"] + [f"%s::{f.db_type(connection)}[]" for f in columns])
    names = ", ".join(q(f.column) for f in columns)
    assignments = ", ".join(f"{q(f.column)} = v.{q(f.column)}" for f in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {q(Alert._meta.db_table)} AS a SET {assignments} "
            f"FROM unnest({unnest}) AS v(id, {names}) WHERE a.id = v.id",
            arrays,
        )


def _apply_transition(alert: Alert, transition: evaluation.Transition, now: dt.datetime) -> None:
    """Carry the evaluator's change of status onto the alert row."""
    alert.status, alert.since = transition.status, transition.since
    if transition.status == AlertStatus.FIRING:
        alert.fired_at, alert.resolved_at = now, None
    elif transition.status == AlertStatus.RESOLVED:
        alert.resolved_at, alert.acknowledged_until = now, None


def _breached(spec: evaluation.RuleSpec, value: float | None, tier_limit) -> bool:
    if value is None:
        return False
    if spec.threshold_is_percent:
        if not tier_limit:
            return False
        return evaluation.OPERATORS[spec.operator](value, tier_limit * spec.threshold / 100.0)
    return evaluation.OPERATORS[spec.operator](value, spec.threshold)


def _alert_summary(rule: dict, deployment_public_id: str, value, threshold) -> str:
    what = rule["metric"] or rule["kind"]
    shown = "no data" if value is None else f"{value:g}"
    limit = "" if threshold is None else f" (threshold {rule['operator']} {threshold:g})"
    return f"{rule['name']}: {what} = {shown}{limit} on {deployment_public_id}"


def _routes(rules: Iterable[AlertRule]) -> dict[int, list[NotificationChannel]]:
    """Rule id -> the enabled channels it notifies: its own, or its organization's defaults when it names none."""
    rules = list(rules)
    through = AlertRule.channels.through
    named: dict[int, list[int]] = defaultdict(list)
    for rule_id, channel_id in through.objects.filter(alertrule_id__in=[r.pk for r in rules]).values_list(
        "alertrule_id", "notificationchannel_id"
    ):
        named[rule_id].append(channel_id)
    organizations = {r.organization_id for r in rules}
    channels = {
        c.pk: c
        for c in NotificationChannel.objects.filter(
            Q(pk__in=[c for ids in named.values() for c in ids]) | Q(organization_id__in=organizations, is_default=True)
        )
    }
    defaults: dict[int, list[NotificationChannel]] = defaultdict(list)
    for channel in channels.values():
        if channel.is_default:
            defaults[channel.organization_id].append(channel)
    routes = {}
    for rule in rules:
        chosen = [channels[c] for c in named[rule.pk]] if rule.pk in named else defaults[rule.organization_id]
        routes[rule.pk] = [c for c in chosen if c.enabled]
    return routes


def _subject_of(rule: AlertRule, deployment_public_id: str | None) -> dict:
    """What an alert is about: its deployment, or for a budget rule the project or organization whose spend it is."""
    if deployment_public_id is not None:
        return {"type": "deployment", "id": deployment_public_id}
    if rule.budget_scope == AlertRule.BudgetScope.ORGANIZATION:
        return {"type": "organization", "id": rule.organization.public_id}
    return {"type": "project", "id": rule.project.public_id}


def _budget_of(alert: Alert, rule: AlertRule) -> dict | None:
    """A budget alert's money, as exact decimal strings in major units: never a float."""
    if alert.spend_minor is None or not alert.currency:
        return None
    return {
        "metric": rule.metric,
        "scope": rule.budget_scope,
        "currency": alert.currency,
        "spend": str(to_decimal(alert.spend_minor, alert.currency)),
        "budget": str(to_decimal(alert.budget_minor, alert.currency)),
    }


def _alert_payload(
    alert: Alert, rule: AlertRule, kind: str, deployment_public_id: str | None, now: dt.datetime
) -> dict:
    event = {"fire": "alert.firing", "repeat": "alert.firing", "resolve": "alert.resolved"}[kind]
    return {
        "event": event,
        "repeat": kind == Delivery.Kind.REPEAT,
        "alert": alert.public_id,
        "status": alert.status,
        "severity": alert.severity,
        "summary": alert.summary,
        "value": alert.value,
        "threshold": alert.threshold,
        "rule": {"id": rule.public_id, "name": rule.name, "metric": rule.metric or None, "kind": rule.kind},
        "organization": rule.organization.public_id,
        "project": rule.project.public_id,
        "deployment": deployment_public_id,
        "subject": _subject_of(rule, deployment_public_id),
        "budget": _budget_of(alert, rule),
        "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "sent_at": now.isoformat(),
    }


def _notify_alerts(notifications, rule_objects: dict[int, AlertRule], live: dict, now: dt.datetime) -> int:
    routes = _routes(rule_objects.values())
    deliveries = []
    for alert, kind in notifications:
        rule = rule_objects[alert.rule_id]
        deployment_public_id = live[alert.deployment_id][0] if alert.deployment_id is not None else None
        payload = _alert_payload(alert, rule, kind, deployment_public_id, now)
        for channel in routes[rule.pk]:
            deliveries.append(
                Delivery(
                    organization_id=rule.organization_id,
                    channel=channel,
                    alert_id=alert.pk,
                    kind=kind,
                    payload=payload,
                    created_at=now,
                )
            )
    _enqueue_deliveries(deliveries)
    return len(deliveries)


def _enqueue_deliveries(deliveries: list[Delivery]) -> None:
    Delivery.objects.bulk_create(deliveries, batch_size=1000)
    ids = [d.pk for d in deliveries]

    def enqueue():
        from alerts.tasks import deliver_notification

        for pk in ids:
            publish(deliver_notification, pk, 0)

    transaction.on_commit(enqueue)


# -- budget rules --------------------------------------------------------------------------------------------------

_BUDGET_LABELS = {SPEND_MONTH_TO_DATE: "month-to-date spend", SPEND_FORECAST: "forecast spend"}
_NOT = {">": "<=", ">=": "<"}


def _budget_spec(rule: AlertRule) -> evaluation.RuleSpec:
    """The pure evaluator's spec for a budget rule. The evaluator compares floats, so money is compared here, in
    integer minor units, and the evaluator is only told whether the budget is exceeded (1) or not (0)."""
    # Budget rules carry no broker metric; the evaluator only validates the name, so a vocabulary name stands in.
    return evaluation.RuleSpec(
        metric="rule_resource_down",
        aggregation="last",
        window_seconds=60,
        operator=">",
        threshold=0,
        for_seconds=rule.for_seconds,
        severity=rule.severity,
        repeat_interval_seconds=rule.repeat_interval_seconds,
    )


def _budget_summary(rule: AlertRule, spend_minor: int, currency: str, exceeded: bool) -> str:
    subject = (
        f"organization {rule.organization.name}"
        if rule.budget_scope == AlertRule.BudgetScope.ORGANIZATION
        else f"project {rule.project.name}"
    )
    operator = rule.operator if exceeded else _NOT[rule.operator]
    return (
        f"{rule.name}: {_BUDGET_LABELS[rule.metric]} {to_decimal(spend_minor, currency)} {currency} {operator} "
        f"{to_decimal(rule.budget_minor, currency)} {currency} on {subject}"
    )


def budget_rules_evaluate(*, now: dt.datetime | None = None) -> EvaluationSummary:
    """Evaluate every enabled budget rule against this month's spend of its project or its organization.

    Spend comes from billing's selectors, computed once per organization or (organization, project) that some rule
    needs, never once per rule; it is compared with the budget in integer minor units. The lifecycle (pending,
    firing, resolved, acknowledgements, silences, repeats) is alerts.evaluation's pure `evaluate`, as for metrics.
    """
    from billing.selectors import billing_account_for, spend_month_to_date

    now = now or timezone.now()
    rules = list(
        AlertRule.objects.filter(enabled=True, kind=AlertRule.Kind.BUDGET).select_related("organization", "project")
    )
    summary = EvaluationSummary(rules=len(rules))
    if not rules:
        return summary

    accounts: dict[int, object] = {}
    spends: dict[tuple[int, int | None], object] = {}
    for rule in rules:
        key = (rule.organization_id, rule.project_id if rule.budget_scope == AlertRule.BudgetScope.PROJECT else None)
        if key not in spends:
            if rule.organization_id not in accounts:
                accounts[rule.organization_id] = billing_account_for(organization=rule.organization)
            spends[key] = spend_month_to_date(account=accounts[rule.organization_id], now=now, project_id=key[1])
    alerts = {a.rule_id: a for a in Alert.objects.filter(rule_id__in=[r.pk for r in rules], deployment__isnull=True)}
    silences_by_project: dict[int, list[Silence]] = defaultdict(list)
    for silence in Silence.objects.filter(
        project_id__in={r.project_id for r in rules}, starts_at__lte=now, ends_at__gt=now
    ):
        silences_by_project[silence.project_id].append(silence)

    new_alerts: list[Alert] = []
    changed_alerts: list[Alert] = []
    events: list[tuple[Alert, str, float | None, str]] = []
    notifications: list[tuple[Alert, str]] = []
    for rule in rules:
        spend = spends[
            (rule.organization_id, rule.project_id if rule.budget_scope == AlertRule.BudgetScope.PROJECT else None)
        ]
        if spend.currency != rule.budget_currency:
            # Comparing across currencies would invent an exchange rate: the rule waits for a budget in the new one.
            logger.warning(
                "budget rule %s is in %s but its billing account bills in %s: not evaluated",
                rule.public_id,
                rule.budget_currency,
                spend.currency,
            )
            continue
        amount = spend.month_to_date if rule.metric == SPEND_MONTH_TO_DATE else spend.forecast
        exceeded = amount >= rule.budget_minor if rule.operator == ">=" else amount > rule.budget_minor
        alert = alerts.get(rule.pk)
        if not exceeded and (alert is None or alert.status == AlertStatus.RESOLVED):
            continue
        silenced = any(
            silence_matches(silence, deployment=None, rule=rule.public_id, metric=rule.metric, severity=rule.severity)
            for silence in silences_by_project.get(rule.project_id, ())
        )
        state = (
            None
            if alert is None
            else evaluation.AlertState(
                status=alert.status,
                since=alert.since,
                last_notified_at=alert.last_notified_at,
                acknowledged_until=alert.acknowledged_until,
                silenced=silenced,
            )
        )
        # A new alert has no state to carry the silence: the evaluator's other withholding switch stands in for it.
        transition = evaluation.evaluate(
            _budget_spec(rule), [(now, 1 if exceeded else 0)], now, state, None, maintenance=silenced and alert is None
        )
        summary.evaluated += 1
        if transition.status is None:
            continue
        if alert is None:
            alert = Alert(
                organization_id=rule.organization_id,
                project_id=rule.project_id,
                rule=rule,
                deployment=None,
                status=transition.status,
                since=now,
                severity=rule.severity,
                created_at=now,
            )
            new_alerts.append(alert)
        else:
            changed_alerts.append(alert)
        alert.severity, alert.last_evaluated_at = rule.severity, now
        alert.value = alert.threshold = None  # money is never a float: it lives in the *_minor fields
        alert.spend_minor, alert.budget_minor, alert.currency = amount, rule.budget_minor, spend.currency
        alert.summary = _budget_summary(rule, amount, spend.currency, exceeded)[:300]
        if transition.changed:
            summary.changed += 1
            _apply_transition(alert, transition, now)
            events.append((alert, transition.status, None, f"{transition.reason}: {alert.summary}"))
            if transition.suppressed_by:
                events.append((alert, AlertEvent.Kind.SUPPRESSED, None, "notification withheld: silence"))
        if transition.notify is not None:
            _note_notification(alert, transition, None, now, events, notifications)

    summary.notifications = _evaluation_save(
        new_alerts=new_alerts,
        changed_alerts=changed_alerts,
        fields=[*_ALERT_STATE_FIELDS, "spend_minor", "budget_minor", "currency"],
        events=events,
        notifications=notifications,
        rule_objects={r.pk: r for r in rules},
        live={},
        now=now,
    )
    return summary


# -- channels ------------------------------------------------------------------------------------------------------


def _allow_private() -> bool:
    return bool(getattr(settings, "ALLOW_PRIVATE_WEBHOOKS", False))


def _validate_channel(*, type: str, config: dict, secret: str | None) -> dict:
    """The stored config of a channel, or ValidationError naming the field at fault."""
    from django.core.validators import validate_email

    if type == NotificationChannel.Type.EMAIL:
        addresses = config.get("addresses")
        if not isinstance(addresses, list) or not addresses or len(addresses) > 20:
            raise ValidationError({"config.addresses": ["Give 1 to 20 email addresses."]})
        for address in addresses:
            try:
                if not isinstance(address, str):
                    raise ValidationError("not a string")
                validate_email(address)
            except ValidationError:
                raise ValidationError({"config.addresses": [f"{address!r} is not an email address."]}) from None
        return {"addresses": addresses}
    if type == NotificationChannel.Type.WEBHOOK:
        url, headers = config.get("url"), config.get("headers") or {}
        try:
            urlsafety.validate_webhook_url(url, allow_private=_allow_private())
        except ValueError as exc:
            raise ValidationError({"config.url": [str(exc)]}) from exc
        if (
            not isinstance(headers, dict)
            or len(headers) > 20
            or not all(
                isinstance(k, str) and isinstance(v, str) and k.strip() and "\n" not in k + v and "\r" not in k + v
                for k, v in headers.items()
            )
        ):
            raise ValidationError({"config.headers": ["Headers are up to 20 single-line string names and values."]})
        return {"url": url, "headers": headers}
    if type == NotificationChannel.Type.SLACK:
        url = config.get("url")
        try:
            if _allow_private():
                urlsafety.validate_webhook_url(url, allow_private=True)
            else:
                urlsafety.validate_slack_webhook_url(url)
        except ValueError as exc:
            raise ValidationError({"config.url": [str(exc)]}) from exc
        return {"url": url}
    if type == NotificationChannel.Type.PAGERDUTY:
        try:
            urlsafety.validate_pagerduty_routing_key(secret)
        except ValueError as exc:
            raise ValidationError({"config.routing_key": [str(exc)]}) from exc
        return {}
    raise ValidationError({"type": [f"Unknown channel type {type!r}."]})


def channel_create(
    *,
    organization,
    actor,
    name: str,
    type: str,
    config: dict,
    is_default: bool = True,
    platform_events: bool = True,
    enabled: bool = True,
) -> tuple[NotificationChannel, str | None]:
    """Create a channel; a webhook's signing secret is returned here, once, and never shown again."""
    from controlplane import crypto

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
        config=stored,
        secret_encrypted=crypto.encrypt_str(secret) if secret else "",
        is_default=is_default,
        platform_events=platform_events,
        enabled=enabled,
    )
    channel.full_clean(exclude=["organization"])
    # Validation resolved the webhook's host (DNS) above: network I/O stays outside the transaction.
    with transaction.atomic():
        channel.save()
        audit_record(
            actor=actor,
            organization=organization,
            action="notification_channel.create",
            target=channel,
            summary={"name": name, "type": type, "config": _public_config(channel)},
        )
    return channel, shown


def _public_config(channel: NotificationChannel) -> dict:
    config = dict(channel.config)
    if channel.type == NotificationChannel.Type.SLACK and config.get("url"):
        # The path of a Slack hook is its credential.
        config["url"] = config["url"].rsplit("/", 1)[0] + "/…"
    if channel.type == NotificationChannel.Type.WEBHOOK and config.get("headers"):
        config["headers"] = {k: "…" for k in config["headers"]}
    return config


def channel_update(
    *,
    channel: NotificationChannel,
    actor,
    name: str | None = None,
    config: dict | None = None,
    is_default: bool | None = None,
    platform_events: bool | None = None,
    enabled: bool | None = None,
) -> NotificationChannel:
    from controlplane import crypto

    validated = None
    if config is not None:
        # Validated before the row lock: a webhook's host is resolved (DNS), and no lock waits on the network.
        config = dict(config)
        new_key = None
        if channel.type == NotificationChannel.Type.PAGERDUTY and "routing_key" in config:
            new_key = config.pop("routing_key")
        secret = new_key if new_key is not None else crypto.decrypt_str(channel.secret_encrypted) or None
        validated = (_validate_channel(type=channel.type, config={**channel.config, **config}, secret=secret), new_key)
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
    channel: NotificationChannel, actor, validated: tuple[dict, str | None] | None, **values
) -> NotificationChannel:
    """channel_update's writes, under the channel's row lock; `validated` is (config, new PagerDuty key or None)."""
    from controlplane import crypto

    channel = NotificationChannel.objects.select_for_update().get(pk=channel.pk)
    changes: dict = {}
    if validated is not None:
        channel.config, new_key = validated
        if new_key is not None:
            channel.secret_encrypted = crypto.encrypt_str(new_key)
        changes["config"] = _public_config(channel)
    for field, value in values.items():
        if value is not None and getattr(channel, field) != value:
            changes[field] = [getattr(channel, field), value]
            setattr(channel, field, value)
    channel.full_clean(exclude=["organization"])
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
def channel_delete(*, channel: NotificationChannel, actor) -> None:
    audit_record(
        actor=actor,
        organization=channel.organization,
        action="notification_channel.delete",
        target=channel,
        summary={"name": channel.name, "type": channel.type},
    )
    channel.delete()


@transaction.atomic
def channel_test(*, channel: NotificationChannel, actor) -> Delivery:
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
    _enqueue_deliveries([delivery])
    audit_record(
        actor=actor,
        organization=channel.organization,
        action="notification_channel.test",
        target=channel,
        summary={"delivery": delivery.public_id},
    )
    return delivery


# -- deliveries ----------------------------------------------------------------------------------------------------


def _text_of(payload: dict) -> tuple[str, str]:
    """(subject, body) for email and chat channels."""
    event = payload.get("event", "")
    status = {"alert.firing": "FIRING", "alert.resolved": "RESOLVED", "test": "TEST"}.get(event, "NOTICE")
    if payload.get("repeat"):
        status = "STILL FIRING"
    subject = f"[{status}] {payload.get('summary', '')}".replace("\n", " ")[:200]
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
    from controlplane import crypto

    payload = delivery.payload
    if channel.type == NotificationChannel.Type.EMAIL:
        subject, body = _text_of(payload)
        return senders.send_email(channel.config["addresses"], subject, body)
    if channel.type == NotificationChannel.Type.WEBHOOK:
        return senders.send_webhook(
            channel.config["url"],
            payload,
            secret=crypto.decrypt_str(channel.secret_encrypted),
            headers=channel.config.get("headers"),
            allow_private=_allow_private(),
        )
    if channel.type == NotificationChannel.Type.SLACK:
        subject, body = _text_of(payload)
        return senders.send_slack(channel.config["url"], f"*{subject}*\n{body}", allow_private=_allow_private())
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


# How long an attempt holds its delivery: longer than any sender's timeout. A worker that dies mid-attempt leaves the
# delivery to deliveries_resume once this and its grace have passed.
DELIVERY_ATTEMPT_LEASE = dt.timedelta(minutes=2)


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
    delivery = Delivery.objects.select_related("channel", "channel__organization").get(pk=delivery_id)
    channel = delivery.channel
    if not channel.enabled:
        result = senders.DeliveryResult(False, None, "", "channel disabled", 0)
    else:
        result = _send(channel, delivery)  # outside any transaction: the receiver may take seconds
    now = timezone.now()
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().get(pk=delivery.pk)
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
            if delay is None:
                delivery.status, delivery.completed_at, delivery.next_attempt_at = Delivery.Status.FAILED, now, None
            else:
                delivery.status = Delivery.Status.RETRYING
                delivery.next_attempt_at = now + dt.timedelta(seconds=delay)
        delivery.save(update_fields=["status", "completed_at", "next_attempt_at"])
        _channel_health(channel.pk, ok=result.ok, now=now)
    return delivery, delay


# A retry is a Celery message with a countdown; one lost with its worker or its Redis is re-sent after this grace.
DELIVERY_RESUME_GRACE = dt.timedelta(minutes=5)
DELIVERY_RESUME_BATCH = 1000


def deliveries_resume(*, now: dt.datetime | None = None, grace: dt.timedelta = DELIVERY_RESUME_GRACE) -> int:
    """Re-enqueue deliveries left behind: due more than `grace` ago (a lost retry), or never attempted though created
    more than `grace` ago (a lost first message). Returns how many were re-enqueued.

    Rows are claimed under FOR UPDATE SKIP LOCKED and their next_attempt_at moved to now in the same transaction, so
    a concurrent sweep neither waits nor re-enqueues them again; the message goes out once that claim commits.
    A message that was only late, not lost, and the re-sent one carry the same attempt count: delivery_attempt
    lets one of them through.
    """
    now = now or timezone.now()
    cutoff = now - grace
    open_statuses = [Delivery.Status.PENDING, Delivery.Status.RETRYING]
    stale = Q(status__in=open_statuses, next_attempt_at__lt=cutoff) | Q(
        status=Delivery.Status.PENDING, attempts=0, next_attempt_at__isnull=True, created_at__lt=cutoff
    )
    with transaction.atomic():
        rows = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(stale)
            .order_by("pk")
            .values_list("pk", "attempts")[:DELIVERY_RESUME_BATCH]
        )
        if not rows:
            return 0
        Delivery.objects.filter(pk__in=[pk for pk, _ in rows]).update(next_attempt_at=now)

        def enqueue():
            from alerts.tasks import deliver_notification

            # With the attempt count it was re-sent at: if the first message was only late, one of the two attempts.
            for pk, attempts in rows:
                publish(deliver_notification, pk, attempts)

        transaction.on_commit(enqueue)
    logger.warning("re-enqueued %d stale deliveries", len(rows))
    return len(rows)


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


def _administrator_emails(organization) -> list[str]:
    from organizations.roles import Role

    return sorted(
        {
            m.user.email
            for m in organization.memberships.select_related("user")
            if {Role.OWNER, Role.ADMINISTRATOR} & set(m.roles) and m.user.email
        }
    )


def _send_failure_notice(channel: NotificationChannel, now: dt.datetime) -> None:
    recipients = _administrator_emails(channel.organization)
    channel.failure_notice_sent_at = now
    channel.save(update_fields=["failure_notice_sent_at"])
    PlatformEvent.objects.get_or_create(
        organization=channel.organization,
        dedup_key=f"channel_failing:{channel.public_id}:{channel.failing_since}",
        defaults={
            "kind": PlatformEvent.Kind.CHANNEL_FAILING,
            "subject": channel.public_id,
            "severity": "warning",
            "message": f"Notification channel {channel.name} has failed every delivery since "
            f"{channel.failing_since:%Y-%m-%d %H:%M} UTC.",
        },
    )
    if not recipients:
        return
    subject = f"Notification channel {channel.name!r} has been failing for a day"
    body = (
        f"Every delivery to the {channel.type} channel {channel.name} ({channel.public_id}) of "
        f"{channel.organization.name} has failed since {channel.failing_since:%Y-%m-%d %H:%M} UTC.\n"
        f"Alerts routed to it are not reaching anyone. See its delivery history in the console or at "
        f"{settings.PUBLIC_URL}/api/v1/organizations/{channel.organization.public_id}/notification-channels/"
        f"{channel.public_id}/deliveries"
    )
    # Sent after commit and straight through the mail backend: the failing channel cannot carry its own notice.
    transaction.on_commit(lambda: send_mail(subject, body, None, recipients, fail_silently=True))


def failing_channels_check(*, now: dt.datetime | None = None) -> int:
    """Notify administrators of channels failing for a day even when no new attempt happened to notice it."""
    now = now or timezone.now()
    count = 0
    for pk in NotificationChannel.objects.filter(
        failing_since__lte=now - CHANNEL_FAILURE_NOTICE_AFTER, failure_notice_sent_at__isnull=True
    ).values_list("pk", flat=True):
        with transaction.atomic():
            channel = NotificationChannel.objects.select_for_update().select_related("organization").get(pk=pk)
            if channel.failure_notice_sent_at is None and channel.failing_since is not None:
                _send_failure_notice(channel, now)
                count += 1
    return count


# -- platform events -----------------------------------------------------------------------------------------------


@transaction.atomic
def notify_platform_event(
    *, organization, kind: str, subject: str, message: str, severity: str = "warning", dedup_key: str | None = None
) -> PlatformEvent | None:
    """Tell an organization about something the platform did or saw, through its platform-event channels (or, when
    it has none, by email to its owners and administrators). Once per dedup key; returns None for a repeat."""
    if kind not in PlatformEvent.Kind.values:
        raise ValueError(f"unknown platform event kind {kind!r}")
    if severity not in evaluation.SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(evaluation.SEVERITIES)}")
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
        _enqueue_deliveries(
            [
                Delivery(
                    organization=organization, channel=c, kind=Delivery.Kind.PLATFORM, payload=payload, created_at=now
                )
                for c in channels
            ]
        )
    else:
        recipients = _administrator_emails(organization)
        if recipients:
            subject_line, body = _text_of(payload)
            transaction.on_commit(lambda: send_mail(subject_line, body, None, recipients, fail_silently=True))
    return event


def failed_deployments_notify() -> int:
    """Platform events for deployments that failed to provision, until the deployments app reports them itself."""
    from deployments.models import Deployment, Operation, Status

    count = 0
    failed = Deployment.objects.filter(status=Status.FAILED).select_related("project__organization")
    for deployment in failed:
        operation = deployment.operations.filter(kind=Operation.Kind.CREATE).order_by("-created_at").first()
        reason = deployment.last_error or "the broker did not start"
        event = notify_platform_event(
            organization=deployment.project.organization,
            kind=PlatformEvent.Kind.DEPLOYMENT_FAILED,
            subject=deployment.public_id,
            severity="critical",
            message=f"Deployment {deployment.name} ({deployment.public_id}) failed: {reason}",
            dedup_key=f"deployment_failed:{deployment.public_id}:{deployment.observed_generation}"
            f":{operation.public_id if operation else ''}",
        )
        count += event is not None
    return count
