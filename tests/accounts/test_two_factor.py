"""Two-factor authentication through the console's real pages and sessions, with codes computed as an authenticator
app computes them (pyotp, from the key the setup page shows)."""

import re
import time

import pyotp
import pytest
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from audit.models import AuditEvent
from organizations.models import Membership
from tests.factories import PASSWORD
from tests.otp import admin_sign_in, enrol, next_code, totp_code

pytestmark = pytest.mark.django_db


def _password_step(client, user, **extra):
    return client.post("/console/login", {"username": user.email, "password": PASSWORD, **extra})


def _sign_in_with_code(user, device) -> Client:
    client = Client()
    assert _password_step(client, user)["Location"] == "/console/login/verify"
    assert client.post("/console/login/verify", {"code": next_code(device)}).status_code == 302
    return client


def test_user_turns_on_two_factor_with_qr_code_and_gets_ten_recovery_codes_when_enrolling(client, owner_org):
    user = owner_org.owner
    client.force_login(user)
    page = client.get("/console/account/two-factor")
    assert b"is <strong>off</strong>" in page.content and b'name="password"' in page.content
    started = client.post("/console/account/two-factor", {"action": "start", "password": PASSWORD})
    assert started["Location"] == "/console/account/two-factor/setup"
    setup = client.get("/console/account/two-factor/setup")
    assert b'src="/console/account/two-factor/qr.svg"' in setup.content
    qr = client.get("/console/account/two-factor/qr.svg")
    assert qr.status_code == 200 and qr["Content-Type"] == "image/svg+xml"
    assert b"<svg" in qr.content and b"<script" not in qr.content and "no-store" in qr["Cache-Control"]
    # The app is given the key the page shows; it computes the code.
    secret = re.search(rb'id="totp-secret">([A-Z2-7]+)<', setup.content).group(1).decode()
    assert client.post("/console/account/two-factor/setup", {"code": "000000"}).status_code == 200
    assert not TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    done = client.post("/console/account/two-factor/setup", {"code": pyotp.TOTP(secret).now()})
    assert done.status_code == 200
    codes = re.findall(rb"<li><code>([a-z2-7]{8})</code></li>", done.content)
    assert len(set(codes)) == 10
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed and f"secret={secret}" in device.config_url and "issuer=MQTT%20Cloud" in device.config_url
    assert b"is <strong>on</strong>" in client.get("/console/account/two-factor").content
    assert b"<li><code>" not in client.get("/console/account/two-factor").content  # shown once
    assert client.get("/console/account/two-factor/qr.svg").status_code == 404  # the key is not served any more
    assert AuditEvent.objects.filter(action="two_factor.enable", target_id=user.public_id).exists()


def test_enrolling_ends_the_users_other_sessions(owner_org):
    user = owner_org.owner
    other = Client()
    other.force_login(user)
    enrolling = Client()
    enrolling.force_login(user)
    enrolling.post("/console/account/two-factor", {"action": "start", "password": PASSWORD})
    device = TOTPDevice.objects.get(user=user)

    assert enrolling.post("/console/account/two-factor/setup", {"code": totp_code(device)}).status_code == 200
    assert enrolling.get(f"/console/o/{owner_org.id}").status_code == 200
    assert other.get(f"/console/o/{owner_org.id}")["Location"].startswith("/console/login")


def test_sign_in_needs_the_code_when_two_factor_is_on(owner_org):
    user = owner_org.owner
    device, _codes = enrol(user)
    client = Client()
    assert _password_step(client, user)["Location"] == "/console/login/verify"
    # The password alone signs in to nothing: not the console, not the API.
    assert client.get(f"/console/o/{owner_org.id}")["Location"].startswith("/console/login")
    assert client.get(f"/api/v1/organizations/{owner_org.id}").status_code == 401
    wrong = client.post("/console/login/verify", {"code": "123456"})
    assert wrong.status_code == 200 and b"That code is not valid." in wrong.content
    # The device backs off after a wrong code (django-otp): even the right code waits a second.
    backed_off = client.post("/console/login/verify", {"code": next_code(device)})
    assert backed_off.status_code == 200 and b"Too many wrong codes: wait 1 s" in backed_off.content
    time.sleep(1.1)
    right = client.post("/console/login/verify", {"code": next_code(device)})
    assert right.status_code == 302
    assert client.get(f"/console/o/{owner_org.id}").status_code == 200
    event = AuditEvent.objects.filter(action="login.succeeded", target_id=user.public_id).latest("created_at")
    assert event.summary["two_factor"] is True


