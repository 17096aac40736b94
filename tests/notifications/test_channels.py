"""Channel senders against a real HTTP receiver on 127.0.0.1: signatures, failures, PagerDuty and Slack shapes."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from notifications import channels
from notifications.channels import (
    DeliveryResult,
    next_retry_delay,
    retry_delays,
    send_email,
    send_pagerduty,
    send_slack,
    send_webhook,
    sign_webhook,
    verify_webhook_signature,
)

SECRET = "whsec_test_secret"
ROUTING_KEY = "0123456789abcdef0123456789abcdef"


class Receiver:
    """A webhook consumer: records each request and checks the signature as a customer's endpoint would."""

    def __init__(
        self,
        *,
        status: int = 200,
        body: bytes = b'{"received":true}',
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
    ):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": raw,
                        "signature_valid": verify_webhook_signature(secret, self.headers.get("X-Signature", ""), raw),
                    }
                )
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(receiver.body)))
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(receiver.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_webhook_is_delivered_with_valid_signature_when_receiver_answers_200(receiver):
    result = send_webhook(
        f"{receiver.url}/hooks/alerts",
        {"alert": "connections", "value": 950},
        secret=SECRET,
        headers={"X-Team": "ops"},
        allow_private=True,
    )
    assert result.ok and result.status_code == 200 and result.error == ""
    assert result.response_body == '{"received":true}'
    got = receiver.requests[0]
    assert got["signature_valid"]
    assert got["path"] == "/hooks/alerts"
    assert json.loads(got["body"]) == {"alert": "connections", "value": 950}
    assert got["headers"]["Content-Type"] == "application/json"
    assert got["headers"]["X-Team"] == "ops"
    ts = got["headers"]["X-Signature-Timestamp"]
    assert got["headers"]["X-Signature"].startswith(f"t={ts},v1=")


def test_receiver_rejects_signature_when_secret_differs():
    other = Receiver(secret="another-secret")
    try:
        result = send_webhook(f"{other.url}/h", {"a": 1}, secret=SECRET, allow_private=True)
        assert result.ok
        assert other.requests[0]["signature_valid"] is False
    finally:
        other.close()


def test_custom_headers_cannot_replace_signature_when_given(receiver):
    send_webhook(receiver.url, {"a": 1}, secret=SECRET, headers={"X-Signature": "t=1,v1=00"}, allow_private=True)
    assert receiver.requests[0]["signature_valid"]


def test_webhook_fails_with_status_when_receiver_answers_500():
    failing = Receiver(status=500, body=b"boom" * 1000)
    try:
        result = send_webhook(failing.url, {"a": 1}, secret=SECRET, allow_private=True)
        assert result.ok is False and result.status_code == 500 and result.retryable
        assert result.error == "HTTP 500"
        assert len(result.response_body.encode()) == 2048
    finally:
        failing.close()


def test_webhook_failure_is_not_retryable_when_receiver_answers_400():
    failing = Receiver(status=400, body=b"bad")
    try:
        result = send_webhook(failing.url, {"a": 1}, secret=SECRET, allow_private=True)
        assert result.ok is False and result.status_code == 400 and not result.retryable
    finally:
        failing.close()


def test_webhook_is_refused_without_request_when_url_is_loopback(receiver):
    result = send_webhook(receiver.url, {"a": 1}, secret=SECRET)
    assert result.ok is False and result.status_code is None and "loopback" in result.error
    assert not result.retryable
    assert receiver.requests == []


def test_webhook_returns_error_instead_of_raising_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = send_webhook(f"http://127.0.0.1:{port}/", {"a": 1}, secret=SECRET, allow_private=True, timeout=2)
    assert result.ok is False and result.status_code is None and result.retryable and result.error


def test_a_token_in_the_path_or_query_is_not_in_the_error_when_a_transport_error_quotes_the_request_line():
    from notifications.channels import _scrub

    url = "https://discord.example/api/webhooks/42/Zk3xQ9vT-path-token?sig=QueryToken9"
    quoted = "MaxRetryError: Max retries exceeded with url: /api/webhooks/42/Zk3xQ9vT-path-token?sig=QueryToken9"
    scrubbed = _scrub(quoted, url)
    assert "Zk3xQ9vT-path-token" not in scrubbed and "QueryToken9" not in scrubbed, scrubbed
    assert scrubbed.startswith("MaxRetryError: Max retries exceeded with url: /api/")


@pytest.mark.parametrize("timestamp", ["²", "1" * 5000])
def test_signature_verification_fails_not_raises_when_the_timestamp_is_no_whole_number(timestamp):
    assert verify_webhook_signature(SECRET, f"t={timestamp},v1=abc", b"{}") is False


def test_signature_verification_fails_when_body_tampered_or_stale():
    body = b'{"a":1}'
    now = int(time.time())
    header = sign_webhook(SECRET, body, timestamp=now)
    assert verify_webhook_signature(SECRET, header, body)
    assert not verify_webhook_signature(SECRET, header, b'{"a":2}')
    assert not verify_webhook_signature(SECRET, header, body, now=now + 301)
    assert verify_webhook_signature(SECRET, header, body, now=now + 299)
    assert not verify_webhook_signature(SECRET, "garbage", body)
    assert not verify_webhook_signature(SECRET, "", body)


def test_pagerduty_trigger_has_events_v2_shape_when_sent(receiver):
    result = send_pagerduty(
        ROUTING_KEY,
        action="trigger",
        dedup_key="alert-42",
        summary="Connections at 95% of tier limit",
        severity="critical",
        source="deployment dep_123",
        custom_details={"value": 950, "limit": 1000},
        events_url=f"{receiver.url}/v2/enqueue",
        allow_private=True,
    )
    assert result.ok
    got = receiver.requests[0]
    assert got["path"] == "/v2/enqueue"
    assert json.loads(got["body"]) == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "alert-42",
        "payload": {
            "summary": "Connections at 95% of tier limit",
            "source": "deployment dep_123",
            "severity": "critical",
            "custom_details": {"value": 950, "limit": 1000},
        },
    }


