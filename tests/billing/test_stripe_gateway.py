import json
import secrets
import time

import pytest
import stripe

from billing import stripe_gateway as gateway
from billing.stripe_gateway import PaymentStatus, WebhookPayloadError, WebhookSignatureError
from tests.fakes.stripe_api import API_VERSION, FakeStripe, build_event, sign_payload

SECRET = "whsec_test_secret"
ADDRESS = {"line1": "1 rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR"}


@pytest.fixture
def fake():
    with FakeStripe() as server:
        yield server


@pytest.fixture
def client(fake):
    # No automatic retries: a test must see the first answer the fake gives.
    return gateway.make_client(api_key=fake.api_key, api_base=fake.url, max_network_retries=0)


def new_customer(client, **overrides):
    params = dict(
        customer_id=None,
        email="billing@example.fr",
        name="Exemple SAS",
        address=ADDRESS,
        tax_id=("eu_vat", "FR40303265045"),
        metadata={"billing_account": "17"},
        create_key=f"customer-create:{secrets.token_hex(4)}:none",
        tax_id_key=f"tax-id-create:{secrets.token_hex(4)}:1",
        client=client,
    )
    params.update(overrides)
    return gateway.ensure_customer(**params)


def test_one_customer_made_when_a_creation_is_repeated_and_a_new_one_when_the_key_names_the_old(fake, client):
    # What two first calls at once send: the same key and parameters. Stripe answers the second with the first's
    # customer. After that customer was deleted, the key names it and a new customer is made.
    first = new_customer(client, create_key="customer-create:acct_1:none")
    assert new_customer(client, create_key="customer-create:acct_1:none") == first
    assert list(fake.customers) == [first]
    del fake.customers[first]
    second = new_customer(client, create_key=f"customer-create:acct_1:{first}")
    assert second != first and list(fake.customers) == [second]
    # Details changed since a creation Stripe still remembers: a new request, not an idempotency error.
    third = new_customer(client, create_key=f"customer-create:acct_1:{first}", email="other@example.fr")
    assert third not in (first, second)


def test_one_tax_id_is_added_when_two_syncs_of_a_customer_without_one_run_at_once(fake, client, monkeypatch):
    """Two first card calls at once (two tabs) each list the customer's tax ids, find none, and add one: the second
    runs whole between the first's listing and its adding. Stripe's idempotency makes it one tax id, not two."""
    from tests.races import once

    customer_id = new_customer(client, tax_id=None)
    both = dict(customer_id=customer_id, tax_id_key="tax-id-create:acct_1:details_7:format_valid")
    original = stripe.CustomerTaxIdService.create
    monkeypatch.setattr(stripe.CustomerTaxIdService, "create", once(original, lambda: new_customer(client, **both)))

    new_customer(client, **both)

    assert [(t["type"], t["value"]) for t in fake.tax_ids[customer_id]] == [("eu_vat", "FR40303265045")]
    # Removed, then added again under newer billing details: a new request, not the replay of the first adding.
    new_customer(client, customer_id=customer_id, tax_id=None)
    new_customer(client, customer_id=customer_id, tax_id_key="tax-id-create:acct_1:details_8:format_valid")
    assert [(t["type"], t["value"]) for t in fake.tax_ids[customer_id]] == [("eu_vat", "FR40303265045")]


def test_customer_created_with_address_metadata_and_tax_id_when_no_customer_id(fake, client):
    customer_id = new_customer(client)
    customer = fake.customers[customer_id]
    assert customer["email"] == "billing@example.fr"
    assert customer["address"]["postal_code"] == "75001" and customer["address"]["line2"] is None
    assert customer["metadata"] == {"billing_account": "17"}
    assert [(t["type"], t["value"]) for t in fake.tax_ids[customer_id]] == [("eu_vat", "FR40303265045")]
    # the real client sent form-encoded nested params
    sent = next(r for r in fake.requests if (r.method, r.path) == ("POST", "/v1/customers"))
    assert sent.params["address"]["city"] == "Paris"
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_customer_updated_and_tax_id_replaced_when_number_changes(fake, client):
    customer_id = new_customer(client)
    old_tax_id = fake.tax_ids[customer_id][0]["id"]
    same_id = new_customer(
        client,
        customer_id=customer_id,
        email="new@example.fr",
        address={**ADDRESS, "line1": "2 rue de Rivoli"},
        tax_id=("eu_vat", "FR 403 032 650 46"),
        metadata={"plan": "dedicated"},
    )
    assert same_id == customer_id
    customer = fake.customers[customer_id]
    assert customer["email"] == "new@example.fr" and customer["address"]["line1"] == "2 rue de Rivoli"
    assert customer["metadata"] == {"plan": "dedicated"}  # the stale key was removed
    tax_ids = fake.tax_ids[customer_id]
    assert [(t["type"], t["value"]) for t in tax_ids] == [("eu_vat", "FR40303265046")]
    assert tax_ids[0]["id"] != old_tax_id


