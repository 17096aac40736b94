"""Sign-up and password reset never reveal whether an account exists: one answer for all, and only the mailbox
learns the difference."""

import re

import pytest
from django.test import Client

from accounts.models import User
from audit.models import AuditEvent
from organizations.models import Membership

pytestmark = pytest.mark.django_db

NEW = {
    "email": "Ada@Example.com",
    "password": "a fine long passphrase",
    "full_name": "Ada",
    "organization_name": "Engines Ltd",
}


def _link(message, path) -> str:
    return re.search(rf"https?://[^/\s]+({re.escape(path)}\S*)", message.body).group(1)


def test_signup_creates_user_organization_and_default_project_when_email_is_confirmed(client, mailoutbox):
    response = client.post("/console/signup", NEW)
    assert response.status_code == 302 and response["Location"] == "/console/signup/sent"
    assert not User.objects.filter(email="ada@example.com").exists()  # nothing until the address is confirmed
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["ada@example.com"]
    link = _link(mailoutbox[0], "/console/signup/confirm")
    assert NEW["password"] not in mailoutbox[0].body and "pbkdf2" not in link and "md5" not in link
    page = client.get(link)
    assert b"Create my account" in page.content and b"ada@example.com" in page.content
    assert not User.objects.filter(email="ada@example.com").exists()  # a GET (a mail scanner) creates nothing
    token = link.split("token=", 1)[1]
    created = client.post("/console/signup/confirm", {"token": token})
    assert created.status_code == 302
    user = User.objects.get(email="ada@example.com")
    assert user.check_password(NEW["password"]) and user.full_name == "Ada"
    membership = Membership.objects.get(user=user)
    assert membership.roles == ["owner"] and membership.organization.name == "Engines Ltd"
    assert b"Default project" in client.get(created["Location"]).content
    assert AuditEvent.objects.filter(action="organization.create", via="console", actor=user).exists()
    # The link works once.
    again = Client().post("/console/signup/confirm", {"token": token})
    assert again.status_code == 200 and b"already exists" in again.content
    assert User.objects.filter(email__iexact="ada@example.com").count() == 1


def test_signup_with_an_existing_email_answers_the_same_and_warns_the_account_holder(client, owner_org, mailoutbox):
    fresh = client.post("/console/signup", {**NEW, "email": "someone.new@example.com"})
    taken = Client().post("/console/signup", {**NEW, "email": owner_org.owner.email.upper()})
    assert fresh.status_code == taken.status_code == 302
    assert fresh["Location"] == taken["Location"] == "/console/signup/sent"
    assert Client().get(fresh["Location"]).content == Client().get(taken["Location"]).content
    warning = next(m for m in mailoutbox if m.to == [owner_org.owner.email])
    assert "tried to create an MQTT Cloud account" in warning.body
    assert "/console/password-reset" in warning.body and "/console/signup/confirm" not in warning.body
    assert User.objects.filter(email__iexact=owner_org.owner.email).count() == 1


def test_signup_refuses_a_weak_password_whoever_owns_the_address(client, owner_org, mailoutbox):
    for email in ("new@example.com", owner_org.owner.email):
        weak = client.post("/console/signup", {"email": email, "password": "123"})
        assert weak.status_code == 200 and b"too short" in weak.content
    assert mailoutbox == []


def test_signup_link_is_refused_when_tampered_with(client, mailoutbox):
    client.post("/console/signup", NEW)
    token = _link(mailoutbox[0], "/console/signup/confirm").split("token=", 1)[1]
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    response = client.post("/console/signup/confirm", {"token": tampered})
    assert response.status_code == 200 and b"not valid or has expired" in response.content
    assert not User.objects.filter(email="ada@example.com").exists()


def test_password_reset_answers_the_same_and_mails_only_existing_accounts(client, owner_org, mailoutbox, settings):
    settings.PUBLIC_URL = "https://console.mqtt-cloud.example"
    known = client.post("/console/password-reset", {"email": owner_org.owner.email}, HTTP_HOST="evil.example")
    unknown = client.post("/console/password-reset", {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 302 and known["Location"] == unknown["Location"]
    assert len(mailoutbox) == 1 and mailoutbox[0].to == [owner_org.owner.email]
    # The link is built on PUBLIC_URL, never on the Host header the caller sent.
    assert "https://console.mqtt-cloud.example/console/password-reset/" in mailoutbox[0].body
    assert "evil.example" not in mailoutbox[0].body


def test_password_reset_reaches_an_account_that_never_had_a_password(client, mailoutbox):
    user = User.objects.create_user("operator-made@example.com")  # create_organization without --password
    assert not user.has_usable_password()
    client.post("/console/password-reset", {"email": user.email})
    path = _link(mailoutbox[0], "/console/password-reset/")
    form = client.get(path, follow=True)
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": "a chosen passphrase", "new_password2": "a chosen passphrase"}
    )
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password("a chosen passphrase")
    assert AuditEvent.objects.filter(action="user.password_change", summary__how="reset").exists()


def test_password_reset_ends_every_session_of_the_user(client, owner_org, mailoutbox):
    signed_in = Client()
    signed_in.force_login(owner_org.owner)
    assert signed_in.get(f"/console/o/{owner_org.id}").status_code == 200
    client.post("/console/password-reset", {"email": owner_org.owner.email})
    form = client.get(_link(mailoutbox[0], "/console/password-reset/"), follow=True)
    client.post(
        form.redirect_chain[-1][0], {"new_password1": "another passphrase!", "new_password2": "another passphrase!"}
    )
    assert signed_in.get(f"/console/o/{owner_org.id}")["Location"].startswith("/console/login")
