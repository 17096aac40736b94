"""Credits valid through the month's end, credit notes and corrected invoices, the end of a voided annual plan, and
one rounding rule: the overview is the invoice's subtotal to the cent."""

import datetime
import io

import pytest
from django.test import override_settings
from pypdf import PdfReader

from billing import annual, documents, invoicing, metering, selectors, services
from billing.models import AnnualSubscription, CreditGrant, CreditNote, Invoice, UsageRecord
from tests.billing.conftest import at
from tests.billing.test_scenarios import set_account
from tests.fakes.vies import FakeVies

pytestmark = pytest.mark.django_db
APRIL = datetime.date(2026, 4, 1)


def grant(account, amount, *, granted_at, expires_at):
    credit = services.credit_grant(account=account, actor=None, kind="promotion", amount=amount, expires_at=expires_at)
    CreditGrant.objects.filter(pk=credit.pk).update(granted_at=granted_at)
    return credit


def test_credits_apply_to_the_usage_before_their_expiry_when_they_expire_at_or_inside_the_month(
    owner_org, make_deployment, history
):
    account = set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 4, 1), at(2026, 5, 1))])  # 720 h x 0.36 = 259.20
    through_april = grant(account, 5000, granted_at=at(2026, 3, 25), expires_at=at(2026, 5, 1))
    mid_april = grant(account, 20000, granted_at=at(2026, 4, 1), expires_at=at(2026, 4, 16))
    expired_in_march = grant(account, 700, granted_at=at(2026, 3, 1), expires_at=at(2026, 4, 1))
    invoicing.invoices_close(month=APRIL, now=at(2026, 5, 1, 0, 20))
    invoice = Invoice.objects.get()
    # The credit expiring on 16 April pays the usage of the hours that ended by then: 15 days x 24 h x 0.36 =
    # 129.60. The credit valid through 1 May 00:00 applies to April in full: 50.00. The one that expired when April
    # began pays nothing. 259.20 - 129.60 - 50.00 = 79.60, no VAT for a US buyer.
    assert (invoice.subtotal, invoice.credits_applied, invoice.total) == (25920, 17960, 7960)
    remaining = dict(CreditGrant.objects.values_list("pk", "remaining"))
    assert remaining == {through_april.pk: 0, mid_april.pk: 20000 - 12960, expired_in_march.pk: 700}


def test_credit_note_cancels_the_invoice_and_a_corrected_one_follows_when_vat_was_wrong(
    owner_org, make_deployment, history, usd_rates, key_client
):
    set_account(owner_org, country="FR", company="Exemple SAS", postal_code="75001", tax_id="FR40303265045")
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 11, 4))])  # 244 h x 0.36 = 87.84
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 1))
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    wrong = Invoice.objects.get()
    # VIES was down at the close: French VAT as to a consumer, 20 % = 17.57
    assert (wrong.number, wrong.tax, wrong.total) == ("MQC-2026-000001", 1757, 10541)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.register("FR", "40303265045")
        services.billing_account_check_vat(account_id=wrong.billing_account_id)

    services.invoice_void(invoice=wrong, actor=None, reason="VIES confirmed the number", now=at(2026, 4, 3, 9))
    note = CreditNote.objects.get()
    assert (note.number, note.invoice_id) == ("MQC-CN-2026-000001", wrong.pk)  # its own series
    assert (note.subtotal, note.credits_applied, note.tax, note.total) == (-8784, 0, -1757, -10541)
    assert list(note.lines.values_list("amount", flat=True)) == [-8784]
    assert not UsageRecord.objects.filter(invoice=wrong).exists()  # released for the corrected invoice
    text = " ".join(PdfReader(io.BytesIO(documents.credit_note_pdf(note))).pages[0].extract_text().split())
    assert "Credit note MQC-CN-2026-000001" in text and "Cancels invoice MQC-2026-000001" in text
    assert "-105.41 USD" in text and "-17.57 USD" in text

    services.invoice_reissue(
        account=wrong.billing_account, month=datetime.date(2026, 3, 1), actor=None, now=at(2026, 4, 3, 9, 5)
    )
    corrected = Invoice.objects.exclude(pk=wrong.pk).get()
    # the same March, the same 244 hours, now reverse charged; the next number of the invoice series
    assert (corrected.number, corrected.tax_treatment, corrected.total) == ("MQC-2026-000002", "reverse_charge", 8784)
    assert UsageRecord.objects.filter(invoice=corrected).count() == 244
    client = key_client(owner_org.owner_secret)
    notes = client.get(f"/api/v1/organizations/{owner_org.id}/credit-notes").json()["results"]
    assert [(n["number"], n["invoice_number"], n["total"]) for n in notes] == [
        ("MQC-CN-2026-000001", "MQC-2026-000001", -10541)
    ]
    assert client.get(f"/api/v1/organizations/{owner_org.id}/credit-notes/{note.public_id}/pdf").status_code == 200
    voided = client.get(f"/api/v1/organizations/{owner_org.id}/invoices/{wrong.public_id}").json()
    assert (voided["status"], voided["credit_note"]) == ("void", note.public_id)


