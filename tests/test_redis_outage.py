"""A Redis that freezes or stops is not an API outage: rate limits fall back to per-process buckets, tasks that cannot
be published are counted and left to the sweeps, and once Redis is back every deployment created meanwhile converges.

The end-to-end test runs the real web server (gunicorn), a real Redis it SIGSTOPs and SIGKILLs and restarts on the
same port, a real Celery worker and real mosquitto brokers.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client import REGISTRY

from controlplane import buckets as ratelimit
from tests.celery_worker import REPO, CeleryWorker, _database_url, broker_pids

VENV_BIN = pathlib.Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of this test's own, so freezing it touches nothing else; restarts keep its port."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not running"
        return self.proc.pid

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Stopped for good, as a crash would: nothing it held (queued tasks included) survives."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill()


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_limiter(settings):
    ratelimit.reset_client()
    ratelimit.local_buckets.clear()
    yield
    ratelimit.reset_client()
    ratelimit.local_buckets.clear()


@pytest.fixture
def fresh_broker_state():
    from controlplane import tasks

    tasks.broker.reset()
    yield tasks.broker
    tasks.broker.reset()


def _sample(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# --- rate limits without Redis, in process ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_answers_on_per_process_buckets_when_redis_is_unreachable(
    owner_org, key_client, client, settings, fresh_limiter
):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    # Buckets that refill far slower than a request takes, however loaded the machine: at the default 10 a second a
    # request slower than 0.1 s gives back the token it took, and the counts below would stand still.
    settings.RATE_LIMITS = {level: (capacity, 0.001) for level, (capacity, _) in settings.RATE_LIMITS.items()}
    api = key_client(owner_org.owner_secret)
    remaining = []
    for _ in range(3):
        response = api.get(f"/api/v1/organizations/{owner_org.id}/projects")
        assert response.status_code == 200, response.content[:300]
        remaining.append(int(response["RateLimit-Remaining"]))
    assert remaining[0] > remaining[1] > remaining[2]  # still counted, per process
    assert ratelimit.degraded() and _sample("controlplane_ratelimit_fallback") == 1.0
    assert api.get("/api/v1/rate-limits").json()["degraded"] is True

    ready = client.get("/readyz")
    assert ready.status_code == 200, "a Redis outage must not take web pods out of the load balancer"
    body = ready.json()
    assert body["status"] == "degraded" and body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error") and body["checks"]["rate_limits"].startswith("per-process")
    metrics = client.get("/metrics").content.decode()
    assert re.search(r"^controlplane_ratelimit_fallback 1\.0$", metrics, re.M), metrics[:2000]


@pytest.mark.django_db
def test_rate_limit_still_refuses_with_429_when_redis_is_unreachable(owner_org, key_client, settings, fresh_limiter):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "principal": (2.0, 0.01)}
    api = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    assert [api.get(url).status_code for _ in range(2)] == [200, 200]
    refused = api.get(url)
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1


@pytest.mark.django_db
def test_rate_limits_are_shared_again_when_redis_returns(owner_org, key_client, settings, fresh_limiter, redis_clean):
    working = settings.REDIS_URL
    settings.REDIS_OUTAGE_RETRY_SECONDS = 0.0  # retry Redis on the very next request
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    api = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    assert api.get(url).status_code == 200 and ratelimit.degraded()
    ratelimit._client = None  # the same process, Redis reachable again at the configured address
    settings.REDIS_URL = working
    assert api.get(url).status_code == 200
    assert not ratelimit.degraded() and _sample("controlplane_ratelimit_fallback") == 0.0
    assert redis_clean.keys("ratelimit:*"), "the decision was taken in Redis again"


def test_per_process_buckets_take_from_all_or_none_when_one_is_empty():
    buckets = ratelimit.LocalBuckets()
    wide = ratelimit.Bucket("platform", "p", capacity=100, refill_per_second=0.001)
    narrow = ratelimit.Bucket("principal", "k", capacity=2, refill_per_second=0.001)
    assert [buckets.take([wide, narrow]).allowed for _ in range(3)] == [True, True, False]
    refused = buckets.take([wide, narrow])
    assert not refused.allowed and refused.states[0].remaining == pytest.approx(98, abs=0.01)
    assert buckets.take([wide], cost=0).states[0].remaining == pytest.approx(98, abs=0.01)  # reading takes nothing


def test_per_process_buckets_refill_with_time_when_waited():
    buckets = ratelimit.LocalBuckets()
    bucket = ratelimit.Bucket("principal", "k", capacity=1, refill_per_second=20)
    assert buckets.take([bucket]).allowed and not buckets.take([bucket]).allowed
    time.sleep(0.1)
    assert buckets.take([bucket]).allowed


def test_per_process_buckets_stay_bounded_when_callers_are_many():
    buckets = ratelimit.LocalBuckets(max_keys=100)
    for i in range(5000):
        buckets.take([ratelimit.Bucket("principal", f"ip:{i}", capacity=10, refill_per_second=0.0001)])
    assert len(buckets) <= 100


# --- publishing tasks -----------------------------------------------------------------------------------------------


def _queue_length(client, queue: str = "default") -> int:
    return client.llen(queue)


@pytest.mark.django_db
def test_task_is_published_only_after_commit_when_broker_is_up(
    redis_clean, django_capture_on_commit_callbacks, fresh_broker_state
):
    from django.db import transaction

    from controlplane.tasks import enqueue_on_commit
    from idempotency.tasks import prune_records

    with django_capture_on_commit_callbacks(execute=True):
        enqueue_on_commit(prune_records)
        assert _queue_length(redis_clean) == 0, "published before the commit"
    assert _queue_length(redis_clean) == 1

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            enqueue_on_commit(prune_records)
            raise RuntimeError("rolled back")
    assert _queue_length(redis_clean) == 1, "a rolled-back transaction published its task"


def _probe_app(broker_url: str):
    """A Celery app with the project's publishing settings, pointed at another broker."""
    from celery import Celery

    from controlplane.celery import app as project

    app = Celery("probe", broker=broker_url, set_as_current=False)
    for key in ("broker_connection_timeout", "broker_transport_options", "task_publish_retry_policy"):
        app.conf[key] = project.conf[key]

    @app.task(name="probe.noop")
    def noop(value):
        return value

    return noop


