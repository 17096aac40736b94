"""Webhook destination checks: schemes, internal addresses refused, DNS answers re-checked at send time."""

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from notifications import urlsafety
from notifications.urlsafety import (
    address_problem,
    mask_url,
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
            seen.append(
                {
                    "path": self.path,
                    "host": self.headers["Host"],
                    "authorization": self.headers.get("Authorization"),
                    "body": body,
                }
            )
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


# --- IPv6 addresses that embed an IPv4 address are judged by it ------------------------------------------------------


@pytest.mark.parametrize(
    "address, words",
    [
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 well-known prefix: 169.254.169.254
        ("64:ff9b::7f00:1", "loopback"),  # NAT64: 127.0.0.1
        ("64:ff9b::a00:5", "private"),  # NAT64: 10.0.0.5
        ("64:ff9b:1::a9fe:a9fe", "link-local"),  # NAT64 local-use prefix, /96 inside it
        ("64:ff9b:1:7f00:0:100::", "loopback"),  # NAT64 local-use prefix as a /48: 127.0.0.1 around the u octet
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("::7f00:1", "loopback"),  # IPv4-compatible 127.0.0.1
        ("::c0a8:101", "private"),  # IPv4-compatible 192.168.1.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1 (inverted bits)
        ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "private"),  # Teredo, server 10.0.0.1 (client 8.8.8.8 is public)
    ],
)
def test_validate_webhook_url_refuses_when_ipv6_address_embeds_internal_ipv4(address, words):
    with pytest.raises(ValueError, match=words) as refused:
        validate_webhook_url(f"http://[{address}]:8080/hook")
    assert "embedded by" in str(refused.value)


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
        "2002:808:808::1",  # 6to4 of 8.8.8.8
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo: server 65.54.227.120, client 8.8.8.8
    ],
)
def test_address_problem_is_none_when_embedded_ipv4_is_public(address):
    assert address_problem(ipaddress.ip_address(address)) is None


def test_address_problem_is_the_same_for_embedded_ipv4_as_for_the_literal():
    for v4 in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "192.0.2.1"):
        literal = address_problem(ipaddress.ip_address(v4))
        packed = int(ipaddress.IPv4Address(v4))
        nat64 = address_problem(ipaddress.IPv6Address((0x64FF9B << 96) | packed))
        assert literal and nat64 and nat64.startswith(literal), (v4, literal, nat64)


@pytest.mark.parametrize(
    "url",
    ["http://exa\nmple.com/x", "http://example.com/x\r\n", "http://example.com/\tx", "http://example.com/\u2028x"],
)
def test_validate_webhook_url_refuses_when_url_has_control_characters(url):
    with pytest.raises(ValueError, match="control characters"):
        validate_webhook_url(url)


@pytest.mark.parametrize(
    "value", ["https://hooks.slack.com/services/T0001/B0002/AbCdEf123\n", "a" * 16 + "0123456789abcdef\n"]
)
def test_slack_url_and_pagerduty_key_refused_when_a_newline_trails(value):
    with pytest.raises(ValueError):
        if value.startswith("https"):
            validate_slack_webhook_url(value)
        else:
            validate_pagerduty_routing_key(value)


def test_safe_post_sends_url_credentials_as_basic_auth_when_userinfo_given(echo_server):
    port, seen = echo_server
    safe_post(f"http://user:p%40ss@127.0.0.1:{port}/in", data=b"x", allow_private=True, timeout=5)
    assert seen[0]["authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://u:p@hooks.example.com/x?token=abc&team=ops", "https://…@hooks.example.com/x?token=…&team=…"),
        ("https://hooks.example.com:8443/x?abc123", "https://hooks.example.com:8443/x?…"),
        ("https://hooks.example.com/plain", "https://hooks.example.com/plain"),
    ],
)
def test_mask_url_hides_userinfo_and_query_values_when_shown(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://discord.com/api/webhooks/123/tOkEn-XyZ", "https://discord.com/api/…"),
        ("https://hooks.zapier.com/hooks/catch/123456/abcdef1/", "https://hooks.zapier.com/hooks/…"),
        ("https://u:p@chat.example.com/hooks/abc?x=1", "https://…@chat.example.com/hooks/…?x=…"),
        ("https://hooks.example.com/plain", "https://hooks.example.com/plain"),
        ("https://hooks.example.com/", "https://hooks.example.com/"),
    ],
)
def test_mask_url_shows_only_the_first_path_segment_when_the_path_may_hold_a_token(url, shown):
    assert mask_url(url, first_segment_only=True) == shown


def test_lookup_counts_as_dns_not_answering_when_the_resolver_takes_longer_than_its_limit(monkeypatch):
    import time

    def slow_resolver(*args, **kwargs):
        time.sleep(2)
        return [(2, 1, 6, "", ("93.184.216.34", 443))]

    monkeypatch.setattr(urlsafety, "RESOLVE_TIMEOUT", 0.3)
    started = time.monotonic()
    with mock.patch.object(urlsafety.socket, "getaddrinfo", side_effect=slow_resolver):
        with pytest.raises(urlsafety.ResolverUnavailable, match="within 0.3 s"):
            validate_webhook_url("https://slow.example/in")
        assert time.monotonic() - started < 1.5
        monkeypatch.setattr(urlsafety, "RESOLVE_TIMEOUT", 5.0)
        validate_webhook_url("https://slow.example/in")  # the same answer in time is accepted


def test_lookups_still_answer_in_a_forked_child_when_the_parent_had_looked_up_before():
    import os

    answers = [(2, 1, 6, "", ("93.184.216.34", 443))]
    with mock.patch.object(urlsafety.socket, "getaddrinfo", return_value=answers):
        for _ in range(8):  # the parent's lookup threads exist now
            validate_webhook_url("https://parent.example/in")
        pid = os.fork()
        if pid == 0:  # a pool child, as a Celery worker forks them: its lookups must not wait on threads it lacks
            try:
                validate_webhook_url("https://child.example/in")
            except BaseException:  # noqa: BLE001
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_safe_post_gives_up_within_its_timeout_when_the_receiver_trickles_its_body():
    """A receiver that answers a byte at a time, each within the read timeout, must not hold the worker (and the
    delivery's two-minute lease) for as long as it likes: the timeout bounds the whole answer."""
    import socket
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def trickle():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 - a timeout, whichever layer of urllib3 raises it
            safe_post(f"http://127.0.0.1:{port}/in", json_body={"a": 1}, allow_private=True, timeout=1)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert elapsed < 3, f"held for {elapsed:.1f} s with a 1 s timeout"
