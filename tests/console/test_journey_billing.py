"""Journeys through the Billing pages in a real browser, with the real Celery worker asking the VIES fake and
syncing the Stripe fake: an Accountant enters a French company and its VAT number (format checked as it is typed,
then reverse charge once VIES confirms) and adds a card on the fake's hosted Checkout page; a Finnish consumer
without a number is charged 25.5 % VAT; a Project User has no Billing link and a 403 on its URL."""

import re

import pytest
from playwright.sync_api import expect

from tests.console.helpers import make_organization
from tests.fakes.stripe_api import FakeStripe
from tests.fakes.vies import FakeVies

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def vies():
    with FakeVies() as fake:
        fake.register("FR", "40303265045", name="EXEMPLE SAS", address="1 RUE DE RIVOLI 75001 PARIS")
        # VIES takes a moment: long enough for a person (and the test) to see the number waiting for it.
        fake.delay_seconds = 2.0
        yield fake


@pytest.fixture
def stripe_fake():
    with FakeStripe(serve_checkout=True) as fake:
        yield fake


@pytest.fixture
def worker(request, monkeypatch, settings, vies, stripe_fake):
    """The real worker, started with VIES and Stripe pointing at the fakes, as the web process is."""
    for name, value in (
        ("VIES_URL", vies.url),
        ("STRIPE_SECRET_KEY", stripe_fake.api_key),
        ("STRIPE_API_BASE", stripe_fake.url),
    ):
        monkeypatch.setenv(name, value)
        setattr(settings, name, value)
    return request.getfixturevalue("celery_worker")


def _fill_details(page, **values):
    for label, value in values.items():
        page.get_by_label(label, exact=True).fill(value)


def test_accountant_gets_reverse_charge_and_saves_a_card_when_vies_confirms_a_french_company(
    site, worker, vies, stripe_fake
):
    from billing.models import BillingAccount

    org = make_organization(name="Exemple")
    accountant, _ = org.add_member(roles=["accountant"], email="compta@exemple.fr")
    page = site.page(accountant, name="accountant")
    page.goto(f"/console/o/{org.id}")
    page.get_by_role("navigation", name="Sections").get_by_role("link", name="Billing").click()
    expect(page.get_by_role("heading", name="Billing", exact=True)).to_be_visible()
    page.get_by_role("link", name="Details and card").click()
    expect(page.get_by_role("heading", name="Billing details")).to_be_visible()

    _fill_details(
        page,
        **{
            "Country": "FR",
            "Company": "Exemple SAS",
            "Billing email": "compta@exemple.fr",
            "Street address": "1 rue de Rivoli",
            "Postal code": "75001",
            "City": "Paris",
        },
    )
    page.get_by_label("VAT or GST number").fill("FR40303265045")
    # The format check answers as the number is typed, before anything is saved.
    check = page.locator("#vat-check")
    expect(check).to_contain_text("FR40303265045: format and checksum are valid")
    expect(check).to_contain_text("EU consumer VAT until VIES confirms")
    assert BillingAccount.objects.filter(organization__public_id=org.id, tax_id="FR40303265045").count() == 0
    page.check("format-checked")

    page.get_by_role("button", name="Save billing details").click()
    expect(page.get_by_text("Billing details saved.")).to_be_visible()
    badge = page.locator("#vat-status-badge")
    expect(badge).to_have_text("Format valid, waiting for VIES")
    page.check("waiting-for-vies")
    # The worker asks VIES; the page, left open, shows the answer without a reload.
    navigations = page.navigations
    expect(badge).to_have_text("Confirmed by VIES", timeout=30_000)
    expect(page.locator("#tax-treatment")).to_contain_text("Reverse charge")
    expect(page.locator("#tax-treatment")).to_contain_text("0 %")
    expect(page.locator("#tax-sentence")).to_contain_text("you account for it yourself")
    assert page.navigations == navigations
    assert any(r["vatNumber"] == "40303265045" for r in vies.requests)
    page.check("reverse-charge")

    # The card: Stripe's hosted Checkout (the fake's stand-in, on its own host) and back.
    expect(page.locator("#card-on-file")).to_have_text("No card on file: invoices wait for a bank transfer.")
    page.get_by_role("button", name="Add a card").click()
    expect(page.page).to_have_url(re.compile(re.escape(stripe_fake.url) + r"/c/pay/cs_test_"))
    page.get_by_label("Card number").fill("4242 4242 4242 4242")
    page.get_by_role("button", name="Save card").click()
    expect(page.get_by_text("Card saved: it pays your invoices from now on.")).to_be_visible()
    expect(page.locator("#card-on-file")).to_contain_text("Visa ending in 4242")
    # Leaving for Checkout is the one request to another host this journey makes, and the only one allowed.
    page.problems = [p for p in page.problems if not p.startswith(f"request to another host: {stripe_fake.url}/")]
    page.check("card-saved")
    expect(page.get_by_role("button", name="Replace card")).to_be_visible()

    account = BillingAccount.objects.get(organization__public_id=org.id)
    customer = stripe_fake.customers[account.stripe_customer_id]
    assert account.stripe_payment_method_id in stripe_fake.payment_methods
    assert stripe_fake.payment_methods[account.stripe_payment_method_id]["customer"] == customer["id"]


