"""Every write operation of the REST API, performed once by its organization's Owner with a valid body, records an
audit event of that very request (its X-Request-Id) in that organization, naming the caller.

The operations are derived from the URL map (tests/api_walk.py) and checked against the OpenAPI document: a new write
operation fails here until it answers 2xx (given a body below where it needs one) and is audited, or is allow-listed
with the reason it changes nothing. The organization and every operation's sample objects are made once for the
module (tests/module_data.py); each request runs in a savepoint of that data, rolled back after it, so on_commit work
never runs: an audit event written after the change's transaction would not count, as it should not.
"""

import dataclasses
import datetime
import json
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from tests.api_walk import SAMPLE_MAKERS, api_operations, sample_values
from tests.factories import UserFactory, make_organization
from tests.module_data import data_for_module
from tests.tenancy_models import changed, fingerprint

pytestmark = pytest.mark.django_db

WRITES = [op for op in api_operations() if op.method != "get"]
ORG = "/api/v1/organizations/{org}"
PROJECT = ORG + "/projects/{project}"
DEP = PROJECT + "/deployments/{dep}"
_SCHEMA_SOURCE = '{"type": "object", "properties": {"t": {"type": "number"}}}'


def _later(**delta) -> str:
    return (timezone.now() + datetime.timedelta(**delta)).isoformat()


@dataclasses.dataclass(frozen=True)
class Csv:
    """A body sent as it is, not as JSON."""

    text: str


# A valid body per write operation that needs one: a callable gets (world, the operation's path values). An operation
# not named here is sent an empty JSON object.
BODIES: dict[str, object] = {
    "POST /api/v1/organizations": {"name": "Walk Two"},
    f"PATCH {ORG}": {"name": "Walk renamed"},
    f"POST {ORG}/transfer-ownership": lambda world, values: {"member": world.admin_membership},
    f"DELETE {ORG}": lambda world, values: {"confirm_name": world.closable.name},
    f"POST {ORG}/projects": {"name": "walk project"},
    f"PATCH {PROJECT}": {"description": "walked"},
    f"PATCH {ORG}/members/{{member}}": {"roles": ["accountant"]},
    f"POST {ORG}/invitations": {"email": "walk-invitee@example.com", "roles": ["auditor"]},
    f"POST {ORG}/api-keys": {"name": "walk key", "role": "auditor"},
    f"PATCH {ORG}/api-keys/{{key}}": {"name": "walk key renamed"},
    "POST /api/v1/invitations/accept": lambda world, values: {"token": world.invitation_token},
    f"POST {PROJECT}/deployments": {"name": "walk", "plan": "dedicated", "tier": "1k", "region": "local"},
    f"PATCH {DEP}": {"name": "walk-renamed"},
    f"POST {DEP}/change-tier": {"tier": "2k"},
    f"POST {DEP}/move": lambda world, values: {"project": world.other_project},
    f"POST {DEP}/mqtt-users": {"username": "walker", "password": "a long mqtt password"},
    f"PATCH {DEP}/mqtt-users/{{user}}": {"superuser": True},
    f"POST {DEP}/acl-rules": {"permission": "deny", "action": "subscribe", "topic": "walk/#"},
    f"PATCH {DEP}/acl-rules/{{rule}}": {"topic": "walk/+"},
    f"PUT {DEP}/rate-limits": {"policies": [{"level": "connection", "messages_rate": 100}]},
    f"POST {DEP}/certificates": lambda world, values: world.certificate,
    f"POST {ORG}/notification-channels": {
        "name": "walk channel",
        "type": "email",
        "config": {"addresses": ["walk@example.com"]},
    },
    f"PATCH {ORG}/notification-channels/{{channel}}": {"name": "walk channel renamed"},
    f"POST {PROJECT}/alert-rules": {
        "name": "Budget",
        "kind": "budget",
        "metric": "spend_month_to_date",
        "operator": ">=",
        "budget_amount": "250.00",
        "budget_scope": "project",
    },
    f"PATCH {PROJECT}/alert-rules/{{rule}}": {"name": "walk rule"},
    f"POST {PROJECT}/silences": lambda world, values: {"ends_at": _later(hours=1)},
    f"POST {ORG}/alerts/{{alert}}/acknowledge": lambda world, values: {"until": _later(hours=1)},
    f"PUT {ORG}/billing/account": {
        "country": "US",
        "email": "ap@example.com",
        "address": "1 Main St",
        "city": "Springfield",
        "postal_code": "94105",
    },
    f"POST {ORG}/billing/checkout-session": {
        "success_url": "https://console.example/ok",
        "cancel_url": "https://console.example/no",
    },
    f"POST {ORG}/billing/coupons/redeem": {"code": "WALK10"},
    f"POST {DEP}/vpc-peerings": {
        "provider": "aws",
        "cidr": "10.200.0.0/24",
        "account_id": "222233334444",
        "vpc_id": "vpc-0a1b2c01",
        "region": "eu-central-1",
    },
    f"POST {DEP}/vpc-peerings/validate": {
        "provider": "aws",
        "cidr": "10.201.0.0/24",
        "account_id": "222233334444",
        "vpc_id": "vpc-0a1b2c02",
        "region": "eu-central-1",
    },
    f"PATCH {DEP}/vpc-peerings/{{peering}}": {"deletion_protection": True},
    f"POST {DEP}/devices": {"device_id": "walk-device"},
    f"PATCH {DEP}/devices/{{device}}": {"name": "walked"},
    f"PATCH {DEP}/devices/{{device}}/shadow": {"state": {"desired": {"walk": 2}}},
    f"POST {DEP}/device-imports": Csv("device_id\nwalk-imported\n"),
    f"POST {DEP}/device-groups": {"name": "walkers"},
    f"PATCH {DEP}/device-groups/{{group}}": {"description": "walked"},
    f"POST {DEP}/edge-nodes": {"name": "walk-node", "kind": "mosquitto"},
    f"POST {DEP}/schemas": {"name": "walk", "type": "json_schema", "source": _SCHEMA_SOURCE},
    f"POST {DEP}/schemas/{{schema}}/versions": {"source": _SCHEMA_SOURCE},
    f"POST {DEP}/schemas/{{schema}}/decode": {"payload_base64": "eyJ0IjogMX0="},
    f"POST {DEP}/schemas/{{schema}}/encode": {"payload": {"t": 1}},
    f"POST {DEP}/codec-rules": lambda world, values: {
        "topic_filter": "devices/+/walk",
        "direction": "decode",
        "schema": world.codec_schema,
        "topic_template": "app/{device_id}/walk",
    },
    f"PATCH {DEP}/codec-rules/{{codec_rule}}": {"name": "walked"},
}

