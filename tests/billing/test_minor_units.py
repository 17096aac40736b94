"""Currencies whose minor unit is not the cent: billed, taxed and documented to their own minor unit."""

import datetime
from decimal import Decimal

import pytest

from billing import annual, services
from billing.money import annual_price
from billing.selectors import billing_account_for
from deployments.models import Price
from tests.billing.conftest import ADDRESS, at

pytestmark = pytest.mark.django_db


def prices_in(currency: str, per_usd: Decimal, valid_from: datetime.date) -> None:
    """The catalog's USD prices by the hour and GiB in `currency` at `per_usd` units a dollar."""
    for price in Price.objects.filter(currency="USD", valid_from__lte=valid_from).exclude(kind=Price.Kind.ANNUAL):
        Price.objects.get_or_create(
            plan=price.plan,
            tier=price.tier,
            currency=currency,
            kind=price.kind,
            valid_from=valid_from,
            defaults={"amount": (price.amount * per_usd).quantize(Decimal("0.001"))},
        )


def account_in(org, currency: str, now, **fields):
    values = {"country": "US", "email": "ap@acme.example", "postal_code": "94105", **ADDRESS, **fields}
    return services.billing_account_update(
        account=billing_account_for(organization=org.organization), actor=None, currency=currency, now=now, **values
    )


def test_annual_plan_invoiced_when_its_price_in_dong_has_nine_digits(owner_org, make_deployment, history, key_client):
    # The line's unit price is the year's price: 277,363,500 VND overflowed the column (numeric(14, 6)), and the
    # purchase failed with a server error.
    prices_in("VND", Decimal(25000), datetime.date(2026, 1, 1))
    account_in(owner_org, "VND", at(2026, 3, 1))
    dep = make_deployment(owner_org.default_project, tier="10k")
    history(dep, [("running", at(2026, 3, 2), None)])
    subscription = annual.annual_subscription_start(deployment=dep, actor=None, now=at(2026, 3, 2, 12))
    invoice = subscription.invoices.get()
    yearly = annual_price(hourly_price=Decimal("37250.000"), currency="VND")  # 1.49 USD x 25,000
    assert yearly == 277_363_500
    assert (invoice.subtotal, invoice.total, invoice.currency) == (yearly, yearly, "VND")
    assert [line.amount for line in invoice.lines.all()] == [yearly]
    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/invoices/{invoice.public_id}"
    shown = client.get(url)
    assert shown.status_code == 200, shown.content[:300]
    assert shown.json()["total"] == yearly
    pdf = client.get(f"{url}/pdf", HTTP_ACCEPT="application/pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
