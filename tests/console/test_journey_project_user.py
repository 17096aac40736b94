"""Journey: an Owner invites a Project User limited to one project; the invitee accepts the emailed link in another
browser and sees only that project, no billing, no members, no way to delete; a crafted delete is refused."""

import re

import pytest
from playwright.sync_api import expect

from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: the invitation e-mail task runs inline
from tests.console.browser import csrf_post
from tests.console.helpers import console_path, deployment, make_organization

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_project_user_sees_only_their_project_when_invited_by_the_owner(site, mailoutbox, eager, brokers_dir):
    """Tasks run inline here (the invitation e-mail), the deployment's reconcile among them: its broker starts under
    the test's own brokers directory, stopped when the test ends."""
    from deployments.models import Deployment
    from projects import services as project_services

    org = make_organization(name="Acme")
    factory = project_services.project_create(organization=org.organization, actor=None, name="Factory")
    project_services.project_create(organization=org.organization, actor=None, name="Secret lab")
    plant = deployment(factory)

    owner = site.page(org.owner, name="owner")
    owner.goto(f"/console/o/{org.id}")
    owner.get_by_role("link", name="Members").click()
    expect(owner.get_by_role("heading", name="Members", exact=True)).to_be_visible()
    # An Owner may grant every role, each offered by name.
    for role in ("Owner", "Administrator", "Accountant", "Auditor", "Project Administrator", "Project User"):
        expect(owner.get_by_role("radio", name=role, exact=True)).to_be_visible()
    owner.get_by_label("Email address").fill("pat@example.com")
    owner.get_by_role("radio", name="Project User", exact=True).check()
    owner.get_by_role("checkbox", name="Factory").check()
    owner.check("invite-form")
    owner.get_by_role("button", name="Send invitation").click()
    expect(owner.get_by_text("Invitation sent to pat@example.com.")).to_be_visible()
    expect(owner.get_by_role("cell", name="Project User on Factory")).to_be_visible()
    owner.check("invited")

    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["pat@example.com"]
    link = re.search(r"https?://\S+/console/invitations/accept\?token=\S+", mailoutbox[0].body).group(0)

    invitee = site.page(name="pat")
    invitee.goto(link)
    expect(invitee.get_by_role("heading", name="Join Acme")).to_be_visible()
    invitee.get_by_label("Full name").fill("Pat")
    invitee.get_by_label("Password").fill("pat's long passphrase")
    invitee.check("accept")
    invitee.get_by_role("button", name="Accept invitation").click()

    expect(invitee.get_by_role("heading", name="Projects")).to_be_visible()
    expect(invitee.get_by_role("link", name="Factory")).to_be_visible()
    expect(invitee.get_by_text("Secret lab")).to_have_count(0)
    expect(invitee.get_by_text("Default project")).to_have_count(0)
    sections = invitee.get_by_role("navigation", name="Sections")
    expect(sections.get_by_role("link", name="Billing")).to_have_count(0)
    expect(sections.get_by_role("link", name="Members")).to_have_count(0)
    expect(sections.get_by_role("link", name="API keys")).to_have_count(0)
    expect(sections.get_by_role("link", name="Deployments")).to_be_visible()
    invitee.check("projects")

    invitee.get_by_role("link", name="Factory").click()
    expect(invitee.get_by_role("link", name="Create deployment")).to_have_count(0)
    invitee.get_by_role("link", name="plant").click()
    invitee.check("deployment")
    invitee.get_by_role("link", name="Manage").click()
    expect(invitee.get_by_role("button", name="Delete deployment")).to_have_count(0)
    expect(invitee.get_by_role("link", name=re.compile("^Stop"))).to_have_count(0)
    expect(invitee.get_by_role("button", name="Rename")).to_be_visible()  # a Project User may rename
    invitee.check("manage")

    crafted = csrf_post(invitee, console_path(plant, "delete"), {"confirm_name": "plant"})
    assert crafted.status == 403
    plant.refresh_from_db()
    assert plant.desired_state == "running"
    assert Deployment.objects.filter(pk=plant.pk, desired_state="deleted").count() == 0
    assert csrf_post(invitee, f"/console/o/{org.id}/members", {"invite-email": "x@example.com"}).status == 403
    assert invitee.goto(f"/console/o/{org.id}/billing").status == 403
    invitee.check("forbidden")
    secret = next(p for p in org.organization.projects.all() if p.name == "Secret lab")
    assert invitee.goto(f"/console/o/{org.id}/p/{secret.public_id}").status == 404
    invitee.check("not-found")
