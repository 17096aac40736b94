"""Names a person types (organizations, projects, API keys, a new member's full name) are one line: control characters
are refused with a 400 naming the field, through the API and the console's forms alike. An organization's name heads
every invitation email."""

import pytest

from organizations.models import ApiKey, Organization
from projects.models import Project

pytestmark = pytest.mark.django_db

LINE_BREAKS = ["Acme\r\nBcc: victim@example.com", "Acme\nX-Injected: 1", "Acme\u2028Co", "Acme\x85Co"]


@pytest.mark.parametrize("name", LINE_BREAKS)
def test_organization_name_refuses_line_breaks_when_created_or_renamed(owner_org, api, name):
    api.force_login(owner_org.owner)
    created = api.post("/api/v1/organizations", {"name": name}, format="json")
    renamed = api.patch(f"/api/v1/organizations/{owner_org.id}", {"name": name}, format="json")
    assert created.status_code == 400, created.content[:200]
    assert renamed.status_code == 400, renamed.content[:200]
    assert created.json()["errors"][0]["field"] == "name"
    assert renamed.json()["errors"][0]["field"] == "name"
    assert not Organization.objects.filter(name=name).exists()


def test_organization_name_refuses_line_breaks_when_renamed_in_the_console(owner_org, client):
    client.force_login(owner_org.owner)
    page = client.post(f"/console/o/{owner_org.id}/settings", {"org-name": "Acme\r\nBcc: victim@example.com"})
    assert page.status_code == 400 and b"control characters" in page.content
    owner_org.organization.refresh_from_db()
    assert "\n" not in owner_org.organization.name


@pytest.mark.parametrize("name", LINE_BREAKS[:2])
def test_project_and_api_key_names_refuse_line_breaks_when_given(owner_org, key_client, name):
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}"
    project = client.post(f"{base}/projects", {"name": name}, format="json")
    renamed = client.patch(f"{base}/projects/{owner_org.default_project.public_id}", {"name": name}, format="json")
    key = client.post(f"{base}/api-keys", {"name": name, "role": "auditor"}, format="json")
    key_renamed = client.patch(f"{base}/api-keys/{owner_org.owner_key.public_id}", {"name": name}, format="json")
    for response in (project, renamed, key, key_renamed):
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == "name", response.content
    assert not Project.objects.filter(name=name).exists() and not ApiKey.objects.filter(name=name).exists()


def test_new_members_full_name_refuses_line_breaks_when_accepting_an_invitation(owner_org, api):
    from organizations import services

    _invitation, token = services.invitation_create(
        organization=owner_org.organization, actor=None, email="new@example.com", roles=["auditor"]
    )
    response = api.post(
        "/api/v1/invitations/accept",
        {"token": token, "password": "a long enough passphrase", "full_name": "Eve\nBcc: x@example.com"},
        format="json",
    )
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "full_name"
    # The service refuses it too, for the console's form.
    from controlplane.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        services.invitation_accept(token=token, password="a long enough passphrase", full_name="Eve\rX")
    assert refused.value.errors[0].field == "full_name"
