"""The alert evaluation runner: which (rule, deployment) pairs can change anything, their lifecycle through the
pure alerts.evaluation, and writing alerts, their history and their notifications.

System work, never audited: set-based (the breach test of every metric rule runs in one PostgreSQL statement; writes
are one statement per kind of row), whatever the number of deployments. Notifications are queued through
alerts.notify in the same transaction as the alerts' new state, and leave once it commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from django.db import connection, models, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from alerts import evaluation
from alerts.defaults import default_rules_ensure
from alerts.metrics import SPEND_FORECAST, SPEND_MONTH_TO_DATE, TIER_LIMIT_FIELDS
from alerts.models import Alert, AlertEvent, AlertRule, AlertStatus, MetricSample, Silence
from alerts.notify import alerts_notify
from alerts.rules import silence_matches
from billing.money import to_decimal
from notifications.models import Delivery

if TYPE_CHECKING:
    from billing.models import BillingAccount
    from billing.selectors import Spend

logger = logging.getLogger(__name__)


class LiveDeployment(NamedTuple):
    """A deployment an evaluation covers, as one query reads it."""

    public_id: str
    project_id: int
    max_connections: int | None
    messages_per_second: int | None


class PendingEvent(NamedTuple):
    """An AlertEvent an evaluation decided, written in bulk once its alert has a primary key."""

    alert: Alert
    kind: str
    value: float | None
    message: str


@dataclasses.dataclass
class EvaluationSummary:
    rules: int = 0
    evaluated: int = 0
    changed: int = 0
    notifications: int = 0


def _field(model: type[models.Model], name: str) -> models.Field:
    """A concrete field of `model` (its column, its database preparation), never a reverse relation."""
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or not field.column:
        raise TypeError(f"{model.__name__}.{name} is not a column")
    return field


def _column(model: type[models.Model], name: str) -> str:
    return str(_field(model, name).column)


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
    # order_by(): the models' default ordering has no place in a UNION.
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
DEPLOYMENT_RULE_KINDS = (
    AlertRule.Kind.METRIC,
    AlertRule.Kind.CERTIFICATE_EXPIRY,
    AlertRule.Kind.VPC_PEERING,
    AlertRule.Kind.DEPLOYMENT_UNAVAILABLE,
)
# Kinds decided from a fact about the deployment rather than from samples.
FACT_RULE_KINDS = (
    AlertRule.Kind.CERTIFICATE_EXPIRY,
    AlertRule.Kind.VPC_PEERING,
    AlertRule.Kind.DEPLOYMENT_UNAVAILABLE,
)


def _rules_of(live: dict[int, LiveDeployment], ids, kinds) -> QuerySet:
    rule_qs = AlertRule.objects.filter(enabled=True, kind__in=kinds)
    if ids is not None:
        projects = {v.project_id for v in live.values()}
        rule_qs = rule_qs.filter(Q(deployment_id__in=ids) | Q(deployment__isnull=True, project_id__in=projects))
    return rule_qs


def _targets(rule: dict, live: dict[int, LiveDeployment], project_deployments: dict) -> list[int]:
    if rule["deployment_id"]:
        return [rule["deployment_id"]] if rule["deployment_id"] in live else []
    return project_deployments.get(rule["project_id"], [])


# What each rule operator and aggregation stands for in the candidates statement.
SQL_OPERATORS = {
    AlertRule.Operator.GT: ">",
    AlertRule.Operator.GE: ">=",
    AlertRule.Operator.LT: "<",
    AlertRule.Operator.LE: "<=",
    AlertRule.Operator.EQ: "=",
    AlertRule.Operator.NE: "<>",
}
SQL_AGGREGATES = {
    AlertRule.Aggregation.AVG: "a.avg",
    AlertRule.Aggregation.MAX: "a.max",
    AlertRule.Aggregation.MIN: "a.min",
    AlertRule.Aggregation.SUM: "a.sum",
    AlertRule.Aggregation.COUNT: "a.count",
    AlertRule.Aggregation.LAST: "la.value",
}


def _metric_candidates_sql(*, now, ids) -> list[tuple[int, int, float | None]]:
    """(rule id, deployment id, value) of the enabled metric rules that are breached now or hold an unresolved alert,
    over every live deployment (or those listed), computed by PostgreSQL in one statement.

    With 10,000 deployments there are 100,000 metric rules and 80,000 aggregates, of which a few hundred matter:
    the breach test runs where the data is, with the same float arithmetic as `_breached`, and only the pairs that
    are breached or hold an unresolved alert come back. A pair with no sample in its window comes back with value
    None only when it holds an unresolved alert (a gap, which changes nothing but is looked at).
    """
    from django.contrib.postgres.aggregates import BoolOr

    from deployments.models import Deployment, DesiredState, Tier

    # The (metric, window) pairs to aggregate: a handful. Passed in as arrays, so the planner knows how few there
    # are; derived inside the statement it guessed thousands, and planned (and JIT-compiled) for millions of rows.
    window_rules = AlertRule.objects.filter(enabled=True, kind=AlertRule.Kind.METRIC)
    if ids is not None:
        projects = Deployment.objects.filter(pk__in=ids).values("project_id")
        window_rules = window_rules.filter(
            Q(deployment_id__in=ids) | Q(deployment__isnull=True, project_id__in=projects)
        )
    windows = list(
        window_rules.order_by()
        .values_list("metric", "window_seconds")
        .annotate(needs_last=BoolOr(Q(aggregation=AlertRule.Aggregation.LAST)))
    )
    if not windows:
        return []
    q = connection.ops.quote_name
    params: dict = {
        "window_metrics": [w[0] for w in windows],
        "window_seconds": [w[1] for w in windows],
        "window_needs_last": [w[2] for w in windows],
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
        limit_cases.append(f"WHEN %(limit_metric_{i})s THEN l.{q(_column(Tier, field))}")
    # A limit of zero or none makes a percent threshold unbreachable, as in _breached.
    threshold = (
        f"CASE WHEN r.threshold_unit = %(percent)s THEN NULLIF(CASE r.metric {' '.join(limit_cases)} END, 0) "
        f"* r.threshold / 100.0::float8 ELSE r.threshold END"
    )
    only_ids = "AND d.id = ANY(%(ids)s)" if ids is not None else ""
    only_sample_ids = "AND s.deployment_id = ANY(%(ids)s)" if ids is not None else ""
    tier_columns = ", ".join(f"t.{q(_column(Tier, f))}" for f in sorted(set(TIER_LIMIT_FIELDS.values())))
    # The rule's operator and aggregation are compared with bound values; only the SQL operator each one stands
    # for (from the fixed tables here) is written into the statement.
    operator_cases, aggregation_cases = [], []
    for i, op in enumerate(AlertRule.Operator):
        params[f"operator_{i}"] = op
        operator_cases.append(f"WHEN %(operator_{i})s THEN v.value {SQL_OPERATORS[op]} v.threshold")
    for i, aggregation in enumerate(AlertRule.Aggregation):
        params[f"aggregation_{i}"] = aggregation
        aggregation_cases.append(f"WHEN %(aggregation_{i})s THEN {SQL_AGGREGATES[aggregation]}")
    operators, aggregations = " ".join(operator_cases), " ".join(aggregation_cases)
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
        SELECT * FROM unnest(%(window_metrics)s::text[], %(window_seconds)s::integer[], %(window_needs_last)s::boolean[])
            AS w(metric, window_seconds, needs_last)
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
               CASE p.aggregation {aggregations} END AS value
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
    with transaction.atomic(), connection.cursor() as cursor:
        # Its estimated cost grows with the samples and soon passes PostgreSQL's JIT thresholds: compiling with
        # inlining and optimization then took 8 s (measured at 10,000 deployments with a misestimated plan) for a
        # statement that runs in 1-2 s. Off for this statement only.
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, params)
        return [(rule_id, dep_id, value) for rule_id, dep_id, value in cursor.fetchall()]


def _unavailable_deployments(ids) -> dict[int, tuple[float, str]]:
    """Deployments asked to run that do not: `degraded` (down, being restored), or `failed` after having run (a
    running interval on record). Value 1 with what the deployment says of itself; the index on status finds them."""
    from deployments.models import Deployment, DesiredState, Status, StatusInterval

    ran = StatusInterval.objects.filter(deployment=OuterRef("pk"), status=StatusInterval.Kind.RUNNING)
    qs = Deployment.objects.filter(desired_state=DesiredState.RUNNING).filter(
        Q(status=Status.DEGRADED) | Q(Exists(ran), status=Status.FAILED)
    )
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    out = {}
    for pk, status, conditions, last_error in qs.values_list("pk", "status", "conditions", "last_error"):
        reason = next(
            (
                f"{c.get('reason')}: {c.get('message')}" if c.get("message") else str(c.get("reason"))
                for c in conditions or []
                if isinstance(c, dict) and str(c.get("status")) == "False" and c.get("reason")
            ),
            last_error,
        )
        out[pk] = (1.0, f"{status}" + (f" ({reason})" if reason else ""))
    return out


# Where each fact kind's values come from: deployment ids (None: every live one) -> {deployment id: (value, detail)},
# and the value of a deployment the source does not list (None: no value, a gap). Certificate expiry has no source
# yet (its rules exist and wait); VPC peering is fed by the networking app as a metric, its default is a metric rule.
FACT_SOURCES = {AlertRule.Kind.DEPLOYMENT_UNAVAILABLE: (_unavailable_deployments, 0.0)}


def _fact_candidates(*, ids, live, project_deployments, facts) -> list[tuple[int, int, float | None]]:
    """(rule id, deployment id, value) of the fact rules that have a value or an unresolved alert."""
    kinds = list(FACT_RULE_KINDS)
    with_alerts = Alert.objects.filter(rule__kind__in=kinds).exclude(status=AlertStatus.RESOLVED)
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
        absent = FACT_SOURCES[kind][1] if kind in FACT_SOURCES else None
        for dep_id in targets:
            found = facts.get(kind, {}).get(dep_id)
            if found is not None:
                out.append((rule_id, dep_id, found[0]))
            elif (rule_id, dep_id) in alerted:
                out.append((rule_id, dep_id, absent))
    return out


def _retired_alerts_resolve(*, deployment_ids, kinds, now: dt.datetime) -> tuple[int, int]:
    """Resolve the unresolved alerts that nothing evaluates any more: their rule was disabled, or their deployment
    deleted, while they were pending or firing. Left alone they stayed firing for good. Returns (resolved, queued)."""
    from deployments.models import DesiredState

    qs = (
        Alert.objects.exclude(status=AlertStatus.RESOLVED)
        .filter(rule__kind__in=kinds)
        .filter(Q(rule__enabled=False) | Q(deployment__desired_state=DesiredState.DELETED))
    )
    if deployment_ids is not None:
        qs = qs.filter(deployment_id__in=deployment_ids)
    with transaction.atomic():
        # Locked, and read again once a concurrent evaluation's lock is released: an alert is resolved, and its
        # resolve sent, once.
        retired = list(qs.select_for_update(of=("self",)).order_by("pk").select_related(*ALERT_RETIRE_RELATED))
        why = {a.pk: "its rule was disabled" if not a.rule.enabled else "its deployment was deleted" for a in retired}
        return len(retired), alerts_retire(alerts=retired, why=why, now=now)


# What alerts_retire reads of each alert: select_related these when locking them.
ALERT_RETIRE_RELATED = ("rule__organization", "rule__project", "deployment")


def alerts_retire(*, alerts: list[Alert], why: dict[int, str], now: dt.datetime) -> int:
    """Resolve these unresolved alerts (locked by the caller, with ALERT_RETIRE_RELATED) because nothing will evaluate
    them again, each saying why (alert pk -> reason). Whoever was told one fired is told it resolved, once, unless a
    silence matching it is active (as for any resolve). Returns the notifications queued."""
    if not alerts:
        return 0
    silences: dict[int, list[Silence]] = defaultdict(list)
    for silence in Silence.objects.filter(
        project_id__in={a.project_id for a in alerts}, starts_at__lte=now, ends_at__gt=now
    ):
        silences[silence.project_id].append(silence)
    events: list[PendingEvent] = []
    notifications: list[tuple[Alert, str]] = []
    live: dict[int, LiveDeployment] = {}
    for alert in alerts:
        rule, deployment = alert.rule, alert.deployment
        public_id = deployment.public_id if deployment is not None else None
        if deployment is not None:
            live[deployment.pk] = LiveDeployment(deployment.public_id, deployment.project_id, None, None)
        told = alert.status == AlertStatus.FIRING and alert.last_notified_at is not None
        alert.status, alert.since, alert.resolved_at, alert.acknowledged_until = AlertStatus.RESOLVED, now, now, None
        alert.last_evaluated_at, alert.last_notified_at = now, None
        events.append(PendingEvent(alert, AlertEvent.Kind.RESOLVED, None, why[alert.pk]))
        if not told:
            continue
        silenced = any(
            silence_matches(s, deployment=public_id, rule=rule.public_id, metric=rule.metric, severity=rule.severity)
            for s in silences.get(alert.project_id, ())
        )
        if silenced:
            events.append(PendingEvent(alert, AlertEvent.Kind.SUPPRESSED, None, "notification withheld: silence"))
        else:
            notifications.append((alert, Delivery.Kind.RESOLVE))
            events.append(PendingEvent(alert, AlertEvent.Kind.NOTIFIED, None, f"{Delivery.Kind.RESOLVE} notification"))
    return _evaluation_save(
        new_alerts=[],
        changed_alerts=alerts,
        fields=_ALERT_STATE_FIELDS,
        events=events,
        notifications=notifications,
        rule_objects={a.rule_id: a.rule for a in alerts},
        live=live,
        now=now,
    )


def rules_evaluate(*, now: dt.datetime | None = None, deployment_ids: Sequence[int] | None = None) -> EvaluationSummary:
    """Evaluate every enabled rule against every deployment it covers (all live ones, or those listed).

    Only the (rule, deployment) pairs that can change anything are read in full: those breached now and those
    holding an unresolved alert (the breach test of metric rules runs in the database). Their lifecycle is
    alerts.evaluation's pure `evaluate`; writes are one statement per kind of row.
    """
    from deployments.models import Deployment, DesiredState

    now = now or timezone.now()
    ids = list(deployment_ids) if deployment_ids is not None else None
    retired = _retired_alerts_resolve(deployment_ids=ids, kinds=DEPLOYMENT_RULE_KINDS, now=now)
    # Defaults are created with the deployment; this gives existing deployments a default added since (one query).
    default_rules_ensure(deployment_ids=ids)

    deployments_qs = Deployment.objects.exclude(desired_state=DesiredState.DELETED)
    if ids is not None:
        deployments_qs = deployments_qs.filter(pk__in=ids)
    live = {
        pk: LiveDeployment(public_id, project_id, max_connections, messages_per_second)
        for pk, public_id, project_id, max_connections, messages_per_second in deployments_qs.values_list(
            "pk", "public_id", "project_id", "tier__max_connections", "tier__messages_per_second"
        )
    }
    if ids is not None:
        ids = list(live)
    project_deployments: dict[int, list[int]] = defaultdict(list)
    for dep_id, row in live.items():
        project_deployments[row.project_id].append(dep_id)

    candidates = _metric_candidates_sql(now=now, ids=ids)
    facts = {kind: source(ids) for kind, (source, _) in FACT_SOURCES.items()}
    candidates += _fact_candidates(ids=ids, live=live, project_deployments=project_deployments, facts=facts)
    summary = EvaluationSummary(rules=_rules_of(live, ids, DEPLOYMENT_RULE_KINDS).count())
    summary.changed, summary.notifications = retired
    if not candidates:
        return summary  # the usual minute of a healthy deployment: nothing breached, nothing to resolve

    # Alerts are read locked, in one order, and written in the same transaction: an evaluation of the same deployment
    # running beside this one (a late collection's beside the next minute's) waits, then sees what this one decided,
    # so a change of status is decided, and notified, once.
    with transaction.atomic():
        rules = {
            r["id"]: r for r in AlertRule.objects.filter(pk__in={c[0] for c in candidates}).values(*_RULE_ROW_FIELDS)
        }
        alerts = {
            (a.rule_id, a.deployment_id): a
            for a in Alert.objects.select_for_update()
            .filter(rule_id__in=rules, deployment_id__in={c[1] for c in candidates})
            .order_by("pk")
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
        events: list[PendingEvent] = []
        notifications: list[tuple[Alert, str]] = []

        for rule_id, dep_id, value in candidates:
            rule = rules[rule_id]
            deployment = live[dep_id]
            alert = alerts.get((rule_id, dep_id))
            limit_field = TIER_LIMIT_FIELDS.get(rule["metric"] or "", "")
            tier_limit = {
                "max_connections": deployment.max_connections,
                "messages_per_second": deployment.messages_per_second,
            }.get(limit_field)
            spec = _spec_for(rule, spec_cache)
            breached = _breached(spec, value, tier_limit)
            if not breached and (alert is None or alert.status == AlertStatus.RESOLVED):
                continue  # a fact with a value that breaches nothing, and no alert to resolve
            silenced = any(
                silence_matches(
                    silence,
                    deployment=deployment.public_id,
                    rule=rule["public_id"],
                    metric=rule["metric"],
                    severity=rule["severity"],
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
            detail = facts.get(rule["kind"], {}).get(dep_id, (None, ""))[1]
            alert.summary = _alert_summary(rule, deployment.public_id, value, transition.threshold, detail)[:300]
            if transition.changed:
                summary.changed += 1
                _apply_transition(alert, transition, now)
                events.append(PendingEvent(alert, transition.status, value, transition.reason))
                if transition.suppressed_by:
                    events.append(
                        PendingEvent(
                            alert,
                            AlertEvent.Kind.SUPPRESSED,
                            value,
                            f"notification withheld: {'silence' if silenced else 'maintenance'}",
                        )
                    )
            if transition.notify is not None:
                _note_notification(alert, transition, value, now, events, notifications)

        summary.notifications += _evaluation_save(
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
    events: list[PendingEvent],
    notifications: list,
) -> None:
    kind = {"fire": Delivery.Kind.FIRE, "resolve": Delivery.Kind.RESOLVE, "repeat": Delivery.Kind.REPEAT}[
        str(transition.notify)
    ]
    alert.last_notified_at = None if kind == Delivery.Kind.RESOLVE else now
    notifications.append((alert, kind))
    events.append(PendingEvent(alert, AlertEvent.Kind.NOTIFIED, value, f"{kind} notification"))


def _evaluation_save(
    *,
    new_alerts: list[Alert],
    changed_alerts: list[Alert],
    fields: list[str],
    events: list[PendingEvent],
    notifications: list[tuple[Alert, str]],
    rule_objects: dict[int, AlertRule] | None,
    live: dict[int, LiveDeployment],
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
                AlertEvent(alert_id=e.alert.pk, kind=e.kind, value=e.value, message=e.message[:500], created_at=now)
                for e in events
                if e.alert.pk
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
        return alerts_notify(notifications, rule_objects, live, now)


def _alerts_update(alerts: list[Alert], fields: list[str]) -> None:
    """Save these fields of many alerts in one statement, an UPDATE … FROM unnest(arrays): Django's bulk_update builds
    a CASE WHEN per field and row, which takes seconds for the few hundred firing alerts a full evaluation refreshes.
    """
    if not alerts:
        return
    q = connection.ops.quote_name
    columns = [_field(Alert, name) for name in fields]
    arrays = [[a.pk for a in alerts]] + [
        [f.get_db_prep_save(getattr(a, f.attname), connection) for a in alerts] for f in columns
    ]
    unnest = ", ".join(["%s::bigint[]"] + [f"%s::{f.db_type(connection)}[]" for f in columns])
    names = ", ".join(q(str(f.column)) for f in columns)
    assignments = ", ".join(f"{q(str(f.column))} = v.{q(str(f.column))}" for f in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {q(Alert._meta.db_table)} AS a SET {assignments} "
            f"FROM unnest({unnest}) AS v(id, {names}) WHERE a.id = v.id",
            arrays,
        )


def _apply_transition(alert: Alert, transition: evaluation.Transition, now: dt.datetime) -> None:
    """Carry the evaluator's change of status onto the alert row."""
    if transition.status is None or not isinstance(transition.since, dt.datetime):
        # evaluation.evaluate, given a datetime `now`, always says what the status became and since when.
        raise ValueError(f"a change of status needs the status and a datetime: {transition!r}")
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


