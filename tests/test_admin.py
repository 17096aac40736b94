import json

import pytest

from audit.models import AuditEvent
from tests.otp import admin_sign_in, enrol

pytestmark = pytest.mark.django_db

STAFF_PASSWORD = "operator passphrase"


@pytest.fixture
def staff(db):
    """A superuser with two-factor authentication, signed in to the admin as staff do: password and a TOTP code."""
    from accounts.models import User

    user = User.objects.create_superuser("ops@example.com", STAFF_PASSWORD)
    user.totp_device, _codes = enrol(user)
    return user


@pytest.fixture
def staff_client(client, staff):
    response = admin_sign_in(client, staff, staff.totp_device, STAFF_PASSWORD)
    assert response.status_code == 302, response.content[:500]
    return client


def test_admin_is_staff_only(client, owner_org):
    client.force_login(owner_org.owner)
    assert client.get("/admin/organizations/organization/").status_code == 302


def test_staff_sees_organizations_with_members(staff_client, staff, owner_org):
    client = staff_client
    page = client.get(f"/admin/organizations/organization/{owner_org.organization.pk}/change/")
    assert page.status_code == 200
    assert owner_org.owner.email.encode() in page.content or str(owner_org.owner.pk).encode() in page.content


def test_revoke_action_revokes_and_audits(staff_client, staff, owner_org):
    client = staff_client
    response = client.post(
        "/admin/organizations/apikey/", {"action": "revoke", "_selected_action": [owner_org.owner_key.pk]}
    )
    assert response.status_code == 302
    owner_org.owner_key.refresh_from_db()
    assert owner_org.owner_key.revoked_at is not None
    event = AuditEvent.objects.get(action="api_key.revoke", target_id=owner_org.owner_key.public_id)
    assert event.actor == staff and event.via == "admin"


def test_admin_edits_are_audited(staff_client, staff, owner_org):
    client = staff_client
    project = owner_org.default_project
    response = client.post(
        f"/admin/projects/project/{project.pk}/change/",
        {
            "name": "Renamed by staff",
            "description": "",
            "organization": owner_org.organization.pk,
            "grants-TOTAL_FORMS": "0",
            "grants-INITIAL_FORMS": "0",
            "grants-MIN_NUM_FORMS": "0",
            "grants-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content[:500]
    event = AuditEvent.objects.get(action="admin.project.update", target_id=project.public_id)
    assert event.summary["changed"]["name"] == "Renamed by staff" and event.via == "admin"


def test_audit_log_is_read_only_in_admin(staff_client, staff, owner_org):
    client = staff_client
    event = AuditEvent.objects.filter(organization=owner_org.organization).first()
    assert client.get("/admin/audit/auditevent/").status_code == 200
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    edit = client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"action": "tampered", "summary": "{}"})
    assert edit.status_code == 403
    kept = AuditEvent.objects.get(pk=event.pk)
    assert (kept.action, kept.summary) == (event.action, event.summary)  # neither deleted nor edited


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster: {server: "https://k8s.example.com:6443"}
users:
- name: admin
  user: {token: "kube-admin-token-SUPERSECRET-0123456789"}
contexts:
- name: prod
  context: {cluster: prod, user: admin}
