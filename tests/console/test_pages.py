"""Console pages through Django's test client: what each page shows and what its forms change, through the same
services as the API (audit rows included)."""

import csv
import html
import io
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from billing.models import AnnualSubscription
from deployments.models import Deployment, Operation
from organizations.models import ApiKey, Invitation, Membership
from projects.models import Project
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: the invitation e-mail task runs inline
from tests.console.helpers import console_path, deployment, settle

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, owner_org):
    client.force_login(owner_org.owner)
    return owner_org


def test_every_page_renders_for_an_owner_when_visited(client, owner):
    plant = settle(deployment(owner.default_project))
    key = owner.owner_key
    member = Membership.objects.get(user=owner.owner)
    org, prj = owner.id, owner.default_project.public_id
    pages = [
        f"/console/o/{org}",
        f"/console/o/{org}/p/{prj}",
        f"/console/o/{org}/p/{prj}/rows",
        f"/console/o/{org}/p/{prj}/settings",
        f"/console/o/{org}/p/{prj}/deployments/new",
        console_path(plant),
        console_path(plant, "live"),
        console_path(plant, "mqtt-users"),
        console_path(plant, "acl"),
        console_path(plant, "rate-limits"),
        console_path(plant, "manage"),
        console_path(plant, "actions/restart"),
        console_path(plant, "history"),
        f"/console/o/{org}/members",
        f"/console/o/{org}/members/{member.public_id}",
        f"/console/o/{org}/members/{member.public_id}/remove",
        f"/console/o/{org}/api-keys",
        f"/console/o/{org}/api-keys/{key.public_id}/rotate",
        f"/console/o/{org}/audit",
        f"/console/o/{org}/settings",
        f"/console/o/{org}/alerts",
        f"/console/o/{org}/billing",
    ]
    for path in pages:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        assert "Content-Security-Policy" in response and "script-src 'self'" in response["Content-Security-Policy"]
        assert "<script>" not in response.content.decode() and " onclick=" not in response.content.decode()


def test_unknown_page_answers_the_consoles_404_when_signed_in(client, owner):
    response = client.get(f"/console/o/{owner.id}/p/prj_doesnotexist")
    assert response.status_code == 404
    assert b"Not found" in response.content and b"console.css" in response.content


def test_project_is_renamed_described_and_deleted_when_empty(client, owner):
    from projects import services

    project = services.project_create(organization=owner.organization, actor=None, name="Lab")
    url = f"/console/o/{owner.id}/p/{project.public_id}/settings"
    assert client.post(url, {"name": "Lab 2", "description": "Line 3 sensors"}).status_code == 302
    project.refresh_from_db()
    assert (project.name, project.description) == ("Lab 2", "Line 3 sensors")
    deployment(project, name="busy")
    page = client.get(url).content.decode()
    assert "still holds 1 deployment" in page
    refused = client.post(f"/console/o/{owner.id}/p/{project.public_id}/delete", follow=True)
    assert "still holds deployments" in refused.content.decode()
    assert Project.objects.filter(pk=project.pk).exists()
    default = client.get(f"/console/o/{owner.id}/p/{owner.default_project.public_id}/settings").content.decode()
    assert "The Default project cannot be deleted." in default
    refused = client.post(f"/console/o/{owner.id}/p/{owner.default_project.public_id}/delete", follow=True)
    assert "Default project cannot be deleted" in refused.content.decode()
    empty = services.project_create(organization=owner.organization, actor=None, name="Empty")
    assert client.post(f"/console/o/{owner.id}/p/{empty.public_id}/delete").status_code == 302
    assert not Project.objects.filter(pk=empty.pk).exists()
    assert AuditEvent.objects.filter(action="project.delete", target_id=empty.public_id, via="console").exists()


def test_project_list_counts_deployments_when_some_are_deleted(client, owner):
    from deployments import services

    deployment(owner.default_project, name="a")
    gone = settle(deployment(owner.default_project, name="b"))
    services.deployment_delete(deployment=gone, actor=None)
    body = client.get(f"/console/o/{owner.id}").content.decode()
    assert re.search(r'<td class="num">1</td>', body)


