"""A Premium trial end to end on real parts: the grant command, the REST API, a real Celery worker running the sweep
task (twice at once) and reconciling real mosquitto brokers, a paho client on the deployment that is kept, and the
one not bought stopped with its data, then deleted. The clock is frozen by passing `now` to the sweep."""

import datetime
import time

import pytest
from django.core.management import call_command

from billing import metering
from billing.models import UsageRecord
from iot import trials
from iot.tasks import sweep_premium_trials
from iot.trials_models import PremiumTrial, TrialDeployment
from tests.celery_worker import broker_pids
from tests.deployments.test_e2e_local import wait_for_status, wait_operation
from tests.deployments.test_local_driver import Client
from tests.iot.test_trials import set_account

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_bought_deployment_keeps_serving_and_unbought_one_stops_then_is_deleted_when_trial_ends(
    celery_worker, brokers_dir, owner_org, key_client
):
    call_command("grant_premium_trial", "--organization", owner_org.id, "--deployments", "2", "--days", "14")
    trial = PremiumTrial.objects.get(organization=owner_org.organization)
    set_account(owner_org)
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    urls, ports = {}, {}
    for name in ("kept", "dropped"):
        created = client.post(base, {"name": name, "plan": "premium", "tier": "1k", "region": "local"}, format="json")
        assert created.status_code == 202, created.content
        urls[name] = f"{base}/{created.json()['deployment']['id']}"
        user = client.post(f"{urls[name]}/mqtt-users", {"username": "sensor", "password": "sensor-pw"}, format="json")
        assert user.status_code == 201, user.content
        assert wait_operation(client, f"{urls[name]}/operations/{user.json()['operation']}")["status"] == "succeeded"
        ports[name] = wait_for_status(client, urls[name], "running")["connection"]["ports"]["mqtt"]
    kept_id, dropped_id = (url.rsplit("/", 1)[1] for url in (urls["kept"], urls["dropped"]))

    quote = client.post(f"{urls['kept']}/annual-quotes", {}, format="json")
    assert quote.status_code == 201, quote.content
    assert quote.json()["accrued_this_month"] == 0
    accepted = client.post(f"{urls['kept']}/annual-quotes/{quote.json()['id']}/accept", {}, format="json")
    assert accepted.status_code == 201, accepted.content

    sensor = Client(ports["kept"], "sensor", "sensor-pw")
    assert not sensor.connect().is_failure
    sensor.subscribe("plant/#")

    end = trial.ends_at + datetime.timedelta(seconds=1)
    for _ in range(2):  # two sweeps at once on the worker's two processes
        sweep_premium_trials.delay(now=end.isoformat())
    wait_until(lambda: not TrialDeployment.objects.filter(trial=trial, outcome="trial").exists(), 60, "the trial's end")
    assert dict(TrialDeployment.objects.values_list("deployment__public_id", "outcome")) == {
        kept_id: "converted",
        dropped_id: "stopped",
    }
    wait_for_status(client, urls["dropped"], "stopped")
    assert len(broker_pids(brokers_dir)) == 1  # the kept one's
    assert (brokers_dir / dropped_id).is_dir()  # the stopped one's data stays
    assert not sensor.disconnected.is_set()
    sensor.publish("plant/line-1", b"still here")
    assert sensor.received(1) == [("plant/line-1", b"still here")]
    sensor.close()
    kept = client.get(urls["kept"]).json()
    assert kept["status"] == "running" and kept["desired_state"] == "running"
    assert client.post(f"{urls['dropped']}/start", {}, format="json").status_code == 409

    trials.premium_trials_sweep(now=end + datetime.timedelta(days=6))
    assert client.get(urls["dropped"]).json()["status"] == "stopped"
    assert (brokers_dir / dropped_id).is_dir()

    sweep_premium_trials.delay(now=(end + trials.RETENTION).isoformat())
    wait_for_status(client, urls["dropped"], "deleted")
    assert not (brokers_dir / dropped_id).exists()
    assert client.get(urls["kept"]).json()["status"] == "running"

    metering.usage_meter(now=end + datetime.timedelta(days=8), since=trial.starts_at - datetime.timedelta(hours=1))
    assert not UsageRecord.objects.filter(deployment__public_id__in=[kept_id, dropped_id]).exists()
    assert client.get(f"/api/v1/organizations/{owner_org.id}/premium-trial").json()["status"] == "ended"
