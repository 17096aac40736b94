"""Each role against each tenant operation: allowed exactly when the scopes table grants the operation's scope.

The roles, their scopes and the scope each view declares are read from the code (organizations.roles and the views),
so the table is the single source of truth; the test proves that the running API obeys it, for members and for their
API keys, and that every scope in the table is exercised by some request (or allow-listed with its reason).
"""

import pytest

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
SCOPES_WITHOUT_A_REQUEST = {
    "org:delete": "reserved for deleting an organization (DESIGN §2, Owner only), which no route offers yet",
}


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


def _client_for(persona, credential, org, api, key_client):
    org_roles, project_role = PERSONAS[persona]
    grants = [(org.default_project, project_role)] if project_role else []
    user, _membership = org.add_member(roles=org_roles, project_grants=grants)
    if credential == "session":
        client = api
        client.force_login(user)
        return client
    key_role = project_role or org_roles[0]
    _key, secret = org.key_for(user, role=key_role, projects=[org.default_project] if project_role else [])
    return key_client(secret)


def _cases():
    for credential in ("session", "api_key"):
        for persona, (org_roles, project_role) in PERSONAS.items():
            if credential == "api_key" and not (org_roles or project_role):
                continue  # an API key always carries a role
            for operation in SCOPED:
                yield pytest.param(operation, persona, credential, id=f"{credential}-{persona}-{operation}")


@pytest.mark.parametrize(("operation", "persona", "credential"), list(_cases()))
def test_role_is_allowed_exactly_when_scopes_table_grants_it(
    operation, persona, credential, org_factory, api, key_client
):
    org = org_factory()
    client = _client_for(persona, credential, org, api, key_client)
    url = operation.url(sample_values(org, operation.kwargs, route=operation.route))

    response = getattr(client, operation.method)(url, {}, format="json")

    refusal = expected(operation, *PERSONAS[persona])
    if refusal is None:
        assert response.status_code not in (401, 403, 404), (persona, str(operation), response.content[:300])
    else:
        assert response.status_code == refusal, (persona, str(operation), response.status_code, response.content[:300])
        assert response["Content-Type"] == "application/problem+json"
        if refusal == 403:
            assert response.json()["detail"].startswith("This needs the ")


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
