"""Every Billing page in a real browser, light and dark, with data on it: spend this month (the chart drawn), an
issued prepaid invoice gone overdue (the banner across the console), a subscription, credits, a quote; a screenshot
of each for a person to look at, and axe-core with no serious or critical violation."""

import datetime as dt

import pytest
from playwright.sync_api import expect

from tests.console.helpers import console_path, deployment, make_organization, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _billing_data(org):
    from django.utils import timezone

    from billing import annual, selectors, services
    from billing.models import Invoice, UsageRecord

    account = selectors.billing_account_for(organization=org.organization)
    services.billing_account_update(
        account=account,
        actor=None,
        country="US",
        company="Tour Inc.",
        email="ap@tour.example",
        address="1 Main St",
        city="Springfield",
        state="IL",
        postal_code="62701",
    )
    plants = [
        settle(deployment(org.default_project, name=name, tier=tier))
        for name, tier in (("plant", "1k"), ("yard", "2k"))
    ]
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    start = now.replace(day=1, hour=0)
    rows = []
    for index, plant in enumerate(plants):
        hour = start
        # Up to the current hour included: the month has usage to show even in its first hour.
        while hour <= now:
            rows.append(
                UsageRecord(
                    deployment=plant,
                    organization=org.organization,
                    tier=plant.tier,
                    hour=hour,
                    product="running",
                    seconds=3600 if (hour.day + index) % 3 else 1800,
                    unit_price="0.360000" if plant.tier.code == "1k" else "0.500000",
                    currency="USD",
                )
            )
            hour += dt.timedelta(hours=1)
    UsageRecord.objects.bulk_create(rows)
    services.credit_grant(
        account=account,
        actor=None,
        kind="promotion",
        amount=2500,
        description="Welcome credit",
        expires_at=timezone.now() + dt.timedelta(days=10),
    )
    quote = annual.annual_quote_create(deployment=plants[1], actor=None)
    annual.annual_quote_accept(quote=quote, actor=None)
    # The prepaid invoice was due yesterday: the console says when the deployments stop.
    Invoice.objects.filter(billing_account=account).update(due_at=timezone.now() - dt.timedelta(days=1))
    fresh = annual.annual_quote_create(deployment=plants[0], actor=None)
    return plants, Invoice.objects.get(billing_account=account), fresh


def test_every_billing_page_passes_axe_when_shown_light_and_dark(site, settings):
    from django.utils import timezone

    org = make_organization(name="Tour")
    (plant, yard), invoice, quote = _billing_data(org)
    o = org.id
    pages = [
        ("billing-overview", f"/console/o/{o}/billing"),
        ("billing-details", f"/console/o/{o}/billing/details"),
        ("billing-invoices", f"/console/o/{o}/billing/invoices"),
        ("billing-invoice-html", f"/console/o/{o}/billing/invoices/{invoice.public_id}"),
        ("billing-annual", f"/console/o/{o}/billing/annual"),
        ("billing-credits", f"/console/o/{o}/billing/credits"),
        ("annual-quote", console_path(plant, f"annual/{quote.public_id}")),
        ("deployment-with-switch", console_path(plant)),
    ]
    for scheme in ("light", "dark"):
        page = site.page(org.owner, name=scheme, color_scheme=scheme)
        for label, path in pages:
            page.goto(path)
            if label == "billing-overview":
                expect(page.locator("[data-spend-chart]")).to_have_attribute("data-drawn", str(timezone.now().day))
                expect(page.get_by_role("row").filter(has_text="yard")).to_be_visible()
            if label != "billing-invoice-html":
                banner = page.locator("#overdue-banner")
                stop_on = (invoice.due_at + dt.timedelta(days=settings.BILLING_GRACE_DAYS)).date()
                expect(banner).to_contain_text(
                    f"1 invoice overdue. Unless paid, this organization's deployments are stopped on {stop_on:%Y-%m-%d}."
                )
            page.check(label)
