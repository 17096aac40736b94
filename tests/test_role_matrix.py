"""Each role against each tenant operation: allowed exactly when the scopes table grants the operation's scope.

The expectation is computed from organizations.roles.ROLE_SCOPES and the scope each view declares, so the table is
the single source of truth; the test proves that the running API obeys it, for members and for their API keys. The
organization, its members and the sample objects are made once for the module (tests/module_data.py); each case
runs in a savepoint of that data, so a DELETE in one case never takes another's target. One test per operation asks
with every persona and credential, and lists every request that the table does not predict.
"""

import dataclasses

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from organizations.roles import MEMBER_BASE_SCOPES, PROJECT_SCOPES, ROLE_SCOPES, Role
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


def expected_allowed(operation, org_roles, project_role) -> bool:
    scope = operation.required_scope
    org_scopes = set(MEMBER_BASE_SCOPES)
    for role in org_roles:
        org_scopes |= ROLE_SCOPES[role]
    if operation.scope_level == "project":
        project_scopes = org_scopes & PROJECT_SCOPES
        if project_role:
            project_scopes |= ROLE_SCOPES[project_role]
        return scope in project_scopes
    return scope in org_scopes


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

    users: dict
    secrets: dict
    urls: dict


def _build_world() -> World:
    org = make_organization()
    users, secrets = {}, {}
    for persona, (org_roles, project_role) in PERSONAS.items():
        grants = [(org.default_project, project_role)] if project_role else []
        users[persona], _membership = org.add_member(roles=org_roles, project_grants=grants)
        key_role = project_role or org_roles[0]
        projects = [org.default_project] if project_role else []
        _key, secrets[persona] = org.key_for(users[persona], role=key_role, projects=projects)
    urls = {str(op): op.url(sample_values(org, op.kwargs, route=op.route)) for op in SCOPED}
    return World(users, secrets, urls)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with data_for_module(django_db_blocker, _build_world) as data:
        yield data


@pytest.mark.parametrize("operation", SCOPED, ids=str)
def test_role_is_allowed_exactly_when_scopes_table_grants_it(operation, world, key_client, redis_clean):
    """Every persona, with a session and with its API key; each request in its own savepoint, rolled back, so each
    one meets the same data (a DELETE does not take the next request's target)."""
    wrong = []
    for persona, (org_roles, project_role) in PERSONAS.items():
        allowed = expected_allowed(operation, org_roles, project_role)
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
