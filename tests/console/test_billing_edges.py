"""The Billing pages' edges, without a browser (Django's test client through the full middleware stack): another
organization's invoice, subscription or Checkout session is a 404 or a refusal; reading roles cannot write; the
spend the overview splits adds up to the month-to-date the API shows; the card page's policy lets the form leave for
Checkout and nowhere else."""

import datetime as dt

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from tests.console.helpers import deployment, make_organization, settle
from tests.fakes.stripe_api import FakeStripe

pytestmark = pytest.mark.django_db


def _client(user):
    client = Client()
    client.force_login(user)
    return client


def _us_account(org):
    from billing import selectors, services

    account = selectors.billing_account_for(organization=org.organization)
    return services.billing_account_update(
        account=account,
        actor=None,
        country="US",
        company="Acme Inc.",
        email="ap@acme.example",
        address="1 Main St",
        city="Springfield",
        postal_code="62701",
    )


def _annual(org, deployments_catalog):
    from billing import annual
    from billing.models import Invoice

    _us_account(org)
    plant = settle(deployment(org.default_project, name="plant"))
    subscription = annual.annual_quote_accept(
        quote=annual.annual_quote_create(deployment=plant, actor=None), actor=None
    )
    return plant, subscription, Invoice.objects.get(billing_account__organization=org.organization)