def test_recovery_code_signs_in_once_when_the_phone_is_lost(owner_org):
    user = owner_org.owner
    _device, codes = enrol(user)
    first = Client()
    _password_step(first, user)
    assert first.post("/console/login/verify", {"code": codes[0].upper()}).status_code == 302
    assert first.get(f"/console/o/{owner_org.id}").status_code == 200
    again = Client()
    _password_step(again, user)
    assert again.post("/console/login/verify", {"code": codes[0]}).status_code == 200
    time.sleep(1.1)  # the back-off after a wrong code
    assert again.post("/console/login/verify", {"code": codes[1]}).status_code == 302


def test_turning_two_factor_off_needs_the_password_again(owner_org):
    user = owner_org.owner
    device, _codes = enrol(user)
    client = _sign_in_with_code(user, device)
    refused = client.post("/console/account/two-factor/disable", {"password": "not my password"}, follow=True)
    assert b"The password is not correct." in refused.content
    assert TOTPDevice.objects.filter(user=user).exists()
    client.post("/console/account/two-factor/disable", {"password": PASSWORD})
    assert not TOTPDevice.objects.filter(user=user).exists()
    assert AuditEvent.objects.filter(action="two_factor.disable", target_id=user.public_id).exists()
    # Without a device, the password alone signs in again.
    assert _password_step(Client(), user)["Location"] == "/"


def test_new_recovery_codes_replace_the_old_ones_after_the_password(owner_org):
    user = owner_org.owner
    device, old_codes = enrol(user)
    client = _sign_in_with_code(user, device)
    response = client.post("/console/account/two-factor/recovery-codes", {"password": PASSWORD})
    new_codes = re.findall(r"<li><code>([a-z2-7]{8})</code></li>", response.content.decode())
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    fresh = Client()
    _password_step(fresh, user)
    assert fresh.post("/console/login/verify", {"code": old_codes[1]}).status_code == 200


def test_owner_requires_two_factor_and_member_is_sent_to_enrol_before_any_page(owner_org, key_client):
    owner = owner_org.owner
    owner_device, _ = enrol(owner)
    owner_client = _sign_in_with_code(owner, owner_device)
    response = owner_client.post(
        f"/console/account/two-factor/organizations/{owner_org.id}", {"require_two_factor": "on"}
    )
    assert response.status_code == 302
    owner_org.organization.refresh_from_db()
    assert owner_org.organization.require_two_factor is True
    event = AuditEvent.objects.get(action="organization.require_two_factor")
    assert event.summary == {"require_two_factor": [False, True]} and event.actor == owner

    member, _ = owner_org.add_member(roles=["administrator"])
    _key, member_secret = owner_org.key_for(member, role="administrator")
    client = Client()
    assert _password_step(client, member, next=f"/console/o/{owner_org.id}").status_code == 302
    for path in (f"/console/o/{owner_org.id}", f"/console/o/{owner_org.id}/api-keys"):
        sent = client.get(path)
        assert sent.status_code == 302 and sent["Location"].startswith("/console/account/two-factor?")
    # The API, with the same session, refuses with a clear word; the member's API key is not affected.
    api = client.get(f"/api/v1/organizations/{owner_org.id}/projects")
    assert api.status_code == 403 and api.json()["type"].endswith("/two-factor-required")
    assert key_client(member_secret).get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 200

    page = client.get(sent["Location"])
    assert owner_org.organization.name.encode() in page.content and b"requires two-factor" in page.content
    client.post(
        "/console/account/two-factor", {"action": "start", "password": PASSWORD, "next": f"/console/o/{owner_org.id}"}
    )
    device = TOTPDevice.objects.get(user=member)

    codes_page = client.post(
        "/console/account/two-factor/setup", {"code": totp_code(device), "next": f"/console/o/{owner_org.id}"}
    )
    assert f'href="/console/o/{owner_org.id}"'.encode() in codes_page.content
    assert client.get(f"/console/o/{owner_org.id}").status_code == 200
    assert client.get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 200


