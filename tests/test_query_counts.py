"""Every list endpoint runs a fixed number of SQL queries, whatever the page size (no N+1)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.api_walk import sample_values, tenant_operations

pytestmark = pytest.mark.django_db

# The foundation's lists; deployments, billing and alerts pin theirs in their own tests with their own data.
FOUNDATION_APPS = ("organizations.", "projects.", "audit.")
LISTS = [
    op for op in tenant_operations() if op.action == "list" and op.view_class.__module__.startswith(FOUNDATION_APPS)
]


def _populate(org, n):
    from organizations import services as org_services
    from projects import services as project_services

    for i in range(n):
        project = project_services.project_create(organization=org.organization, actor=None, name=f"P{i}")
        user, _ = org.add_member(roles=["auditor"], project_grants=[(project, "project_user")])
        org.key_for(user, role="auditor", projects=[project])
        org_services.invitation_create(
            organization=org.organization, actor=None, email=f"i{i}@example.com", roles=["auditor"]
        )


def test_all_list_endpoints_are_covered():
    assert {op.route.rsplit("/", 1)[-1] for op in LISTS} >= {
        "projects",
        "members",
        "invitations",
        "api-keys",
        "audit-events",
    }


@pytest.mark.parametrize("operation", LISTS, ids=str)
def test_query_count_does_not_grow_with_page_size(operation, owner_org, key_client):
    _populate(owner_org, 12)
    client = key_client(owner_org.owner_secret)
    url = operation.url(sample_values(owner_org, operation.kwargs, route=operation.route))
    counts = {}
    for size in (2, 10):
        client.get(f"{url}?page_size={size}")  # warm: last_used_at and per-process caches
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(f"{url}?page_size={size}")
        assert response.status_code == 200, response.content[:200]
        assert len(response.json()["results"]) == size, operation
        counts[size] = len(ctx.captured_queries)
    assert counts[2] == counts[10], (str(operation), counts)
    assert counts[10] <= 8, (str(operation), counts)


@pytest.mark.parametrize("path", ["", "/projects", "/projects?page_size=50"])
def test_api_key_request_runs_two_queries_when_reading(path, owner_org, key_client):
    """One statement authenticates the key (with its organization, creator and the creator's membership), one reads
    the answer."""
    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}{path}"
    client.get(url)  # warm: last_used_at and per-process caches
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content[:200]
    assert len(ctx.captured_queries) == 2, [q["sql"][:120] for q in ctx.captured_queries]
