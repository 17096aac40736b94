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


@pytest.mark.parametrize("member", ["mem_doesnotexist", "other organization's"])
def test_ownership_transfer_is_refused_on_member_when_the_member_is_not_in_the_organization(
    owner_org, org_factory, key_client, member
):
    if member == "other organization's":
        _user, elsewhere = org_factory().add_member(roles=["administrator"])
        member = elsewhere.public_id
    response = key_client(owner_org.owner_secret).post(
        f"/api/v1/organizations/{owner_org.id}/transfer-ownership", {"member": member}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "member"
    assert response.json()["errors"][0]["message"] == "No such member in this organization."
    assert Membership.objects.get(user=owner_org.owner, organization=owner_org.organization).roles == ["owner"]


def test_administrator_cannot_transfer_ownership(owner_org, key_client):
    admin, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    response = key_client(secret).post(
        f"/api/v1/organizations/{owner_org.id}/transfer-ownership", {"member": membership.public_id}, format="json"
    )
    assert response.status_code == 403


def test_members_can_be_filtered_by_role(owner_org, key_client):
    owner_org.add_member(roles=["accountant"], email="money@example.com")
    owner_org.add_member(roles=["auditor"], email="checks@example.com")
    client = key_client(owner_org.owner_secret)

    def emails(query):
        return sorted(
            m["email"] for m in client.get(f"/api/v1/organizations/{owner_org.id}/members{query}").json()["results"]
        )

    assert emails("?role=accountant") == ["money@example.com"]
    assert emails("?role=auditor") == ["checks@example.com"]
    assert len(emails("")) == 3  # the owner too: without the filter every member is listed


@pytest.mark.django_db(transaction=True)
def test_key_being_created_is_revoked_and_stays_so_after_readmission_when_its_creator_is_removed_meanwhile(owner_org):
    """membership_remove revokes the keys a member created that are committed when it runs. api_key_create locks the
    creator's membership before checking their rights: a removal arriving before the key is written waits for it,
    then revokes it with the others, so the key does not work again if the person is invited back."""
    from unittest import mock

    from organizations import services
    from organizations.access import Principal
    from tests.races import once, run_elsewhere_until_blocked

    org = owner_org.organization
    user, membership = owner_org.add_member(roles=["administrator"])
    removal = {}

    def remove():
        removal["finish"] = run_elsewhere_until_blocked(
            lambda: services.membership_remove(membership=Membership.objects.get(pk=membership.pk), actor=None)
        )

    with mock.patch.object(services, "_new_secret", once(services._new_secret, remove)):
        key, secret = services.api_key_create(organization=org, actor=Principal(user=user), name="ci", role="auditor")
    removal["finish"]()

    assert not Membership.objects.filter(organization=org, user=user).exists()
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.get(action="member.remove", target_id=membership.public_id).summary[
        "revoked_api_keys"
    ] == [key.prefix]
    Membership.objects.create(organization=org, user=user, roles=["auditor"])  # invited back, months later
    assert services.api_key_authenticate(secret) is None


@pytest.mark.django_db(transaction=True)
def test_key_creation_is_refused_when_its_creator_was_removed_before_it_locked_their_membership(owner_org):
    """The removal committed after the request read the membership (its rights memo) but before the service locked
    it: the creation reads the membership again under the lock, finds none, and writes nothing."""
    from unittest import mock

    from controlplane.errors import PermissionDenied
    from organizations import services
    from organizations.access import Principal
    from tests.races import once, run_elsewhere

    org = owner_org.organization
    user, membership = owner_org.add_member(roles=["administrator"])
    member = Principal(user=user)
    assert member.membership(org) is not None  # what the view read when it authorised the request

    def remove():
        run_elsewhere(
            lambda: services.membership_remove(membership=Membership.objects.get(pk=membership.pk), actor=None)
        )

    lock = services._lock_creator_membership
    with mock.patch.object(services, "_lock_creator_membership", once(lock, remove)):
        with pytest.raises(PermissionDenied):
            services.api_key_create(organization=org, actor=member, name="ci", role="auditor")
    assert not ApiKey.objects.filter(organization=org, created_by=user).exists()


@pytest.mark.django_db(transaction=True)
def test_second_of_two_removals_at_once_answers_not_found_when_the_first_removed_the_member(owner_org):
    """Two administrators remove the same member at once (or one request is sent twice without an Idempotency-Key):
    the second waits on the member lock the first holds, then finds the member gone. That is a 404, as for any
    member that no longer exists, not a 500 from re-reading a deleted row."""
    from django.db import transaction

    from controlplane.errors import NotFound
    from organizations import services
    from tests.races import run_elsewhere_until_blocked

    _user, membership = owner_org.add_member(roles=["auditor"])
    second_request_read = Membership.objects.get(pk=membership.pk)  # what the second request's view looked up
    with transaction.atomic():
        services.membership_remove(membership=Membership.objects.get(pk=membership.pk), actor=None)
        finish = run_elsewhere_until_blocked(
            lambda: services.membership_remove(membership=second_request_read, actor=None)
        )
    with pytest.raises(NotFound):
        finish()
    assert AuditEvent.objects.filter(action="member.remove", target_id=membership.public_id).count() == 1


@pytest.mark.django_db(transaction=True)
def test_role_change_answers_not_found_when_the_member_was_removed_while_it_waited(owner_org):
    from django.db import transaction

    from controlplane.errors import NotFound
    from organizations import services
    from tests.races import run_elsewhere_until_blocked

    _user, membership = owner_org.add_member(roles=["auditor"])
    update_read = Membership.objects.get(pk=membership.pk)
    with transaction.atomic():
        services.membership_remove(membership=Membership.objects.get(pk=membership.pk), actor=None)
        finish = run_elsewhere_until_blocked(
            lambda: services.membership_update(membership=update_read, actor=None, roles=["accountant"])
        )
    with pytest.raises(NotFound):
        finish()
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert not AuditEvent.objects.filter(action="member.update", target_id=membership.public_id).exists()


@pytest.mark.django_db(transaction=True)
def test_ownership_transfer_names_the_member_when_the_new_owner_was_removed_while_it_waited(owner_org):
    from django.db import transaction

    from controlplane.errors import ValidationFailed
    from organizations import services
    from organizations.access import Principal
    from tests.races import run_elsewhere_until_blocked

    org = owner_org.organization
    _user, membership = owner_org.add_member(roles=["administrator"])
    with transaction.atomic():
        services.membership_remove(membership=Membership.objects.get(pk=membership.pk), actor=None)
        finish = run_elsewhere_until_blocked(
            lambda: services.ownership_transfer(
                organization=org, actor=Principal(user=owner_org.owner), member_id=membership.public_id
            )
        )
    with pytest.raises(ValidationFailed) as refused:
        finish()
    assert [error.field for error in refused.value.errors] == ["member"]
    assert Membership.objects.get(organization=org, user=owner_org.owner).roles == ["owner"]
    assert not AuditEvent.objects.filter(action="organization.transfer").exists()


@pytest.mark.django_db(transaction=True)
def test_grant_on_a_project_deleted_at_the_same_moment_is_refused_on_project_grants_when_updating(owner_org):
    """A member's project grants are replaced while the project is being deleted: the update read the project before
    the deletion committed and wrote a grant to it, which met the foreign key to a deleted row at commit (an
    IntegrityError, a 500). The update locks the projects it grants, as project_delete does: it waits, then finds the
    project gone and refuses it as an unknown project."""
    from django.db import transaction

    from controlplane.errors import ValidationFailed
    from organizations import services
    from projects import services as project_services
    from projects.models import Project, ProjectGrant
    from tests.races import run_elsewhere_until_blocked

    org = owner_org.organization
    project = project_services.project_create(organization=org, actor=None, name="lab")
    _user, membership = owner_org.add_member(roles=["auditor"])
    update_read = Membership.objects.get(pk=membership.pk)
    with transaction.atomic():
        project_services.project_delete(project=Project.objects.get(pk=project.pk), actor=None)
        finish = run_elsewhere_until_blocked(
            lambda: services.membership_update(
                membership=update_read,
                actor=None,
                project_grants=[{"project": project.public_id, "role": "project_user"}],
            )
        )
    with pytest.raises(ValidationFailed) as refused:
        finish()
    assert [error.field for error in refused.value.errors] == ["project_grants"]
    assert not ProjectGrant.objects.filter(membership=membership).exists()
    assert not AuditEvent.objects.filter(action="member.update", target_id=membership.public_id).exists()