def test_voided_annual_invoice_ends_the_plan_and_hourly_billing_resumes_at_that_second(
    owner_org, make_deployment, history
):
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    quote = annual.annual_quote_create(deployment=dep, actor=None, now=at(2026, 3, 17, 13, 20))
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=at(2026, 3, 17, 13, 20))
    prepaid = subscription.invoices.get()
    metering.usage_meter(now=at(2026, 3, 20, 10, 5), since=at(2026, 3, 17))
    services.invoice_void(invoice=prepaid, actor=None, now=at(2026, 3, 20, 10, 15))
    subscription.refresh_from_db()
    assert (subscription.status, subscription.end_reason, subscription.term_end) == (
        "ended",
        "voided",
        at(2026, 3, 20, 10, 15),
    )
    assert CreditNote.objects.get(invoice=prepaid).total == -268056
    metering.usage_meter(now=at(2026, 3, 20, 12, 5))
    # from 10:15:00: 45 minutes of the 10 o'clock hour, then the whole 11 o'clock hour; nothing during the term
    assert list(
        UsageRecord.objects.filter(deployment=dep, hour__gte=at(2026, 3, 17, 13))
        .order_by("hour")
        .values_list("hour", "seconds")
    ) == [(at(2026, 3, 17, 13), 1200), (at(2026, 3, 20, 10), 2700), (at(2026, 3, 20, 11), 3600)]
    assert not AnnualSubscription.objects.filter(status="active").exists()


def test_upgrade_billed_again_once_when_its_invoice_was_voided(owner_org, make_deployment, history, tiers):
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    quote = annual.annual_quote_create(deployment=dep, actor=None, now=at(2026, 3, 17, 13, 20))
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=at(2026, 3, 17, 13, 20))
    upgrade_at = at(2026, 5, 29, 13, 20)
    dep.status_intervals.filter(ended_at__isnull=True).update(ended_at=upgrade_at)
    history(dep, [("running", upgrade_at, None, "2k")])
    assert annual.annual_upgrades_bill(now=upgrade_at + datetime.timedelta(minutes=40)) == 1
    first = Invoice.objects.get(kind="annual_upgrade")
    assert first.total == 83395
    # Voided to correct it (an address, the VAT), as a monthly invoice is: the plan already says 2k, so only the
    # voided invoice tells that the upgrade is still to be billed.
    services.invoice_void(invoice=first, actor=None, reason="correction", now=upgrade_at + datetime.timedelta(hours=1))
    assert annual.annual_upgrades_bill(now=upgrade_at + datetime.timedelta(hours=2)) == 1
    assert annual.annual_upgrades_bill(now=upgrade_at + datetime.timedelta(hours=3)) == 0
    again = Invoice.objects.exclude(status="void").get(kind="annual_upgrade")
    assert (again.replaces, again.subtotal, again.total, again.subscription) == (first, 83395, 83395, subscription)
    assert list(again.lines.values_list("description", "amount")) == list(
        first.lines.values_list("description", "amount")
    )
    assert CreditNote.objects.get(invoice=first).total == -83395
    subscription.refresh_from_db()
    assert (subscription.status, subscription.tier.code) == ("active", "2k")


