"""The billing API: the tax matrix on accounts and issued invoices, bad input, roles and tenancy, invoice documents,
annual quotes."""

import datetime
import io
from decimal import Decimal

import pytest
from django.test import override_settings
from pypdf import PdfReader

from billing import invoicing, metering, services
from billing.models import AnnualQuote, Coupon, Invoice
from billing.tax import REVERSE_CHARGE_MENTION
from tests.billing.conftest import ADDRESS, at
from tests.fakes.vies import FakeVies

pytestmark = pytest.mark.django_db


def account_url(org):
    return f"/api/v1/organizations/{org.id}/billing/account"


def owner(org, key_client):
    return key_client(org.owner_secret)


def put_account(client, org, **fields):
    body = {
        "country": "US",
        "company": "",
        "email": "billing@example.com",
        "postal_code": "94105",
        "tax_id": "",
        **ADDRESS,
        **fields,
    }
    return client.put(account_url(org), body, format="json")


TAX_MATRIX = [
    # country, company, tax id, postal code, vat_status, treatment, rate, tax on 90.72
    # A number that passed the format check but that VIES has not confirmed is taxed as a French consumer's.
    ("FR", "Exemple SAS", "FR40303265045", "75001", "format_valid", "eu_consumer", "20", 1814),
    ("DE", "Beispiel GmbH", "DE136695976", "10115", "format_valid", "domestic", "19", 1724),
    ("FR", "", "", "75001", "none", "eu_consumer", "20", 1814),
    ("FI", "", "", "00100", "none", "eu_consumer", "25.5", 2313),
    ("US", "Acme Inc.", "04-2103594", "94105", "format_valid", "outside_scope", "0", 0),
    ("FR", "Exemple SAS", "FR40303265046", "75001", "invalid", "eu_consumer", "20", 1814),
]


@pytest.mark.parametrize(
    "country,company,tax_id,postal,vat_status,treatment,rate,tax",
    TAX_MATRIX,
    ids=["fr-company-unconfirmed", "de-company", "fr-consumer", "fi-consumer", "us-company", "fr-bad-checksum"],
)
def test_treatment_in_api_and_on_issued_invoice_when_customer_varies(
    owner_org,
    key_client,
    make_deployment,
    history,
    usd_rates,
    country,
    company,
    tax_id,
    postal,
    vat_status,
    treatment,
    rate,
    tax,
):
    client = owner(owner_org, key_client)
    response = put_account(client, owner_org, country=country, company=company, tax_id=tax_id, postal_code=postal)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["vat_status"], body["tax_treatment"], body["tax_rate"]) == (vat_status, treatment, rate)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), at(2026, 3, 11, 4)), ("stopped", at(2026, 3, 11, 4), at(2026, 3, 13, 4))])
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 1))
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    listed = client.get(f"/api/v1/organizations/{owner_org.id}/invoices").json()["results"]
    (invoice,) = listed
    assert (invoice["tax_treatment"], Decimal(invoice["tax_rate"]), invoice["tax"]) == (treatment, Decimal(rate), tax)
    assert invoice["total"] == 9072 + tax
    assert invoice["tax_mention"] == (REVERSE_CHARGE_MENTION if treatment == "reverse_charge" else "")


