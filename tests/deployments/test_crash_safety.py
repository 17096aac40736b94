"""Crash safety: deployments created while the Celery worker is SIGKILLed at random moments all converge, once each."""

import random
import time

import pytest

from bench.mosquitto_floor import raw_connack
from deployments import selectors
from deployments.models import Deployment
from deployments.services import reconcile_sweep
from tests.celery_worker import broker_pids

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

COUNT = 20


def test_every_deployment_runs_one_broker_when_worker_is_killed_repeatedly(
    celery_worker, brokers_dir, owner_org, key_client
):
    rng = random.Random(random.getrandbits(64))  # from the run's seed (tests/conftest.py): a failure replays
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"

    for n in range(COUNT):
        response = client.post(
            base, {"name": f"crash-{n}", "plan": "dedicated", "tier": "1k", "region": "local"}, format="json"
        )
        assert response.status_code == 202, response.content
        if n % 4 == 3:
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside a reconcile, or between two
            celery_worker.kill()
            celery_worker.start()
    for _ in range(3):
        time.sleep(rng.uniform(0.05, 0.6))
        celery_worker.kill()
        celery_worker.start()

    # The sweep is what beat runs every RECONCILE_SWEEP_SECONDS; tasks lost with the killed worker wait for it.
    deadline = time.monotonic() + 180
    while True:
        statuses = list(Deployment.objects.values_list("status", flat=True))
        if statuses.count("running") == COUNT and not any(
            d.observed_generation < d.generation for d in Deployment.objects.all()
        ):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged: {sorted(statuses)}\n{celery_worker.logs()}")
        reconcile_sweep()
        time.sleep(1.0)

    deployments = list(Deployment.objects.all())
    ports = [d.endpoints["ports"]["mqtt"] for d in deployments]
    assert len(set(ports)) == COUNT  # no port used twice
    for deployment in deployments:
        assert len(broker_pids(brokers_dir / deployment.public_id)) == 1, deployment.public_id
        username, password = selectors.monitor_credentials(deployment)
        raw_connack("127.0.0.1", deployment.endpoints["ports"]["mqtt"], username, password)
    assert len(broker_pids(brokers_dir)) == COUNT  # no orphan broker anywhere under the root
    assert all(d.status_intervals.filter(ended_at__isnull=True).count() == 1 for d in deployments)
