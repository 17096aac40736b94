"""Stripe through the HTTP fake with the real client (customer sync, card setup, collection, webhooks) and overdue
handling (reminders, billing stop, deletion, restart on payment)."""

import datetime
import time

import pytest
from django.core import mail
from django.test import override_settings
from django.utils import timezone

from audit.models import AuditEvent
from billing import invoicing, metering, services, tasks
from billing import stripe_gateway as gateway
from billing.models import BillingAccount, CreditGrant, CreditNote, Invoice, Payment, StripeEvent
from billing.selectors import billing_account_for
from controlplane.errors import Conflict, NotFound
from deployments.models import Deployment, Operation
from notifications.models import PlatformEvent
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: the email task runs inline
from tests.billing.conftest import ADDRESS, at
from tests.fakes.stripe_api import FakeStripe, build_event, sign_payload
from tests.fakes.vies import FakeVies
from tests.outage import closed_port

pytestmark = pytest.mark.django_db
WEBHOOK_SECRET = "whsec_test_billing"


@pytest.fixture
def fake_stripe():
    with (
        FakeStripe() as fake,
        override_settings(
            STRIPE_SECRET_KEY=fake.api_key, STRIPE_API_BASE=fake.url, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET
        ),
    ):
        yield fake


def post_event(client, event_type, obj, *, event_id=None, secret=WEBHOOK_SECRET, tamper=False):
    payload = build_event(event_type, obj, event_id=event_id)
    header = sign_payload(payload, secret)
    if tamper:
        payload = payload.replace(b'"livemode": false', b'"livemode": true')
    return client.post("/webhooks/stripe", payload, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)


def issue_march_invoice(org, make_deployment, history, *, country="US", postal_code="94105"):
    account = billing_account_for(organization=org.organization)
    if not account.address:
        services.billing_account_update(
            account=account, actor=None, country=country, email="ap@acme.example", postal_code=postal_code, **ADDRESS
        )
    history(make_deployment(org.default_project), [("running", at(2026, 3, 1), at(2026, 3, 11, 4))])
    metering.usage_meter(now=at(2026, 4, 1), since=at(2026, 3, 1))
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 1))
    return Invoice.objects.get(billing_account__organization=org.organization)


def test_card_saved_and_invoice_collected_once_when_customer_goes_through_stripe(
    fake_stripe, owner_org, key_client, client, make_deployment, history
):
    api = key_client(owner_org.owner_secret)
    response = api.put(
        f"/api/v1/organizations/{owner_org.id}/billing/account",
        {
            "country": "FR",
            "company": "Exemple SAS",
            "email": "compta@exemple.fr",
            "postal_code": "75001",
            "tax_id": "FR40303265045",
            "address": "1 rue de Rivoli",
            "city": "Paris",
        },
        format="json",
    )
    assert response.status_code == 200
    account = billing_account_for(organization=owner_org.organization)
    with FakeVies() as vies, override_settings(VIES_URL=vies.url):  # confirmed: reverse charge, no French VAT
        vies.register("FR", "40303265045")
        assert services.billing_account_check_vat(account_id=account.pk) == "valid"
    customer_id = services.billing_account_sync_stripe(account_id=account.pk)
    customer = fake_stripe.customers[customer_id]
    assert customer["email"] == "compta@exemple.fr" and customer["address"]["postal_code"] == "75001"
    assert [(t["type"], t["value"]) for t in fake_stripe.tax_ids[customer_id]] == [("eu_vat", "FR40303265045")]

    setup = api.post(f"/api/v1/organizations/{owner_org.id}/billing/setup-intent", {}, format="json")
    assert setup.status_code == 201
    assert fake_stripe.setup_intents[setup.json()["setup_intent"]]["customer"] == customer_id
    checkout = api.post(
        f"/api/v1/organizations/{owner_org.id}/billing/checkout-session",
        {"success_url": "https://console.example/ok", "cancel_url": "https://console.example/no"},
        format="json",
    )
    assert checkout.status_code == 201 and checkout.json()["url"].startswith("https://checkout.stripe.com/")

    card = fake_stripe.attach_card(customer_id)
    saved = post_event(
        client,
        "setup_intent.succeeded",
        {"id": setup.json()["setup_intent"], "object": "setup_intent", "customer": customer_id, "payment_method": card},
    )
    assert saved.status_code == 200 and saved.json()["outcome"] == "card saved"
    services.billing_account_set_default_card(account_id=account.pk)
    assert fake_stripe.customers[customer_id]["invoice_settings"]["default_payment_method"] == card

    invoice = issue_march_invoice(owner_org, make_deployment, history)
    assert services.invoice_collect(invoice_id=invoice.pk) == "succeeded"
    assert services.invoice_collect(invoice_id=invoice.pk) is None  # paid: nothing more to charge
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    (intent,) = fake_stripe.payment_intents.values()
    assert intent["amount"] == invoice.total == 8784
    keys = [r.headers.get("Idempotency-Key") for r in fake_stripe.requests if r.path == "/v1/payment_intents"]
    assert keys == [f"inv-{invoice.public_id}-attempt-1"]
    # Stripe's own notice of the same payment arrives afterwards, then again: nothing changes
    notice = {
        "id": intent["id"],
        "object": "payment_intent",
        "amount": 8784,
        "amount_received": 8784,
        "metadata": {"invoice_id": invoice.public_id, "attempt": "1"},
    }
    first = post_event(client, "payment_intent.succeeded", notice, event_id="evt_paid_1")
    replay = post_event(client, "payment_intent.succeeded", notice, event_id="evt_paid_1")
    assert first.json()["duplicate"] is False and replay.json()["duplicate"] is True
    assert Payment.objects.filter(invoice=invoice, status="succeeded").count() == 1
    assert StripeEvent.objects.filter(event_id="evt_paid_1").count() == 1