# Serial: it asserts a skipped publish returns within 0.1 s, which the other workers' CPU load must not decide.
@pytest.mark.serial
def test_publish_failure_is_counted_not_raised_when_broker_refuses(fresh_broker_state):
    from controlplane.tasks import publish

    noop = _probe_app("redis://127.0.0.1:1/0")
    errors, skipped = (_sample("controlplane_task_publish_failures_total", {"task": "probe.noop", "reason": r})
                       for r in ("error", "broker_down"))  # fmt: skip
    assert publish(noop, 1) is False
    started = time.monotonic()
    assert publish(noop, 2) is False
    assert time.monotonic() - started < 0.1, "a known-down broker is not tried again at once"
    assert _sample("controlplane_task_publish_failures_total", {"task": "probe.noop", "reason": "error"}) == errors + 1
    assert (
        _sample("controlplane_task_publish_failures_total", {"task": "probe.noop", "reason": "broker_down"})
        == skipped + 1
    )
    assert _sample("controlplane_task_broker_unreachable") == 1.0


def test_publish_gives_up_within_seconds_when_broker_is_frozen(private_redis, fresh_broker_state, settings):
    from controlplane.tasks import publish

    settings.BROKER_OUTAGE_RETRY_SECONDS = 0.0  # try the broker again on the next call
    noop = _probe_app(private_redis.url)
    assert publish(noop, 1) is True
    private_redis.freeze()
    started = time.monotonic()
    assert publish(noop, 2) is False
    assert time.monotonic() - started < 5, "publishing to a frozen broker must not hang the request"
    assert _sample("controlplane_task_broker_unreachable") == 1.0
    private_redis.thaw()
    assert publish(noop, 3) is True and _sample("controlplane_task_broker_unreachable") == 0.0


# --- end to end: the real server through a frozen, then stopped, then restarted Redis ------------------------------


