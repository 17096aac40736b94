import datetime
import re

import pytest
from django.utils import timezone

from accounts.models import User
from organizations.models import Invitation, Membership, Organization
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: the invitation e-mail task runs inline

pytestmark = pytest.mark.django_db


@pytest.fixture
def mailoutbox(mailoutbox, eager):
    """The invitation e-mail is a task's: run inline here, so the outbox holds it."""
    return mailoutbox


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


def test_invitation_of_a_removed_administrator_is_revoked_and_refused_when_its_link_is_used(
    owner_org, key_client, api, mailoutbox
):
    """An Administrator invites a second address of theirs as Administrator, is removed, and must not come back
    through the link."""
    from audit.models import AuditEvent
    from organizations import access, services

    admin, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    assert (
        _invite(key_client(secret), owner_org.id, email="second@example.net", roles=["administrator"]).status_code
        == 201
    )
    services.membership_remove(membership=membership, actor=access.Principal(user=owner_org.owner))

    body = {"token": _token_from(mailoutbox[0]), "password": "a fine long passphrase"}
    response = api.post("/api/v1/invitations/accept", body, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == "token"
    assert not Membership.objects.filter(user__email="second@example.net").exists()
    assert Invitation.objects.get(email="second@example.net").status == "revoked"
    removal = AuditEvent.objects.get(action="member.remove")
    assert removal.summary["revoked_invitations"] == ["second@example.net"]


def test_invitation_grants_only_what_its_sender_still_may_when_the_sender_was_demoted(
    owner_org, key_client, api, mailoutbox
):
    from organizations import access, services

    admin, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    assert (
        _invite(key_client(secret), owner_org.id, email="second@example.net", roles=["administrator"]).status_code
        == 201
    )
    services.membership_update(
        membership=membership, actor=access.Principal(user=owner_org.owner), roles=["accountant"]
    )

    body = {"token": _token_from(mailoutbox[0]), "password": "a fine long passphrase"}
    refused = api.post("/api/v1/invitations/accept", body, format="json")

    assert refused.status_code == 400, refused.content
    assert "no longer holds" in refused.json()["errors"][0]["message"]
    assert not Membership.objects.filter(user__email="second@example.net").exists()
    # The Owner's own invitation to the same address works.
    mailoutbox.clear()
    assert _invite(key_client(owner_org.owner_secret), owner_org.id, email="second@example.net").status_code == 201
    body["token"] = _token_from(mailoutbox[0])
    assert api.post("/api/v1/invitations/accept", body, format="json").status_code == 201


def test_invitation_resent_by_an_owner_is_accepted_when_its_first_sender_was_demoted_since(
    owner_org, key_client, api, mailoutbox
):
    """Sending an invitation again is a new decision: it is judged by who sends it now, and its link then holds as
    long as they may still grant its roles, whatever became of whoever sent it first."""
    from audit.models import AuditEvent
    from organizations import access, services

    admin, membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    assert (
        _invite(key_client(secret), owner_org.id, email="second@example.net", roles=["administrator"]).status_code
        == 201
    )
    services.membership_update(
        membership=membership, actor=access.Principal(user=owner_org.owner), roles=["accountant"]
    )
    invitation = Invitation.objects.get(email="second@example.net")

    with _capture(execute=True):
        resent = key_client(owner_org.owner_secret).post(
            f"/api/v1/organizations/{owner_org.id}/invitations/{invitation.public_id}/resend"
        )
    assert resent.status_code == 200, resent.content

    body = {"token": _token_from(mailoutbox[-1]), "password": "a fine long passphrase"}
    accepted = api.post("/api/v1/invitations/accept", body, format="json")

    assert accepted.status_code == 201, accepted.content
    assert Membership.objects.get(user__email="second@example.net").roles == ["administrator"]
    assert resent.json()["invited_by"] == owner_org.owner.email
    event = AuditEvent.objects.get(action="invitation.resend", target_id=invitation.public_id)
    assert event.actor == owner_org.owner and event.summary["invited_by"] == [admin.email, owner_org.owner.email]


def test_invitation_is_not_resent_when_the_caller_may_not_grant_its_roles(owner_org, key_client, mailoutbox):
    """An Administrator may not send again an invitation to be an Owner, whoever sent it first."""
    from organizations import services

    invitation, _token = services.invitation_create(
        organization=owner_org.organization,
        actor=None,
        email="second@example.net",
        roles=["owner"],
    )
    admin, _membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    mailoutbox.clear()
    with _capture(execute=True):
        refused = key_client(secret).post(
            f"/api/v1/organizations/{owner_org.id}/invitations/{invitation.public_id}/resend"
        )
    assert refused.status_code == 403, refused.content
    assert refused.json()["type"].endswith("/role-too-high")
    assert Invitation.objects.get(pk=invitation.pk).token_hash == invitation.token_hash
    assert mailoutbox == []


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


def test_invitation_request_never_waits_on_smtp_and_its_link_crosses_redis_sealed(owner_org, key_client, settings):
    """The e-mail is a task's: the request answers at once whatever the mail server does (this one accepts the
    connection and never greets), and the message on the broker (the test Redis, real) carries the link's token
    sealed, never readable."""
    import base64
    import json
    import time

    import redis

    from controlplane import crypto
    from organizations.services import _hash
    from tests.mail import send_to_port
    from tests.outage import silent_port

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("default")

    with silent_port() as port:
        send_to_port(settings, port)
        settings.EMAIL_TIMEOUT = 30
        started = time.monotonic()
        response = _invite(key_client(owner_org.owner_secret), owner_org.id)
        assert response.status_code == 201 and time.monotonic() - started < 2
    invitation = Invitation.objects.get(public_id=response.json()["id"])
    assert invitation.status == "pending"
    [raw] = broker.lrange("default", 0, -1)
    broker.delete("default")
    message = json.loads(raw)
    assert message["headers"]["task"] == "organizations.send_invitation_email"
    (invitation_id, sealed), _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    token = crypto.decrypt_str(sealed)
    assert invitation_id == invitation.pk and _hash(token) == invitation.token_hash
    assert token.encode() not in raw and token.encode() not in base64.b64decode(message["body"])


def test_invitation_email_is_retried_while_the_mail_server_hangs_up_and_a_stale_link_is_never_sent(owner_org, settings):
    import socket
    import threading

    from controlplane import crypto
    from organizations import services, tasks
    from tests.mail import SmtpReceiver, send_to_port

    invitation, token = services.invitation_create(
        organization=owner_org.organization, actor=None, email="new.person@example.com", roles=["auditor"]
    )
    task = tasks.send_invitation_email
    hangs_up = socket.socket()  # a mail server that takes each connection and closes it at once
    hangs_up.bind(("127.0.0.1", 0))
    hangs_up.listen(8)
    connections = []

    def serve():
        while True:
            try:
                conn, _ = hangs_up.accept()
            except OSError:
                return
            connections.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    send_to_port(settings, hangs_up.getsockname()[1])
    settings.EMAIL_TIMEOUT = 2
    # apply() runs each retry at once, inline: from the last but one try, the task runs twice, then gives up.
    refused = task.apply(args=[invitation.pk, crypto.encrypt_str(token)], retries=task.max_retries - 1)
    hangs_up.close()
    assert refused.state == "FAILURE" and isinstance(refused.result, OSError)
    assert len(connections) == 2

    smtp = SmtpReceiver()
    smtp.start()
    smtp.use_in(settings)
    try:
        assert task.apply(args=[invitation.pk, crypto.encrypt_str(token)]).result is True
        [mail] = smtp.wait_for(1)
        assert mail["To"] == "new.person@example.com" and f"token={token}" in mail.get_content()
        # Sent again with a new link: a message still carrying the old one sends nothing.
        invitation, new_token = services.invitation_resend(invitation=invitation, actor=None)
        assert task.apply(args=[invitation.pk, crypto.encrypt_str(token)]).result is False
        services.invitation_revoke(invitation=invitation, actor=None)
        assert task.apply(args=[invitation.pk, crypto.encrypt_str(new_token)]).result is False
    finally:
        smtp.close()
    assert len(smtp.messages) == 1


@pytest.mark.django_db(transaction=True)
def test_revoke_is_refused_when_the_invitation_was_accepted_meanwhile(owner_org):
    """The view loaded the invitation while it was pending; it was accepted before the revocation ran. The revocation
    reads it again under its lock and refuses: the invitee is a member, and the invitation stays accepted only."""
    from controlplane.errors import Conflict
    from organizations import services
    from tests.races import run_elsewhere

    org = owner_org.organization
    invitation, token = services.invitation_create(
        organization=org, actor=None, email="late@example.com", roles=["auditor"]
    )
    loaded = Invitation.objects.get(pk=invitation.pk)  # the view's get_object()

    run_elsewhere(lambda: services.invitation_accept(token=token, password="correct horse battery staple 9"))

    with pytest.raises(Conflict, match="accepted"):
        services.invitation_revoke(invitation=loaded, actor=None)
    assert Invitation.objects.get(pk=invitation.pk).status == "accepted"
    assert Invitation.objects.get(pk=invitation.pk).revoked_at is None
    assert Membership.objects.filter(organization=org, user__email="late@example.com").exists()


@pytest.mark.django_db(transaction=True)
def test_newer_invitation_replaces_the_other_when_two_to_one_address_are_sent_at_once(owner_org):
    """Invitation creation is serialized per organization: the second one, arriving while the first is being written,
    waits for it, then replaces it (the newest link is the one that works), rather than hitting
    invitation_open_unique (an IntegrityError: a 500)."""
    from unittest import mock

    from organizations import services
    from tests.races import once, run_elsewhere_until_blocked

    org = owner_org.organization
    second = {}

    def invite_again():
        second["finish"] = run_elsewhere_until_blocked(
            lambda: services.invitation_create(
                organization=org, actor=None, email="twice@example.com", roles=["auditor"]
            )
        )

    with mock.patch.object(Invitation, "full_clean", once(Invitation.full_clean, invite_again)):
        first, _token = services.invitation_create(
            organization=org, actor=None, email="twice@example.com", roles=["auditor"]
        )
    newer, _token = second["finish"]()

    assert Invitation.objects.get(pk=first.pk).status == "revoked"
    assert Invitation.objects.get(pk=newer.pk).status == "pending"


@pytest.mark.django_db(transaction=True)
def test_second_of_two_invitations_at_once_is_a_conflict_on_email_when_nothing_serializes_them(owner_org):
    """The unique constraint is the last line behind the lock: were two creations ever to pass it together, the loser
    answers 409 naming the email, not a 500."""
    from unittest import mock

    from controlplane.errors import Conflict
    from organizations import services
    from tests.races import once, run_elsewhere

    org = owner_org.organization

    def invite_again():
        run_elsewhere(
            lambda: services.invitation_create(
                organization=org, actor=None, email="twice@example.com", roles=["auditor"]
            )
        )

    with (
        mock.patch.object(services, "_lock_memberships", lambda organization: None),
        mock.patch.object(Invitation, "save", once(Invitation.save, invite_again)),
        pytest.raises(Conflict) as refused,
    ):
        services.invitation_create(organization=org, actor=None, email="twice@example.com", roles=["auditor"])
    assert [error.field for error in refused.value.errors] == ["email"]
    assert Invitation.objects.filter(organization=org, email="twice@example.com").count() == 1


def test_invitation_of_a_deactivated_administrator_is_refused_while_the_account_is_deactivated(
    owner_org, key_client, api, mailoutbox
):
    """An Administrator invites a second address of theirs, then staff deactivate the account (taken over, or a
    leaver): the link must not bring them back in while the account that sent it may do nothing, as its API keys
    may do nothing."""
    from accounts import services as account_services

    admin, _membership = owner_org.add_member(roles=["administrator"])
    _key, secret = owner_org.key_for(admin, role="administrator")
    assert (
        _invite(key_client(secret), owner_org.id, email="second@example.net", roles=["administrator"]).status_code
        == 201
    )
    account_services.user_set_active(user=admin, actor=None, active=False)

    body = {"token": _token_from(mailoutbox[0]), "password": "a fine long passphrase"}
    refused = api.post("/api/v1/invitations/accept", body, format="json")

    assert refused.status_code == 400, refused.content
    assert refused.json()["errors"][0]["field"] == "token"
    assert not Membership.objects.filter(user__email="second@example.net").exists()
    assert not User.objects.filter(email="second@example.net").exists()


@pytest.mark.django_db(transaction=True)
def test_second_of_two_new_accounts_for_one_address_at_once_is_told_to_sign_in_when_accepting(org_factory):
    """Two organizations invite one address that has no account; both links are followed at once (two tabs, or one
    link and a sign-up). Each acceptance locks only its own invitation, so both find no account and create one: the
    second waits on the first's row in the unique email index, then failed with an IntegrityError (a 500). It is told
    what it would be told a moment later: an account exists, sign in to accept."""
    from django.db import transaction

    from controlplane.errors import ValidationFailed
    from organizations import services
    from tests.races import run_elsewhere_until_blocked

    first_org, second_org = org_factory(), org_factory()
    _first, first_token = services.invitation_create(
        organization=first_org.organization, actor=None, email="both@example.com", roles=["auditor"]
    )
    second, second_token = services.invitation_create(
        organization=second_org.organization, actor=None, email="both@example.com", roles=["accountant"]
    )
    with transaction.atomic():
        services.invitation_accept(token=first_token, password="correct horse battery staple 9")
        finish = run_elsewhere_until_blocked(
            lambda: services.invitation_accept(token=second_token, password="another long passphrase 7")
        )
    with pytest.raises(ValidationFailed) as refused:
        finish()
    assert [(e.field, e.message) for e in refused.value.errors] == [
        ("token", "An account for both@example.com exists: sign in to accept the invitation.")
    ]
    assert User.objects.filter(email="both@example.com").count() == 1
    assert Invitation.objects.get(pk=second.pk).status == "pending"
    assert not Membership.objects.filter(organization=second_org.organization).exclude(user=second_org.owner).exists()


def test_replaced_invitation_is_audited_as_revoked_when_a_new_one_goes_to_the_same_address(owner_org, key_client):
    """A second invitation to an address revokes the open one: that revocation is a change like any other, and the
    audit log names it on the invitation it revoked (whoever searches that invitation finds why its link died)."""
    from audit.models import AuditEvent

    client = key_client(owner_org.owner_secret)
    first = _invite(client, owner_org.id).json()["id"]
    second = _invite(client, owner_org.id, roles=["auditor"]).json()["id"]
    assert Invitation.objects.get(public_id=first).status == "revoked"
    event = AuditEvent.objects.get(action="invitation.revoke", target_id=first)
    assert event.summary == {"email": "new.person@example.com", "replaced_by": second}
    assert event.actor == owner_org.owner and event.api_key_prefix == owner_org.owner_key.prefix


@pytest.mark.django_db(transaction=True)
def test_grant_on_a_project_deleted_while_accepting_is_skipped_when_the_invitation_is_accepted(owner_org):
    """An invitation with a project grant is accepted while that project is being deleted: the acceptance read the
    project before the deletion committed and wrote the grant, which met the foreign key to a deleted row at commit (an
    IntegrityError, a 500). It waits for the deletion instead, then skips the project, as it skips one deleted
    earlier."""
    from django.db import transaction

    from organizations import services
    from projects import services as project_services
    from projects.models import Project, ProjectGrant
    from tests.races import run_elsewhere_until_blocked

    org = owner_org.organization
    project = project_services.project_create(organization=org, actor=None, name="lab")
    _invitation, token = services.invitation_create(
        organization=org,
        actor=None,
        email="grant@example.com",
        roles=["auditor"],
        project_grants=[{"project": project.public_id, "role": "project_user"}],
    )
    with transaction.atomic():
        project_services.project_delete(project=Project.objects.get(pk=project.pk), actor=None)
        finish = run_elsewhere_until_blocked(
            lambda: services.invitation_accept(token=token, password="correct horse battery staple 9")
        )
    membership = finish()
    assert membership.roles == ["auditor"]
    assert not ProjectGrant.objects.filter(membership=membership).exists()


@pytest.mark.django_db(transaction=True)
def test_acceptance_is_refused_in_words_when_the_organization_is_deleted_at_the_same_moment(owner_org):
    """The invitee follows the link while the Owner deletes the organization: the acceptance waits for the deletion
    (it takes the organization's lock first, as the deletion does) and is told the organization was deleted."""
    from django.db import transaction

    from controlplane.errors import ValidationFailed
    from organizations import access, services
    from tests.races import run_elsewhere_until_blocked

    org = owner_org.organization
    _invitation, token = services.invitation_create(
        organization=org, actor=None, email="late@example.com", roles=["auditor"]
    )
    with transaction.atomic():
        services.organization_delete(
            organization=org, actor=access.Principal(user=owner_org.owner), confirm_name=org.name
        )
        finish = run_elsewhere_until_blocked(
            lambda: services.invitation_accept(token=token, password="correct horse battery staple 9")
        )
    with pytest.raises(ValidationFailed) as refused:
        finish()
    assert [(e.field, e.message) for e in refused.value.errors] == [
        ("token", f"{org.name} has been deleted: this invitation can no longer be accepted.")
    ]
    assert not Membership.objects.filter(organization=org).exists()
    assert not User.objects.filter(email="late@example.com").exists()


@pytest.mark.django_db(transaction=True)
def test_member_who_accepted_first_is_removed_and_named_when_the_organization_is_deleted_at_the_same_moment(
    owner_org,
):
    """The acceptance commits first: the deletion waits for it on the organization's lock, then removes the new
    member with the others and names them in its audit record (it read the members before the acceptance had
    committed, and removed one its record did not name)."""
    from django.db import transaction

    from audit.models import AuditEvent
    from organizations import access, services
    from tests.races import run_elsewhere_until_blocked

    org = owner_org.organization
    _invitation, token = services.invitation_create(
        organization=org, actor=None, email="early@example.com", roles=["auditor"]
    )
    with transaction.atomic():
        services.invitation_accept(token=token, password="correct horse battery staple 9")
        finish = run_elsewhere_until_blocked(
            lambda: services.organization_delete(
                organization=Organization.objects.get(pk=org.pk),
                actor=access.Principal(user=owner_org.owner),
                confirm_name=org.name,
            )
        )
    finish()
    assert not Membership.objects.filter(organization=org).exists()
    event = AuditEvent.objects.get(organization=org, action="organization.delete")
    assert event.summary["members"] == sorted([owner_org.owner.email, "early@example.com"])