def test_finnish_consumer_sees_25_5_percent_vat_when_no_number_is_given(site, settings):
    settings.STRIPE_SECRET_KEY = ""
    org = make_organization(name="Koti")
    page = site.page(org.owner, name="owner")
    page.goto(f"/console/o/{org.id}/billing/details")
    expect(page.get_by_text("Cards are not enabled on this installation")).to_be_visible()
    _fill_details(
        page,
        **{
            "Country": "FI",
            "Billing email": "matti@example.fi",
            "Street address": "Mannerheimintie 1",
            "Postal code": "00100",
            "City": "Helsinki",
        },
    )
    page.get_by_role("button", name="Save billing details").click()
    expect(page.get_by_text("Billing details saved.")).to_be_visible()
    expect(page.locator("#tax-treatment")).to_contain_text("EU consumer VAT")
    expect(page.locator("#tax-treatment")).to_contain_text("25.5 %")
    expect(page.locator("#tax-sentence")).to_have_text(
        "Without a VAT number confirmed by VIES you are billed as a consumer in FI: invoices charge FI VAT at 25.5 %."
    )
    expect(page.get_by_role("button", name="Add a card")).to_have_count(0)
    page.check("finnish-consumer")


def test_project_user_has_no_billing_link_and_a_403_when_opening_billing_pages(site):
    org = make_organization(name="Acme")
    user, _ = org.add_member(project_grants=[(org.default_project, "project_user")], email="pat@example.com")
    page = site.page(user, name="project-user")
    page.goto(f"/console/o/{org.id}/p/{org.default_project.public_id}")
    sections = page.get_by_role("navigation", name="Sections")
    expect(sections.get_by_role("link", name="Deployments")).to_be_visible()
    expect(sections.get_by_role("link", name="Billing")).to_have_count(0)
    for path in ("billing", "billing/details", "billing/invoices", "billing/annual", "billing/credits"):
        response = page.goto(f"/console/o/{org.id}/{path}")
        assert response.status == 403, path
    page.check("billing-forbidden")
    # Reading is not writing: an Auditor sees Billing but no form to change it.
    auditor, _ = org.add_member(roles=["auditor"], email="audrey@example.com")
    reader = site.page(auditor, name="auditor")
    reader.goto(f"/console/o/{org.id}/billing/details")
    expect(reader.get_by_role("heading", name="Billing details")).to_be_visible()
    expect(reader.get_by_role("button", name="Save billing details")).to_have_count(0)
    reader.goto(f"/console/o/{org.id}/billing/credits")
    expect(reader.get_by_role("button", name="Redeem")).to_have_count(0)


def test_owner_sets_a_budget_alert_from_the_overview_when_the_amount_is_a_decimal(site):
    from alerts.models import AlertRule

    org = make_organization(name="Acme")
    page = site.page(org.owner, name="owner")
    page.goto(f"/console/o/{org.id}/billing")
    expect(page.get_by_role("heading", name="Budget alert")).to_be_visible()
    page.get_by_label("Tell me when").select_option(label="this month's spend passes")

    for amount, message in (("250,00", "decimal string in USD"), ("-5", "above zero"), ("0.001", "USD")):
        page.get_by_label("Amount (USD)").fill(amount)
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Set budget alert").click()
        assert answer.value.status == 400, amount
        expect(page.locator("#id_budget-budget_amount ~ ul.errorlist").first).to_contain_text(message)
        assert not AlertRule.objects.filter(organization=org.organization, kind="budget").exists()
    page.check("budget-refused")

    page.get_by_label("Amount (USD)").fill("250.00")
    page.get_by_role("button", name="Set budget alert").click()
    expect(
        page.get_by_text("Budget alert set: you are told when this month's spend passes 250.00 USD.")
    ).to_be_visible()
    rule = AlertRule.objects.get(organization=org.organization, kind="budget")
    assert (rule.metric, rule.operator, rule.budget_scope) == ("spend_month_to_date", ">", "organization")
    assert (rule.budget_minor, rule.budget_currency) == (25000, "USD")
    expect(page.get_by_text("Monthly spend above 250.00 USD")).to_be_visible()
    page.check("budget-set")

    # An Accountant reads spend but may not create alert rules (the API's rule): no form, a word on who can.
    accountant, _ = org.add_member(roles=["accountant"], email="ap@acme.example")
    other = site.page(accountant, name="accountant")
    other.goto(f"/console/o/{org.id}/billing")
    expect(other.get_by_text("Monthly spend above 250.00 USD")).to_be_visible()
    expect(other.get_by_role("button", name="Set budget alert")).to_have_count(0)
