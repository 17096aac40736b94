"""Each role against each tenant operation: allowed exactly when the scopes table grants the operation's scope.

The roles, their scopes and the scope each view declares are read from the code (organizations.roles and the views),
so the table is the single source of truth; the test proves that the running API obeys it, for members and for their
API keys, and that every scope in the table is exercised by some request (or allow-listed with its reason).
Exhaustively as plain calls (every persona, credential, scope and level against organizations.access), and over
HTTP, per operation, one allowed and one refused persona with a session and with a key. The organization, its
members and the sample objects are made once for the module (tests/module_data.py); each request runs in a savepoint
of that data, so a DELETE never takes another request's target.
"""

import dataclasses

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from organizations import access
from organizations.access import Principal
from organizations.roles import (
    ALL_SCOPES,
    MEMBER_BASE_SCOPES,
    ORGANIZATION_ROLES,
    PROJECT_ROLES,
    PROJECT_SCOPES,
    ROLE_SCOPES,
    Role,
)
from tests.api_walk import sample_values, tenant_operations
from tests.factories import make_organization
from tests.module_data import data_for_module

pytestmark = pytest.mark.django_db

SCOPED = [op for op in tenant_operations() if op.required_scope is not None]

# One persona per role of the table: an organization role is held on the organization, a project role is granted on
# the Default project. "no_role" is a member whose roles were all taken away: only MEMBER_BASE_SCOPES remain.
PERSONAS: dict[str, tuple[list[str], str | None]] = {
    **{role.value: ([role.value], None) for role in Role if role in ORGANIZATION_ROLES},
    **{role.value: ([], role.value) for role in Role if role in PROJECT_ROLES},
    "no_role": ([], None),
}

# The one scope ScopedViewSet checks itself, before any operation's own: a project in the URL that the caller may not
# read is hidden (404), not refused.
PROJECT_GATE = "project:read"

# Scopes no view declares, each exercised here by the request that needs it (a field of a request, checked in its
# service), or with the reason it has none.
FIELD_SCOPES = {"org:security": ("PATCH /api/v1/organizations/{org}", {"require_two_factor": True})}
# Operations a rule beyond the scope also limits to the object's creator: each persona that holds a key acts on its
# own (rotating a key hands out its secret, which acts for whoever created it: tests/organizations/test_key_privilege.py).
OWN_KEY_ROUTES = {"POST /api/v1/organizations/{org}/api-keys/{key}/rotate"}
# Operations a person must perform: a key of a persona the table allows is refused with this code, whatever its role
# (tests/organizations/test_organization_delete.py).
PERSON_ONLY_ROUTES = {"DELETE /api/v1/organizations/{org}": "api-key-not-allowed"}
SCOPES_WITHOUT_A_REQUEST: dict[str, str] = {}


def org_scopes(org_roles) -> set[str]:
    scopes = set(MEMBER_BASE_SCOPES)
    for role in org_roles:
        scopes |= ROLE_SCOPES[role]
    return scopes


def project_scopes(org_roles, project_role) -> set[str]:
    scopes = org_scopes(org_roles) & PROJECT_SCOPES
    if project_role:
        scopes |= ROLE_SCOPES[project_role]
    return scopes


def expected_scope(scope, level, org_roles, project_role) -> bool:
    """Whether the persona holds `scope` at `level` (organization, or the Default project), read from the table."""
    granted = project_scopes(org_roles, project_role) if level == "project" else org_scopes(org_roles)
    return scope in granted


def expected(operation, org_roles, project_role) -> int | None:
    """None when the persona may perform the operation, else the status it must get: 404 where the project in the URL
    is hidden from it, 403 where it sees the object but its role does not grant the scope."""
    if "project" in operation.kwargs and PROJECT_GATE not in project_scopes(org_roles, project_role):
        return 404
    if operation.scope_level == "project":
        granted = project_scopes(org_roles, project_role)
    else:
        granted = org_scopes(org_roles)
    return None if operation.required_scope in granted else 403


