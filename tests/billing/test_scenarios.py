"""End-to-end billing scenarios with exact amounts: metering from status history, the monthly close, the annual
switch, a tier upgrade mid-term, credits and coupons."""

import datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from billing import annual, invoicing, metering, services
from billing.models import AnnualSubscription, Coupon, CreditGrant, Invoice, InvoiceKind, InvoiceStatus, UsageRecord
from billing.selectors import billing_account_for
from tests.billing.conftest import ADDRESS, at

pytestmark = pytest.mark.django_db
MARCH = datetime.date(2026, 3, 1)
CLOSE_TIME = at(2026, 4, 1, 0, 20)


def set_account(org, **fields):
    account = billing_account_for(organization=org.organization)
    values = {
        "country": "US",
        "company": "Acme Inc.",
        "email": "billing@acme.example",
        "postal_code": "94105",
        "tax_id": "",
        **ADDRESS,
        **fields,
    }
    return services.billing_account_update(account=account, actor=None, **values)


def close_march():
    metering.usage_meter(now=at(2026, 4, 1, 0, 5), since=at(2026, 3, 1))
    return invoicing.invoices_close(month=MARCH, now=CLOSE_TIME)


def monthly_invoice(org):
    return Invoice.objects.get(billing_account__organization=org.organization, kind=InvoiceKind.MONTHLY)


def test_invoice_bills_244_running_and_48_stopped_hours_when_1k_ran_10_days_4_hours_then_stopped_2_days(
    owner_org, make_deployment, history
):
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project, name="prod-eu")
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 11, 4)), ("stopped", at(2026, 3, 11, 4), at(2026, 3, 13, 4))])
    close_march()
    invoice = monthly_invoice(owner_org)
    lines = sorted(invoice.lines.values_list("product", "quantity", "unit_price", "amount"))
    assert lines == [
        ("retention", Decimal("48"), Decimal("0.06"), 288),
        ("running", Decimal("244"), Decimal("0.36"), 8784),
    ]
    assert (invoice.subtotal, invoice.credits_applied, invoice.tax, invoice.total) == (9072, 0, 0, 9072)
    assert (invoice.tax_treatment, invoice.status) == ("outside_scope", InvoiceStatus.OPEN)
    assert invoice.number.startswith("MQC-2026-") and invoice.period_end == datetime.date(2026, 3, 31)
    assert UsageRecord.objects.filter(invoice=invoice).count() == 244 + 48


def test_second_close_changes_nothing_when_month_already_closed(owner_org, make_deployment, history):
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    first = close_march()
    again = invoicing.invoices_close(month=MARCH, now=CLOSE_TIME)
    assert len(first.invoices) == 1 and again.invoices == []
    assert Invoice.objects.count() == 1


def test_numbers_sequential_without_gaps_when_several_accounts_close(org_factory, make_deployment, history):
    orgs = [org_factory() for _ in range(3)]
    for org in orgs:
        set_account(org)
        history(make_deployment(org.default_project), [("running", at(2026, 3, 31, 20), None)])
    close_march()
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"MQC-2026-{n:06d}" for n in range(1, 4)]
    org = org_factory()
    set_account(org)
    history(make_deployment(org.default_project), [("running", at(2026, 4, 1), None)])
    sub = annual.annual_subscription_start(
        deployment=org.default_project.deployments.get(), actor=None, now=at(2026, 4, 2)
    )
    assert sub.invoices.get().number == "MQC-2026-000004"


def test_hourly_lines_end_at_the_second_then_prepaid_invoice_when_switched_to_annual_on_17th_13_20(
    owner_org, make_deployment, history
):
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project, name="factory")
    history(dep, [("running", at(2026, 3, 1), None)])
    quote = annual.annual_quote_create(deployment=dep, actor=None, now=at(2026, 3, 17, 13))
    assert (quote.annual_price, quote.hourly_equivalent, quote.saving) == (268056, 315360, 47304)
    assert quote.accrued_this_month == 14292  # 397 hours at 0.36
    assert quote.expires_at == at(2026, 3, 24, 13)
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=at(2026, 3, 17, 13, 20))
    assert (subscription.term_start, subscription.term_end) == (at(2026, 3, 17, 13, 20), at(2027, 3, 17, 13, 20))
    prepaid = subscription.invoices.get()
    assert (prepaid.kind, prepaid.subtotal, prepaid.total, prepaid.status) == ("annual", 268056, 268056, "open")
    assert prepaid.lines.get().amount == 268056

    close_march()
    invoice = monthly_invoice(owner_org)
    (line,) = invoice.lines.all()
    assert line.seconds == 16 * 86400 + 13 * 3600 + 20 * 60
    assert (line.amount, invoice.total) == (14304, 14304)
    assert not UsageRecord.objects.filter(deployment=dep, hour__gte=at(2026, 3, 17, 14)).exists()
    assert UsageRecord.objects.get(deployment=dep, hour=at(2026, 3, 17, 13)).seconds == 1200


