"""An alert whose rule was disabled, or whose deployment was deleted, while it fired resolves at the next evaluation
and tells whoever was told it fired, once; it never stays firing with nothing left to evaluate it."""

import datetime as dt

import pytest
from django.utils import timezone

from alerts import collection, evaluate, rules
from alerts.models import Alert, AlertEvent
from deployments.models import Deployment, DesiredState, Operation
from tests.alerts.test_tasks import (  # noqa: F401 - eager, private_webhooks and receiver are fixtures
    eager,
    make_deployment,
    private_webhooks,
    receiver,
    rule_for,
    store,
    webhook_channel,
)

pytestmark = pytest.mark.django_db


def _fire(deployment, receiver, capture):
    webhook_channel(deployment.project.organization, receiver.url)
    rule = rule_for(deployment, window_seconds=7200)
    t0 = timezone.now()
    store(deployment, "connections", 5, t0)
    with capture(execute=True):
        evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing"
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing"]
    return rule, alert, t0


def test_firing_alert_resolves_once_when_its_rule_is_disabled(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    rule, alert, t0 = _fire(deployment, receiver, django_capture_on_commit_callbacks)

    rules.alert_rule_update(rule=rule, actor=None, enabled=False)
    for minutes in (1, 2):
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=minutes), deployment_ids=[deployment.pk])

    alert.refresh_from_db()
    assert alert.status == "resolved" and alert.resolved_at == t0 + dt.timedelta(minutes=1)
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing", "alert.resolved"]
    assert AlertEvent.objects.filter(alert=alert, kind="resolved").count() == 1


def test_firing_alert_resolves_once_when_its_deployment_is_deleted(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    _, alert, t0 = _fire(deployment, receiver, django_capture_on_commit_callbacks)

    # Deleted and torn down by the reconciler: no longer collected, so only the fan-out's evaluation can reach it.
    Deployment.objects.filter(pk=deployment.pk).update(desired_state=DesiredState.DELETED, status="deleted")
    assert deployment.pk in collection.uncollected_deployment_ids_to_evaluate()
    for minutes in (1, 2):
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=minutes), deployment_ids=[deployment.pk])

    alert.refresh_from_db()
    assert alert.status == "resolved"
    bodies = receiver.bodies()
    assert [b["event"] for b in bodies] == ["alert.firing", "alert.resolved"]
    assert bodies[1]["deployment"] == deployment.public_id
    assert deployment.pk not in collection.uncollected_deployment_ids_to_evaluate()


def test_resolve_of_a_disabled_rule_is_withheld_when_a_silence_matches(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    rule, alert, t0 = _fire(deployment, receiver, django_capture_on_commit_callbacks)
    rules.silence_create(
        project=deployment.project,
        actor=None,
        matchers={"rule": rule.public_id},
        starts_at=t0,
        ends_at=t0 + dt.timedelta(hours=1),
    )

    rules.alert_rule_update(rule=rule, actor=None, enabled=False)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=1), deployment_ids=[deployment.pk])

    alert.refresh_from_db()
    assert alert.status == "resolved"
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing"]


def test_firing_budget_alert_resolves_once_when_its_rule_is_disabled(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    from tests.alerts.test_budget_rules import NOW, budget_rule, meter, running_deployment

    project = owner_org.default_project
    webhook_channel(owner_org.organization, receiver.url)
    running_deployment(project)
    meter()
    rule = budget_rule(project, "80.00")
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.budget_rules_evaluate(now=NOW)
    assert Alert.objects.get(rule=rule).status == "firing"

    rules.alert_rule_update(rule=rule, actor=None, enabled=False)
    for minutes in (15, 30):
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.budget_rules_evaluate(now=NOW + dt.timedelta(minutes=minutes))

    assert Alert.objects.get(rule=rule).status == "resolved"
    bodies = receiver.bodies()
    assert [b["event"] for b in bodies] == ["alert.firing", "alert.resolved"]
    assert bodies[1]["subject"] == {"type": "project", "id": project.public_id}


def test_firing_alert_of_a_project_rule_resolves_with_its_notice_when_the_deployment_moves_away(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    from deployments import services as deployment_services
    from projects import services as project_services

    deployment = make_deployment(owner_org.default_project)
    webhook_channel(owner_org.organization, receiver.url)
    rule = rules.alert_rule_create(
        project=deployment.project, actor=None, name="Busy anywhere", metric="connections", aggregation="max",
        window_seconds=7200, operator=">", threshold=2,
    )  # fmt: skip
    t0 = timezone.now()
    store(deployment, "connections", 5, t0)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    alert = Alert.objects.get(rule=rule)
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing"]

    Operation.objects.filter(deployment=deployment).update(status="succeeded")  # created, nothing in flight
    target = project_services.project_create(organization=owner_org.organization, actor=None, name="Elsewhere")
    with django_capture_on_commit_callbacks(execute=True):
        deployment_services.deployment_move(deployment=deployment, actor=None, project=target)

    alert.refresh_from_db()
    assert alert.status == "resolved"
    bodies = receiver.bodies()
    assert [b["event"] for b in bodies] == ["alert.firing", "alert.resolved"]
    assert bodies[1]["alert"] == alert.public_id and bodies[1]["project"] == owner_org.default_project.public_id


def test_firing_alert_sends_its_resolve_when_its_rule_is_deleted(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    rule, alert, t0 = _fire(deployment, receiver, django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=True):
        rules.alert_rule_delete(rule=rule, actor=None)

    assert not Alert.objects.filter(pk=alert.pk).exists()  # deleted with its rule, as the API says
    bodies = receiver.bodies()
    assert [b["event"] for b in bodies] == ["alert.firing", "alert.resolved"]
    assert bodies[1]["alert"] == alert.public_id and bodies[1]["status"] == "resolved"


def test_firing_alert_resolves_once_and_fires_anew_when_its_rule_is_edited_to_measure_another_metric(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    rule, alert, t0 = _fire(deployment, receiver, django_capture_on_commit_callbacks)

    # The new metric has no samples yet: evaluation keeps an alert whose metric has no data as it is, so without the
    # edit retiring it, the alert about connections stayed firing under a rule about subscriptions.
    with django_capture_on_commit_callbacks(execute=True):
        rules.alert_rule_update(rule=rule, actor=None, metric="subscriptions")
    alert.refresh_from_db()
    assert alert.status == "resolved"
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing", "alert.resolved"]
    resolved = AlertEvent.objects.get(alert=alert, kind="resolved")
    assert resolved.message == "its rule now measures another metric"

    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=1), deployment_ids=[deployment.pk])
    assert Alert.objects.get(rule=rule).status == "resolved"
    store(deployment, "subscriptions", 9, t0 + dt.timedelta(minutes=2))
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=2), deployment_ids=[deployment.pk])
    assert Alert.objects.get(rule=rule).status == "firing"
    bodies = receiver.bodies()
    assert [b["event"] for b in bodies] == ["alert.firing", "alert.resolved", "alert.firing"]
    assert AlertEvent.objects.filter(alert__rule=rule, kind="resolved").count() == 1


def test_firing_alert_stays_one_alert_when_only_its_rules_threshold_is_edited(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    rule, alert, t0 = _fire(deployment, receiver, django_capture_on_commit_callbacks)

    with django_capture_on_commit_callbacks(execute=True):
        rules.alert_rule_update(rule=rule, actor=None, threshold=3, name="Still too many")
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=1), deployment_ids=[deployment.pk])

    alert.refresh_from_db()
    assert alert.status == "firing"
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing"]
