"""Deleting (closing) an organization: only its Owner, in person, typing its name, and only once nothing runs or is
owed in it. Closing keeps the billing records and the audit log and takes every member's and key's way in."""

import datetime

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from organizations.models import ApiKey, Invitation, Membership, Organization
from tests.api_walk import _deployment, _peering

pytestmark = pytest.mark.django_db


def _session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _delete(client, org, confirm_name):
    body = {} if confirm_name is None else {"confirm_name": confirm_name}
    return client.delete(f"/api/v1/organizations/{org.id}", body, format="json")


def _deleted_deployment(org):
    from deployments.models import Deployment

    dep = Deployment.objects.get(public_id=_deployment(org, {}, ""))
    Deployment.objects.filter(pk=dep.pk).update(status="deleted", desired_state="deleted", deleted_at=timezone.now())
    return dep


def _account(org):
    from billing.selectors import billing_account_for

    return billing_account_for(organization=org.organization)


def _invoice(org, status):
    from billing.models import Invoice

    number = None if status == "draft" else f"T-{org.organization.pk}-{status}"
    return Invoice.objects.create(
        billing_account=_account(org),
        kind="annual",
        status=status,
        number=number,
        currency="USD",
        tax_treatment="outside_scope",
        tax_rate=0,
    )


def _usage(org, *, invoiced=False):
    from billing.models import UsageRecord

    dep = _deleted_deployment(org)
    return UsageRecord.objects.create(
        deployment=dep,
        organization=org.organization,
        tier=dep.tier,
        hour=timezone.now().replace(minute=0, second=0, microsecond=0) - datetime.timedelta(hours=1),
        product="running",
        seconds=600,
        unit_price="0.36",
        currency="USD",
        invoice=_invoice(org, "paid") if invoiced else None,
    )


def _traffic(org):
    from billing.models import TrafficRecord

    return TrafficRecord.objects.create(
        deployment=_deleted_deployment(org), organization=org.organization, day=timezone.now().date(), bytes=1024
    )


def _unmetered_interval(org):
    from billing.models import MeteringCursor
    from deployments.models import StatusInterval

    dep = _deleted_deployment(org)
    now = timezone.now()
    MeteringCursor.objects.update_or_create(pk=1, defaults={"metered_until": now - datetime.timedelta(hours=2)})
    StatusInterval.objects.create(
        deployment=dep,
        status="running",
        tier=dep.tier,
        started_at=now - datetime.timedelta(hours=3),
        ended_at=now - datetime.timedelta(minutes=30),
    )


def _subscription(org):
    from billing.annual import annual_quote_accept, annual_quote_create
    from billing.models import Invoice
    from deployments.models import Deployment

    dep = Deployment.objects.get(public_id=_deployment(org, {}, ""))
    subscription = annual_quote_accept(quote=annual_quote_create(deployment=dep, actor=None), actor=None)
    # Only the subscription is left: its invoice paid, its deployment deleted.
    Invoice.objects.filter(subscription=subscription).update(status="paid", number=f"T-{dep.pk}-sub")
    Deployment.objects.filter(pk=dep.pk).update(status="deleted", desired_state="deleted")


def _peering_left(org):
    from deployments.models import Deployment

    dep = _deployment(org, {}, "")
    _peering(org, {"dep": dep}, "")
    Deployment.objects.filter(public_id=dep).update(status="deleted", desired_state="deleted")


def _deployment_being_deleted(org):
    from deployments.models import Deployment

    Deployment.objects.filter(pk=_deleted_deployment(org).pk).update(status="deleting")


# What blocks, and the code of the refusal's entry that names it.
BLOCKERS = {
    "deployment": (lambda org: _deployment(org, {}, ""), "deployments"),
    "deployment-being-deleted": (_deployment_being_deleted, "deployments"),
    "unbilled-usage": (_usage, "unbilled-usage"),
    "unbilled-traffic": (_traffic, "unbilled-usage"),
    "unmetered-usage": (_unmetered_interval, "unbilled-usage"),
    "draft-invoice": (lambda org: _invoice(org, "draft"), "invoices"),
    "open-invoice": (lambda org: _invoice(org, "open"), "invoices"),
    "uncollectible-invoice": (lambda org: _invoice(org, "uncollectible"), "invoices"),
    "annual-subscription": (_subscription, "annual-subscriptions"),
    "vpc-peering": (_peering_left, "vpc-peerings"),
}


