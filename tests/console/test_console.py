import re

import pytest

from audit.models import AuditEvent
from organizations.models import ApiKey, Membership
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: the invitation e-mail task runs inline

pytestmark = pytest.mark.django_db


def test_login_and_logout(client, owner_org):
    assert client.get("/").status_code == 302
    response = client.post(
        "/console/login", {"username": owner_org.owner.email, "password": "correct horse battery staple"}
    )
    assert response.status_code == 302
    assert client.get("/", follow=True).status_code == 200
    client.post("/console/logout")
    assert client.get("/").status_code == 302


def test_password_reset_by_email(client, owner_org, mailoutbox, tasks_inline):
    with tasks_inline():  # the email goes from a Celery task
        client.post("/console/password-reset", {"email": owner_org.owner.email})
    assert len(mailoutbox) == 1
    link = re.search(r"http://\S+/console/password-reset/\S+", mailoutbox[0].body).group(0)
    path = link.split("testserver", 1)[-1] if "testserver" in link else "/" + link.split("/", 3)[3]
    form = client.get(path, follow=True)
    assert form.status_code == 200 and b"new_password1" in form.content
    done = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "another long passphrase", "new_password2": "another long passphrase"},
    )
    assert done.status_code == 302
    owner_org.owner.refresh_from_db()
    assert owner_org.owner.check_password("another long passphrase")


def test_api_key_page_shows_secret_once_and_audits_creation(client, owner_org):
    client.force_login(owner_org.owner)
    url = f"/console/o/{owner_org.id}/api-keys"
    response = client.post(url, {"new-name": "From console", "new-role": "auditor"}, follow=True)
    assert response.status_code == 200
    secret = re.search(rb"cpk_[\w-]+", response.content).group(0).decode()
    key = ApiKey.objects.get(name="From console")
    assert secret.startswith(f"cpk_{key.prefix}_")
    assert secret.encode() not in client.get(url).content
    event = AuditEvent.objects.get(action="api_key.create", target_id=key.public_id)
    assert event.via == "console" and event.actor == owner_org.owner


def test_console_hides_other_organizations(client, org_factory):
    mine, other = org_factory(), org_factory()
    client.force_login(mine.owner)
    assert client.get(f"/console/o/{other.id}").status_code == 404
    assert client.get(f"/console/o/{other.id}/api-keys").status_code == 404
    assert client.get(f"/console/o/{mine.id}/p/{other.default_project.public_id}").status_code == 404


def test_project_user_cannot_create_keys_in_console(client, owner_org):
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    assert client.get(f"/console/o/{owner_org.id}/api-keys").status_code == 403
    assert (
        client.post(f"/console/o/{owner_org.id}/api-keys", {"new-name": "k", "new-role": "project_user"}).status_code
        == 403
    )
    assert client.get(f"/console/o/{owner_org.id}").status_code == 200


def test_invitation_can_be_accepted_in_console(
    client, owner_org, django_capture_on_commit_callbacks, mailoutbox, eager
):
    from organizations import services

    with django_capture_on_commit_callbacks(execute=True):
        services.invitation_create(
            organization=owner_org.organization, actor=None, email="joiner@example.com", roles=["auditor"]
        )
    path = "/" + re.search(r"https?://[^/]+/(\S+)", mailoutbox[0].body).group(1)
    token = path.split("token=")[1]
    assert b"Join" in client.get(path).content
    response = client.post("/console/invitations/accept", {"token": token, "password": "a fine long passphrase"})
    assert response.status_code == 302
    assert Membership.objects.get(user__email="joiner@example.com").roles == ["auditor"]
