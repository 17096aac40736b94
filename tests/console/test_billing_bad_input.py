"""Bad input on the Billing pages, typed into the real forms: a VAT number of another country, a US ZIP that is not
one, a control character in the company name, an unknown or expired coupon. Each gets a clear message beside its
field and a 4xx answer, never a 500, and nothing is saved half-way: the account keeps what it had."""

import datetime as dt

import pytest
from playwright.sync_api import expect

from tests.console.helpers import make_organization

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

GOOD = {
    "Country": "FR",
    "Company": "Exemple SAS",
    "Billing email": "compta@exemple.fr",
    "Street address": "1 rue de Rivoli",
    "Postal code": "75001",
    "City": "Paris",
    "VAT or GST number": "",
}


def _submit(page, values):
    for label, value in values.items():
        page.get_by_label(label, exact=True).fill(value)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save billing details").click()
    return answer.value.status


def _field_error(page, label):
    """The error list rendered right after the field with this label."""
    field_id = page.get_by_label(label, exact=True).get_attribute("id")
    return page.locator(f"#{field_id} ~ ul.errorlist").first


def _snapshot(org):
    from billing.models import BillingAccount, BillingDetails

    account = BillingAccount.objects.filter(organization=org.organization).first()
    fields = ("country", "company", "email", "address", "postal_code", "tax_id", "vat_status")
    return (
        None if account is None else tuple(getattr(account, f) for f in fields),
        BillingDetails.objects.filter(billing_account__organization=org.organization).count(),
    )


def test_billing_details_refused_beside_the_field_when_vat_number_zip_or_company_is_wrong(site, settings):
    settings.STRIPE_SECRET_KEY = ""
    org = make_organization(name="Exemple")
    page = site.page(org.owner, name="owner")
    page.goto(f"/console/o/{org.id}/billing/details")
    assert _submit(page, GOOD) == 302
    expect(page.get_by_text("Billing details saved.")).to_be_visible()
    before = _snapshot(org)

    # A German VAT number for a French company: refused, and said so as it is typed.
    page.get_by_label("VAT or GST number").fill("DE136695976")
    expect(page.locator("#vat-check")).to_contain_text("a FR VAT number must start with FR")
    status = _submit(page, {"VAT or GST number": "DE136695976"})
    assert status == 400
    expect(_field_error(page, "VAT or GST number")).to_contain_text(
        "The VAT number starts with DE, but the billing country is FR"
    )
    assert _snapshot(org) == before
    page.check("vat-wrong-country")

    # A US ZIP that is not a ZIP: the postal code is refused, the rest of the form is kept as typed.
    status = _submit(page, {"Country": "US", "Postal code": "ABCDE", "City": "Springfield", "VAT or GST number": ""})
    assert status == 400
    expect(_field_error(page, "Postal code")).to_contain_text(
        "is not a valid US postal code (e.g. 12345 or 12345-6789)"
    )
    expect(page.get_by_label("City", exact=True)).to_have_value("Springfield")
    assert _snapshot(org) == before
    page.check("bad-zip")

    # A control character in the company name (it would be printed on invoices).
    page.get_by_label("Postal code", exact=True).fill("62701")
    page.get_by_label("Company", exact=True).evaluate("(el) => { el.value = 'Acme\\u0007 Inc.'; }")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Save billing details").click()
    assert answer.value.status == 400
    expect(_field_error(page, "Company")).to_contain_text("control character")
    assert _snapshot(org) == before

    # A number whose checksum is wrong is kept, with status invalid (a fact about the number, not a typo of ours).
    page.goto(f"/console/o/{org.id}/billing/details")
    page.get_by_label("VAT or GST number").fill("FR40303265046")
    expect(page.locator("#vat-check")).to_contain_text("Format check:")
    expect(page.locator("#vat-check .notice")).to_have_class("notice error small")


def test_coupon_refused_beside_the_field_when_unknown_or_expired(site):
    from billing import selectors
    from billing.models import Coupon, CreditGrant

    org = make_organization(name="Acme")
    account = selectors.billing_account_for(organization=org.organization)
    Coupon.objects.create(code="WELCOME10", amount=1000, currency="USD", credit_valid_days=90)
    Coupon.objects.create(code="OLD", amount=1000, currency="USD", valid_until=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    page = site.page(org.owner, name="owner")
    page.goto(f"/console/o/{org.id}/billing/credits")
    expect(page.locator("#credit-balance")).to_have_text("$0.00")

    for code, message in (("NOPE-2026", "No such coupon."), ("old", "This coupon has expired.")):
        page.get_by_label("Coupon code").fill(code)
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Redeem").click()
        assert answer.value.status == 400
        expect(_field_error(page, "Coupon code")).to_have_text(message)
        assert not CreditGrant.objects.filter(billing_account=account).exists()
    page.check("unknown-coupon")

    page.get_by_label("Coupon code").fill("welcome10")
    page.get_by_role("button", name="Redeem").click()
    expect(page.get_by_text("Coupon redeemed: $10.00 of credit added.")).to_be_visible()
    expect(page.locator("#credit-balance")).to_have_text("$10.00")
    expect(page.get_by_role("row").filter(has_text="WELCOME10")).to_contain_text("$10.00")
    # The same coupon twice on one account is refused, and the balance does not move.
    page.get_by_label("Coupon code").fill("WELCOME10")
    page.get_by_role("button", name="Redeem").click()
    expect(_field_error(page, "Coupon code")).to_have_text("This coupon was already redeemed on this account.")
    assert CreditGrant.objects.filter(billing_account=account).count() == 1
    page.check("coupon-redeemed")