def test_owner_deletes_organization_when_nothing_blocks_and_no_one_reaches_it_any_more(
    owner_org, key_client, deployments_catalog
):
    from billing.models import BillingAccount

    member, _membership = owner_org.add_member(roles=["administrator"])
    member_key, member_secret = owner_org.key_for(member, role="administrator")
    from organizations import services

    services.invitation_create(
        organization=owner_org.organization, actor=None, email="pending@example.com", roles=["auditor"]
    )
    _usage(owner_org, invoiced=True)  # billed and paid: history, not a blocker
    _invoice(owner_org, "void")
    account = _account(owner_org)
    organization = owner_org.organization

    response = _delete(_session(owner_org.owner), owner_org, organization.name)

    assert response.status_code == 204, response.content
    organization.refresh_from_db()
    assert organization.closed_at is not None
    assert not Membership.objects.filter(organization=organization).exists()
    assert not Invitation.objects.filter(organization=organization, accepted_at=None, revoked_at=None).exists()
    assert not ApiKey.objects.filter(organization=organization, revoked_at=None).exists()
    assert BillingAccount.objects.filter(pk=account.pk).exists()
    assert organization.projects.filter(is_default=True).exists()
    event = AuditEvent.objects.get(organization=organization, action="organization.delete")
    assert (event.actor_id, event.api_key_id) == (owner_org.owner.pk, None)
    assert event.summary["name"] == organization.name
    assert event.summary["members"] == sorted([owner_org.owner.email, member.email])
    assert member_key.prefix in event.summary["revoked_api_keys"]
    assert event.summary["revoked_invitations"] == ["pending@example.com"]
    # Nobody can see it or reach it any more: a former member's session, a former key.
    for user in (owner_org.owner, member):
        client = _session(user)
        assert client.get(f"/api/v1/organizations/{owner_org.id}").status_code == 404
        listed = [o["id"] for o in client.get("/api/v1/organizations").json()["results"]]
        assert owner_org.id not in listed
    for secret in (owner_org.owner_secret, member_secret):
        assert key_client(secret).get(f"/api/v1/organizations/{owner_org.id}").status_code == 401
    # The owner can start again.
    created = _session(owner_org.owner).post("/api/v1/organizations", {"name": "Fresh start"}, format="json")
    assert created.status_code == 201


@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_owner_is_refused_with_409_listing_what_blocks_when_something_runs_or_is_owed(
    blocker, owner_org, deployments_catalog
):
    make, kind = BLOCKERS[blocker]
    make(owner_org)
    organization = owner_org.organization

    response = _delete(_session(owner_org.owner), owner_org, organization.name)

    assert response.status_code == 409, response.content
    problem = response.json()
    assert response["Content-Type"] == "application/problem+json"
    assert problem["type"].endswith("/organization-not-empty")
    assert [(error["field"], error["code"]) for error in problem["errors"]] == [(None, kind)]
    assert problem["errors"][0]["message"] in problem["detail"]
    organization.refresh_from_db()
    assert organization.closed_at is None
    assert Membership.objects.filter(organization=organization).exists()
    assert ApiKey.objects.get(pk=owner_org.owner_key.pk).revoked_at is None
    assert not AuditEvent.objects.filter(organization=organization, action="organization.delete").exists()


def test_every_blocker_is_listed_when_several_block(owner_org, deployments_catalog):
    _deployment(owner_org, {}, "")
    _invoice(owner_org, "open")

    response = _delete(_session(owner_org.owner), owner_org, owner_org.organization.name)

    assert response.status_code == 409
    assert [error["code"] for error in response.json()["errors"]] == ["deployments", "invoices"]


def test_wrong_or_missing_name_is_refused_on_confirm_name(owner_org):
    for confirm_name in (None, "", "not the name", owner_org.organization.name.upper()):
        response = _delete(_session(owner_org.owner), owner_org, confirm_name)
        assert response.status_code == 400, (confirm_name, response.content)
        assert [error["field"] for error in response.json()["errors"]] == ["confirm_name"]
    owner_org.organization.refresh_from_db()
    assert owner_org.organization.closed_at is None


@pytest.mark.parametrize("roles", [["administrator"], ["accountant"], ["auditor"], []])
def test_member_who_is_not_owner_gets_403(roles, owner_org, key_client):
    user, _membership = owner_org.add_member(roles=roles)

    response = _delete(_session(user), owner_org, owner_org.organization.name)

    assert response.status_code == 403
    assert Organization.objects.get(pk=owner_org.organization.pk).closed_at is None


def test_owner_api_key_gets_403_a_person_must_delete(owner_org, key_client):
    response = _delete(key_client(owner_org.owner_secret), owner_org, owner_org.organization.name)

    assert response.status_code == 403
    assert response.json()["type"].endswith("/api-key-not-allowed")
    assert Organization.objects.get(pk=owner_org.organization.pk).closed_at is None


def test_another_organizations_owner_gets_404(owner_org, org_factory, key_client):
    outsider = org_factory()

    response = _delete(_session(outsider.owner), owner_org, owner_org.organization.name)

    assert response.status_code == 404
    assert Organization.objects.get(pk=owner_org.organization.pk).closed_at is None


