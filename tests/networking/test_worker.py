"""A real Celery worker walks an AWS peering (moto's EC2 over HTTP) from the API's 202 to active, notices the customer
deleting their side, and finishes a delete; expires a GCP peering the customer never completed: every step after the
request runs in the worker's poll."""

import datetime
import time

import pytest

from alerts.models import Alert
from networking.models import VpcPeering
from tests.networking.conftest import CUSTOMER_ACCOUNT, REGION_AWS, make_deployment, peering_url

pytestmark = pytest.mark.slow


@pytest.fixture
def fast_polls(monkeypatch):
    """The worker's settings come from its environment: poll every second or so instead of minutes."""
    monkeypatch.setenv("VPC_PEERING_POLL_BASE_SECONDS", "0.2")
    monkeypatch.setenv("VPC_PEERING_POLL_MAX_SECONDS", "1")
    monkeypatch.setenv("VPC_PEERING_AWAITING_POLL_MAX_SECONDS", "1")
    monkeypatch.setenv("VPC_PEERING_RESYNC_SECONDS", "1")


@pytest.fixture
def worker(fast_polls, celery_worker):
    return celery_worker


def _wait_for(peering_id: str, state: str, worker, timeout: float = 60.0) -> VpcPeering:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        peering = VpcPeering.objects.get(public_id=peering_id)
        if peering.state == state:
            return peering
        time.sleep(0.2)
    raise AssertionError(f"{peering_id} stayed {peering.state} ({peering.last_error}):\n{worker.logs()}")


def test_worker_walks_peering_from_request_to_deleted(worker, aws, aws_region, owner_org, key_client):
    deployment = make_deployment(owner_org.default_project, aws_region)
    client = key_client(owner_org.owner_secret)
    url = peering_url(owner_org, deployment)
    body = {
        "provider": "aws",
        "cidr": "10.1.0.0/16",
        "account_id": CUSTOMER_ACCOUNT,
        "vpc_id": aws.customer_vpc_id,
        "region": REGION_AWS,
    }
    created = client.post(url, body, format="json")
    assert created.status_code == 202 and created.json()["state"] == "pending"
    peering_id = created.json()["id"]

    _wait_for(peering_id, "awaiting_customer_action", worker)
    detail = client.get(f"{url}/{peering_id}").json()
    pcx_id = detail["provider_peering_id"]
    assert pcx_id.startswith("pcx-")
    assert f"--vpc-peering-connection-id {pcx_id}" in detail["customer_action"]["commands"][0]

    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    _wait_for(peering_id, "active", worker)
    assert [r["DestinationCidrBlock"] for r in aws.routes()] == ["10.1.0.0/16"]

    aws.customer.delete_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    failed = _wait_for(peering_id, "failed", worker)
    assert failed.is_abnormal and CUSTOMER_ACCOUNT in failed.last_error
    # The worker fed the metric and evaluated the deployment's rules: the default "VPC peering abnormal" fires.
    alert = None
    deadline = time.monotonic() + 20
    while alert is None and time.monotonic() < deadline:
        alert = Alert.objects.filter(deployment=deployment, rule__default_key="vpc_peering_abnormal").first()
        time.sleep(0.2)
    assert alert is not None and alert.status == "firing", worker.logs()

    assert client.delete(f"{url}/{peering_id}").status_code == 202
    _wait_for(peering_id, "deleted", worker)
    assert aws.routes() == []
    assert client.get(url).json()["results"] == []


def test_worker_expires_an_awaiting_peering_and_the_customer_creates_it_again(
    worker, gcp, gcp_region, owner_org, key_client
):
    from notifications.models import PlatformEvent

    deployment = make_deployment(owner_org.default_project, gcp_region)
    client = key_client(owner_org.owner_secret)
    url = peering_url(owner_org, deployment)
    body = {
        "provider": "gcp",
        "cidr": "10.1.0.0/16",
        "project_id": gcp.customer_project,
        "network": gcp.customer_network,
    }
    created = client.post(url, body, format="json")
    assert created.status_code == 202
    peering_id = created.json()["id"]
    waiting = _wait_for(peering_id, "awaiting_customer_action", worker)
    assert client.get(f"{url}/{peering_id}").json()["awaiting_expires_at"] is not None
    assert gcp.fake.rendered(gcp.project, gcp.network_name)["peerings"]

    # Time travel for the worker's clock: the peering began awaiting eight days ago.
    VpcPeering.objects.filter(pk=waiting.pk).update(awaiting_since=waiting.awaiting_since - datetime.timedelta(days=8))
    expired = _wait_for(peering_id, "failed", worker)
    assert expired.last_error.startswith("Expired: the peering awaited your action for 7 days"), expired.last_error
    assert gcp.fake.rendered(gcp.project, gcp.network_name)["peerings"] == []
    assert PlatformEvent.objects.filter(kind="vpc_peering_expired", subject=peering_id).count() == 1
    time.sleep(3)  # several poll periods: nothing polls it any more
    settled = VpcPeering.objects.get(pk=waiting.pk)
    assert settled.next_poll_at is None and settled.last_checked_at == expired.last_checked_at

    again = client.post(url, body, format="json")
    assert again.status_code == 202, again.json()
    _wait_for(again.json()["id"], "awaiting_customer_action", worker)
