"""The reconciler in process, against real mosquitto brokers (and stand-in drivers for the error paths)."""

import os
import signal

import pytest

from bench.mosquitto_floor import raw_connack
from deployments import reconcile as reconcile_module
from deployments import selectors, services
from deployments.drivers.base import Observed, PermanentDriverError, TemporaryDriverError
from deployments.models import Deployment, DeploymentEvent, Operation, StatusInterval
from deployments.reconcile import deployment_lock, reconcile_deployment
from tests.celery_worker import broker_pids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]


@pytest.fixture
def deployment(owner_org, brokers_dir):
    created, _operation = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    return created


def fresh(deployment):
    return Deployment.objects.get(pk=deployment.pk)


def intervals(deployment):
    return list(StatusInterval.objects.filter(deployment=deployment).values_list("status", "tier__code", "ended_at"))


def test_pending_deployment_runs_with_one_open_interval_when_reconciled(deployment, brokers_dir):
    outcome = reconcile_deployment(deployment.pk)

    assert outcome.state == "converged"
    d = fresh(deployment)
    assert (d.status, d.observed_generation, d.endpoints["host"]) == ("running", 1, "127.0.0.1")
    assert d.observed_details["log_path"].startswith(str(brokers_dir))
    assert [(s, t, e is None) for s, t, e in intervals(d)] == [("running", "1k", True)]
    assert Operation.objects.get(deployment=d).status == "succeeded"
    username, password = selectors.monitor_credentials(d)
    raw_connack("127.0.0.1", d.endpoints["ports"]["mqtt"], username, password)


def test_reconcile_changes_nothing_when_run_again_on_a_converged_deployment(deployment, brokers_dir):
    reconcile_deployment(deployment.pk)
    pids, events = broker_pids(brokers_dir), DeploymentEvent.objects.count()

    assert reconcile_deployment(deployment.pk).state == "converged"

    assert broker_pids(brokers_dir) == pids
    assert DeploymentEvent.objects.count() == events
    assert len(intervals(deployment)) == 1


def test_intervals_switch_at_one_instant_when_stopped_started_and_tier_changed(deployment, settings):
    reconcile_deployment(deployment.pk)
    services.deployment_stop(deployment=fresh(deployment), actor=None)
    assert reconcile_deployment(deployment.pk).state == "converged"
    assert fresh(deployment).status == "stopped"
    services.deployment_start(deployment=fresh(deployment), actor=None)
    reconcile_deployment(deployment.pk)
    services.deployment_change_tier(deployment=fresh(deployment), actor=None, tier="2k")
    reconcile_deployment(deployment.pk)

    rows = list(StatusInterval.objects.filter(deployment=deployment).order_by("started_at", "id"))
    assert [(r.status, r.tier.code) for r in rows] == [
        ("running", "1k"),
        ("stopped", "1k"),
        ("running", "1k"),
        ("running", "2k"),
    ]
    assert all(earlier.ended_at == later.started_at for earlier, later in zip(rows, rows[1:]))
    assert rows[-1].ended_at is None
    assert fresh(deployment).status == "running"


def test_broker_comes_back_when_its_process_died(deployment, brokers_dir):
    reconcile_deployment(deployment.pk)
    [pid] = broker_pids(brokers_dir)
    os.kill(pid, signal.SIGKILL)

    assert reconcile_deployment(deployment.pk).state == "converged"

    [again] = broker_pids(brokers_dir)
    assert again != pid
    raw_connack("127.0.0.1", fresh(deployment).endpoints["ports"]["mqtt"], *selectors.monitor_credentials(deployment))


def test_delete_removes_the_broker_and_keeps_the_row_when_reconciled(deployment, brokers_dir):
    reconcile_deployment(deployment.pk)
    services.deployment_delete(deployment=fresh(deployment), actor=None)

    assert reconcile_deployment(deployment.pk).state == "converged"

    d = fresh(deployment)
    assert (d.status, d.deleted_at is not None, d.endpoints) == ("deleted", True, {})
    assert broker_pids(brokers_dir) == []
    assert StatusInterval.objects.filter(deployment=d, ended_at__isnull=True).count() == 0
    assert reconcile_deployment(deployment.pk).state == "gone"


class _Raising:
    def __init__(self, error):
        self.error = error
        self.calls = 0

    def apply(self, spec):
        self.calls += 1
        raise self.error

    delete = apply


def test_status_is_failed_with_the_reason_when_driver_refuses_permanently(deployment, monkeypatch):
    driver = _Raising(PermanentDriverError("quota exhausted in region local"))
    monkeypatch.setattr(reconcile_module, "driver_for", lambda region: driver)

    outcome = reconcile_deployment(deployment.pk)

    assert (outcome.state, outcome.retry) == ("failed", False)
    d = fresh(deployment)
    assert (d.status, d.last_error) == ("failed", "quota exhausted in region local")
    assert Operation.objects.get(deployment=d).status == "failed"
    assert reconcile_deployment(deployment.pk).state == "failed" and driver.calls == 1  # not retried
    services.deployment_stop(deployment=d, actor=None, reason="billing")  # a new change gets its own attempt
    reconcile_deployment(deployment.pk)
    assert driver.calls == 2


def test_reconcile_retries_and_records_the_error_once_when_driver_fails_temporarily(deployment, monkeypatch):
    monkeypatch.setattr(reconcile_module, "driver_for", lambda region: _Raising(TemporaryDriverError("port taken")))

    first, second = reconcile_deployment(deployment.pk), reconcile_deployment(deployment.pk)

    assert (first.state, first.retry, second.retry) == ("retry", True, True)
    d = fresh(deployment)
    assert (d.status, d.last_error, d.observed_generation) == ("provisioning", "port taken", 0)
    assert DeploymentEvent.objects.filter(deployment=d, kind="reconcile.retry").count() == 1


def test_reconcile_stays_away_when_another_worker_holds_the_deployment(deployment):
    with deployment_lock(deployment.pk) as acquired:
        assert acquired
        assert reconcile_deployment(deployment.pk).state == "busy"
    assert fresh(deployment).status == "pending"


def test_progress_is_reported_and_retried_when_broker_is_still_starting(deployment, monkeypatch):
    class Starting:
        def apply(self, spec):
            return Observed(phase="starting", host="10.0.0.1", message="waiting for the operator")

    monkeypatch.setattr(reconcile_module, "driver_for", lambda region: Starting())
    outcome = reconcile_deployment(deployment.pk)
    assert (outcome.state, outcome.retry) == ("progressing", True)
    assert fresh(deployment).status == "provisioning"


def test_sweep_enqueues_only_what_is_not_converged(deployment, owner_org, monkeypatch):
    from deployments import tasks

    reconcile_deployment(deployment.pk)
    other, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="other", plan="dedicated", tier="1k", region="local"
    )
    sent = []
    monkeypatch.setattr(tasks.reconcile, "apply_async", lambda args, **kw: sent.append(args[0]))

    assert services.reconcile_sweep() == 1
    assert sent == [other.pk]