def test_deployment_moves_to_another_project_when_asked(client, owner):
    from projects import services

    target = services.project_create(organization=owner.organization, actor=None, name="Target")
    plant = settle(deployment(owner.default_project))
    response = client.post(console_path(plant, "move"), {"project": target.public_id})
    assert response.status_code == 302 and target.public_id in response["Location"]
    plant.refresh_from_db()
    assert plant.project == target
    assert Operation.objects.filter(deployment=plant, kind="move").exists()


def test_wizard_buys_an_annual_plan_when_annual_is_chosen(client, owner):
    url = f"/console/o/{owner.id}/p/{owner.default_project.public_id}/deployments/new"
    page = client.get(url + "?tier=2k&billing_cycle=annual").content.decode()
    # 2k: $0.50/h, 8,760 h = $4,380.00; the catalog's annual price $3,723.00 saves $657.00.
    assert "$3,723.00 for 12 months" in page and "saves $657.00" in page and "$4,380.00" in page
    response = client.post(
        url, {"plan": "dedicated", "region": "local", "tier": "2k", "billing_cycle": "annual", "name": "yearly"}
    )
    assert response.status_code == 302
    plant = Deployment.objects.get(name="yearly")
    subscription = AnnualSubscription.objects.get(deployment=plant)
    assert subscription.annual_price == 372300
    rows = client.get(f"/console/o/{owner.id}/p/{owner.default_project.public_id}").content.decode()
    assert f"annual until {subscription.term_end:%Y-%m-%d}" in rows


def test_wizard_makes_no_deployment_when_its_annual_plan_cannot_be_bought(client, owner):
    from deployments.models import Price

    # No hourly price for the tier: the annual plan is refused, and the deployment made just before it goes too.
    Price.objects.filter(plan__code="dedicated", kind=Price.Kind.HOURLY).delete()
    url = f"/console/o/{owner.id}/p/{owner.default_project.public_id}/deployments/new"
    response = client.post(
        url, {"plan": "dedicated", "region": "local", "tier": "2k", "billing_cycle": "annual", "name": "yearly"}
    )
    assert response.status_code == 409
    assert "has no hourly price" in html.unescape(response.content.decode())
    assert not Deployment.objects.filter(name="yearly").exists()
    assert not AuditEvent.objects.filter(action="deployment.create").exists()


def test_premium_is_offered_only_when_the_organization_has_a_trial(client, owner):
    url = f"/console/o/{owner.id}/p/{owner.default_project.public_id}/deployments/new"
    assert 'value="premium"' not in client.get(url).content.decode()
    owner.organization.premium_trial_deployments = 1
    owner.organization.save()
    assert 'value="premium"' in client.get(url).content.decode()


def test_a_secret_waiting_to_be_shown_is_sealed_in_the_session_row_when_the_page_is_not_opened(client, owner):
    from django.contrib.sessions.models import Session

    created = client.post(f"/console/o/{owner.id}/api-keys", {"new-name": "CI", "new-role": "auditor"})
    assert created.status_code == 302
    key = ApiKey.objects.get(name="CI")
    row = Session.objects.get(session_key=client.session.session_key)
    # What a database backup holds until the page is opened (or, if it never is, until the session expires): the
    # session decoded with the SECRET_KEY shows neither the secret nor what it belongs to.
    decoded = str(row.get_decoded())
    assert "cpk_" not in decoded and key.public_id not in decoded and key.prefix not in decoded
    body = client.get(created["Location"]).content.decode()
    secret = re.search(r"cpk_[\w-]+", body).group(0)
    assert key.prefix in secret
    assert secret not in client.get(f"/console/o/{owner.id}/api-keys").content.decode()