# Write operations that answer 2xx and rightly record no audit event: each changes nothing stored, which the walk
# checks with the organization's and the accounts' fingerprint (tests/tenancy_models.py) around the request. A write
# that changes stored state does not belong here: it is a service that forgot its audit_record.
NOT_AUDITED: dict[str, str] = {
    f"POST {DEP}/vpc-peerings/validate": "the pre-flight checks of a peering, run without creating anything",
    f"POST {DEP}/schemas/{{schema}}/decode": "try it: decodes the posted payload with the schema, stores nothing",
    f"POST {DEP}/schemas/{{schema}}/encode": "try it: encodes the posted value with the schema, stores nothing",
}

# Columns an allow-listed request may change, each with why: what any authenticated request writes is no mutation.
MAY_CHANGE: dict[tuple[str, str], str] = {
    ("organizations.ApiKey", "last_used_at"): "any request with a key marks its last use (at most once a minute)",
}


def _documented_writes() -> set[str]:
    from drf_spectacular.generators import SchemaGenerator

    document = SchemaGenerator().get_schema(request=None, public=True)
    return {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete") and path.startswith("/api/v1/")
    }


def test_walk_performs_every_write_operation_of_the_openapi_document():
    """The walk below is parametrized from the URL map; the document is what customers call. Both must name the same
    writes, and every body and allow-list entry must name a write that still exists."""
    documented = _documented_writes()
    assert documented == {str(op) for op in WRITES}
    assert set(BODIES) - documented == set(), "a body for an operation that is gone"
    assert set(NOT_AUDITED) - documented == set(), "an allow-list entry for an operation that is gone"
    assert len(documented) >= 70


@dataclasses.dataclass(frozen=True)
class World:
    org: Any  # tests.factories.OrgFixture, whose fields are untyped
    values: dict
    admin_membership: str
    other_project: str
    invitee: Any
    invitation_token: str
    certificate: dict
    codec_schema: str
    closable: Any  # an organization of the same Owner with nothing in it: the one the walk deletes


def _build_world() -> World:
    from billing.models import Coupon
    from deployments.models import Deployment
    from organizations import services as organization_services
    from projects import services as project_services
    from tests.deployments.tls_helpers import key_pem, make_leaf, pem

    org: Any = make_organization()
    values = {str(op): sample_values(org, op.kwargs, route=op.route) for op in WRITES}
    # The targets the samples do not make: a project that may be deleted (the Default one may not) and that a
    # deployment may move to, a stopped deployment to start, an Administrator to hand ownership to, an invitation
    # whose invitee accepts it, a coupon, an AWS region for the peerings, a schema for the codec rule.
    other = project_services.project_create(organization=org.organization, actor=None, name="walk other")
    values[f"DELETE {PROJECT}"]["project"] = project_services.project_create(
        organization=org.organization, actor=None, name="walk doomed"
    ).public_id
    Deployment.objects.filter(public_id=values[f"POST {DEP}/start"]["dep"]).update(
        desired_state="stopped", status="stopped"
    )
    _user, admin = org.add_member(roles=["admin"])
    invitee: Any = UserFactory()
    _invitation, token = organization_services.invitation_create(
        organization=org.organization, actor=None, email=invitee.email, roles=["auditor"]
    )
    Coupon.objects.create(code="WALK10", amount=1000, currency="USD")
    for name in (f"POST {DEP}/vpc-peerings", f"POST {DEP}/vpc-peerings/validate"):
        SAMPLE_MAKERS["peering"](org, values[name], "")  # moves the deployment to an AWS region
    # Deleting an organization is refused while anything runs or is owed in it, as everything does in the walk's
    # organization: the Owner deletes a second one of theirs, empty (test_organization_delete_refused_records_nothing
    # below sends the same request to the walk's organization).
    closable = organization_services.organization_create(name="Walk closable", owner=org.owner)
    values[f"DELETE {ORG}"]["org"] = closable.public_id
    leaf, key = make_leaf(None, "walk.example", sans=("walk.example",))
    return World(
        org=org,
        values=values,
        admin_membership=admin.public_id,
        other_project=other.public_id,
        invitee=invitee,
        invitation_token=token,
        certificate={"kind": "server", "certificate": pem(leaf), "private_key": key_pem(key)},
        codec_schema=SAMPLE_MAKERS["schema"](org, values[f"POST {DEP}/codec-rules"], ""),
        closable=closable,
    )


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with data_for_module(django_db_blocker, _build_world) as data:
        yield data


