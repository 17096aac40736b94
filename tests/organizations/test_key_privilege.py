"""API keys cannot be used to climb: every operation on a key needs a caller who could create that key today."""

import re

import pytest

from audit.models import AuditEvent
from organizations.models import ApiKey, Membership

pytestmark = pytest.mark.django_db


@pytest.fixture
def administrator(owner_org):
    user, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(user, role="administrator")
    return user, secret


@pytest.fixture(params=["session", "api_key"])
def administrator_client(request, administrator, api, key_client):
    user, secret = administrator
    if request.param == "session":
        api.force_login(user)
        return api
    return key_client(secret)


def _key_url(org, key):
    return f"/api/v1/organizations/{org.id}/api-keys/{key.public_id}"


def test_owner_key_cannot_be_rotated_by_administrator_when_it_holds_more_rights(owner_org, administrator_client):
    before = ApiKey.objects.get(pk=owner_org.owner_key.pk)
    response = administrator_client.post(f"{_key_url(owner_org, before)}/rotate", {"overlap_seconds": 0}, format="json")
    assert response.status_code == 403, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/role-too-high")
    assert "secret" not in response.json() and b"cpk_" not in response.content
    after = ApiKey.objects.get(pk=before.pk)
    assert after.secret_hash == before.secret_hash and after.previous_secret_hash == ""
    assert not AuditEvent.objects.filter(action="api_key.rotate").exists()


@pytest.mark.parametrize(
    ("method", "body"),
    [("get", None), ("patch", {"deletion_protection": True}), ("patch", {"name": "x"}), ("delete", None)],
)
def test_owner_key_cannot_be_read_edited_or_revoked_by_administrator(owner_org, administrator_client, method, body):
    key = owner_org.owner_key
    response = getattr(administrator_client, method)(_key_url(owner_org, key), body, format="json")
    assert response.status_code == 403, response.content
    after = ApiKey.objects.get(pk=key.pk)
    assert (after.name, after.deletion_protection, after.revoked_at) == (key.name, False, None)
    assert not AuditEvent.objects.filter(target_id=key.public_id).exclude(action="api_key.create").exists()


def test_administrator_cannot_climb_to_owner_through_the_owner_key(owner_org, administrator, key_client):
    """The red team's chain: rotate the Owner's key, take its secret, transfer ownership to oneself."""
    admin_user, admin_secret = administrator
    admin = key_client(admin_secret)
    rotated = admin.post(f"{_key_url(owner_org, owner_org.owner_key)}/rotate", {"overlap_seconds": 0}, format="json")
    assert rotated.status_code == 403
    assert re.search(rb"cpk_[0-9a-f]{8}_", rotated.content) is None
    admin_membership = Membership.objects.get(user=admin_user, organization=owner_org.organization)
    transfer = admin.post(
        f"/api/v1/organizations/{owner_org.id}/transfer-ownership",
        {"member": admin_membership.public_id},
        format="json",
    )
    assert transfer.status_code == 403
    admin_membership.refresh_from_db()
    assert admin_membership.roles == ["administrator"]
    assert key_client(owner_org.owner_secret).get(f"/api/v1/organizations/{owner_org.id}").status_code == 200


def test_administrator_manages_keys_within_own_rights_and_audit_names_the_administrator(
    owner_org, administrator, key_client
):
    admin_user, admin_secret = administrator
    auditor_key, old_secret = owner_org.key_for(owner_org.owner, role="auditor")
    detail = key_client(admin_secret).get(_key_url(owner_org, auditor_key))
    assert detail.status_code == 200 and "secret" not in detail.json()
    edited = key_client(admin_secret).patch(_key_url(owner_org, auditor_key), {"name": "ci"}, format="json")
    assert edited.status_code == 200, edited.content
    revoked = key_client(admin_secret).delete(_key_url(owner_org, auditor_key))
    assert revoked.status_code == 200, revoked.content
    assert key_client(old_secret).get(f"/api/v1/organizations/{owner_org.id}").status_code == 401
    event = AuditEvent.objects.get(action="api_key.revoke", target_id=auditor_key.public_id)
    # The real actor is the administrator, not the Owner who created the key.
    assert event.actor == admin_user and event.actor_email == admin_user.email


