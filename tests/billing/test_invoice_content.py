"""What an EU invoice shows (Art. 226 and 230 of Directive 2006/112/EC), the invoice held while the buyer's address
is incomplete or the exchange rate is missing, and the ECB rates loaded from a file, bad files refused whole."""

import datetime
import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from pypdf import PdfReader

from billing import invoicing, metering, selectors, services
from billing.models import Invoice
from tests.billing.conftest import ADDRESS, at

pytestmark = pytest.mark.django_db
DATA = Path(__file__).parent / "data"
MARCH = datetime.date(2026, 3, 1)


def load_rates(name: str = "eurofxref-2026-03-31.xml", *args) -> str:
    out = io.StringIO()
    call_command("load_exchange_rates", "--file", str(DATA / name), *args, stdout=out)
    return out.getvalue()


def bill_244_hours(org, make_deployment, history):
    dep = make_deployment(org.default_project, name="prod-eu")
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 11, 4))])  # 244 h x 0.36 = 87.84 USD
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 1))
    return invoicing.invoices_close(month=MARCH, now=at(2026, 4, 1, 0, 20))


def french_company_unconfirmed(org):
    return services.billing_account_update(
        account=selectors.billing_account_for(organization=org.organization),
        actor=None,
        country="FR",
        company="Exemple SAS",
        email="compta@exemple.fr",
        address="1 rue de Rivoli",
        city="Paris",
        postal_code="75001",
        tax_id="FR40303265045",
        now=at(2026, 3, 1),
    )


def test_pdf_and_html_show_every_mandatory_part_when_vat_is_charged_in_dollars(
    owner_org, make_deployment, history, key_client
):
    load_rates()
    french_company_unconfirmed(owner_org)
    bill_244_hours(owner_org, make_deployment, history)
    invoice = Invoice.objects.get()
    # VAT 20 % of 87.84 USD = 17.568 -> 17.57 USD. In EUR at the ECB rate of 31 March (1 EUR = 1.0823 USD, so
    # 1 USD = 0.923958 EUR): 17.57 x 0.923958237 = 16.2339 -> 16.23 EUR.
    assert (invoice.subtotal, invoice.tax, invoice.total) == (8784, 1757, 10541)
    assert (invoice.vat_currency, invoice.tax_in_vat_currency) == ("EUR", 1623)
    assert invoice.vat_exchange_rate_date == datetime.date(2026, 3, 31)
    base = f"/api/v1/organizations/{owner_org.id}/invoices/{invoice.public_id}"
    client = key_client(owner_org.owner_secret)
    pdf = client.get(base + "/pdf")
    assert pdf.status_code == 200
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(io.BytesIO(pdf.content)).pages)
    html = client.get(base + "/html").content.decode()
    for page in (text, " ".join(html.split())):
        assert "Supply period" in page and "2026-03-01 to 2026-03-31" in page
        assert "DE136695976" in page and "FR40303265045" in page  # seller's and buyer's VAT numbers
        assert "1 rue de Rivoli" in page and "75001 Paris" in page and "FR" in page  # street, postal code, city
        assert "VAT rate" in page and "Taxable amount" in page
        assert "87.84 USD" in page and "17.57 USD" in page  # taxable amount at 20 % and its VAT
        assert "VAT in EUR: 16.23 EUR" in page and "1 USD = 0.923958 EUR" in page and "2026-03-31" in page
    assert invoice.customer["address"] == {
        "street": "1 rue de Rivoli",
        "postal_code": "75001",
        "city": "Paris",
        "state": "",
        "country": "FR",
    }


def test_no_national_amount_when_invoice_currency_is_the_sellers_or_no_vat_is_charged(
    owner_org, make_deployment, history
):
    services.billing_account_update(
        account=selectors.billing_account_for(organization=owner_org.organization),
        actor=None,
        country="US",
        email="ap@acme.example",
        postal_code="94105",
        now=at(2026, 3, 1),
        **ADDRESS,
    )
    bill_244_hours(owner_org, make_deployment, history)  # no rate loaded: none needed without VAT
    invoice = Invoice.objects.get()
    assert (invoice.status, invoice.tax, invoice.vat_currency, invoice.tax_in_vat_currency) == ("open", 0, "", None)


