"""Journeys on a deployment's lifecycle: change tier after a dry run, stop, start, delete by typing the name (the broker
process is gone), and deletion protection refusing a delete with the reason on the page."""

import re

import pytest
from playwright.sync_api import expect

from tests.celery_worker import broker_pids
from tests.console.browser import csrf_post
from tests.console.helpers import console_path, deployment, make_organization

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SETTLE = 60_000


def _settled(page, status):
    expect(page.locator("#deployment-status")).to_have_text(status, timeout=SETTLE)
    expect(page.get_by_text("updating…")).to_have_count(0, timeout=SETTLE)


def _confirm(page, link_name, *, before, after):
    page.get_by_role("link", name="Manage").click()
    page.get_by_role("link", name=link_name).click()
    expect(page.locator("#price-before")).to_have_text(before)
    expect(page.locator("#price-after")).to_have_text(after)
    expect(page.locator("#disruption")).not_to_be_empty()
    page.check(f"confirm-{link_name.rstrip('…').lower()}")
    page.get_by_role("button", name="Confirm", exact=False).click()


def test_owner_changes_tier_stops_starts_and_deletes_when_confirming_each_step(site, celery_worker, brokers_dir):
    org = make_organization(name="Lifecycle")
    plant = deployment(org.default_project)
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant))
    _settled(page, "running")
    assert len(broker_pids(brokers_dir)) == 1

    page.get_by_role("link", name="Manage").click()
    page.get_by_label("Change tier (now 1k)").select_option("2k")
    page.check("manage")
    page.get_by_role("button", name="Change tier…").click()
    expect(page.locator("#price-before")).to_have_text("$0.36")
    expect(page.locator("#price-after")).to_have_text("$0.50")
    expect(page.locator("#disruption")).to_contain_text("Restart")
    page.check("confirm-tier")
    page.get_by_role("button", name="Confirm: change tier").click()
    expect(page.get_by_text("Change tier: operation")).to_be_visible()
    _settled(page, "running")
    expect(page.get_by_text("Dedicated 2k")).to_be_visible()

    _confirm(page, "Stop…", before="$0.50", after="$0.06")
    _settled(page, "stopped")
    assert broker_pids(brokers_dir) == []
    page.check("stopped")

    _confirm(page, "Start…", before="$0.06", after="$0.50")
    _settled(page, "running")
    assert len(broker_pids(brokers_dir)) == 1

    page.get_by_role("link", name="Manage").click()
    page.get_by_label("Type the deployment's name to confirm").fill("plan")
    page.get_by_role("button", name="Delete deployment").click()
    expect(page.get_by_text("That is not the deployment's name; nothing was deleted.")).to_be_visible()
    page.check("wrong-name")
    plant.refresh_from_db()
    assert plant.desired_state == "running" and len(broker_pids(brokers_dir)) == 1

    page.get_by_label("Type the deployment's name to confirm").fill("plant")
    page.get_by_role("button", name="Delete deployment").click()
    _settled(page, "deleted")
    assert broker_pids(brokers_dir) == []
    expect(page.get_by_text(re.compile("This deployment (is being|was) deleted"))).to_be_visible()
    page.check("deleted")


def test_protected_deployment_cannot_be_deleted_when_protection_is_on(site):
    org = make_organization(name="Protected")
    plant = deployment(org.default_project)
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant, "manage"))
    page.get_by_role("button", name="Turn on deletion protection").click()
    expect(page.get_by_text("Deletion protection is on.", exact=True)).to_be_visible()
    expect(page.locator("#delete-refused")).to_contain_text("deletion protection is on")
    expect(page.get_by_role("button", name="Delete deployment")).to_have_count(0)
    page.check("protected")

    refused = csrf_post(page, console_path(plant, "delete"), {"confirm_name": "plant"})
    assert refused.status == 409
    assert "Deletion protection is on" in refused.text()
    plant.refresh_from_db()
    assert plant.desired_state == "running"

    page.get_by_role("button", name="Lift deletion protection").click()
    expect(page.get_by_role("button", name="Delete deployment")).to_be_visible()
