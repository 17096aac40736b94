"""Bad input on console pages: each case shows a clear message on the page (beside its field where it has one), never
a 500, and changes nothing; a double submit changes things once."""

import datetime
import html
import re

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from deployments.models import AclRule, Deployment, MqttUser, RateLimitPolicy
from organizations.models import Invitation
from projects.models import Project
from tests.console.helpers import console_path, deployment, settle

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, owner_org):
    client.force_login(owner_org.owner)
    return owner_org


def _field_error(response, field_id, text):
    """The message is rendered in the field's own error list (Django links it to the input by id)."""
    body = html.unescape(response.content.decode())
    match = re.search(rf'<ul class="errorlist" id="{field_id}_error">(.*?)</ul>', body, re.S)
    assert match, f"no error list for {field_id} in the page"
    assert text in match.group(1), match.group(1)


def test_project_name_is_refused_when_empty_too_long_or_taken(client, owner):
    url = f"/console/o/{owner.id}"
    empty = client.post(url, {"new-name": "   "})
    assert empty.status_code == 400
    _field_error(empty, "id_new-name", "This field is required.")
    long = client.post(url, {"new-name": "x" * 101})
    assert long.status_code == 400
    _field_error(long, "id_new-name", "no more than 100 characters")
    clash = client.post(url, {"new-name": "default PROJECT"})
    assert clash.status_code == 409
    _field_error(clash, "id_new-name", "already exists")
    nul = client.post(url, {"new-name": "bad\x00name"})
    assert nul.status_code == 400
    assert Project.objects.filter(organization=owner.organization).count() == 1


def test_deployment_wizard_refuses_bad_names_when_creating(client, owner):
    url = f"/console/o/{owner.id}/p/{owner.default_project.public_id}/deployments/new"
    form = {"plan": "dedicated", "region": "local", "tier": "1k", "billing_cycle": "hourly"}
    assert client.get(url).status_code == 200
    empty = client.post(url, {**form, "name": ""})
    _field_error(empty, "id_name", "This field is required.")
    long = client.post(url, {**form, "name": "n" * 65})
    _field_error(long, "id_name", "no more than 64 characters")
    deployment(owner.default_project, name="plant")
    clash = client.post(url, {**form, "name": "PLANT"})
    assert clash.status_code == 409
    assert "already exists in this project" in clash.content.decode()
    unknown_tier = client.post(url, {**form, "tier": "999k", "name": "other"})
    assert unknown_tier.status_code == 400
    assert Deployment.objects.filter(project=owner.default_project).count() == 1


def test_invitation_is_refused_when_email_invalid_member_existing_or_role_too_high(client, owner):
    url = f"/console/o/{owner.id}/members"
    invalid = client.post(url, {"invite-email": "not-an-email", "invite-role": "auditor"})
    assert invalid.status_code == 400
    _field_error(invalid, "id_invite-email", "Enter a valid email address.")
    existing = client.post(url, {"invite-email": owner.owner.email.upper(), "invite-role": "auditor"})
    assert existing.status_code == 409
    _field_error(existing, "id_invite-email", "already a member")

    admin, _ = owner.add_member(roles=["administrator"])
    client.force_login(admin)
    page = client.get(url).content.decode()
    assert 'value="administrator"' in page and 'value="owner"' not in page  # only roles within one's own
    too_high = client.post(url, {"invite-email": "boss@example.com", "invite-role": "owner"})
    assert too_high.status_code == 400  # not a choice the form offers
    assert "Select a valid choice" in too_high.content.decode()
    assert not Invitation.objects.filter(email="boss@example.com").exists()


def test_invitation_is_refused_with_403_when_the_caller_cannot_manage_members(client, owner):
    project_admin, _ = owner.add_member(project_grants=[(owner.default_project, "project_administrator")])
    client.force_login(project_admin)
    assert client.get(f"/console/o/{owner.id}/members").status_code == 403  # no member:read, no page
    response = client.post(
        f"/console/o/{owner.id}/members", {"invite-email": "x@example.com", "invite-role": "project_user"}
    )
    assert response.status_code == 403
    assert not Invitation.objects.filter(email="x@example.com").exists()


