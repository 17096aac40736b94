"""GCP peering through google-cloud-compute against the HTTP fake in tests/fakes/gcp_compute.py (service-account
tokens, networks, global operations): the full state walk, a refusal from GCP, the customer removing their side
(abnormal, then healed when they add it back), and delete."""

import http.client
import json
from urllib.parse import urlsplit

import pytest

from networking import services
from networking.models import VpcPeering
from tests.networking.conftest import body_then_unknown_route, make_deployment, poll
from tests.outage import soft_time_limit_on_connect

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(owner_org, gcp_region):
    return make_deployment(owner_org.default_project, gcp_region)


def _create(deployment, gcp, **overrides):
    values = {
        "provider": "gcp",
        "cidr": "10.1.0.0/16",
        "project_id": gcp.customer_project,
        "network": gcp.customer_network,
        **overrides,
    }
    return services.vpc_peering_create(deployment=deployment, actor=None, **values)


def _reload(peering):
    return VpcPeering.objects.get(pk=peering.pk)


def _our_peerings(gcp) -> list[dict]:
    return gcp.fake.rendered(gcp.project, gcp.network_name)["peerings"]


def test_peering_walks_to_active_when_customer_creates_their_side(deployment, gcp):
    peering = _create(deployment, gcp)
    assert poll(peering) == "awaiting_customer_action"
    peering = _reload(peering)
    name = peering.public_id.replace("_", "-")
    assert peering.provider_ids["peering_name"] == name
    assert [(p["name"], p["state"]) for p in _our_peerings(gcp)] == [(name, "INACTIVE")]
    assert peering.provider_state == "INACTIVE"
    assert peering.customer_action["commands"] == [
        f"gcloud compute networks peerings create {name} --project={gcp.customer_project} "
        f"--network={gcp.customer_network} --peer-project={gcp.project} --peer-network={gcp.network_name}"
    ]
    # The SDK's calls (signed with the service account's key): addPeering, the operation until DONE, then a read.
    assert gcp.fake.requests("POST", "/addPeering")
    assert gcp.fake.requests("POST", "/global/operations/")

    gcp.fake.peer(gcp.customer_project, gcp.customer_network, name, gcp.project, gcp.network_name)
    assert poll(peering) == "active"
    assert _reload(peering).provider_state == "ACTIVE"
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 0.0}


def test_peering_fails_with_gcp_reason_when_customer_network_does_not_exist(deployment, gcp):
    peering = _create(deployment, gcp, network="no-such-network")
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.last_error == (
        "GCP refused to add peering "
        f"{peering.public_id.replace('_', '-')}: RESOURCE_NOT_FOUND: The resource "
        f"'projects/{gcp.customer_project}/global/networks/no-such-network' was not found"
    )
    assert _our_peerings(gcp) == []


def test_peering_is_abnormal_then_heals_when_customer_removes_and_restores_their_side(deployment, gcp):
    peering = _create(deployment, gcp)
    poll(peering)
    name = _reload(peering).provider_ids["peering_name"]
    gcp.fake.peer(gcp.customer_project, gcp.customer_network, name, gcp.project, gcp.network_name)
    assert poll(peering) == "active"

    gcp.fake.unpeer(gcp.customer_project, gcp.customer_network, name)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.is_abnormal and "no longer active (INACTIVE)" in peering.last_error
    assert peering.next_poll_at is not None  # GCP can reconnect it: keep watching
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 1.0}

    gcp.fake.peer(gcp.customer_project, gcp.customer_network, name, gcp.project, gcp.network_name)
    assert poll(peering) == "active"
    assert _reload(peering).last_error == ""
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 0.0}


def test_delete_removes_our_side_when_active(deployment, gcp):
    peering = _create(deployment, gcp)
    poll(peering)
    name = _reload(peering).provider_ids["peering_name"]
    gcp.fake.peer(gcp.customer_project, gcp.customer_network, name, gcp.project, gcp.network_name)
    poll(peering)

    services.vpc_peering_delete(peering=_reload(peering), actor=None)
    assert poll(peering) == "deleted"
    assert _our_peerings(gcp) == []
    assert gcp.fake.requests("POST", "/removePeering")


def test_poll_retries_without_failing_when_platform_credentials_are_refused(deployment, gcp):
    gcp.fake.accounts.clear()  # the platform's key is no longer known: every signed request is refused
    peering = _create(deployment, gcp)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert peering.last_error.startswith("GCP answered 401") and peering.next_poll_at is not None


def test_poll_says_it_ran_out_of_time_when_the_soft_time_limit_interrupts_it(deployment, gcp, gcp_region):
    # The worker's soft time limit strikes while google-cloud-compute waits for GCP's answer: the poll says it ran
    # out of time, not that GCP could not be reached, and the next poll goes on.
    peering = _create(deployment, gcp)
    network = dict(gcp_region.network)
    with soft_time_limit_on_connect() as port:
        gcp_region.network = {**network, "endpoint": f"http://127.0.0.1:{port}"}
        gcp_region.save()
        assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "ran out of time" in peering.last_error and "could not be reached" not in peering.last_error
    assert peering.next_poll_at is not None and peering.poll_attempt == 1

    gcp_region.network = network
    gcp_region.save()
    assert poll(peering) == "awaiting_customer_action"  # the next poll goes on


def test_peering_is_added_by_a_later_poll_when_another_peering_operation_runs_on_the_platform_network(deployment, gcp):
    # Every deployment of the region peers the same platform network, and GCP runs one peering operation at a time
    # on a network: while another runs, addPeering is 400 "There is a peering operation in progress…".
    other = gcp.fake.start_peering_operation(gcp.project, gcp.network_name)
    peering = _create(deployment, gcp)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "peering operation in progress" in peering.last_error and peering.next_poll_at is not None

    gcp.fake.finish_operation(gcp.project, other)
    assert poll(peering) == "awaiting_customer_action"


def test_fake_reads_each_request_body_so_the_next_request_on_the_connection_is_understood(gcp):
    """The fake speaks HTTP/1.1, so the client library sends its next request on the same connection. An answer given
    before the body is read (here the refusal of a request without credentials) must still consume it, or its bytes
    are read as the next request's first line and that request is refused."""
    where = urlsplit(gcp.url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    path = f"/compute/v1/projects/{gcp.project}/global/networks/{gcp.network_name}/addPeering"

    first, second, answer = body_then_unknown_route(connection, "POST", path, b'{"networkPeering": {}}')

    assert (first, second) == (401, 404), answer[:200]
    assert json.loads(answer)["error"]["code"] == 404
