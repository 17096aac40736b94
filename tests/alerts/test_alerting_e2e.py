"""Alerting end to end on real parts: a deployment provisioned through the API by a real Celery worker (a real
mosquitto), real paho-mqtt clients, collection from $SYS and the broker log, a real HTTP receiver on loopback.

The first tests run collection, evaluation and delivery as Celery tasks in eager mode in this process, so the
email lands in mailoutbox; the last one lets the real worker do all of it after the beat task fans out.
"""

import contextlib
import time

import pytest

from alerts import tasks
from alerts.models import Alert
from bench.mosquitto_floor import ConnackRefused, raw_connack
from notifications.channels import verify_webhook_signature
from notifications.models import Delivery
from tests.alerts.test_tasks import Receiver
from tests.deployments.test_e2e_local import wait_for_status, wait_operation
from tests.deployments.test_local_driver import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# The local driver republishes $SYS every 10 s; waiting a little longer lets the collector see a fresh batch,
# computed while it is connected, so its own connection is subtracted exactly.
COLLECT_TIMEOUT = "12"


@pytest.fixture
def worker_env(monkeypatch, settings):
    """Before the worker starts: it reads these from its environment, this process from settings."""
    monkeypatch.setenv("ALLOW_PRIVATE_WEBHOOKS", "true")
    monkeypatch.setenv("COLLECT_TIMEOUT_SECONDS", COLLECT_TIMEOUT)
    settings.ALLOW_PRIVATE_WEBHOOKS = True
    settings.COLLECT_TIMEOUT_SECONDS = float(COLLECT_TIMEOUT)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def running(worker_env, celery_worker, owner_org, key_client):
    """A running 1k deployment with one MQTT user, created through the API and provisioned by the worker."""
    client = key_client(owner_org.owner_secret)
    org_url = f"/api/v1/organizations/{owner_org.id}"
    base = f"{org_url}/projects/{owner_org.default_project.public_id}/deployments"
    response = client.post(base, {"name": "plant", "plan": "dedicated", "tier": "1k", "region": "local"}, format="json")
    assert response.status_code == 202, response.content
    url = f"{base}/{response.json()['deployment']['id']}"
    wait_for_status(client, url, "running")
    user = client.post(f"{url}/mqtt-users", {"username": "device", "password": "device-secret"}, format="json")
    assert user.status_code == 201, user.content
    wait_operation(client, f"{url}/operations/{user.json()['operation']}")
    body = client.get(url).json()
    return {
        "client": client,
        "url": url,
        "org_url": org_url,
        "port": body["connection"]["ports"]["mqtt"],
        "deployment_id": body["id"],
        "project_url": f"{org_url}/projects/{owner_org.default_project.public_id}",
        "worker": celery_worker,
    }


@contextlib.contextmanager
def eager_tasks():
    from controlplane.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = previous


def collect(deployment_public_id: str) -> None:
    from deployments.models import Deployment

    pk = Deployment.objects.get(public_id=deployment_public_id).pk
    with eager_tasks():
        tasks.collect_deployment.delay(pk)


