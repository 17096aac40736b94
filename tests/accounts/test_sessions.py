"""A deactivated user's keys and sessions stop working at once, a removed member's sessions no longer reach the
organization, and a password change ends the user's other sessions: each on the very next request."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from audit.models import AuditEvent
from tests.factories import PASSWORD
from tests.otp import admin_sign_in, enrol

pytestmark = pytest.mark.django_db


def _signed_in(user) -> Client:
    client = Client()
    assert client.post("/console/login", {"username": user.email, "password": PASSWORD}).status_code == 302
    return client


def _api_session(user) -> APIClient:
    client = APIClient()
    assert client.post("/console/login", {"username": user.email, "password": PASSWORD}).status_code == 302
    return client


@pytest.fixture
def staff_client(db, redis_clean):
    staff = User.objects.create_superuser("ops@example.com", "operator passphrase")
    device, _codes = enrol(staff)
    client = Client()
    assert admin_sign_in(client, staff, device, "operator passphrase").status_code == 302
    return client


def _deactivate_in_admin(staff_client, user):
    response = staff_client.post(
        "/admin/accounts/user/", {"action": "deactivate", "_selected_action": [user.pk]}, follow=True
    )
    assert response.status_code == 200, response.content[:300]


def test_keys_and_sessions_stop_at_once_when_user_is_deactivated(owner_org, key_client, staff_client):
    user, _ = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(user, role="administrator")
    console = _signed_in(user)
    api = _api_session(user)
    org_url = f"/api/v1/organizations/{owner_org.id}"
    assert key_client(secret).get(org_url).status_code == 200
    assert console.get(f"/console/o/{owner_org.id}").status_code == 200
    assert api.get(org_url).status_code == 200

    _deactivate_in_admin(staff_client, user)

    refused = key_client(secret).get(org_url)
    assert refused.status_code == 401 and refused["Content-Type"] == "application/problem+json"
    assert console.get(f"/console/o/{owner_org.id}")["Location"].startswith("/console/login")
    assert api.get(org_url).status_code == 401
    event = AuditEvent.objects.get(action="user.deactivate", target_id=user.public_id)
    assert event.via == "admin" and event.actor.email == "ops@example.com"


def test_sessions_stay_ended_when_a_deactivated_user_is_reactivated(owner_org, staff_client):
    user, _ = owner_org.add_member(roles=["auditor"])
    console = _signed_in(user)
    _deactivate_in_admin(staff_client, user)
    staff_client.post("/admin/accounts/user/", {"action": "activate", "_selected_action": [user.pk]})
    assert User.objects.get(pk=user.pk).is_active
    # The old session does not come back to life; signing in again works.
    assert console.get(f"/console/o/{owner_org.id}").status_code == 302
    assert _signed_in(user).get(f"/console/o/{owner_org.id}").status_code == 200


def test_sessions_end_when_user_is_deactivated_in_the_user_form(owner_org, staff_client):
    user, _ = owner_org.add_member(roles=["auditor"])
    console = _signed_in(user)
    response = staff_client.post(
        f"/admin/accounts/user/{user.pk}/change/",
        {
            "email": user.email,
            "full_name": user.full_name,
            "is_staff": "",
            "is_active": "",
            "is_superuser": "",
            "last_login_0": "",
            "last_login_1": "",
            "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 302, response.content[:1000]
    User.objects.filter(pk=user.pk).update(is_active=True)  # even reactivated behind the admin's back
    assert console.get(f"/console/o/{owner_org.id}").status_code == 302


def test_removed_member_session_loses_the_organization_on_next_request(owner_org, key_client):
    user, membership = owner_org.add_member(roles=["administrator"])
    console = _signed_in(user)
    api = _api_session(user)
    assert console.get(f"/console/o/{owner_org.id}").status_code == 200
    assert api.get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 200
    removed = key_client(owner_org.owner_secret).delete(
        f"/api/v1/organizations/{owner_org.id}/members/{membership.public_id}"
    )
    assert removed.status_code == 204
    assert console.get(f"/console/o/{owner_org.id}").status_code == 404
    assert api.get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 404
    assert api.post(f"/api/v1/organizations/{owner_org.id}/projects", {"name": "x"}, format="json").status_code == 404
    assert owner_org.id not in [o["id"] for o in api.get("/api/v1/organizations").json()["results"]]


def test_demoted_member_session_loses_the_rights_on_next_request(owner_org):
    user, membership = owner_org.add_member(roles=["administrator"])
    api = _api_session(user)
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    assert api.post(url, {"name": "Before"}, format="json").status_code == 201
    membership.roles = ["auditor"]
    membership.save()
    assert api.post(url, {"name": "After"}, format="json").status_code == 403


def test_password_change_ends_the_other_sessions_and_keeps_this_one(owner_org):
    user = owner_org.owner
    laptop, phone = _signed_in(user), _signed_in(user)
    response = laptop.post(
        "/console/account/password",
        {"old_password": PASSWORD, "new_password1": "a new long passphrase", "new_password2": "a new long passphrase"},
    )
    assert response.status_code == 302
    assert laptop.get(f"/console/o/{owner_org.id}").status_code == 200
    assert phone.get(f"/console/o/{owner_org.id}")["Location"].startswith("/console/login")
    event = AuditEvent.objects.get(action="user.password_change", target_id=user.public_id)
    assert event.summary["how"] == "change" and event.actor == user


def test_password_change_refuses_a_wrong_current_password(owner_org):
    laptop = _signed_in(owner_org.owner)
    response = laptop.post(
        "/console/account/password",
        {"old_password": "wrong", "new_password1": "a new long passphrase", "new_password2": "a new long passphrase"},
    )
    assert response.status_code == 200 and b"incorrectly" in response.content
    owner_org.owner.refresh_from_db()
    assert owner_org.owner.check_password(PASSWORD)


def test_pages_answered_to_a_signed_in_user_say_no_store_so_back_cannot_show_them_after_sign_out(owner_org):
    """A browser's Back button shows its stored copy of a page, even after signing out on a shared computer, unless
    the page said no-store: an API key's secret shown once, the organization's pages, the account's."""
    client = _signed_in(owner_org.owner)
    shown = client.post(f"/console/o/{owner_org.id}/api-keys", {"new-name": "CI", "new-role": "auditor"}, follow=True)
    assert shown.status_code == 200 and b"cpk_" in shown.content
    pages = {
        "api key shown": shown,
        "organization": client.get(f"/console/o/{owner_org.id}"),
        "password": client.get("/console/account/password"),
        "api": client.get(f"/api/v1/organizations/{owner_org.id}"),
    }
    stored = {
        name: page.get("Cache-Control", "")
        for name, page in pages.items()
        if "no-store" not in page.get("Cache-Control", "")
    }
    assert not stored, f"pages a browser may store: {stored}"


