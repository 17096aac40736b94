import datetime
import re

import pytest
from django.utils import timezone

from accounts.models import User
from organizations.models import Invitation, Membership, Organization

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _run_on_commit(django_capture_on_commit_callbacks):
    """Emails go out on commit; inside a test transaction the callbacks must be run by hand."""
    global _capture
    _capture = django_capture_on_commit_callbacks
    yield


def _invite(client, org_id, **body):
    with _capture(execute=True):
        return client.post(
            f"/api/v1/organizations/{org_id}/invitations",
            {"email": "new.person@example.com", "roles": ["accountant"], **body},
            format="json",
        )


def _token_from(mail) -> str:
    return re.search(r"token=([\w-]+)", mail.body).group(1)


def test_invitee_gets_an_account_and_roles_when_accepting(owner_org, key_client, api, mailoutbox):
    response = _invite(
        key_client(owner_org.owner_secret),
        owner_org.id,
        project_grants=[{"project": owner_org.default_project.public_id, "role": "project_user"}],
    )
    assert response.status_code == 201, response.content
    assert mailoutbox[0].to == ["new.person@example.com"]
    accepted = api.post(
        "/api/v1/invitations/accept",
        {"token": _token_from(mailoutbox[0]), "password": "a fine long passphrase", "full_name": "New"},
        format="json",
    )
    assert accepted.status_code == 201, accepted.content
    membership = Membership.objects.get(user__email="new.person@example.com", organization=owner_org.organization)
    assert membership.roles == ["accountant"]
    assert membership.grants.get().role == "project_user"
    assert User.objects.get(email="new.person@example.com").check_password("a fine long passphrase")


def test_existing_user_is_linked_when_accepting_signed_in(owner_org, org_factory, key_client, api, mailoutbox):
    other = org_factory()
    _invite(key_client(owner_org.owner_secret), owner_org.id, email=other.owner.email)
    api.force_login(other.owner)
    response = api.post("/api/v1/invitations/accept", {"token": _token_from(mailoutbox[0])}, format="json")
    assert response.status_code == 201, response.content
    assert Membership.objects.filter(user=other.owner, organization=owner_org.organization).exists()


def test_token_cannot_be_used_twice(owner_org, key_client, api, mailoutbox):
    _invite(key_client(owner_org.owner_secret), owner_org.id)
    token = _token_from(mailoutbox[0])
    body = {"token": token, "password": "a fine long passphrase"}
    assert api.post("/api/v1/invitations/accept", body, format="json").status_code == 201
    second = api.post("/api/v1/invitations/accept", body, format="json")
    assert second.status_code == 400
    assert second.json()["errors"][0]["field"] == "token"
    assert Membership.objects.filter(user__email="new.person@example.com").count() == 1


def test_expired_invitation_is_refused(owner_org, key_client, api, mailoutbox):
    _invite(key_client(owner_org.owner_secret), owner_org.id)
    Invitation.objects.update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    response = api.post(
        "/api/v1/invitations/accept",
        {"token": _token_from(mailoutbox[0]), "password": "a fine long passphrase"},
        format="json",
    )
    assert response.status_code == 400
    assert "expired" in response.json()["errors"][0]["message"]
    assert not User.objects.filter(email="new.person@example.com").exists()


def test_invalid_email_is_refused_when_inviting(owner_org, key_client):
    response = _invite(key_client(owner_org.owner_secret), owner_org.id, email="not-an-email")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "email"


def test_existing_member_is_refused_when_invited_again(owner_org, key_client):
    response = _invite(key_client(owner_org.owner_secret), owner_org.id, email=owner_org.owner.email)
    assert response.status_code == 409


def test_accountant_cannot_invite_an_administrator(owner_org, key_client):
    user, _ = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(user, role="administrator")
    response = _invite(key_client(secret), owner_org.id, roles=["owner"])
    assert response.status_code == 403
    assert not Invitation.objects.exists()


def test_new_invitation_replaces_the_open_one_for_the_same_address(owner_org, key_client, api, mailoutbox):
    client = key_client(owner_org.owner_secret)
    _invite(client, owner_org.id)
    _invite(client, owner_org.id, roles=["auditor"])
    old = api.post(
        "/api/v1/invitations/accept",
        {"token": _token_from(mailoutbox[0]), "password": "a fine long passphrase"},
        format="json",
    )
    assert old.status_code == 400
    new = api.post(
        "/api/v1/invitations/accept",
        {"token": _token_from(mailoutbox[1]), "password": "a fine long passphrase"},
        format="json",
    )
    assert new.status_code == 201
    assert Membership.objects.get(user__email="new.person@example.com").roles == ["auditor"]


def test_invitation_email_is_sent_on_one_line_when_a_stored_organization_name_holds_a_line_break(
    owner_org, key_client, mailoutbox
):
    """Names are refused line breaks now, but rows stored before keep theirs: the subject is flattened, or send_mail
    would refuse the header (BadHeaderError) and the invitee never get the link."""
    Organization.objects.filter(pk=owner_org.organization.pk).update(name="Acme\r\nBcc: victim@example.com")
    response = _invite(key_client(owner_org.owner_secret), owner_org.id)
    assert response.status_code == 201
    [mail] = mailoutbox
    assert mail.subject == "You are invited to Acme Bcc: victim@example.com"
    assert mail.to == ["new.person@example.com"] and not mail.bcc


@pytest.mark.django_db(transaction=True)
def test_invitation_answers_201_and_stays_open_when_its_email_cannot_be_sent(owner_org, key_client, settings, caplog):
    """The email goes after the invitation is committed: a mail server that refuses it must not turn a change that was
    made into a 500 (the caller would retry and revoke the first link); it is logged, and the invitation can be sent
    again."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connection is refused
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
    response = key_client(owner_org.owner_secret).post(
        f"/api/v1/organizations/{owner_org.id}/invitations",
        {"email": "new.person@example.com", "roles": ["accountant"]},
        format="json",
    )
    assert response.status_code == 201, response.content[:300]
    invitation = Invitation.objects.get(email="new.person@example.com")
    assert invitation.status == "pending"
    assert any("on_commit" in record.getMessage() for record in caplog.records if record.levelname == "ERROR")


def test_invitation_is_made_in_seconds_and_can_be_sent_again_when_the_mail_server_never_answers(
    owner_org, key_client, settings, caplog
):
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts the connection; nothing ever says the SMTP greeting
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", silent.getsockname()[1]
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_TIMEOUT, settings.EMAIL_REQUEST_TIMEOUT = 30, 1
        client = key_client(owner_org.owner_secret)
        started = time.monotonic()
        response = _invite(client, owner_org.id)
        # The request waited for the mail server at most EMAIL_REQUEST_TIMEOUT, not the workers' EMAIL_TIMEOUT (past
        # the web server's 30 s, which would have dropped the connection of a request whose invitation was made).
        assert response.status_code == 201 and time.monotonic() - started < 5
        assert "timed out" in caplog.text
        invitation = Invitation.objects.get(public_id=response.json()["id"])
        with _capture(execute=True):
            again = client.post(f"/api/v1/organizations/{owner_org.id}/invitations/{invitation.public_id}/resend")
        assert again.status_code == 200
