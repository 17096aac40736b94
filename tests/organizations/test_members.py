import pytest

from audit.models import AuditEvent
from organizations.models import ApiKey, Membership

pytestmark = pytest.mark.django_db


def test_removing_member_revokes_the_keys_they_created(owner_org, key_client):
    user, membership = owner_org.add_member(roles=["administrator"])
    key, secret = owner_org.key_for(user, role="auditor")
    assert key_client(secret).get(f"/api/v1/organizations/{owner_org.id}").status_code == 200
    response = key_client(owner_org.owner_secret).delete(
        f"/api/v1/organizations/{owner_org.id}/members/{membership.public_id}"
    )
    assert response.status_code == 204
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert key_client(secret).get(f"/api/v1/organizations/{owner_org.id}").status_code == 401
    event = AuditEvent.objects.get(action="member.remove", target_id=membership.public_id)
    assert event.summary["revoked_api_keys"] == [key.prefix]


def test_last_owner_cannot_be_removed_or_demoted(owner_org, key_client):
    owner = key_client(owner_org.owner_secret)
    membership = Membership.objects.get(organization=owner_org.organization, user=owner_org.owner)
    url = f"/api/v1/organizations/{owner_org.id}/members/{membership.public_id}"
    assert owner.delete(url).status_code == 409
    response = owner.patch(url, {"roles": ["administrator"]}, format="json")
    assert response.status_code == 409
    assert response.json()["errors"][0]["field"] == "roles"
    membership.refresh_from_db()
    assert membership.roles == ["owner"]


def test_administrator_cannot_grant_owner_role(owner_org, key_client):
    admin, _ = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    _user, target = owner_org.add_member(roles=["auditor"])
    response = key_client(secret).patch(
        f"/api/v1/organizations/{owner_org.id}/members/{target.public_id}", {"roles": ["owner"]}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["errors"][0]["field"] == "roles"
    target.refresh_from_db()
    assert target.roles == ["auditor"]


def test_roles_and_project_grants_change_when_member_is_updated(owner_org, key_client):
    _user, target = owner_org.add_member(roles=["auditor"])
    response = key_client(owner_org.owner_secret).patch(
        f"/api/v1/organizations/{owner_org.id}/members/{target.public_id}",
        {
            "roles": [],
            "project_grants": [{"project": owner_org.default_project.public_id, "role": "project_administrator"}],
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["roles"] == []
    assert response.json()["project_grants"] == [
        {"project": owner_org.default_project.public_id, "role": "project_administrator"}
    ]
    event = AuditEvent.objects.filter(action="member.update", target_id=target.public_id).get()
    assert event.summary["before"]["roles"] == ["auditor"]


def test_ownership_moves_and_previous_owner_becomes_administrator_when_transferred(owner_org, key_client):
    user, target = owner_org.add_member(roles=["administrator"])
    response = key_client(owner_org.owner_secret).post(
        f"/api/v1/organizations/{owner_org.id}/transfer-ownership", {"member": target.public_id}, format="json"
    )
    assert response.status_code == 200, response.content
    target.refresh_from_db()
    previous = Membership.objects.get(organization=owner_org.organization, user=owner_org.owner)
    assert "owner" in target.roles
    assert previous.roles == ["administrator"]


def test_administrator_cannot_transfer_ownership(owner_org, key_client):
    admin, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    response = key_client(secret).post(
        f"/api/v1/organizations/{owner_org.id}/transfer-ownership", {"member": membership.public_id}, format="json"
    )
    assert response.status_code == 403


def test_members_can_be_filtered_by_role(owner_org, key_client):
    owner_org.add_member(roles=["accountant"], email="money@example.com")
    owner_org.add_member(roles=["auditor"])
    results = (
        key_client(owner_org.owner_secret)
        .get(f"/api/v1/organizations/{owner_org.id}/members?role=accountant")
        .json()["results"]
    )
    assert [m["email"] for m in results] == ["money@example.com"]
    assert ApiKey.objects.count() == 1
