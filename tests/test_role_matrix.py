"""Each role against each tenant operation: allowed exactly when the scopes table grants the operation's scope.

The expectation is computed from organizations.roles.ROLE_SCOPES and the scope each view declares, so the table is
the single source of truth. Exhaustively as plain calls (every persona, credential, scope and level against
organizations.access), and over HTTP, per operation, one allowed and one refused persona with a session and with a
key: the running API obeys the table. The organization, its members and the sample objects are made once for the
module (tests/module_data.py); each request runs in a savepoint of that data, so a DELETE never takes another
request's target."""

import dataclasses

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from organizations import access
from organizations.access import Principal
from organizations.roles import ALL_SCOPES, MEMBER_BASE_SCOPES, PROJECT_SCOPES, ROLE_SCOPES, Role
from tests.api_walk import sample_values, tenant_operations
from tests.factories import make_organization
from tests.module_data import data_for_module

pytestmark = pytest.mark.django_db

SCOPED = [op for op in tenant_operations() if op.required_scope is not None]

# (organization roles, project role on the Default project)
PERSONAS = {
    "owner": ([Role.OWNER], None),
    "administrator": ([Role.ADMINISTRATOR], None),
    "accountant": ([Role.ACCOUNTANT], None),
    "auditor": ([Role.AUDITOR], None),
    "project_administrator": ([], Role.PROJECT_ADMINISTRATOR),
    "project_user": ([], Role.PROJECT_USER),
}


def expected_scope(scope, level, org_roles, project_role) -> bool:
    """Whether the persona holds `scope` at `level` (organization, or the Default project), read from the table."""
    org_scopes = set(MEMBER_BASE_SCOPES)
    for role in org_roles:
        org_scopes |= ROLE_SCOPES[role]
    if level == "project":
        project_scopes = org_scopes & PROJECT_SCOPES
        if project_role:
            project_scopes |= ROLE_SCOPES[project_role]
        return scope in project_scopes
    return scope in org_scopes


def expected_allowed(operation, org_roles, project_role) -> bool:
    return expected_scope(operation.required_scope, operation.scope_level, org_roles, project_role)


def test_every_tenant_operation_declares_a_scope():
    undeclared = [
        str(op)
        for op in tenant_operations()
        if op.required_scope is None and getattr(op.view_class, "required_scopes", None) is not None
    ]
    assert undeclared == []
    assert len(SCOPED) >= 20


@dataclasses.dataclass(frozen=True)
class World:
    """One organization with a member (and an API key of the same role) per persona, and an URL with its own sample
    objects for every scoped operation."""

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
        key_role = project_role or org_roles[0]
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
        principals = {
            "session": Principal(user=world.users[persona]),
            "api_key": Principal(api_key=world.keys[persona]),
        }
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
    key (that the view declares the scope and the API enforces it; the exhaustive table is checked above). Each
    request runs in its own savepoint, rolled back, so each meets the same data."""
    operation = SCOPED[index]
    allowed_personas = [
        p for p, (roles, project_role) in PERSONAS.items() if expected_allowed(operation, roles, project_role)
    ]
    refused_personas = [p for p in PERSONAS if p not in allowed_personas]
    wrong = []
    for persona in _pick(allowed_personas, index) + _pick(refused_personas, index):
        allowed = persona in allowed_personas
        for credential in ("session", "api_key"):
            redis_clean.flushdb()  # rate-limit buckets: each request is the caller's first
            with transaction.atomic():
                if credential == "session":
                    client = APIClient()
                    client.force_login(world.users[persona])
                else:
                    client = key_client(world.secrets[persona])
                response = getattr(client, operation.method)(world.urls[str(operation)], {}, format="json")
                transaction.set_rollback(True)
            if allowed and response.status_code in (401, 403, 404):
                wrong.append((persona, credential, "allowed", response.status_code, response.content[:300]))
            elif not allowed and (
                response.status_code != 403 or not response.json()["detail"].startswith("This needs the ")
            ):
                wrong.append((persona, credential, "refused", response.status_code, response.content[:300]))
    assert wrong == []
