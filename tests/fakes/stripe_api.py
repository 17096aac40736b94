"""HTTP-level fake of the Stripe API (v1, form-encoded) for the calls billing.stripe_gateway makes, on 127.0.0.1.

Driven by the real stripe-python client: customers, customer tax ids, setup intents, Checkout sessions in setup
mode (created, retrieved with `expand`), payment methods, off-session PaymentIntents with Idempotency-Key replay,
Stripe-shaped JSON errors (400/401/402/404), and webhook payloads signed with Stripe's scheme. It never talks to the
real Stripe.

With `serve_checkout=True` it also serves a stand-in for the hosted Checkout page at the session's `url`: a person
(or a browser test) enters a card there, the SetupIntent succeeds with a card PaymentMethod attached to the customer,
and the browser is redirected (303) to `success_url` with `{CHECKOUT_SESSION_ID}` replaced, as Stripe does; "Cancel"
goes back to `cancel_url`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

# The version stripe-python 16 sends (stripe._api_version): since 2026-09-30.endive, creating a SetupIntent,
# Checkout session or PaymentIntent refuses `payment_method_types` and takes `allowed_payment_method_types`.
API_VERSION = "2026-10-28.endive"

TAX_ID_TYPES = frozenset(
    {
        "au_abn",
        "ca_bn",
        "ch_uid",
        "ch_vat",
        "eu_vat",
        "gb_vat",
        "in_gst",
        "no_vat",
        "us_ein",
    }
)

_CUSTOMER_PARAMS = {
    "address",
    "description",
    "email",
    "metadata",
    "name",
    "phone",
    "preferred_locales",
    "invoice_settings",
    "tax_exempt",
    "shipping",
    "expand",
}
_SETUP_INTENT_PARAMS = {
    "customer",
    "allowed_payment_method_types",
    "excluded_payment_method_types",
    "usage",
    "automatic_payment_methods",
    "metadata",
    "description",
    "expand",
}
_CHECKOUT_PARAMS = {
    "mode",
    "customer",
    "success_url",
    "cancel_url",
    "allowed_payment_method_types",
    "excluded_payment_method_types",
    "currency",
    "setup_intent_data",
    "metadata",
    "client_reference_id",
    "expand",
}
_PAYMENT_INTENT_PARAMS = {
    "amount",
    "currency",
    "customer",
    "payment_method",
    "confirm",
    "off_session",
    "metadata",
    "description",
    "allowed_payment_method_types",
    "excluded_payment_method_types",
    "error_on_requires_action",
    "statement_descriptor_suffix",
    "receipt_email",
    "expand",
}

_DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}


class RecordedRequest(NamedTuple):
    """A request the fake received, as the client sent it (params decoded from the form body or the query)."""

    method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]


class _SavedOutcome(NamedTuple):
    """The first answer to an Idempotency-Key, and the request it answered."""

    method: str
    path: str
    params: dict[str, Any]
    status: int
    body: dict


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's bracket encoding (a[b][0]=x) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def listify(value: Any) -> Any:
        if isinstance(value, dict):
            value = {k: listify(v) for k, v in value.items()}
            if value and all(k.isdigit() for k in value):
                return [value[k] for k in sorted(value, key=int)]
        return value

    return listify(root)


def _expanded(params: dict) -> set[str]:
    expand = params.get("expand") or []
    return set(expand if isinstance(expand, list) else [expand])


def _checkout_html(session: dict | None, error: str = "") -> str:
    """The stand-in Checkout page: labelled fields, a submit button, a cancel link; no script."""
    if session is None:
        body = f"<h1>Checkout</h1><p>{escape(error)}</p>"
    else:
        cancel = session.get("cancel_url") or ""
        body = (
            "<h1>Save a card (test stand-in for Stripe Checkout)</h1>"
            + (f'<p role="alert">{escape(error)}</p>' if error else "")
            + f'<form method="post" action="/c/pay/{escape(session["id"])}">'
            '<label for="cardnumber">Card number</label>'
            '<input id="cardnumber" name="cardnumber" inputmode="numeric" autocomplete="cc-number">'
            '<label for="expiry">Expiry (MM / YY)</label><input id="expiry" name="expiry" value="12 / 30">'
            '<label for="cvc">CVC</label><input id="cvc" name="cvc" value="123">'
            '<button type="submit">Save card</button></form>'
            + (f'<p><a href="{escape(cancel)}">Cancel and go back</a></p>' if cancel else "")
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Checkout (test)</title></head>'
        f"<body><main>{body}</main></body></html>"
    )


def sign_payload(payload: bytes, secret: str, *, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for `payload`: t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<payload>">."""
    ts = int(time.time()) if timestamp is None else timestamp
    signed = f"{ts}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={ts},v1={signature}"


