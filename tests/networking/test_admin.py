"""The backoffice (staff signed in with two factors) shows peerings read-only and can re-poll one; the region form
carries the network block."""

import pytest

from networking import services
from networking.models import VpcPeering
from tests.networking.conftest import CUSTOMER_ACCOUNT, REGION_AWS, make_deployment, make_region

pytestmark = pytest.mark.django_db


@pytest.fixture
def peering(owner_org, deployments_catalog):
    region = make_region(
        code="aws-frankfurt",
        provider="aws",
        cloud_region=REGION_AWS,
        network={"account_id": "123456789012", "vpc_id": "vpc-0aaaaaaa", "cidr": "10.0.0.0/16"},
        credentials={"access_key_id": "x", "secret_access_key": "y"},
    )
    deployment = make_deployment(owner_org.default_project, region)
    return services.vpc_peering_create(
        deployment=deployment,
        actor=None,
        provider="aws",
        cidr="10.1.0.0/16",
        account_id=CUSTOMER_ACCOUNT,
        vpc_id="vpc-0bbbbbbb",
        region=REGION_AWS,
    )


def test_staff_lists_and_opens_peerings_read_only(admin_client, peering):
    client = admin_client
    listing = client.get("/admin/networking/vpcpeering/")
    assert listing.status_code == 200 and peering.public_id.encode() in listing.content
    page = client.get(f"/admin/networking/vpcpeering/{peering.pk}/change/")
    assert page.status_code == 200 and b'name="cidr"' not in page.content  # shown, never editable
    assert client.get("/admin/networking/vpcpeering/add/").status_code == 403


def test_poll_now_action_supersedes_the_scheduled_poll(admin_client, peering):
    client = admin_client
    before = peering.poll_token
    response = client.post(
        "/admin/networking/vpcpeering/",
        {"action": "poll_now", "_selected_action": [peering.pk]},
    )
    assert response.status_code == 302
    assert VpcPeering.objects.get(pk=peering.pk).poll_token != before


def test_region_form_shows_network_but_never_the_credentials(admin_client, peering):
    client = admin_client
    region = peering.deployment.region
    page = client.get(f"/admin/deployments/region/{region.pk}/change/")
    assert page.status_code == 200
    assert b'name="network"' in page.content and b"vpc-0aaaaaaa" in page.content
    assert b"cloud_credentials" not in page.content and region.cloud_credentials_encrypted.encode() not in page.content
