"""rules_evaluate reads in full only the (rule, deployment) pairs that can change something, and PostgreSQL decides
them in one statement. These tests pin that statement to answers worked out by hand on the same data: every
operator and aggregation, windows that exclude their edges, percent-of-tier thresholds, disabled rules, deleted
deployments, gaps that matter only with an unresolved alert."""

import datetime as dt

import pytest
from django.utils import timezone

from alerts import evaluate, rules
from alerts.models import Alert, AlertRule, AlertStatus
from deployments.models import Deployment, DesiredState
from tests.alerts.test_tasks import make_deployment, store

pytestmark = pytest.mark.django_db

OPERATORS = ((">", 8), (">=", 9), ("<", 6), ("<=", 5), ("==", 7), ("!=", 7))
AGGREGATIONS = ("avg", "max", "min", "sum", "last", "count")


def _named(candidates) -> set[tuple[str, str, float | None]]:
    names = dict(AlertRule.objects.values_list("pk", "name"))
    deployments = dict(Deployment.objects.values_list("pk", "name"))
    return {(names[rule], deployments[dep], value) for rule, dep, value in candidates}


def test_sql_candidates_match_hand_computed_pairs_when_every_operator_aggregation_and_scope_is_used(owner_org):
    project = owner_org.default_project
    a, b, gone = (make_deployment(project, name) for name in ("a", "b", "gone"))
    AlertRule.objects.exclude(default_key="").delete()  # only the rules below
    Deployment.objects.filter(pk=gone.pk).update(desired_state=DesiredState.DELETED)
    now = timezone.now()
    for i, value in enumerate([5.0, 9.0, 7.0]):  # oldest to newest: last 7, max 9, min 5, sum 21, avg 7, count 3
        at = now - dt.timedelta(seconds=50 - 10 * i)
        for dep in (a, gone):
            store(dep, "connections", value, at)
        store(b, "connections", value * 100, at)  # 500, 900, 700
    # Just outside a 60 s window on each side: at its open start (now - 60 s) and after now. Either one counted would
    # change several answers below (a max of 850 or 950, a count of 4, a last of 950).
    store(a, "connections", 850.0, now - dt.timedelta(seconds=60))
    store(a, "connections", 950.0, now + dt.timedelta(seconds=1))
    store(a, "messages_received_rate", 100.0, now - dt.timedelta(seconds=5))

    by_name = {}
    for op, threshold in OPERATORS:
        for aggregation in AGGREGATIONS:
            rule = rules.alert_rule_create(
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
            by_name[rule.name] = rule
    # Percent of the tier's limit (the 1k tier: 1,000 connections and 1,000 messages per second), project-wide.
    for name, metric, aggregation, operator, threshold in (
        ("busy", "connections", "max", ">", 80),
        ("rate", "messages_received_rate", "last", ">=", 1),
    ):
        rules.alert_rule_create(
            project=project,
            actor=None,
            name=name,
            metric=metric,
            aggregation=aggregation,
            window_seconds=60,
            operator=operator,
            threshold=threshold,
            threshold_unit="percent_of_tier_limit",
        )
    # No samples in their window: a gap, which is looked at only while an alert is unresolved.
    for name, metric, status in (("quiet", "topics", AlertStatus.FIRING), ("was", "retained", AlertStatus.RESOLVED)):
        rule = rules.alert_rule_create(
            project=project, actor=None, deployment=b, name=name, metric=metric, window_seconds=60, threshold=0
        )
        Alert.objects.create(
            organization=owner_org.organization,
            project=project,
            rule=rule,
            deployment=b,
            status=status,
            since=now,
            severity="warning",
        )
    AlertRule.objects.filter(pk=by_name["max > 8"].pk).update(enabled=False)

    expected = {
        ("sum > 8", "a", 21.0),
        ("max >= 9", "a", 9.0),
        ("sum >= 9", "a", 21.0),
        ("min < 6", "a", 5.0),
        ("count < 6", "a", 3.0),
        ("min <= 5", "a", 5.0),
        ("count <= 5", "a", 3.0),
        ("avg == 7", "a", 7.0),
        ("last == 7", "a", 7.0),
        ("max != 7", "a", 9.0),
        ("min != 7", "a", 5.0),
        ("sum != 7", "a", 21.0),
        ("count != 7", "a", 3.0),
        ("rate", "a", 100.0),  # 100 messages/s >= 1 % of 1,000
        ("busy", "b", 900.0),  # 900 > 80 % of 1,000; a's 9 is not, and gone's are not looked at
        ("quiet", "b", None),
    }
    candidates = evaluate._metric_candidates_sql(now=now, ids=None)
    assert len(candidates) == len(expected)  # no pair twice
    assert _named(candidates) == expected
    only_b = evaluate._metric_candidates_sql(now=now, ids=[b.pk])
    assert _named(only_b) == {("busy", "b", 900.0), ("quiet", "b", None)}


def test_sql_candidates_hold_the_boundary_when_value_equals_a_percent_of_the_tier_limit(owner_org):
    project = owner_org.default_project
    dep = make_deployment(project, "p")
    AlertRule.objects.exclude(default_key="").delete()
    now = timezone.now()
    store(dep, "connections", 300.0, now - dt.timedelta(seconds=10))
    # Exactly 30 % of the 1k tier's 1,000 connections: >= and == hold, > does not. The database computes the
    # threshold as the evaluator does (limit * threshold / 100), so the boundary is the same on both sides.
    for name, operator in (("ge", ">="), ("gt", ">"), ("eq", "==")):
        rules.alert_rule_create(
            project=project,
            actor=None,
            deployment=dep,
            name=name,
            metric="connections",
            aggregation="last",
            window_seconds=60,
            operator=operator,
            threshold=30,
            threshold_unit="percent_of_tier_limit",
        )
    assert _named(evaluate._metric_candidates_sql(now=now, ids=None)) == {("ge", "p", 300.0), ("eq", "p", 300.0)}


def test_full_evaluation_fires_the_same_alerts_as_per_deployment_evaluation(owner_org):
    project = owner_org.default_project
    deployments = [make_deployment(project, f"d{i}") for i in range(3)]
    now = timezone.now()
    for i, dep in enumerate(deployments):
        store(dep, "connections", 850.0 + i * 100, now - dt.timedelta(seconds=10))  # 850, 950, 1050 of 1,000
    evaluate.rules_evaluate(now=now)
    full = set(Alert.objects.values_list("rule__default_key", "deployment_id", "status"))
    Alert.objects.all().delete()
    for dep in deployments:
        evaluate.rules_evaluate(now=now, deployment_ids=[dep.pk])
    assert set(Alert.objects.values_list("rule__default_key", "deployment_id", "status")) == full
    assert {(key, status) for key, _, status in full} == {("connections_high", "pending")}
    assert len(full) == 3