def test_deployment_is_refused_in_an_organization_deleted_meanwhile(owner_org, deployments_catalog):
    """A request that resolved the organization before its deletion committed: deployment_create takes the
    organization's row lock organization_delete takes, and finds it closed."""
    from controlplane.errors import NotFound
    from deployments import services as deployment_services
    from deployments.models import Deployment

    assert _delete(_session(owner_org.owner), owner_org, owner_org.organization.name).status_code == 204

    with pytest.raises(NotFound):
        deployment_services.deployment_create(
            project=owner_org.default_project, actor=None, name="late", plan="dedicated", tier="1k", region="local"
        )
    assert not Deployment.objects.filter(project__organization=owner_org.organization).exists()


def test_channel_is_neither_enabled_again_nor_created_in_an_organization_deleted_meanwhile(owner_org):
    """Requests that resolved the organization and its channel before its deletion committed: the deletion disabled
    every channel, and a late update or creation must not turn one on again. Both take the organization's row lock
    organization_delete takes, and find it closed."""
    from controlplane.errors import NotFound
    from notifications import services as notification_services
    from notifications.models import NotificationChannel

    organization = owner_org.organization
    channel, _ = notification_services.channel_create(
        organization=organization, actor=None, name="ops", type="email", config={"addresses": ["ops@example.com"]}
    )
    assert _delete(_session(owner_org.owner), owner_org, organization.name).status_code == 204

    with pytest.raises(NotFound):
        notification_services.channel_update(channel=channel, actor=None, enabled=True)
    with pytest.raises(NotFound):
        notification_services.channel_create(
            organization=organization, actor=None, name="late", type="email", config={"addresses": ["a@example.com"]}
        )
    assert list(NotificationChannel.objects.filter(organization=organization).values_list("name", "enabled")) == [
        ("ops", False)
    ]
    audited = AuditEvent.objects.filter(organization=organization, action__startswith="notification_channel.")
    assert list(audited.values_list("action", flat=True)) == ["notification_channel.create"]


def test_closed_organization_stays_hidden_when_a_membership_and_a_key_are_brought_back(owner_org, key_client, client):
    """Deleting removes every way in; should staff add a member back (or lift a key's revocation), the organization
    is still closed: access itself refuses a closed one."""
    assert _delete(_session(owner_org.owner), owner_org, owner_org.organization.name).status_code == 204
    Membership.objects.create(organization=owner_org.organization, user=owner_org.owner, roles=["owner"])
    ApiKey.objects.filter(pk=owner_org.owner_key.pk).update(revoked_at=None)

    session = _session(owner_org.owner)
    assert session.get(f"/api/v1/organizations/{owner_org.id}").status_code == 404
    assert owner_org.id not in [o["id"] for o in session.get("/api/v1/organizations").json()["results"]]
    keyed = key_client(owner_org.owner_secret)
    assert keyed.get(f"/api/v1/organizations/{owner_org.id}").status_code == 404
    assert keyed.get("/api/v1/organizations").json()["results"] == []
    client.force_login(owner_org.owner)
    assert client.get(f"/console/o/{owner_org.id}/settings").status_code == 404


def test_channels_are_disabled_and_no_failing_notice_goes_out_when_the_organization_is_deleted(
    owner_org, mailoutbox, django_capture_on_commit_callbacks
):
    # Nobody is left to tell: a channel failing for a day is not reported (to whom?), nor is anything else sent.
    from notifications import services as notification_services
    from notifications.models import NotificationChannel, PlatformEvent

    organization = owner_org.organization
    failing = NotificationChannel.objects.create(
        organization=organization,
        name="dead",
        type="email",
        config={"addresses": ["x@example.com"]},
        failing_since=timezone.now() - datetime.timedelta(hours=25),
    )
    healthy = NotificationChannel.objects.create(
        organization=organization, name="ops", type="email", config={"addresses": ["ops@example.com"]}
    )
    NotificationChannel.objects.create(
        organization=organization, name="off", type="email", config={"addresses": ["y@example.com"]}, enabled=False
    )

    response = _delete(_session(owner_org.owner), owner_org, organization.name)

    assert response.status_code == 204, response.content
    assert not NotificationChannel.objects.filter(organization=organization, enabled=True).exists()
    event = AuditEvent.objects.get(organization=organization, action="organization.delete")
    assert event.summary["disabled_notification_channels"] == sorted([failing.public_id, healthy.public_id])
    with django_capture_on_commit_callbacks(execute=True):
        assert notification_services.failing_channels_check() == 0
    assert mailoutbox == []
    assert not PlatformEvent.objects.filter(organization=organization).exists()