def plan_upgraded(owner_org, make_deployment, history):
    """An annual plan bought on 17 March at 13:20 and upgraded to 2k on 29 May at 13:20, its upgrade billed:
    (its prepaid invoice, the upgrade's invoice, when it was upgraded)."""
    set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    quote = annual.annual_quote_create(deployment=dep, actor=None, now=at(2026, 3, 17, 13, 20))
    subscription = annual.annual_quote_accept(quote=quote, actor=None, now=at(2026, 3, 17, 13, 20))
    prepaid = subscription.invoices.get(kind="annual")
    upgrade_at = at(2026, 5, 29, 13, 20)
    dep.status_intervals.filter(ended_at__isnull=True).update(ended_at=upgrade_at)
    history(dep, [("running", upgrade_at, None, "2k")])
    assert annual.annual_upgrades_bill(now=upgrade_at + datetime.timedelta(minutes=40)) == 1
    return prepaid, Invoice.objects.get(kind="annual_upgrade"), upgrade_at


@pytest.mark.parametrize("upgrade_paid", [False, True])
def test_upgrades_go_with_their_plan_when_its_prepaid_invoice_is_voided(
    owner_org, make_deployment, history, tiers, upgrade_paid
):
    """A plan ended by voiding its prepaid invoice was never billed for its term; its upgrade invoice (the rest of
    the term on the dearer tier) was left owed while the same hours were billed by the hour again."""
    prepaid, upgrade, upgrade_at = plan_upgraded(owner_org, make_deployment, history)
    if upgrade_paid:
        services.invoice_mark_paid(invoice=upgrade, actor=None)

    services.invoice_void(
        invoice=prepaid, actor=None, reason="wrong buyer", now=upgrade_at + datetime.timedelta(hours=1)
    )

    upgrade.refresh_from_db()
    refunds = list(CreditGrant.objects.filter(source_invoice=upgrade).values_list("kind", "amount", "remaining"))
    if upgrade_paid:
        assert upgrade.status == "paid" and refunds == [("refund", 83395, 83395)]
    else:
        assert upgrade.status == "void" and refunds == []
        assert CreditNote.objects.get(invoice=upgrade).total == -83395
    # Nothing bills it again: the plan it upgraded was cancelled.
    assert annual.annual_upgrades_bill(now=upgrade_at + datetime.timedelta(hours=3)) == 0
    assert not Invoice.objects.filter(kind="annual_upgrade").exclude(pk=upgrade.pk).exists()


def test_paid_invoice_refused_when_voided(owner_org, make_deployment, history):
    set_account(owner_org)
    history(make_deployment(owner_org.default_project), [("running", at(2026, 3, 31, 20), None)])
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    invoice = Invoice.objects.get()
    services.invoice_mark_paid(invoice=invoice, actor=None)
    with pytest.raises(services.Conflict):
        services.invoice_void(invoice=invoice, actor=None)
    assert CreditNote.objects.count() == 0


def test_month_to_date_equals_the_invoice_subtotal_to_the_cent_when_lines_round_half_a_cent(
    owner_org, make_deployment, history, monkeypatch
):
    from django.utils import timezone

    account = set_account(owner_org)
    # Two deployments of 50 s each: 50 x 0.36 / 3600 = 0.005 a line, 0.01 each once rounded: 0.02 on the invoice.
    # Summed by price first (as the overview did), 100 s made 0.01: a cent apart.
    for name in ("a", "b"):
        history(
            make_deployment(owner_org.default_project, name=name),
            [("running", at(2026, 4, 3, 12), at(2026, 4, 3, 12, 0, 50))],
        )
    # and a third running since the 1st, still running at the overview's instant: metered hours plus the hour so far
    steady = make_deployment(owner_org.default_project, name="steady")
    history(steady, [("running", at(2026, 4, 1), at(2026, 4, 30, 23, 30))])
    metering.usage_meter(now=at(2026, 4, 30, 23, 1), since=at(2026, 4, 1))
    monkeypatch.setattr(timezone, "now", lambda: at(2026, 4, 30, 23, 45))
    overview = selectors.billing_overview(account=account)
    # steady: 719.5 h x 0.36 = 259.02; the two short ones 0.01 + 0.01
    assert overview.month_to_date == 25902 + 2
    monkeypatch.undo()
    invoicing.invoices_close(month=APRIL, now=at(2026, 5, 1, 0, 20))
    assert Invoice.objects.get().subtotal == overview.month_to_date


