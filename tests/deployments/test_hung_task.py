"""A task that hangs says where: a real Celery worker whose reconcile blocks on the local driver's port registry lock
(held here, as a stuck process would hold it) writes its stack into the worker's log, then converges once the lock
is free."""

import fcntl
import os
import time

import pytest

from tests.deployments.test_e2e_local import wait_for_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def dump_after_two_seconds(monkeypatch):
    """Requested before `celery_worker`, so the worker it starts reads it (worker_env)."""
    monkeypatch.setenv("TASK_STACK_DUMP_SECONDS", "2")


def test_a_task_blocked_on_a_lock_writes_its_stack_to_the_worker_log_when_it_runs_too_long(
    dump_after_two_seconds, celery_worker, brokers_dir, owner_org, key_client
):
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    fd = os.open(brokers_dir / ".ports.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        created = client.post(
            base, {"name": "plant", "plan": "dedicated", "tier": "1k", "region": "local"}, format="json"
        )
        assert created.status_code == 202, created.content
        deadline = time.monotonic() + 30
        while "most recent call first" not in celery_worker.logs():
            assert time.monotonic() < deadline, f"no stack in the worker's log:\n{celery_worker.logs()}"
            time.sleep(0.2)
        time.sleep(0.5)  # the rest of the dump
        log = celery_worker.logs()
        assert "in _flock" in log and "in _ensure_ports" in log and "in reconcile_deployment" in log
        assert client.get(f"{base}/{created.json()['deployment']['id']}").json()["status"] == "provisioning"
    finally:
        os.close(fd)  # the lock with it
    # Dumped, not killed: the task goes on and the deployment runs.
    wait_for_status(client, f"{base}/{created.json()['deployment']['id']}", "running")