def test_tax_id_kept_without_calls_when_unchanged(fake, client):
    customer_id = new_customer(client)
    tax_id = fake.tax_ids[customer_id][0]["id"]
    new_customer(client, customer_id=customer_id)
    assert [t["id"] for t in fake.tax_ids[customer_id]] == [tax_id]
    assert not any(r.method == "DELETE" for r in fake.requests)


def test_tax_ids_removed_when_customer_no_longer_has_one(fake, client):
    customer_id = new_customer(client)
    new_customer(client, customer_id=customer_id, tax_id=None)
    assert fake.tax_ids[customer_id] == []


def test_new_customer_created_when_stored_id_missing_on_stripe(fake, client):
    customer_id = new_customer(client, customer_id="cus_doesnotexist")
    assert customer_id != "cus_doesnotexist" and customer_id in fake.customers


def test_setup_intent_returned_with_client_secret_when_created(fake, client):
    customer_id = new_customer(client)
    intent_id, secret = gateway.create_setup_intent(customer_id, client=client)
    assert fake.setup_intents[intent_id]["customer"] == customer_id
    assert fake.setup_intents[intent_id]["usage"] == "off_session"
    assert fake.setup_intents[intent_id]["payment_method_types"] == ["card"]
    assert secret.startswith(f"{intent_id}_secret_")
    _, _, params, headers = next(r for r in fake.requests if r[:2] == ("POST", "/v1/setup_intents"))
    # The fake answers as the API version the client sends does.
    assert headers["Stripe-Version"] == API_VERSION and params["allowed_payment_method_types"] == ["card"]


def test_setup_intent_refused_when_payment_method_types_sent_on_current_api_version(fake, client):
    customer_id = new_customer(client)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.setup_intents.create(params={"customer": customer_id, "payment_method_types": ["card"]})
    assert refused.value.code == "payment_method_types_no_longer_supported"
    assert not fake.setup_intents


def test_checkout_session_in_setup_mode_returns_hosted_url_when_created(fake, client):
    customer_id = new_customer(client)
    url = gateway.create_checkout_setup_session(
        customer_id, "https://app.example/billing?ok=1", "https://app.example/billing", client=client
    )
    (session,) = fake.checkout_sessions.values()
    assert url == session["url"] and url.startswith("https://checkout.stripe.com/")
    assert session["mode"] == "setup" and session["customer"] == customer_id
    _, _, params, _ = next(r for r in fake.requests if r[:2] == ("POST", "/v1/checkout/sessions"))
    assert params["allowed_payment_method_types"] == ["card"] and "payment_method_types" not in params


def customer_with_card(fake, client):
    customer_id = new_customer(client)
    pm = fake.attach_card(customer_id)
    gateway.set_default_payment_method(customer_id=customer_id, payment_method_id=pm, client=client)
    return customer_id, pm


def test_payment_succeeds_off_session_with_default_card_when_card_works(fake, client):
    customer_id, pm = customer_with_card(fake, client)
    result = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=268056, currency="USD", invoice_id=42, attempt=1, client=client
    )
    assert result.status is PaymentStatus.SUCCEEDED and result.failure_message is None
    intent = fake.payment_intents[result.payment_intent_id]
    assert (intent["amount"], intent["currency"], intent["payment_method"]) == (268056, "usd", pm)
    assert intent["metadata"] == {"invoice_id": "42", "attempt": "1"}
    sent = [r for r in fake.requests if r.path == "/v1/payment_intents"][0]
    assert sent.params["off_session"] == "true" and sent.params["confirm"] == "true"
    assert sent.headers["Idempotency-Key"] == "inv-42-attempt-1"


def test_failed_result_not_exception_when_card_declined(fake, client):
    customer_id, _ = customer_with_card(fake, client)
    fake.decline_cards_of(customer_id, decline_code="insufficient_funds")
    result = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=1000, currency="EUR", invoice_id=7, attempt=1, client=client
    )
    assert result.status is PaymentStatus.FAILED
    assert (result.failure_code, result.decline_code) == ("card_declined", "insufficient_funds")
    assert result.failure_message == "Your card has insufficient funds."
    assert fake.payment_intents[result.payment_intent_id]["status"] == "requires_payment_method"


def test_requires_action_when_bank_asks_for_authentication(fake, client):
    customer_id, _ = customer_with_card(fake, client)
    fake.decline_cards_of(customer_id, decline_code="authentication_required")
    result = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=1000, currency="EUR", invoice_id=8, attempt=1, client=client
    )
    assert result.status is PaymentStatus.REQUIRES_ACTION


def test_failed_without_payment_intent_when_no_default_card(fake, client):
    customer_id = new_customer(client)
    result = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=1000, currency="EUR", invoice_id=9, attempt=1, client=client
    )
    assert (result.status, result.payment_intent_id) == (PaymentStatus.FAILED, None)
    assert fake.payment_intents == {}