def test_vat_status_valid_after_vies_confirms_and_kept_when_vies_unreachable(owner_org, key_client):
    client = owner(owner_org, key_client)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.register("FR", "40303265045", name="EXEMPLE SAS")
        response = put_account(
            client, owner_org, country="FR", company="Exemple SAS", tax_id="FR 403 032 650 45", postal_code="75001"
        )
        assert response.json()["vat_status"] == "format_valid"
        account_id = owner_org.organization.billing_account.pk
        assert services.billing_account_check_vat(account_id=account_id) == "valid"
    assert client.get(account_url(owner_org)).json()["vat_status"] == "valid"

    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        put_account(client, owner_org, country="DE", company="Beispiel GmbH", tax_id="DE136695976", postal_code="10115")
        vies.outage = "MS_UNAVAILABLE"
        with pytest.raises(services.ViesUnavailable):
            services.billing_account_check_vat(account_id=account_id)
    with override_settings(VIES_URL="http://127.0.0.1:9/unreachable"):
        with pytest.raises(services.ViesUnavailable):
            services.billing_account_check_vat(account_id=account_id)
    assert client.get(account_url(owner_org)).json()["vat_status"] == "format_valid"


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"country": "DE", "company": "Beispiel GmbH", "tax_id": "FR40303265045", "postal_code": "10115"}, "tax_id"),
        ({"country": "US", "postal_code": "ABCDE"}, "postal_code"),
        ({"country": "US", "postal_code": "94105", "currency": "XYZ"}, "currency"),
        ({"country": "US", "postal_code": "94105", "currency": "dollars"}, "currency"),
        ({"country": "US", "postal_code": "94105", "currency": 840}, "currency"),
        ({"country": "US", "postal_code": "94105", "iban": "DE02"}, "iban"),
        ({"country": "DE", "postal_code": "10115", "address": "  "}, "address"),
        ({"country": "DE", "postal_code": "", "city": "Berlin"}, "postal_code"),
        ({"country": "DE", "postal_code": "10115", "address": "Torstr. 1\nVAT-free"}, "address"),
        ({"country": "FR", "postal_code": "75001", "company": "Exemple\u2028SAS"}, "company"),
    ],
    ids=[
        "vat-wrong-country",
        "us-postal",
        "unknown-currency",
        "malformed-currency",
        "number-currency",
        "unknown-field",
        "no-street",
        "no-postal-code",
        "line-break-in-street",
        "line-separator-in-company",
    ],
)
def test_400_names_the_field_when_billing_details_are_bad(owner_org, key_client, fields, field):
    response = put_account(owner(owner_org, key_client), owner_org, **fields)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert field in [error["field"] for error in response.json()["errors"]]


def test_roles_decide_who_reads_and_writes_billing_when_members_differ(owner_org, key_client):
    accountant, _ = owner_org.add_member(roles=["accountant"])
    auditor, _ = owner_org.add_member(roles=["auditor"])
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    _, accountant_secret = owner_org.key_for(accountant, role="accountant")
    _, auditor_secret = owner_org.key_for(auditor, role="auditor")
    _, user_secret = owner_org.key_for(user, role="project_user", projects=[owner_org.default_project])
    assert put_account(key_client(accountant_secret), owner_org, postal_code="94105").status_code == 200
    assert key_client(auditor_secret).get(account_url(owner_org)).status_code == 200
    assert put_account(key_client(auditor_secret), owner_org).status_code == 403
    assert key_client(user_secret).get(account_url(owner_org)).status_code == 403


def test_other_organizations_invoice_is_404_when_fetched_by_id(
    owner_org, org_factory, key_client, make_deployment, history
):
    other = org_factory()
    history(make_deployment(other.default_project), [("running", at(2026, 3, 31, 20), None)])
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 31))
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 1))
    invoice = Invoice.objects.get()
    client = owner(owner_org, key_client)
    for suffix in ("", "/pdf", "/html"):
        assert (
            client.get(f"/api/v1/organizations/{owner_org.id}/invoices/{invoice.public_id}{suffix}").status_code == 404
        )
    assert (
        owner(other, key_client).get(f"/api/v1/organizations/{other.id}/invoices/{invoice.public_id}").status_code
        == 200
    )


