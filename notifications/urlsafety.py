"""Keep customer-supplied destinations (webhooks, Slack, PagerDuty) away from our own network, and their credentials
out of sight.

Owns URL and key validation, URL masking, and `safe_post`, which resolves the host once, checks every address and
connects only to an address it checked, so a DNS answer that changes between validation and delivery (rebinding)
cannot redirect us inward. It never follows redirects and never sends to an address it has not just checked.
"""

from __future__ import annotations

import base64
import concurrent.futures
import ipaddress
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import certifi
import urllib3

from controlplane.validators import find_control_character

MAX_RESPONSE_BYTES = 64 * 1024
# Seconds a host name's lookup may take before the resolver counts as not answering. The system resolver's own limits
# (5 s per try and server, more with search domains) can add up past the web server's 30 s worker timeout.
RESOLVE_TIMEOUT = 5.0
_resolver: concurrent.futures.ThreadPoolExecutor


def _new_resolver() -> None:
    """Lookups run on these threads so that one can be abandoned at RESOLVE_TIMEOUT (getaddrinfo cannot be
    interrupted); an abandoned one ends on its own. While all are stuck, later lookups wait in line and time out
    alike. A forked process (a Celery pool child) has none of its parent's threads, so it starts its own pool."""
    global _resolver
    _resolver = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


_new_resolver()
os.register_at_fork(after_in_child=_new_resolver)

# Matched whole (fullmatch): `$` would also accept a trailing newline.
SLACK_WEBHOOK_RE = re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+")
PAGERDUTY_ROUTING_KEY_RE = re.compile(r"[a-z0-9]{32}")
MASK = "…"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _rfc6052_ipv4(ip: ipaddress.IPv6Address, prefix_length: int) -> ipaddress.IPv4Address:
    """The IPv4 address an IPv4-embedded IPv6 address carries after a NAT64 prefix of this length (RFC 6052 §2.2):
    the 32 bits after the prefix, bits 64-71 (the "u" octet) skipped."""
    value = int(ip)
    if prefix_length == 96:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    without_u = ((value >> 64) << 56) | (value & ((1 << 56) - 1))  # 120 bits
    return ipaddress.IPv4Address((without_u >> (120 - prefix_length - 32)) & 0xFFFFFFFF)


def embedded_ipv4(ip: IPAddress) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """(mechanism, IPv4 addresses) when this IPv6 address reaches an IPv4 host through one, else None.

    IPv4-mapped, NAT64 (the well-known /96 and the local-use /48, at every prefix length RFC 6052 allows inside it),
    6to4, IPv4-compatible, and Teredo (its server, and its client: the last 32 bits, inverted)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", [ip.ipv4_mapped]
    if ip in _NAT64_WELL_KNOWN:
        return "NAT64", [_rfc6052_ipv4(ip, 96)]
    if ip in _NAT64_LOCAL_USE:
        return "NAT64", [_rfc6052_ipv4(ip, length) for length in (96, 64, 56, 48)]
    if ip.sixtofour is not None:
        return "6to4", [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo
        return "Teredo", [server, client]
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are the unspecified and loopback addresses themselves
        return "IPv4-compatible", [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why this address is not a public destination, or None when it is.

    An IPv6 address that embeds IPv4 addresses is judged by them, exactly as those IPv4 literals would be: a packet
    to it reaches them through a translator or tunnel that may sit inside our network."""
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        mechanism, addresses = embedded
        found = [(v4, problem) for v4 in addresses if (problem := address_problem(v4))]
        if not found:
            return None
        # Of several readings (the local-use NAT64 prefix), name a real address over the 0.x.x.x of a wrong layout.
        v4, problem = next(((v4, p) for v4, p in found if v4 not in _THIS_NETWORK), found[0])
        return f"{problem} ({v4}, embedded by {mechanism})"
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
    # "user:password" from the URL's userinfo, percent-decoded; sent as HTTP Basic credentials.
    credentials: str | None = None


def _parse(url: object) -> _Target:
    if not isinstance(url, str) or not url.strip():
        raise ValueError("URL is required")
    if find_control_character(url) is not None:
        # urlsplit silently drops tabs and newlines: what was checked would not be what was stored.
        raise ValueError("URL must not contain control characters (tabs, line breaks…)")
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
    credentials = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return _Target(scheme, host, port, path, shown_host if default_port else f"{shown_host}:{port}", credentials)


