"""A peering awaiting the customer does not wait for ever: the poll backs off up to its cap, never past the deadline,
and at the deadline looks once more: still awaiting, it fails as expired (what we made at the provider removed,
polling stopped, the organization notified once) and can be created again; acted on meanwhile, it is active.
Time travels by moving `django.utils.timezone.now` forward, in this process; the worker's test moves the peering."""

import datetime

import pytest
from django.utils import timezone

from networking import services
from networking.api import VpcPeeringSerializer
from networking.models import VpcPeering
from notifications.models import PlatformEvent
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: the notice's email task runs inline
from tests.networking.conftest import CUSTOMER_ACCOUNT, REGION_AWS, make_deployment, poll

pytestmark = pytest.mark.django_db

WEEK = datetime.timedelta(days=7)


@pytest.fixture
def travel(monkeypatch):
    """travel(delta): from now on, timezone.now() answers the real time plus `delta`."""

    real = timezone.now

    def to(delta: datetime.timedelta) -> None:
        monkeypatch.setattr(timezone, "now", lambda: real() + delta)

    return to


def _create_gcp(deployment, gcp):
    return services.vpc_peering_create(
        deployment=deployment,
        actor=None,
        provider="gcp",
        cidr="10.1.0.0/16",
        project_id=gcp.customer_project,
        network=gcp.customer_network,
    )


def _reload(peering):
    return VpcPeering.objects.get(pk=peering.pk)


def test_awaiting_peering_expires_and_notifies_when_the_customer_never_acts(
    owner_org, gcp_region, gcp, travel, mailoutbox, django_capture_on_commit_callbacks, eager
):
    deployment = make_deployment(owner_org.default_project, gcp_region, name="plant")
    peering = _create_gcp(deployment, gcp)
    assert poll(peering) == "awaiting_customer_action"
    peering = _reload(peering)
    assert peering.awaiting_since is not None
    expires = VpcPeeringSerializer(peering).data["awaiting_expires_at"]
    assert datetime.datetime.fromisoformat(expires) == peering.awaiting_since + WEEK
    assert gcp.fake.rendered(gcp.project, gcp.network_name)["peerings"]  # our side waits at GCP

    travel(WEEK - datetime.timedelta(minutes=1))
    assert poll(peering) == "awaiting_customer_action"  # not yet

    travel(WEEK + datetime.timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.last_error.startswith("Expired: the peering awaited your action for 7 days without it")
    assert "create the peering again" in peering.last_error
    assert peering.customer_action == {} and not peering.is_abnormal
    assert peering.next_poll_at is None and peering.poll_token == ""  # polling stopped
    assert VpcPeeringSerializer(peering).data["awaiting_expires_at"] is None
    assert gcp.fake.rendered(gcp.project, gcp.network_name)["peerings"] == []  # our side removed at GCP
    event = PlatformEvent.objects.get(kind="vpc_peering_expired", subject=peering.public_id)
    assert (
        event.organization_id == owner_org.organization.pk and "plant" in event.message and "Expired:" in event.message
    )
    # No platform-event channel: the owners hear of it by email, once.
    assert [m.to for m in mailoutbox] == [[owner_org.owner.email]]
    assert peering.public_id in mailoutbox[0].body

    # The customer may create it again (an expired peering holds no range), and the new one waits afresh.
    again = _create_gcp(deployment, gcp)
    assert again.state == "pending"
    assert poll(again) == "awaiting_customer_action"
    assert _reload(again).awaiting_since > peering.awaiting_since


def test_peering_turns_active_not_expired_when_customer_acted_before_the_last_look(owner_org, aws_region, aws, travel):
    deployment = make_deployment(owner_org.default_project, aws_region)
    peering = services.vpc_peering_create(
        deployment=deployment,
        actor=None,
        provider="aws",
        cidr="10.1.0.0/16",
        account_id=CUSTOMER_ACCOUNT,
        vpc_id=aws.customer_vpc_id,
        region=REGION_AWS,
    )
    assert poll(peering) == "awaiting_customer_action"
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)

    travel(WEEK + datetime.timedelta(hours=1))
    assert poll(peering) == "active"
    peering = _reload(peering)
    assert peering.awaiting_since is None and peering.last_error == ""
    assert not PlatformEvent.objects.filter(kind="vpc_peering_expired").exists()


def test_awaiting_poll_backs_off_to_its_cap_and_never_past_the_deadline(owner_org, gcp_region, gcp, settings):
    settings.VPC_PEERING_POLL_BASE_SECONDS = 2.0
    settings.VPC_PEERING_AWAITING_POLL_MAX_SECONDS = 900.0
    deployment = make_deployment(owner_org.default_project, gcp_region)
    peering = _create_gcp(deployment, gcp)
    waits = []
    for _ in range(12):
        assert poll(peering) == "awaiting_customer_action"
        row = _reload(peering)
        waits.append(round((row.next_poll_at - row.last_checked_at).total_seconds()))
    assert waits[:4] == [2, 4, 8, 16]  # quick at first: most customers act within minutes
    assert waits == sorted(waits) and waits[-1] == 900 and max(waits) == 900

    # Close to the deadline, the next look is at the deadline (plus a second), not a cap later.
    settings.VPC_PEERING_AWAITING_TTL_SECONDS = (timezone.now() - row.awaiting_since).total_seconds() + 30
    assert poll(peering) == "awaiting_customer_action"
    row = _reload(peering)
    assert 0 < (row.next_poll_at - timezone.now()).total_seconds() <= 31


def test_sweep_restarts_no_poll_for_an_expired_peering(owner_org, gcp_region, gcp, travel):
    deployment = make_deployment(owner_org.default_project, gcp_region)
    peering = _create_gcp(deployment, gcp)
    poll(peering)
    travel(WEEK + datetime.timedelta(seconds=1))
    assert poll(peering) == "failed"
    assert services.peerings_sweep(now=timezone.now() + datetime.timedelta(days=1)) == 0
