"""Sign-up and password reset never reveal whether an account exists: one answer for all, the same work in the request
(the email goes from a Celery task), and only the mailbox learns the difference. The password of a new account is
chosen on the page the emailed link opens, never at sign-up."""

import re
import time

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from audit.models import AuditEvent
from organizations.models import Membership
from tests.mail import SmtpReceiver, body

pytestmark = pytest.mark.django_db

NEW = {"email": "Ada@Example.com", "full_name": "Ada", "organization_name": "Engines Ltd"}
PASSPHRASE = "a fine long passphrase"


@pytest.fixture(autouse=True)
def _mail_allowance_full(redis_clean):
    """Several tests here mail the same address: each starts with its allowance (accounts.services) full."""


def _link(message, path) -> str:
    return re.search(rf"https?://[^/\s]+({re.escape(path)}\S*)", message.body).group(1)


def _token(message) -> str:
    return _link(message, "/console/signup/confirm").split("token=", 1)[1]


def test_signup_creates_user_organization_and_default_project_when_email_is_confirmed(client, mailoutbox, tasks_inline):
    with tasks_inline():
        response = client.post("/console/signup", NEW)
    assert response.status_code == 302 and response["Location"] == "/console/signup/sent"
    assert not User.objects.filter(email="ada@example.com").exists()  # nothing until the address is confirmed
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["ada@example.com"]
    link = _link(mailoutbox[0], "/console/signup/confirm")
    page = client.get(link)
    assert b"Create my account" in page.content and b"ada@example.com" in page.content
    assert b'type="password"' in page.content and b"Choose a password" in page.content
    assert not User.objects.filter(email="ada@example.com").exists()  # a GET (a mail scanner) creates nothing
    token = link.split("token=", 1)[1]
    created = client.post("/console/signup/confirm", {"token": token, "password": PASSPHRASE})
    assert created.status_code == 302
    user = User.objects.get(email="ada@example.com")
    assert user.check_password(PASSPHRASE) and user.full_name == "Ada"
    membership = Membership.objects.get(user=user)
    assert membership.roles == ["owner"] and membership.organization.name == "Engines Ltd"
    assert b"Default project" in client.get(created["Location"]).content
    assert AuditEvent.objects.filter(action="organization.create", via="console", actor=user).exists()
    # The link works once.
    again = Client().post("/console/signup/confirm", {"token": token, "password": "another long passphrase"})
    assert again.status_code == 200 and b"already exists" in again.content
    assert User.objects.filter(email__iexact="ada@example.com").count() == 1
    assert user.check_password(PASSPHRASE)


def test_signup_link_cannot_create_an_account_with_a_password_chosen_by_someone_else_when_followed(
    mailoutbox, tasks_inline
):
    """Anyone can start a sign-up for any address. Were the password chosen at sign-up, the owner of the address
    would create, with one click, an account whose password the stranger knows, and the stranger would sign in
    alongside. The link's page asks for the password; the owner submitting only the button creates nothing."""
    stranger_password = "the stranger chose this 42"
    with tasks_inline():
        Client().post(
            "/console/signup",
            {"email": "cfo@victim.example", "password": stranger_password, "full_name": "", "organization_name": ""},
        )
    [message] = mailoutbox
    token = _token(message)
    owner = Client()
    assert owner.get(f"/console/signup/confirm?token={token}").status_code == 200
    just_the_button = owner.post("/console/signup/confirm", {"token": token})
    assert just_the_button.status_code == 200 and b"This field is required." in just_the_button.content
    assert not User.objects.filter(email="cfo@victim.example").exists()

    # The owner chooses a password of their own; the stranger's opens nothing.
    assert owner.post("/console/signup/confirm", {"token": token, "password": PASSPHRASE}).status_code == 302
    stranger = Client()
    response = stranger.post(
        "/console/login", {"username": "cfo@victim.example", "password": stranger_password}, REMOTE_ADDR="192.0.2.66"
    )
    assert response.status_code == 200 and "_auth_user_id" not in stranger.session
    assert User.objects.get(email="cfo@victim.example").check_password(PASSPHRASE)


def test_signup_with_an_existing_email_answers_the_same_and_warns_the_account_holder(
    client, owner_org, mailoutbox, tasks_inline
):
    with tasks_inline():
        fresh = client.post("/console/signup", {**NEW, "email": "someone.new@example.com"})
        taken = Client().post("/console/signup", {**NEW, "email": owner_org.owner.email.upper()})
    assert fresh.status_code == taken.status_code == 302
    assert fresh["Location"] == taken["Location"] == "/console/signup/sent"
    assert Client().get(fresh["Location"]).content == Client().get(taken["Location"]).content
    warning = next(m for m in mailoutbox if m.to == [owner_org.owner.email])
    assert "tried to create an MQTT Cloud account" in warning.body
    assert "/console/password-reset" in warning.body and "/console/signup/confirm" not in warning.body
    assert User.objects.filter(email__iexact=owner_org.owner.email).count() == 1


