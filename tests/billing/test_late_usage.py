"""Late usage is taxed by the rules of its own month (Art. 64(1) Directive 2006/112/EC): when the customer's details
or the VAT rate changed since, it gets its own late-usage invoice for that month; when nothing changed, it stays on
the next monthly invoice. Every usage record is billed once, on exactly one invoice."""

import datetime
import io
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.test import Client, override_settings
from pypdf import PdfReader

from billing import documents, invoicing, metering, services
from billing.models import (
    CreditApplication,
    CreditGrant,
    CreditNote,
    ExchangeRate,
    Invoice,
    InvoiceKind,
    TrafficRecord,
    UsageRecord,
)
from tests.billing.conftest import USD_PER_EUR, at
from tests.billing.test_scenarios import set_account
from tests.fakes.vies import FakeVies

pytestmark = pytest.mark.django_db
DECEMBER, JANUARY, FEBRUARY = datetime.date(2026, 12, 1), datetime.date(2027, 1, 1), datetime.date(2027, 2, 1)
FR_NUMBER = "FR40303265045"


def french_consumer(org, *, now):
    return set_account(org, country="FR", company="", email="me@example.fr", postal_code="75001", now=now)


def becomes_confirmed_business(org, *, now):
    """The customer adds its company and VAT number on `now`, and VIES confirms the number."""
    account = set_account(org, country="FR", company="Exemple SAS", postal_code="75001", tax_id=FR_NUMBER, now=now)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.register("FR", "40303265045")
        assert services.billing_account_check_vat(account_id=account.pk, now=now) == "valid"
    return account


def december_with_late_hours(org, make_deployment, history):
    """December closed with one hour of `steady`; then two more December hours of `late` are metered after it."""
    steady = make_deployment(org.default_project, name="steady")
    history(steady, [("running", at(2026, 12, 31, 23), at(2027, 1, 31))])
    invoicing.invoices_close(month=DECEMBER, now=at(2027, 1, 1, 0, 20))
    december = Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=DECEMBER)
    late = make_deployment(org.default_project, name="late")
    history(late, [("running", at(2026, 12, 31, 22), at(2027, 1, 1, 2))])
    metering.usage_meter(now=at(2027, 1, 1, 3), since=at(2026, 12, 31, 22))
    return december, late


def attached_once():
    """Every usage record and traffic row up to the last close is on exactly one live invoice."""
    assert not UsageRecord.objects.filter(invoice__isnull=True, hour__lt=at(2027, 2, 1)).exists()
    assert not UsageRecord.objects.filter(invoice__status="void").exists()
    assert not TrafficRecord.objects.filter(invoice__status="void").exists()


