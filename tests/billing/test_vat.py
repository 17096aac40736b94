"""VAT by the facts: reverse charge only on a number VIES confirmed, retried without end while it is not, kept as
proof (our requester number, VIES' consultation number), and the billing details in force in the invoiced month."""

import datetime
import io

import pytest
from django.core.management import call_command
from django.test import override_settings
from pypdf import PdfReader

from billing import documents, invoicing, metering, services
from billing.models import BillingDetails, Invoice, VatCheck
from billing.selectors import billing_account_for
from billing.tax import REVERSE_CHARGE_MENTION
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: the email task runs inline
from tests.billing.conftest import ADDRESS, at
from tests.fakes.vies import FakeVies

pytestmark = pytest.mark.django_db
FR_NUMBER = "FR40303265045"
MARCH = datetime.date(2026, 3, 1)


def french_company(org, *, now=None):
    return services.billing_account_update(
        account=billing_account_for(organization=org.organization),
        actor=None,
        country="FR",
        company="Exemple SAS",
        email="compta@exemple.fr",
        postal_code="75001",
        tax_id=FR_NUMBER,
        now=now or at(2026, 3, 1),
        **ADDRESS,
    )


def run_244_hours(org, make_deployment, history):
    dep = make_deployment(org.default_project)
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 11, 4))])  # 244 h x 0.36 = 87.84 USD
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 1))
    return dep


def test_taxed_as_french_consumer_with_the_reason_printed_when_vies_never_confirmed_the_number(
    owner_org, make_deployment, history, usd_rates
):
    account = french_company(owner_org)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.outage = "MS_UNAVAILABLE"
        with pytest.raises(services.ViesUnavailable):
            services.billing_account_check_vat(account_id=account.pk, now=at(2026, 3, 1, 0, 1))
        run_244_hours(owner_org, make_deployment, history)
        # the close asks VIES once more first (the command does); France is still unavailable
        call_command("close_invoices", "--month", "2026-03", stdout=io.StringIO())
    invoice = Invoice.objects.get()
    # 87.84 USD, VAT 20 % of France as to a consumer: 17.568 -> 17.57; no reverse charge, no Article 196 mention
    assert (invoice.tax_treatment, invoice.tax_rate, invoice.tax, invoice.total) == ("eu_consumer", 20, 1757, 10541)
    assert invoice.tax_mention == ""
    (note,) = invoice.notes
    assert FR_NUMBER in note and "not been confirmed by VIES" in note and "282/2011" in note
    text = " ".join(PdfReader(io.BytesIO(documents.invoice_pdf(invoice))).pages[0].extract_text().split())
    assert "not been confirmed by VIES" in text and "Article 196" not in text


def test_reverse_charge_when_vies_confirms_at_the_check_before_the_close(owner_org, make_deployment, history):
    account = french_company(owner_org)
    run_244_hours(owner_org, make_deployment, history)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.outage = "MS_UNAVAILABLE"
        with pytest.raises(services.ViesUnavailable):
            services.billing_account_check_vat(account_id=account.pk)
        vies.outage = None
        vies.register("FR", "40303265045", name="EXEMPLE SAS")
        call_command("close_invoices", "--month", "2026-03", stdout=io.StringIO())
    invoice = Invoice.objects.get()
    assert (invoice.tax_treatment, invoice.tax, invoice.total) == ("reverse_charge", 0, 8784)
    assert invoice.tax_mention == REVERSE_CHARGE_MENTION and invoice.notes == []
    # the confirmation is a fact about the number all along: the March details carry it
    assert invoice.details.vat_status == "valid" and invoice.details.vat_consultation_number


def test_vies_asked_again_with_doubling_backoff_and_never_given_up_when_it_stays_unavailable(owner_org):
    account = french_company(owner_org, now=at(2026, 3, 1))
    assert account.vat_next_check_at == at(2026, 3, 1)
    now = at(2026, 3, 1)
    waits = []
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.outage = "HTTP_500"
        for _ in range(40):  # far past the day after which the old retries stopped
            assert services.vat_checks_run_due(now=now) == {"valid": 0, "invalid": 0, "unavailable": 1}
            account.refresh_from_db()
            waits.append(account.vat_next_check_at - now)
            assert services.vat_checks_run_due(now=account.vat_next_check_at - datetime.timedelta(seconds=1)) == {
                "valid": 0,
                "invalid": 0,
                "unavailable": 0,
            }  # not due before its time
            now = account.vat_next_check_at
    minute = datetime.timedelta(minutes=1)
    # 1, 2, 4, ... 256 minutes, then every 6 hours for as long as it takes
    assert waits[:9] == [minute * 2**i for i in range(9)]
    assert set(waits[9:]) == {datetime.timedelta(hours=6)}
    assert (account.vat_status, account.vat_check_failures) == ("format_valid", 40)
    assert VatCheck.objects.filter(billing_account=account, outcome="unavailable").count() == 40


def test_requester_sent_and_consultation_number_kept_as_proof_when_vies_confirms(owner_org, admin_client, settings):
    account = french_company(owner_org)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.register("FR", "40303265045", name="EXEMPLE SAS")
        assert services.billing_account_check_vat(account_id=account.pk, now=at(2026, 3, 2, 9)) == "valid"
    # our own VAT number went as the requester (SELLER_VAT_NUMBER, DE136695976)
    assert vies.requests[-1] == {
        "countryCode": "FR",
        "vatNumber": "40303265045",
        "requesterMemberStateCode": "DE",
        "requesterNumber": "136695976",
    }
    check = VatCheck.objects.get(billing_account=account)
    assert (check.outcome, check.consultation_number, check.requester) == ("valid", "WAPIAAAA00000001", "DE136695976")
    assert check.checked_at == at(2026, 3, 2, 9) and check.request_date
    account.refresh_from_db()
    assert (account.vat_consultation_number, account.vat_consulted_at) == ("WAPIAAAA00000001", at(2026, 3, 2, 9))
    page = admin_client.get(f"/admin/billing/billingaccount/{account.pk}/change/").content.decode()
    assert "WAPIAAAA00000001" in page and "VIES consultations" in page


