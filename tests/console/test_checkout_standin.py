"""The Stripe fake's stand-in for the hosted Checkout page (setup mode), driven by the real stripe-python client and
a plain HTTP client in the customer's place: the card entered there is on the customer afterwards, the browser is
sent back to success_url with the session id, and a session can be completed once."""

import urllib.error
import urllib.parse
import urllib.request

import pytest

from billing import stripe_gateway as gateway
from tests.fakes.stripe_api import FakeStripe


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _post(url, data):
    opener = urllib.request.build_opener(NoRedirect)
    try:
        return opener.open(url, urllib.parse.urlencode(data).encode())
    except urllib.error.HTTPError as exc:
        return exc


@pytest.fixture
def fake():
    with FakeStripe(serve_checkout=True) as server:
        yield server


@pytest.fixture
def client(fake):
    return gateway.make_client(api_key=fake.api_key, api_base=fake.url, max_network_retries=0)


def test_card_entered_on_standin_is_saved_and_redirects_back_when_session_in_setup_mode(fake, client):
    customer = client.v1.customers.create(params={"email": "compta@exemple.fr"})
    url = gateway.create_checkout_setup_session(
        customer.id,
        "http://console.test/return?session_id={CHECKOUT_SESSION_ID}",
        "http://console.test/no",
        client=client,
    )
    assert url.startswith(fake.url + "/c/pay/cs_test_")
    page = urllib.request.urlopen(url).read().decode()
    assert 'for="cardnumber"' in page and "http://console.test/no" in page

    refused = _post(url, {"cardnumber": "4242"})
    assert refused.status == 400 and "incomplete" in refused.read().decode()

    done = _post(url, {"cardnumber": "5555 5555 5555 4444"})
    session_id = url.rsplit("/", 1)[1]
    assert done.status == 303 and done.headers["Location"] == f"http://console.test/return?session_id={session_id}"

    session = client.v1.checkout.sessions.retrieve(session_id, params={"expand": ["setup_intent"]})
    assert session.status == "complete" and session.customer == customer.id
    assert session.setup_intent.status == "succeeded"
    card = client.v1.payment_methods.retrieve(session.setup_intent.payment_method)
    assert (card.customer, card.card.brand, card.card.last4) == (customer.id, "mastercard", "4444")
    # A completed session cannot be completed again.
    assert _post(url, {"cardnumber": "4242424242424242"}).status == 404


def test_checkout_url_stays_stripes_when_standin_not_served():
    with FakeStripe() as plain:
        client = gateway.make_client(api_key=plain.api_key, api_base=plain.url, max_network_retries=0)
        customer = client.v1.customers.create(params={})
        url = gateway.create_checkout_setup_session(customer.id, "https://x/ok", "https://x/no", client=client)
        assert url.startswith("https://checkout.stripe.com/c/pay/")
