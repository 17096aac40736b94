"""No request may read or change another organization's data: every tenant URL, every method, answers 404 to an
outsider (exactly as for a missing object) and changes nothing. The two organizations and the victim's sample objects
are made once for the module (tests/module_data.py); each test runs in a savepoint of that data."""

import dataclasses

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from tests.api_walk import sample_values, tenant_operations
from tests.factories import OrgFixture, make_organization
from tests.module_data import data_for_module

pytestmark = pytest.mark.django_db

OPERATIONS = tenant_operations()


def _fingerprint():
    """Everything an outsider could have changed, as comparable data."""
    from audit.models import AuditEvent
    from organizations.models import ApiKey, Invitation, Membership, Organization
    from projects.models import Project

    return (
        list(Organization.objects.order_by("pk").values_list("pk", "name")),
        list(Project.objects.order_by("pk").values_list("pk", "name", "description")),
        list(Membership.objects.order_by("pk").values_list("pk", "roles")),
        list(ApiKey.objects.order_by("pk").values_list("pk", "name", "revoked_at", "secret_hash")),
        list(Invitation.objects.order_by("pk").values_list("pk", "revoked_at")),
        AuditEvent.objects.count(),
    )


def test_walk_covers_the_tenant_api():
    routes = {op.route for op in OPERATIONS}
    assert "api/v1/organizations/<str:org>/projects" in routes
    assert len(OPERATIONS) >= 20


@dataclasses.dataclass(frozen=True)
class World:
    """A victim organization with a sample object behind every tenant operation, and an outsider organization."""

    victim: OrgFixture
    outsider: OrgFixture
    values: dict


def _build_world() -> World:
    victim, outsider = make_organization(), make_organization()
    values = {str(op): sample_values(victim, op.kwargs, route=op.route) for op in OPERATIONS}
    return World(victim, outsider, values)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with data_for_module(django_db_blocker, _build_world) as data:
        yield data


@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_other_organization_gets_404_when_touching_any_tenant_url(operation, world, key_client, redis_clean):
    """With the outsider owner's API key and with their session; each request in a savepoint rolled back after it."""
    url = operation.url(world.values[str(operation)])
    for credential in ("api_key", "session"):
        redis_clean.flushdb()
        with transaction.atomic():
            if credential == "api_key":
                client = key_client(world.outsider.owner_secret)
            else:
                client = APIClient()
                client.force_login(world.outsider.owner)
            before = _fingerprint()

            response = getattr(client, operation.method)(url, {}, format="json")

            assert response.status_code == 404, (
                credential,
                str(operation),
                response.status_code,
                response.content[:300],
            )
            assert response["Content-Type"] == "application/problem+json"
            assert _fingerprint() == before
            transaction.set_rollback(True)


@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_missing_object_and_foreign_object_answer_alike(operation, world, key_client):
    """A foreign object must be indistinguishable from one that does not exist."""
    values = world.values[str(operation)]
    client = key_client(world.outsider.owner_secret)
    foreign = getattr(client, operation.method)(operation.url(values), {}, format="json")
    # A public id keeps its prefix (`dep_`); a value without one (a schema's version number) is replaced whole.
    missing_values = {k: v[: v.find("_") + 1] + "doesnotexist0000000000" for k, v in values.items()}
    missing = getattr(client, operation.method)(operation.url(missing_values), {}, format="json")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["detail"] == missing.json()["detail"]


def test_organization_list_shows_only_own_organizations(org_factory, key_client):
    mine, other = org_factory(), org_factory()
    ids = [o["id"] for o in key_client(mine.owner_secret).get("/api/v1/organizations").json()["results"]]
    assert ids == [mine.id]
    assert other.id not in ids
