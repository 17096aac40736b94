"""Journey: an Accountant switches a running 1k deployment to an annual plan from its page. The quote shows the
annual price (2,680.56 USD: 8,760 h at 0.36 less 15 %), VAT, the saving against twelve months of hourly billing,
the usage accrued this month and its expiry; one click accepts it, the prepaid invoice is in Invoices and its PDF
downloads with the same total. A quote accepted from a page left open past its expiry is refused in words, and
nothing is started or invoiced."""

import datetime as dt
import io
import re

import pytest
from playwright.sync_api import expect

from tests.console.helpers import console_path, deployment, make_organization, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _us_customer(org):
    from billing import selectors, services

    account = selectors.billing_account_for(organization=org.organization)
    services.billing_account_update(
        account=account,
        actor=None,
        country="US",
        company="Acme Inc.",
        email="ap@acme.example",
        address="1 Main St",
        city="Springfield",
        state="IL",
        postal_code="62701",
    )
    return account


def _running_since(plant, hours):
    """The deployment has been running for `hours` (its status history, as the reconciler records it); returns the
    seconds of them inside this month, the hourly usage a quote counts as accrued."""
    from django.utils import timezone

    from deployments.models import StatusInterval

    now = timezone.now()
    started = now - dt.timedelta(hours=hours)
    StatusInterval.objects.filter(deployment=plant).delete()
    StatusInterval.objects.create(deployment=plant, status="running", tier=plant.tier, started_at=started)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (now - max(started, month_start)).total_seconds()


def test_accountant_switches_to_annual_and_downloads_the_prepaid_invoice_when_accepting_the_quote(site):
    from pypdf import PdfReader

    from billing.models import AnnualSubscription, Invoice

    org = make_organization(name="Acme")
    _us_customer(org)
    plant = settle(deployment(org.default_project, name="plant", tier="1k"))
    accountant, _ = org.add_member(roles=["accountant"], email="ap@acme.example")

    page = site.page(accountant, name="accountant")
    page.goto(console_path(plant))
    expect(page.get_by_text("$0.36/h")).to_be_visible()
    page.get_by_role("button", name="Switch to annual").click()
    expect(page.get_by_role("heading", name="Switch to an annual plan")).to_be_visible()
    expect(page.locator("#quote-annual-price")).to_have_text("$2,680.56")
    expect(page.locator("#quote-tax")).to_contain_text("$0.00")
    expect(page.locator("#quote-tax")).to_contain_text("Outside the scope of VAT")
    expect(page.locator("#quote-total")).to_have_text("$2,680.56")
    expect(page.locator("#quote-saving")).to_contain_text("$473.04")
    expect(page.locator("#quote-saving")).to_contain_text("$3,153.60")
    expect(page.locator("#quote-accrued")).to_contain_text("$")
    expect(page.locator("#quote-expiry")).to_contain_text("UTC")
    page.check("quote")

    page.get_by_role("button", name="Accept and switch to annual").click()
    expect(page.get_by_text(re.compile(r"plant is on an annual plan until \d{4}-\d\d-\d\d"))).to_be_visible()
    expect(page.get_by_role("heading", name="Invoices")).to_be_visible()
    invoice = Invoice.objects.get(billing_account__organization=org.organization, kind="annual")
    row = page.get_by_role("row").filter(has_text=invoice.number)
    expect(row).to_contain_text("$2,680.56")
    expect(row).to_contain_text("Annual")
    expect(row.locator(".badge")).to_have_text(re.compile("open|paid"))
    page.check("invoices")

    with page.expect_download() as download_info:
        row.get_by_role("link", name=f"Download invoice {invoice.number} as PDF").click()
    download = download_info.value
    assert download.suggested_filename == f"{invoice.number}.pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(open(download.path(), "rb").read())).pages)
    assert invoice.number in text and "2,680.56 USD" in text

    row.get_by_role("link", name=f"View invoice {invoice.number}").click()
    expect(page.get_by_role("heading", name=re.compile(invoice.number))).to_be_visible()
    expect(page.locator("body")).to_contain_text("2,680.56 USD")
    page.check("invoice-html")

    # The deployment page now says annual, and the subscription is listed with its renewal switch.
    page.goto(console_path(plant))
    expect(page.get_by_text(re.compile(r"annual until \d{4}-\d\d-\d\d"))).to_be_visible()
    expect(page.get_by_role("button", name="Switch to annual")).to_have_count(0)
    page.goto(f"/console/o/{org.id}/billing/annual")
    subscription = AnnualSubscription.objects.get(deployment=plant)
    expect(page.get_by_role("row").filter(has_text="plant")).to_contain_text(
        f"hourly billing from {subscription.term_end:%Y-%m-%d}"
    )
    page.get_by_role("button", name="Turn auto-renew on for plant").click()
    expect(page.get_by_text(f"plant renews for another year on {subscription.term_end:%Y-%m-%d}.")).to_be_visible()
    subscription.refresh_from_db()
    assert subscription.auto_renew is True
    page.check("subscriptions")


def test_stale_quote_is_refused_in_words_and_nothing_starts_when_accepted_after_its_expiry(site):
    from billing.models import AnnualQuote, AnnualSubscription, Invoice

    org = make_organization(name="Acme")
    _us_customer(org)
    plant = settle(deployment(org.default_project, name="plant", tier="1k"))
    seconds = _running_since(plant, 5)

    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant))
    page.get_by_role("button", name="Switch to annual").click()
    expect(page.locator("#quote-annual-price")).to_have_text("$2,680.56")
    # The hours already run this month at 0.36/h (at least those counted before the quote was asked for).
    quote = AnnualQuote.objects.get(deployment=plant)
    assert quote.accrued_this_month >= int(seconds * 36 / 3600)
    expect(page.locator("#quote-accrued")).to_contain_text(f"${quote.accrued_this_month / 100:,.2f} already accrued")
    # The page stays open past the quote's expiry.
    AnnualQuote.objects.filter(deployment=plant).update(expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Accept and switch to annual").click()
    assert answer.value.status in (400, 409, 422)
    expect(page.get_by_role("alert")).to_contain_text("This quote has expired; ask for a new one.")
    expect(page.get_by_role("button", name="Get a new quote")).to_be_visible()
    page.check("expired")
    assert not AnnualSubscription.objects.filter(deployment=plant).exists()
    assert not Invoice.objects.filter(billing_account__organization=org.organization).exists()

    page.get_by_role("button", name="Get a new quote").click()
    expect(page.get_by_role("button", name="Accept and switch to annual")).to_be_visible()
    assert AnnualQuote.objects.filter(deployment=plant).count() == 2