def test_late_usage_gets_its_own_invoice_with_its_months_vat_when_the_number_was_confirmed_after_its_month(
    owner_org, make_deployment, history, usd_rates, key_client
):
    french_consumer(owner_org, now=at(2026, 12, 1))
    december, late = december_with_late_hours(owner_org, make_deployment, history)
    # one hour at 0.36, French VAT as to a consumer: 20 % of 0.36 = 0.072 -> 0.07
    assert (december.tax_treatment, december.subtotal, december.tax) == ("eu_consumer", 36, 7)
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))

    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    january = Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=JANUARY)
    # 720 h of steady and 2 h of late in January at 0.36, reverse charged
    assert (january.tax_treatment, january.subtotal, january.tax, january.total) == ("reverse_charge", 25992, 0, 25992)
    assert january.customer["vat_number"] == FR_NUMBER
    assert all(line.usage_month == JANUARY for line in january.lines.all())
    late_invoice = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    assert (late_invoice.period_start, late_invoice.period_end) == (DECEMBER, datetime.date(2026, 12, 31))
    # December's 2 late hours: 0.72, French VAT of December as to a consumer, 20 % = 0.144 -> 0.14
    assert (late_invoice.tax_treatment, late_invoice.tax_rate, late_invoice.tax_mention) == ("eu_consumer", 20, "")
    assert (late_invoice.subtotal, late_invoice.tax, late_invoice.total) == (72, 14, 86)
    assert (late_invoice.status, late_invoice.customer["vat_number"], late_invoice.customer["name"]) == (
        "open",
        None,
        "me@example.fr",
    )
    # numbered from the invoice series in the same close, and the VAT in euros at December's last day's rate
    numbers = sorted([december.number, january.number, late_invoice.number])
    assert numbers == ["MQC-2027-000001", "MQC-2027-000002", "MQC-2027-000003"]
    assert late_invoice.vat_exchange_rate_date == datetime.date(2026, 12, 31)
    assert late_invoice.vat_currency == "EUR" and late_invoice.tax_in_vat_currency == 13  # 0.14 USD / 1.0823
    (line,) = late_invoice.lines.all()
    assert (line.usage_month, line.seconds, line.amount) == (DECEMBER, 7200, 72)
    assert UsageRecord.objects.filter(invoice=late_invoice).count() == 2
    assert set(UsageRecord.objects.filter(invoice=late_invoice).values_list("deployment", flat=True)) == {late.pk}
    assert UsageRecord.objects.filter(invoice=january).count() == 720 + 2
    attached_once()
    text = " ".join(PdfReader(io.BytesIO(documents.invoice_pdf(late_invoice))).pages[0].extract_text().split())
    assert "Late usage of an earlier month" in text and "Article 64(1)" in text
    # the API and the console show its kind and December as its supply period
    api_invoice = key_client(owner_org.owner_secret).get(
        f"/api/v1/organizations/{owner_org.id}/invoices/{late_invoice.public_id}"
    )
    assert (api_invoice.status_code, api_invoice.json()["kind"]) == (200, "late_usage")
    assert (api_invoice.json()["period_start"], api_invoice.json()["period_end"]) == ("2026-12-01", "2026-12-31")
    console = Client()
    console.force_login(owner_org.owner)
    listing = console.get(f"/console/o/{owner_org.id}/billing/invoices").content.decode()
    assert "Late usage of an earlier month" in listing and "2026-12-01 – 2026-12-31" in listing
    page = console.get(f"/console/o/{owner_org.id}/billing/invoices/{late_invoice.public_id}").content.decode()
    assert "Supply period 2026-12-01 to 2026-12-31" in page and "Article 64(1)" in page

    # a re-run of the close bills nothing twice
    assert invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 1)).invoices == []
    assert Invoice.objects.count() == 3
    attached_once()


def test_overview_shows_late_usage_as_its_own_late_usage_invoice_with_its_months_tax_when_the_close_splits_it(
    owner_org, make_deployment, history, usd_rates, key_client, monkeypatch
):
    from billing import selectors
    from console.pages import billing as console_billing

    french_consumer(owner_org, now=at(2026, 12, 1))
    december_with_late_hours(owner_org, make_deployment, history)
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))
    # the overview on 20 January (sessions and keys live on the real clock; the overview, on the scenario's)
    clock = SimpleNamespace(now=lambda: at(2027, 1, 20, 12))
    monkeypatch.setattr(selectors, "timezone", clock)
    monkeypatch.setattr(console_billing, "timezone", clock)
    body = key_client(owner_org.owner_secret).get(f"/api/v1/organizations/{owner_org.id}/billing/overview").json()
    (late,) = body["late_usage_invoices"]
    assert (late["month"], late["tax_treatment"], late["tax_rate"]) == ("2026-12-01", "eu_consumer", "20.00")
    console = Client()
    console.force_login(owner_org.owner)
    page = " ".join(console.get(f"/console/o/{owner_org.id}/billing").content.decode().split())
    assert "late usage of December 2026" in page and "late-usage invoice for December 2026" in page
    assert "(EU consumer VAT, 20 %)" in page

    # what the close issues: the same December subtotal on its own invoice with that tax; the rest on January's
    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    late_invoice = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    assert (late_invoice.subtotal, late_invoice.tax_treatment, str(late_invoice.tax_rate)) == (
        late["subtotal"],
        late["tax_treatment"],
        late["tax_rate"],
    )
    january = Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=JANUARY)
    assert not january.lines.filter(usage_month=DECEMBER).exists()