def mask_url(url: str, *, secret_path: bool = False, first_segment_only: bool = False) -> str:
    """The URL as it may be shown: userinfo and every query value replaced by "…"; with `secret_path` (a Slack
    hook, whose path is its credential) the last path segment too; with `first_segment_only` (any other webhook:
    Discord, Mattermost, Zapier and Teams put their token in the path) every path segment after the first. Never
    raises; an unparsable URL is masked whole."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except (AttributeError, ValueError):
        return MASK
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    path = parts.path
    if secret_path and path.strip("/"):
        path = path.rstrip("/").rsplit("/", 1)[0] + "/" + MASK
    elif first_segment_only and "/" in path.strip("/"):
        path = "/" + path.strip("/").split("/", 1)[0] + "/" + MASK
    # `name=value` keeps its name; a bare piece (`?abc123`) is a token itself.
    query = "&".join(
        f"{piece.split('=', 1)[0]}={MASK}" if "=" in piece else MASK for piece in parts.query.split("&") if piece
    )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def url_secrets(url: str) -> list[str]:
    """The parts of `url` that may be credentials (userinfo, query string, the path after its first segment, as
    mask_url hides them, and the HTTP Basic token made of its userinfo), longest first, for scrubbing from text such
    as a transport error that quotes the request line, or a response that echoes the request."""
    try:
        parts = urlsplit(url.strip())
    except (AttributeError, ValueError):
        return []
    found = [p for p in (parts.query, parts.netloc.rpartition("@")[0] if "@" in parts.netloc else "") if p]
    _first, _, rest = parts.path.strip("/").partition("/")
    found += [rest, *(segment for segment in rest.split("/") if len(segment) >= 8)] if rest else []
    pieces = [piece.split("=", 1)[-1] for piece in parts.query.split("&")]
    found += [piece for piece in pieces if len(piece) >= 4]
    found += [unquote(piece) for piece in found if unquote(piece) != piece]
    if parts.username is not None:  # as safe_post sends them, HTTP Basic: a receiver may quote the header back
        basic = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        found.append(base64.b64encode(basic.encode()).decode("ascii"))
    return sorted(set(found), key=len, reverse=True)


class ResolverUnavailable(OSError):
    """The resolver did not answer (EAI_AGAIN: a DNS outage or a timeout), so nothing is known about the host yet:
    the same name may resolve in a moment. Not a ValueError, which refuses a destination for good."""


def _resolve(target: _Target, *, allow_private: bool) -> list[IPAddress]:
    lookup = _resolver.submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=RESOLVE_TIMEOUT)
    except concurrent.futures.TimeoutError as exc:
        raise ResolverUnavailable(f"DNS did not answer for host {target.host!r} within {RESOLVE_TIMEOUT:g} s") from exc
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise ResolverUnavailable(f"DNS did not answer for host {target.host!r}") from exc
        raise ValueError(f"cannot resolve host {target.host!r}") from exc
    except UnicodeError as exc:
        raise ValueError(f"cannot resolve host {target.host!r}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
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


def validate_webhook_url(url: object, *, allow_private: bool = False) -> None:
    """Raise ValueError unless `url` is http(s) with a host that resolves only to public addresses, and
    ResolverUnavailable while DNS does not answer."""
    _resolve(_parse(url), allow_private=allow_private)


def validate_slack_webhook_url(url: object) -> None:
    if not isinstance(url, str) or not SLACK_WEBHOOK_RE.fullmatch(url):
        raise ValueError("Slack webhook URL must look like https://hooks.slack.com/services/T…/B…/…")


def validate_pagerduty_routing_key(key: object) -> None:
    if not isinstance(key, str) or not PAGERDUTY_ROUTING_KEY_RE.fullmatch(key):
        raise ValueError("PagerDuty routing key must be 32 characters of lowercase letters and digits")


@dataclass(frozen=True, slots=True)
class SafeResponse:
    status: int
    body: bytes
    headers: dict[str, str]


def _read_until(response: urllib3.BaseHTTPResponse, deadline: float, *, limit: int, budget: float) -> bytes:
    """At most `limit` bytes of the body, as they arrive; TimeoutError once `deadline` (monotonic) has passed."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the receiver did not finish answering within {budget:g} s")
        chunk = response.read1(min(8192, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


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
    if target.credentials is not None and not any(name.lower() == "authorization" for name in send_headers):
        # Credentials in the URL mean HTTP Basic, as curl and browsers read them; an explicit header wins.
        send_headers["Authorization"] = "Basic " + base64.b64encode(target.credentials.encode()).decode("ascii")

    pool_kwargs: dict = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False, "maxsize": 1}
    pool: urllib3.HTTPConnectionPool
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
    # The timeouts bound each socket operation; a receiver that trickles its answer a byte at a time never trips them,
    # and held the worker (past the delivery's lease, inviting a second attempt) for as long as it liked.
    deadline = time.monotonic() + 2 * timeout
    try:
        response = pool.urlopen(
            "POST", target.path, body=body, headers=send_headers, redirect=False, preload_content=False
        )
        try:
            content = _read_until(response, deadline, limit=MAX_RESPONSE_BYTES, budget=2 * timeout)
        finally:
            response.release_conn()
        return SafeResponse(status=response.status, body=content, headers=dict(response.headers))
    finally:
        pool.close()