def test_one_payment_intent_when_same_invoice_attempt_collected_twice(fake, client):
    customer_id, _ = customer_with_card(fake, client)
    first = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=5000, currency="EUR", invoice_id=11, attempt=1, client=client
    )
    second = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=5000, currency="EUR", invoice_id=11, attempt=1, client=client
    )
    assert first.payment_intent_id == second.payment_intent_id
    assert len(fake.payment_intents) == 1


def test_new_payment_intent_when_next_attempt_after_decline(fake, client):
    customer_id, _ = customer_with_card(fake, client)
    fake.decline_cards_of(customer_id)
    first = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=5000, currency="EUR", invoice_id=12, attempt=1, client=client
    )
    fake._declines.clear()
    replay = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=5000, currency="EUR", invoice_id=12, attempt=1, client=client
    )
    retry = gateway.collect_invoice(
        customer_id=customer_id, amount_minor=5000, currency="EUR", invoice_id=12, attempt=2, client=client
    )
    assert replay.status is PaymentStatus.FAILED and replay.payment_intent_id == first.payment_intent_id
    assert retry.status is PaymentStatus.SUCCEEDED and retry.payment_intent_id != first.payment_intent_id


def test_idempotency_error_raised_when_key_reused_with_other_amount(fake, client):
    customer_id, _ = customer_with_card(fake, client)
    gateway.collect_invoice(
        customer_id=customer_id, amount_minor=5000, currency="EUR", invoice_id=13, attempt=1, client=client
    )
    with pytest.raises(stripe.IdempotencyError):
        gateway.collect_invoice(
            customer_id=customer_id, amount_minor=6000, currency="EUR", invoice_id=13, attempt=1, client=client
        )


def test_authentication_error_raised_when_api_key_wrong(fake):
    bad = gateway.make_client(api_key="sk_test_wrong", api_base=fake.url, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        new_customer(bad)


def test_amount_converted_to_stripe_units_when_currency_differs_from_iso():
    assert gateway.to_stripe_amount(1000, "JPY") == 1000
    assert gateway.to_stripe_amount(1500, "KWD") == 1500
    assert gateway.to_stripe_amount(100, "ISK") == 10000
    assert gateway.to_stripe_amount(500, "MGA") == 5
    with pytest.raises(ValueError):
        gateway.to_stripe_amount(501, "MGA")


def signed_event(*, secret=SECRET, timestamp=None):
    payload = build_event("payment_intent.succeeded", {"id": "pi_123", "object": "payment_intent"})
    return payload, sign_payload(payload, secret, timestamp=timestamp)


def test_webhook_event_returned_when_signature_valid():
    payload, header = signed_event()
    event = gateway.verify_webhook(payload, header, SECRET)
    assert event["type"] == "payment_intent.succeeded"
    assert event["data"]["object"]["id"] == "pi_123"
    assert event["id"] == json.loads(payload)["id"]


def test_webhook_rejected_when_payload_tampered():
    payload, header = signed_event()
    tampered = payload.replace(b"pi_123", b"pi_999")
    with pytest.raises(WebhookSignatureError, match="signature"):
        gateway.verify_webhook(tampered, header, SECRET)


def test_webhook_rejected_when_signed_with_other_secret():
    payload, header = signed_event(secret="whsec_someone_else")
    with pytest.raises(WebhookSignatureError):
        gateway.verify_webhook(payload, header, SECRET)


def test_webhook_rejected_when_signature_too_old():
    payload, header = signed_event(timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        gateway.verify_webhook(payload, header, SECRET)


def test_webhook_rejected_when_header_missing_or_garbled():
    payload, _ = signed_event()
    with pytest.raises(WebhookSignatureError):
        gateway.verify_webhook(payload, "", SECRET)
    with pytest.raises(WebhookSignatureError):
        gateway.verify_webhook(payload, "garbage", SECRET)


def test_webhook_payload_error_when_signed_body_not_an_event():
    payload = b'{"hello": "world"}'
    with pytest.raises(WebhookPayloadError):
        gateway.verify_webhook(payload, sign_payload(payload, SECRET), SECRET)


def test_configured_default_client_used_when_no_client_given(fake, monkeypatch):
    monkeypatch.setattr(gateway, "_client", None)
    with pytest.raises(gateway.GatewayNotConfigured):
        gateway.create_setup_intent("cus_x")
    gateway.configure(api_key=fake.api_key, api_base=fake.url, max_network_retries=0)
    customer_id = gateway.ensure_customer(
        **dict(customer_id=None, email="a@b.c", name="A", address=None, tax_id=None),
        create_key="customer-create:acc:none",
        tax_id_key="tax-id-create:acc:1:none",
    )
    assert customer_id in fake.customers