def test_confirmed_number_checked_again_monthly_and_a_new_details_row_when_vies_drops_it(
    owner_org, eager, mailoutbox, django_capture_on_commit_callbacks
):
    account = french_company(owner_org)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.register("FR", "40303265045")
        services.billing_account_check_vat(account_id=account.pk, now=at(2026, 3, 2))
        account.refresh_from_db()
        assert account.vat_next_check_at == at(2026, 4, 1)  # 30 days later
        assert services.vat_checks_run_due(now=at(2026, 3, 31, 23)) == {"valid": 0, "invalid": 0, "unavailable": 0}
        vies.registered.clear()  # the company was deregistered
        with django_capture_on_commit_callbacks(execute=True):
            assert services.vat_checks_run_due(now=at(2026, 4, 1)) == {"valid": 0, "invalid": 1, "unavailable": 0}
    rows = list(BillingDetails.objects.filter(billing_account=account).order_by("valid_from"))
    # March keeps the confirmed number; from 1 April the number is invalid
    assert [(r.vat_status, r.valid_from, r.valid_to) for r in rows] == [
        ("valid", at(2026, 3, 1), at(2026, 4, 1)),
        ("invalid", at(2026, 4, 1), None),
    ]
    assert any("could not be confirmed" in m.subject for m in mailoutbox)


def test_april_taxed_by_the_details_in_force_in_april_when_the_customer_moves_on_may_1_at_0010(
    owner_org, make_deployment, history, usd_rates
):
    account = billing_account_for(organization=owner_org.organization)
    for now, country, postal in (
        (at(2026, 4, 1), "DE", "10115"),  # a German consumer first
        (at(2026, 4, 15, 12), "FR", "75001"),  # moves to France mid-April: the last details in force in April
        (at(2026, 5, 1, 0, 10), "US", "94105"),  # and to the US ten minutes into May
    ):
        services.billing_account_update(
            account=account, actor=None, country=country, email="me@example.com", postal_code=postal, now=now, **ADDRESS
        )
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 4, 1), at(2026, 5, 2))])
    invoicing.invoices_close(month=datetime.date(2026, 4, 1), now=at(2026, 5, 1, 0, 20))
    april = Invoice.objects.get(period_start=datetime.date(2026, 4, 1))
    # 720 h x 0.36 = 259.20 USD; French VAT 20 %: 51.84
    assert (april.tax_treatment, april.tax_rate, april.subtotal, april.tax) == ("eu_consumer", 20, 25920, 5184)
    assert april.customer["country"] == "FR" and april.customer["address"]["postal_code"] == "75001"
    invoicing.invoices_close(month=datetime.date(2026, 5, 1), now=at(2026, 6, 1, 0, 20))
    may = Invoice.objects.get(period_start=datetime.date(2026, 5, 1))
    assert (may.tax_treatment, may.tax, may.customer["country"]) == ("outside_scope", 0, "US")  # 24 h, no VAT
    assert may.subtotal == 864


def test_account_shows_invalid_with_what_to_do_and_vat_is_charged_when_vies_rejects_the_number(
    owner_org, key_client, make_deployment, history, usd_rates
):
    client = key_client(owner_org.owner_secret)
    url = f"/api/v1/organizations/{owner_org.id}/billing/account"
    body = {"country": "FR", "company": "Exemple SAS", "email": "a@b.example", "postal_code": "75001", **ADDRESS}
    response = client.put(url, {**body, "tax_id": "FR40303265045"}, format="json")
    assert response.json()["vat_status"] == "format_valid"
    assert "waiting for VIES" in response.json()["vat_status_message"]
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):  # VIES does not know it
        assert services.billing_account_check_vat(account_id=owner_org.organization.billing_account.pk) == "invalid"
    shown = client.get(url).json()
    assert (shown["vat_status"], shown["tax_treatment"], shown["tax_rate"]) == ("invalid", "eu_consumer", "20")
    assert "VIES does not know this VAT number" in shown["vat_status_message"]
    assert shown["vat_consultation_number"] == ""
    run_244_hours(owner_org, make_deployment, history)
    invoicing.invoices_close(month=MARCH, now=at(2026, 4, 1, 0, 20))
    invoice = Invoice.objects.get()
    assert (invoice.tax_treatment, invoice.tax) == ("eu_consumer", 1757)  # 20 % of 87.84


def test_vies_not_asked_about_a_closed_organizations_number_when_checks_are_due(owner_org):
    from organizations import access
    from organizations import services as organization_services

    account = french_company(owner_org, now=at(2026, 3, 1))
    organization_services.organization_delete(
        organization=owner_org.organization,
        actor=access.Principal(user=owner_org.owner),
        confirm_name=owner_org.organization.name,
    )
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.register("FR", "40303265045")
        assert services.vat_checks_run_due(now=at(2026, 4, 2)) == {"valid": 0, "invalid": 0, "unavailable": 0}
        assert services.vat_checks_run_due(now=at(2026, 4, 2), unconfirmed_only=True) == {
            "valid": 0,
            "invalid": 0,
            "unavailable": 0,
        }
    assert vies.requests == []
    account.refresh_from_db()
    assert account.tax_id == "FR40303265045"  # the billing account is kept as it was