@pytest.fixture
def fake_stripe():
    from tests.fakes.stripe_api import FakeStripe

    with FakeStripe() as fake, override_settings(STRIPE_SECRET_KEY=fake.api_key, STRIPE_API_BASE=fake.url):
        yield fake


# Operations the Owner performs with their console session: an API key may not.
SESSION_ONLY = {
    "POST /api/v1/organizations": "an API key belongs to its organization and may not create another",
    f"DELETE {ORG}": "a person deletes an organization, never an API key",
}


def _client(world: World, name: str) -> APIClient:
    client = APIClient()
    if name == "POST /api/v1/invitations/accept":
        client.force_login(world.invitee)  # the invitee's own session accepts
    elif name in SESSION_ONLY:
        client.force_login(world.org.owner)
    else:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.org.owner_secret}")
    return client


def _caller_of(world: World, name: str) -> tuple[int, int | None]:
    """(user, API key) the audit must name as the actor."""
    if name == "POST /api/v1/invitations/accept":
        return world.invitee.pk, None
    if name in SESSION_ONLY:
        return world.org.owner.pk, None
    return world.org.owner.pk, world.org.owner_key.pk


def _organization_of(world: World, name: str, response) -> object:
    if name == "POST /api/v1/organizations":
        from organizations.models import Organization

        return Organization.objects.get(public_id=response.json()["id"]).pk
    if name == f"DELETE {ORG}":
        return world.closable.pk
    return world.org.organization.pk


def _stored(world: World) -> dict[str, tuple[int, str]]:
    return fingerprint(world.org.organization, accounts=True, ignoring=frozenset(MAY_CHANGE))


@pytest.mark.parametrize("index", range(len(WRITES)), ids=[str(op) for op in WRITES])
def test_write_operation_records_an_audit_event_of_its_request_when_it_succeeds(index, world, redis_clean, fake_stripe):
    operation = WRITES[index]
    name = str(operation)
    body = BODIES.get(name, {})
    if callable(body):
        body = body(world, world.values[name])
    url = operation.url(world.values[name])
    quiet = name in NOT_AUDITED
    writes: dict[str, str] = {}
    with transaction.atomic():
        client = _client(world, name)
        before = _stored(world) if quiet else {}
        if isinstance(body, Csv):
            response = client.generic(operation.method.upper(), url, body.text, content_type="text/csv")
        else:
            response = getattr(client, operation.method)(url, json.dumps(body), content_type="application/json")
        events = list(AuditEvent.objects.filter(request_id=response["X-Request-Id"]))
        organizations = {event.organization_id for event in events}
        actors = {(event.actor_id, event.api_key_id) for event in events}
        expected = _organization_of(world, name, response) if 200 <= response.status_code < 300 else None
        if quiet:
            writes = changed(before, _stored(world))
        transaction.set_rollback(True)
    assert 200 <= response.status_code < 300, (response.status_code, response.content[:500])
    if quiet:
        assert events == [], "allow-listed as changing nothing, yet audited: take it off NOT_AUDITED"
        assert writes == {}, f"allow-listed as changing nothing stored, yet it changed {writes}: audit it"
        return
    assert events, f"{name} answered {response.status_code} and recorded no audit event"
    assert organizations == {expected}
    assert actors == {_caller_of(world, name)}, "the audit event names someone other than the caller"


def test_organization_delete_refused_records_nothing_when_something_blocks(world, redis_clean):
    """The walk's organization has deployments, invoices and usage: its Owner's deletion is a 409 refusal that
    changes nothing and records no audit event."""
    from organizations.models import Membership

    with transaction.atomic():
        client = APIClient()
        client.force_login(world.org.owner)
        response = client.delete(
            ORG.format(org=world.org.id),
            json.dumps({"confirm_name": world.org.organization.name}),
            content_type="application/json",
        )
        events = AuditEvent.objects.filter(request_id=response["X-Request-Id"]).count()
        members = Membership.objects.filter(organization=world.org.organization).count()
        transaction.set_rollback(True)
    assert response.status_code == 409, response.content[:500]
    assert response.json()["type"].endswith("/organization-not-empty")
    assert "deployments" in [error["code"] for error in response.json()["errors"]]
    assert events == 0
    assert members > 0