def test_sign_out_is_audited_in_the_account_with_its_request_id_when_a_signed_in_user_signs_out(owner_org):
    user = owner_org.owner
    client = _signed_in(user)
    response = client.post("/console/logout", REMOTE_ADDR="192.0.2.9")
    assert response.status_code == 302 and client.get("/").status_code == 302  # signed out
    event = AuditEvent.objects.get(action="logout")
    assert (event.organization, event.actor, event.target_id) == (None, user, user.public_id)
    assert event.request_id == response["X-Request-Id"] and event.via == "console"
    assert event.summary == {"email": user.email} and event.ip == "192.0.2.9"


def test_sign_out_records_nothing_when_the_session_had_signed_in_nobody(owner_org):
    response = Client().post("/console/logout")
    assert response.status_code == 302
    enrol(owner_org.owner)
    pending = Client()  # the password given, the second factor still owed: not signed in
    assert pending.post("/console/login", {"username": owner_org.owner.email, "password": PASSWORD}).status_code == 302
    assert pending.post("/console/logout").status_code == 302
    assert not AuditEvent.objects.filter(action="logout").exists()


def test_admin_sign_out_is_audited_too(staff_client):
    staff = User.objects.get(email="ops@example.com")
    response = staff_client.post("/admin/logout/")
    assert response.status_code == 302 and staff_client.get("/admin/").status_code == 302  # signed out
    event = AuditEvent.objects.get(action="logout")
    assert (event.organization, event.actor, event.target_id) == (None, staff, staff.public_id)
    assert event.request_id == response["X-Request-Id"] and event.via == "admin"