def test_declined_card_leaves_invoice_open_and_next_attempt_gets_new_key(
    fake_stripe, owner_org, make_deployment, history
):
    account = billing_account_for(organization=owner_org.organization)
    services.billing_account_update(
        account=account, actor=None, country="US", email="a@acme.example", postal_code="94105", **ADDRESS
    )
    customer_id = services.billing_account_sync_stripe(account_id=account.pk)
    card = fake_stripe.attach_card(customer_id)
    account.refresh_from_db()
    account.stripe_payment_method_id = card
    account.save()
    services.billing_account_set_default_card(account_id=account.pk)
    fake_stripe.decline_cards_of(customer_id, decline_code="insufficient_funds")
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    assert services.invoice_collect(invoice_id=invoice.pk) == "failed"
    fake_stripe._declines.clear()
    assert services.invoice_collect(invoice_id=invoice.pk) == "succeeded"
    assert list(Payment.objects.filter(invoice=invoice).order_by("attempt").values_list("attempt", "status")) == [
        (1, "failed"),
        (2, "succeeded"),
    ]


def card_on_file(fake_stripe, org):
    account = billing_account_for(organization=org.organization)
    services.billing_account_update(
        account=account, actor=None, country="US", email="a@acme.example", postal_code="94105", **ADDRESS
    )
    customer_id = services.billing_account_sync_stripe(account_id=account.pk)
    account.refresh_from_db()
    account.stripe_payment_method_id = fake_stripe.attach_card(customer_id)
    account.save()
    services.billing_account_set_default_card(account_id=account.pk)
    return customer_id


def test_nobody_is_told_a_payment_failed_when_stripe_answers_that_the_bank_is_still_deciding(
    fake_stripe, owner_org, make_deployment, history, eager, client, django_capture_on_commit_callbacks
):
    fake_stripe.leave_charges_processing(card_on_file(fake_stripe, owner_org))
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.invoice_collect(invoice_id=invoice.pk) == "processing"
    payment = Payment.objects.get(invoice=invoice)
    assert (payment.status, payment.payment_intent_id.startswith("pi_"), payment.failure_message) == (
        "processing",
        True,
        "",
    )
    assert not PlatformEvent.objects.filter(kind="invoice_payment_failed").exists()
    assert not AuditEvent.objects.filter(action="billing.invoice.payment_failed").exists()
    assert AuditEvent.objects.get(action="billing.invoice.payment_processing").summary["attempt"] == 1
    assert mail.outbox == []
    # Nothing is charged again while the bank decides, and its answer settles the invoice.
    assert services.invoice_collect(invoice_id=invoice.pk) is None
    deciding = fake_stripe.payment_intents[payment.payment_intent_id]
    succeeded = {**deciding, "status": "succeeded", "amount_received": deciding["amount"]}
    with override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET):
        answer = post_event(client, "payment_intent.succeeded", succeeded)
    assert answer.status_code == 200, answer.content
    invoice.refresh_from_db()
    assert invoice.status == "paid"