def test_member_with_a_device_but_an_unverified_session_is_asked_for_a_code(owner_org):
    owner_org.organization.require_two_factor = True
    owner_org.organization.save()
    member, _ = owner_org.add_member(roles=["auditor"])
    device, _ = enrol(member)
    client = Client()
    client.force_login(member)  # a session that never saw the second factor
    sent = client.get(f"/console/o/{owner_org.id}")
    assert sent["Location"].startswith("/console/account/two-factor/verify?")
    assert client.post(sent["Location"], {"code": next_code(device)})["Location"] == f"/console/o/{owner_org.id}"
    assert client.get(f"/console/o/{owner_org.id}").status_code == 200


def test_only_an_owner_in_a_verified_session_may_require_two_factor_when_asked_through_the_api(owner_org):
    url = f"/api/v1/organizations/{owner_org.id}"
    owner = Client()
    owner.force_login(owner_org.owner)
    # The Owner has no device yet: requiring it would shut them out first.
    refused = owner.patch(url, {"require_two_factor": True}, content_type="application/json")
    assert refused.status_code == 409 and refused.json()["errors"][0]["field"] == "require_two_factor"
    # With a device, but a session its second factor did not verify: 403, with what to do.
    owner_device, _ = enrol(owner_org.owner)
    unverified = Client()
    unverified.force_login(owner_org.owner)
    refused = unverified.patch(url, {"require_two_factor": True}, content_type="application/json")
    assert refused.status_code == 403 and refused.json()["type"].endswith("/two-factor-session-required")
    admin, _ = owner_org.add_member(roles=["administrator"])
    admin_device, _ = enrol(admin)
    assert (
        _sign_in_with_code(admin, admin_device)
        .patch(url, {"require_two_factor": True}, content_type="application/json")
        .json()["type"]
        .endswith("/role-too-high")
    )
    allowed = _sign_in_with_code(owner_org.owner, owner_device).patch(
        url, {"require_two_factor": True}, content_type="application/json"
    )
    assert allowed.status_code == 200 and allowed.json()["require_two_factor"] is True
    assert AuditEvent.objects.filter(action="organization.require_two_factor", actor=owner_org.owner).exists()


@pytest.mark.parametrize("required", [False, True])
def test_api_key_cannot_change_the_two_factor_requirement_when_it_holds_the_owner_role(owner_org, key_client, required):
    """API keys are not held to the requirement, so they must not set it: a leaked Owner key, which no second factor
    protects, would otherwise lift the second factor from every member's sign-in."""
    enrol(owner_org.owner)
    owner_org.organization.require_two_factor = not required
    owner_org.organization.save()
    response = key_client(owner_org.owner_secret).patch(
        f"/api/v1/organizations/{owner_org.id}", {"require_two_factor": required, "name": "Renamed"}, format="json"
    )
    assert response.status_code == 403, response.content[:300]
    body = response.json()
    assert body["type"].endswith("/two-factor-session-required") and "API key" in body["detail"]
    owner_org.organization.refresh_from_db()
    assert owner_org.organization.require_two_factor is not required
    assert owner_org.organization.name != "Renamed"  # the whole request is refused
    assert not AuditEvent.objects.filter(action="organization.require_two_factor").exists()


