"""Roles in the page: what a role may not do is not offered, and a crafted request is refused (403) and changes
nothing; another organization's pages are 404, exactly like missing ones."""

import re

import pytest

from deployments.models import Deployment
from organizations.models import ApiKey, Membership
from projects.models import Project
from tests.console.helpers import console_path, deployment

pytestmark = pytest.mark.django_db


def _nav(response) -> set[str]:
    import re

    body = response.content.decode()
    sidebar = body.split('aria-label="Sections"', 1)[1].split("</nav>", 1)[0]
    return set(re.findall(r">([A-Za-z ]+)</a>", sidebar))


@pytest.mark.parametrize(
    ("roles", "grant", "shown", "hidden"),
    [
        (
            ["owner"],
            None,
            {"Projects", "Deployments", "Alerts", "Members", "API keys", "Audit log", "Billing", "Settings"},
            set(),
        ),
        (["administrator"], None, {"Members", "API keys", "Audit log", "Billing", "Settings"}, set()),
        (
            ["accountant"],
            None,
            {"Projects", "Deployments", "Billing"},
            {"Alerts", "Members", "API keys", "Audit log", "Settings"},
        ),
        (["auditor"], None, {"Alerts", "Members", "API keys", "Audit log", "Billing"}, {"Settings"}),
        (
            [],
            "project_administrator",
            {"Projects", "Deployments"},
            {"Members", "API keys", "Audit log", "Billing", "Settings"},
        ),
        ([], "project_user", {"Projects", "Deployments"}, {"Members", "API keys", "Audit log", "Billing", "Settings"}),
    ],
)
def test_navigation_shows_only_usable_sections_when_role_is(client, owner_org, roles, grant, shown, hidden):
    grants = [(owner_org.default_project, grant)] if grant else []
    user, _ = owner_org.add_member(roles=roles, project_grants=grants)
    client.force_login(user)
    nav = _nav(client.get(f"/console/o/{owner_org.id}/p/{owner_org.default_project.public_id}"))
    assert shown <= nav, nav
    assert not (hidden & nav), nav


def test_project_user_cannot_delete_stop_or_protect_when_crafting_posts(client, owner_org):
    plant = deployment(owner_org.default_project)
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    manage = client.get(console_path(plant, "manage")).content.decode()
    assert "Delete deployment" not in manage and "Stop…" not in manage and "deletion protection" not in manage.lower()
    assert client.post(console_path(plant, "delete"), {"confirm_name": "plant"}).status_code == 403
    assert client.post(console_path(plant, "actions/stop")).status_code == 403
    assert client.get(console_path(plant, "actions/stop")).status_code == 403
    assert client.post(console_path(plant, "protection"), {"deletion_protection": "on"}).status_code == 403
    assert client.post(console_path(plant, "move"), {"project": owner_org.default_project.public_id}).status_code == 403
    assert (
        client.get(f"/console/o/{owner_org.id}/p/{owner_org.default_project.public_id}/deployments/new").status_code
        == 403
    )
    plant.refresh_from_db()
    assert plant.desired_state == "running" and not plant.deletion_protection
    # …but configuring is theirs: renaming works.
    assert client.post(console_path(plant, "rename"), {"rename-name": "renamed"}).status_code == 302
    plant.refresh_from_db()
    assert plant.name == "renamed"


def test_auditor_reads_everything_but_changes_nothing_when_crafting_posts(client, owner_org):
    plant = deployment(owner_org.default_project)
    user, _ = owner_org.add_member(roles=["auditor"])
    client.force_login(user)
    org = owner_org.id
    for path in (
        f"/console/o/{org}/members",
        f"/console/o/{org}/api-keys",
        f"/console/o/{org}/audit",
        console_path(plant),
    ):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "Send invitation" not in page.content.decode() and "Create key" not in page.content.decode()
    assert client.post(f"/console/o/{org}", {"new-name": "Nope"}).status_code == 403
    assert client.post(f"/console/o/{org}/api-keys", {"new-name": "k", "new-role": "auditor"}).status_code == 403
    assert (
        client.post(console_path(plant, "mqtt-users"), {"new-username": "u", "new-password": "12345678"}).status_code
        == 403
    )
    assert client.get(f"/console/o/{org}/settings").status_code == 403
    assert not Project.objects.filter(name="Nope").exists()
    assert not ApiKey.objects.filter(name="k").exists()


def test_project_user_sees_only_granted_projects_when_listing(client, owner_org):
    from projects import services

    granted = services.project_create(organization=owner_org.organization, actor=None, name="Granted")
    hidden = services.project_create(organization=owner_org.organization, actor=None, name="Hidden")
    user, _ = owner_org.add_member(project_grants=[(granted, "project_user")])
    client.force_login(user)
    body = client.get(f"/console/o/{owner_org.id}").content.decode()
    assert "Granted" in body and "Hidden" not in body and "Default project" not in body
    assert client.get(f"/console/o/{owner_org.id}/p/{hidden.public_id}").status_code == 404


def test_other_organizations_pages_are_not_found_when_not_a_member(client, org_factory):
    mine, other = org_factory(), org_factory()
    plant = deployment(other.default_project)
    client.force_login(mine.owner)
    for path in (
        f"/console/o/{other.id}",
        f"/console/o/{other.id}/members",
        f"/console/o/{other.id}/api-keys",
        f"/console/o/{other.id}/audit",
        f"/console/o/{other.id}/settings",
        console_path(plant),
        console_path(plant, "manage"),
        f"/console/o/{mine.id}/p/{other.default_project.public_id}",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"Not found" in response.content
    assert client.post(console_path(plant, "delete"), {"confirm_name": plant.name}).status_code == 404
    assert Deployment.objects.get(pk=plant.pk).desired_state == "running"


def test_administrator_cannot_remove_the_owner_role_when_editing_members(client, owner_org):
    admin, _ = owner_org.add_member(roles=["administrator"])
    client.force_login(admin)
    owner_membership = Membership.objects.get(user=owner_org.owner)
    page = client.get(f"/console/o/{owner_org.id}/members/{owner_membership.public_id}").content.decode()
    assert "Also holds, which you cannot change: <strong>Owner</strong>" in page
    response = client.post(f"/console/o/{owner_org.id}/members/{owner_membership.public_id}", {"roles": ["auditor"]})
    assert response.status_code == 302
    owner_membership.refresh_from_db()
    assert owner_membership.roles == ["auditor", "owner"]  # the role the admin may not touch stays


def test_administrator_is_offered_key_roles_up_to_administrator_when_creating_a_key(client, owner_org):
    """A key limited to projects holds what its role grants in a project, and an Administrator holds all of that on
    every project: an Owner key, even limited, is still above them (the service refuses it), so it is not offered."""
    user, _ = owner_org.add_member(roles=["administrator"])
    client.force_login(user)
    page = client.get(f"/console/o/{owner_org.id}/api-keys").content.decode()
    offered = re.findall(r'<option value="([a-z_]+)"', page.split('name="new-role"', 1)[1].split("</select>", 1)[0])
    assert offered == ["administrator", "project_administrator", "project_user", "accountant", "auditor"]