def test_customer_is_asked_to_confirm_the_card_when_the_bank_wants_authentication(
    fake_stripe, owner_org, make_deployment, history, eager, django_capture_on_commit_callbacks
):
    fake_stripe.decline_cards_of(card_on_file(fake_stripe, owner_org), decline_code="authentication_required")
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.invoice_collect(invoice_id=invoice.pk) == "requires_action"
    assert Payment.objects.get(invoice=invoice).status == "requires_action"
    event = PlatformEvent.objects.get(kind="invoice_payment_failed")
    assert f"Payment of invoice {invoice.number} needs your confirmation" in event.message
    assert "confirm" in event.message and "Check the card" not in event.message
    assert [m.subject for m in mail.outbox if "needs your confirmation" in m.subject]
    assert AuditEvent.objects.get(action="billing.invoice.payment_failed").summary["status"] == "requires_action"


def card_attempt(invoice, *, status, intent_id=""):
    """The Payment invoice_collect leaves for attempt 1: `pending` while its call to Stripe has not returned (no
    PaymentIntent id yet), `processing` when Stripe answered that the bank is still deciding."""
    invoice.payment_attempts = 1
    invoice.save(update_fields=["payment_attempts"])
    return Payment.objects.create(
        invoice=invoice,
        method="stripe",
        attempt=1,
        amount=invoice.total,
        currency=invoice.currency,
        status=status,
        payment_intent_id=intent_id,
    )


def intent(invoice, intent_id, **fields):
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": invoice.total,
        "amount_received": invoice.total,
        "currency": invoice.currency.lower(),
        "metadata": {"invoice_id": invoice.public_id, "attempt": "1"},
        **fields,
    }


def test_void_refused_when_a_card_payment_of_the_invoice_is_processing(owner_org, make_deployment, history):
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    card_attempt(invoice, status="processing", intent_id="pi_bank_deciding")
    with pytest.raises(Conflict, match="processing at Stripe"):
        services.invoice_void(invoice=invoice, actor=None, reason="wrong address", now=at(2026, 4, 2))
    invoice.refresh_from_db()
    assert invoice.status == "open" and not CreditNote.objects.filter(invoice=invoice).exists()