def test_pagerduty_resolve_carries_only_keys_when_sent(receiver):
    result = send_pagerduty(
        ROUTING_KEY, action="resolve", dedup_key="alert-42", events_url=receiver.url, allow_private=True
    )
    assert result.ok
    assert json.loads(receiver.requests[0]["body"]) == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "alert-42",
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(routing_key="short", action="trigger"),
        dict(routing_key=ROUTING_KEY, action="acknowledge"),
        dict(routing_key=ROUTING_KEY, action="trigger", severity="fatal"),
        dict(routing_key=ROUTING_KEY, action="trigger", summary=""),
    ],
)
def test_pagerduty_is_not_sent_when_input_invalid(receiver, kwargs):
    defaults = dict(dedup_key="k", summary="s", severity="warning", source="src")
    defaults.update(kwargs)
    key = defaults.pop("routing_key")
    result = send_pagerduty(key, events_url=receiver.url, allow_private=True, **defaults)
    assert result.ok is False and result.error
    assert receiver.requests == []


def test_slack_message_posts_text_and_blocks_when_sent(receiver):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*firing*"}}]
    result = send_slack(f"{receiver.url}/services/T1/B1/x", "Alert firing", blocks, allow_private=True)
    assert result.ok
    assert json.loads(receiver.requests[0]["body"]) == {"text": "Alert firing", "blocks": blocks}


def test_slack_is_refused_when_url_is_not_slack(receiver):
    result = send_slack(f"{receiver.url}/services/T1/B1/x", "hi")
    assert result.ok is False and "Slack" in result.error and receiver.requests == []


def test_email_goes_through_given_sender_when_provided():
    sent = []
    result = send_email(["ops@example.com"], "Alert firing", "body", sender=lambda *a: sent.append(a))
    assert result.ok and sent == [(["ops@example.com"], "Alert firing", "body")]