def build_event(event_type: str, data_object: dict, *, event_id: str | None = None) -> bytes:
    """A webhook event body as Stripe posts it."""
    return json.dumps(
        {
            "id": event_id or _new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": data_object},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
    ).encode()


class StripeError(Exception):
    def __init__(self, status: int, error: dict) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


def _invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeError:
    error = {"type": "invalid_request_error", "message": message}
    if param:
        error["param"] = param
    if code:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    return StripeError(400, error)


def _missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    err = _invalid(f"No such {kind}: '{object_id}'", param=param, code="resource_missing")
    err.status = 404
    return err


def _check_params(params: dict, allowed: set[str]) -> None:
    if "payment_method_types" in params and "allowed_payment_method_types" in allowed:
        raise _invalid(
            "payment_method_types is no longer supported on this API version; use allowed_payment_method_types.",
            param="payment_method_types",
            code="payment_method_types_no_longer_supported",
        )
    for name in params:
        if name not in allowed:
            raise _invalid(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def _merge(target: dict, updates: dict, *, metadata: bool = False) -> None:
    # Stripe unsets a field given as an empty string; in metadata it removes the key.
    for key, value in updates.items():
        if value == "":
            if metadata:
                target.pop(key, None)
            else:
                target[key] = None
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, metadata=metadata or key == "metadata")
        else:
            target[key] = value


class FakeStripe:
    """State is public for assertions: customers, tax_ids, setup_intents, checkout_sessions, payment_intents."""

    def __init__(self, *, api_key: str = "sk_test_fake", serve_checkout: bool = False) -> None:
        self.api_key = api_key
        self.serve_checkout = serve_checkout
        self.customers: dict[str, dict] = {}
        self.tax_ids: dict[str, list[dict]] = {}
        self.payment_methods: dict[str, dict] = {}
        self.setup_intents: dict[str, dict] = {}
        self.checkout_sessions: dict[str, dict] = {}
        self.payment_intents: dict[str, dict] = {}
        self.requests: list[RecordedRequest] = []
        self._declines: dict[str, str] = {}
        self._deciding: set[str] = set()
        # An HTTP status (500, 503, 429) every API request answers with while set: Stripe failing on its side or
        # limiting our rate. The hosted Checkout page is not affected.
        self.outage: int | None = None
        # The same, for the API paths named here only (say {"/v1/setup_intents": 500}): Stripe failing one call of a
        # sequence, after the calls before it succeeded.
        self.outage_of: dict[str, int] = {}
        # Seconds every API request waits before it is answered: a Stripe that accepts connections but is stuck.
        self.stall = 0.0
        self._idempotency: dict[str, _SavedOutcome] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown() quick at the end of every test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # lifecycle -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeStripe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # test hooks ------------------------------------------------------------------------------------------
    def attach_card(self, customer_id: str, *, last4: str = "4242") -> str:
        """What a completed SetupIntent leaves behind: a card PaymentMethod attached to the customer."""
        with self._lock:
            if customer_id not in self.customers:
                raise KeyError(customer_id)
            pm = {
                "id": _new_id("pm"),
                "object": "payment_method",
                "type": "card",
                "customer": customer_id,
                "card": {"brand": "visa", "last4": last4, "exp_month": 12, "exp_year": 2030},
                "created": int(time.time()),
                "livemode": False,
            }
            self.payment_methods[pm["id"]] = pm
            return pm["id"]

    def decline_cards_of(self, customer_id: str, *, decline_code: str = "generic_decline") -> None:
        """Every later charge of this customer's cards fails with a 402 card_error."""
        self._declines[customer_id] = decline_code

    def leave_charges_processing(self, customer_id: str) -> None:
        """Every later charge of this customer's cards answers `processing`: the bank decides later (Stripe then sends
        payment_intent.succeeded or payment_intent.payment_failed)."""
        self._deciding.add(customer_id)

    # request handling ------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict, *, replayed: bool = False) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", _new_id("req"))
                self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or API_VERSION)
                if replayed:
                    self.send_header("Idempotent-Replayed", "true")
                self.end_headers()
                self.wfile.write(data)

            def _send_html(self, status: int, html: str, *, location: str | None = None) -> None:
                data = html.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                if location:
                    self.send_header("Location", location)
                self.end_headers()
                self.wfile.write(data)

            def _checkout_page(self, method: str, session_id: str) -> None:
                """The hosted Checkout page's stand-in: a person's browser, not an API client, comes here."""
                form = {}
                if method == "POST":
                    raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                    form = dict(parse_qsl(raw, keep_blank_values=True))
                with fake._lock:
                    session = fake.checkout_sessions.get(session_id)
                    if session is None or session["status"] != "open":
                        self._send_html(404, _checkout_html(None, "This Checkout session is no longer available."))
                        return
                    if method == "GET":
                        self._send_html(200, _checkout_html(session))
                        return
                    number = re.sub(r"[\s-]", "", form.get("cardnumber", ""))
                    if not re.fullmatch(r"\d{12,19}", number):
                        self._send_html(400, _checkout_html(session, "Your card number is incomplete."))
                        return
                    fake._complete_checkout(session, number)
                    location = session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id)
                self._send_html(303, "", location=location)

            def _dispatch(self, method: str) -> None:
                split = urlsplit(self.path)
                checkout = re.fullmatch(r"/c/pay/(cs_test_\w+)", split.path)
                if checkout and method in ("GET", "POST"):
                    self._checkout_page(method, checkout.group(1))
                    return
                if method == "POST":
                    raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                else:
                    raw = split.query
                params = decode_form(raw)
                fake.requests.append(RecordedRequest(method, split.path, params, dict(self.headers)))
                if fake.stall:
                    time.sleep(fake.stall)
                outage = fake.outage if fake.outage is not None else fake.outage_of.get(split.path)
                if outage is not None:
                    # Stripe's own error types: a 429 is an invalid_request_error with the code rate_limit.
                    error = (
                        {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests."}
                        if outage == 429
                        else {"type": "api_error", "message": "Something went wrong on Stripe's end."}
                    )
                    self._send(outage, {"error": error})
                    return
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(
                        401,
                        {
                            "error": {
                                "type": "invalid_request_error",
                                "message": "Invalid API Key provided: sk_test_****",
                            }
                        },
                    )
                    return
                key = self.headers.get("Idempotency-Key") if method == "POST" else None
                with fake._lock:
                    if key and key in fake._idempotency:
                        first = fake._idempotency[key]
                        status, body = first.status, first.body
                        if (first.method, first.path, first.params) != (method, split.path, params):
                            status, body, replayed = (
                                400,
                                {
                                    "error": {
                                        "type": "idempotency_error",
                                        "message": "Keys for idempotent requests can only be used with the same "
                                        "parameters they were first used with. Try using a key other than "
                                        f"'{key}' if you meant to execute a different request.",
                                    }
                                },
                                False,
                            )
                        else:
                            replayed = True
                    else:
                        replayed = False
                        try:
                            status, body = 200, fake._route(method, split.path, params)
                        except StripeError as exc:
                            status, body = exc.status, {"error": exc.error}
                        # Stripe saves the outcome of the first request, errors included, except 5xx.
                        if key and status < 500:
                            fake._idempotency[key] = _SavedOutcome(method, split.path, params, status, body)
                self._send(status, body, replayed=replayed)

            def do_GET(self) -> None:  # noqa: N802
                self._dispatch("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._dispatch("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._dispatch("DELETE")

        return Handler

    def _route(self, method: str, path: str, params: dict) -> dict:
        routes: list[tuple[str, str, Any]] = [
            ("POST", r"/v1/customers", self._customer_create),
            ("GET", r"/v1/customers/(cus_\w+)", self._customer_retrieve),
            ("POST", r"/v1/customers/(cus_\w+)", self._customer_update),
            ("GET", r"/v1/customers/([^/]+)/tax_ids", self._tax_id_list),
            ("POST", r"/v1/customers/([^/]+)/tax_ids", self._tax_id_create),
            ("DELETE", r"/v1/customers/([^/]+)/tax_ids/([^/]+)", self._tax_id_delete),
            ("POST", r"/v1/setup_intents", self._setup_intent_create),
            ("POST", r"/v1/checkout/sessions", self._checkout_session_create),
            ("GET", r"/v1/checkout/sessions/(cs_test_\w+)", self._checkout_session_retrieve),
            ("GET", r"/v1/setup_intents/(seti_\w+)", self._setup_intent_retrieve),
            ("GET", r"/v1/payment_methods/(pm_\w+)", self._payment_method_retrieve),
            ("POST", r"/v1/payment_intents", self._payment_intent_create),
            ("GET", r"/v1/payment_intents/(pi_\w+)", self._payment_intent_retrieve),
            ("GET", r"/v1/customers/([^/]+)", self._customer_retrieve),
            ("POST", r"/v1/customers/([^/]+)", self._customer_update),
        ]
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and route_method == method:
                return handler(params, *match.groups())
        raise StripeError(
            404,
            {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we "
                "can help at https://support.stripe.com/.",
            },
        )

    # customers -------------------------------------------------------------------------------------------
    def _customer(self, customer_id: str, param: str = "id") -> dict:
        customer = self.customers.get(customer_id)
        if customer is None:
            raise _missing("customer", customer_id, param)
        return customer

    def _customer_create(self, params: dict) -> dict:
        _check_params(params, _CUSTOMER_PARAMS)
        params.pop("expand", None)
        customer = {
            "id": _new_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "livemode": False,
            "email": None,
            "name": None,
            "phone": None,
            "description": None,
            "address": None,
            "metadata": {},
            "invoice_settings": {
                "default_payment_method": None,
                "custom_fields": None,
                "footer": None,
                "rendering_options": None,
            },
            "tax_exempt": "none",
            "currency": None,
            "balance": 0,
            "delinquent": False,
        }
        if isinstance(params.get("address"), dict):
            customer["address"] = {k: None for k in ("line1", "line2", "city", "state", "postal_code", "country")}
        _merge(customer, params)
        self.customers[customer["id"]] = customer
        self.tax_ids[customer["id"]] = []
        return customer

    def _customer_retrieve(self, params: dict, customer_id: str) -> dict:
        return self._customer(customer_id)

    def _customer_update(self, params: dict, customer_id: str) -> dict:
        customer = self._customer(customer_id)
        _check_params(params, _CUSTOMER_PARAMS)
        params.pop("expand", None)
        pm_id = (params.get("invoice_settings") or {}).get("default_payment_method")
        if pm_id:
            pm = self.payment_methods.get(pm_id)
            if pm is None:
                raise _missing("PaymentMethod", pm_id, "invoice_settings[default_payment_method]")
            if pm["customer"] != customer_id:
                raise _invalid(
                    f"The customer does not have a payment method with the ID {pm_id}. The payment "
                    "method must be attached to the customer.",
                    param="invoice_settings[default_payment_method]",
                    code="resource_missing",
                )
        if isinstance(params.get("address"), dict) and not isinstance(customer.get("address"), dict):
            customer["address"] = {k: None for k in ("line1", "line2", "city", "state", "postal_code", "country")}
        if params.get("metadata") == "":
            customer["metadata"] = {}
            params.pop("metadata")
        _merge(customer, params)
        return customer

    # tax ids ---------------------------------------------------------------------------------------------
    def _tax_id_list(self, params: dict, customer_id: str) -> dict:
        self._customer(customer_id, "customer")
        data = list(self.tax_ids[customer_id])
        return {"object": "list", "data": data, "has_more": False, "url": f"/v1/customers/{customer_id}/tax_ids"}

    def _tax_id_create(self, params: dict, customer_id: str) -> dict:
        self._customer(customer_id, "customer")
        _check_params(params, {"type", "value", "expand"})
        if params.get("type") not in TAX_ID_TYPES:
            raise _invalid(f"Invalid type: must be one of {', '.join(sorted(TAX_ID_TYPES))}", param="type")
        value = params.get("value") or ""
        if not value.strip():
            raise _invalid("Missing required param: value.", param="value", code="parameter_missing")
        if params["type"] == "eu_vat" and not re.fullmatch(r"[A-Z]{2}[0-9A-Z]{2,13}", value.replace(" ", "")):
            raise _invalid("Invalid value for eu_vat.", param="value", code="tax_id_invalid")
        tax_id = {
            "id": _new_id("txi"),
            "object": "tax_id",
            "type": params["type"],
            "value": value,
            "country": value[:2] if params["type"] == "eu_vat" else None,
            "customer": customer_id,
            "created": int(time.time()),
            "livemode": False,
            "verification": {"status": "pending", "verified_address": None, "verified_name": None},
        }
        self.tax_ids[customer_id].append(tax_id)
        return tax_id

    def _tax_id_delete(self, params: dict, customer_id: str, tax_id: str) -> dict:
        self._customer(customer_id, "customer")
        remaining = [t for t in self.tax_ids[customer_id] if t["id"] != tax_id]
        if len(remaining) == len(self.tax_ids[customer_id]):
            raise _missing("tax_id", tax_id)
        self.tax_ids[customer_id] = remaining
        return {"id": tax_id, "object": "tax_id", "deleted": True}

    # setup -----------------------------------------------------------------------------------------------
    def _setup_intent_create(self, params: dict) -> dict:
        _check_params(params, _SETUP_INTENT_PARAMS)
        customer_id = params.get("customer")
        if customer_id:
            self._customer(customer_id, "customer")
        intent_id = _new_id("seti")
        intent = {
            "id": intent_id,
            "object": "setup_intent",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "customer": customer_id,
            "status": "requires_payment_method",
            "usage": params.get("usage", "off_session"),
            # Read-only on the object: the types the allowed list leaves (this fake knows cards only).
            "payment_method_types": params.get("allowed_payment_method_types", ["card"]),
            "metadata": params.get("metadata", {}),
            "created": int(time.time()),
            "livemode": False,
        }
        self.setup_intents[intent_id] = intent
        return intent

    def _checkout_session_create(self, params: dict) -> dict:
        _check_params(params, _CHECKOUT_PARAMS)
        mode = params.get("mode")
        if mode != "setup":
            raise _invalid("This fake only supports mode=setup.", param="mode")
        if not params.get("success_url"):
            raise _invalid("Missing required param: success_url.", param="success_url", code="parameter_missing")
        if not params.get("currency") and not params.get("allowed_payment_method_types"):
            raise _invalid(
                "currency is required in setup mode when allowed_payment_method_types is not set.",
                param="currency",
                code="parameter_missing",
            )
        customer_id = params.get("customer")
        if customer_id:
            self._customer(customer_id, "customer")
        setup_intent = self._setup_intent_create({"customer": customer_id} if customer_id else {})
        session_id = f"cs_test_{secrets.token_hex(24)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "setup",
            "status": "open",
            "customer": customer_id,
            "setup_intent": setup_intent["id"],
            "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"),
            "url": f"{self.url if self.serve_checkout else 'https://checkout.stripe.com'}/c/pay/{session_id}",
            "metadata": params.get("metadata", {}),
            "created": int(time.time()),
            "livemode": False,
        }
        self.checkout_sessions[session_id] = session
        return session

    def _checkout_session_retrieve(self, params: dict, session_id: str) -> dict:
        session = self.checkout_sessions.get(session_id)
        if session is None:
            raise _missing("checkout.session", session_id)
        session = dict(session)
        if "setup_intent" in _expanded(params) and session["setup_intent"]:
            session["setup_intent"] = self._setup_intent_retrieve({}, session["setup_intent"])
        return session

    def _setup_intent_retrieve(self, params: dict, intent_id: str) -> dict:
        intent = self.setup_intents.get(intent_id)
        if intent is None:
            raise _missing("setup_intent", intent_id)
        return intent

    def _payment_method_retrieve(self, params: dict, pm_id: str) -> dict:
        pm = self.payment_methods.get(pm_id)
        if pm is None:
            raise _missing("payment_method", pm_id)
        return pm

    def _complete_checkout(self, session: dict, number: str) -> None:
        """What the customer's card entry does at Stripe: a card PaymentMethod on the customer, the SetupIntent
        succeeded with it, the session complete. Called with the lock held."""
        brand = {"4": "visa", "5": "mastercard", "3": "amex", "6": "discover"}.get(number[0], "unknown")
        pm = {
            "id": _new_id("pm"),
            "object": "payment_method",
            "type": "card",
            "customer": session["customer"],
            "card": {"brand": brand, "last4": number[-4:], "exp_month": 12, "exp_year": 2030},
            "created": int(time.time()),
            "livemode": False,
        }
        self.payment_methods[pm["id"]] = pm
        intent = self.setup_intents[session["setup_intent"]]
        intent.update(status="succeeded", payment_method=pm["id"])
        session.update(status="complete")

    # payments --------------------------------------------------------------------------------------------
    def _payment_intent_retrieve(self, params: dict, intent_id: str) -> dict:
        intent = self.payment_intents.get(intent_id)
        if intent is None:
            raise _missing("payment_intent", intent_id)
        return intent

    def _payment_intent_create(self, params: dict) -> dict:
        _check_params(params, _PAYMENT_INTENT_PARAMS)
        try:
            amount = int(params.get("amount", ""))
        except ValueError:
            raise _invalid("Invalid integer: amount", param="amount") from None
        if amount < 1:
            raise _invalid("Amount must be at least 1", param="amount", code="amount_too_small")
        currency = params.get("currency") or ""
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise _invalid(f"Invalid currency: {currency}", param="currency")
        confirm = params.get("confirm") == "true"
        off_session = params.get("off_session") == "true"
        if off_session and not confirm:
            raise _invalid("off_session can only be used when confirm=true.", param="off_session")
        customer_id = params.get("customer")
        if customer_id:
            self._customer(customer_id, "customer")
        pm_id = params.get("payment_method")
        pm = None
        if pm_id:
            pm = self.payment_methods.get(pm_id)
            if pm is None:
                raise _missing("PaymentMethod", pm_id, "payment_method")
            if pm["customer"] != customer_id:
                raise _invalid(
                    f"The provided PaymentMethod {pm_id} belongs to another customer.", param="payment_method"
                )
        elif confirm:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method. To "
                "confirm the PaymentIntent with this customer, specify a payment_method.",
                code="payment_intent_unexpected_state",
            )
        intent_id = _new_id("pi")
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "currency": currency,
            "customer": customer_id,
            "payment_method": pm_id,
            "metadata": params.get("metadata", {}),
            "description": params.get("description"),
            "client_secret": f"{intent_id}_secret_x",
            "confirmation_method": "automatic",
            "capture_method": "automatic",
            "created": int(time.time()),
            "livemode": False,
            "last_payment_error": None,
            "latest_charge": None,
            "amount_received": 0,
            "status": "requires_confirmation" if pm_id else "requires_payment_method",
        }
        self.payment_intents[intent_id] = intent
        if not confirm:
            return intent
        decline_code = self._declines.get(customer_id or "")
        charge_id = _new_id("ch")
        intent["latest_charge"] = charge_id
        if decline_code:
            code = "authentication_required" if decline_code == "authentication_required" else "card_declined"
            error = {
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": _DECLINE_MESSAGES.get(decline_code, "Your card was declined."),
                "charge": charge_id,
                "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
                "payment_method": pm,
            }
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = {k: v for k, v in error.items()}
            error["payment_intent"] = intent
            raise StripeError(402, error)
        if customer_id in self._deciding:
            intent["status"] = "processing"
            return intent
        intent["status"] = "succeeded"
        intent["amount_received"] = amount
        return intent