@pytest.mark.parametrize(("country", "postal_code"), [("US", "94105"), ("DE", "10115")])
def test_card_payment_credited_and_next_invoice_uses_it_when_it_succeeds_for_a_voided_invoice(
    owner_org, make_deployment, history, client, usd_rates, country, postal_code
):
    """A German consumer's invoice carries 19% VAT, a US customer's none. The credit is the payment before the VAT,
    as credits are taken off before tax: it then pays the released usage's new invoice, VAT included, to the cent."""
    invoice = issue_march_invoice(owner_org, make_deployment, history, country=country, postal_code=postal_code)
    assert (invoice.tax > 0) == (country == "DE")
    card_attempt(invoice, status="pending")  # the charge's call never returned; staff void meanwhile
    services.invoice_void(invoice=invoice, actor=None, reason="wrong address", now=at(2026, 4, 2))
    with override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET):
        response = post_event(client, "payment_intent.succeeded", intent(invoice, "pi_late"), event_id="evt_late")
        # Stripe's notice of the same payment again, under another event id: booked once
        again = post_event(client, "payment_intent.succeeded", intent(invoice, "pi_late"), event_id="evt_late_2")
    assert response.status_code == 200 and again.status_code == 200
    assert StripeEvent.objects.filter(event_id__in=["evt_late", "evt_late_2"]).count() == 2
    assert list(Payment.objects.filter(invoice=invoice).values_list("status", "payment_intent_id", "amount")) == [
        ("succeeded", "pi_late", invoice.total)
    ]
    invoice.refresh_from_db()
    assert (invoice.status, invoice.paid_at) == ("void", None)
    credit = CreditGrant.objects.get(source_invoice=invoice)
    assert (credit.kind, credit.amount, credit.remaining, credit.currency) == ("refund", 8784, 8784, "USD")
    assert invoice.subtotal == 8784 and invoice.total == 8784 + invoice.tax
    assert "pi_late" in credit.description and invoice.number in credit.description
    credited = AuditEvent.objects.filter(action="billing.invoice.payment_credited", target_id=invoice.public_id)
    assert credited.count() == 1

    # March's usage, released by the void, goes on the next invoice as late usage, which the credit pays to the cent.
    # (The credit is granted when the money arrives, on the real clock: the next invoice is the real month's.)
    month = metering.month_start(timezone.now())
    invoicing.invoices_close(month=month.date(), now=metering.next_month_start(month) + datetime.timedelta(hours=1))
    following = Invoice.objects.get(period_start=month.date())
    assert (following.subtotal, following.credits_applied, following.tax, following.total, following.status) == (
        8784,
        8784,
        0,
        0,
        "paid",
    )
    credit.refresh_from_db()
    assert credit.remaining == 0


def test_card_payment_credited_when_staff_marked_the_invoice_paid_while_it_was_processing(
    owner_org, make_deployment, history, client
):
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    card_attempt(invoice, status="processing", intent_id="pi_twice")
    services.invoice_mark_paid(invoice=invoice, actor=None)  # a bank transfer arrived meanwhile
    invoice.refresh_from_db()
    paid_at = invoice.paid_at
    with override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET):
        response = post_event(client, "payment_intent.succeeded", intent(invoice, "pi_twice"), event_id="evt_twice")
    assert response.status_code == 200
    assert sorted(Payment.objects.filter(invoice=invoice).values_list("method", "status", "payment_intent_id")) == [
        ("manual", "succeeded", ""),
        ("stripe", "succeeded", "pi_twice"),
    ]
    invoice.refresh_from_db()
    assert (invoice.status, invoice.paid_at) == ("paid", paid_at)
    assert CreditGrant.objects.get(source_invoice=invoice).amount == 8784


def test_succeeded_payment_and_paid_invoice_kept_when_payment_failed_arrives_after_succeeded(
    owner_org, make_deployment, history, client
):
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    card_attempt(invoice, status="processing", intent_id="pi_3ds")
    failed = intent(invoice, "pi_3ds", last_payment_error={"message": "Your card was declined."})
    with override_settings(STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET):
        # Stripe does not deliver in order: the first confirmation failed, the second succeeded, and the
        # `succeeded` event comes first.
        succeeded = post_event(client, "payment_intent.succeeded", intent(invoice, "pi_3ds"), event_id="e2")
        failed_late = post_event(client, "payment_intent.payment_failed", failed, event_id="e1")
    assert (succeeded.status_code, failed_late.status_code) == (200, 200)
    assert failed_late.json()["outcome"] == "ignored: payment pi_3ds already succeeded"
    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert list(Payment.objects.filter(invoice=invoice).values_list("payment_intent_id", "status")) == [
        ("pi_3ds", "succeeded")
    ]
    assert not PlatformEvent.objects.filter(kind="invoice_payment_failed").exists()
    assert not CreditGrant.objects.exists()