def test_only_its_creator_rotates_a_key_so_its_secret_never_outlives_whoever_took_it(owner_org, key_client, api):
    """A key acts for its creator. Handed to an Administrator by a rotation, the Owner's key let them act as the Owner,
    and kept doing so once they were removed: removal revokes only the keys a member created."""
    from organizations import access, services

    key, owner_secret = owner_org.key_for(owner_org.owner, role="administrator")
    admin, membership = owner_org.add_member(roles=["administrator"])
    api.force_login(admin)

    refused = api.post(f"{_key_url(owner_org, key)}/rotate", {"overlap_seconds": 0}, format="json")

    assert refused.status_code == 403, refused.content
    assert refused["Content-Type"] == "application/problem+json"
    assert owner_org.owner.email in refused.json()["detail"] and b"cpk_" not in refused.content
    after = ApiKey.objects.get(pk=key.pk)
    assert (after.secret_hash, after.previous_secret_hash) == (key.secret_hash, "")
    assert not AuditEvent.objects.filter(action="api_key.rotate").exists()
    services.membership_remove(membership=membership, actor=access.Principal(user=owner_org.owner))
    assert key_client(owner_secret).get(f"/api/v1/organizations/{owner_org.id}/members").status_code == 200
    # Its creator rotates it, with a session or with the key itself.
    api.force_login(owner_org.owner)
    rotated = api.post(f"{_key_url(owner_org, key)}/rotate", {"overlap_seconds": 0}, format="json")
    assert rotated.status_code == 200, rotated.content
    again = key_client(rotated.json()["secret"]).post(f"{_key_url(owner_org, key)}/rotate", {}, format="json")
    assert again.status_code == 200, again.content


def test_key_limited_to_a_lower_role_cannot_manage_its_creators_stronger_key(owner_org, key_client):
    """An Owner's administrator-role key acts with an Administrator's ceiling: the Owner's own key is out of reach."""
    _key, admin_role_secret = owner_org.key_for(owner_org.owner, role="administrator")
    response = key_client(admin_role_secret).delete(_key_url(owner_org, owner_org.owner_key))
    assert response.status_code == 403
    assert ApiKey.objects.get(pk=owner_org.owner_key.pk).revoked_at is None


def test_ownership_transfer_service_refuses_key_without_owner_role_when_called_directly(owner_org):
    from organizations import access, services
    from organizations.services import RoleTooHigh

    key, _secret = owner_org.key_for(owner_org.owner, role="administrator")
    _user, target = owner_org.add_member(roles=["administrator"])
    principal = access.Principal(user=owner_org.owner, api_key=key)
    with pytest.raises(RoleTooHigh):
        services.ownership_transfer(organization=owner_org.organization, actor=principal, member_id=target.public_id)
    target.refresh_from_db()
    assert target.roles == ["administrator"]


def test_console_refuses_administrator_revoking_owner_key(client, owner_org, administrator):
    admin_user, _secret = administrator
    client.force_login(admin_user)
    response = client.post(
        f"/console/o/{owner_org.id}/api-keys", {"revoke": owner_org.owner_key.public_id}, follow=True
    )
    assert response.status_code == 200
    assert b"more rights than your own" in response.content
    assert ApiKey.objects.get(pk=owner_org.owner_key.pk).revoked_at is None


def test_rotated_secret_keeps_its_whole_random_part_when_rotated_many_times(owner_org, key_client):
    """The random part of a secret can contain "_": a rotation once kept only what followed the last one."""
    from organizations import services

    key, _ = owner_org.key_for(owner_org.owner, role="auditor")
    for _ in range(40):
        key, secret = services.api_key_rotate(key=key, actor=None, overlap_seconds=0)
        assert re.fullmatch(rf"cpk_{key.prefix}_[A-Za-z0-9_-]{{43}}", secret), secret
    assert key_client(secret).get(f"/api/v1/organizations/{owner_org.id}").status_code == 200


@pytest.mark.parametrize("role", ["owner", "administrator", "accountant", "auditor"])
def test_owner_limits_a_key_of_an_organization_role_to_a_project_when_creating_and_revoking_it(
    owner_org, key_client, role
):
    """A key limited to projects holds, on each of them, what its role grants in a project, and nothing outside
    (organizations.access.project_scopes). The Owner holds all of that: refusing them as having rights "below" the
    role compared the role's organization-wide scopes (billing, members) with rights on one project."""
    owner = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}"
    project = owner_org.default_project.public_id
    created = owner.post(f"{base}/api-keys", {"name": "ci", "role": role, "projects": [project]}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["limited_to_projects"] is True and created.json()["projects"] == [project]
    limited = key_client(created.json()["secret"])
    assert limited.get(f"{base}/projects/{project}/deployments").status_code == 200
    assert limited.get(f"{base}/members").status_code in (403, 404)
    revoked = owner.delete(f"{base}/api-keys/{created.json()['id']}")
    assert revoked.status_code == 200, revoked.content


def test_administrator_is_refused_an_owner_key_limited_to_a_project_for_the_owner_role_it_lacks(
    owner_org, administrator_client
):
    response = administrator_client.post(
        f"/api/v1/organizations/{owner_org.id}/api-keys",
        {"name": "ci", "role": "owner", "projects": [owner_org.default_project.public_id]},
        format="json",
    )
    assert response.status_code == 403, response.content
    assert response.json()["type"].endswith("/role-too-high")
    assert response.json()["errors"] == [
        {"field": "role", "message": "You cannot create a key with more rights than your own.", "code": "role-too-high"}
    ]
    assert not ApiKey.objects.filter(role="owner", limited_to_projects=True).exists()