def test_late_usage_taxed_at_its_months_rate_when_the_rate_changed_on_1_january(owner_org, make_deployment, history):
    # Slovakia's standard rate went from 20 % to 23 % on 1 January 2025.
    ExchangeRate.objects.bulk_create(
        [
            ExchangeRate(currency="USD", on=day, rate=USD_PER_EUR, source="tests")
            for day in (datetime.date(2024, 12, 31), datetime.date(2025, 1, 31))
        ]
    )
    set_account(owner_org, country="SK", company="", email="ja@example.sk", postal_code="81101", now=at(2024, 12, 1))
    steady = make_deployment(owner_org.default_project, name="steady")
    history(steady, [("running", at(2024, 12, 31, 23), at(2025, 1, 31))])
    invoicing.invoices_close(month=datetime.date(2024, 12, 1), now=at(2025, 1, 1, 0, 20))
    late = make_deployment(owner_org.default_project, name="late")
    history(late, [("running", at(2024, 12, 31, 14), at(2025, 1, 1, 2))])
    metering.usage_meter(now=at(2025, 1, 1, 3), since=at(2024, 12, 31, 14))
    invoicing.invoices_close(month=datetime.date(2025, 1, 1), now=at(2025, 2, 1, 0, 20))

    january = Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=datetime.date(2025, 1, 1))
    assert (january.tax_treatment, january.tax_rate, january.subtotal) == ("eu_consumer", 23, 25992)
    late_invoice = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    # 10 late hours of December at 0.36 = 3.60, at December's 20 %: 0.72
    assert (late_invoice.tax_rate, late_invoice.subtotal, late_invoice.tax, late_invoice.total) == (20, 360, 72, 432)
    assert late_invoice.period_start == datetime.date(2024, 12, 1)
    assert UsageRecord.objects.filter(invoice=late_invoice).count() == 10
    assert not UsageRecord.objects.filter(invoice__isnull=True, hour__lt=at(2025, 2, 1)).exists()


def test_late_usage_stays_on_the_next_monthly_invoice_when_its_months_tax_is_the_same(
    owner_org, make_deployment, history, usd_rates
):
    account = french_consumer(owner_org, now=at(2026, 12, 1))
    december_with_late_hours(owner_org, make_deployment, history)
    # taxed alike: the overview shows no late-usage invoice, as the close issues none
    from billing import selectors

    assert selectors.billing_overview(account=account, now=at(2027, 1, 20, 12)).late_usage_invoices == []
    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    assert not Invoice.objects.filter(kind=InvoiceKind.LATE_USAGE).exists()
    january = Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=JANUARY)
    late_line = january.lines.get(usage_month=DECEMBER)
    assert (late_line.seconds, late_line.amount) == (7200, 72)
    assert "late usage for December 2026" in late_line.description
    # 722 h + 2 late h at 0.36 = 260.64, French VAT 20 %: 52.128 -> 52.13
    assert (january.tax_treatment, january.subtotal, january.tax) == ("eu_consumer", 26064, 5213)
    attached_once()


def test_held_late_usage_invoice_keeps_its_months_tax_when_released_after_the_rate_arrives(
    owner_org, make_deployment, history, usd_rates
):
    french_consumer(owner_org, now=at(2026, 12, 1))
    december_with_late_hours(owner_org, make_deployment, history)
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))
    december_rates = ExchangeRate.objects.filter(on__gte=datetime.date(2026, 12, 20), on__lte=DECEMBER.replace(day=31))
    kept = list(december_rates.values("currency", "on", "rate", "source"))
    december_rates.delete()
    result = invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    late_invoice = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    january = Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=JANUARY)
    # the reverse-charged January needs no rate; December's VAT in euros does: it waits, January goes out
    assert result.held == [late_invoice.pk] and result.invoices == [january.pk]
    assert (late_invoice.status, late_invoice.number, late_invoice.hold_reasons) == (
        "draft",
        None,
        ["exchange_rate_missing"],
    )
    assert UsageRecord.objects.filter(invoice=late_invoice).count() == 2
    attached_once()

    ExchangeRate.objects.bulk_create([ExchangeRate(**row) for row in kept])
    assert invoicing.invoices_release_held(now=at(2027, 2, 2, 9)) == [late_invoice.pk]
    late_invoice.refresh_from_db()
    assert (late_invoice.status, late_invoice.tax_treatment, late_invoice.tax_rate) == ("open", "eu_consumer", 20)
    assert (late_invoice.subtotal, late_invoice.tax, late_invoice.total) == (72, 14, 86)
    assert late_invoice.customer["vat_number"] is None and late_invoice.period_start == DECEMBER
    assert late_invoice.vat_exchange_rate_date == datetime.date(2026, 12, 31)


def test_held_late_usage_invoice_email_names_it_the_late_usage_invoice_of_its_month_when_it_waits(
    owner_org, make_deployment, history, usd_rates
):
    from notifications.models import EmailNotice

    french_consumer(owner_org, now=at(2026, 12, 1))
    december_with_late_hours(owner_org, make_deployment, history)
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))
    ExchangeRate.objects.filter(on__gte=datetime.date(2026, 12, 20), on__lte=datetime.date(2026, 12, 31)).delete()
    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    late_invoice = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE, status="draft")

    services.invoice_held_notify(invoice=late_invoice)
    notice = EmailNotice.objects.latest("id")
    # not December's monthly invoice, which was issued a month ago: the invoice of December's late usage
    assert notice.subject == "Your late-usage invoice for December 2026 is waiting"
    assert notice.body.startswith("Your late-usage invoice for December 2026 (usage of December 2026 metered after ")