def test_charge_recorded_and_credited_when_the_invoice_is_voided_while_stripe_charges(
    fake_stripe, owner_org, make_deployment, history, monkeypatch
):
    account = billing_account_for(organization=owner_org.organization)
    services.billing_account_update(
        account=account, actor=None, country="US", email="a@acme.example", postal_code="94105", **ADDRESS
    )
    customer_id = services.billing_account_sync_stripe(account_id=account.pk)
    BillingAccount.objects.filter(pk=account.pk).update(stripe_payment_method_id=fake_stripe.attach_card(customer_id))
    services.billing_account_set_default_card(account_id=account.pk)
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    charge = gateway.collect_invoice

    def charge_while_voided(**kwargs):
        # invoice_collect calls Stripe without holding the invoice: staff (or a correction) void it meanwhile
        services.invoice_void(invoice=invoice, actor=None, reason="correction", now=at(2026, 4, 2))
        return charge(**kwargs)

    monkeypatch.setattr(gateway, "collect_invoice", charge_while_voided)
    assert services.invoice_collect(invoice_id=invoice.pk) == "succeeded"
    (intent_id,) = fake_stripe.payment_intents
    assert list(Payment.objects.filter(invoice=invoice).values_list("status", "payment_intent_id", "amount")) == [
        ("succeeded", intent_id, 8784)
    ]
    invoice.refresh_from_db()
    assert invoice.status == "void"
    assert CreditGrant.objects.get(source_invoice=invoice).remaining == 8784


def test_no_card_setup_sent_to_stripe_when_billing_account_deleted_meanwhile(fake_stripe, owner_org):
    account = billing_account_for(organization=owner_org.organization)
    # Another request deletes the account (its organization going away) after this one read it.
    BillingAccount.objects.filter(pk=account.pk).delete()
    with pytest.raises(NotFound):
        services.card_setup_intent_create(account=account, actor=None)
    with pytest.raises(NotFound):
        services.card_checkout_session_create(
            account=account, actor=None, success_url="https://app.example/ok", cancel_url="https://app.example/no"
        )
    assert not fake_stripe.setup_intents and not fake_stripe.checkout_sessions and not fake_stripe.customers


@pytest.mark.parametrize("outage", ["unreachable", "stuck", 500, 429])
def test_card_setup_answers_503_and_records_nothing_when_stripe_is_down(fake_stripe, owner_org, key_client, outage):
    account = billing_account_for(organization=owner_org.organization)
    services.billing_account_sync_stripe(account_id=account.pk)  # the customer exists: only the card call meets it
    api = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/billing"
    checkout = {"success_url": "https://console.example/ok", "cancel_url": "https://console.example/no"}
    with override_settings(
        STRIPE_API_BASE=f"http://127.0.0.1:{closed_port()}" if outage == "unreachable" else fake_stripe.url,
        STRIPE_REQUEST_TIMEOUT_SECONDS=0.5,
    ):
        fake_stripe.outage = outage if isinstance(outage, int) else None
        fake_stripe.stall = 5.0 if outage == "stuck" else 0.0  # accepts the connection, never answers in time
        for path, body in (("setup-intent", {}), ("checkout-session", checkout)):
            started = time.monotonic()
            answer = api.post(f"{base}/{path}", body, format="json")
            # a request's two tries of at most 0.5 s each and the client's backoff between them (at most 0.5 s), not
            # a task's three tries of STRIPE_TIMEOUT_SECONDS
            assert time.monotonic() - started < 3, path
            assert answer.status_code == 503, (path, answer.content)
            assert answer["Content-Type"] == "application/problem+json"
            assert int(answer["Retry-After"]) > 0
            problem = answer.json()
            assert problem["type"].endswith("/unavailable") and problem["status"] == 503
            assert "Stripe did not answer" in problem["detail"]
    assert not AuditEvent.objects.filter(action__startswith="billing.card").exists()
    if outage != "stuck":  # a stuck Stripe may still make what it was asked for: unused, it expires on its own
        assert not fake_stripe.setup_intents and not fake_stripe.checkout_sessions
    fake_stripe.outage, fake_stripe.stall = None, 0.0  # Stripe is back: the same call works
    assert api.post(f"{base}/setup-intent", {}, format="json").status_code == 201