def test_email_failure_is_returned_not_raised_when_sender_fails():
    def broken(to, subject, body):
        raise ConnectionRefusedError("smtp down")

    result = send_email(["ops@example.com"], "s", "b", sender=broken)
    assert result.ok is False and "smtp down" in result.error and result.retryable


def test_email_uses_installed_sender_when_none_given():
    sent = []
    channels.set_email_sender(lambda *a: sent.append(a))
    try:
        assert send_email(["a@example.com"], "s", "b").ok
    finally:
        channels.set_email_sender(None)
    assert len(sent) == 1


@pytest.mark.parametrize("to, subject", [([], "s"), (["not-an-address"], "s"), (["a@example.com"], "two\nlines")])
def test_email_is_refused_when_input_invalid(to, subject):
    sent = []
    result = send_email(to, subject, "b", sender=lambda *a: sent.append(a))
    assert result.ok is False and sent == []


def test_retry_schedule_grows_and_ends_when_attempts_exhausted():
    delays = retry_delays()
    assert list(delays) == sorted(delays) and delays[0] == 30 and delays[-1] == 6 * 3600
    assert next_retry_delay(attempts_made=1) == 30
    assert next_retry_delay(attempts_made=len(delays)) == delays[-1]
    assert next_retry_delay(attempts_made=len(delays) + 1) is None


def test_delivery_result_is_immutable_when_created():
    r = DeliveryResult(True, 200, "", "", 1)
    with pytest.raises(AttributeError):
        r.ok = False


@pytest.mark.parametrize("code, retryable", [(socket.EAI_AGAIN, True), (socket.EAI_NONAME, False)])
def test_webhook_is_tried_again_when_dns_does_not_answer_but_not_when_the_name_does_not_exist(code, retryable):
    from unittest import mock

    from notifications import urlsafety

    # The resolver is the machine's: it is made to fail the way a DNS outage and a deleted name do.
    with mock.patch.object(urlsafety.socket, "getaddrinfo", side_effect=socket.gaierror(code, "resolver")):
        result = send_webhook("https://hooks.example.com/in", {"a": 1}, secret=SECRET)
    assert result.ok is False and result.status_code is None and result.retryable is retryable
    assert "hooks.example.com" in result.error


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "120"}, 120),
        (503, {"retry-after": " 120 "}, 120),  # header names are case-insensitive
        (429, {"Retry-After": "Wed, 02 Dec 2026 12:10:00 GMT"}, 600),  # an HTTP date: 600 s after `now`
        (429, {"Retry-After": "Wed, 02 Dec 2026 11:00:00 GMT"}, 0),  # a date gone by: at once
        (429, {"Retry-After": "2026-12-02T12:10:00"}, None),  # not an HTTP date
        (429, {"Retry-After": "-5"}, None),
        (429, {"Retry-After": "1e3"}, None),
        (429, {"Retry-After": "٣٠"}, None),  # digits int() reads, HTTP does not
        (429, {"Retry-After": "9" * 40}, None),
        (429, {"Retry-After": "99999999"}, channels.RETRY_AFTER_LIMIT),
        (429, {}, None),
        (500, {"Retry-After": "120"}, None),
        (408, {"Retry-After": "120"}, None),
    ],
)
def test_retry_after_is_read_as_rfc_9110_says_when_a_receiver_throttles(status, headers, expected):
    now = 1796212800.0  # Wed, 02 Dec 2026 12:00:00 GMT
    assert channels.retry_after_seconds(status, headers, now=now) == expected


def test_webhook_result_carries_the_receivers_retry_after_when_it_answers_429():
    throttling = Receiver(status=429, headers={"Retry-After": "240"})
    try:
        result = send_webhook(throttling.url, {"a": 1}, secret=SECRET, allow_private=True)
    finally:
        throttling.close()
    assert result.ok is False and result.retryable and result.status_code == 429
    assert result.retry_after == 240
