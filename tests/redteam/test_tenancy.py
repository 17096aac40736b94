"""Red team: one tenant (or no tenant at all) acting on another's organization through the REST API, with the real
rate limiter on a real Redis. Each test fails while the weakness it names is there."""

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("stranger", ["anonymous", "member of another organization"])
def test_strangers_cannot_spend_another_organizations_rate_limit_when_probing_its_urls(
    owner_org, org_factory, key_client, settings, stranger
):
    """ScopedViewSet.initial() throttles before it resolves the tenant (so probing for tenants is throttled), and
    the throttle takes a token from the bucket `org:<the id in the URL>` whoever the caller is. Requests that are
    answered 401 or 404 spend the victim organization's own budget: with the default limits (organization 600,
    20/s; principal 300, 10/s) two or three strangers keep a customer's whole organization at 429."""
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "organization": (5.0, 0.01), "principal": (5.0, 0.01)}
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    if stranger == "anonymous":
        clients = [APIClient(REMOTE_ADDR=f"198.51.100.{n}") for n in range(6)]
    else:
        other = org_factory()
        clients = [key_client(other.owner_secret)] + [APIClient(REMOTE_ADDR="198.51.100.9") for _ in range(5)]
    for client in clients:
        assert client.get(url).status_code in (401, 403, 404, 429)

    response = key_client(owner_org.owner_secret).get(url)

    assert response.status_code == 200, f"{response.status_code}: the organization's own budget was spent by strangers"
