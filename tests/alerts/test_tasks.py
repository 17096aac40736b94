"""Collection, evaluation, notification and housekeeping, through the services and tasks on real PostgreSQL and Redis.

Samples are stored through the real store path; receivers are real HTTP servers on loopback; the EMQX collector
runs against tests/fakes/emqx_monitor.py; the fan-out test runs a real Celery worker.
"""

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from alerts import collection, defaults, evaluate, platform, rules
from alerts.models import Alert, AlertEvent, AlertRule, CollectorState, MetricRollup, MetricSample
from notifications import services as notification_services
from notifications.channels import verify_webhook_signature
from notifications.models import Delivery

pytestmark = pytest.mark.django_db


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST and answers `status` with `headers` (both settable)."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = dict(headers or {})
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(b"ok" if receiver.status < 300 else b"receiver broke")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def private_webhooks(settings):
    settings.ALLOW_PRIVATE_WEBHOOKS = True


@pytest.fixture
def eager(settings):
    """Celery tasks run inline (retries included, without their countdown), so mailoutbox sees every email."""
    from controlplane.celery import app

    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, False
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


def make_deployment(project, name="plant", *, status="running", tier="1k"):
    from deployments import services as deployment_services
    from deployments.models import Deployment

    deployment, _ = deployment_services.deployment_create(
        project=project, actor=None, name=name, plan="dedicated", tier=tier, region="local"
    )
    Deployment.objects.filter(pk=deployment.pk).update(status=status)
    deployment.refresh_from_db()
    return deployment


def rule_for(deployment, **fields):
    defaults = {
        "name": "Too many connections",
        "metric": "connections",
        "aggregation": "max",
        "window_seconds": 60,
        "operator": ">",
        "threshold": 2,
        "for_seconds": 0,
        "severity": "critical",
    }
    defaults.update(fields)
    return rules.alert_rule_create(project=deployment.project, actor=None, deployment=deployment, **defaults)


def webhook_channel(organization, url, **kwargs):
    return notification_services.channel_create(
        organization=organization, actor=None, name="hook", type="webhook", config={"url": url}, **kwargs
    )


def store(deployment, name, value, at):
    collection.samples_store(rows=[(deployment.pk, name, at, value)])


def test_alert_fires_once_and_resolves_once_when_threshold_crossed_then_cleared(
    owner_org, eager, private_webhooks, receiver, mailoutbox, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    channel, secret = webhook_channel(owner_org.organization, receiver.url)
    notification_services.channel_create(
        organization=owner_org.organization,
        actor=None,
        name="ops mail",
        type="email",
        config={"addresses": ["ops@example.com"]},
    )
    rule = rule_for(deployment)
    t0 = timezone.now()
    store(deployment, "connections", 3, t0)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(seconds=30), deployment_ids=[deployment.pk])

    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing" and alert.value == 3
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing"]
    request = receiver.requests[0]
    assert verify_webhook_signature(secret, request["headers"]["X-Signature"], request["body"])
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["ops@example.com"]
    assert "[FIRING]" in mailoutbox[0].subject

    store(deployment, "connections", 1, t0 + dt.timedelta(seconds=120))
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(seconds=120), deployment_ids=[deployment.pk])
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(seconds=150), deployment_ids=[deployment.pk])
    alert.refresh_from_db()
    assert alert.status == "resolved"
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing", "alert.resolved"]
    assert len(mailoutbox) == 2 and "[RESOLVED]" in mailoutbox[1].subject
    kinds = list(AlertEvent.objects.filter(alert=alert).values_list("kind", flat=True))
    assert kinds == ["firing", "notified", "resolved", "notified"]


def test_repeat_interval_renotifies_when_still_firing(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    webhook_channel(owner_org.organization, receiver.url)
    rule_for(deployment, repeat_interval_seconds=600, window_seconds=3600)
    t0 = timezone.now()
    store(deployment, "connections", 5, t0)
    for minutes in (0, 5, 11):
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=minutes), deployment_ids=[deployment.pk])
    bodies = receiver.bodies()
    assert [(b["event"], b["repeat"]) for b in bodies] == [("alert.firing", False), ("alert.firing", True)]


def test_acknowledge_suppresses_repeats_when_acknowledged_until_later(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    webhook_channel(owner_org.organization, receiver.url)
    rule = rule_for(deployment, repeat_interval_seconds=600, window_seconds=7200)
    t0 = timezone.now()
    store(deployment, "connections", 5, t0)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    alert = Alert.objects.get(rule=rule)
    rules.alert_acknowledge(alert=alert, actor=None, until=t0 + dt.timedelta(hours=1), comment="on it")
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=20), deployment_ids=[deployment.pk])
    assert len(receiver.requests) == 1
    # Past the acknowledgement the repeat comes back.
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=61), deployment_ids=[deployment.pk])
    assert [b["repeat"] for b in receiver.bodies()] == [False, True]


