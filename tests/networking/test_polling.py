"""The poll chain: one task at a time per peering, a superseded or duplicate task does nothing, the sweep restarts a
chain a lost task left behind, a request made while the provider is being asked wins, and the peerings of a deleted
deployment are deleted."""

import datetime

import pytest
from django.utils import timezone

from controlplane.db import LockSpace, session_try_lock
from networking import services
from networking.models import VpcPeering
from tests.networking.conftest import CUSTOMER_ACCOUNT, REGION_AWS, make_deployment, poll

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(owner_org, aws_region):
    return make_deployment(owner_org.default_project, aws_region)


@pytest.fixture
def peering(deployment, aws):
    return services.vpc_peering_create(
        deployment=deployment,
        actor=None,
        provider="aws",
        cidr="10.1.0.0/16",
        account_id=CUSTOMER_ACCOUNT,
        vpc_id=aws.customer_vpc_id,
        region=REGION_AWS,
    )


def test_superseded_task_does_nothing_when_its_token_is_old(peering, aws):
    old = peering.poll_token
    services.vpc_peering_poll_now(peering=peering)
    assert services.peering_poll(peering_id=peering.pk, token=old) == "stale"
    assert aws.live_connections() == [] and VpcPeering.objects.get(pk=peering.pk).state == "pending"
    assert poll(peering) == "awaiting_customer_action"


def test_second_worker_backs_off_when_a_poll_holds_the_peering(peering, aws):
    with session_try_lock(LockSpace.VPC_PEERING, peering.pk) as held:
        assert held
        assert services.peering_poll(peering_id=peering.pk, token=peering.poll_token) == "busy"
    assert aws.live_connections() == []


def test_sweep_restarts_a_lost_poll_and_leaves_a_live_one_alone(peering):
    assert services.peerings_sweep() == 0  # its first poll is due now, not late
    late = timezone.now() + datetime.timedelta(minutes=5)
    lost_token = peering.poll_token
    assert services.peerings_sweep(now=late) == 1
    restarted = VpcPeering.objects.get(pk=peering.pk)
    assert restarted.poll_token != lost_token and restarted.next_poll_at is not None
    assert services.peering_poll(peering_id=peering.pk, token=lost_token) == "stale"


def test_sweep_ignores_settled_peerings(peering):
    VpcPeering.objects.filter(pk=peering.pk).update(state="failed", next_poll_at=None, poll_token="")
    assert services.peerings_sweep(now=timezone.now() + datetime.timedelta(hours=1)) == 0


def test_delete_during_a_poll_wins_and_removes_what_the_poll_created(peering, aws, monkeypatch):
    from networking.providers import aws as aws_adapter

    original = aws_adapter.AwsAdapter.request

    def request_then_user_deletes(self, platform, customer):
        observation = original(self, platform, customer)
        services.vpc_peering_delete(peering=VpcPeering.objects.get(pk=peering.pk), actor=None)
        return observation

    monkeypatch.setattr(aws_adapter.AwsAdapter, "request", request_then_user_deletes)
    assert poll(peering) == "superseded"
    row = VpcPeering.objects.get(pk=peering.pk)
    assert row.state == "deleting" and row.provider_ids["vpc_peering_connection_id"]
    assert len(aws.live_connections()) == 1
    monkeypatch.undo()
    assert poll(peering) == "deleted"
    assert aws.live_connections() == []


def test_sweep_deletes_peerings_of_a_deleted_deployment_even_when_protected(peering, deployment):
    from audit.models import AuditEvent
    from deployments.models import Deployment

    VpcPeering.objects.filter(pk=peering.pk).update(deletion_protection=True)
    Deployment.objects.filter(pk=deployment.pk).update(desired_state="deleted")
    services.peerings_sweep()
    assert VpcPeering.objects.get(pk=peering.pk).state == "deleting"
    event = AuditEvent.objects.get(action="vpc_peering.delete", target_id=peering.public_id)
    assert event.summary["reason"] == "the deployment was deleted" and event.summary["force"] is True
