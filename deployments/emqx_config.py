"""HOCON rendering of one deployment's EMQX configuration: listeners, authentication, authorization, rate limits.

Pure functions over BrokerSpec; they never talk to a cluster or a broker, and never see a plaintext password.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from deployments.drivers.base import ACL_NO_MATCH, BrokerSpec, RateLimit

LEVELS: tuple[str, ...] = ("global", "zone", "listener", "connection")
RATE_FIELDS: tuple[str, ...] = ("max_conn_rate", "messages_rate", "bytes_rate")

# Listener name -> (EMQX listener type, port). Port names in the operator's listeners Service are `<type>-<name>`
# (emqx-operator apis/apps/v2beta1/util.go GetListenersServicePorts): tcp-default, ssl-default, ws-default, wss-default.
LISTENERS: dict[str, tuple[str, int]] = {
    "mqtt": ("tcp", 1883),
    "mqtts": ("ssl", 8883),
    "ws": ("ws", 8083),
    "wss": ("wss", 8084),
}
DASHBOARD_PORT = 18083
DEFAULT_PBKDF2_ITERATIONS = 101

# EMQX 5.0 named its limiter types after the traffic they meter (emqx/emqx
# apps/emqx/src/emqx_limiter/etc/emqx_limiter.conf, 5.0 line): connection, message_in, bytes_in.
_V50_LIMITER_TYPE = {"max_conn_rate": "connection", "messages_rate": "message_in", "bytes_rate": "bytes_in"}


def hocon_string(value: str) -> str:
    """A HOCON quoted string. HOCON's quoted strings are JSON strings, so JSON escaping is exact."""
    return json.dumps(value, ensure_ascii=False)


def validate_rate_limit_hierarchy(rate_limits: Iterable[RateLimit]) -> None:
    """Raise ValueError when a level allows more than a level above it for the same field (unset means no limit)."""
    by_level: dict[str, RateLimit] = {}
    for limit in rate_limits:
        if limit.level not in LEVELS:
            raise ValueError(f"unknown rate limit level {limit.level!r}")
        if limit.level in by_level:
            raise ValueError(f"rate limit level {limit.level!r} is given twice")
        for field in RATE_FIELDS:
            value = getattr(limit, field)
            if value is not None and value <= 0:
                raise ValueError(f"{limit.level} {field} must be a positive rate per second, got {value}")
        by_level[limit.level] = limit
    for field in RATE_FIELDS:
        for child_index, child_level in enumerate(LEVELS):
            child = by_level.get(child_level)
            child_value = getattr(child, field) if child else None
            if child_value is None:
                continue
            for parent_level in LEVELS[:child_index]:
                parent = by_level.get(parent_level)
                parent_value = getattr(parent, field) if parent else None
                if parent_value is not None and child_value > parent_value:
                    raise ValueError(
                        f"{child_level} {field} ({child_value}/s) exceeds its parent {parent_level} {field} "
                        f"({parent_value}/s)"
                    )


def _version_tuple(version: str) -> tuple[int, int]:
    major, _, rest = version.partition(".")
    minor = rest.partition(".")[0]
    try:
        return int(major), int(minor)
    except ValueError:
        raise ValueError(f"unparseable EMQX version {version!r}") from None


def _rate(value: int | None) -> str:
    return hocon_string(f"{value}/s") if value is not None else "infinity"


def render_rate_limits(rate_limits: Iterable[RateLimit], version: str) -> str:
    """The limiter part of emqx.conf for `version`, after checking the hierarchy.

    EMQX 5.0 has the four levels natively as token buckets per limiter type: `global.rate`, `zone.<z>.rate`,
    `bucket.<b>.aggregated.rate` (shared by a listener's clients) and `bucket.<b>.per_client.rate`
    (emqx_limiter.conf of the 5.0 line). EMQX 5.1+ (checked against the 5.8 docs,
    docs.emqx.com/en/emqx/v58/rate-limit/rate-limit.html) keeps only listener keys: `max_conn_rate` per
    listener, `messages_rate` and `bytes_rate` per client. There we render the tightest limit set at any level:
    a global or zone cap cannot be enforced as an aggregate, so it becomes a per-client/per-listener ceiling.
    """
    limits = tuple(rate_limits)
    validate_rate_limit_hierarchy(limits)
    by_level = {limit.level: limit for limit in limits}
    if _version_tuple(version) < (5, 1):
        return _render_v50(by_level)
    return _render_listener_keys(by_level)


