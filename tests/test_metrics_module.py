"""Tests of controlplane.metrics: route labels through Django's real request handler, the bearer check, gauge sources.

Runs with or without pytest-django: when settings are not configured this module configures a minimal Django itself.
Queue depth is read from a real redis-server on a loopback port; multiprocess mode from real child processes.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.http import HttpResponse
from django.urls import include, path

if not settings.configured:
    settings.configure(
        SECRET_KEY="metrics-module-tests",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        ENVIRONMENT="production",
        USE_TZ=True,
    )
    django.setup()

from django.test import Client, override_settings  # noqa: E402  (needs configured settings)
from prometheus_client import REGISTRY  # noqa: E402

from controlplane import metrics  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-metrics-token"


def _ok(request, **kwargs):
    return HttpResponse("ok")


def _boom(request):
    raise RuntimeError("view failed")


def handler404(request, exception=None):
    # This module is the URL conf: without its own handler Django would render the console's 404 page, which needs
    # the session and auth middleware this test leaves out.
    return HttpResponse("not found", status=404)


urlpatterns = [
    path("things/<int:pk>/", _ok, name="thing-detail"),
    path("boom/", _boom, name="boom"),
    path("api/v1/", include([path("deployments/<str:public_id>/", _ok, name="deployment-detail")])),
    path("metrics", metrics.metrics_view, name="metrics"),
]

MIDDLEWARE = ["controlplane.metrics.PrometheusMiddleware"]


def _latency_count(route, method, status):
    value = REGISTRY.get_sample_value(
        "controlplane_http_request_duration_seconds_count", {"route": route, "method": method, "status": status}
    )
    return value or 0.0


@pytest.fixture()
def client():
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, ALLOWED_HOSTS=["testserver"]):
        yield Client(raise_request_exception=False)


def test_latency_is_labelled_by_pattern_not_path_when_paths_carry_ids(client):
    before = _latency_count("things/<int:pk>/", "GET", "200")
    assert client.get("/things/123/").status_code == 200
    assert client.get("/things/456/").status_code == 200
    assert _latency_count("things/<int:pk>/", "GET", "200") == before + 2
    exposed = metrics.generate_latest(REGISTRY).decode()
    assert "/things/123/" not in exposed and "things/123" not in exposed


def test_route_joins_included_prefixes_when_urls_are_nested(client):
    before = _latency_count("api/v1/deployments/<str:public_id>/", "PATCH", "200")
    client.patch("/api/v1/deployments/dep_abc/")
    assert _latency_count("api/v1/deployments/<str:public_id>/", "PATCH", "200") == before + 1


def test_route_is_unmatched_when_no_pattern_resolves(client):
    before = _latency_count(metrics.UNMATCHED_ROUTE, "GET", "404")
    assert client.get("/no/such/page/42").status_code == 404
    assert _latency_count(metrics.UNMATCHED_ROUTE, "GET", "404") == before + 1


def test_status_is_500_when_the_view_raises(client):
    before = _latency_count("boom/", "GET", "500")
    assert client.get("/boom/").status_code == 500
    assert _latency_count("boom/", "GET", "500") == before + 1


def test_method_is_collapsed_to_other_when_it_is_not_a_standard_verb(client):
    before = _latency_count("things/<int:pk>/", "other", "200")
    client.generic("BREW", "/things/7/")
    assert _latency_count("things/<int:pk>/", "other", "200") == before + 1
    assert _latency_count("things/<int:pk>/", "BREW", "200") == 0.0


def test_metrics_answers_401_problem_when_authorization_is_missing(client):
    with override_settings(METRICS_TOKEN=TOKEN, ENVIRONMENT="production"):
        response = client.get("/metrics")
    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.content)["status"] == 401


def test_metrics_answers_401_when_the_token_is_wrong(client):
    with override_settings(METRICS_TOKEN=TOKEN, ENVIRONMENT="production"):
        wrong = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x")
        basic = client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    assert wrong.status_code == 401
    assert basic.status_code == 401


def test_metrics_serves_prometheus_text_when_the_token_matches(client):
    client.get("/things/1/")
    metrics.RECONCILE_DURATION.labels("converged").observe(0.2)
    metrics.NOTIFICATION_FAILURES.labels("webhook").inc()
    with override_settings(METRICS_TOKEN=TOKEN, ENVIRONMENT="production"):
        response = client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert (
        'controlplane_http_request_duration_seconds_count{method="GET",route="things/<int:pk>/",status="200"}' in body
    )
    assert 'controlplane_reconcile_duration_seconds_count{outcome="converged"}' in body
    assert 'controlplane_notification_failures_total{channel_type="webhook"}' in body


def test_metrics_answers_404_when_no_token_is_configured_in_production(client):
    with override_settings(METRICS_TOKEN="", ENVIRONMENT="production"):
        response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 404


def test_metrics_is_open_when_no_token_is_configured_in_development(client):
    with override_settings(METRICS_TOKEN="", ENVIRONMENT="development"):
        response = client.get("/metrics")
    assert response.status_code == 200
    assert b"controlplane_http_request_duration_seconds" in response.content


def test_metrics_refuses_post_when_the_token_matches(client):
    with override_settings(METRICS_TOKEN=TOKEN, ENVIRONMENT="production"):
        response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405


def test_token_matches_only_bearer_with_the_exact_token_when_compared():
    assert metrics.token_matches(authorization=f"Bearer {TOKEN}", token=TOKEN)
    assert not metrics.token_matches(authorization=f"Bearer {TOKEN[:-1]}", token=TOKEN)
    assert not metrics.token_matches(authorization="Bearer ", token="")
    assert not metrics.token_matches(authorization=TOKEN, token=TOKEN)


@pytest.fixture()
def gauge_source_names():
    names = []
    yield names
    for name in names:
        metrics.unregister_gauge_source(name)


def test_gauge_source_is_computed_on_each_scrape_when_registered(gauge_source_names):
    counts = {"running": 3}
    gauge_source_names.append("controlplane_test_deployments")
    metrics.register_gauge_source(
        "controlplane_test_deployments",
        "Deployments by status.",
        ["status"],
        lambda: {(status,): n for status, n in counts.items()},
    )
    assert REGISTRY.get_sample_value("controlplane_test_deployments", {"status": "running"}) == 3
    counts["running"] = 5
    assert REGISTRY.get_sample_value("controlplane_test_deployments", {"status": "running"}) == 5
    assert REGISTRY.get_sample_value("controlplane_gauge_source_up", {"source": "controlplane_test_deployments"}) == 1


def test_gauge_source_is_reported_down_and_scrape_survives_when_it_raises(gauge_source_names):
    def broken():
        raise ConnectionError("database unreachable")

    gauge_source_names.extend(["controlplane_test_broken", "controlplane_test_bad_labels"])
    metrics.register_gauge_source("controlplane_test_broken", "Always fails.", ["x"], broken)
    metrics.register_gauge_source("controlplane_test_bad_labels", "Wrong arity.", ["a", "b"], lambda: [(("only",), 1)])
    text = metrics.generate_latest(REGISTRY).decode()
    assert 'controlplane_gauge_source_up{source="controlplane_test_broken"} 0.0' in text
    assert 'controlplane_gauge_source_up{source="controlplane_test_bad_labels"} 0.0' in text
    assert "controlplane_http_request_duration_seconds" in text


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.025)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def test_queue_depth_sums_priority_lists_when_messages_wait_on_redis(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.rpush("provisioning", "m1", "m2")
    client.rpush("provisioning\x06\x169", "urgent")
    client.rpush("billing", "m3")
    depths = metrics.celery_queue_depths(broker_url=redis_url, queues=["provisioning", "billing", "monitoring"])
    assert depths == {("provisioning",): 3.0, ("billing",): 1.0, ("monitoring",): 0.0}


def test_queue_depth_gauge_is_exposed_when_the_broker_is_redis(redis_url, gauge_source_names):
    import redis

    gauge_source_names.append("controlplane_celery_queue_depth")
    redis.Redis.from_url(redis_url).rpush("notifications", "a", "b")
    assert metrics.register_celery_queue_depth_source(broker_url=redis_url, queues=["notifications", "default"])
    assert REGISTRY.get_sample_value("controlplane_celery_queue_depth", {"queue": "notifications"}) == 2
    assert REGISTRY.get_sample_value("controlplane_celery_queue_depth", {"queue": "default"}) == 0


def test_queue_depth_source_is_skipped_when_the_broker_is_not_redis():
    assert not metrics.register_celery_queue_depth_source(broker_url="amqp://guest@127.0.0.1//", queues=["default"])
    assert "controlplane_celery_queue_depth" not in metrics.GAUGE_SOURCES.names()


def test_worker_metrics_server_requires_the_token_when_one_is_set():
    server = metrics.start_worker_metrics_server(port=0, token=TOKEN, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
            assert b"controlplane_reconcile_duration_seconds" in response.read()
    finally:
        server.shutdown()
        server.server_close()


def _worker_metrics_status(token):
    server = metrics.start_worker_metrics_server(port=0, token=token, addr="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as refused:
            return refused.code
    finally:
        server.shutdown()
        server.server_close()


def test_worker_metrics_server_answers_404_when_no_token_is_configured_in_production():
    # A worker pod's metrics port is reachable from anywhere in the cluster, like the web pods' /metrics: without a
    # token production serves neither, never the figures (deployment ids, agents, queues) to whoever asks.
    with override_settings(METRICS_TOKEN="", ENVIRONMENT="production"):
        assert _worker_metrics_status("") == 404


def test_worker_metrics_server_is_open_when_no_token_is_configured_in_development():
    with override_settings(METRICS_TOKEN="", ENVIRONMENT="development"):
        assert _worker_metrics_status("") == 200


_CHILD_OBSERVES = """
import sys
from controlplane import metrics
metrics.RECONCILE_DURATION.labels("converged").observe(1.0)
metrics.NOTIFICATION_FAILURES.labels("email").inc(int(sys.argv[1]))
"""

_CHILD_SCRAPES = """
from prometheus_client import generate_latest
from controlplane import metrics
print(generate_latest(metrics.scrape_registry()).decode())
"""


def test_scrape_aggregates_every_process_when_multiprocess_dir_is_set(tmp_path):
    env = {**os.environ, metrics.MULTIPROC_DIR_ENV: str(tmp_path), "PYTHONPATH": str(REPO)}
    for increment in ("2", "5"):
        subprocess.run([sys.executable, "-c", _CHILD_OBSERVES, increment], env=env, check=True, cwd=REPO)
    scraped = subprocess.run(
        [sys.executable, "-c", _CHILD_SCRAPES], env=env, check=True, cwd=REPO, capture_output=True, text=True
    ).stdout
    assert 'controlplane_notification_failures_total{channel_type="email"} 7.0' in scraped
    assert 'controlplane_reconcile_duration_seconds_count{outcome="converged"} 2.0' in scraped


def test_reset_removes_stale_sample_files_when_a_worker_restarts(tmp_path, monkeypatch):
    (tmp_path / "counter_4242.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv(metrics.MULTIPROC_DIR_ENV, str(tmp_path))
    metrics.reset_multiprocess_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