class LiveServer:
    def __init__(self, env: dict[str, str], log: pathlib.Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "gunicorn"), "controlplane.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "1", "--threads", "4", "--timeout", "60"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or still importing the application
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _mqtt_connack(port: int) -> bytes:
    """A bare MQTT 3.1.1 CONNECT; the broker's first answer (CONNACK is 0x20)."""
    client_id = b"outage-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x1e" + struct.pack("!H", len(client_id)) + client_id
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x10" + bytes([len(variable)]) + variable)
        return s.recv(4)


@pytest.mark.slow
def test_deployments_created_while_redis_is_frozen_then_stopped_converge_when_it_returns(
    transactional_db, deployments_catalog, brokers_dir, owner_org, private_redis, tmp_path, settings
):
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": private_redis.url,
        "CELERY_BROKER_URL": private_redis.url,
        "CONTROLPLANE_ENV": "test",
        "CONTROLPLANE_ENV_FILE": "",
        "CONTROLPLANE_VAR_DIR": str(settings.VAR_DIR),
        "LOCAL_BROKERS_DIR": str(brokers_dir),
        "CONN_MAX_AGE": "0",
        "REDIS_OUTAGE_RETRY_SECONDS": "1",
        "BROKER_OUTAGE_RETRY_SECONDS": "1",
        "PYTHONPATH": str(REPO),
    }
    server = LiveServer(env, tmp_path / "gunicorn.log")
    worker = CeleryWorker(env, tmp_path)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {owner_org.owner_secret}"
    deployments_url = (
        f"{server.url}/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    )
    created: list[str] = []

    def create(name: str) -> float:
        started = time.monotonic()
        response = session.post(
            deployments_url, json={"name": name, "plan": "dedicated", "tier": "1k", "region": "local"}, timeout=30
        )
        assert response.status_code == 202, response.text[:500]
        created.append(response.json()["deployment"]["id"])
        return time.monotonic() - started

    try:
        create("before")  # its reconcile message sits in Redis, and dies with it below

        private_redis.freeze()
        for name in ("frozen-1", "frozen-2"):
            assert create(name) < 10, "a frozen Redis must not hang a request"
        listed = session.get(deployments_url, timeout=30)
        assert listed.status_code == 200 and len(listed.json()["results"]) == 3
        ready = session.get(server.url + "/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        metrics = session.get(server.url + "/metrics", timeout=30).text
        assert re.search(r"^controlplane_ratelimit_fallback 1\.0$", metrics, re.M)
        assert re.search(r"^controlplane_task_broker_unreachable 1\.0$", metrics, re.M)
        assert re.search(
            r'^controlplane_task_publish_failures_total\{.*task="deployments.reconcile".*\} [1-9]', metrics, re.M
        )

        private_redis.kill()
        for name in ("stopped-1", "stopped-2"):
            assert create(name) < 10
        assert session.get(deployments_url, timeout=30).status_code == 200

        private_redis.start()  # the same port, empty: every queued reconcile is gone
        worker.start()
        # What beat does every RECONCILE_SWEEP_SECONDS: the sweep finds all five in the database and re-drives them.
        subprocess.run(
            [str(VENV_BIN / "celery"), "-A", "controlplane", "call", "deployments.sweep_reconcile"],
            cwd=REPO, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while True:
            statuses = {d["id"]: d for d in session.get(deployments_url, timeout=30).json()["results"]}
            if all(statuses[i]["status"] == "running" for i in created):
                break
            assert time.monotonic() < deadline, f"{ {i: statuses[i]['status'] for i in created} }\n{worker.logs()}"
            time.sleep(0.5)

        assert len(created) == 5 and len(broker_pids(brokers_dir)) == 5
        for deployment in statuses.values():
            assert _mqtt_connack(deployment["connection"]["ports"]["mqtt"])[:1] == b"\x20"
        time.sleep(1.1)  # past REDIS_OUTAGE_RETRY_SECONDS: the next request tries Redis again
        session.get(deployments_url, timeout=30)
        ready = session.get(server.url + "/readyz", timeout=30).json()
        assert ready["status"] == "ok", ready
        assert re.search(
            r"^controlplane_ratelimit_fallback 0\.0$", session.get(server.url + "/metrics", timeout=30).text, re.M
        )
    finally:
        worker.stop()
        server.stop()