class CountingHasher(MD5PasswordHasher):
    """The test suite's own (fast) hasher, counting how often a password is hashed: the costly step in production
    (PBKDF2, 1,000,000 iterations, about half a second)."""

    algorithm = "md5"
    calls = 0

    def encode(self, password, salt):
        type(self).calls += 1
        return super().encode(password, salt)


def test_signup_does_the_same_work_whether_or_not_the_address_has_an_account_when_requested(
    client, owner_org, settings
):
    """No hash (the password is chosen later), no lookup, no email in the request: all three would take longer for
    one kind of address than for the other, which is what the page's identical wording is there to hide."""
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    form = {"password": "a long enough passphrase 42", "full_name": "", "organization_name": ""}
    work = {}
    for kind, email in (("new", "nobody-yet@example.com"), ("existing", owner_org.owner.email)):
        CountingHasher.calls = 0
        with CaptureQueriesContext(connection) as queries:
            assert Client().post("/console/signup", {**form, "email": email}).status_code == 302
        work[kind] = (CountingHasher.calls, [q["sql"] for q in queries.captured_queries])
    assert work["new"] == work["existing"], work
    assert work["new"][0] == 0


def test_signup_confirmation_refuses_a_weak_password_and_creates_nothing(client, mailoutbox, tasks_inline):
    with tasks_inline():
        client.post("/console/signup", NEW)
    token = _token(mailoutbox[0])
    weak = client.post("/console/signup/confirm", {"token": token, "password": "123"})
    assert weak.status_code == 200 and b"too short" in weak.content
    assert b'name="token"' in weak.content  # the form is shown again, to choose another
    assert not User.objects.filter(email="ada@example.com").exists()


def test_signup_refuses_an_organization_name_with_a_line_break_when_submitted(client, mailoutbox, tasks_inline):
    with tasks_inline():
        response = client.post(
            "/console/signup",
            {"email": "founder@example.com", "full_name": "Founder", "organization_name": "Acme\r\nBcc: x@example.com"},
        )
    assert response.status_code == 200 and b"control characters" in response.content
    assert mailoutbox == []


def test_signup_refuses_an_address_that_lower_case_makes_invalid_when_submitted(client, mailoutbox, tasks_inline):
    """'İ'.lower() is an i and a combining dot: the address an account would get is no address at all."""
    with tasks_inline():
        response = client.post("/console/signup", {**NEW, "email": "İ@example.com"})
    assert response.status_code == 200 and b"valid email address" in response.content, response.status_code
    assert mailoutbox == []


def test_signup_link_for_an_address_that_lower_case_made_invalid_answers_a_page_when_confirmed(client, mailoutbox):
    """A link mailed before sign-up refused such addresses: confirming it ended in a 500 (the model's validation)."""
    from accounts.services import signup_email_send

    signup_email_send(email="İ@example.com", full_name="Ada")
    token = _token(mailoutbox[0])
    response = Client(raise_request_exception=False).post(
        "/console/signup/confirm", {"token": token, "password": PASSPHRASE}
    )
    assert response.status_code == 200, response.status_code
    assert b"valid email address" in response.content
    assert not User.objects.filter(full_name="Ada").exists()


def test_signup_link_is_refused_when_tampered_with(client, mailoutbox, tasks_inline):
    with tasks_inline():
        client.post("/console/signup", NEW)
    token = _token(mailoutbox[0])
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    response = client.post("/console/signup/confirm", {"token": tampered, "password": PASSPHRASE})
    assert response.status_code == 200 and b"not valid or has expired" in response.content
    assert not User.objects.filter(email="ada@example.com").exists()


