"""rules_evaluate reads in full only the (rule, deployment) pairs that can change something. PostgreSQL decides them
in one SQL statement; SQLite (the embedded default) in Python. Both must pick exactly the same pairs and values."""

import datetime as dt

import pytest
from django.utils import timezone

from alerts import services
from alerts.models import Alert, AlertRule, AlertStatus
from deployments.models import Deployment, DesiredState
from tests.alerts.test_tasks import make_deployment, store

pytestmark = pytest.mark.django_db


def _both(now, ids=None):
    live = {
        row[0]: row[1:]
        for row in Deployment.objects.exclude(desired_state=DesiredState.DELETED)
        .filter(**({"pk__in": ids} if ids is not None else {}))
        .values_list("pk", "public_id", "project_id", "tier__max_connections", "tier__messages_per_second")
    }
    by_project = {}
    for dep_id, (_, project_id, _, _) in live.items():
        by_project.setdefault(project_id, []).append(dep_id)
    sql = services._metric_candidates_sql(now=now, ids=ids)
    python = services._metric_candidates_python(now=now, ids=ids, live=live, project_deployments=by_project)
    return sorted(sql), sorted(python)


def test_sql_and_python_candidates_agree_on_every_operator_aggregation_and_scope(owner_org):
    project = owner_org.default_project
    a, b, gone = (make_deployment(project, name) for name in ("a", "b", "gone"))
    Deployment.objects.filter(pk=gone.pk).update(desired_state=DesiredState.DELETED)
    now = timezone.now()
    for i, value in enumerate([5.0, 9.0, 7.0]):  # oldest to newest: last 7, max 9, min 5, sum 21, avg 7, count 3
        at = now - dt.timedelta(seconds=50 - 10 * i)
        for dep in (a, gone):
            store(dep, "connections", value, at)
        store(b, "connections", value * 100, at)
    store(a, "messages_received_rate", 100.0, now - dt.timedelta(seconds=5))
    store(a, "connections", 1000.0, now - dt.timedelta(seconds=600))  # outside every window below

    rules = []
    for op, threshold in ((">", 8), (">=", 9), ("<", 6), ("<=", 5), ("==", 7), ("!=", 7)):
        for aggregation in ("avg", "max", "min", "sum", "last", "count"):
            rules.append(
                services.alert_rule_create(
                    project=project,
                    actor=None,
                    deployment=a,
                    name=f"{aggregation} {op} {threshold}",
                    metric="connections",
                    aggregation=aggregation,
                    window_seconds=60,
                    operator=op,
                    threshold=threshold,
                )
            )
    # Percent of the tier's limit (1k tier: 1,000 connections, messages per second per the catalog), project-wide.
    rules.append(
        services.alert_rule_create(
            project=project,
            actor=None,
            name="busy",
            metric="connections",
            aggregation="max",
            window_seconds=60,
            operator=">",
            threshold=80,
            threshold_unit="percent_of_tier_limit",
        )
    )
    rules.append(
        services.alert_rule_create(
            project=project,
            actor=None,
            name="rate",
            metric="messages_received_rate",
            aggregation="last",
            window_seconds=60,
            operator=">=",
            threshold=1,
            threshold_unit="percent_of_tier_limit",
        )
    )
    # No samples in its window: a gap, which matters only with an unresolved alert.
    quiet = services.alert_rule_create(
        project=project,
        actor=None,
        deployment=b,
        name="quiet",
        metric="topics",
        aggregation="avg",
        window_seconds=60,
        operator=">",
        threshold=0,
    )
    Alert.objects.create(
        organization=owner_org.organization,
        project=project,
        rule=quiet,
        deployment=b,
        status=AlertStatus.FIRING,
        since=now,
        severity="warning",
    )
    resolved = services.alert_rule_create(
        project=project,
        actor=None,
        deployment=b,
        name="was",
        metric="retained",
        aggregation="avg",
        window_seconds=60,
        operator=">",
        threshold=0,
    )
    Alert.objects.create(
        organization=owner_org.organization,
        project=project,
        rule=resolved,
        deployment=b,
        status=AlertStatus.RESOLVED,
        since=now,
        severity="warning",
    )
    AlertRule.objects.filter(pk=rules[0].pk).update(enabled=False)

    sql, python = _both(now)
    assert sql == python
    picked = {(rule_id, dep_id) for rule_id, dep_id, _ in sql}
    assert (rules[0].pk, a.pk) not in picked  # disabled
    assert (quiet.pk, b.pk) in picked and (resolved.pk, b.pk) not in picked
    assert not any(dep_id == gone.pk for _, dep_id, _ in sql)
    by_name = {AlertRule.objects.get(pk=r).name: v for r, d, v in sql if d == a.pk}
    assert by_name["max > 8"] == 9 and by_name["sum > 8"] == 21 and "avg > 8" not in by_name
    assert by_name["last == 7"] == 7 and by_name["count <= 5"] == 3 and "min != 7" in by_name
    assert {d for r, d, _ in sql if r == rules[-2].pk} == {b.pk}  # 900 > 80 % of 1,000; a's 9 is not
    assert _both(now, ids=[b.pk])[0] == _both(now, ids=[b.pk])[1] == sorted(t for t in sql if t[1] == b.pk)


def test_full_evaluation_fires_the_same_alerts_as_per_deployment_evaluation(owner_org):
    project = owner_org.default_project
    deployments = [make_deployment(project, f"d{i}") for i in range(3)]
    now = timezone.now()
    for i, dep in enumerate(deployments):
        store(dep, "connections", 850.0 + i * 100, now - dt.timedelta(seconds=10))  # 850, 950, 1050 of 1,000
    services.rules_evaluate(now=now)
    full = set(Alert.objects.values_list("rule__default_key", "deployment_id", "status"))
    Alert.objects.all().delete()
    for dep in deployments:
        services.rules_evaluate(now=now, deployment_ids=[dep.pk])
    assert set(Alert.objects.values_list("rule__default_key", "deployment_id", "status")) == full
    assert {(key, status) for key, _, status in full} == {("connections_high", "pending")}
    assert len(full) == 3
