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