def test_invitation_link_says_why_when_expired_or_already_used(client, owner, mailoutbox):
    from organizations import services

    invitation, token = services.invitation_create(
        organization=owner.organization, actor=None, email="late@example.com", roles=["auditor"]
    )
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - datetime.timedelta(minutes=1))
    client.logout()
    expired = client.get(f"/console/invitations/accept?token={token}")
    assert "This invitation expired." in expired.content.decode()
    refused = client.post("/console/invitations/accept", {"token": token, "password": "a fine long passphrase"})
    assert refused.status_code == 400 and "expired" in refused.content.decode()

    invitation, token = services.invitation_create(
        organization=owner.organization, actor=None, email="joiner@example.com", roles=["auditor"]
    )
    first = client.post("/console/invitations/accept", {"token": token, "password": "a fine long passphrase"})
    assert first.status_code == 302
    client.logout()
    reused = client.get(f"/console/invitations/accept?token={token}")
    assert "This invitation was already used." in reused.content.decode()
    assert "not valid" in client.get("/console/invitations/accept?token=nonsense").content.decode()


def test_acl_topic_with_hash_inside_is_refused_with_the_apis_message(client, owner):
    plant = deployment(owner.default_project)
    response = client.post(
        console_path(plant, "acl"), {"new-permission": "deny", "new-action": "publish", "new-topic": "a/#/b"}
    )
    assert response.status_code == 400
    _field_error(response, "id_new-topic", "'#' must be the last level of the topic filter")
    local_client_rule = client.post(
        console_path(plant, "acl"),
        {"new-permission": "deny", "new-action": "publish", "new-topic": "a/b", "new-client_id": "device-1"},
    )
    assert local_client_rule.status_code == 400
    _field_error(local_client_rule, "id_new-client_id", "not supported in this region")
    assert not AclRule.objects.filter(deployment=plant).exists()


def test_acl_topic_with_a_placeholder_is_refused_beside_the_topic_with_the_apis_message(client, owner):
    plant = deployment(owner.default_project)
    response = client.post(
        console_path(plant, "acl"),
        {"new-permission": "allow", "new-action": "publish", "new-topic": "devices/${username}/state"},
    )
    assert response.status_code == 400
    _field_error(response, "id_new-topic", "'${'")
    assert not AclRule.objects.filter(deployment=plant).exists()


def test_rate_limit_above_its_parent_is_refused_beside_the_field(client, owner):
    plant = deployment(owner.default_project)
    response = client.post(
        console_path(plant, "rate-limits"), {"global-messages_rate": "100", "zone-messages_rate": "500"}
    )
    assert response.status_code == 400
    _field_error(response, "id_zone-messages_rate", "exceeds its parent global messages_rate")
    assert "Parent: 100/s (global)" in response.content.decode()
    assert not RateLimitPolicy.objects.filter(deployment=plant).exists()
    saved = client.post(console_path(plant, "rate-limits"), {"global-messages_rate": "100", "zone-messages_rate": "50"})
    assert saved.status_code == 302
    assert RateLimitPolicy.objects.filter(deployment=plant).count() == 2


def test_rate_limit_beyond_the_integer_column_is_refused_beside_the_field_when_saved(client, owner):
    plant = deployment(owner.default_project)
    response = client.post(console_path(plant, "rate-limits"), {"global-max_conn_rate": "3000000000"})
    assert response.status_code == 400
    _field_error(response, "id_global-max_conn_rate", "Ensure this value is less than or equal to 2147483647.")
    assert not RateLimitPolicy.objects.filter(deployment=plant).exists()


