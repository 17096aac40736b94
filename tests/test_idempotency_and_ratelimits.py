"""Idempotency-Key replay and rate limits, including concurrent requests against the live server (gunicorn-like
threads hitting the real stack, real PostgreSQL and real Redis)."""

import concurrent.futures
import uuid

import pytest
import requests
from rest_framework.test import APIClient

from audit.models import AuditEvent
from projects.models import Project


@pytest.mark.django_db
def test_replay_returns_first_response_when_key_is_reused(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    first = client.post(url, {"name": "Once"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    second = client.post(url, {"name": "Once"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Project.objects.filter(name="Once").count() == 1


@pytest.mark.django_db
def test_same_key_with_another_body_answers_422(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    client.post(url, {"name": "A"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    response = client.post(url, {"name": "B"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert not Project.objects.filter(name="B").exists()


@pytest.mark.django_db
def test_keys_are_scoped_to_the_caller(org_factory, key_client):
    a, b = org_factory(), org_factory()
    ra = key_client(a.owner_secret).post(
        f"/api/v1/organizations/{a.id}/projects", {"name": "X"}, format="json", HTTP_IDEMPOTENCY_KEY="shared"
    )
    rb = key_client(b.owner_secret).post(
        f"/api/v1/organizations/{b.id}/projects", {"name": "X"}, format="json", HTTP_IDEMPOTENCY_KEY="shared"
    )
    assert ra.status_code == rb.status_code == 201 and ra.json()["id"] != rb.json()["id"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_run_the_operation_once(live_server, owner_org, redis_clean):
    url = f"{live_server.url}/api/v1/organizations/{owner_org.id}/projects"
    key = str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {owner_org.owner_secret}", "Idempotency-Key": key}

    def post(_):
        return requests.post(url, json={"name": "Concurrent"}, headers=headers, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))

    assert Project.objects.filter(name="Concurrent").count() == 1
    assert AuditEvent.objects.filter(action="project.create", summary__name="Concurrent").count() == 1
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7


@pytest.mark.django_db(transaction=True)
def test_bucket_is_never_overdrawn_under_concurrent_requests(live_server, owner_org, redis_clean, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "principal": (10.0, 0.001)}
    url = f"{live_server.url}/api/v1/organizations/{owner_org.id}"
    headers = {"Authorization": f"Bearer {owner_org.owner_secret}"}

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: requests.get(url, headers=headers, timeout=30), range(40)))

    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 30
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert limited.headers["Content-Type"] == "application/problem+json"
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["RateLimit-Limit"] == "10"


@pytest.mark.django_db
def test_organization_override_limits_all_its_callers(owner_org, key_client, settings, redis_clean):
    from controlplane.api import ratelimit

    ratelimit._overrides.clear()
    owner_org.organization.rate_limits = {"organization": [3, 0.001]}
    owner_org.organization.save()
    user, _ = owner_org.add_member(roles=["auditor"])
    _key, other_secret = owner_org.key_for(user, role="auditor")
    url = f"/api/v1/organizations/{owner_org.id}"
    codes = [
        key_client(s).get(url).status_code
        for s in (owner_org.owner_secret, other_secret, owner_org.owner_secret, other_secret)
    ]
    assert codes == [200, 200, 200, 429]


@pytest.mark.django_db
def test_rate_limits_endpoint_shows_callers_buckets_without_consuming(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    first = client.get(f"/api/v1/rate-limits?organization={owner_org.id}").json()
    levels = {b["level"]: b for b in first["buckets"]}
    assert set(levels) == {"platform", "organization", "principal"}
    assert levels["principal"]["key"] == f"key:{owner_org.owner_key.prefix}"
    second = client.get(f"/api/v1/rate-limits?organization={owner_org.id}").json()
    second_levels = {b["level"]: b for b in second["buckets"]}
    # Each call to the endpoint itself takes one token; reading the buckets takes none.
    assert levels["principal"]["remaining"] - second_levels["principal"]["remaining"] <= 1


@pytest.mark.django_db
def test_rate_limits_endpoint_hides_foreign_organizations(org_factory, key_client):
    a, b = org_factory(), org_factory()
    response = key_client(a.owner_secret).get(f"/api/v1/rate-limits?organization={b.id}")
    assert response.status_code == 400


@pytest.mark.django_db
@pytest.mark.parametrize("stranger", ["anonymous", "member of another organization"])
def test_strangers_cannot_spend_another_organizations_rate_limit_when_probing_its_urls(
    owner_org, org_factory, key_client, settings, redis_clean, stranger
):
    """Requests answered 401 or 404 once spent the bucket `org:<the id in the URL>` whoever made them: two or three
    strangers could keep a customer's whole organization at 429. Only members spend it now."""
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
