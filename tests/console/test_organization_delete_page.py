"""The settings page's danger zone: the Owner deletes the organization by typing its name, or sees what blocks it
with links to act on each; nobody else sees it."""

import re

import pytest

from audit.models import AuditEvent
from organizations.models import Membership, Organization
from tests.api_walk import _deployment

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, owner_org):
    client.force_login(owner_org.owner)
    return owner_org


def _danger_zone(page: str) -> str:
    match = re.search(r'<section class="card danger-zone" aria-labelledby="delete-heading">(.*?)</section>', page, re.S)
    assert match, "no danger zone on the page"
    return match.group(1)


def test_owner_deletes_the_organization_by_typing_its_name_and_lands_home_able_to_create_another(client, owner):
    page = client.get(f"/console/o/{owner.id}/settings").content.decode()
    zone = _danger_zone(page)
    assert 'name="delete-confirm_name"' in zone and "Delete organization" in zone

    response = client.post(
        f"/console/o/{owner.id}/settings/delete", {"delete-confirm_name": owner.organization.name}, follow=True
    )

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/"
    home = response.content.decode()
    assert f"The organization {owner.organization.name} was deleted." in home
    assert owner.id not in home and 'href="/console/organizations/new"' in home
    assert Organization.objects.get(pk=owner.organization.pk).closed_at is not None
    assert not Membership.objects.filter(organization=owner.organization).exists()
    event = AuditEvent.objects.get(action="organization.delete")
    assert (event.organization_id, event.actor_id) == (owner.organization.pk, owner.owner.pk)
    assert client.get(f"/console/o/{owner.id}/settings").status_code == 404
    # A new organization, from home.
    created = client.post("/console/organizations/new", {"name": "Second life"}, follow=True)
    assert created.status_code == 200 and "Second life" in created.content.decode()
    assert Membership.objects.get(user=owner.owner).organization.name == "Second life"


def test_wrong_name_is_refused_beside_the_field(client, owner):
    response = client.post(f"/console/o/{owner.id}/settings/delete", {"delete-confirm_name": "not it"})

    assert response.status_code == 400
    zone = _danger_zone(response.content.decode())
    # The message sits with the field, and the field names it as its description (Django's form rendering).
    error = re.search(r'<ul class="errorlist" id="id_delete-confirm_name_error"><li>([^<]*)</li>', zone)
    assert error and "Type the organization&#x27;s name exactly" in error.group(1)
    assert re.search(
        r'<input[^>]*name="delete-confirm_name"[^>]*aria-describedby="[^"]*id_delete-confirm_name_error', zone
    )
    assert Organization.objects.get(pk=owner.organization.pk).closed_at is None


def test_blockers_are_listed_with_links_instead_of_the_form(client, owner, deployments_catalog):
    from deployments.models import Deployment

    dep = Deployment.objects.select_related("project").get(public_id=_deployment(owner, {}, ""))

    zone = _danger_zone(client.get(f"/console/o/{owner.id}/settings").content.decode())

    assert "delete-confirm_name" not in zone
    assert "1 deployment is not deleted" in zone
    assert f'href="/console/o/{owner.id}/p/{dep.project.public_id}/d/{dep.public_id}"' in zone
    # A submission made while it was not blocked (another tab) is refused with the blockers, nothing deleted.
    response = client.post(f"/console/o/{owner.id}/settings/delete", {"delete-confirm_name": owner.organization.name})
    assert response.status_code == 409
    assert "1 deployment is not deleted" in response.content.decode()
    assert Organization.objects.get(pk=owner.organization.pk).closed_at is None


@pytest.mark.parametrize("roles", [["administrator"], ["auditor"]])
def test_danger_zone_is_for_the_owner_only(client, owner_org, roles):
    user, _membership = owner_org.add_member(roles=roles)
    client.force_login(user)

    page = client.get(f"/console/o/{owner_org.id}/settings")
    if page.status_code == 200:
        assert 'aria-labelledby="delete-heading"' not in page.content.decode()
    response = client.post(
        f"/console/o/{owner_org.id}/settings/delete", {"delete-confirm_name": owner_org.organization.name}
    )
    assert response.status_code == 403
    assert Organization.objects.get(pk=owner_org.organization.pk).closed_at is None
