"""Usage without a price is recorded, reported and held, never dropped: metering, /metrics, the admin, the held
invoice issued once the operator adds the price; and no account switches to a currency without prices today."""

import datetime
from decimal import Decimal

import pytest

from billing import invoicing, metering, services
from billing.models import Invoice, UsageRecord
from billing.selectors import billing_account_for
from controlplane.errors import ValidationFailed
from deployments.models import Plan, Price, Tier
from tests.billing.conftest import ADDRESS, at

pytestmark = pytest.mark.django_db


def eur_prices(valid_from: datetime.date, *, hourly_1k: str = "0.33") -> None:
    """EUR prices for every priced tier and plan-wide price of the catalog, the 1k tier at `hourly_1k`."""
    for price in Price.objects.filter(currency="USD", valid_from__lte=valid_from):
        amount = (
            Decimal(hourly_1k) if price.tier and price.tier.code == "1k" and price.kind == "hourly" else price.amount
        )
        Price.objects.get_or_create(
            plan=price.plan,
            tier=price.tier,
            currency="EUR",
            kind=price.kind,
            valid_from=valid_from,
            defaults={"amount": amount},
        )


def eur_account(org, now):
    return services.billing_account_update(
        account=billing_account_for(organization=org.organization),
        actor=None,
        country="US",
        email="ap@acme.example",
        postal_code="94105",
        currency="EUR",
        now=now,
        **ADDRESS,
    )


def test_unpriced_seconds_recorded_reported_held_then_issued_when_the_price_is_added(
    owner_org, make_deployment, history, admin_client, client, settings
):
    eur_prices(datetime.date(2026, 3, 15))
    eur_account(owner_org, at(2026, 3, 20))
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 10), at(2026, 4, 1))])

    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 10))
    # 10-14 March have no EUR price yet: 5 days x 24 h = 120 records, 432,000 s, recorded without a price
    unpriced = UsageRecord.objects.filter(deployment=dep, unit_price__isnull=True)
    assert unpriced.count() == 120 and sum(unpriced.values_list("seconds", flat=True)) == 432000
    assert metering.unpriced_usage_summary() == {"EUR": (120, 432000)}
    # /metrics counts it, the admin lists it
    settings.METRICS_TOKEN = "metrics-secret"
    body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret").content.decode()
    assert 'controlplane_billing_unpriced_usage_seconds{currency="EUR"} 432000.0' in body
    listed = admin_client.get("/admin/billing/usagerecord/?priced=no")
    assert listed.status_code == 200 and "120 usage records" in listed.content.decode()

    result = invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    (held,) = Invoice.objects.all()
    assert result.invoices == [] and result.held == [held.pk]
    assert (held.status, held.number, held.hold_reasons) == ("draft", None, ["unpriced_usage"])
    # the draft already holds every second, priced or not
    assert sum(UsageRecord.objects.filter(invoice=held).values_list("seconds", flat=True)) == 22 * 86400
    body = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret").content.decode()
    assert 'controlplane_billing_held_invoices{reason="unpriced_usage"} 1.0' in body

    # The operator adds the missing price (0.30 EUR from 1 March); the next hourly run prices and issues.
    Price.objects.create(
        plan=Plan.objects.get(code="dedicated"),
        tier=Tier.objects.get(plan__code="dedicated", code="1k"),
        currency="EUR",
        kind="hourly",
        amount=Decimal("0.30"),
        valid_from=datetime.date(2026, 3, 1),
    )
    assert metering.usage_price_pending() == 120
    assert invoicing.invoices_release_held(now=at(2026, 4, 1, 1, 2)) == [held.pk]
    held.refresh_from_db()
    # 120 h x 0.30 = 36.00 EUR; 15-31 March, 408 h x 0.33 = 134.64 EUR; 170.64 EUR, a US buyer: no VAT
    assert sorted(held.lines.values_list("unit_price", "seconds", "amount")) == [
        (Decimal("0.3"), 432000, 3600),
        (Decimal("0.33"), 1468800, 13464),
    ]
    assert (held.status, held.subtotal, held.total, held.hold_reasons) == ("open", 17064, 17064, [])
    assert held.number.startswith("MQC-2026-") and held.currency == "EUR"


def test_currency_without_a_price_today_refused_when_the_account_switches(owner_org, key_client):
    eur_prices(datetime.date(2026, 3, 15))
    account = billing_account_for(organization=owner_org.organization)
    # before the EUR prices are in force: refused, naming the field
    with pytest.raises(ValidationFailed) as refused:
        eur_account(owner_org, at(2026, 3, 14))
    assert "currency" in refused.value.message_dict()
    assert "EUR has no price today" in refused.value.message_dict()["currency"][0]
    account.refresh_from_db()
    assert account.currency == "USD"
    assert eur_account(owner_org, at(2026, 3, 15)).currency == "EUR"
    # JPY has no price at all: the API answers 400 with the field
    response = key_client(owner_org.owner_secret).put(
        f"/api/v1/organizations/{owner_org.id}/billing/account",
        {"country": "US", "email": "a@b.example", "postal_code": "94105", "currency": "JPY", **ADDRESS},
        format="json",
    )
    assert response.status_code == 400
    assert [e["field"] for e in response.json()["errors"]] == ["currency"]