def test_silence_withholds_notification_when_matching_then_sends_after_it_ends(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    deployment = make_deployment(owner_org.default_project)
    webhook_channel(owner_org.organization, receiver.url)
    rule = rule_for(deployment, window_seconds=7200)
    t0 = timezone.now()
    rules.silence_create(
        project=deployment.project,
        actor=None,
        matchers={"deployment": deployment.public_id},
        starts_at=t0 - dt.timedelta(minutes=1),
        ends_at=t0 + dt.timedelta(minutes=10),
    )
    store(deployment, "connections", 5, t0)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    alert = Alert.objects.get(rule=rule)
    assert alert.status == "firing" and receiver.requests == []
    assert AlertEvent.objects.filter(alert=alert, kind="suppressed").count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=5), deployment_ids=[deployment.pk])
    assert receiver.requests == []
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(minutes=11), deployment_ids=[deployment.pk])
    assert [b["event"] for b in receiver.bodies()] == ["alert.firing"]


def test_maintenance_silences_notifications_when_restart_in_progress(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    from deployments.models import Operation

    deployment = make_deployment(owner_org.default_project)
    webhook_channel(owner_org.organization, receiver.url)
    rule_for(deployment)
    Operation.objects.create(deployment=deployment, kind="restart", status="running", target_generation=1)
    t0 = timezone.now()
    store(deployment, "connections", 5, t0)
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    assert Alert.objects.get(deployment=deployment, rule__default_key="").status == "firing"
    assert receiver.requests == []


def test_receiver_answering_500_is_retried_and_recorded_when_delivery_fails(
    owner_org, eager, private_webhooks, django_capture_on_commit_callbacks
):
    failing = Receiver(status=500)
    try:
        deployment = make_deployment(owner_org.default_project)
        channel, _ = webhook_channel(owner_org.organization, failing.url)
        rule_for(deployment)
        t0 = timezone.now()
        store(deployment, "connections", 5, t0)
        with django_capture_on_commit_callbacks(execute=True):
            evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    finally:
        failing.stop()
    delivery = Delivery.objects.get(channel=channel)
    # Eager mode runs each retry at once: every attempt the schedule allows was made, then it gave up.
    assert delivery.status == "failed"
    assert delivery.attempts == len(failing.requests) == 6
    attempts = list(delivery.attempt_rows.values_list("number", "status_code", "response_body"))
    assert attempts[0] == (1, 500, "receiver broke") and len(attempts) == 6
    channel.refresh_from_db()
    assert channel.failing_since is not None


def test_default_rules_created_once_when_deployment_created_then_evaluated(owner_org):
    deployment = make_deployment(owner_org.default_project)
    keys = sorted(AlertRule.objects.filter(deployment=deployment).values_list("default_key", flat=True))
    assert keys == sorted(defaults.keys_for("dedicated"))
    AlertRule.objects.filter(deployment=deployment, default_key="auth_failures").delete()
    assert defaults.create_default_rules(deployment=deployment) == 0
    evaluate.rules_evaluate(deployment_ids=[deployment.pk])
    assert AlertRule.objects.filter(deployment=deployment).count() == len(defaults.keys_for("dedicated")) - 1


def test_percent_rule_uses_tier_limit_when_connections_near_limit(owner_org, django_capture_on_commit_callbacks):
    deployment = make_deployment(owner_org.default_project)  # 1k tier: 1000 connections
    defaults.create_default_rules(deployment=deployment)
    AlertRule.objects.filter(deployment=deployment, default_key="connections_high").update(for_seconds=0)
    t0 = timezone.now()
    store(deployment, "connections", 799, t0)
    evaluate.rules_evaluate(now=t0, deployment_ids=[deployment.pk])
    assert not Alert.objects.filter(deployment=deployment).exists()
    store(deployment, "connections", 801, t0 + dt.timedelta(seconds=60))
    with django_capture_on_commit_callbacks(execute=True):
        evaluate.rules_evaluate(now=t0 + dt.timedelta(seconds=60), deployment_ids=[deployment.pk])
    alert = Alert.objects.get(deployment=deployment)
    assert alert.rule.default_key == "connections_high" and alert.threshold == 800


def test_unreachable_broker_yields_gap_and_condition_when_collected(owner_org):
    from deployments.models import Deployment

    deployment = make_deployment(owner_org.default_project)
    Deployment.objects.filter(pk=deployment.pk).update(endpoints={"host": "127.0.0.1", "ports": {"mqtt": 1}})
    started = time.monotonic()
    state = collection.deployment_collect(deployment_id=deployment.pk)
    assert time.monotonic() - started < 30  # bounded, never stuck
    assert state.available is False and state.unavailable_since is not None
    assert not MetricSample.objects.filter(deployment=deployment).exists()
    from alerts import selectors

    conditions = selectors.metrics_conditions(deployment=deployment)
    assert conditions[0]["type"] == "metrics_unavailable"


def test_emqx_collector_stores_samples_when_kubernetes_deployment_collected(owner_org):
    from deployments.models import Deployment, Region
    from tests.fakes.emqx_monitor import EmqxMonitorFake

    deployment = make_deployment(owner_org.default_project)
    region = Region.objects.create(code="k8s-test", display_name="K8s", provider="aws", driver="kubernetes")
    fake = EmqxMonitorFake(key="controlplane", secret="s3cret-value").start()
    try:
        from controlplane import crypto

        Deployment.objects.filter(pk=deployment.pk).update(
            region=region,
            observed_details={"management_url": fake.base_url},
            api_secret_encrypted=crypto.encrypt_str("s3cret-value"),
        )
        first = collection.deployment_collect(deployment_id=deployment.pk)
        assert first.available, first.last_error
        fake.metrics_nodes[0]["authentication.failure"] += 30
        second = collection.deployment_collect(deployment_id=deployment.pk)
        assert second.available, second.last_error
    finally:
        fake.stop()
    names = set(MetricSample.objects.filter(deployment=deployment).values_list("name", flat=True))
    assert {
        "connections",
        "sessions",
        "subscriptions",
        "topics",
        "retained",
        "messages_received_rate",
        "rule_resource_down",
    } <= names
    assert "auth_failure_rate" in names
    connections = MetricSample.objects.filter(deployment=deployment, name="connections").first().value
    assert connections == 10  # EMQX's live_connections, not its session count


def test_rollups_and_pruning_keep_retention_when_run(owner_org):
    deployment = make_deployment(owner_org.default_project)
    now = timezone.now()
    bucket = collection.bucket_start(now) - dt.timedelta(minutes=5)
    for i, value in enumerate((1.0, 5.0, 3.0)):
        store(deployment, "connections", value, bucket + dt.timedelta(seconds=60 * i))
    store(deployment, "connections", 9.0, now - dt.timedelta(hours=49))
    MetricRollup.objects.create(
        deployment=deployment,
        name="connections",
        bucket=now - dt.timedelta(days=31),
        avg=1,
        min=1,
        max=1,
        last=1,
        sum=1,
        count=1,
    )
    collection.rollups_compute(now=now)
    collection.rollups_compute(now=now)  # idempotent
    rollup = MetricRollup.objects.get(deployment=deployment, bucket=bucket)
    assert (rollup.avg, rollup.min, rollup.max, rollup.last, rollup.sum, rollup.count) == (3.0, 1.0, 5.0, 3.0, 9.0, 3)
    raw, rolled = collection.metrics_prune(now=now)
    assert (raw, rolled) == (1, 1)


def test_platform_event_reaches_channels_once_when_deployment_failed(
    owner_org, eager, private_webhooks, receiver, django_capture_on_commit_callbacks
):
    from deployments.models import Deployment

    deployment = make_deployment(owner_org.default_project, status="failed")
    Deployment.objects.filter(pk=deployment.pk).update(last_error="port exhausted")
    webhook_channel(owner_org.organization, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        assert platform.failed_deployments_notify() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert platform.failed_deployments_notify() == 0
    [body] = receiver.bodies()
    assert body["event"] == "platform.deployment_failed" and "port exhausted" in body["message"]


def test_collector_state_keeps_offset_when_collected_twice(owner_org):
    deployment = make_deployment(owner_org.default_project)
    CollectorState.objects.filter(deployment=deployment).update(log_offset=42, state={"counters": {}})
    state = CollectorState.objects.get(deployment=deployment)
    from deployments.models import Deployment

    Deployment.objects.filter(pk=deployment.pk).update(endpoints={"host": "127.0.0.1", "ports": {"mqtt": 1}})
    collection.deployment_collect(deployment_id=deployment.pk)
    state.refresh_from_db()
    assert state.log_offset == 42 and state.available is False


def test_samples_round_trip_exactly_and_non_finite_values_leave_a_gap(owner_org):
    deployment = make_deployment(owner_org.default_project)
    at = timezone.now()
    values = [0.1, 1e-300, 123456789.123456789, -2.5, float("nan"), float("inf")]
    stored = collection.samples_store(
        rows=[(deployment.pk, "connections", at + dt.timedelta(seconds=i), v) for i, v in enumerate(values)]
    )
    assert stored == 4
    assert (
        list(MetricSample.objects.filter(deployment=deployment).order_by("ts").values_list("value", flat=True))
        == values[:4]
    )
    assert MetricSample.objects.filter(deployment=deployment).first().ts == at
    with pytest.raises(ValueError):
        collection.samples_store(rows=[(deployment.pk, "bogus\tname", at, 1.0)])