def test_voided_late_usage_invoice_billed_again_by_its_months_rules_at_the_next_close(
    owner_org, make_deployment, history, usd_rates
):
    french_consumer(owner_org, now=at(2026, 12, 1))
    december_with_late_hours(owner_org, make_deployment, history)
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))
    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    first = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    services.invoice_void(invoice=first, actor=None, reason="billed by mistake", now=at(2027, 2, 3, 9))
    note = CreditNote.objects.get(invoice=first)
    assert (note.subtotal, note.tax, note.total, note.tax_treatment) == (-72, -14, -86, "eu_consumer")
    assert not UsageRecord.objects.filter(invoice=first).exists()

    invoicing.invoices_close(month=FEBRUARY, now=at(2027, 3, 1, 0, 20))
    again = Invoice.objects.exclude(pk=first.pk).get(kind=InvoiceKind.LATE_USAGE)
    assert (again.period_start, again.tax_treatment, again.tax_rate, again.total) == (DECEMBER, "eu_consumer", 20, 86)
    assert UsageRecord.objects.filter(invoice=again).count() == 2
    # nothing ran in February: December's usage is all that close billed, on its own invoice again
    assert not Invoice.objects.filter(period_start=FEBRUARY).exists()
    attached_once()


def test_admin_reissues_a_voided_late_usage_invoice_at_once_by_its_months_rules_leaving_this_months_usage(
    owner_org, make_deployment, history, usd_rates, admin_client, monkeypatch
):
    account = french_consumer(owner_org, now=at(2026, 12, 1))
    december_with_late_hours(owner_org, make_deployment, history)
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))
    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    first = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    services.invoice_void(invoice=first, actor=None, reason="wrong lines", now=at(2027, 2, 3, 9))
    current = make_deployment(owner_org.default_project, name="february")
    history(current, [("running", at(2027, 2, 1), at(2027, 2, 3))])
    metering.usage_meter(now=at(2027, 2, 3, 9), since=at(2027, 2, 1))
    # a credit usable in December, and one granted in January that never applied to December's usage
    december_credit = services.credit_grant(account=account, actor=None, kind="promotion", amount=50)
    january_credit = services.credit_grant(account=account, actor=None, kind="promotion", amount=5000)
    CreditGrant.objects.filter(pk=december_credit.pk).update(granted_at=at(2026, 12, 5))
    CreditGrant.objects.filter(pk=january_credit.pk).update(granted_at=at(2027, 1, 5))

    # the staff session lives on the real clock; the invoicing, on the scenario's
    monkeypatch.setattr(invoicing, "timezone", SimpleNamespace(now=lambda: at(2027, 2, 3, 9, 5)))
    response = admin_client.post("/admin/billing/invoice/", {"action": "reissue", "_selected_action": [first.pk]})
    assert response.status_code == 302

    again = Invoice.objects.exclude(pk=first.pk).get(kind=InvoiceKind.LATE_USAGE)
    assert (again.status, again.replaces_id, again.number) == ("open", first.pk, "MQC-2027-000004")
    # December's rules, though the customer is a confirmed business now: French VAT as to a consumer, 20 %, the
    # euro VAT at December's last day's rate; December's credit pays 0.50 of the 0.72, 0.22 x 20 % = 0.044 -> 0.04
    assert (again.period_start, again.period_end) == (DECEMBER, datetime.date(2026, 12, 31))
    assert (again.tax_treatment, again.tax_rate, again.customer["vat_number"]) == ("eu_consumer", 20, None)
    assert (again.subtotal, again.credits_applied, again.tax, again.total) == (72, 50, 4, 26)
    assert again.vat_exchange_rate_date == datetime.date(2026, 12, 31)
    assert dict(CreditGrant.objects.values_list("pk", "remaining")) == {december_credit.pk: 0, january_credit.pk: 5000}
    assert UsageRecord.objects.filter(invoice=again).count() == 2
    # February's usage waits for February's close: no invoice of it, not one record taken
    assert UsageRecord.objects.filter(deployment=current, invoice__isnull=True).count() == 48
    assert not Invoice.objects.filter(period_start=FEBRUARY).exists()
    attached_once()

    # a second click bills nothing twice
    admin_client.post("/admin/billing/invoice/", {"action": "reissue", "_selected_action": [first.pk]})
    assert Invoice.objects.filter(kind=InvoiceKind.LATE_USAGE).count() == 2