current-context: prod
"""


def test_pasted_kubeconfig_is_recorded_as_changed_never_its_value_when_staff_add_a_region(staff_client):
    """The Region form's kubeconfig is a form field, not a model field: the audit kept the pasted document (a cluster
    administrator's token) in clear, for ever, while the Region itself keeps it encrypted."""
    from deployments.models import Region

    response = staff_client.post(
        "/admin/deployments/region/add/",
        {
            "code": "k8s-frankfurt",
            "display_name": "Kubernetes Frankfurt",
            "provider": "aws",
            "cloud_region": "eu-central-1",
            "driver": "kubernetes",
            "bind_address": "127.0.0.1",
            "kubeconfig": KUBECONFIG,
            "storage_class": "",
            "service_type": "LoadBalancer",
            "is_open": "on",
            "network": "{}",
            "created_at_0": "2025-01-01",
            "created_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    region = Region.objects.get(code="k8s-frankfurt")
    assert region.kubeconfig_encrypted and "SUPERSECRET" not in region.kubeconfig_encrypted
    event = AuditEvent.objects.get(action="admin.region.create", target_id=str(region.pk))
    assert event.summary["changed"]["kubeconfig"] == "[redacted]"
    assert event.summary["changed"]["code"] == "k8s-frankfurt"
    assert "SUPERSECRET" not in json.dumps(event.summary)


def test_deleted_totp_device_leaves_no_seed_in_the_audit_log_when_staff_delete_it(staff_client):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from accounts.models import User

    user = User.objects.create_user("lost-phone@example.com", "a long passphrase here")
    device, _codes = enrol(user)
    seed = TOTPDevice.objects.get(pk=device.pk).key

    response = staff_client.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302, response.content.decode()[:2000]
    assert not TOTPDevice.objects.filter(pk=device.pk).exists()
    event = AuditEvent.objects.get(action="admin.totpdevice.delete")
    assert event.summary["fields"]["key"] == "[redacted]" and event.summary["fields"]["name"] == device.name
    assert seed not in json.dumps([e.summary for e in AuditEvent.objects.all()])


def test_admin_password_change_is_no_unthrottled_password_oracle_for_a_staff_session(staff_client, staff, settings):
    """The admin's own "Change password" page asks for the old password: a session alone (a stolen staff cookie) must
    not be able to guess it there without the sign-in throttle, nor change the password without it."""
    for attempt in range(settings.SIGNIN_MAX_FAILURES):
        staff_client.post(
            "/admin/password_change/",
            {
                "old_password": f"wrong guess {attempt}",
                "new_password1": "a brand new passphrase",
                "new_password2": "a brand new passphrase",
            },
        )
    response = staff_client.post(
        "/admin/password_change/",
        {
            "old_password": STAFF_PASSWORD,
            "new_password1": "a brand new passphrase",
            "new_password2": "a brand new passphrase",
        },
    )

    staff.refresh_from_db()
    assert staff.check_password(STAFF_PASSWORD), "the tenth-plus guess went unthrottled and changed the password"
    assert response.status_code in (302, 429)


def test_staff_still_see_a_closed_organization_marked_closed(staff_client, staff, owner_org):
    from organizations import access, services

    services.organization_delete(
        organization=owner_org.organization,
        actor=access.Principal(user=owner_org.owner),
        confirm_name=owner_org.organization.name,
    )

    listing = staff_client.get("/admin/organizations/organization/").content.decode()
    assert owner_org.organization.public_id in listing and "Closed 20" in listing
    closed_only = staff_client.get("/admin/organizations/organization/?closed_at__isempty=0").content.decode()
    assert owner_org.organization.public_id in closed_only
    page = staff_client.get(f"/admin/organizations/organization/{owner_org.organization.pk}/change/")
    assert page.status_code == 200 and b"Closed at" in page.content


def _close(owner_org):
    from organizations import access, services

    organization = owner_org.organization
    services.organization_delete(
        organization=organization, actor=access.Principal(user=owner_org.owner), confirm_name=organization.name
    )
    return organization


def _organization_form(organization, **extra) -> dict:
    return {
        "name": organization.name,
        "rate_limits": "{}",
        "require_two_factor": "",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "projects-TOTAL_FORMS": "0",
        "projects-INITIAL_FORMS": "0",
        "projects-MIN_NUM_FORMS": "0",
        "projects-MAX_NUM_FORMS": "1000",
        **extra,
    }


def test_a_closed_organization_is_shown_read_only_and_no_member_rename_or_project_is_saved_to_it(
    staff_client, staff, owner_org
):
    # Access refuses a closed organization whatever its rows say; the admin neither saves a member, a name or a
    # project nobody could use (and that a reopening, if ever, would find unexplained), nor offers to.
    from accounts.models import User
    from organizations.models import Membership, Organization

    organization = _close(owner_org)
    newcomer = User.objects.create_user("newcomer@example.com", "a long enough passphrase")
    url = f"/admin/organizations/organization/{organization.pk}/change/"

    page = staff_client.get(url)
    assert page.status_code == 200 and b"Closed at" in page.content
    assert b'name="_save"' not in page.content and b'name="name"' not in page.content

    member = _organization_form(
        organization,
        **{
            "memberships-TOTAL_FORMS": "1",
            "memberships-0-user": newcomer.pk,
            "memberships-0-roles": '["administrator"]',
        },
    )
    renamed = _organization_form(organization, name="Reopened")
    project = _organization_form(organization, **{"projects-TOTAL_FORMS": "1", "projects-0-name": "late"})
    for data in (member, renamed, project):
        assert staff_client.post(url, data).status_code == 403
    assert not Membership.objects.filter(organization=organization).exists()
    assert Organization.objects.get(pk=organization.pk).name == organization.name
    assert list(organization.projects.values_list("name", flat=True)) == [owner_org.default_project.name]
    assert not AuditEvent.objects.filter(action__startswith="admin.").exists()


def test_a_project_of_a_closed_organization_is_read_only_and_none_is_added_to_one(staff_client, staff, owner_org):
    from projects.models import Project

    organization = _close(owner_org)
    project = owner_org.default_project
    url = f"/admin/projects/project/{project.pk}/change/"
    grants = {
        "grants-TOTAL_FORMS": "0",
        "grants-INITIAL_FORMS": "0",
        "grants-MIN_NUM_FORMS": "0",
        "grants-MAX_NUM_FORMS": "1000",
    }

    assert b'name="_save"' not in staff_client.get(url).content
    changed = staff_client.post(url, {"name": "renamed", "organization": organization.pk, "description": "", **grants})
    assert changed.status_code == 403
    added = staff_client.post(
        "/admin/projects/project/add/", {"name": "late", "organization": organization.pk, "description": "", **grants}
    )
    assert added.status_code == 200, added.content[:300]  # the form again, with the error beside the organization
    assert "is closed" in added.content.decode()
    assert list(Project.objects.filter(organization=organization).values_list("name", flat=True)) == [project.name]
    assert not AuditEvent.objects.filter(action__startswith="admin.").exists()