def test_turning_on_two_factor_asks_for_the_password_when_only_a_session_is_presented(owner_org):
    """Whoever holds a stolen session cookie of a member without two-factor must not enrol an authenticator of their
    own: enabling ends every other session, so the member would be signed out and their password alone would no
    longer sign them in. A stolen session would become a taken account."""
    victim = owner_org.owner
    victims_own_session = Client()
    assert _password_step(victims_own_session, victim).status_code == 302
    thief = Client()
    thief.force_login(victim)  # the stolen cookie: no password known

    for attempt in ({"action": "start"}, {"action": "start", "password": "a guess"}):
        refused = thief.post("/console/account/two-factor", attempt, follow=True)
        assert b"password" in refused.content
    assert not TOTPDevice.objects.filter(user=victim).exists()
    assert thief.get("/console/account/two-factor/setup")["Location"] == "/console/account/two-factor"
    assert victims_own_session.get(f"/console/o/{owner_org.id}").status_code == 200
    # The wrong guess counts toward the sign-in throttle.
    assert AuditEvent.objects.filter(action="login.failed", summary__reason="reauthentication").count() == 1


def test_pending_authenticator_is_shown_and_confirmed_only_in_the_session_that_began_it(owner_org):
    """The member began the setup (with the password) and left it pending: another session of theirs (a stolen
    cookie) must neither read its key nor confirm it."""
    user = owner_org.owner
    owner = Client()
    owner.force_login(user)
    assert owner.post("/console/account/two-factor", {"action": "start", "password": PASSWORD}).status_code == 302
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    thief = Client()
    thief.force_login(user)
    assert thief.get("/console/account/two-factor/setup")["Location"] == "/console/account/two-factor"
    assert thief.get("/console/account/two-factor/qr.svg").status_code == 404
    thief.post("/console/account/two-factor/setup", {"code": totp_code(device)})
    assert not TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    assert owner.get("/console/account/two-factor/qr.svg").status_code == 200
    assert owner.post("/console/account/two-factor/setup", {"code": totp_code(device)}).status_code == 200
    assert TOTPDevice.objects.filter(pk=device.pk, confirmed=True).exists()


def test_staff_without_two_factor_cannot_reach_the_admin_with_a_stolen_console_session(staff):
    """Enrolling from a session would hand a verified session, and so the admin, to whoever holds the cookie."""
    thief = Client()
    thief.force_login(staff)
    thief.post("/console/account/two-factor", {"action": "start"})
    assert not TOTPDevice.objects.filter(user=staff).exists()
    assert thief.get("/admin/")["Location"].startswith("/admin/login/")


@pytest.fixture
def staff(db):
    return User.objects.create_superuser("ops@example.com", "operator passphrase")


def test_staff_cannot_reach_the_admin_without_a_second_factor(staff, client):
    client.force_login(staff)  # a password-only session
    assert client.get("/admin/")["Location"].startswith("/admin/login/")
    response = client.post("/admin/login/", {"username": staff.email, "password": "operator passphrase"})
    assert b"set it up in the console first" in response.content
    assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_staff_reach_the_admin_with_password_and_code(staff, client):
    device, _ = enrol(staff)
    bad = client.post(
        "/admin/login/",
        {
            "username": staff.email,
            "password": "operator passphrase",
            "otp_device": device.persistent_id,
            "otp_token": "000000",
        },
    )
    assert bad.status_code == 200 and client.get("/admin/").status_code == 302
    time.sleep(1.1)  # the back-off after a wrong code
    assert admin_sign_in(client, staff, device, "operator passphrase").status_code == 302
    assert client.get("/admin/").status_code == 200


def test_staff_verified_in_the_console_reach_the_admin(staff):
    device, _ = enrol(staff)
    client = Client()
    client.post("/console/login", {"username": staff.email, "password": "operator passphrase"})
    assert client.post("/console/login/verify", {"code": next_code(device)}).status_code == 302
    assert client.get("/admin/").status_code == 200