def test_late_usage_paid_only_by_credits_usable_in_its_month_after_the_monthly_invoice(
    owner_org, make_deployment, history, usd_rates
):
    account = french_consumer(owner_org, now=at(2026, 12, 1))
    december_with_late_hours(owner_org, make_deployment, history)
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))
    older = services.credit_grant(account=account, actor=None, kind="promotion", amount=26000)
    newer = services.credit_grant(account=account, actor=None, kind="promotion", amount=5000)
    CreditGrant.objects.filter(pk=older.pk).update(granted_at=at(2026, 12, 5))
    CreditGrant.objects.filter(pk=newer.pk).update(granted_at=at(2027, 1, 5))
    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    january = Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=JANUARY)
    late_invoice = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    # January first: 259.92 paid by the older credit; its 0.08 left pays part of December's 0.72. The newer credit
    # was granted in January: it pays nothing of December. 0.64 taxed at 20 %: 0.128 -> 0.13
    assert (january.credits_applied, january.total) == (25992, 0)
    assert (late_invoice.credits_applied, late_invoice.tax, late_invoice.total) == (8, 13, 77)
    assert dict(CreditGrant.objects.values_list("pk", "remaining")) == {older.pk: 0, newer.pk: 5000}
    assert list(CreditApplication.objects.filter(invoice=late_invoice).values_list("grant", "amount")) == [
        (older.pk, 8)
    ]
    assert Decimal(late_invoice.tax_rate) == 20


def test_late_traffic_billed_against_its_months_allowance_when_its_held_invoice_is_released(
    owner_org, make_deployment, history, usd_rates
):
    from billing.money import BYTES_PER_GIB as GIB
    from billing.traffic import traffic_counters_record

    french_consumer(owner_org, now=at(2026, 12, 1))
    heavy = make_deployment(owner_org.default_project, name="heavy")

    def reading(when, gibibytes, uptime):
        traffic_counters_record(
            deployment_id=heavy.pk,
            at=when,
            bytes_received=gibibytes * GIB // 2,
            bytes_sent=gibibytes * GIB // 2,
            uptime_seconds=uptime,
        )

    reading(at(2026, 12, 1, 0, 1), 0, 60)
    reading(at(2026, 12, 20), 130, 60 + 19 * 86400)
    december, _ = december_with_late_hours(owner_org, make_deployment, history)
    # December: 1 h at 0.36, and heavy's 130 GiB with 100 included: 30 x 0.15 = 4.50
    assert december.subtotal == 36 + 450
    reading(at(2026, 12, 31, 23, 59), 135, 60 + 30 * 86400)  # 5 GiB more of December, read after its close
    becomes_confirmed_business(owner_org, now=at(2027, 1, 10))
    ExchangeRate.objects.filter(on__gte=datetime.date(2026, 12, 20), on__lte=datetime.date(2026, 12, 31)).delete()
    invoicing.invoices_close(month=JANUARY, now=at(2027, 2, 1, 0, 20))
    late_invoice = Invoice.objects.get(kind=InvoiceKind.LATE_USAGE)
    assert late_invoice.status == "draft" and late_invoice.subtotal == 72 + 75
    assert TrafficRecord.objects.filter(invoice=late_invoice).exists()
    assert not Invoice.objects.get(kind=InvoiceKind.MONTHLY, period_start=JANUARY).lines.filter(product="traffic")

    ExchangeRate.objects.create(currency="USD", on=datetime.date(2026, 12, 31), rate=USD_PER_EUR, source="tests")
    invoicing.invoices_release_held(now=at(2027, 2, 2, 9))
    late_invoice.refresh_from_db()
    (traffic_line,) = late_invoice.lines.filter(product="traffic")
    # December's allowance was used by the 130 GiB its own invoice billed: the 5 GiB are 5 x 0.15 = 0.75
    assert (traffic_line.quantity, traffic_line.amount, traffic_line.usage_month) == (5, 75, DECEMBER)
    # 0.72 + 0.75 = 1.47 at December's 20 % as to a consumer: 0.294 -> 0.29
    assert (late_invoice.status, late_invoice.subtotal, late_invoice.tax, late_invoice.total) == ("open", 147, 29, 176)
    assert not TrafficRecord.objects.filter(invoice__isnull=True, day__lt=datetime.date(2027, 2, 1)).exists()
