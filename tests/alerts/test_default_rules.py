"""Default rules exist from the deployment's creating transaction on, each given once; the "deployment unavailable"
default fires while a deployment is degraded (or failed after having run) and resolves when it runs again."""

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from alerts import collection, defaults, evaluate
from alerts.models import Alert, AlertEvent, AlertRule, CollectorState
from deployments.models import Deployment, StatusInterval
from notifications.models import Delivery
from tests.alerts.test_tasks import Receiver, eager, make_deployment, private_webhooks, webhook_channel  # noqa: F401

pytestmark = pytest.mark.django_db


def test_default_rules_listed_by_the_api_right_after_the_deployment_is_accepted(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    project_url = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}"
    created = client.post(
        f"{project_url}/deployments",
        {"name": "plant", "plan": "dedicated", "tier": "1k", "region": "local"},
        format="json",
    )
    assert created.status_code == 202, created.content
    listed = client.get(
        f"{project_url}/alert-rules", {"deployment": created.json()["deployment"]["id"], "page_size": 50}
    ).json()["results"]
    assert sorted(r["default_key"] for r in listed) == sorted(defaults.keys_for("dedicated"))
    unavailable = next(r for r in listed if r["default_key"] == "deployment_unavailable")
    assert (unavailable["kind"], unavailable["severity"], unavailable["name"]) == (
        "deployment_unavailable",
        "critical",
        "Deployment unavailable",
    )


def test_default_rules_roll_back_with_the_deployment_when_its_transaction_fails(owner_org):
    from deployments import services as deployment_services

    with pytest.raises(RuntimeError), transaction.atomic():
        deployment_services.deployment_create(
            project=owner_org.default_project, actor=None, name="gone", plan="dedicated", tier="1k", region="local"
        )
        assert AlertRule.objects.count() == len(defaults.keys_for("dedicated"))  # created inside the same transaction
        raise RuntimeError("the creation failed after the hook ran")
    assert not AlertRule.objects.exists() and not Deployment.objects.exists()


def test_deleted_default_stays_deleted_when_the_deployment_is_collected_and_evaluated(owner_org):
    from controlplane import crypto
    from deployments.models import Region
    from tests.fakes.emqx_monitor import EmqxMonitorFake

    deployment = make_deployment(owner_org.default_project)
    AlertRule.objects.filter(deployment=deployment, default_key="auth_failures").delete()
    region = Region.objects.create(code="k8s-defaults", display_name="K8s", provider="aws", driver="kubernetes")
    fake = EmqxMonitorFake(key="controlplane", secret="s3cret-value").start()
    try:
        Deployment.objects.filter(pk=deployment.pk).update(
            region=region,
            observed_details={"management_url": fake.base_url},
            api_secret_encrypted=crypto.encrypt_str("s3cret-value"),
        )
        state = collection.deployment_collect(deployment_id=deployment.pk)  # replaces the collector's own state
        assert state.available, state.last_error
    finally:
        fake.stop()
    evaluate.rules_evaluate(deployment_ids=[deployment.pk])
    assert defaults.create_default_rules(deployment=deployment) == 0
    keys = set(AlertRule.objects.filter(deployment=deployment).values_list("default_key", flat=True))
    assert keys == set(defaults.keys_for("dedicated")) - {"auth_failures"}


def test_default_added_by_a_later_release_reaches_an_existing_deployment_once_when_evaluated(owner_org):
    deployment = make_deployment(owner_org.default_project)
    # As a deployment created before "deployment unavailable" existed: the first ten defaults, one since deleted.
    AlertRule.objects.filter(deployment=deployment, default_key__in=["deployment_unavailable", "acl_denied"]).delete()
    CollectorState.objects.filter(deployment=deployment).update(
        default_rule_keys=[k for k in defaults.DEFAULT_KEYS if k != "deployment_unavailable"]
    )
    evaluate.rules_evaluate(deployment_ids=[deployment.pk])
    evaluate.rules_evaluate(deployment_ids=[deployment.pk])
    keys = sorted(AlertRule.objects.filter(deployment=deployment).values_list("default_key", flat=True))
    assert keys == sorted(set(defaults.keys_for("dedicated")) - {"acl_denied"})