def test_staff_can_neither_read_nor_add_a_users_second_factor_in_the_admin(owner_org, staff, client):
    staff_device, _ = enrol(staff)
    assert admin_sign_in(client, staff, staff_device, "operator passphrase").status_code == 302
    device, codes = enrol(owner_org.owner)
    page = client.get(f"/admin/otp_totp/totpdevice/{device.pk}/change/")
    assert page.status_code == 200 and device.key.encode() not in page.content
    assert client.get(f"/admin/otp_totp/totpdevice/{device.pk}/qrcode/").status_code == 403
    assert client.get(f"/admin/otp_totp/totpdevice/{device.pk}/config/").status_code == 403
    assert client.get("/admin/otp_totp/totpdevice/add/").status_code == 403
    static = owner_org.owner.staticdevice_set.get()
    static_page = client.get(f"/admin/otp_static/staticdevice/{static.pk}/change/")
    assert static_page.status_code == 200 and not any(code.encode() in static_page.content for code in codes)
    # A user who lost phone and codes: staff remove the device, and the log says who did.
    removed = client.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"})
    assert removed.status_code == 302 and not TOTPDevice.objects.filter(pk=device.pk).exists()
    event = AuditEvent.objects.get(action="admin.totpdevice.delete")
    assert event.actor == staff and event.via == "admin"


def test_nul_in_the_organization_of_the_two_factor_pages_answers_the_page_or_404_when_sent(owner_org):
    """PostgreSQL cannot hold a NUL in text: looking an organization up by such an id failed (DataError, a 500)."""
    client = Client()
    assert _password_step(client, owner_org.owner).status_code == 302
    page = client.get("/console/account/two-factor?required_by=org_%00")
    assert page.status_code == 200, page.status_code
    assert b"requires two-factor" not in page.content
    refused = client.post("/console/account/two-factor/organizations/org_%00", {"require_two_factor": "on"})
    assert refused.status_code == 404, refused.status_code


def _sign_in_with_recovery_code(user, code) -> Client:
    client = Client()
    assert _password_step(client, user)["Location"] == "/console/login/verify"
    assert client.post("/console/login/verify", {"code": code}).status_code == 302
    return client


def test_session_verified_by_a_recovery_code_stays_verified_when_it_renews_the_codes(owner_org):
    user = owner_org.owner
    _device, old_codes = enrol(user)
    type(owner_org.organization).objects.filter(pk=owner_org.organization.pk).update(require_two_factor=True)
    client = _sign_in_with_recovery_code(user, old_codes[0])
    assert client.get(f"/console/o/{owner_org.id}").status_code == 200

    response = client.post("/console/account/two-factor/recovery-codes", {"password": PASSWORD})
    new_codes = re.findall(r"<li><code>([a-z2-7]{8})</code></li>", response.content.decode())
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    assert client.get(f"/console/o/{owner_org.id}").status_code == 200
    assert client.get(f"/api/v1/organizations/{owner_org.id}/projects").status_code == 200
    refused = Client()
    _password_step(refused, user)
    assert refused.post("/console/login/verify", {"code": old_codes[1]}).status_code == 200
    time.sleep(1.1)  # the back-off after a wrong code
    assert refused.post("/console/login/verify", {"code": new_codes[0]}).status_code == 302


def test_other_session_verified_by_an_old_recovery_code_must_verify_again_when_the_codes_are_renewed(owner_org):
    """New codes are what a person makes after a code leaked: a session someone opened with an old code is no longer
    verified (it is not ended: turning two-factor on or off ends other sessions, renewing the codes does not)."""
    user = owner_org.owner
    device, old_codes = enrol(user)
    type(owner_org.organization).objects.filter(pk=owner_org.organization.pk).update(require_two_factor=True)
    leaked = _sign_in_with_recovery_code(user, old_codes[0])
    by_app = _sign_in_with_code(user, device)
    renewing = _sign_in_with_recovery_code(user, old_codes[1])
    assert renewing.post("/console/account/two-factor/recovery-codes", {"password": PASSWORD}).status_code == 200

    sent = leaked.get(f"/console/o/{owner_org.id}")
    assert sent.status_code == 302 and sent["Location"].startswith("/console/account/two-factor/verify?")
    assert by_app.get(f"/console/o/{owner_org.id}").status_code == 200
    assert renewing.get(f"/console/o/{owner_org.id}").status_code == 200