def test_double_submitted_form_changes_things_once_when_the_key_repeats(client, owner):
    url = f"/console/o/{owner.id}"
    form = {"new-name": "Twice", "form_key": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"}
    first = client.post(url, form)
    second = client.post(url, form)
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"]
    assert second["Idempotent-Replayed"] == "true"
    assert Project.objects.filter(organization=owner.organization, name="Twice").count() == 1
    assert AuditEvent.objects.filter(action="project.create", summary__name="Twice").count() == 1
    reused = client.post(url, {**form, "new-name": "Other"})
    assert reused.status_code == 422
    assert "already submitted with other values" in reused.content.decode()
    assert not Project.objects.filter(name="Other").exists()


def test_stale_page_acting_on_a_deleted_deployment_gets_a_message_when_posting(client, owner):
    from deployments import services

    plant = settle(deployment(owner.default_project))
    services.deployment_delete(deployment=plant, actor=None)
    response = client.post(console_path(plant, "mqtt-users"), {"new-username": "late", "new-password": "late-secret"})
    assert response.status_code == 409
    assert "being deleted or was deleted" in response.content.decode()
    assert not MqttUser.objects.filter(deployment=plant).exists()
    stop = client.post(console_path(plant, "actions/stop"), follow=True)
    assert stop.status_code == 200
    assert "being deleted or was deleted" in stop.content.decode()
    wrong = client.post(console_path(plant, "delete"), {"confirm_name": "plant"})
    assert wrong.status_code == 409
    assert client.get(console_path(plant)).status_code == 200  # the page still shows it, as deleted


def test_nul_in_an_id_of_the_address_answers_404_when_opened(client, owner):
    """PostgreSQL cannot hold a NUL in text: every lookup with one failed (DataError, a 500). No id holds one."""
    plant = settle(deployment(owner.default_project))
    org, project = f"/console/o/{owner.id}", f"/console/o/{owner.id}/p/{owner.default_project.public_id}"
    gets = [
        "/console/o/org_%00",  # the two-factor middleware looked the organization up first
        "/console/o/org_%00/members",
        f"{org}/p/prj_%00",
        f"{project}/d/dep_%00",
        f"{org}/channels/ch_%00",
        f"{org}/billing/invoices/inv_%00",
        f"{project}/alert-rules/rul_%00",
    ]
    statuses = {path: client.get(path).status_code for path in gets}
    statuses["delete"] = client.post(console_path(plant, "mqtt-users/usr_%00/delete")).status_code
    assert set(statuses.values()) == {404}, statuses
    assert "There is nothing here" in client.get(f"{project}/d/dep_%00").content.decode()


def test_nul_in_an_id_of_a_query_parameter_answers_404_or_the_page_when_opened(client, owner):
    plant = settle(deployment(owner.default_project))
    assert client.get("/console/switch?org=org_%00").status_code == 404
    audit = client.get(f"/console/o/{owner.id}/audit?before=%00")  # an anchor that cannot exist: the first page
    assert audit.status_code == 200
    assert "deployment.create" in audit.content.decode()
    tier = client.get(console_path(plant, "actions/change-tier") + "?tier=2k%00", follow=True)
    assert tier.redirect_chain == [(console_path(plant, "manage"), 302)]
    assert "Unknown tier '2k\\x00' for plan 'dedicated'." in html.unescape(tier.content.decode())


def test_project_switch_to_a_value_no_project_url_holds_answers_404_when_followed(client, owner):
    for value in ("a/b", "", "prj_%00"):
        response = client.get(f"/console/switch?org={owner.id}&project={value}")
        assert response.status_code in (302, 404), (value, response.status_code)
    assert client.get(f"/console/switch?org={owner.id}&project=a/b").status_code == 404
    assert client.get(f"/console/switch?org={owner.id}&project=a%2Fb").status_code == 404


def test_change_tier_with_a_nul_in_the_tier_says_unknown_tier_when_confirmed(client, owner):
    plant = settle(deployment(owner.default_project))
    response = client.post(console_path(plant, "actions/change-tier"), {"tier": "2k\x00"}, follow=True)
    assert response.status_code == 200
    assert "Unknown tier '2k\\x00' for plan 'dedicated'." in html.unescape(response.content.decode())
    plant.refresh_from_db()
    assert plant.tier.code == "1k"
    assert not plant.operations.filter(kind="change_tier").exists()


def test_revoke_posted_to_the_key_list_with_a_nul_in_the_key_id_answers_404_when_submitted(client, owner):
    """The first console's revoke form posts the key's id in the body (`revoke`), where the address's NUL check never
    looks: the lookup with it was a DataError, a 500."""
    response = client.post(f"/console/o/{owner.id}/api-keys", {"revoke": "key_\x00"})
    assert response.status_code == 404
    owner.owner_key.refresh_from_db()
    assert owner.owner_key.revoked_at is None
    assert not AuditEvent.objects.filter(action="api_key.revoke").exists()


def test_two_factor_requirement_with_a_nul_in_the_organization_id_answers_404_when_submitted(client, owner):
    response = client.post("/console/account/two-factor/organizations/org_%00", {"require_two_factor": "on"})
    assert response.status_code == 404
    owner.organization.refresh_from_db()
    assert owner.organization.require_two_factor is False