def _march_invoice_to_a_french_consumer(owner_org, make_deployment, history):
    set_account(owner_org, country="FR", company="", postal_code="75001")
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 11, 4))])  # 244 h x 0.36 = 87.84
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 1))
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    invoice = Invoice.objects.get()
    assert (invoice.subtotal, invoice.tax, invoice.total, invoice.currency) == (8784, 1757, 10541, "USD")
    return invoice


def test_refund_credit_is_the_money_received_before_vat_once_when_staff_credit_a_paid_invoice_twice(
    owner_org, make_deployment, history, usd_rates, admin_client
):
    invoice = _march_invoice_to_a_french_consumer(owner_org, make_deployment, history)
    admin_client.post("/admin/billing/invoice/", {"action": "mark_paid", "_selected_action": [invoice.pk]})
    for _ in range(2):
        admin_client.post("/admin/billing/invoice/", {"action": "issue_credit", "_selected_action": [invoice.pk]})
    # 105.41 received, 17.57 of it VAT: a credit (taken off before tax) of 87.84 pays back exactly 105.41 of an
    # invoice taxed as this one; the gross 105.41 as a credit would give 126.49 back. And once: a second click
    # credits nothing more than was paid.
    refunds = list(CreditGrant.objects.filter(kind="refund").values_list("amount", "currency"))
    assert refunds == [(8784, "USD")]


def test_no_refund_credit_when_the_invoice_was_never_paid(owner_org, make_deployment, history, usd_rates, admin_client):
    invoice = _march_invoice_to_a_french_consumer(owner_org, make_deployment, history)
    admin_client.post("/admin/billing/invoice/", {"action": "issue_credit", "_selected_action": [invoice.pk]})
    services.invoice_void(invoice=invoice, actor=None, reason="wrong", now=at(2026, 4, 3, 9))
    # The credit note cancels the unpaid invoice; a refund credit besides it would pay back money never received.
    assert not CreditGrant.objects.filter(kind="refund").exists()


def test_paid_upgrade_refunded_once_when_staff_refunded_it_before_its_plan_was_voided(
    owner_org, make_deployment, history, tiers
):
    prepaid, upgrade, upgrade_at = plan_upgraded(owner_org, make_deployment, history)
    services.invoice_mark_paid(invoice=upgrade, actor=None)
    services.invoice_refund(invoice=upgrade, actor=None)  # the customer complained; staff gave the money back

    services.invoice_void(
        invoice=prepaid, actor=None, reason="wrong buyer", now=upgrade_at + datetime.timedelta(hours=1)
    )

    # 833.95 was paid for the upgrade and 833.95 given back already: voiding its plan gives nothing more.
    refunds = list(CreditGrant.objects.filter(source_invoice=upgrade).values_list("amount", flat=True))
    assert refunds == [83395]


def test_corrected_invoice_is_not_issued_when_its_audit_event_cannot_be_written(
    owner_org, make_deployment, history, monkeypatch
):
    # The reissue and its audit event are one change: an invoice issued without its event (a crash between the two)
    # would be a mutation the audit log never saw.
    account = set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 2))])
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    services.invoice_void(invoice=Invoice.objects.get(), actor=None, reason="wrong", now=at(2026, 4, 3, 9))

    def failing(**kwargs):
        raise RuntimeError("the audit log could not be written")

    monkeypatch.setattr(services, "audit_record", failing)
    with pytest.raises(RuntimeError, match="audit log"):
        services.invoice_reissue(account=account, month=datetime.date(2026, 3, 1), actor=None, now=at(2026, 4, 3, 9, 5))
    assert list(Invoice.objects.values_list("status", flat=True)) == ["void"]
    assert not UsageRecord.objects.filter(invoice__isnull=False, invoice__status="open").exists()
