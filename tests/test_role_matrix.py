"""Each role against each tenant operation: allowed exactly when the scopes table grants the operation's scope.

The expectation is computed from organizations.roles.ROLE_SCOPES and the scope each view declares, so the table is
the single source of truth; the test proves that the running API obeys it, for members and for their API keys.
"""

import pytest

from organizations.roles import MEMBER_BASE_SCOPES, PROJECT_SCOPES, ROLE_SCOPES, Role
from tests.api_walk import sample_values, tenant_operations

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


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("operation", SCOPED, ids=str)
@pytest.mark.parametrize("credential", ["session", "api_key"])
def test_role_is_allowed_exactly_when_scopes_table_grants_it(
    operation, persona, credential, org_factory, api, key_client
):
    org = org_factory()
    org_roles, project_role = PERSONAS[persona]
    grants = [(org.default_project, project_role)] if project_role else []
    user, _membership = org.add_member(roles=org_roles, project_grants=grants)
    if credential == "session":
        client = api
        client.force_login(user)
    else:
        key_role = project_role or org_roles[0]
        _key, secret = org.key_for(user, role=key_role, projects=[org.default_project] if project_role else [])
        client = key_client(secret)
    url = operation.url(sample_values(org, operation.kwargs, route=operation.route))

    response = getattr(client, operation.method)(url, {}, format="json")

    allowed = expected_allowed(operation, org_roles, project_role)
    if allowed:
        assert response.status_code not in (401, 403, 404), (persona, str(operation), response.content[:300])
    else:
        assert response.status_code == 403, (persona, str(operation), response.status_code, response.content[:300])
        assert response.json()["detail"].startswith("This needs the ")
