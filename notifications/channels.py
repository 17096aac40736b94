"""Send one notification through one channel: signed webhook, Slack, PagerDuty Events v2, email.

Owns wire formats, custom-header rules, the webhook signature and the retry schedule. A sender never raises for a
remote failure (refused address, timeout, 4xx/5xx): it returns a DeliveryResult for the caller to record and retry.
It never retries itself, and no credential of the destination (URL userinfo, query tokens) appears in its errors.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from controlplane.validators import whole_number
from notifications import urlsafety

RESPONSE_BODY_LIMIT = 2048
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_SEVERITIES = ("critical", "error", "warning", "info")
SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
# Headers the sender or the HTTP layer owns; a channel's custom headers cannot set them.
_RESERVED_HEADERS = {
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    SIGNATURE_HEADER.lower(),
    TIMESTAMP_HEADER.lower(),
}
MAX_HEADERS = 20
# RFC 9110 §5.6.2: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}")
_HEADER_VALUE_LIMIT = 4096


def header_problems(headers: object) -> list[str]:
    """Why these custom webhook headers cannot be sent (empty when they can): names are RFC 9110 tokens, not ones the
    sender sets, not repeated; values are single-line text that HTTP can carry (Latin-1, no control characters)."""
    if not isinstance(headers, dict):
        return ["Headers are an object of names to values."]
    if len(headers) > MAX_HEADERS:
        return [f"At most {MAX_HEADERS} headers."]
    problems, seen = [], set()
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            problems.append(f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only).")
            continue
        if name.lower() in _RESERVED_HEADERS:
            problems.append(f"{name} is set by the sender and cannot be given.")
        elif name.lower() in seen:
            problems.append(f"{name} is given twice.")
        seen.add(name.lower())
        if not isinstance(value, str) or len(value) > _HEADER_VALUE_LIMIT:
            problems.append(f"The value of {name} must be a string of at most {_HEADER_VALUE_LIMIT} characters.")
        elif any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 or ord(c) > 0xFF for c in value):
            problems.append(f"The value of {name} must be one line of Latin-1 text without control characters.")
    return problems


# Seconds to wait before attempt 2, 3, ... after a retryable failure; after the last, the delivery is given up.
RETRY_DELAYS: tuple[int, ...] = (30, 120, 600, 3600, 21600)


def retry_delays() -> tuple[int, ...]:
    return RETRY_DELAYS


# A receiver's Retry-After is honoured up to our longest gap: one asking for days cannot hold its alerts back for days.
RETRY_AFTER_LIMIT = RETRY_DELAYS[-1]


def retry_after_seconds(status: int, headers: Mapping[str, str], *, now: float | None = None) -> int | None:
    """The wait a 429 or 503 answer asks for in its Retry-After (RFC 9110 §10.2.3: whole seconds or an HTTP date),
    in whole seconds, at most RETRY_AFTER_LIMIT; None when the answer asks for none or says it unreadably."""
    if status not in (429, 503):
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), "").strip()
    seconds = whole_number(value)
    if seconds is None:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT; a date without a zone is not one
            return None
        seconds = max(0, int(when.timestamp() - (time.time() if now is None else now) + 0.999))
    return min(seconds, RETRY_AFTER_LIMIT)


def next_retry_delay(*, attempts_made: int) -> int | None:
    """Delay before the next attempt after `attempts_made` failed ones, or None when it is time to give up."""
    if attempts_made < 1 or attempts_made > len(RETRY_DELAYS):
        return None
    return RETRY_DELAYS[attempts_made - 1]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    ok: bool
    status_code: int | None
    response_body: str
    error: str
    duration_ms: int
    # False when retrying cannot help: a refused destination, a 4xx other than 408/429, bad input.
    retryable: bool = False
    # Seconds a 429 or 503 asked us to wait (Retry-After), at most RETRY_AFTER_LIMIT.
    retry_after: int | None = None


def _truncate(body: bytes | str) -> str:
    raw = body.encode() if isinstance(body, str) else body
    return raw[:RESPONSE_BODY_LIMIT].decode("utf-8", "replace")


# A custom header value shorter than this is not scrubbed from what a receiver answers: it would mask common words.
_SCRUBBED_HEADER_VALUE_MIN = 4


def _scrub(text: str, url: str, extra: tuple[str, ...] = ()) -> str:
    """`text` without the URL's credentials (nor `extra` ones, longest first): transport errors quote the request
    line, query string included, and receivers' answers (echo services, error pages) may quote the whole request."""
    for secret in sorted({*urlsafety.url_secrets(url), *extra}, key=len, reverse=True):
        text = text.replace(secret, urlsafety.MASK)
    return text


