"""Alert rules, silences and acknowledgements: every change a user makes to what is watched and who is told.

Keyword-only, atomic, audited in the same transaction. Money is exact: a budget is integer minor units of the billing
account's currency, parsed from a decimal string, never a float. Input that cannot be accepted raises
controlplane.errors.ValidationFailed naming the field; a state that forbids the change raises Conflict.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from alerts import evaluation
from alerts.collection import RAW_RETENTION, collect_interval_seconds
from alerts.metrics import BUDGET_METRICS, TIER_LIMIT_FIELDS, validate_budget_metric_name, validate_metric_name
from alerts.models import Alert, AlertEvent, AlertRule, AlertStatus, Silence
from audit.services import audit_record
from billing.money import minor_units, round_half_up, to_decimal
from controlplane.errors import Conflict, ValidationFailed, model_clean
from controlplane.validators import control_character_message, find_control_character
from notifications.models import NotificationChannel
from organizations.access import acting_user

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
# What a rule measures. An edit of one of these makes its open alerts about something the rule no longer watches: they
# resolve at the edit (their resolve sent), and the next evaluation fires afresh if the new measure breaches. Left to
# the evaluation, an alert whose new metric had no samples yet stayed firing. Edits of the threshold, window or
# duration keep the alert: the next evaluation decides it on the same measure.
MEASURE_FIELDS = frozenset({"kind", "metric", "budget_scope"})
# Spend only ever rises during a month: a budget is exceeded, never undershot.
BUDGET_OPERATORS = (">", ">=")
_BUDGET_AMOUNT = re.compile(r"(\d{1,13})(?:\.(\d+))?")
# A percent threshold is multiplied by the tier's limit (a 32-bit column) in the evaluation's SQL: beyond this bound
# the float8 product overflows, and PostgreSQL's error stopped the evaluation of every rule, every tenant's.
MAX_PERCENT_THRESHOLD = 1_000_000.0


def _budget_minor(raw, currency: str) -> int:
    """A budget given as a decimal string in major units ("250.00") -> integer minor units of `currency`, exactly."""
    if isinstance(raw, str) and raw.strip().startswith("-"):
        raise ValidationFailed({"budget_amount": "A budget is an amount above zero."})
    match = _BUDGET_AMOUNT.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise ValidationFailed(
            {
                "budget_amount": f'Give the budget as a decimal string in {currency}, such as "250.00" (no exponent, no float).'
            }
        )
    digits = minor_units(currency)
    if len(match.group(2) or "") > digits:
        allowed = f"at most {digits} decimal places" if digits else "no decimal places"
        raise ValidationFailed({"budget_amount": f"{currency} amounts have {allowed}."})
    minor = round_half_up(Decimal(raw), currency)  # exact: the digits fit the currency's minor unit
    if minor <= 0:
        raise ValidationFailed({"budget_amount": "A budget is an amount above zero."})
    return minor


def _set_budget(rule: AlertRule, *, budget_amount, organization) -> None:
    """Store the budget in minor units of the billing account's currency, and its display-only float threshold."""
    from billing.selectors import billing_account_for

    if rule.kind != AlertRule.Kind.BUDGET:
        raise ValidationFailed({"budget_amount": f"Only a budget rule has a budget; this is a {rule.kind} rule."})
    currency = billing_account_for(organization=organization).currency
    rule.budget_minor, rule.budget_currency = _budget_minor(budget_amount, currency), currency
    rule.threshold = float(to_decimal(rule.budget_minor, currency))


def _validate_rule(rule: AlertRule) -> None:
    errors: dict[str, list[str]] = {}
    found = find_control_character(rule.name) if isinstance(rule.name, str) else None
    if found is not None:  # a rule's name is in its alerts' summaries, and so in mail subjects
        errors["name"] = [control_character_message(*found)]
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
    elif not math.isfinite(rule.threshold):
        errors["threshold"] = ["The threshold must be a finite number."]
    elif (
        rule.threshold_unit == AlertRule.ThresholdUnit.PERCENT_OF_TIER_LIMIT
        and abs(rule.threshold) > MAX_PERCENT_THRESHOLD
    ):
        errors["threshold"] = [f"A percent threshold is at most {MAX_PERCENT_THRESHOLD:,.0f} % of the tier's limit."]
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
        raise ValidationFailed(errors)
    model_clean(rule, exclude=["organization", "project", "deployment", "channels"])


