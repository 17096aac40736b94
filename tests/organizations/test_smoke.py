import pytest

pytestmark = pytest.mark.django_db


def test_owner_key_lists_default_project_when_new_organization(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    response = client.get(f"/api/v1/organizations/{owner_org.id}/projects")
    assert response.status_code == 200, response.content
    assert [p["name"] for p in response.json()["results"]] == ["Default project"]
    assert "RateLimit-Remaining" in response
