"""Keep customer-supplied destinations (webhooks, Slack, PagerDuty) away from our own network.

Owns URL and key validation and `safe_post`, which resolves the host once, checks every address and connects only to
an address it checked, so a DNS answer that changes between validation and delivery (rebinding) cannot redirect us
inward. It never follows redirects and never sends to an address it has not just checked.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3

MAX_RESPONSE_BYTES = 64 * 1024

SLACK_WEBHOOK_RE = re.compile(r"^https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+$")
PAGERDUTY_ROUTING_KEY_RE = re.compile(r"^[a-z0-9]{32}$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_problem(ip: IPAddress) -> str | None:
    """Why this address is not a public destination, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped)
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (this includes cloud metadata at 169.254.169.254)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "a unique-local IPv6 address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved, non-public address"
    return None


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str
    host_header: str


def _parse(url: str) -> _Target:
    if not isinstance(url, str) or not url.strip():
        raise ValueError("URL is required")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("URL must start with http:// or https://")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"URL has an invalid port: {exc}") from exc
    if not host:
        raise ValueError("URL must name a host")
    port = port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    default_port = port == (443 if scheme == "https" else 80)
    shown_host = f"[{host}]" if ":" in host else host
    return _Target(scheme, host, port, path, shown_host if default_port else f"{shown_host}:{port}")


def _resolve(target: _Target, *, allow_private: bool) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"cannot resolve host {target.host!r}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not allow_private:
        # One bad answer refuses the host: a round-robin record mixing public and internal addresses is an attack.
        for ip in addresses:
            problem = address_problem(ip)
            if problem:
                raise ValueError(f"host {target.host!r} resolves to {ip}, {problem}; refused")
    if not addresses:
        raise ValueError(f"host {target.host!r} has no address")
    return addresses


def validate_webhook_url(url: str, *, allow_private: bool = False) -> None:
    """Raise ValueError unless `url` is http(s) with a host that resolves only to public addresses."""
    _resolve(_parse(url), allow_private=allow_private)


def validate_slack_webhook_url(url: str) -> None:
    if not isinstance(url, str) or not SLACK_WEBHOOK_RE.match(url.strip()):
        raise ValueError("Slack webhook URL must look like https://hooks.slack.com/services/T…/B…/…")


def validate_pagerduty_routing_key(key: str) -> None:
    if not isinstance(key, str) or not PAGERDUTY_ROUTING_KEY_RE.match(key):
        raise ValueError("PagerDuty routing key must be 32 characters of lowercase letters and digits")


@dataclass(frozen=True, slots=True)
class SafeResponse:
    status: int
    body: bytes
    headers: dict[str, str]


def safe_post(
    url: str,
    *,
    json_body: object = None,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    allow_private: bool = False,
) -> SafeResponse:
    """POST to `url` through an address checked now. Raises ValueError when refused, OSError/urllib3 errors when the
    remote end fails. TLS is verified against the URL's host name (SNI and certificate), not the IP."""
    if json_body is not None and data is not None:
        raise ValueError("pass json_body or data, not both")
    target = _parse(url)
    ip = _resolve(target, allow_private=allow_private)[0]
    send_headers = {"Host": target.host_header, "User-Agent": "controlplane-alerts/1"}
    if json_body is not None:
        body = json.dumps(json_body, separators=(",", ":")).encode()
        send_headers["Content-Type"] = "application/json"
    else:
        body = data.encode() if isinstance(data, str) else (data or b"")
    send_headers.update(headers or {})

    pool_kwargs: dict = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False, "maxsize": 1}
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            str(ip),
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            **pool_kwargs,
        )
    else:
        pool = urllib3.HTTPConnectionPool(str(ip), target.port, **pool_kwargs)
    try:
        response = pool.urlopen(
            "POST", target.path, body=body, headers=send_headers, redirect=False, preload_content=False
        )
        try:
            content = response.read(MAX_RESPONSE_BYTES)
        finally:
            response.release_conn()
        return SafeResponse(status=response.status, body=content, headers=dict(response.headers))
    finally:
        pool.close()
