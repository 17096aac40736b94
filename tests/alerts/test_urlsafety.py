"""Webhook destination checks: schemes, internal addresses refused, DNS answers re-checked at send time."""

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from alerts import urlsafety
from alerts.urlsafety import (
    address_problem,
    safe_post,
    validate_pagerduty_routing_key,
    validate_slack_webhook_url,
    validate_webhook_url,
)


@pytest.fixture
def echo_server():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "host": self.headers["Host"], "body": body})
            self.send_response(201)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x", "example.com/hook"])
def test_validate_webhook_url_refuses_when_scheme_is_not_http(url):
    with pytest.raises(ValueError, match="http"):
        validate_webhook_url(url)


def test_validate_webhook_url_refuses_when_url_empty():
    with pytest.raises(ValueError, match="required"):
        validate_webhook_url("")


def test_validate_webhook_url_refuses_when_host_missing():
    with pytest.raises(ValueError, match="host"):
        validate_webhook_url("http:///path")


@pytest.mark.parametrize(
    "address, words",
    [
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.5", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("[fd00::1]", "unique-local"),
        ("0.0.0.0", "unspecified"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[fe80::1]", "link-local"),
    ],
)
def test_validate_webhook_url_refuses_when_host_is_internal_address(address, words):
    with pytest.raises(ValueError, match=words):
        validate_webhook_url(f"http://{address}:8080/hook")


def test_validate_webhook_url_refuses_when_name_resolves_to_loopback():
    with pytest.raises(ValueError, match="loopback"):
        validate_webhook_url("http://localhost/hook")


def test_validate_webhook_url_refuses_when_any_resolved_address_is_internal():
    answers = [
        (2, 1, 6, "", ("93.184.216.34", 443)),
        (2, 1, 6, "", ("10.0.0.7", 443)),
    ]
    with mock.patch.object(urlsafety.socket, "getaddrinfo", return_value=answers):
        with pytest.raises(ValueError, match="10.0.0.7"):
            validate_webhook_url("https://mixed.example/hook")


def test_validate_webhook_url_accepts_when_all_addresses_public():
    answers = [(2, 1, 6, "", ("93.184.216.34", 443))]
    with mock.patch.object(urlsafety.socket, "getaddrinfo", return_value=answers):
        validate_webhook_url("https://hooks.example.com/x")


def test_validate_webhook_url_refuses_when_host_does_not_resolve():
    with pytest.raises(ValueError, match="resolve"):
        validate_webhook_url("https://no-such-host.invalid/hook")


def test_validate_webhook_url_accepts_loopback_when_private_allowed():
    validate_webhook_url("http://127.0.0.1:9/hook", allow_private=True)


@pytest.mark.parametrize("address", ["224.0.0.1", "100.64.0.1", "240.0.0.1"])
def test_address_problem_reports_reason_when_address_is_not_public(address):
    assert address_problem(ipaddress.ip_address(address))


def test_address_problem_is_none_when_address_is_public():
    assert address_problem(ipaddress.ip_address("1.1.1.1")) is None


def test_slack_url_accepted_when_it_is_an_incoming_webhook():
    validate_slack_webhook_url("https://hooks.slack.com/services/T0001/B0002/AbCdEf123")


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.slack.com/services/T0001/B0002/AbCdEf123",
        "https://hooks.slack.com.evil.com/services/T0001/B0002/x",
        "https://hooks.slack.com/services/X0001/B0002/x",
        "https://example.com/services/T0001/B0002/x",
    ],
)
def test_slack_url_refused_when_not_an_incoming_webhook(url):
    with pytest.raises(ValueError, match="Slack"):
        validate_slack_webhook_url(url)


def test_pagerduty_key_accepted_when_32_lowercase_alphanumerics():
    validate_pagerduty_routing_key("a" * 16 + "0123456789abcdef")


@pytest.mark.parametrize("key", ["A" * 32, "a" * 31, "a" * 33, "a" * 31 + "-", ""])
def test_pagerduty_key_refused_when_malformed(key):
    with pytest.raises(ValueError, match="32"):
        validate_pagerduty_routing_key(key)


def test_safe_post_delivers_to_loopback_when_private_allowed(echo_server):
    port, seen = echo_server
    response = safe_post(f"http://127.0.0.1:{port}/in?x=1", json_body={"a": 1}, allow_private=True, timeout=5)
    assert response.status == 201 and response.body == b"ok"
    assert seen[0]["path"] == "/in?x=1" and json.loads(seen[0]["body"]) == {"a": 1}
    assert seen[0]["host"] == f"127.0.0.1:{port}"


def test_safe_post_refuses_and_sends_nothing_when_loopback_not_allowed(echo_server):
    port, seen = echo_server
    with pytest.raises(ValueError, match="loopback"):
        safe_post(f"http://127.0.0.1:{port}/in", json_body={"a": 1})
    assert seen == []


def test_safe_post_connects_to_checked_address_when_dns_answer_changes(echo_server):
    """Rebinding: validation saw a public address; at send time the name points inward and must be refused."""
    port, seen = echo_server
    public = [(2, 1, 6, "", ("93.184.216.34", port))]
    inward = [(2, 1, 6, "", ("127.0.0.1", port))]
    with mock.patch.object(urlsafety.socket, "getaddrinfo", side_effect=[public, inward]):
        validate_webhook_url(f"http://rebind.example:{port}/in")
        with pytest.raises(ValueError, match="loopback"):
            safe_post(f"http://rebind.example:{port}/in", json_body={})
    assert seen == []


def test_safe_post_sends_original_host_header_when_connecting_by_ip(echo_server):
    port, seen = echo_server
    answers = [(2, 1, 6, "", ("127.0.0.1", port))]
    with mock.patch.object(urlsafety.socket, "getaddrinfo", return_value=answers):
        safe_post(f"http://receiver.example:{port}/in", data=b"x", allow_private=True, timeout=5)
    assert seen[0]["host"] == f"receiver.example:{port}"
