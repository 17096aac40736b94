"""An existing database migrates forward through the move of channels, deliveries and platform events from alerts to
notifications without losing a row: Django's MigrationExecutor on the real PostgreSQL, from the last state before the
move, with data written through the models as they were then."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from audit.models import AuditEvent
from controlplane import crypto

BEFORE = [("alerts", "0004_metric_sample_without_db_foreign_key")]
URL = "https://alice:url-password@hooks.example.com/in?team=ops&token=query-token-value"


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets or executor.loader.graph.leaf_nodes())
    return executor


@pytest.mark.django_db(transaction=True)
def test_channel_delivery_attempt_event_and_routing_survive_when_existing_database_migrates_forward(
    owner_org, deployments_catalog
):
    from alerts import rules
    from alerts.models import Alert
    from tests.alerts.test_tasks import make_deployment

    deployment = make_deployment(owner_org.default_project)
    rule = rules.alert_rule_create(
        project=deployment.project,
        actor=None,
        deployment=deployment,
        name="busy",
        metric="connections",
        threshold=1,
    )
    alert = Alert.objects.create(
        organization=owner_org.organization,
        project=deployment.project,
        rule=rule,
        deployment=deployment,
        status="firing",
        since=deployment.created_at,
        severity="warning",
    )
    organization_id = owner_org.organization.pk
    try:
        old = _migrate(BEFORE).loader.project_state(BEFORE).apps
        channel = old.get_model("alerts", "NotificationChannel").objects.create(
            organization_id=organization_id,
            name="on-call",
            type="webhook",
            config={"url": URL, "headers": {"X-Api-Key": "header-secret-value"}},
            secret_encrypted=crypto.encrypt_str("whsec_kept"),
        )
        delivery = old.get_model("alerts", "Delivery").objects.create(
            organization_id=organization_id, channel=channel, alert_id=alert.pk, kind="fire", payload={"a": 1}
        )
        old.get_model("alerts", "DeliveryAttempt").objects.create(
            delivery=delivery, number=1, ok=False, status_code=500, error="HTTP 500"
        )
        old.get_model("alerts", "PlatformEvent").objects.create(
            organization_id=organization_id,
            kind="deployment_failed",
            subject=deployment.public_id,
            severity="critical",
            message="failed",
            dedup_key="deployment_failed:x",
        )
        old.get_model("alerts", "AlertRule").objects.get(pk=rule.pk).channels.add(channel)
        old.get_model("alerts", "CollectorState").objects.filter(deployment_id=deployment.pk).update(
            state={"defaults_created": True, "counters": {}}
        )
        AuditEvent.objects.create(
            organization_id=organization_id,
            action="notification_channel.create",
            target_type="notificationchannel",
            target_id=channel.public_id,
            summary={"name": "on-call", "type": "webhook", "config": {"url": URL, "headers": {"X-Api-Key": "…"}}},
        )
    finally:
        _migrate(None)  # forward to the latest migration of every app, whatever happened above

    from django.contrib.contenttypes.models import ContentType

    from alerts.models import AlertRule, CollectorState
    from notifications import services
    from notifications.models import Delivery, DeliveryAttempt, NotificationChannel, PlatformEvent

    moved = NotificationChannel.objects.get(public_id=channel.public_id)
    assert moved.name == "on-call" and moved.organization_id == organization_id
    assert moved.config == {
        "url": "https://…@hooks.example.com/in?team=…&token=…",
        "headers": {"X-Api-Key": "…"},
    }
    assert services.channel_config(moved) == {"url": URL, "headers": {"X-Api-Key": "header-secret-value"}}
    assert crypto.decrypt_str(moved.secret_encrypted) == "whsec_kept"
    kept = Delivery.objects.get(public_id=delivery.public_id)
    assert (kept.channel_id, kept.alert_public_id, kept.kind, kept.payload) == (
        moved.pk,
        alert.public_id,
        "fire",
        {"a": 1},
    )
    assert list(DeliveryAttempt.objects.filter(delivery=kept).values_list("number", "status_code")) == [(1, 500)]
    assert PlatformEvent.objects.get(dedup_key="deployment_failed:x").subject == deployment.public_id
    assert list(AlertRule.objects.get(pk=rule.pk).channels.all()) == [moved]
    state = CollectorState.objects.get(deployment=deployment)
    assert "defaults_created" not in state.state and state.state["counters"] == {}
    assert len(state.default_rule_keys) == 10 and "deployment_unavailable" not in state.default_rule_keys
    peering = AlertRule.objects.get(deployment=deployment, default_key="vpc_peering_abnormal")
    assert (peering.kind, peering.metric, peering.aggregation) == ("metric", "vpc_peering_abnormal", "last")
    audit = AuditEvent.objects.get(target_id=channel.public_id)
    assert audit.summary["config"]["url"] == "https://…@hooks.example.com/in?team=…&token=…"
    assert ContentType.objects.filter(app_label="notifications", model="notificationchannel").exists()
    assert not ContentType.objects.filter(app_label="alerts", model="notificationchannel").exists()
