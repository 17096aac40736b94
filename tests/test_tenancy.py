"""No request may read or change another organization's data: every tenant URL, every method, answers 404 to an
outsider (exactly as for a missing object) and changes nothing.

What is guarded is derived, never listed: the routes from the URL resolver (checked against the OpenAPI document),
the organization-owned models from the model graph (tests/tenancy_models.py). A route or model left out must be named
in an allow-list below with its reason, and an allow-list entry that names nothing real fails. The two organizations
and a sample object of each of them behind every tenant operation are made once for the module
(tests/module_data.py); each request runs in a savepoint of that data, rolled back after it.
"""

import dataclasses

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from tests.api_walk import api_operations, sample_values, tenant_operations
from tests.factories import OrgFixture, make_organization
from tests.module_data import data_for_module
from tests.tenancy_models import account_models, changed, fingerprint, organization_paths, public_ids

pytestmark = pytest.mark.django_db

OPERATIONS = tenant_operations()

# API operations whose URL names no organization: each must say why it cannot expose another organization's data.
NON_TENANT_OPERATIONS = {
    "GET /api/v1/organizations": "lists only the caller's own organizations (test_organization_list_shows_only_own_…)",
    "POST /api/v1/organizations": "creates a new organization owned by the caller; reads none",
    "POST /api/v1/invitations/accept": "the invitation token is the credential; tests/organizations/test_invitations",
    "GET /api/v1/rate-limits": "the caller's own buckets only; tests/test_idempotency_and_ratelimits",
    "GET /api/v1/regions": "the staff-managed catalog, the same for every organization",
    "GET /api/v1/plans": "the staff-managed catalog, the same for every organization",
}

# Organization-owned models that no tenant route serves as its own resource (no view has them as its queryset). Each
# is still in the fingerprint (an outsider's request must not change it); the reason says how a customer sees it.
NOT_ROUTED_MODELS = {
    "alerts.AlertEvent": "an alert's history, served inside the alert (AlertViewSet)",
    "alerts.AlertRule_channels": "a rule's channels, served inside the alert rule",
    "alerts.CollectorState": "internal bookkeeping of the metrics collector",
    "alerts.MetricRollup": "read through …/deployments/{dep}/metrics (DeploymentMetricsViewSet)",
    "alerts.MetricSample": "read through …/deployments/{dep}/metrics (DeploymentMetricsViewSet)",
    "billing.BillingDetails": "the invoice's frozen billing address, shown in the invoice's HTML and PDF",
    "billing.CreditApplication": "summed into the invoice's credits_applied",
    "billing.CreditGrant": "read through /billing/credits (BillingAccountViewSet)",
    "billing.CreditNoteLine": "served inside its credit note",
    "billing.InvoiceLine": "served inside its invoice",
    "billing.Payment": "a collection attempt; customers see its outcome as the invoice's status",
    "billing.TrafficCounter": "internal metering state",
    "billing.TrafficRecord": "metered usage, reaches customers as invoice lines",
    "billing.UsageRecord": "metered usage, reaches customers as invoice lines and /billing/overview",
    "billing.VatCheck": "the VIES check, summarised as the billing account's vat_status",
    "deployments.RateLimitPolicy": "read and written through …/deployments/{dep}/rate-limits (RateLimitViewSet)",
    "deployments.StatusInterval": "internal metering input",
    "iot.AgentCredential": "the platform agent's broker credential; never served",
    "iot.AgentLease": "the platform agent's lease; never served",
    "iot.CodecCounter": "counters served inside the codec rule",
    "iot.DeviceCertificate": "a device's current certificate facts, served inside the device (DeviceViewSet)",
    "iot.DeviceCertificateAuthority": "the device CA, answered inside a certificate device's credentials; key never",
    "iot.Device_groups": "a device's groups, served inside the device and the group",
    "iot.EdgeRetainedClear": "internal queue of the edge agent",
    "iot.OutboxMessage": "internal queue of the platform agent",
    "iot.SchemaVersion": "served through …/schemas/{schema}/versions (SchemaViewSet)",
    "iot.Shadow": "served through …/devices/{device}/shadow (DeviceViewSet)",
    "iot.TrialDeployment": "served inside /premium-trial",
    "notifications.Delivery": "served through …/notification-channels/{channel}/deliveries",
    "notifications.DeliveryAttempt": "served inside a delivery",
    "notifications.PlatformEvent": "internal outbox of platform events",
    "organizations.ApiKey_projects": "an API key's projects, served inside the key",
    "projects.ProjectGrant": "a member's project roles, served inside the member",
}