def test_organization_lists_withhold_the_name_of_one_requiring_two_factor_when_the_session_was_not_verified(
    owner_org, org_factory
):
    """Its pages and its data answer such a session only "verify first"; its name is its data too. It is still
    listed, as requiring two-factor, so the member knows where to go and can verify from there."""
    locked = org_factory(name="Bluefin Secret Labs")
    locked.organization.require_two_factor = True
    locked.organization.save()
    member, _ = locked.add_member(roles=["administrator"])
    Membership.objects.create(organization=owner_org.organization, user=member, roles=["auditor"])
    device, _ = enrol(member)
    client = Client()
    client.force_login(member)  # a password-only session: no second factor verified it

    listed = {o["id"]: o for o in client.get("/api/v1/organizations").json()["results"]}
    assert listed[locked.id]["name"] is None and listed[locked.id]["my_roles"] is None
    assert listed[locked.id]["two_factor_verification_required"] is True
    assert listed[locked.id]["require_two_factor"] is True
    assert listed[owner_org.id]["name"] == owner_org.organization.name
    assert listed[owner_org.id]["my_roles"] == ["auditor"]
    assert listed[owner_org.id]["two_factor_verification_required"] is False
    for page in (client.get("/"), client.get(f"/console/o/{owner_org.id}")):
        assert page.status_code == 200
        html = page.content.decode()
        assert "Bluefin Secret Labs" not in html
        assert "Requires two-factor authentication" in html and locked.id in html

    verified = _sign_in_with_code(member, device)
    listed = {o["id"]: o for o in verified.get("/api/v1/organizations").json()["results"]}
    assert listed[locked.id]["name"] == "Bluefin Secret Labs" and listed[locked.id]["my_roles"] == ["administrator"]
    assert listed[locked.id]["two_factor_verification_required"] is False
    assert "Bluefin Secret Labs" in verified.get("/").content.decode()


def test_switching_to_an_organization_requiring_two_factor_sends_an_unverified_session_to_its_code(
    owner_org, org_factory
):
    """The switcher lists such an organization; choosing it led to member_organization's TwoFactorRequired
    uncaught, a 500. It goes where the organization's own page sends the member: to the code, then back."""
    locked = org_factory()
    locked.organization.require_two_factor = True
    locked.organization.save()
    member, _ = locked.add_member(roles=["auditor"])
    Membership.objects.create(organization=owner_org.organization, user=member, roles=["auditor"])
    device, _ = enrol(member)
    client = Client()
    client.force_login(member)

    switched = client.get("/console/switch", {"org": locked.id}, follow=True)

    assert switched.redirect_chain[-1][0].startswith("/console/account/two-factor/verify?")
    assert client.post(switched.redirect_chain[-1][0], {"code": next_code(device)})["Location"] == (
        f"/console/o/{locked.id}"
    )
    # A stranger's choice of the same organization is still a 404, whatever it requires.
    stranger = Client()
    stranger.force_login(owner_org.owner)
    assert stranger.get("/console/switch", {"org": locked.id}).status_code == 404


def test_two_factor_page_does_not_name_an_organization_to_a_member_who_has_a_device_but_no_verified_session(
    org_factory,
):
    """The lists show such a session the organization's id, not its name; the setup page named the organization of
    any `required_by` id its member gave it. It names it only to a member without a device, whom the organization
    sends there to set one up (and who could do so with the password alone)."""
    locked = org_factory(name="Bluefin Secret Labs")
    locked.organization.require_two_factor = True
    locked.organization.save()
    member, _ = locked.add_member(roles=["auditor"])
    client = Client()
    client.force_login(member)
    assert (
        "Bluefin Secret Labs" in client.get("/console/account/two-factor", {"required_by": locked.id}).content.decode()
    )
    enrol(member)
    client = Client()
    client.force_login(member)  # a session that never saw the second factor
    page = client.get("/console/account/two-factor", {"required_by": locked.id})
    assert page.status_code == 200
    assert "Bluefin Secret Labs" not in page.content.decode()