@pytest.mark.parametrize(
    ("path", "stripe_path"), [("setup-intent", "/v1/setup_intents"), ("checkout-session", "/v1/checkout/sessions")]
)
def test_new_stripe_customer_is_audited_when_the_card_call_after_it_fails(
    fake_stripe, owner_org, key_client, path, stripe_path
):
    """The account has no Stripe customer yet: the card call makes one and stores its id, then Stripe fails the card
    call itself. The id stays stored (the next try uses the same customer), so its storing must be audited."""
    account = billing_account_for(organization=owner_org.organization)
    assert not account.stripe_customer_id
    api = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/billing"
    body = {"success_url": "https://console.example/ok", "cancel_url": "https://console.example/no"}
    fake_stripe.outage_of = {stripe_path: 500}
    answer = api.post(f"{base}/{path}", body if path == "checkout-session" else {}, format="json")
    assert answer.status_code == 503, answer.content
    account.refresh_from_db()
    assert account.stripe_customer_id in fake_stripe.customers
    event = AuditEvent.objects.get(action="billing.account.stripe_customer")
    assert event.request_id == answer["X-Request-Id"]
    assert (event.organization, event.target_id) == (owner_org.organization, account.public_id)
    assert (event.actor, event.api_key) == (owner_org.owner, owner_org.owner_key)
    assert event.summary == {"stripe_customer": account.stripe_customer_id, "previous": ""}
    assert not AuditEvent.objects.filter(action__startswith="billing.card").exists()
    fake_stripe.outage_of = {}
    assert api.post(f"{base}/{path}", body if path == "checkout-session" else {}, format="json").status_code == 201
    assert list(fake_stripe.customers) == [account.stripe_customer_id]  # the stored customer, no second one
    assert AuditEvent.objects.filter(action="billing.account.stripe_customer").count() == 1  # stored once


def test_stripe_customer_made_again_is_audited_with_the_old_id_when_it_was_deleted_on_stripe(fake_stripe, owner_org):
    account = billing_account_for(organization=owner_org.organization)
    first = services.billing_account_sync_stripe(account_id=account.pk)
    assert services.billing_account_sync_stripe(account_id=account.pk) == first  # updated, nothing new to record
    del fake_stripe.customers[first]  # deleted in Stripe's dashboard
    second = services.billing_account_sync_stripe(account_id=account.pk)
    assert second != first and second in fake_stripe.customers
    events = AuditEvent.objects.filter(action="billing.account.stripe_customer").order_by("id")
    assert [(event.summary, event.actor) for event in events] == [
        ({"stripe_customer": first, "previous": ""}, None),
        ({"stripe_customer": second, "previous": first}, None),
    ]


@pytest.mark.django_db(transaction=True)
def test_one_stripe_customer_is_made_and_stored_when_two_first_card_calls_run_at_once(fake_stripe, owner_org):
    """Two people (or tabs) add a card at the same moment on an account with no Stripe customer yet: both read no
    customer and ask Stripe for one. Stripe's idempotency makes it one customer, not a second left orphaned."""
    import threading

    from django.db import connection

    account_id = billing_account_for(organization=owner_org.organization).pk
    # Each read before either call: both see an account without a customer, as two requests at once do.
    accounts = [BillingAccount.objects.get(pk=account_id) for _ in range(2)]
    barrier = threading.Barrier(2)
    intents, errors = [], []

    def add_card(account):
        try:
            barrier.wait(timeout=10)
            intents.append(services.card_setup_intent_create(account=account, actor=None)[0])
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=add_card, args=(account,)) for account in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(intents) == 2
    [customer] = fake_stripe.customers
    assert BillingAccount.objects.get(pk=account_id).stripe_customer_id == customer
    assert {fake_stripe.setup_intents[intent]["customer"] for intent in intents} == {customer}
    events = AuditEvent.objects.filter(action="billing.account.stripe_customer")
    assert [event.summary for event in events] == [{"stripe_customer": customer, "previous": ""}]


def test_card_setup_answers_409_in_words_when_cards_are_not_enabled(owner_org, key_client, settings):
    settings.STRIPE_SECRET_KEY = ""
    api = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/billing"
    checkout = {"success_url": "https://console.example/ok", "cancel_url": "https://console.example/no"}
    for path, body in (("setup-intent", {}), ("checkout-session", checkout)):
        answer = api.post(f"{base}/{path}", body, format="json")
        assert answer.status_code == 409, (path, answer.content)
        assert answer.json()["detail"] == "Card payments are not enabled on this installation; pay by bank transfer."