def test_pdf_and_html_hold_number_totals_treatment_and_mention_when_reverse_charge(
    owner_org, key_client, make_deployment, history
):
    client = owner(owner_org, key_client)
    put_account(client, owner_org, country="FR", company="Exemple SAS", tax_id="FR40303265045", postal_code="75001")
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):
        vies.register("FR", "40303265045", name="EXEMPLE SAS")
        services.billing_account_check_vat(account_id=owner_org.organization.billing_account.pk)
    history(make_deployment(owner_org.default_project), [("running", at(2026, 3, 1), at(2026, 3, 11, 4))])
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 1))
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 1))
    invoice = Invoice.objects.get()
    base = f"/api/v1/organizations/{owner_org.id}/invoices/{invoice.public_id}"
    response = client.get(base + "/pdf", HTTP_ACCEPT="application/pdf")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(response.content))
    text = " ".join(" ".join(page.extract_text().split()) for page in reader.pages)
    assert invoice.number in text
    assert "87.84 USD" in text  # subtotal and total
    assert "reverse_charge" in text
    assert "Article 196" in text and "2006/112/EC" in text
    html = client.get(base + "/html").content.decode()
    assert invoice.number in html and "87.84 USD" in html and "Article 196" in html


def quote_url(org, dep):
    return f"/api/v1/organizations/{org.id}/projects/{org.default_project.public_id}/deployments/{dep.public_id}/annual-quotes"


def test_project_administrator_switches_to_annual_and_project_user_cannot(
    owner_org, key_client, make_deployment, history
):
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 1, 1), None)])
    admin_user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_administrator")])
    plain_user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    _, admin_secret = owner_org.key_for(admin_user, role="project_administrator", projects=[owner_org.default_project])
    _, plain_secret = owner_org.key_for(plain_user, role="project_user", projects=[owner_org.default_project])
    assert key_client(plain_secret).post(quote_url(owner_org, dep), {}, format="json").status_code == 403
    client = key_client(admin_secret)
    response = client.post(quote_url(owner_org, dep), {}, format="json")
    assert response.status_code == 201, response.json()
    quote = response.json()
    assert (quote["annual_price"], quote["saving"], quote["hourly_price"]) == (268056, 47304, "0.360000")
    accepted = client.post(f"{quote_url(owner_org, dep)}/{quote['id']}/accept", {"auto_renew": True}, format="json")
    assert accepted.status_code == 201, accepted.json()
    assert accepted.json()["auto_renew"] is True and accepted.json()["annual_price"] == 268056
    twice = client.post(f"{quote_url(owner_org, dep)}/{quote['id']}/accept", {}, format="json")
    assert twice.status_code == 409
    again = client.post(quote_url(owner_org, dep), {}, format="json")
    assert again.status_code == 409 and "already on an annual plan" in again.json()["detail"]
    subs = key_client(owner_org.owner_secret).get(f"/api/v1/organizations/{owner_org.id}/subscriptions").json()
    assert [s["deployment"] for s in subs["results"]] == [dep.public_id]
    assert Invoice.objects.filter(kind="annual").count() == 1


def test_quote_refused_when_expired_or_deployment_not_running(owner_org, key_client, make_deployment, history):
    client = owner(owner_org, key_client)
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 1, 1), None)])
    quote = client.post(quote_url(owner_org, dep), {}, format="json").json()
    AnnualQuote.objects.filter(public_id=quote["id"]).update(expires_at=at(2026, 1, 2))
    expired = client.post(f"{quote_url(owner_org, dep)}/{quote['id']}/accept", {}, format="json")
    assert expired.status_code == 422 and expired.json()["type"].endswith("quote-expired")
    stopped = make_deployment(owner_org.default_project, status="stopped")
    assert client.post(quote_url(owner_org, stopped), {}, format="json").status_code == 409
    assert Invoice.objects.count() == 0


