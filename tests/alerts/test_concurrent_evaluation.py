"""Two evaluations of the same deployment at once (a collection that ran late beside the next minute's) decide an
alert's change once: one fire notification per channel, never two."""

import datetime as dt
import threading

import pytest
from django.db import connection
from django.utils import timezone

from alerts import evaluate
from alerts.models import Alert, AlertEvent
from notifications import services as notification_services
from notifications.models import Delivery
from tests.alerts.test_tasks import make_deployment, rule_for, store


def _resolved_before(rule, deployment=None):
    return Alert.objects.create(
        organization=rule.organization, project=rule.project, rule=rule, deployment=deployment, status="resolved",
        since=timezone.now() - dt.timedelta(days=1), severity=rule.severity,
    )  # fmt: skip


def _run_side_by_side(monkeypatch, evaluation):
    """Run `evaluation` in two threads that have both read the alerts before either writes (each waits a little
    for the other before saving)."""
    barrier = threading.Barrier(2, timeout=3)
    save = evaluate._evaluation_save

    def meeting_first(**kwargs):
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return save(**kwargs)

    monkeypatch.setattr(evaluate, "_evaluation_save", meeting_first)
    errors = []

    def run():
        try:
            evaluation()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []


@pytest.mark.django_db(transaction=True)
def test_alert_fires_and_is_notified_once_when_two_evaluations_run_at_once(owner_org, monkeypatch):
    monkeypatch.setattr(notification_services, "publish", lambda *args, **kwargs: True)  # no worker here
    deployment = make_deployment(owner_org.default_project)
    notification_services.channel_create(
        organization=owner_org.organization, actor=None, name="ops", type="email", config={"addresses": ["o@x.io"]}
    )
    rule = rule_for(deployment, window_seconds=7200)
    t0 = timezone.now()
    # It fired and resolved before: the row exists, so the unique constraint on new alerts cannot tell them apart.
    _resolved_before(rule, deployment=deployment)
    store(deployment, "connections", 5, t0)

    _run_side_by_side(monkeypatch, lambda: evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk]))
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing"
    assert Delivery.objects.filter(alert_public_id=alert.public_id, kind="fire").count() == 1
    assert AlertEvent.objects.filter(alert=alert, kind="firing").count() == 1


@pytest.mark.django_db(transaction=True)
def test_budget_alert_fires_and_is_notified_once_when_two_evaluations_run_at_once(owner_org, monkeypatch):
    from tests.alerts.test_budget_rules import NOW, budget_rule, meter, running_deployment

    monkeypatch.setattr(notification_services, "publish", lambda *args, **kwargs: True)  # no worker here
    project = owner_org.default_project
    notification_services.channel_create(
        organization=owner_org.organization, actor=None, name="ops", type="email", config={"addresses": ["o@x.io"]}
    )
    running_deployment(project)
    meter()
    rule = budget_rule(project, "80.00")
    _resolved_before(rule)

    _run_side_by_side(monkeypatch, lambda: evaluate.budget_rules_evaluate(now=NOW))
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing"
    assert Delivery.objects.filter(alert_public_id=alert.public_id, kind="fire").count() == 1