def test_stripe_task_runs_again_while_stripe_is_down_and_not_when_it_refuses_the_key(fake_stripe, owner_org):
    account = billing_account_for(organization=owner_org.organization)
    task = tasks.sync_stripe_customer
    last_but_one = task.max_retries - 1  # apply() runs each retry at once, inline: start at the last but one

    def customer_creates() -> int:
        return sum(1 for r in fake_stripe.requests if r.method == "POST" and r.path == "/v1/customers")

    fake_stripe.outage = 503
    assert task.apply(args=[account.pk], retries=last_but_one).state == "FAILURE"
    assert customer_creates() == 2 * 3  # two runs of the task, each with the client's three tries
    fake_stripe.outage = None
    with override_settings(STRIPE_SECRET_KEY="sk_test_not_ours"):  # a refusal, not an outage: no retry helps
        assert task.apply(args=[account.pk], retries=last_but_one).state == "FAILURE"
    assert customer_creates() == 6 + 1
    done = task.apply(args=[account.pk])
    assert done.state == "SUCCESS" and done.result in fake_stripe.customers


def test_webhook_refused_and_nothing_recorded_when_unsigned_tampered_or_wrong_secret(
    fake_stripe, client, owner_org, make_deployment, history
):
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    obj = {
        "id": "pi_x",
        "object": "payment_intent",
        "amount": invoice.total,
        "amount_received": invoice.total,
        "metadata": {"invoice_id": invoice.public_id},
    }
    unsigned = client.post(
        "/webhooks/stripe", build_event("payment_intent.succeeded", obj), content_type="application/json"
    )
    tampered = post_event(client, "payment_intent.succeeded", obj, tamper=True)
    foreign = post_event(client, "payment_intent.succeeded", obj, secret="whsec_someone_else")
    for response in (unsigned, tampered, foreign):
        assert response.status_code == 400
        assert response["Content-Type"] == "application/problem+json"
    assert StripeEvent.objects.count() == 0
    invoice.refresh_from_db()
    assert invoice.status == "open"


def test_collection_skipped_and_staff_marks_paid_when_stripe_not_configured(
    owner_org, make_deployment, history, admin_client
):
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    assert services.invoice_collect(invoice_id=invoice.pk) is None
    response = admin_client.post("/admin/billing/invoice/", {"action": "mark_paid", "_selected_action": [invoice.pk]})
    assert response.status_code == 302
    invoice.refresh_from_db()
    assert invoice.status == "paid" and invoice.payments.get().method == "manual"


def test_reminded_then_stopped_then_deleted_and_paying_restarts_when_invoice_overdue(
    owner_org, make_deployment, history, eager, django_capture_on_commit_callbacks
):
    account = billing_account_for(organization=owner_org.organization)
    services.billing_account_update(
        account=account, actor=None, country="US", email="ap@acme.example", postal_code="94105", **ADDRESS
    )
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    running = make_deployment(owner_org.default_project, name="live")
    history(running, [("running", at(2026, 4, 1), None)])
    due = invoice.due_at
    mail.outbox.clear()
    with pytest.MonkeyPatch.context() as patch:
        from django.utils import timezone

        with django_capture_on_commit_callbacks(execute=True):
            assert services.overdue_process(now=due + datetime.timedelta(days=1, hours=1))["reminders"] == 1
            assert services.overdue_process(now=due + datetime.timedelta(days=1, hours=2))["reminders"] == 0
            assert services.overdue_process(now=due + datetime.timedelta(days=8))["reminders"] == 1  # 3 and 7 at once
        stopped = services.overdue_process(now=due + datetime.timedelta(days=14, hours=1))
        assert stopped["stopped"] == 2  # both of the account's deployments
        running.refresh_from_db()
        assert (running.desired_state, running.status_reason) == ("stopped", "billing")
        assert Operation.objects.filter(deployment=running, kind="stop").exists()
        # the reconciler carries the stops out
        Operation.objects.filter(kind="stop").update(status="succeeded")
        Deployment.objects.filter(status_reason="billing").update(status="stopped")

        # paying restarts what billing stopped
        patch.setattr(timezone, "now", lambda: due + datetime.timedelta(days=15))
        services.invoice_mark_paid(invoice=invoice, actor=None)
    running.refresh_from_db()
    assert (running.desired_state, running.status_reason) == ("running", "")
    # The billing contact's reminders; the owner hears of them as platform events (tests/billing/test_notices.py).
    assert len([m for m in mail.outbox if "overdue" in m.subject and m.to == ["ap@acme.example"]]) == 2