def test_another_organizations_invoice_and_subscription_are_not_found_when_addressed_by_id(deployments_catalog):
    acme, other = make_organization(name="Acme"), make_organization(name="Other")
    _plant, subscription, invoice = _annual(acme, deployments_catalog)
    mine = _client(acme.owner)
    assert mine.get(f"/console/o/{acme.id}/billing/invoices/{invoice.public_id}").status_code == 200
    pdf = mine.get(f"/console/o/{acme.id}/billing/invoices/{invoice.public_id}/pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    intruder = _client(other.owner)
    for path in (f"billing/invoices/{invoice.public_id}", f"billing/invoices/{invoice.public_id}/pdf"):
        assert intruder.get(f"/console/o/{other.id}/{path}").status_code == 404
        assert intruder.get(f"/console/o/{acme.id}/{path}").status_code == 404
    answer = intruder.post(
        f"/console/o/{other.id}/billing/annual/{subscription.public_id}/auto-renew", {"auto_renew": "on"}
    )
    assert answer.status_code == 404
    subscription.refresh_from_db()
    assert subscription.auto_renew is False


def test_reading_roles_are_refused_when_they_post_to_billing_forms(deployments_catalog):
    from billing.models import AnnualSubscription, BillingAccount

    org = make_organization(name="Acme")
    _plant, subscription, _invoice = _annual(org, deployments_catalog)
    auditor, _ = org.add_member(roles=["auditor"])
    client = _client(auditor)
    before = BillingAccount.objects.values("country", "postal_code").get(organization=org.organization)
    for path, data in (
        ("billing/details", {"details-country": "FR", "details-email": "x@example.com"}),
        ("billing/card", {}),
        ("billing/credits", {"coupon-code": "WELCOME10"}),
        (f"billing/annual/{subscription.public_id}/auto-renew", {"auto_renew": "on"}),
        ("billing/budget", {"budget-metric": "spend_month_to_date", "budget-budget_amount": "10.00"}),
    ):
        assert client.post(f"/console/o/{org.id}/{path}", data).status_code == 403, path
    assert BillingAccount.objects.values("country", "postal_code").get(organization=org.organization) == before
    assert AnnualSubscription.objects.get(pk=subscription.pk).auto_renew is False


def test_auto_renew_refused_in_words_when_the_plan_has_ended(deployments_catalog):
    from billing.models import AnnualSubscription

    org = make_organization(name="Acme")
    _plant, subscription, _invoice = _annual(org, deployments_catalog)
    AnnualSubscription.objects.filter(pk=subscription.pk).update(status="ended")
    client = _client(org.owner)
    answer = client.post(
        f"/console/o/{org.id}/billing/annual/{subscription.public_id}/auto-renew", {"auto_renew": "on"}, follow=True
    )
    assert answer.status_code == 200
    assert "This plan has ended: its renewal can no longer change." in answer.content.decode()
    assert AnnualSubscription.objects.get(pk=subscription.pk).auto_renew is False


def test_spend_by_deployment_and_project_adds_up_to_month_to_date_when_usage_is_metered(deployments_catalog):
    from billing import selectors
    from billing.models import MeteringCursor, UsageRecord
    from projects import services as project_services

    org = make_organization(name="Acme")
    account = _us_account(org)
    lab = project_services.project_create(organization=org.organization, actor=None, name="Lab")
    plants = [settle(deployment(org.default_project, name="a")), settle(deployment(lab, name="b", tier="2k"))]
    # Metered usage is of whole hours before `now`. In the month's first hour no hour has ended yet, so the test
    # reads the month as of its second hour: records at or after `now` do not exist in a running system.
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    start = this_hour.replace(day=1, hour=0)
    now = max(this_hour, start + dt.timedelta(hours=1))
    hours = int((now - start).total_seconds() // 3600)
    UsageRecord.objects.bulk_create(
        UsageRecord(
            deployment=plant,
            organization=org.organization,
            tier=plant.tier,
            hour=start + dt.timedelta(hours=h),
            product="running",
            seconds=1234 + (7 * h) % 2000,
            unit_price="0.360000" if plant.tier.code == "1k" else "0.500000",
            currency="USD",
        )
        for plant in plants
        for h in range(hours)
    )
    MeteringCursor.objects.update_or_create(pk=1, defaults={"metered_until": now})
    breakdown = selectors.spend_breakdown(account=account, now=now)
    overview = selectors.billing_overview(account=account, now=now)
    assert breakdown.spend.month_to_date == overview.month_to_date > 0
    assert breakdown.spend == selectors.spend_month_to_date(account=account, now=now)
    assert sum(r.amount for r in breakdown.by_deployment) == overview.month_to_date
    assert sum(r.amount for r in breakdown.by_project) == overview.month_to_date
    assert {r.key for r in breakdown.by_project} == {org.default_project.pk, lab.pk}
    # Days round once per day and price instead of once per line: within a cent a day of the invoice's lines.
    days = sum(amount for _day, amount in breakdown.by_day)
    assert abs(days - overview.month_to_date) <= len(breakdown.by_day) * 2


def test_checkout_return_refused_when_the_session_belongs_to_another_customer(deployments_catalog):
    from billing import selectors, services
    from billing.models import BillingAccount
    from billing.stripe_gateway import create_checkout_setup_session, make_client

    acme, other = make_organization(name="Acme"), make_organization(name="Other")
    with (
        FakeStripe(serve_checkout=True) as fake,
        override_settings(STRIPE_SECRET_KEY=fake.api_key, STRIPE_API_BASE=fake.url),
    ):
        _us_account(acme), _us_account(other)
        mine = selectors.billing_account_for(organization=acme.organization)
        theirs = selectors.billing_account_for(organization=other.organization)
        services.billing_account_sync_stripe(account_id=mine.pk)
        services.billing_account_sync_stripe(account_id=theirs.pk)
        theirs.refresh_from_db()
        client = make_client(api_key=fake.api_key, api_base=fake.url, max_network_retries=0)
        url = create_checkout_setup_session(theirs.stripe_customer_id, "http://x/ok", "http://x/no", client=client)
        session_id = url.rsplit("/", 1)[1]
        fake._complete_checkout(fake.checkout_sessions[session_id], "4242424242424242")

        owner = _client(acme.owner)
        for bad in (session_id, "cs_test_missing", "cs_\nx", "pm_123"):
            page = owner.get(f"/console/o/{acme.id}/billing/card/return", {"session_id": bad}, follow=True)
            assert page.status_code == 200
            assert "Card saved" not in page.content.decode()
        assert BillingAccount.objects.get(pk=mine.pk).stripe_payment_method_id == ""
        # Its own customer's session saves the card, once, however often the browser comes back.
        other_client = _client(other.owner)
        for _ in range(2):
            page = other_client.get(
                f"/console/o/{other.id}/billing/card/return", {"session_id": session_id}, follow=True
            )
            assert "Card saved: it pays your invoices from now on." in page.content.decode()
        saved = BillingAccount.objects.get(pk=theirs.pk).stripe_payment_method_id
        assert saved in fake.payment_methods
        from audit.models import AuditEvent

        assert AuditEvent.objects.filter(action="billing.card.added", organization=other.organization).count() == 1


def test_card_page_lets_the_form_leave_only_for_checkout_when_stripe_is_configured(deployments_catalog):
    org = make_organization(name="Acme")
    client = _client(org.owner)
    with override_settings(STRIPE_SECRET_KEY="", STRIPE_API_BASE=""):
        page = client.get(f"/console/o/{org.id}/billing/details")
        assert "Cards are not enabled on this installation" in page.content.decode()
        assert "form-action 'self'" in page["Content-Security-Policy"]
        assert "checkout" not in page["Content-Security-Policy"]
    with override_settings(STRIPE_SECRET_KEY="sk_test_x", STRIPE_API_BASE=""):
        page = client.get(f"/console/o/{org.id}/billing/details")
        assert "form-action 'self' https://checkout.stripe.com" in page["Content-Security-Policy"]
        # Every other page keeps the plain policy.
        assert "checkout" not in client.get(f"/console/o/{org.id}/billing")["Content-Security-Policy"]


def test_card_button_says_stripe_did_not_answer_and_opens_nothing_when_stripe_is_down(deployments_catalog):
    org = make_organization(name="Acme")
    _us_account(org)
    owner = _client(org.owner)
    with FakeStripe() as fake, override_settings(STRIPE_SECRET_KEY=fake.api_key, STRIPE_API_BASE=fake.url):
        fake.outage = 503
        page = owner.post(f"/console/o/{org.id}/billing/card", follow=True)
        assert page.status_code == 200 and page.redirect_chain[-1][0] == f"/console/o/{org.id}/billing/details"
        assert "Stripe did not answer; nothing was changed. Try again in a minute." in page.content.decode()
        assert not fake.checkout_sessions
        fake.outage = None  # Stripe is back: the same button leaves for Checkout
        answer = owner.post(f"/console/o/{org.id}/billing/card")
        assert answer.status_code == 302 and answer["Location"].startswith("https://checkout.stripe.com/")


def test_billing_page_shows_without_the_card_in_seconds_when_stripe_is_stuck(deployments_catalog):
    import time

    from billing import selectors
    from billing.models import BillingAccount

    org = make_organization(name="Acme")
    _us_account(org)
    owner = _client(org.owner)
    with (
        FakeStripe() as fake,
        override_settings(STRIPE_SECRET_KEY=fake.api_key, STRIPE_API_BASE=fake.url, STRIPE_REQUEST_TIMEOUT_SECONDS=0.5),
    ):
        account = selectors.billing_account_for(organization=org.organization)
        from billing import services

        services.billing_account_sync_stripe(account_id=account.pk)
        account.refresh_from_db()
        card = fake.attach_card(account.stripe_customer_id, last4="4444")
        BillingAccount.objects.filter(pk=account.pk).update(stripe_payment_method_id=card)
        fake.stall = 5.0  # Stripe accepts the connection and does not answer in time
        started = time.monotonic()
        page = owner.get(f"/console/o/{org.id}/billing/details")
        assert page.status_code == 200 and time.monotonic() - started < 3
        assert "4444" not in page.content.decode()
        fake.stall = 0.0  # Stripe answers again: the page names the card
        assert "4444" in owner.get(f"/console/o/{org.id}/billing/details").content.decode()