def test_every_tenant_operation_declares_a_scope_from_the_table():
    undeclared = [
        str(op)
        for op in tenant_operations()
        if op.required_scope is None and getattr(op.view_class, "required_scopes", None) is not None
    ]
    assert undeclared == []
    assert {op.required_scope for op in SCOPED} - ALL_SCOPES == set(), "a view names a scope the table does not have"
    assert len(SCOPED) >= 20


def test_every_scope_in_the_table_is_exercised_by_a_request_or_allow_listed():
    exercised = {op.required_scope for op in SCOPED} | set(FIELD_SCOPES)
    if any("project" in op.kwargs for op in SCOPED):
        exercised.add(PROJECT_GATE)
    assert ALL_SCOPES - exercised - set(SCOPES_WITHOUT_A_REQUEST) == set(), "a scope no request needs"
    assert set(SCOPES_WITHOUT_A_REQUEST) - ALL_SCOPES == set(), "the allow-list names a scope the table lost"
    assert set(SCOPES_WITHOUT_A_REQUEST) & exercised == set(), "the allow-list names a scope a request now needs"
    assert set(FIELD_SCOPES) <= ALL_SCOPES


def test_every_role_of_the_table_is_a_persona():
    assert {role for roles, project_role in PERSONAS.values() for role in [*roles, project_role] if role} == set(
        ROLE_SCOPES
    )


def test_matrix_expects_both_outcomes_for_every_exercised_scope():
    """Guards the test itself: a scope every persona holds (or none does) would check only half of the rule."""
    one_sided = []
    for scope in {op.required_scope for op in SCOPED} - MEMBER_BASE_SCOPES:  # every member holds these, by design
        operations = [op for op in SCOPED if op.required_scope == scope]
        outcomes = {expected(op, *PERSONAS[p]) is None for op in operations for p in PERSONAS}
        if outcomes != {True, False}:
            one_sided.append(scope)
    assert one_sided == []


@dataclasses.dataclass(frozen=True)
class World:
    """One organization with a member (and an API key of the same role, where the persona has a role) per persona,
    and an URL with its own sample objects for every scoped operation."""

    organization: object
    project: object
    users: dict
    keys: dict
    secrets: dict
    urls: dict


def _build_world() -> World:
    org = make_organization()
    users, keys, secrets = {}, {}, {}
    for persona, (org_roles, project_role) in PERSONAS.items():
        grants = [(org.default_project, project_role)] if project_role else []
        users[persona], _membership = org.add_member(roles=org_roles, project_grants=grants)
        key_role = project_role or (org_roles[0] if org_roles else None)
        if key_role is None:
            continue  # an API key always carries a role
        projects = [org.default_project] if project_role else []
        keys[persona], secrets[persona] = org.key_for(users[persona], role=key_role, projects=projects)
    urls = {str(op): op.url(sample_values(org, op.kwargs, route=op.route)) for op in SCOPED}
    return World(org.organization, org.default_project, users, keys, secrets, urls)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with data_for_module(django_db_blocker, _build_world) as data:
        yield data


def test_access_grants_every_scope_exactly_as_the_roles_table_says_when_asked_directly(world):
    """The exhaustive half, as plain calls: every persona, as a session and as its key, every scope of the table at
    organization and at project level."""
    wrong = []
    for persona, (org_roles, project_role) in PERSONAS.items():
        principals = {"session": Principal(user=world.users[persona])}
        if persona in world.keys:
            principals["api_key"] = Principal(api_key=world.keys[persona])
        for credential, principal in principals.items():
            for scope in sorted(ALL_SCOPES):
                for level, project in (("organization", None), ("project", world.project)):
                    held = access.has_scope(principal, scope, organization=world.organization, project=project)
                    if held != expected_scope(scope, level, org_roles, project_role):
                        wrong.append((persona, credential, scope, level, held))
    assert wrong == []