def _alert_summary(rule: dict, deployment_public_id: str, value, threshold, detail: str = "") -> str:
    if rule["kind"] == AlertRule.Kind.DEPLOYMENT_UNAVAILABLE:
        state = detail or ("unavailable" if value else "running again")
        return f"{rule['name']}: {deployment_public_id} is {state}"
    what = rule["metric"] or rule["kind"]
    shown = "no data" if value is None else f"{value:g}"
    limit = "" if threshold is None else f" (threshold {rule['operator']} {threshold:g})"
    return f"{rule['name']}: {what} = {shown}{limit} on {deployment_public_id}"


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


def _budget_summary(rule: AlertRule, spend_minor: int, budget_minor: int, currency: str, exceeded: bool) -> str:
    subject = (
        f"organization {rule.organization.name}"
        if rule.budget_scope == AlertRule.BudgetScope.ORGANIZATION
        else f"project {rule.project.name}"
    )
    operator = rule.operator if exceeded else _NOT[rule.operator]
    return (
        f"{rule.name}: {_BUDGET_LABELS[rule.metric]} {to_decimal(spend_minor, currency)} {currency} {operator} "
        f"{to_decimal(budget_minor, currency)} {currency} on {subject}"
    )


def budget_rules_evaluate(*, now: dt.datetime | None = None) -> EvaluationSummary:
    """Evaluate every enabled budget rule against this month's spend of its project or its organization.

    Spend comes from billing's selectors, computed once per organization or (organization, project) that some rule
    needs, never once per rule; it is compared with the budget in integer minor units. The lifecycle (pending,
    firing, resolved, acknowledgements, silences, repeats) is alerts.evaluation's pure `evaluate`, as for metrics.
    """
    from billing.selectors import billing_account_for, spend_month_to_date

    now = now or timezone.now()
    retired = _retired_alerts_resolve(deployment_ids=None, kinds=(AlertRule.Kind.BUDGET,), now=now)
    # A closed (deleted) organization spends nothing and has nobody left to tell: its rules are not evaluated.
    rules = list(
        AlertRule.objects.filter(
            enabled=True, kind=AlertRule.Kind.BUDGET, organization__closed_at__isnull=True
        ).select_related("organization", "project")
    )
    summary = EvaluationSummary(rules=len(rules))
    summary.changed, summary.notifications = retired
    if not rules:
        return summary

    accounts: dict[int, BillingAccount] = {}
    spends: dict[tuple[int, int | None], Spend] = {}
    for rule in rules:
        key = (rule.organization_id, rule.project_id if rule.budget_scope == AlertRule.BudgetScope.PROJECT else None)
        if key not in spends:
            if rule.organization_id not in accounts:
                accounts[rule.organization_id] = billing_account_for(organization=rule.organization)
            spends[key] = spend_month_to_date(account=accounts[rule.organization_id], now=now, project_id=key[1])
    # Read locked and written in one transaction, as in rules_evaluate: two evaluations at once decide a change once.
    with transaction.atomic():
        alerts = {
            a.rule_id: a
            for a in Alert.objects.select_for_update()
            .filter(rule_id__in=[r.pk for r in rules], deployment__isnull=True)
            .order_by("pk")
        }
        silences_by_project: dict[int, list[Silence]] = defaultdict(list)
        for silence in Silence.objects.filter(
            project_id__in={r.project_id for r in rules}, starts_at__lte=now, ends_at__gt=now
        ):
            silences_by_project[silence.project_id].append(silence)

        new_alerts: list[Alert] = []
        changed_alerts: list[Alert] = []
        events: list[PendingEvent] = []
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
            budget = rule.budget_minor
            if budget is None:  # the alert_rule_budget_fields constraint forbids it; a rule without one decides nothing
                continue
            amount = spend.month_to_date if rule.metric == SPEND_MONTH_TO_DATE else spend.forecast
            exceeded = amount >= budget if rule.operator == ">=" else amount > budget
            alert = alerts.get(rule.pk)
            if not exceeded and (alert is None or alert.status == AlertStatus.RESOLVED):
                continue
            silenced = any(
                silence_matches(
                    silence, deployment=None, rule=rule.public_id, metric=rule.metric, severity=rule.severity
                )
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
                _budget_spec(rule),
                [(now, 1 if exceeded else 0)],
                now,
                state,
                None,
                maintenance=silenced and alert is None,
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
            alert.summary = _budget_summary(rule, amount, budget, spend.currency, exceeded)[:300]
            if transition.changed:
                summary.changed += 1
                _apply_transition(alert, transition, now)
                events.append(PendingEvent(alert, transition.status, None, f"{transition.reason}: {alert.summary}"))
                if transition.suppressed_by:
                    events.append(
                        PendingEvent(alert, AlertEvent.Kind.SUPPRESSED, None, "notification withheld: silence")
                    )
            if transition.notify is not None:
                _note_notification(alert, transition, None, now, events, notifications)

        summary.notifications += _evaluation_save(
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