def _render_v50(by_level: dict[str, RateLimit]) -> str:
    def value(level: str, field: str) -> int | None:
        limit = by_level.get(level)
        return getattr(limit, field) if limit else None

    blocks = []
    for field, limiter_type in _V50_LIMITER_TYPE.items():
        if all(value(level, field) is None for level in LEVELS):
            continue
        # Bucket "default" in zone "default" is the one every listener uses unless told otherwise.
        blocks.append(
            f"  {limiter_type} {{\n"
            f"    global.rate = {_rate(value('global', field))}\n"
            f"    zone.default.rate = {_rate(value('zone', field))}\n"
            f"    bucket.default {{\n"
            f"      zone = default\n"
            f"      aggregated.rate = {_rate(value('listener', field))}\n"
            f"      aggregated.capacity = infinity\n"
            f"      per_client.rate = {_rate(value('connection', field))}\n"
            f"      per_client.capacity = infinity\n"
            f"    }}\n"
            f"  }}\n"
        )
    if not blocks:
        return ""
    return "limiter {\n" + "".join(blocks) + "}\n"


def _tightest(by_level: dict[str, RateLimit], field: str, levels: Iterable[str]) -> int | None:
    values = [getattr(by_level[level], field) for level in levels if level in by_level]
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _render_listener_keys(by_level: dict[str, RateLimit]) -> str:
    # A connection-level max_conn_rate means nothing (one connection is accepted once): it is ignored.
    settings = {
        "max_conn_rate": _tightest(by_level, "max_conn_rate", ("global", "zone", "listener")),
        "messages_rate": _tightest(by_level, "messages_rate", LEVELS),
        "bytes_rate": _tightest(by_level, "bytes_rate", LEVELS),
    }
    lines = []
    for listener_type, _port in LISTENERS.values():
        for key, val in settings.items():
            if val is not None:
                lines.append(f"listeners.{listener_type}.default.{key} = {hocon_string(f'{val}/s')}\n")
    return "".join(lines)


def _pbkdf2_iterations(spec: BrokerSpec) -> int:
    counts = {user.iterations for user in spec.users}
    if len(counts) > 1:
        raise ValueError(
            "all MQTT users of a deployment must share one PBKDF2 iteration count (EMQX has one per "
            f"authenticator); found {sorted(counts)}"
        )
    return counts.pop() if counts else DEFAULT_PBKDF2_ITERATIONS


def effective_rate_limits(spec: BrokerSpec) -> tuple[RateLimit, ...]:
    """The spec's limits, with the tier's messages_per_second as the global message rate unless one is given."""
    limits = list(spec.rate_limits)
    global_limit = next((limit for limit in limits if limit.level == "global"), None)
    if spec.messages_per_second and (global_limit is None or global_limit.messages_rate is None):
        if global_limit is None:
            limits.append(RateLimit(level="global", messages_rate=spec.messages_per_second))
        else:
            limits[limits.index(global_limit)] = RateLimit(
                level="global",
                max_conn_rate=global_limit.max_conn_rate,
                messages_rate=spec.messages_per_second,
                bytes_rate=global_limit.bytes_rate,
            )
    return tuple(limits)


def render_hocon(spec: BrokerSpec) -> str:
    """The whole `spec.config.data` for the EMQX resource. Raises ValueError on a spec EMQX cannot honour."""
    if spec.max_connections <= 0:
        raise ValueError("max_connections must be positive")
    if spec.message_size_limit <= 0:
        raise ValueError("message_size_limit must be positive")
    replicas = max(spec.replicas, 1)
    # EMQX's listener max_connections is per node: split the tier's total over the nodes so the cluster honours it.
    per_node = math.ceil(spec.max_connections / replicas)
    parts = [
        f"dashboard.listeners.http.bind = {DASHBOARD_PORT}\n",
        f"mqtt.max_packet_size = {spec.message_size_limit}\n",
    ]
    for listener_type, port in LISTENERS.values():
        parts.append(
            f"listeners.{listener_type}.default {{\n"
            f"  bind = {hocon_string(f'0.0.0.0:{port}')}\n"
            f"  max_connections = {per_node}\n"
            f"}}\n"
        )
    # pbkdf2/sha512 with the credentials' own iteration count, so the hashes the control plane stores import as-is
    # (emqx_authn_password_hashing: check_password for pbkdf2 compares hex(pbkdf2(mac_fun, pw, salt, iters))).
    parts.append(
        "authentication = [\n"
        "  {\n"
        "    mechanism = password_based\n"
        "    backend = built_in_database\n"
        "    user_id_type = username\n"
        "    password_hash_algorithm {name = pbkdf2, mac_fun = sha512, "
        f"iterations = {_pbkdf2_iterations(spec)}}}\n"
        "  }\n"
        "]\n"
    )
    parts.append(
        "authorization {\n"
        f"  no_match = {ACL_NO_MATCH}\n"
        "  deny_action = ignore\n"
        "  sources = [\n"
        "    {type = built_in_database, enable = true}\n"
        "  ]\n"
        "}\n"
    )
    parts.append(render_rate_limits(effective_rate_limits(spec), spec.version))
    return "".join(parts)