def test_api_key_is_rotated_with_overlap_and_revoked_when_asked(client, owner):
    created = client.post(f"/console/o/{owner.id}/api-keys", {"new-name": "CI", "new-role": "auditor"}, follow=True)
    body = created.content.decode()
    secret = re.search(r"cpk_[\w-]+", body).group(0)
    key = ApiKey.objects.get(name="CI")
    assert "shown only once" in body
    assert secret not in client.get(f"/console/o/{owner.id}/api-keys").content.decode()

    rotated = client.post(
        f"/console/o/{owner.id}/api-keys/{key.public_id}/rotate", {"overlap_seconds": "3600"}, follow=True
    ).content.decode()
    new_secret = re.search(r"cpk_[\w-]+", rotated).group(0)
    assert new_secret != secret and "the old secret keeps working until" in rotated
    key.refresh_from_db()
    assert key.previous_expires_at is not None
    assert "old secret valid until" in client.get(f"/console/o/{owner.id}/api-keys").content.decode()

    client.post(f"/console/o/{owner.id}/api-keys/{key.public_id}/revoke")
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert AuditEvent.objects.filter(action="api_key.rotate", target_id=key.public_id, via="console").exists()


def test_administrator_is_offered_no_rotation_of_anothers_key_and_cannot_force_one(client, owner):
    others, others_secret = owner.key_for(owner.owner, role="auditor")
    admin, _ = owner.add_member(roles=["administrator"])
    own, _ = owner.key_for(admin, role="auditor")
    client.force_login(admin)
    page = client.get(f"/console/o/{owner.id}/api-keys").content.decode()
    assert f"/api-keys/{own.public_id}/rotate" in page and f"/api-keys/{others.public_id}/rotate" not in page

    url = f"/console/o/{owner.id}/api-keys/{others.public_id}/rotate"
    shown = client.get(url, follow=True).content.decode()
    forced = client.post(url, {"overlap_seconds": "0"}, follow=True).content.decode()

    for body in (shown, forced):
        assert "who created this key, can rotate it" in body and not re.search(r"cpk_[0-9a-f]{8}_", body)
    assert ApiKey.objects.get(pk=others.pk).secret_hash == others.secret_hash
    assert not AuditEvent.objects.filter(action="api_key.rotate").exists()