def test_prorated_difference_billed_once_when_tier_upgraded_mid_term(owner_org, make_deployment, history, tiers):
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    quote = annual.annual_quote_create(deployment=dep, actor=None, now=at(2026, 3, 17, 13, 20))
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=at(2026, 3, 17, 13, 20))
    upgrade_at = at(2026, 3, 17, 13, 20) + datetime.timedelta(days=73)  # 292 of 365 days left: 80 %
    dep.status_intervals.filter(ended_at__isnull=True).update(ended_at=upgrade_at)
    history(dep, [("running", upgrade_at, None, "2k")])
    dep.tier = tiers["2k"]
    dep.save(update_fields=["tier"])

    assert annual.annual_upgrades_bill(now=upgrade_at + datetime.timedelta(minutes=40)) == 1
    assert annual.annual_upgrades_bill(now=upgrade_at + datetime.timedelta(hours=2)) == 0
    upgrade = Invoice.objects.get(kind=InvoiceKind.ANNUAL_UPGRADE)
    # (3,723.00 - 2,680.56) x 292/365 = 833.952
    assert (upgrade.subtotal, upgrade.total) == (83395, 83395)
    subscription.refresh_from_db()
    assert (subscription.tier.code, subscription.annual_price) == ("2k", 372300)
    # covered hours stay free after the upgrade
    metering.usage_meter(now=upgrade_at + datetime.timedelta(hours=5), since=upgrade_at - datetime.timedelta(hours=2))
    assert not UsageRecord.objects.filter(deployment=dep, hour__gte=at(2026, 3, 17, 14)).exists()


def test_oldest_credit_then_coupon_applied_before_tax_and_expired_credit_skipped_when_invoice_closes(
    owner_org, make_deployment, history, usd_rates
):
    account = set_account(owner_org, country="DE", company="", postal_code="10115")
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 11, 4)), ("stopped", at(2026, 3, 11, 4), at(2026, 3, 13, 4))])
    promo = services.credit_grant(account=account, actor=None, kind="promotion", amount=500, expires_at=at(2026, 6, 1))
    CreditGrant.objects.filter(pk=promo.pk).update(granted_at=at(2026, 3, 1))
    expiring = services.credit_grant(
        account=account, actor=None, kind="promotion", amount=5000, expires_at=at(2026, 3, 20)
    )
    Coupon.objects.create(code="WELCOME10", amount=1000, currency="USD", credit_valid_days=90)
    coupon_credit = services.coupon_redeem(account=account, actor=None, code="welcome10", now=at(2026, 3, 2))
    close_march()
    invoice = monthly_invoice(owner_org)
    # 90.72 - 15.00 credits = 75.72, then 19 % German VAT (a consumer at home): 14.3868 -> 14.39
    assert (invoice.subtotal, invoice.credits_applied, invoice.tax, invoice.total) == (9072, 1500, 1439, 9011)
    assert (invoice.tax_treatment, invoice.tax_rate) == ("domestic", Decimal("19"))
    balances = {g.pk: g.remaining for g in CreditGrant.objects.all()}
    assert balances == {promo.pk: 0, coupon_credit.pk: 0, expiring.pk: 5000}


def test_coupon_not_applied_when_invoice_is_for_an_annual_plan(owner_org, make_deployment, history):
    account = set_account(owner_org)
    Coupon.objects.create(code="SPRING", amount=5000, currency="USD")
    services.coupon_redeem(account=account, actor=None, code="SPRING", now=at(2026, 3, 1))
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    quote = annual.annual_quote_create(deployment=dep, actor=None, now=at(2026, 3, 5))
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=at(2026, 3, 5))
    invoice = subscription.invoices.get()
    assert (invoice.credits_applied, invoice.total) == (0, 268056)
    assert CreditGrant.objects.get().remaining == 5000


def test_renewed_for_a_year_when_auto_renew_and_back_to_hourly_otherwise(org_factory, make_deployment, history):
    start = at(2026, 3, 1)
    subs = []
    for auto_renew in (True, False):
        org = org_factory()
        dep = make_deployment(org.default_project)
        history(dep, [("running", start, None)])
        subs.append(annual.annual_subscription_start(deployment=dep, actor=None, auto_renew=auto_renew, now=start))
    counts = annual.annual_renewals_process(now=at(2027, 2, 20))
    assert counts["reminders"] == 2
    assert annual.annual_renewals_process(now=at(2027, 3, 1, 0, 5)) == {"reminders": 0, "renewed": 1, "ended": 1}
    renewed, ended = subs
    renewal = AnnualSubscription.objects.get(renewed_from=renewed)
    assert (renewal.term_start, renewal.term_end, renewal.status) == (at(2027, 3, 1), at(2028, 3, 1), "active")
    assert renewal.invoices.get().subtotal == 268056  # an account without an address is taxed at home (DE)
    metering.usage_meter(now=at(2027, 3, 1, 3), since=at(2027, 3, 1))
    assert UsageRecord.objects.filter(deployment=ended.deployment).count() == 3
    assert not UsageRecord.objects.filter(deployment=renewed.deployment).exists()


def test_database_refuses_invoice_when_total_does_not_reconcile(owner_org, make_deployment, history):
    set_account(owner_org)
    history(make_deployment(owner_org.default_project), [("running", at(2026, 3, 31, 22), None)])
    close_march()
    with pytest.raises(IntegrityError), transaction.atomic():
        Invoice.objects.update(total=1)
    for invoice in Invoice.objects.prefetch_related("lines"):
        assert sum(line.amount for line in invoice.lines.all()) == invoice.subtotal
        assert invoice.total == invoice.subtotal - invoice.credits_applied + invoice.tax