def _post(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool,
    secrets: tuple[str, ...] = (),
) -> DeliveryResult:
    """POST and judge the answer. `secrets` (custom header values) are scrubbed, with the URL's credentials, from
    the recorded error and response body, which people who may not see the channel's credentials can read."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        response = urlsafety.safe_post(url, data=body, headers=headers, timeout=timeout, allow_private=allow_private)
    except ValueError as exc:
        error = _scrub(f"destination refused: {exc}", url, secrets)
        return DeliveryResult(False, None, "", error, elapsed(), retryable=False)
    except Exception as exc:  # noqa: BLE001 - any transport failure is a failed delivery to record, not a crash
        error = _scrub(f"{type(exc).__name__}: {exc}", url, secrets)
        return DeliveryResult(False, None, "", error, elapsed(), retryable=True)
    ok = 200 <= response.status < 300
    retryable = not ok and (response.status >= 500 or response.status in (408, 429))
    return DeliveryResult(
        ok=ok,
        status_code=response.status,
        # Scrubbed whole, then cut: a credential the cut would split is still found.
        response_body=_truncate(_scrub(response.body.decode("utf-8", "replace"), url, secrets)),
        error="" if ok else f"HTTP {response.status}",
        duration_ms=elapsed(),
        retryable=retryable,
        retry_after=retry_after_seconds(response.status, response.headers) if retryable else None,
    )


def sign_webhook(secret: str, body: bytes, *, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def send_webhook(
    url: str,
    payload: dict,
    *,
    secret: str,
    headers: dict[str, str] | None = None,
    allow_private: bool = False,
    timeout: float = 10.0,
) -> DeliveryResult:
    """POST `payload` as JSON, signed: `X-Signature: t=<unix ts>,v1=<hex HMAC-SHA256(secret, "<ts>.<body>")>`."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    send_headers = {k: v for k, v in (headers or {}).items() if k.lower() not in _RESERVED_HEADERS}
    send_headers.update(
        {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_webhook(secret, body, timestamp=timestamp),
            TIMESTAMP_HEADER: str(timestamp),
        }
    )
    secrets = tuple(v for v in (headers or {}).values() if len(v) >= _SCRUBBED_HEADER_VALUE_MIN)
    return _post(url, body=body, headers=send_headers, timeout=timeout, allow_private=allow_private, secrets=secrets)


def verify_webhook_signature(
    secret: str, header: str, body: bytes | str, tolerance: int = 300, *, now: float | None = None
) -> bool:
    """True when `header` (the X-Signature value) signs `body` with `secret` within `tolerance` seconds of now."""
    raw = body.encode() if isinstance(body, str) else body
    timestamp: int | None = None
    candidates: list[str] = []
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and (seconds := whole_number(value)) is not None:
            timestamp = seconds
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign_webhook(secret, raw, timestamp=timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, c) for c in candidates)


