"""The agent's codec worker pool and the lease, on a real PostgreSQL with real (exited) worker processes: what the pool
does when a worker tells it, by its exit code, that the lease is gone. The end-to-end behaviour, with brokers and
agents, is in test_codec_workers.py."""

import subprocess
import sys
import time

import pytest

from iot import services
from iot.agent import codec_workers, leases
from iot.agent.server import Target
from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db


def _exited_worker(code):
    proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"], stdin=subprocess.DEVNULL)
    proc.wait(10)
    return proc


def _pool(deployment, token):
    target = Target(
        deployment_id=deployment.pk,
        public_id=deployment.public_id,
        host="127.0.0.1",
        port=1,  # nothing is reached: no worker may be started here
        driver="local",
        log_path="",
        username="agent",
        password="secret",
    )
    return codec_workers.CodecWorkerPool(target, holder="a", token=token, count=1)


def test_agent_stops_instead_of_starting_another_worker_when_one_exits_because_the_lease_is_gone(owner_org):
    deployment = premium_deployment(owner_org)
    token = leases.acquire(deployment_id=deployment.pk, holder="a", ttl=0.2)
    time.sleep(0.3)
    assert leases.acquire(deployment_id=deployment.pk, holder="b", ttl=60) == token + 1  # taken over once expired
    pool = _pool(deployment, token)
    exited = _exited_worker(codec_workers.EXIT_LEASE_LOST)
    pool.procs[0] = exited

    # The worker saw the lease gone before the agent did (it checks every second): the agent checks, and stops.
    with pytest.raises(services.LeaseLost):
        pool._supervise(now=1e9)
    assert pool.procs == {0: exited}  # nothing started in its place


def test_worker_that_exits_for_the_lease_is_started_again_when_the_agent_still_holds_it(owner_org, monkeypatch):
    deployment = premium_deployment(owner_org)
    token = leases.acquire(deployment_id=deployment.pk, holder="a", ttl=60)
    pool = _pool(deployment, token)
    pool.procs[0] = _exited_worker(codec_workers.EXIT_LEASE_LOST)
    started = []
    monkeypatch.setattr(pool, "_start", started.append)  # a real start needs a broker; test_codec_workers.py has one

    # A worker may read the lease in the instant before a renewal lands: the agent's own check finds it held.
    pool._supervise(now=1e9)
    assert started == [0] and pool.procs == {}
