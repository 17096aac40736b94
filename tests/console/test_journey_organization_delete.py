"""Journey: an Owner wants to close their organization. The danger zone first lists what blocks it (a deployment,
with a link to it); once it is deleted, the Owner mistypes the name and is told so beside the field, types it
right, lands on their home with a message, and creates a new organization from there."""

import pytest
from playwright.sync_api import expect

from tests.api_walk import _deployment
from tests.console.helpers import make_organization

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_owner_deletes_the_organization_once_nothing_blocks_and_starts_a_new_one(site):
    from deployments.models import Deployment
    from organizations.models import Organization

    org = make_organization(name="Acme")
    plant = _deployment(org, {}, "")
    owner = site.page(org.owner, name="owner")

    owner.goto(f"/console/o/{org.id}")
    owner.get_by_role("link", name="Settings").click()
    zone = owner.get_by_role("region", name="Delete organization")
    expect(zone.get_by_text("1 deployment is not deleted")).to_be_visible()
    expect(zone.get_by_role("link", name=f"({plant})")).to_be_visible()
    expect(zone.get_by_role("button", name="Delete organization")).to_have_count(0)
    owner.check("blocked")

    # The deployment is deleted meanwhile (its broker gone, as the reconciler would record).
    Deployment.objects.filter(public_id=plant).update(desired_state="deleted", status="deleted")
    owner.reload()
    zone = owner.get_by_role("region", name="Delete organization")
    zone.get_by_label("Type the organization's name to confirm").fill("Acme Inc")
    zone.get_by_role("button", name="Delete organization").click()
    zone = owner.get_by_role("region", name="Delete organization")
    expect(zone.get_by_text("Type the organization's name exactly as it is shown to delete it.")).to_be_visible()
    owner.check("wrong-name")
    assert Organization.objects.get(pk=org.organization.pk).closed_at is None

    zone.get_by_label("Type the organization's name to confirm").fill("Acme")
    zone.get_by_role("button", name="Delete organization").click()
    expect(owner.get_by_role("heading", name="Your organizations")).to_be_visible()
    expect(owner.get_by_text("The organization Acme was deleted.")).to_be_visible()
    owner.check("deleted")
    assert Organization.objects.get(pk=org.organization.pk).closed_at is not None

    owner.get_by_role("link", name="Create an organization").click()
    owner.get_by_label("Organization name").fill("Acme Two")
    owner.get_by_role("button", name="Create organization").click()
    expect(owner.get_by_text("Organization Acme Two created: you are its Owner.")).to_be_visible()
    owner.check("created")