def test_draft_held_reported_then_issued_when_the_address_is_completed(
    owner_org, make_deployment, history, key_client, usd_rates, django_capture_on_commit_callbacks
):
    from audit.models import AuditEvent

    client = key_client(owner_org.owner_secret)
    account_url = f"/api/v1/organizations/{owner_org.id}/billing/account"
    # an account that never gave its details: the banner says what is missing
    assert client.get(account_url).json()["missing_details"] == ["address", "postal_code", "city", "country"]
    with django_capture_on_commit_callbacks(execute=True):
        result = bill_244_hours(owner_org, make_deployment, history)
    (held,) = Invoice.objects.all()
    assert result.held == [held.pk] and result.invoices == []
    assert (held.status, held.number, held.hold_reasons, held.subtotal) == ("draft", None, ["address_incomplete"], 8784)
    assert AuditEvent.objects.filter(action="billing.invoice.held", target_id=held.public_id).exists()
    overview = client.get(f"/api/v1/organizations/{owner_org.id}/billing/overview").json()
    assert overview["held_invoices"] == 1 and overview["missing_details"] == [
        "address",
        "postal_code",
        "city",
        "country",
    ]
    listed = client.get(f"/api/v1/organizations/{owner_org.id}/invoices").json()["results"]
    assert [(i["id"], i["status"], i["hold_reasons"]) for i in listed] == [
        (held.public_id, "draft", ["address_incomplete"])
    ]
    pdf = client.get(f"/api/v1/organizations/{owner_org.id}/invoices/{held.public_id}/pdf")
    assert pdf.status_code == 409 and "draft" in pdf.json()["detail"]

    # a street without the rest is refused, field by field, and changes nothing
    bad = client.put(account_url, {"country": "DE", "email": "me@example.com", "address": "Torstr. 1"}, format="json")
    assert bad.status_code == 400
    assert sorted(e["field"] for e in bad.json()["errors"]) == ["city", "postal_code"]
    held.refresh_from_db()
    assert held.status == "draft"
    ok = client.put(
        account_url,
        {"country": "DE", "email": "me@example.com", "address": "Torstr. 1", "city": "Berlin", "postal_code": "10119"},
        format="json",
    )
    assert ok.status_code == 200 and ok.json()["missing_details"] == []
    held.refresh_from_db()
    # issued at once: a consumer with no country in March is taxed at home (DE 19 %): 87.84 x 19 % = 16.6896 -> 16.69
    assert (held.status, held.hold_reasons, held.tax_rate, held.tax) == ("open", [], 19, 1669)
    assert held.number.startswith("MQC-2026-") and "Torstr. 1" in held.customer["address_lines"]


def test_invoice_waits_for_the_exchange_rate_and_is_issued_when_the_rates_are_loaded(
    owner_org, make_deployment, history
):
    french_company_unconfirmed(owner_org)
    bill_244_hours(owner_org, make_deployment, history)
    (held,) = Invoice.objects.all()
    assert held.hold_reasons == ["exchange_rate_missing"] and held.number is None
    assert "1 held invoices issued" in load_rates()
    held.refresh_from_db()
    assert (held.status, held.tax, held.tax_in_vat_currency) == ("open", 1757, 1623)


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("eurofxref-truncated.xml", [], "not well-formed XML"),
        ("eurofxref-malformed-rate.xml", [], "the rate of USD ('1,0823') is not a number"),
        ("eurofxref-without-usd.xml", [], "the rates of 2026-04-30 lack USD"),
        ("eurofxref-2026-03-31.xml", ["--date", "2026-04-01"], "the file has no rates for 2026-04-01"),
        ("missing.xml", [], "cannot read"),
    ],
    ids=["truncated", "malformed-rate", "day-without-usd", "day-missing", "no-file"],
)
def test_rates_file_refused_whole_with_the_problem_named_when_bad(name, args, message):
    from billing.models import ExchangeRate

    with pytest.raises(CommandError) as refused:
        load_rates(name, *args)
    assert message in str(refused.value)
    assert ExchangeRate.objects.count() == 0  # nothing stored half-way


def test_rates_stored_per_day_and_reloading_changes_nothing_when_file_is_good():
    from billing.models import ExchangeRate

    assert "8 rates stored" in load_rates()
    assert "8 rates stored" in load_rates()  # the same file again: replaced, not doubled
    assert ExchangeRate.objects.count() == 8
    usd = ExchangeRate.objects.get(currency="USD", on=datetime.date(2026, 3, 30))
    assert str(usd.rate.normalize()) == "1.0801"
    # a Saturday finds Friday's rate, a week later nothing
    assert invoicing.exchange_rate(from_currency="USD", to_currency="EUR", on=datetime.date(2026, 4, 4))[1] == (
        datetime.date(2026, 3, 31)
    )
    assert invoicing.exchange_rate(from_currency="USD", to_currency="EUR", on=datetime.date(2026, 4, 8)) is None
