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
    Alert.objects.create(
        organization=owner_org.organization,
        project=deployment.project,
        rule=rule,
        deployment=deployment,
        status="resolved",
        since=t0 - dt.timedelta(hours=1),
        severity="critical",
    )
    store(deployment, "connections", 5, t0)

    # Both have read the alert as resolved before either writes: each waits (a little) for the other here.
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
            evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
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
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing"
    assert Delivery.objects.filter(alert_public_id=alert.public_id, kind="fire").count() == 1
    assert AlertEvent.objects.filter(alert=alert, kind="firing").count() == 1