def test_password_reset_answers_the_same_and_mails_only_existing_accounts(
    client, owner_org, mailoutbox, settings, tasks_inline
):
    settings.PUBLIC_URL = "https://console.mqtt-cloud.example"
    with tasks_inline():
        known = client.post("/console/password-reset", {"email": owner_org.owner.email}, HTTP_HOST="evil.example")
        unknown = client.post("/console/password-reset", {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 302 and known["Location"] == unknown["Location"]
    assert len(mailoutbox) == 1 and mailoutbox[0].to == [owner_org.owner.email]
    assert mailoutbox[0].subject == "Reset your MQTT Cloud password"
    # The link is built on PUBLIC_URL, never on the Host header the caller sent.
    assert "https://console.mqtt-cloud.example/console/password-reset/" in mailoutbox[0].body
    assert "evil.example" not in mailoutbox[0].body


def test_password_reset_takes_as_long_for_an_unknown_address_as_for_an_account_when_the_relay_is_slow(
    client, owner_org, settings
):
    """Were the email sent inside the request, only for an existing account, a relay that takes a second per message
    would make an account's answer a second slower than an unknown address's."""
    smtp = SmtpReceiver(delay=1.0)
    smtp.start()
    smtp.use_in(settings)
    try:
        started = time.monotonic()
        assert client.post("/console/password-reset", {"email": "nobody@example.com"}).status_code == 302
        unknown = time.monotonic() - started
        started = time.monotonic()
        assert client.post("/console/password-reset", {"email": owner_org.owner.email}).status_code == 302
        known = time.monotonic() - started
    finally:
        smtp.close()
    assert known - unknown < 0.5, f"an account answers {known - unknown:.2f} s slower than an unknown address"


def test_password_reset_reaches_an_account_that_never_had_a_password(client, mailoutbox, tasks_inline):
    user = User.objects.create_user("operator-made@example.com")  # create_organization without --password
    assert not user.has_usable_password()
    with tasks_inline():
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


def test_password_reset_ends_every_session_of_the_user(client, owner_org, mailoutbox, tasks_inline):
    signed_in = Client()
    signed_in.force_login(owner_org.owner)
    assert signed_in.get(f"/console/o/{owner_org.id}").status_code == 200
    with tasks_inline():
        client.post("/console/password-reset", {"email": owner_org.owner.email})
    form = client.get(_link(mailoutbox[0], "/console/password-reset/"), follow=True)
    client.post(
        form.redirect_chain[-1][0], {"new_password1": "another passphrase!", "new_password2": "another passphrase!"}
    )
    assert signed_in.get(f"/console/o/{owner_org.id}")["Location"].startswith("/console/login")


def test_password_reset_link_sets_no_password_when_the_account_was_deactivated_after_it_was_sent(
    client, owner_org, mailoutbox, tasks_inline
):
    from accounts import services as account_services

    user = owner_org.owner
    with tasks_inline():
        client.post("/console/password-reset", {"email": user.email})
    link = _link(mailoutbox[0], "/console/password-reset/")
    account_services.user_set_active(user=user, actor=None, active=False)

    form = client.get(link, follow=True)
    assert "new_password1" not in form.content.decode()
    refused = client.post(
        form.redirect_chain[-1][0] if form.redirect_chain else link,
        {"new_password1": "a takeover passphrase", "new_password2": "a takeover passphrase"},
    )
    assert refused.status_code == 200 and "invalid" in refused.content.decode().lower()
    user.refresh_from_db()
    assert not user.check_password("a takeover passphrase")
    assert not AuditEvent.objects.filter(action="user.password_change", actor=user).exists()


@pytest.fixture
def worker_smtp(smtp_receiver, monkeypatch):
    """The SMTP server the worker started after this fixture sends through (it reads EMAIL_URL at start)."""
    monkeypatch.setenv("EMAIL_URL", smtp_receiver.url)
    return smtp_receiver


def test_password_reset_mails_an_address_at_most_five_times_an_hour_when_asked_again_and_again(
    client, owner_org, mailoutbox, tasks_inline
):
    """The form is public: without a limit anyone could flood an account holder's mailbox with reset links."""
    email = owner_org.owner.email
    with tasks_inline():
        answers = [
            client.post("/console/password-reset", {"email": email if n % 2 else email.upper()}) for n in range(20)
        ]
    assert {(a.status_code, a["Location"]) for a in answers} == {(302, "/console/password-reset/sent")}
    assert len(mailoutbox) == 5, f"{len(mailoutbox)} reset emails sent to one address by 20 requests"


def test_signup_mails_an_address_at_most_five_times_an_hour_when_asked_again_and_again(
    client, owner_org, mailoutbox, tasks_inline
):
    """Anyone's address, with an account or not, could be flooded with sign-up emails from the public form."""
    with tasks_inline():
        for email in ("victim@example.org", owner_org.owner.email):
            answers = [client.post("/console/signup", {**NEW, "email": email}) for _ in range(12)]
            assert {(a.status_code, a["Location"]) for a in answers} == {(302, "/console/signup/sent")}
    sent = [m.to[0] for m in mailoutbox]
    assert sent.count("victim@example.org") == 5, f"{sent.count('victim@example.org')} sign-up emails to one address"
    assert sent.count(owner_org.owner.email) == 5, f"{sent.count(owner_org.owner.email)} notes to an account holder"


@pytest.mark.slow
def test_signup_and_reset_emails_are_sent_by_the_worker_when_requested(worker_smtp, celery_worker, owner_org):
    """The task boundary for real: the request only enqueues; a Celery worker (another process, on the test Redis)
    looks the address up and sends through a real SMTP server; the link it sent creates the account."""
    client = Client()
    assert client.post("/console/signup", NEW).status_code == 302
    assert client.post("/console/password-reset", {"email": "nobody@example.com"}).status_code == 302
    assert client.post("/console/password-reset", {"email": owner_org.owner.email}).status_code == 302
    messages = worker_smtp.wait_for(2)
    time.sleep(1)  # time for the unknown address's task too: it sends nothing
    assert len(worker_smtp.messages) == 2, celery_worker.logs()
    by_recipient = {m["To"]: m for m in messages}
    assert set(by_recipient) == {"ada@example.com", owner_org.owner.email}
    assert "/console/password-reset/" in body(by_recipient[owner_org.owner.email])
    link = re.search(r"https?://[^/\s]+(/console/signup/confirm\S*)", body(by_recipient["ada@example.com"])).group(1)
    token = link.split("token=", 1)[1]
    assert client.post("/console/signup/confirm", {"token": token, "password": PASSPHRASE}).status_code == 302
    assert User.objects.get(email="ada@example.com").check_password(PASSPHRASE)