def send_slack(
    url: str,
    text: str,
    blocks: list[dict] | None = None,
    *,
    timeout: float = 10.0,
    allow_private: bool = False,
) -> DeliveryResult:
    """Post to a Slack incoming webhook. Only hooks.slack.com URLs unless allow_private (tests, self-hosted relays)."""
    if not allow_private:
        try:
            urlsafety.validate_slack_webhook_url(url)
        except ValueError as exc:
            return DeliveryResult(False, None, "", str(exc), 0)
    message: dict = {"text": text}
    if blocks:
        message["blocks"] = blocks
    body = json.dumps(message, separators=(",", ":")).encode()
    return _post(
        url, body=body, headers={"Content-Type": "application/json"}, timeout=timeout, allow_private=allow_private
    )


def pagerduty_event(
    routing_key: str,
    *,
    action: str,
    dedup_key: str,
    summary: str = "",
    severity: str = "warning",
    source: str = "",
    custom_details: dict | None = None,
) -> dict:
    """The Events API v2 body: trigger carries a payload; resolve needs only the routing and dedup keys."""
    if action not in ("trigger", "resolve"):
        raise ValueError("action must be trigger or resolve")
    if not dedup_key or len(dedup_key) > 255:
        raise ValueError("dedup_key must be 1-255 characters")
    event: dict = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key}
    if action == "trigger":
        if severity not in PAGERDUTY_SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(PAGERDUTY_SEVERITIES)}")
        if not summary or not source:
            raise ValueError("a trigger needs a summary and a source")
        payload: dict = {"summary": summary[:1024], "source": source, "severity": severity}
        if custom_details:
            payload["custom_details"] = custom_details
        event["payload"] = payload
    return event


def send_pagerduty(
    routing_key: str,
    *,
    action: str,
    dedup_key: str,
    summary: str = "",
    severity: str = "warning",
    source: str = "",
    custom_details: dict | None = None,
    events_url: str = PAGERDUTY_EVENTS_URL,
    timeout: float = 10.0,
    allow_private: bool = False,
) -> DeliveryResult:
    try:
        urlsafety.validate_pagerduty_routing_key(routing_key)
        event = pagerduty_event(
            routing_key,
            action=action,
            dedup_key=dedup_key,
            summary=summary,
            severity=severity,
            source=source,
            custom_details=custom_details,
        )
    except ValueError as exc:
        return DeliveryResult(False, None, "", str(exc), 0)
    body = json.dumps(event, separators=(",", ":")).encode()
    return _post(
        events_url,
        body=body,
        headers={"Content-Type": "application/json"},
        timeout=timeout,
        allow_private=allow_private,
    )


EmailSender = Callable[[list[str], str, str], None]
_email_sender: EmailSender | None = None


def set_email_sender(sender: EmailSender | None) -> None:
    """Install the function used when Django is not configured (workers outside Django, tests)."""
    global _email_sender
    _email_sender = sender


def _django_sender() -> EmailSender | None:
    # Imported lazily: this module must load, and its tests run, without Django settings.
    try:
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured:
        return None

    def send(to: list[str], subject: str, body: str) -> None:
        from django.core.mail import send_mail

        send_mail(subject, body, None, to, fail_silently=False)

    return send


def send_email(to: list[str], subject: str, body: str, *, sender: EmailSender | None = None) -> DeliveryResult:
    """Send through `sender`, else the installed sender, else Django's mail backend when settings are configured."""
    started = time.monotonic()
    if not to or any("@" not in address or "\n" in address for address in to):
        return DeliveryResult(False, None, "", "recipients must be email addresses", 0)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in subject):
        return DeliveryResult(False, None, "", "subject must be one line without control characters", 0)
    send = sender or _email_sender or _django_sender()
    if send is None:
        return DeliveryResult(False, None, "", "no email backend configured", 0)
    try:
        send(list(to), subject, body)
    except Exception as exc:  # noqa: BLE001 - SMTP failures are recorded and retried, never raised
        duration = int((time.monotonic() - started) * 1000)
        return DeliveryResult(False, None, "", f"{type(exc).__name__}: {exc}", duration, retryable=True)
    return DeliveryResult(True, None, "", "", int((time.monotonic() - started) * 1000))