def test_api_key_with_expiry_and_project_limit_is_created_when_given(client, owner):
    response = client.post(
        f"/console/o/{owner.id}/api-keys",
        {
            "new-name": "limited",
            "new-role": "project_user",
            "new-projects": [owner.default_project.public_id],
            "new-expires_at": "2099-01-31T00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    key = ApiKey.objects.get(name="limited")
    assert [p.pk for p in key.projects.all()] == [owner.default_project.pk]
    assert key.expires_at.year == 2099
    past = client.post(
        f"/console/o/{owner.id}/api-keys",
        {"new-name": "old", "new-role": "auditor", "new-expires_at": "2001-01-01T00:00"},
    )
    assert past.status_code == 400 and "must be in the future" in past.content.decode()


def test_member_removal_names_their_keys_first_and_revokes_them_when_confirmed(client, owner):
    user, membership = owner.add_member(roles=["administrator"])
    key, _ = owner.key_for(user, role="auditor")
    confirm = client.get(f"/console/o/{owner.id}/members/{membership.public_id}/remove").content.decode()
    assert "will be revoked at once" in confirm and key.name in confirm and key.prefix in confirm
    assert client.post(f"/console/o/{owner.id}/members/{membership.public_id}/remove").status_code == 302
    assert not Membership.objects.filter(pk=membership.pk).exists()
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_member_role_and_grants_change_when_saved(client, owner):
    user, membership = owner.add_member(roles=["auditor"])
    response = client.post(
        f"/console/o/{owner.id}/members/{membership.public_id}",
        {"roles": [], f"grant_{owner.default_project.public_id}": "project_administrator"},
    )
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.roles == []
    assert membership.grants.get().role == "project_administrator"
    empty = client.post(f"/console/o/{owner.id}/members/{membership.public_id}", {"roles": []})
    assert empty.status_code == 400 and "at least one organization role or project grant" in empty.content.decode()


def test_ownership_is_transferred_when_the_owner_confirms(client, owner):
    user, membership = owner.add_member(roles=["administrator"])
    response = client.post(
        f"/console/o/{owner.id}/settings/transfer-ownership", {"transfer-member": membership.public_id}
    )
    assert response.status_code == 302
    membership.refresh_from_db()
    assert "owner" in membership.roles
    assert Membership.objects.get(user=owner.owner).roles == ["administrator"]
    # The former Owner no longer sees the transfer form.
    assert "Transfer ownership" not in client.get(f"/console/o/{owner.id}/settings").content.decode()


def test_ownership_transfer_is_refused_on_the_page_when_the_member_is_removed_after_the_form_check(client, owner):
    """The member chosen is removed between the form's check of its choices and the transfer (another Owner, in
    another tab). The removal is made by a hook on the database connection, right after the query that reads the
    form's candidates: nothing of the control plane is patched."""
    client.raise_request_exception = False
    user, membership = owner.add_member(roles=["administrator"])
    removed = {"done": False}

    def remove_after_candidates_are_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        reads_candidates = (
            'FROM "organizations_membership"' in sql and 'ORDER BY "organizations_membership"."created_at"' in sql
        )
        if reads_candidates and not removed["done"]:
            removed["done"] = True
            Membership.objects.filter(pk=membership.pk).delete()
        return result

    with connection.execute_wrapper(remove_after_candidates_are_read):
        response = client.post(
            f"/console/o/{owner.id}/settings/transfer-ownership", {"transfer-member": membership.public_id}
        )

    assert removed["done"]
    # The settings page again, the service's message beside the member select: no message at the page's top.
    assert response.status_code == 400
    assert _errors_beside(response, "id_transfer-member") == ["No such member in this organization."]
    assert 'class="messages"' not in response.content.decode()
    assert user.email not in response.content.decode()  # the select no longer offers the removed member
    assert Membership.objects.get(user=owner.owner).roles == ["owner"]
    assert not AuditEvent.objects.filter(action="organization.transfer").exists()


def test_ownership_transfer_form_says_beside_the_select_when_no_member_is_chosen(client, owner):
    _user, membership = owner.add_member(roles=["administrator"])
    response = client.post(f"/console/o/{owner.id}/settings/transfer-ownership", {"transfer-member": ""})
    assert response.status_code == 400
    assert _errors_beside(response, "id_transfer-member") == ["This field is required."]
    page = response.content.decode()
    assert 'class="messages"' not in page and membership.user.email in page  # the select still offers the member


def _errors_beside(response, field_id) -> list[str]:
    """The messages of the field's own error list (Django links it to the input by id)."""
    body = html.unescape(response.content.decode())
    match = re.search(rf'<ul class="errorlist" id="{field_id}_error">(.*?)</ul>', body, re.S)
    assert match, f"no error list for {field_id} in the page"
    return re.findall(r"<li>(.*?)</li>", match.group(1), re.S)


def test_invitation_is_resent_with_a_new_link_and_revoked_when_asked(
    client, owner, mailoutbox, django_capture_on_commit_callbacks, eager
):
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/console/o/{owner.id}/members", {"invite-email": "dev@example.com", "invite-role": "auditor"})
    invitation = Invitation.objects.get(email="dev@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/console/o/{owner.id}/invitations/{invitation.public_id}/resend")
    assert len(mailoutbox) == 2
    first, second = (re.search(r"token=([\w-]+)", m.body).group(1) for m in mailoutbox)
    assert first != second
    client.logout()
    assert "Invitation unavailable" in client.get(f"/console/invitations/accept?token={first}").content.decode()
    assert "Join" in client.get(f"/console/invitations/accept?token={second}").content.decode()
    client.force_login(owner.owner)
    client.post(f"/console/o/{owner.id}/invitations/{invitation.public_id}/revoke")
    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    assert AuditEvent.objects.filter(action="invitation.resend", target_id=invitation.public_id).exists()


def test_invitation_resend_is_offered_by_the_api_when_the_caller_manages_members(owner_org, key_client, mailoutbox):
    from organizations import services

    invitation, _ = services.invitation_create(
        organization=owner_org.organization, actor=None, email="api@example.com", roles=["auditor"]
    )
    client = key_client(owner_org.owner_secret)
    response = client.post(f"/api/v1/organizations/{owner_org.id}/invitations/{invitation.public_id}/resend")
    assert response.status_code == 200, response.content
    assert response.json()["id"] == invitation.public_id
    services.invitation_revoke(invitation=invitation, actor=None)
    again = client.post(f"/api/v1/organizations/{owner_org.id}/invitations/{invitation.public_id}/resend")
    assert again.status_code == 409


def test_audit_log_filters_links_targets_and_exports_the_filter_as_csv(client, owner):
    plant = deployment(owner.default_project)
    AuditEvent.objects.filter(target_id=plant.public_id).update(summary={"name": "=HYPERLINK(1)"})
    page = client.get(f"/console/o/{owner.id}/audit", {"action": "deployment."}).content.decode()
    assert "deployment.create" in page and "api_key.create" not in page
    assert f'href="{console_path(plant)}"' in page
    everything = client.get(f"/console/o/{owner.id}/audit").content.decode()
    assert "api_key.create" in everything
    bad = client.get(f"/console/o/{owner.id}/audit", {"since": "not a date"})
    assert bad.status_code == 400 and "Enter a valid date/time" in bad.content.decode()

    exported = client.get(f"/console/o/{owner.id}/audit.csv", {"action": "deployment."})
    assert exported["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(exported.streaming_content).decode())))
    assert rows[0][:4] == ["created_at", "actor", "api_key", "action"]
    assert [r[3] for r in rows[1:]] == ["deployment.create"]
    assert rows[1][6].startswith("{")  # JSON summary; a formula inside stays inside the JSON text


def test_audit_csv_defuses_formulas_when_a_cell_starts_with_one(client, owner):
    from django.db import transaction

    from audit.services import audit_record

    with transaction.atomic():
        audit_record(
            actor=None, organization=owner.organization, action="=cmd|' /C calc'!A0", target=owner.organization
        )
    exported = client.get(f"/console/o/{owner.id}/audit.csv")
    text = b"".join(exported.streaming_content).decode()
    assert "'=cmd|" in text


def _count_queries(client, path) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, path
    return len(captured)


def test_page_query_counts_do_not_grow_with_rows_when_listing(client, owner):
    from projects import services as project_services

    org = owner.id
    for index in range(3):
        deployment(owner.default_project, name=f"d{index}")
        owner.add_member(roles=["auditor"])
        project_services.project_create(organization=owner.organization, actor=None, name=f"p{index}")
    paths = [
        f"/console/o/{org}",
        f"/console/o/{org}/p/{owner.default_project.public_id}",
        f"/console/o/{org}/members",
        f"/console/o/{org}/api-keys",
        f"/console/o/{org}/audit",
    ]
    before = {path: _count_queries(client, path) for path in paths}
    for index in range(3, 15):
        deployment(owner.default_project, name=f"d{index}")
        _, membership = owner.add_member(roles=["auditor"])
        owner.key_for(membership.user, role="auditor")
        project_services.project_create(organization=owner.organization, actor=None, name=f"p{index}")
    after = {path: _count_queries(client, path) for path in paths}
    assert after == before


def test_served_htmx_is_the_version_the_licence_note_names_when_installed():
    """console/static/console/THIRD_PARTY.md names the htmx version and licence we serve; this keeps it true."""
    import pathlib

    from django.contrib.staticfiles import finders

    served = pathlib.Path(finders.find("django_htmx/htmx-2.min.js")).read_text()
    version = re.search(r'version:"([0-9.]+)"', served).group(1)
    note = (pathlib.Path(__file__).resolve().parents[2] / "console/static/console/THIRD_PARTY.md").read_text()
    assert f"| {version} |" in note


def test_lists_and_status_poll_only_while_a_deployment_is_settling(client, owner):
    plant = deployment(owner.default_project)
    rows = f"/console/o/{owner.id}/p/{owner.default_project.public_id}/rows"
    assert 'hx-trigger="every 2s"' in client.get(rows).content.decode()
    assert 'hx-trigger="every 1s"' in client.get(console_path(plant, "live")).content.decode()
    assert '<meta http-equiv="refresh"' in client.get(console_path(plant)).content.decode()  # without JavaScript
    settle(plant)
    assert "hx-trigger" not in client.get(rows).content.decode()
    live = client.get(console_path(plant, "live")).content.decode()
    assert 'hx-trigger="every' not in live and "running" in live