def test_connections_alert_fires_once_notifies_and_resolves_when_clients_come_and_go(running, receiver, mailoutbox):
    client = running["client"]
    channels_url = f"{running['org_url']}/notification-channels"
    hook = client.post(
        channels_url, {"name": "hook", "type": "webhook", "config": {"url": receiver.url}}, format="json"
    )
    assert hook.status_code == 201, hook.content
    secret = hook.json()["secret"]
    mail = client.post(
        channels_url, {"name": "ops", "type": "email", "config": {"addresses": ["ops@example.com"]}}, format="json"
    )
    assert mail.status_code == 201, mail.content
    rule = client.post(
        f"{running['project_url']}/alert-rules",
        {
            "name": "More than two clients",
            "deployment": running["deployment_id"],
            "metric": "connections",
            "aggregation": "last",
            "window_seconds": 60,
            "operator": ">",
            "threshold": 2,
            "for_seconds": 0,
            "severity": "critical",
            "channels": [hook.json()["id"], mail.json()["id"]],
        },
        format="json",
    )
    assert rule.status_code == 201, rule.content

    devices = [Client(running["port"], "device", "device-secret") for _ in range(3)]
    for device in devices:
        assert not device.connect().is_failure
    try:
        collect(running["deployment_id"])
        collect(running["deployment_id"])  # still three clients: no second notification
    finally:
        for device in devices:
            device.close()

    alert = Alert.objects.get(rule__public_id=rule.json()["id"])
    assert alert.status == "firing" and alert.value == 3
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing"]
    assert verify_webhook_signature(
        secret, receiver.requests[0]["headers"]["X-Signature"], receiver.requests[0]["body"]
    )
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["ops@example.com"]
    listed = client.get(f"{running['org_url']}/alerts", {"status": "firing"}).json()["results"]
    assert [a["id"] for a in listed] == [alert.public_id]

    collect(running["deployment_id"])
    alert.refresh_from_db()
    assert alert.status == "resolved"
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing", "alert.resolved"]
    assert len(mailoutbox) == 2 and "[RESOLVED]" in mailoutbox[1].subject

    from alerts.models import MetricSample

    raw = list(
        MetricSample.objects.filter(deployment__public_id=running["deployment_id"], name="connections")
        .order_by("ts")
        .values_list("value", flat=True)
    )
    assert raw == [3.0, 3.0, 0.0]
    # The three collections ran seconds apart, so the aligned series averages them in one bucket (2.0) or, when a
    # bucket boundary falls between them, in two (3.0 and 0.0, or 3.0 and 1.5): never below 1.5 at its peak.
    series = client.get(f"{running['url']}/metrics", {"names": "connections", "step": 60}).json()
    values = [v for v in series["series"][0]["values"] if v is not None]
    assert 1.5 <= max(values) <= 3.0


def test_wrong_passwords_raise_authentication_failure_alert_when_ten_refused(running, receiver):
    client = running["client"]
    client.post(
        f"{running['org_url']}/notification-channels",
        {"name": "hook", "type": "webhook", "config": {"url": receiver.url}},
        format="json",
    )
    collect(running["deployment_id"])  # the baseline: rates need a previous run
    for _ in range(10):
        with pytest.raises(ConnackRefused):
            raw_connack("127.0.0.1", running["port"], "device", "wrong-password")
    collect(running["deployment_id"])

    alert = Alert.objects.get(rule__default_key="auth_failures", deployment__public_id=running["deployment_id"])
    assert alert.status == "firing" and alert.value > 0.1
    assert "alert.firing" in [b["event"] for b in receiver.bodies()]
    assert not Alert.objects.filter(rule__default_key="connections_high").exclude(status="resolved").exists()


def test_worker_collects_evaluates_and_delivers_when_beat_task_fans_out(running, receiver):
    client = running["client"]
    client.post(
        f"{running['org_url']}/notification-channels",
        {"name": "hook", "type": "webhook", "config": {"url": receiver.url}},
        format="json",
    )
    rule = client.post(
        f"{running['project_url']}/alert-rules",
        {
            "name": "Anyone there",
            "metric": "connections",
            "aggregation": "last",
            "window_seconds": 60,
            "operator": ">=",
            "threshold": 1,
        },
        format="json",
    )
    assert rule.status_code == 201, rule.content
    device = Client(running["port"], "device", "device-secret")
    assert not device.connect().is_failure
    try:
        tasks.collect_metrics.delay()
        deadline = time.monotonic() + 90
        while not receiver.requests:
            assert time.monotonic() < deadline, running["worker"].logs()
            time.sleep(0.2)
    finally:
        device.close()
    [body] = receiver.bodies()
    assert body["event"] == "alert.firing" and body["deployment"] == running["deployment_id"]
    delivery = Delivery.objects.get(alert_public_id=body["alert"])
    deadline = time.monotonic() + 10
    while delivery.status != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.1)
        delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.attempts == 1