def test_quote_accept_refused_when_the_tax_changed_since_the_quote(owner_org, key_client, make_deployment, history):
    # The quote page shows its VAT and total and accepts "in one click": accepting it after the billing country
    # changed would issue a prepaid invoice with another tax than the one the customer agreed to.
    client = owner(owner_org, key_client)
    assert put_account(client, owner_org, country="US").status_code == 200
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 1, 1), None)])
    quote = client.post(quote_url(owner_org, dep), {}, format="json").json()
    assert quote["tax"] == 0 and quote["tax_treatment"] == "outside_scope"
    assert put_account(client, owner_org, country="DE", postal_code="10115").status_code == 200
    accepted = client.post(f"{quote_url(owner_org, dep)}/{quote['id']}/accept", {}, format="json")
    assert accepted.status_code == 409, accepted.json()
    assert "tax" in accepted.json()["detail"] and "new one" in accepted.json()["detail"]
    assert Invoice.objects.count() == 0
    fresh = client.post(quote_url(owner_org, dep), {}, format="json").json()
    assert fresh["tax_treatment"] == "domestic" and fresh["tax"] > 0
    again = client.post(f"{quote_url(owner_org, dep)}/{fresh['id']}/accept", {}, format="json")
    assert again.status_code == 201, again.json()
    assert Invoice.objects.get().tax_treatment == "domestic"


def test_coupon_refused_when_reused_or_expired(owner_org, key_client):
    client = owner(owner_org, key_client)
    Coupon.objects.create(code="ONCE", amount=1000, currency="USD")
    Coupon.objects.create(code="OLD", amount=1000, currency="USD", valid_until=at(2020, 1, 1))
    url = f"/api/v1/organizations/{owner_org.id}/billing/coupons/redeem"
    first = client.post(url, {"code": "once"}, format="json")
    assert first.status_code == 201 and first.json()["remaining"] == 1000
    assert client.post(url, {"code": "ONCE"}, format="json").status_code == 409
    expired = client.post(url, {"code": "OLD"}, format="json")
    assert expired.status_code == 400 and "expired" in expired.json()["detail"]
    credits = client.get(f"/api/v1/organizations/{owner_org.id}/billing/credits").json()["results"]
    assert [c["amount"] for c in credits] == [1000]


def test_overview_reports_month_to_date_and_forecast_when_deployment_runs(
    owner_org, key_client, make_deployment, history, monkeypatch
):
    from django.utils import timezone

    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    metering.usage_meter(now=at(2026, 3, 11), since=at(2026, 3, 1))
    monkeypatch.setattr(timezone, "now", lambda: at(2026, 3, 11, 0, 30))
    body = owner(owner_org, key_client).get(f"/api/v1/organizations/{owner_org.id}/billing/overview").json()
    # 240 metered hours + the half hour since = 240.5 h x 0.36
    assert body["month_to_date"] == 8658
    assert body["forecast"] == 26784  # 31 days x 24 h x 0.36, by straight line


def test_annual_plan_bought_at_creation_issues_its_prepaid_invoice_at_once(owner_org, key_client):
    from billing.models import AnnualSubscription
    from deployments.models import Deployment

    client = owner(owner_org, key_client)
    response = client.post(
        f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments",
        {"name": "yearly", "plan": "dedicated", "tier": "1k", "region": "local", "billing_cycle": "annual"},
        format="json",
    )
    assert response.status_code == 202, response.content
    deployment = Deployment.objects.get(public_id=response.json()["deployment"]["id"])
    subscription = AnnualSubscription.objects.get(deployment=deployment)
    invoice = subscription.invoices.get()
    assert invoice.kind == "annual" and invoice.subtotal == 268056  # 8,760 h x 0.36 USD x 0.85, to the cent


def test_annual_plan_at_creation_needs_the_annual_scope(owner_org, key_client):
    from deployments.models import Deployment

    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_administrator")])
    _key, secret = owner_org.key_for(user, role="project_administrator", projects=[owner_org.default_project])
    url = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    body = {"name": "yearly", "plan": "dedicated", "tier": "1k", "region": "local", "billing_cycle": "annual"}
    assert key_client(secret).post(url, body, format="json").status_code == 202  # project admins hold it
    user2, _ = owner_org.add_member(roles=["auditor"])
    _key2, secret2 = owner_org.key_for(user2, role="auditor")
    assert key_client(secret2).post(url, {**body, "name": "other"}, format="json").status_code == 403
    assert Deployment.objects.filter(name="other").count() == 0
