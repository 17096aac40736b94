"""What an alert tells its channels: which channels a rule routes to, and the payload of a fire, repeat or resolve.

Builds the deliveries; sending them (attempts, retries, failing channels) is the notifications app's, reached only
through notifications.services.deliveries_enqueue. Money in a payload is an exact decimal string, never a float.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db.models import Q

from alerts.models import Alert, AlertRule
from billing.money import to_decimal
from notifications.models import Delivery, NotificationChannel
from notifications.services import deliveries_enqueue

if TYPE_CHECKING:
    from alerts.evaluate import LiveDeployment


def routes(rules: Iterable[AlertRule]) -> dict[int, list[NotificationChannel]]:
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
    out = {}
    for rule in rules:
        chosen = [channels[c] for c in named[rule.pk]] if rule.pk in named else defaults[rule.organization_id]
        out[rule.pk] = [c for c in chosen if c.enabled]
    return out


def subject_of(rule: AlertRule, deployment_public_id: str | None) -> dict:
    """What an alert is about: its deployment, or for a budget rule the project or organization whose spend it is."""
    if deployment_public_id is not None:
        return {"type": "deployment", "id": deployment_public_id}
    if rule.budget_scope == AlertRule.BudgetScope.ORGANIZATION:
        return {"type": "organization", "id": rule.organization.public_id}
    return {"type": "project", "id": rule.project.public_id}


def budget_of(alert: Alert, rule: AlertRule) -> dict | None:
    """A budget alert's money, as exact decimal strings in major units: never a float."""
    if alert.spend_minor is None or alert.budget_minor is None or not alert.currency:
        return None
    return {
        "metric": rule.metric,
        "scope": rule.budget_scope,
        "currency": alert.currency,
        "spend": str(to_decimal(alert.spend_minor, alert.currency)),
        "budget": str(to_decimal(alert.budget_minor, alert.currency)),
    }


def _payload(alert: Alert, rule: AlertRule, kind: str, deployment_public_id: str | None, now: dt.datetime) -> dict:
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
        "subject": subject_of(rule, deployment_public_id),
        "budget": budget_of(alert, rule),
        "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "sent_at": now.isoformat(),
    }


def alerts_notify(
    notifications: list[tuple[Alert, str]],
    rule_objects: dict[int, AlertRule],
    live: dict[int, LiveDeployment],
    now: dt.datetime,
) -> int:
    """Queue one delivery per (alert, kind) and channel its rule routes to; returns the number queued. Runs in the
    evaluation's transaction: the deliveries leave once the alerts' new state has committed."""
    rule_routes = routes(rule_objects.values())
    deliveries = []
    for alert, kind in notifications:
        rule = rule_objects[alert.rule_id]
        deployment_public_id = live[alert.deployment_id].public_id if alert.deployment_id is not None else None
        payload = _payload(alert, rule, kind, deployment_public_id, now)
        for channel in rule_routes[rule.pk]:
            deliveries.append(
                Delivery(
                    organization_id=rule.organization_id,
                    channel=channel,
                    alert_public_id=alert.public_id,
                    kind=kind,
                    payload=payload,
                    created_at=now,
                )
            )
    deliveries_enqueue(deliveries)
    return len(deliveries)