def _routed_models() -> set[str]:
    routed = set()
    for operation in OPERATIONS:
        queryset = getattr(operation.view_class, "queryset", None)
        if queryset is not None:
            routed.add(queryset.model._meta.label)
    return routed


def test_every_api_operation_is_tenant_scoped_or_allow_listed():
    unscoped = {str(op) for op in api_operations() if "org" not in op.kwargs}
    assert unscoped - set(NON_TENANT_OPERATIONS) == set(), "a new route outside /organizations/{org}: allow-list it"
    assert set(NON_TENANT_OPERATIONS) - unscoped == set(), "the allow-list names a route that no longer exists"
    assert len(OPERATIONS) >= 100


def test_url_resolver_and_openapi_document_name_the_same_operations():
    """The walk reads the resolver; a route documented but not routed (or the reverse) would escape one of them."""
    from drf_spectacular.generators import SchemaGenerator

    document = SchemaGenerator().get_schema(request=None, public=True)
    documented = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented == {str(op) for op in api_operations()}


def test_every_organization_model_is_routed_or_allow_listed():
    owned = {model._meta.label for model in organization_paths()}
    routed = _routed_models()
    assert owned - routed - set(NOT_ROUTED_MODELS) == set(), (
        "an organization-owned model no tenant route serves: route it or allow-list it with a reason"
    )
    assert set(NOT_ROUTED_MODELS) - owned == set(), "the allow-list names a model that is gone or not organization's"
    assert set(NOT_ROUTED_MODELS) & routed == set(), "the allow-list names a model a route now serves: remove it"


def test_fingerprint_covers_every_model_with_a_path_to_organization():
    """The derivation itself: the models the tenancy rules are about are found, through chains of any length."""
    labels = {model._meta.label: path for model, path in organization_paths().items()}
    assert labels["organizations.Organization"] == "pk"
    assert labels["projects.Project"] == "organization"
    assert labels["deployments.MqttUser"] == "deployment__project__organization"
    assert labels["iot.Shadow"] == "device__deployment__project__organization"
    assert "deployments.Region" not in labels and "accounts.User" not in labels


def test_fingerprint_sees_a_change_to_any_organization_row(org_factory):
    victim = org_factory()
    from deployments.models import MqttUser

    values = sample_values(victim, ["org", "project", "dep", "user"], route="mqtt-users")
    before = fingerprint(victim.organization)
    MqttUser.objects.filter(public_id=values["user"]).update(username="changed")
    assert fingerprint(victim.organization) != before


def test_fingerprint_and_public_ids_see_rows_a_default_manager_hides_when_a_project_is_deleted(org_factory):
    from django.utils import timezone

    from projects.models import Project

    victim = org_factory()
    deleted = Project.objects.create(organization=victim.organization, name="gone", deleted_at=timezone.now())
    assert not Project.objects.filter(pk=deleted.pk).exists()  # what the default manager shows
    assert deleted.public_id in public_ids(victim.organization)
    before = fingerprint(victim.organization)
    Project.all_objects.filter(pk=deleted.pk).update(name="changed")
    assert changed(before, fingerprint(victim.organization)) == {"projects.Project": "2 rows, contents changed"}


def test_account_models_are_the_users_own_and_none_an_organization_owns():
    """What the audit walks' allow-lists check beside the organization's rows: a sign-up or a password reset belongs
    to no organization."""
    labels = {model._meta.label for model in account_models()}
    assert {"accounts.User", "otp_totp.TOTPDevice", "otp_static.StaticToken", "sessions.Session"} <= labels
    assert labels & {model._meta.label for model in organization_paths()} == set()


def test_fingerprint_with_accounts_sees_a_change_to_an_account_row_unless_its_column_is_ignored(org_factory):
    from accounts.models import User

    org = org_factory()
    ignoring = frozenset({("accounts.User", "full_name")})
    before, before_ignoring = (
        fingerprint(org.organization, accounts=True),
        fingerprint(org.organization, accounts=True, ignoring=ignoring),
    )
    User.objects.filter(pk=org.owner.pk).update(full_name="changed")
    assert set(changed(before, fingerprint(org.organization, accounts=True))) == {"accounts.User"}
    assert fingerprint(org.organization, accounts=True, ignoring=ignoring) == before_ignoring
    with pytest.raises(AssertionError, match="no fingerprinted model has"):
        fingerprint(org.organization, ignoring=frozenset({("accounts.User", "nickname")}))