def _set_status(deployment, status, *, reason="", message=""):
    conditions = [{"type": "Ready", "status": "True" if status == "running" else "False", "reason": reason}]
    if message:
        conditions[0]["message"] = message
    Deployment.objects.filter(pk=deployment.pk).update(status=status, conditions=conditions)


def test_deployment_unavailable_fires_while_degraded_and_resolves_when_running_again(
    owner_org, eager, private_webhooks, mailoutbox, django_capture_on_commit_callbacks
):
    receiver = Receiver()
    try:
        deployment = make_deployment(owner_org.default_project)
        webhook_channel(owner_org.organization, receiver.url)
        t0 = timezone.now()
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
        assert not Alert.objects.exists()  # running: nothing to say

        _set_status(deployment, "degraded", reason="BrokerRestarting", message="mosquitto exited with code 1")
        for seconds in (60, 120):  # still degraded a minute later: one notification, not two
            with django_capture_on_commit_callbacks(execute=True):
                evaluate.rules_evaluate(now=t0 + dt.timedelta(seconds=seconds), deployment_ids=[deployment.pk])
        alert = Alert.objects.get(deployment=deployment)
        assert alert.rule.default_key == "deployment_unavailable"
        assert (alert.status, alert.severity) == ("firing", "critical")
        assert "degraded" in alert.summary and "BrokerRestarting: mosquitto exited with code 1" in alert.summary

        _set_status(deployment, "running", reason="BrokerRunning")
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.rules_evaluate(now=t0 + dt.timedelta(seconds=180), deployment_ids=[deployment.pk])
    finally:
        receiver.stop()
    alert.refresh_from_db()
    assert alert.status == "resolved"
    bodies = receiver.bodies()
    assert [(b["event"], b["severity"], b["rule"]["kind"]) for b in bodies] == [
        ("alert.firing", "critical", "deployment_unavailable"),
        ("alert.resolved", "critical", "deployment_unavailable"),
    ]
    assert bodies[0]["deployment"] == deployment.public_id
    assert list(AlertEvent.objects.filter(alert=alert).values_list("kind", flat=True)) == [
        "firing",
        "notified",
        "resolved",
        "notified",
    ]
    assert set(Delivery.objects.values_list("alert_public_id", flat=True)) == {alert.public_id}


def test_deployment_unavailable_fires_when_failed_after_having_run_but_not_when_it_never_ran(
    owner_org, django_capture_on_commit_callbacks
):
    ran, never = (make_deployment(owner_org.default_project, name) for name in ("ran", "never"))
    StatusInterval.objects.create(
        deployment=ran, status="running", tier=ran.tier, started_at=timezone.now() - dt.timedelta(hours=1)
    )
    for deployment in (ran, never):
        _set_status(deployment, "failed", reason="DriverRejected", message="port exhausted")
    stopped = make_deployment(owner_org.default_project, "asked-to-stop")
    Deployment.objects.filter(pk=stopped.pk).update(desired_state="stopped", status="degraded")
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate()
    firing = set(Alert.objects.filter(status="firing").values_list("deployment__name", "rule__default_key"))
    assert firing == {("ran", "deployment_unavailable")}


def test_beat_fan_out_evaluates_a_degraded_deployment_when_it_cannot_be_collected(
    owner_org, eager, private_webhooks, django_capture_on_commit_callbacks
):
    from alerts import tasks

    receiver = Receiver()
    try:
        deployment = make_deployment(owner_org.default_project)
        healthy = make_deployment(owner_org.default_project, "healthy")
        webhook_channel(owner_org.organization, receiver.url)
        _set_status(deployment, "degraded", reason="BrokerRestarting")
        # The healthy one is collected (its broker is not really there: a gap, no alert); the degraded one is not
        # collected at all, but evaluated.
        Deployment.objects.filter(pk=healthy.pk).update(endpoints={"host": "127.0.0.1", "ports": {"mqtt": 1}})
        with django_capture_on_commit_callbacks(execute=True):
            assert tasks.collect_metrics() == 1
    finally:
        receiver.stop()
    assert [(b["event"], b["deployment"]) for b in receiver.bodies()] == [("alert.firing", deployment.public_id)]
    assert not CollectorState.objects.get(deployment=deployment).last_attempt_at
