"""A real broker crashes and comes back: the "deployment unavailable" default alert fires and resolves through the
normal lifecycle and a real channel.

A real mosquitto started by the reconciler, killed with SIGKILL, noticed by the deployments app's watcher (status
`degraded`); the beat fan-out (`alerts.collect_metrics`, run inline) evaluates it although it cannot be collected,
and a webhook receiver on loopback is told; the reconciler restores the broker and the next fan-out resolves it.
"""

import pytest

from alerts import tasks
from alerts.models import Alert
from deployments import services
from deployments.models import Deployment
from deployments.reconcile import reconcile_deployment, watch_local_brokers
from tests.alerts.test_tasks import Receiver, eager, private_webhooks, webhook_channel  # noqa: F401 - fixtures
from tests.celery_worker import broker_pids, kill_and_wait

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]


def test_unavailable_alert_fires_when_broker_is_killed_and_resolves_when_it_is_restored(
    owner_org, brokers_dir, eager, private_webhooks, settings, django_capture_on_commit_callbacks
):
    settings.COLLECT_TIMEOUT_SECONDS = 2.0
    receiver = Receiver()
    try:
        deployment, _ = services.deployment_create(
            project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
        )
        assert reconcile_deployment(deployment.pk).state == "converged"
        webhook_channel(owner_org.organization, receiver.url)
        with django_capture_on_commit_callbacks(execute=True):
            tasks.collect_metrics()
        assert not Alert.objects.filter(rule__default_key="deployment_unavailable").exists()

        [pid] = broker_pids(brokers_dir)
        kill_and_wait(pid)
        assert watch_local_brokers()["recorded"] == 1
        assert Deployment.objects.get(pk=deployment.pk).status == "degraded"
        with django_capture_on_commit_callbacks(execute=True):
            tasks.collect_metrics()
        alert = Alert.objects.get(rule__default_key="deployment_unavailable")
        assert (alert.status, alert.severity) == ("firing", "critical")
        assert "degraded (BrokerCrashed" in alert.summary and "SIGKILL" in alert.summary

        assert reconcile_deployment(deployment.pk).state == "converged"
        assert Deployment.objects.get(pk=deployment.pk).status == "running"
        with django_capture_on_commit_callbacks(execute=True):
            tasks.collect_metrics()
    finally:
        receiver.stop()
    alert.refresh_from_db()
    assert alert.status == "resolved"
    unavailable = [b for b in receiver.bodies() if b["rule"]["kind"] == "deployment_unavailable"]
    assert [(b["event"], b["deployment"]) for b in unavailable] == [
        ("alert.firing", deployment.public_id),
        ("alert.resolved", deployment.public_id),
    ]