@dataclasses.dataclass(frozen=True)
class World:
    """A victim and an outsider organization, each with a sample object behind every tenant operation."""

    victim: OrgFixture
    outsider: OrgFixture
    values: dict  # operation -> the victim's path parameters
    own: dict  # operation -> the outsider's
    # The victim's fingerprint as built. Every test starts from it (each runs in a savepoint rolled back at its end),
    # so it is what a request finds before it runs: taken once here, not again around every request.
    victim_rows: dict


def _build_world() -> World:
    victim, outsider = make_organization(), make_organization()
    values = {str(op): sample_values(victim, op.kwargs, route=op.route) for op in OPERATIONS}
    own = {str(op): sample_values(outsider, op.kwargs, route=op.route) for op in OPERATIONS}
    return World(victim, outsider, values, own, fingerprint(victim.organization))


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with data_for_module(django_db_blocker, _build_world) as data:
        yield data


def _ask(client, operation, values, world):
    """The response, and whether the victim's data stayed as it was built; in a savepoint rolled back afterwards."""
    with transaction.atomic():
        response = getattr(client, operation.method)(operation.url(values), {}, format="json")
        unchanged = fingerprint(world.victim.organization) == world.victim_rows
        transaction.set_rollback(True)
    return response, unchanged


@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_other_organization_gets_404_when_touching_any_tenant_url(operation, world, key_client, redis_clean):
    """With the outsider owner's API key and with their session."""
    for credential in ("api_key", "session"):
        redis_clean.flushdb()
        if credential == "api_key":
            client = key_client(world.outsider.owner_secret)
        else:
            client = APIClient()
            client.force_login(world.outsider.owner)

        response, unchanged = _ask(client, operation, world.values[str(operation)], world)

        assert response.status_code == 404, (credential, str(operation), response.status_code, response.content[:300])
        assert response["Content-Type"] == "application/problem+json"
        assert unchanged, (credential, str(operation))


# Path parameters whose value is not an object of one organization: a split that leaves only these to the victim
# would send the caller's own URL.
NOT_TENANT_VALUES = {"version": "a schema's version number: 1, 2, … within each schema, so the same in every tenant"}


def _splits(operation) -> list[int]:
    """Each n such that the caller's own objects for the first n path parameters and the victim's for the rest make
    a URL that names a foreign object."""
    return [n for n in range(1, len(operation.kwargs)) if set(operation.kwargs[n:]) - set(NOT_TENANT_VALUES)]


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if _splits(op)], ids=str)
def test_foreign_object_under_own_parent_gets_404_when_path_mixes_tenants(operation, world, key_client, redis_clean):
    """The tenant check must not stop at the organization: the outsider's own project with the victim's deployment,
    its own deployment with the victim's MQTT user, and so on, at every level of every route."""
    client = key_client(world.outsider.owner_secret)
    theirs, mine = world.values[str(operation)], world.own[str(operation)]
    answers = {}
    for own in _splits(operation):
        redis_clean.flushdb()
        values = {**theirs, **{name: mine[name] for name in operation.kwargs[:own]}}
        assert values != mine, "this case would send the caller's own URL"

        response, unchanged = _ask(client, operation, values, world)

        answers[f"own {','.join(operation.kwargs[:own])}"] = (response.status_code, response["Content-Type"], unchanged)
    assert answers == {split: (404, "application/problem+json", True) for split in answers}, str(operation)


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op.method == "get"], ids=str)
def test_own_reads_never_show_another_organizations_ids_when_both_have_data(operation, world, key_client):
    """The victim has an object behind every operation, so every list could leak one; none of its public ids may
    appear in any answer to the outsider about the outsider's own objects."""
    foreign = public_ids(world.victim.organization)
    assert len(foreign) >= 50  # an object of every kind: the canaries are there

    response = key_client(world.outsider.owner_secret).get(operation.url(world.own[str(operation)]))

    assert response.status_code < 500, (str(operation), response.content[:300])
    body = response.content.decode("utf-8", "replace")
    leaked = sorted(value for value in foreign if value in body)
    assert leaked == [], (str(operation), leaked)


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
