"""The only module that talks to Stripe: customers and their tax ids, card setup, off-session invoice
collection, and webhook signature checks, through stripe-python's StripeClient.

It returns plain values (ids, PaymentResult, dicts) and never leaks stripe objects; it must never touch the
database or decide billing policy (what to charge, when to retry): callers do. A call that fails because Stripe is
unreachable, limits our rate or fails on its side raises StripeTransient, whichever function made it: the same call
may succeed later, and callers retry (tasks) or say so (pages). Stripe's other refusals (a wrong key, a bad request)
are bugs or misconfiguration and propagate as stripe-python raised them.

stripe-python is imported where it is used, not with this module: it imports an HTTP client stack on import (aiohttp,
when installed) that every process loading billing would pay for, although only the calls below need it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, ParamSpec, TypedDict, TypeVar

from billing.money import minor_units, normalize_currency
from controlplane.validators import whole_number

if TYPE_CHECKING:
    import stripe
    from stripe.params import (
        CustomerCreateParams,
        CustomerUpdateParams,
        PaymentIntentCreateParams,
        SetupIntentCreateParams,
    )
    from stripe.params.checkout import SessionCreateParams

DEFAULT_API_BASE = "https://api.stripe.com"
AddressField = Literal["line1", "line2", "city", "state", "postal_code", "country"]
ADDRESS_FIELDS: tuple[AddressField, ...] = ("line1", "line2", "city", "state", "postal_code", "country")

# How Stripe counts the smallest unit where it differs from ISO 4217 (docs.stripe.com/currencies): the
# zero-decimal currencies below, and ISK which Stripe takes in hundredths although ISO has no minor unit.
_STRIPE_ZERO_DECIMAL = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
_STRIPE_THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})

_client: stripe.StripeClient | None = None


class GatewayNotConfigured(RuntimeError):
    pass


class StripeUnavailable(Exception):
    """Stripe did not answer, or answered with an error other than "no such object"."""


class StripeTransient(StripeUnavailable):
    """Stripe could not be reached, limited our rate (429) or failed on its side (5xx), after the client's own
    retries: the same call may succeed later."""


class StripeObjectMissing(LookupError):
    """Stripe knows no such object (a 404, or an id of another account)."""


class WebhookSignatureError(Exception):
    """The webhook did not come from Stripe with our signing secret (bad, missing, or too old signature)."""


class WebhookPayloadError(ValueError):
    """A correctly signed body that is not a Stripe event."""


class PaymentStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    FAILED = "failed"


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _transient() -> tuple[type[Exception], ...]:
    """stripe-python's errors for a call that may succeed later: unreachable, 429, 5xx."""
    import stripe

    return (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


def _unavailable(exc: Exception) -> StripeUnavailable:
    """StripeTransient for a failure that may pass, else StripeUnavailable."""
    return (StripeTransient if isinstance(exc, _transient()) else StripeUnavailable)(str(exc))


def _calls_stripe(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Raise StripeTransient for a call that failed because Stripe is down; leave every other outcome as it is."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except _transient() as exc:
            raise StripeTransient(str(exc)) from exc

    return wrapper


@dataclass(frozen=True, slots=True)
class PaymentResult:
    status: PaymentStatus
    payment_intent_id: str | None
    failure_message: str | None = None
    failure_code: str | None = None
    decline_code: str | None = None


def make_client(
    *, api_key: str, api_base: str | None = None, max_network_retries: int = 2, timeout: float = 20.0
) -> stripe.StripeClient:
    """A StripeClient; `api_base` points it elsewhere (the test fake). Retries reuse the idempotency key; each try
    waits at most `timeout` seconds for an answer (a charge whose answer was lost is replayed, not repeated)."""
    import stripe

    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base or DEFAULT_API_BASE},
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def configure(*, api_key: str, api_base: str | None = None, max_network_retries: int = 2) -> None:
    """Set the client used when a function is not given one (call once at startup, from settings)."""
    global _client
    _client = make_client(api_key=api_key, api_base=api_base, max_network_retries=max_network_retries)


def _get(client: stripe.StripeClient | None) -> stripe.StripeClient:
    if client is not None:
        return client
    if _client is None:
        raise GatewayNotConfigured("billing.stripe_gateway.configure() has not been called")
    return _client


def to_stripe_amount(amount_minor: int, currency: str) -> int:
    """Convert ISO 4217 minor units to the integer Stripe expects for `currency`."""
    code = normalize_currency(currency)
    stripe_decimals = 0 if code in _STRIPE_ZERO_DECIMAL else 3 if code in _STRIPE_THREE_DECIMAL else 2
    shift = stripe_decimals - minor_units(code)
    # int ** int is typed as Any (a negative exponent makes a float); both exponents here are >= 0.
    if shift >= 0:
        multiplier: int = 10**shift
        return amount_minor * multiplier
    factor: int = 10**-shift
    if amount_minor % factor:
        raise ValueError(f"{amount_minor} minor units of {code} cannot be charged exactly on Stripe")
    return amount_minor // factor


def _field(obj: Any, key: str) -> Any:
    # StripeObject is not a dict: missing keys raise AttributeError.
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


class _Address(TypedDict, total=False):
    """A customer's address as Stripe's create and update calls take it (both stubs' address types accept it)."""

    line1: str
    line2: str
    city: str
    state: str
    postal_code: str
    country: str


def _address_params(address: Mapping[str, object] | None, *, blanks: bool) -> _Address:
    """Every address field; a blank one is sent empty when `blanks` (an empty string unsets a field on Stripe, so a
    removed address line is cleared there too), else left out (on create)."""
    address = address or {}
    params: _Address = {}
    for field in ADDRESS_FIELDS:
        value = str(address.get(field) or "")
        if value or blanks:
            params[field] = value
    return params


def _compact_tax_value(value: str) -> str:
    return "".join(value.split()).upper()


@_calls_stripe
def ensure_customer(
    *,
    customer_id: str | None,
    email: str,
    name: str,
    address: Mapping[str, object] | None,
    tax_id: tuple[str, str] | None,
    metadata: dict[str, str] | None = None,
    create_key: str,
    tax_id_key: str,
    client: stripe.StripeClient | None = None,
) -> str:
    """Create or update the Stripe customer of a billing account and make its tax ids equal to `tax_id`.

    Returns the customer id, a new one if `customer_id` is None or no longer exists on Stripe. A customer is created
    with an Idempotency-Key made of `create_key` (the account and the customer it held before) and what is sent: two
    first calls at once get the one customer from Stripe, instead of a second one that would be left orphaned. A tax
    id is added likewise, with `tax_id_key` (the account's billing details as they are now: two syncs of the same
    details add it once, and one added again after a change of details is a new request, not a replay of the first).
    """
    import stripe

    api = _get(client).v1
    wanted_metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    customer = None
    if customer_id:
        try:
            customer = api.customers.retrieve(customer_id)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise
    if customer is None or getattr(customer, "deleted", False):
        # On create, blank fields are left out rather than sent as "unset", and so is an address with none filled.
        create: CustomerCreateParams = {"email": email, "name": name, "metadata": wanted_metadata}
        filled = _address_params(address, blanks=False)
        if filled:
            create["address"] = filled
        customer = api.customers.create(
            params=create, options={"idempotency_key": f"{create_key}:{_params_digest(create)}"}
        )
    else:
        # Stripe merges metadata: keys we no longer have are removed by sending them empty.
        current = _field(customer, "metadata")
        current_keys = list(current.to_dict()) if hasattr(current, "to_dict") else list(current or {})
        stale = {k: "" for k in current_keys if k not in wanted_metadata}
        update: CustomerUpdateParams = {
            "email": email,
            "name": name,
            "address": _address_params(address, blanks=True),
            "metadata": {**stale, **wanted_metadata},
        }
        customer = api.customers.update(customer.id, params=update)
    _sync_tax_ids(api, customer.id, tax_id, key=tax_id_key)
    return customer.id


def _params_digest(params: Mapping[str, object]) -> str:
    """A short digest of a request's parameters, for its idempotency key: Stripe answers a key reused with other
    parameters with an error (for 24 hours), and an account's details may change between two creates of its
    customer (one whose id was lost with a failed write, then made again); calls that send the same share the key."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sync_tax_ids(api: Any, customer_id: str, tax_id: tuple[str, str] | None, *, key: str) -> None:
    wanted = (tax_id[0], _compact_tax_value(tax_id[1])) if tax_id else None
    kept = False
    for existing in api.customers.tax_ids.list(customer_id, params={"limit": 100}).data:
        if not kept and wanted == (existing.type, _compact_tax_value(existing.value)):
            kept = True
            continue
        api.customers.tax_ids.delete(customer_id, existing.id)
    if wanted and not kept:
        # Two syncs at once both list no tax id and add one: with one key Stripe adds it once and answers both.
        params = {"type": wanted[0], "value": wanted[1]}
        api.customers.tax_ids.create(
            customer_id, params=params, options={"idempotency_key": f"{key}:{customer_id}:{_params_digest(params)}"}
        )


@_calls_stripe
def create_setup_intent(customer_id: str, *, client: stripe.StripeClient | None = None) -> tuple[str, str]:
    """A SetupIntent to save a card for later off-session charges; returns (id, client_secret)."""
    # The API version this client sends refuses `payment_method_types` on create (400
    # payment_method_types_no_longer_supported); `allowed_payment_method_types` is its successor.
    params: SetupIntentCreateParams = {
        "customer": customer_id,
        "usage": "off_session",
        "allowed_payment_method_types": ["card"],
    }
    intent = _get(client).v1.setup_intents.create(params=params)
    # Stripe leaves the secret out only for a publishable key's reads; a create with the secret key always has it.
    if not intent.client_secret:
        raise StripeUnavailable(f"Stripe answered SetupIntent {intent.id} without a client secret")
    return intent.id, intent.client_secret


@_calls_stripe
def create_checkout_setup_session(
    customer_id: str, success_url: str, cancel_url: str, *, client: stripe.StripeClient | None = None
) -> str:
    """A hosted Checkout page in setup mode that saves a card on the customer; returns its URL."""
    # As for SetupIntents, this API version takes `allowed_payment_method_types`, not `payment_method_types`.
    params: SessionCreateParams = {
        "mode": "setup",
        "customer": customer_id,
        "allowed_payment_method_types": ["card"],
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    session = _get(client).v1.checkout.sessions.create(params=params)
    # A hosted_page session (the default ui_mode) has a URL while it is active, as a new one is.
    if not session.url:
        raise StripeUnavailable(f"Stripe answered Checkout session {session.id} without a URL")
    return session.url


class CheckoutSetup(NamedTuple):
    customer: str  # the Stripe customer id
    status: str  # the Checkout session's status: "complete" once the customer finished
    payment_method: str  # the saved card's PaymentMethod id, "" while none
    created: int | None  # when its SetupIntent was created, in Unix seconds; None while none


@_calls_stripe
def checkout_setup_result(session_id: str, *, client: stripe.StripeClient | None = None) -> CheckoutSetup:
    """What a Checkout session in setup mode left."""
    import stripe

    try:
        session = _get(client).v1.checkout.sessions.retrieve(session_id, params={"expand": ["setup_intent"]})
    except stripe.InvalidRequestError as exc:
        raise StripeObjectMissing(session_id) from exc
    except stripe.StripeError as exc:
        raise _unavailable(exc) from exc
    intent = _field(session, "setup_intent")
    payment_method, created = "", None
    if intent is not None and not isinstance(intent, str) and _field(intent, "status") == "succeeded":
        payment_method = str(_field(intent, "payment_method") or "")
        created = whole_number(str(_field(intent, "created") or ""))
    return CheckoutSetup(
        customer=str(_field(session, "customer") or ""),
        status=str(_field(session, "status") or ""),
        payment_method=payment_method,
        created=created,
    )


@_calls_stripe
def card_summary(payment_method_id: str, *, client: stripe.StripeClient | None = None) -> tuple[str, str]:
    """The brand and last four digits of a card PaymentMethod, as Stripe shows them."""
    import stripe

    try:
        card = _field(_get(client).v1.payment_methods.retrieve(payment_method_id), "card")
    except stripe.StripeError as exc:
        raise _unavailable(exc) from exc
    return str(_field(card, "brand") or "card"), str(_field(card, "last4") or "")


@_calls_stripe
def set_default_payment_method(
    *, customer_id: str, payment_method_id: str, client: stripe.StripeClient | None = None
) -> None:
    """Make a saved card the one invoices are collected from (after setup_intent.succeeded)."""
    _get(client).v1.customers.update(
        customer_id, params={"invoice_settings": {"default_payment_method": payment_method_id}}
    )


def _result_from_intent(intent: Any) -> PaymentResult:
    status = _field(intent, "status")
    mapped = {
        "succeeded": PaymentStatus.SUCCEEDED,
        "processing": PaymentStatus.PROCESSING,
        "requires_action": PaymentStatus.REQUIRES_ACTION,
    }.get(status, PaymentStatus.FAILED)
    error = _field(intent, "last_payment_error")
    message = None if mapped is not PaymentStatus.FAILED else (_field(error, "message") or f"payment {status}")
    return PaymentResult(mapped, _field(intent, "id"), message, _field(error, "code"), _field(error, "decline_code"))


@_calls_stripe
def collect_invoice(
    *,
    customer_id: str,
    amount_minor: int,
    currency: str,
    invoice_id: int | str,
    attempt: int,
    client: stripe.StripeClient | None = None,
) -> PaymentResult:
    """Charge an invoice off-session to the customer's default card. A declined card is a failed result,
    not an exception; the same (invoice, attempt) never charges twice (idempotency key)."""
    import stripe

    api = _get(client).v1
    if amount_minor <= 0:
        raise ValueError("amount_minor must be positive")
    customer = api.customers.retrieve(customer_id)
    payment_method = _field(_field(customer, "invoice_settings"), "default_payment_method")
    if not payment_method:
        return PaymentResult(
            PaymentStatus.FAILED, None, "No default payment method on file.", "no_default_payment_method"
        )
    params: PaymentIntentCreateParams = {
        "amount": to_stripe_amount(amount_minor, currency),
        "currency": normalize_currency(currency).lower(),
        "customer": customer_id,
        "payment_method": payment_method,
        "off_session": True,
        "confirm": True,
        "metadata": {"invoice_id": str(invoice_id), "attempt": str(attempt)},
    }
    try:
        intent = api.payment_intents.create(
            params=params, options={"idempotency_key": f"inv-{invoice_id}-attempt-{attempt}"}
        )
    except stripe.CardError as exc:
        code = exc.code
        status = PaymentStatus.REQUIRES_ACTION if code == "authentication_required" else PaymentStatus.FAILED
        return PaymentResult(
            status,
            _field(_field(exc.error, "payment_intent"), "id"),
            exc.user_message or str(exc),
            code,
            _field(exc.error, "decline_code"),
        )
    return _result_from_intent(intent)


def verify_webhook(payload: bytes, sig_header: str, secret: str, *, tolerance: int = 300) -> dict[str, Any]:
    """Check the Stripe-Signature header with Stripe's own verifier and return the event as a dict.

    Raises WebhookSignatureError for a missing, wrong or expired (older than `tolerance` seconds) signature.
    """
    import stripe

    text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    if not sig_header:
        raise WebhookSignatureError("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(text, sig_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureError(f"invalid Stripe webhook signature: {exc.user_message or exc}") from exc
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise WebhookPayloadError("signed payload is not JSON") from exc
    if not isinstance(event, dict) or "id" not in event or "type" not in event:
        raise WebhookPayloadError("signed payload is not a Stripe event")
    return event