def _check_channels(organization, channels) -> list[NotificationChannel]:
    channels = list(channels or [])
    for channel in channels:
        if channel.organization_id != organization.pk:
            raise ValidationFailed({"channels": "No such notification channel."})
    return channels


def _rule_summary(rule: AlertRule) -> dict:
    summary = {f: getattr(rule, f) for f in RULE_FIELDS}
    summary["deployment"] = rule.deployment.public_id if rule.deployment is not None else None
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
    if deployment is not None:
        # Locked and read again: deployment_move (which locks it too) carries a deployment's own rules to its new
        # project, so one created as it moves must see where it went, or be seen by the move.
        found = type(deployment).objects.select_for_update().filter(pk=deployment.pk).values_list("project_id").first()
        if found is None or found[0] != project.pk:
            raise ValidationFailed({"deployment": "No such deployment in this project."})
    unknown = set(fields) - set(RULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown rule fields {sorted(unknown)}")
    rule = AlertRule(organization=project.organization, project=project, deployment=deployment, **fields)
    if rule.kind == AlertRule.Kind.BUDGET:
        if fields.get("threshold") is not None:
            raise ValidationFailed({"threshold": "A budget rule is set with budget_amount, not a threshold."})
        rule.budget_scope = rule.budget_scope or AlertRule.BudgetScope.PROJECT
    if budget_amount is not None or rule.kind == AlertRule.Kind.BUDGET:
        if budget_amount is None:
            raise ValidationFailed({"budget_amount": "A budget rule needs its amount."})
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
        raise ValidationFailed({"threshold": "A budget rule is set with budget_amount, not a threshold."})
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
            previous_minor, previous_currency = before
            changes["budget_amount"] = [
                None if previous_minor is None else str(to_decimal(previous_minor, previous_currency)),
                None if rule.budget_minor is None else str(to_decimal(rule.budget_minor, rule.budget_currency)),
            ]
    _validate_rule(rule)
    rule.save()
    if changes.keys() & MEASURE_FIELDS:
        _alerts_of_rule_retire(rule, why="its rule now measures another metric")
    if channels is not None:
        channels = _check_channels(rule.organization, channels)
        rule.channels.set(channels)
        changes["channels"] = [c.public_id for c in channels]
    audit_record(actor=actor, organization=rule.organization, action="alert_rule.update", target=rule, summary=changes)
    return rule


def _alerts_of_rule_retire(rule: AlertRule, *, why: str) -> None:
    """Resolve the rule's unresolved alerts now, telling whoever was told one fired (the delivery carries its own copy
    of the alert): their incident, a PagerDuty one, would stay open otherwise. In the caller's transaction."""
    from alerts.evaluate import ALERT_RETIRE_RELATED, alerts_retire  # evaluate imports this module

    open_alerts = list(
        Alert.objects.select_for_update(of=("self",))
        .select_related(*ALERT_RETIRE_RELATED)
        .filter(rule=rule)
        .exclude(status=AlertStatus.RESOLVED)
        .order_by("pk")
    )
    alerts_retire(alerts=open_alerts, why={a.pk: why for a in open_alerts}, now=timezone.now())


@transaction.atomic
def alert_rule_delete(*, rule: AlertRule, actor) -> None:
    """Delete the rule and its alerts, resolving the open ones first."""
    _alerts_of_rule_retire(rule, why="its rule was deleted")
    audit_record(
        actor=actor,
        organization=rule.organization,
        action="alert_rule.delete",
        target=rule,
        summary={"name": rule.name},
    )
    rule.delete()


def deployment_moved(*, deployment, source) -> dict[str, int]:
    """The hook deployments calls inside deployment_move's transaction (registered in AlertsConfig.ready()).

    A deployment's own rules, and the alerts they raised, follow it to its new project: they are read and changed
    with the project's rights, so left behind they were the monitoring of a deployment that people of the old project
    may no longer see. The old project's project-wide rules watch it no longer: their open alerts about it resolve,
    saying why (and telling whoever was told they fired), and stay there as history. The new project's project-wide rules watch it from the next evaluation.
    Returns the counts moved and resolved."""
    now = timezone.now()
    moved_rules = AlertRule.objects.filter(deployment=deployment).update(project=deployment.project, updated_at=now)
    moved_alerts = Alert.objects.filter(deployment=deployment, rule__deployment=deployment).update(
        project=deployment.project
    )
    from alerts.evaluate import ALERT_RETIRE_RELATED, alerts_retire  # evaluate imports this module

    left = list(
        Alert.objects.select_for_update(of=("self",))
        .select_related(*ALERT_RETIRE_RELATED)
        .filter(deployment=deployment, rule__deployment__isnull=True, rule__project=source)
        .exclude(status=AlertStatus.RESOLVED)
        .order_by("pk")
    )
    why = f"The deployment moved to project {deployment.project.public_id}; this project's rules no longer watch it."
    # Whoever was told one fired is told it resolved: their incident (a PagerDuty one) would stay open otherwise.
    alerts_retire(alerts=left, why={alert.pk: why for alert in left}, now=now)
    return {"rules": moved_rules, "alerts": moved_alerts, "resolved": len(left)}


# -- silences and acknowledgements ---------------------------------------------------------------------------------


def _validate_matchers(project, matchers: dict) -> dict:
    if not isinstance(matchers, dict):
        raise ValidationFailed({"matchers": "Matchers must be an object."})
    unknown = sorted(set(matchers) - set(Silence.MATCHER_KEYS))
    if unknown:
        raise ValidationFailed(
            {"matchers": f"Unknown matcher {', '.join(unknown)}; expected {', '.join(Silence.MATCHER_KEYS)}."}
        )
    for key, value in matchers.items():
        if not isinstance(value, str) or not value:
            raise ValidationFailed({f"matchers.{key}": "A matcher is a non-empty string."})
    if "metric" in matchers and matchers["metric"] not in BUDGET_METRICS:
        try:
            matchers["metric"] = validate_metric_name(matchers["metric"])
        except ValueError as exc:
            raise ValidationFailed({"matchers.metric": str(exc)}) from exc
    if "severity" in matchers and matchers["severity"] not in evaluation.SEVERITIES:
        raise ValidationFailed({"matchers.severity": f"Expected one of {', '.join(evaluation.SEVERITIES)}."})
    if "deployment" in matchers and not project.deployments.filter(public_id=matchers["deployment"]).exists():
        raise ValidationFailed({"matchers.deployment": "No such deployment in this project."})
    if "rule" in matchers and not AlertRule.objects.filter(project=project, public_id=matchers["rule"]).exists():
        raise ValidationFailed({"matchers.rule": "No such alert rule in this project."})
    return matchers


@transaction.atomic
def silence_create(
    *, project, actor, matchers: dict, starts_at: dt.datetime | None, ends_at: dt.datetime, comment: str = ""
) -> Silence:
    starts_at = starts_at or timezone.now()
    if ends_at is None:
        raise ValidationFailed({"ends_at": "A silence needs an end."})
    if ends_at <= starts_at:
        raise ValidationFailed({"ends_at": "The end must be after the start."})
    silence = Silence(
        organization=project.organization,
        project=project,
        matchers=_validate_matchers(project, dict(matchers or {})),
        starts_at=starts_at,
        ends_at=ends_at,
        comment=comment,
        created_by=acting_user(actor),
    )
    model_clean(silence, exclude=["organization", "project", "created_by"])
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
        raise ValidationFailed({"until": "Acknowledge until a time in the future."})
    alert = Alert.objects.select_for_update().get(pk=alert.pk)
    if alert.status != AlertStatus.FIRING:
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
