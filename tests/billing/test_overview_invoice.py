"""The billing overview says what the invoice will say: on an organization with several projects, hourly and
annual deployments, a stopped one paying retention, a credit and VAT, the overview's month-to-date (read in one scan
of the usage, with its splits by deployment, project and day) is the month's invoice subtotal to the cent, and the
invoice's total is that subtotal less the credit the overview shows, plus the VAT."""

import datetime

import pytest
from django.test import Client
from django.utils import timezone

from billing import annual, invoicing, metering, selectors, services
from billing.models import CreditGrant, Invoice, InvoiceKind
from console.templatetags.console import money_minor
from projects import services as project_services
from tests.billing.conftest import at
from tests.billing.test_scenarios import set_account

pytestmark = pytest.mark.django_db
APRIL = datetime.date(2026, 4, 1)
OVERVIEW_AT = at(2026, 4, 30, 23, 45)  # metered until 23:00, the last 45 minutes previewed


def _realistic_month(owner_org, make_deployment, history):
    # A French company without a VAT number: billed as a consumer in France, VAT at 20 %.
    account = set_account(owner_org, country="FR", company="", postal_code="75001", city="Paris")
    lab = project_services.project_create(organization=owner_org.organization, actor=None, name="Lab")
    steady = make_deployment(owner_org.default_project, name="steady")
    history(steady, [("running", at(2026, 4, 1), at(2026, 4, 30, 23, 30))])
    bigger = make_deployment(lab, name="bigger", tier="2k")
    history(
        bigger,
        [
            ("running", at(2026, 4, 3, 10, 17, 41), at(2026, 4, 12, 8)),
            ("stopped", at(2026, 4, 12, 8), at(2026, 4, 30, 23, 30)),  # paying data retention, then deleted
        ],
    )
    # Two short runs of 50 s: half a cent each, a cent each once rounded per line.
    for name in ("blip-a", "blip-b"):
        history(make_deployment(lab, name=name), [("running", at(2026, 4, 9, 12), at(2026, 4, 9, 12, 0, 50))])
    yearly = make_deployment(owner_org.default_project, name="yearly")
    history(yearly, [("running", at(2026, 4, 1), None)])
    quote = annual.annual_quote_create(deployment=yearly, actor=None, now=at(2026, 4, 17, 13, 20))
    annual.annual_quote_accept(quote=quote, actor=None, now=at(2026, 4, 17, 13, 20))  # hourly billing ends here
    credit = services.credit_grant(
        account=account, actor=None, kind="promotion", amount=5000, expires_at=at(2026, 6, 1)
    )
    CreditGrant.objects.filter(pk=credit.pk).update(granted_at=at(2026, 3, 25))
    metering.usage_meter(now=at(2026, 4, 30, 23, 1), since=at(2026, 4, 1))
    return account, lab


def test_overview_month_to_date_is_the_invoice_subtotal_when_projects_annual_credits_and_vat_mix(
    owner_org, make_deployment, history, usd_rates, monkeypatch
):
    account, lab = _realistic_month(owner_org, make_deployment, history)
    monkeypatch.setattr(timezone, "now", lambda: OVERVIEW_AT)
    breakdown = selectors.spend_breakdown(account=account)
    overview = selectors.billing_overview(account=account, spend=breakdown.spend)
    # The overview's one scan and the budget alerts' own read (spend_month_to_date) agree, forecast included.
    assert breakdown.spend == selectors.spend_month_to_date(account=account)
    client = Client()
    client.force_login(owner_org.owner)
    page = client.get(f"/console/o/{owner_org.id}/billing").content.decode()
    monkeypatch.undo()

    invoicing.invoices_close(month=APRIL, now=at(2026, 5, 1, 0, 20))
    invoice = Invoice.objects.get(billing_account=account, kind=InvoiceKind.MONTHLY)
    assert invoice.subtotal > overview.credit_balance == 5000
    assert overview.month_to_date == invoice.subtotal
    assert sum(row.amount for row in breakdown.by_deployment) == invoice.subtotal
    assert sum(row.amount for row in breakdown.by_project) == invoice.subtotal
    assert {row.key for row in breakdown.by_project} == {owner_org.default_project.pk, lab.pk}
    # Days round once per day and price, lines once per deployment, product and price: within a cent a line.
    days = sum(amount for _day, amount in breakdown.by_day)
    assert abs(days - invoice.subtotal) <= len(breakdown.by_deployment) * 2
    assert invoice.tax_treatment == "eu_consumer" and invoice.tax > 0
    assert invoice.credits_applied == overview.credit_balance
    assert invoice.total == invoice.subtotal - overview.credit_balance + invoice.tax
    # and the console shows that amount, to the cent
    assert f'id="stat-month-to-date">{money_minor(invoice.subtotal, invoice.currency)}<' in page.replace("\n", "")