def _pick(personas: list[str], index: int) -> list[str]:
    """One persona of the list, a different one from operation to operation, so every persona is met over HTTP."""
    return [personas[index % len(personas)]] if personas else []


@pytest.mark.parametrize("index", range(len(SCOPED)), ids=[str(op) for op in SCOPED])
def test_role_is_allowed_exactly_when_scopes_table_grants_it(index, world, key_client, redis_clean):
    """Over HTTP, per operation: one persona the table allows and one it refuses, each with a session and with its
    key (that the view declares the scope and the API enforces it; the exhaustive table is checked above). A refusal
    is a 403 problem+json, or a 404 where the project in the URL is hidden from the persona. Each request runs in its
    own savepoint, rolled back, so each meets the same data."""
    operation = SCOPED[index]
    outcome = {persona: expected(operation, *PERSONAS[persona]) for persona in PERSONAS}
    allowed_personas = [p for p in PERSONAS if outcome[p] is None]
    refused_personas = [p for p in PERSONAS if outcome[p] is not None]
    wrong = []
    for persona in _pick(allowed_personas, index) + _pick(refused_personas, index):
        refusal = outcome[persona]
        for credential in ("session", "api_key"):
            if credential == "api_key" and persona not in world.secrets:
                continue
            redis_clean.flushdb()  # rate-limit buckets: each request is the caller's first
            with transaction.atomic():
                if credential == "session":
                    client = APIClient()
                    client.force_login(world.users[persona])
                else:
                    client = key_client(world.secrets[persona])
                url = world.urls[str(operation)]
                if str(operation) in OWN_KEY_ROUTES and persona in world.keys:
                    url = operation.url({"org": world.organization.public_id, "key": world.keys[persona].public_id})
                response = getattr(client, operation.method)(url, {}, format="json")
                transaction.set_rollback(True)
            if refusal is None and credential == "api_key" and str(operation) in PERSON_ONLY_ROUTES:
                code = PERSON_ONLY_ROUTES[str(operation)]
                if response.status_code != 403 or not response.json()["type"].endswith(f"/{code}"):
                    wrong.append((persona, credential, f"refused {code}", response.status_code, response.content[:300]))
            elif refusal is None:
                if response.status_code in (401, 403, 404):
                    wrong.append((persona, credential, "allowed", response.status_code, response.content[:300]))
            elif (
                response.status_code != refusal
                or response["Content-Type"] != "application/problem+json"
                or (refusal == 403 and not response.json()["detail"].startswith("This needs the "))
            ):
                wrong.append((persona, credential, f"refused {refusal}", response.status_code, response.content[:300]))
    assert wrong == []


@pytest.mark.parametrize("persona", [p for p, (roles, project_role) in PERSONAS.items() if roles or project_role])
@pytest.mark.parametrize("scope", sorted(FIELD_SCOPES))
def test_field_scope_is_allowed_exactly_when_scopes_table_grants_it(scope, persona, org_factory):
    """A scope checked on a field of a request, in a console session its second factor verified (the only credential
    these requests accept: tests/accounts/test_two_factor.py)."""
    from django.test import Client

    from tests.factories import PASSWORD
    from tests.otp import enrol, next_code

    org = org_factory()
    org_roles, project_role = PERSONAS[persona]
    grants = [(org.default_project, project_role)] if project_role else []
    user, _membership = org.add_member(roles=org_roles, project_grants=grants)
    device, _codes = enrol(user)
    client = Client()
    assert client.post("/console/login", {"username": user.email, "password": PASSWORD}).status_code == 302
    assert client.post("/console/login/verify", {"code": next_code(device)}).status_code == 302
    route, body = FIELD_SCOPES[scope]
    method, path = route.split(" ", 1)

    response = getattr(client, method.lower())(path.replace("{org}", org.id), body, content_type="application/json")

    if scope in org_scopes(org_roles):
        assert response.status_code == 200, (persona, response.content[:300])
    else:
        assert response.status_code == 403, (persona, response.status_code, response.content[:300])
        assert response["Content-Type"] == "application/problem+json"