def test_deleted_seven_days_after_billing_stop_when_still_unpaid(owner_org, make_deployment, history):
    invoice = issue_march_invoice(owner_org, make_deployment, history)
    dep = make_deployment(owner_org.default_project, name="unpaid")
    history(dep, [("running", at(2026, 4, 1), None)])
    services.overdue_process(now=invoice.due_at + datetime.timedelta(days=15))
    dep.refresh_from_db()
    assert dep.desired_state == "stopped"
    # the reconciler stops it: its stopped interval starts
    stopped_at = invoice.due_at + datetime.timedelta(days=15, minutes=1)
    dep.status_intervals.update(ended_at=stopped_at)
    history(dep, [("stopped", stopped_at, None)])
    Deployment.objects.filter(pk=dep.pk).update(status="stopped")
    assert services.overdue_process(now=stopped_at + datetime.timedelta(days=6))["deleted"] == 0
    assert services.overdue_process(now=stopped_at + datetime.timedelta(days=7, minutes=1))["deleted"] == 1
    dep.refresh_from_db()
    assert dep.desired_state == "deleted"


def test_older_card_notice_changes_nothing_when_it_arrives_after_a_newer_card_was_saved(fake_stripe, owner_org, client):
    account = billing_account_for(organization=owner_org.organization)
    services.billing_account_update(
        account=account, actor=None, country="US", email="ap@acme.example", postal_code="94105", **ADDRESS
    )
    customer_id = services.billing_account_sync_stripe(account_id=account.pk)
    first, second = fake_stripe.attach_card(customer_id), fake_stripe.attach_card(customer_id)
    now = int(time.time())
    older = {"id": "seti_older", "object": "setup_intent", "customer": customer_id, "payment_method": first}
    newer = {"id": "seti_newer", "object": "setup_intent", "customer": customer_id, "payment_method": second}
    # Stripe delivers in no particular order: the notice of the card the customer replaced arrives last.
    assert post_event(client, "setup_intent.succeeded", {**newer, "created": now}).status_code == 200
    assert post_event(client, "setup_intent.succeeded", {**older, "created": now - 60}).status_code == 200
    account.refresh_from_db()
    assert account.stripe_payment_method_id == second


def test_older_card_notice_changes_nothing_when_it_arrives_after_checkout_saved_a_newer_card(
    fake_stripe, owner_org, client
):
    account = billing_account_for(organization=owner_org.organization)
    services.billing_account_update(
        account=account, actor=None, country="US", email="ap@acme.example", postal_code="94105", **ADDRESS
    )
    customer_id = services.billing_account_sync_stripe(account_id=account.pk)
    account.refresh_from_db()
    old_card = fake_stripe.attach_card(customer_id)
    url = services.card_checkout_session_create(
        account=account, actor=None, success_url="https://console.example/ok", cancel_url="https://console.example/no"
    )
    session = fake_stripe.checkout_sessions[url.rsplit("/", 1)[1]]
    fake_stripe._complete_checkout(session, "4242424242424242")
    assert services.card_checkout_complete(account=account, actor=None, session_id=session["id"])
    new_card = fake_stripe.setup_intents[session["setup_intent"]]["payment_method"]
    created = fake_stripe.setup_intents[session["setup_intent"]]["created"]
    older = {"id": "seti_older", "object": "setup_intent", "customer": customer_id, "payment_method": old_card}
    response = post_event(client, "setup_intent.succeeded", {**older, "created": created - 3600})
    assert response.status_code == 200
    account.refresh_from_db()
    assert account.stripe_payment_method_id == new_card
