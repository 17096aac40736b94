"""HOCON rendering of one deployment's EMQX configuration: listeners, limits, TLS, authentication, authorization.

Pure functions over BrokerSpec: the configuration is built as a tree, checked against the schema extract of the
deployment's EMQX version (deployments.emqx_schema_check) and only then written as HOCON. They never talk to a
cluster or a broker, and never see a plaintext password.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from deployments import emqx_versions
from deployments.drivers.base import ACL_NO_MATCH, BrokerSpec, RateLimit

LEVELS: tuple[str, ...] = ("global", "zone", "listener", "connection")
RATE_FIELDS: tuple[str, ...] = ("max_conn_rate", "messages_rate", "bytes_rate")

# Listener name -> (EMQX listener type, port). Port names in the operator's listeners Service are `<type>-<name>`
# (emqx-operator 2.2.29 apis/apps/v2beta1/util.go GetListenersServicePorts, which skips `enable = false`
# listeners): tcp-default, ssl-default, ws-default, wss-default.
LISTENERS: dict[str, tuple[str, int]] = {
    "mqtt": ("tcp", 1883),
    "mqtts": ("ssl", 8883),
    "ws": ("ws", 8083),
    "wss": ("wss", 8084),
}
TLS_LISTENER_TYPES = ("ssl", "wss")
# Premium devices' client-certificate listener (the local driver's `mqtts_x509`): an ssl listener of its own name, so
# the operator's Service names its port `ssl-x509`. 8884 is the port conventionally used for MQTT over TLS with a
# required client certificate.
X509_PROTOCOL = "mqtts_x509"
X509_LISTENER = ("ssl", "x509")
X509_PORT = 8884
# The zone only that listener uses: EMQX reads peer_cert_as_username from the listener's zone (v5.8.6
# apps/emqx/src/emqx_channel.erl set_peercert_infos/3 -> get_mqtt_conf(Zone, ...) -> emqx_config:get_zone_conf/2),
# and a zone holds only what it sets, the rest coming from the global config (emqx_config.erl
# merge_with_global_defaults/2, maybe_update_zone/3).
X509_ZONE = "x509_devices"
# Files of the device CA beside the TLS Secret's (render_tls_secret writes it into the same Secret).
DEVICE_CA_KEY = "devices-ca.crt"
# How often EMQX fetches each cached CRL again: its shortest (v5.8.6 apps/emqx/src/emqx_crl_cache.erl
# MIN_REFRESH_PERIOD, one minute outside tests; the same in e5.9.1 and e5.10.2). A shorter value is raised to it.
CRL_REFRESH_INTERVAL = "1m"
CRL_HTTP_TIMEOUT = "15s"
DASHBOARD_PORT = 18083
DEFAULT_PBKDF2_ITERATIONS = 101
# The largest MQTT packet EMQX accepts (emqx/emqx v5.8.6 apps/emqx/include/emqx_mqtt.hrl MAX_INT_MQTT_PACKET_SIZE,
# enforced by emqx_schema:validate_max_packet_size/1).
MAX_PACKET_SIZE = 268_435_455
# EMQX's built-in authorization database holds at most `max_rules` rules per subject, 100 by default (v5.8.6
# apps/emqx_auth_mnesia/src/emqx_authz_mnesia_schema.erl MAX_RULES); its API answers 400 beyond.
MAX_ACL_RULES_PER_SUBJECT = 100
# Where the certificate Secret is mounted in every EMQX pod (spec.coreTemplate.spec.extraVolumeMounts).
TLS_MOUNT_PATH = "/opt/emqx/etc/certs/deployment"
# The CA bundle EMQX uses when none is configured (v5.8.6 apps/emqx/src/emqx_schema.erl common_ssl_opts_schema/2);
# EMQX expands ${EMQX_ETC_DIR} in file paths itself. Rendered explicitly so a CA set earlier does not linger.
IMAGE_CA_FILE = "${EMQX_ETC_DIR}/certs/cacert.pem"


class Infinity:
    """EMQX's `infinity` (an unquoted HOCON word)."""

    def __repr__(self) -> str:
        return "infinity"


INFINITY = Infinity()


def hocon_string(value: str) -> str:
    """A HOCON quoted string. HOCON's quoted strings are JSON strings, so JSON escaping is exact."""
    return json.dumps(value, ensure_ascii=False)


# -- rate limits ----------------------------------------------------------------------------------------------


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


def _rate(per_second: int | None, share: int = 1) -> str | Infinity:
    """`per_second` split over `share` nodes as an EMQX rate: exact, `N/s` when it divides, `N/<share>s` if not.

    Both rate grammars take `<n>/<k>s` (v5.8.6 emqx_limiter_schema:to_rate/3, e5.9.0 emqx_limiter_schema
    do_parse_rate/1); the split never lets the cluster as a whole exceed `per_second`.
    """
    if per_second is None:
        return INFINITY
    if per_second % share == 0:
        return f"{per_second // share}/s"
    return f"{per_second}/{share}s"


def _min(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def limiter_plan(spec: BrokerSpec, rate_limits: Iterable[RateLimit] | None = None) -> dict[str, dict[str, object]]:
    """Where each level's limits go in EMQX, for the spec's version. Keys: `node` (or `zone` from 5.9), `listener`.

    No EMQX limiter is cluster-wide, so the levels that mean "the whole deployment" (global, zone, and the tier's
    message rate) go to the per-node limiter divided by the replica count: 5.1-5.8 `limiter.*_rate` (one bucket
    per node, emqx_limiter_utils:get_node_opts/1), 5.9+ `mqtt.limiter.*_rate` (one shared bucket per zone per node,
    emqx_limiter:create_limiters_for_zone/2). The listener level's connection rate is the listener's
    `max_conn_rate` (one bucket per listener per node: v5.8.6 emqx_limiter_utils:convert_listener_short_paths/1,
    e5.9.0 emqx_listeners.erl esockd limiter); the connection level's message and byte rates are the listener's
    `messages_rate`/`bytes_rate`, which both layouts give each client for itself. A listener-level message or byte
    rate has no EMQX key and a connection-level connection rate means nothing: neither is rendered.
    Every key is always present, `infinity` when unset: the operator merges config edits, so a key left out would
    keep its old value.
    """
    limits = tuple(spec.rate_limits if rate_limits is None else rate_limits)
    validate_rate_limit_hierarchy(limits)
    by_level = {limit.level: limit for limit in limits}

    def value(level: str, field: str) -> int | None:
        limit = by_level.get(level)
        return getattr(limit, field) if limit else None

    replicas = max(spec.replicas, 1)
    wide = {
        "max_conn_rate": _min(value("global", "max_conn_rate"), value("zone", "max_conn_rate")),
        "messages_rate": _min(
            value("global", "messages_rate"), value("zone", "messages_rate"), spec.messages_per_second or None
        ),
        "bytes_rate": _min(value("global", "bytes_rate"), value("zone", "bytes_rate")),
    }
    return {
        "node": {field: _rate(rate, replicas) for field, rate in wide.items()},
        "listener": {
            "max_conn_rate": _rate(value("listener", "max_conn_rate")),
            "messages_rate": _rate(value("connection", "messages_rate")),
            "bytes_rate": _rate(value("connection", "bytes_rate")),
        },
    }


# What each level's fields become on EMQX, per version range: the rate-limit API shows it to customers.
ENFORCEMENT: dict[str, list[dict[str, str]]] = {
    "global": [
        {
            "field": field,
            "emqx_versions": versions,
            "emqx_key": key,
            "scope": "the whole deployment: each node enforces the limit divided by the number of nodes",
        }
        for field in RATE_FIELDS
        for versions, key in (
            ("5.1.1-5.8.x", f"limiter.{field}"),
            ("5.9.0 and later", f"mqtt.limiter.{field}"),
        )
    ],
    "listener": [
        {
            "field": "max_conn_rate",
            "emqx_versions": "5.1.1 and later",
            "emqx_key": "listeners.<type>.default.max_conn_rate",
            "scope": "each listener on each node",
        }
    ],
    "connection": [
        {
            "field": field,
            "emqx_versions": "5.1.1 and later",
            "emqx_key": f"listeners.<type>.default.{field}",
            "scope": "each client connection",
        }
        for field in ("messages_rate", "bytes_rate")
    ],
}
ENFORCEMENT["zone"] = [dict(entry) for entry in ENFORCEMENT["global"]]
ENFORCEMENT_NOTE = (
    "EMQX has no cluster-wide limiter: global and zone limits (and the tier's message rate, whichever is lowest) "
    "are divided by the number of nodes and enforced on each node, so the deployment as a whole never exceeds "
    "them. A listener's max_conn_rate applies to that listener on each node. Message and byte rates are enforced "
    "per client (connection level) and for the whole deployment, not per listener; a connection-level "
    "max_conn_rate means nothing and is not enforced."
)


# -- the configuration tree ----------------------------------------------------------------------------------


def _pbkdf2_iterations(spec: BrokerSpec) -> int:
    # A certificate-only user has no password hash: its count means nothing to the authenticator.
    counts = {user.iterations for user in spec.users if not user.certificate_only}
    if len(counts) > 1:
        raise ValueError(
            "all MQTT users of a deployment must share one PBKDF2 iteration count (EMQX has one per "
            f"authenticator); found {sorted(counts)}"
        )
    return counts.pop() if counts else DEFAULT_PBKDF2_ITERATIONS


def enabled_listener_types(spec: BrokerSpec) -> list[str]:
    """TLS listeners run only with a certificate of the deployment's own: without `ssl_options` EMQX would serve the
    demo key shipped in its image (v5.8.6 emqx_schema common_ssl_opts_schema/2 defaults to etc/certs/key.pem)."""
    return [t for t, _port in LISTENERS.values() if spec.tls is not None or t not in TLS_LISTENER_TYPES]


def has_x509_listener(spec: BrokerSpec) -> bool:
    """The device-certificate listener serves the deployment's server certificate: it runs with TLS and a device CA."""
    return spec.tls is not None and spec.device_ca is not None


def max_connections_per_listener(spec: BrokerSpec) -> int:
    """A listener's share of the tier's connections on one node. EMQX counts `max_connections` per listener per
    node (v5.8.6 emqx_schema base_listener/1, enforced by esockd per listener), so the tier is split evenly over
    the nodes and the enabled listeners (the device-certificate one included), rounding down: the sum never
    exceeds the tier."""
    listeners = len(enabled_listener_types(spec)) + (1 if has_x509_listener(spec) else 0)
    shares = max(spec.replicas, 1) * listeners
    return max(1, spec.max_connections // shares)


def _ssl_options(spec: BrokerSpec) -> dict:
    """Two-way TLS when the spec carries a client CA: `verify_peer` against it, and `fail_if_no_peer_cert` when a
    client without a certificate is to be refused (v5.8.6 emqx_schema common_ssl_opts_schema/2)."""
    tls = spec.tls
    assert tls is not None
    return {
        "certfile": f"{TLS_MOUNT_PATH}/tls.crt",
        "keyfile": f"{TLS_MOUNT_PATH}/tls.key",
        "cacertfile": f"{TLS_MOUNT_PATH}/ca.crt" if tls.has_client_ca else IMAGE_CA_FILE,
        "verify": "verify_peer" if tls.verify_peer else "verify_none",
        "fail_if_no_peer_cert": bool(tls.verify_peer and tls.require_client_certificate),
    }


def _x509_listener(spec: BrokerSpec, base: dict[str, object]) -> dict[str, object]:
    """`listeners.ssl.x509`: certificate devices sign in with a client certificate of the deployment's device CA and
    no password, as on the local driver's mqtts_x509.

    - `verify_peer` + `fail_if_no_peer_cert`: a client without a certificate the device CA signed is refused at the
      handshake (v5.8.6 emqx_schema validate_server_ssl_opts/1 demands verify_peer with it).
    - `enable_crl_check`: EMQX checks the peer certificate against the CRL named by its CRL Distribution Points,
      fetched over HTTP and cached (emqx_listeners.erl: `crl_check => peer`, `crl_cache => emqx_ssl_crl_cache`);
      the control plane serves it (iot: /pki/deployments/<id>/devices.crl.pem, PEM: iot.pki.device_crl_url).
    - `zone = x509_devices`, whose `mqtt.peer_cert_as_username = cn`: the certificate's CN is the MQTT username on
      this listener only; the password listeners keep the CONNECT's username.
    - `enable_authn = false`: the verified certificate is the authentication, no password is asked (v5.8.6
      emqx_access_control.erl pre_hook_authenticate/1 answers ok, not a superuser). What the device may do is the
      authorization of its username (a confined list, or a deny-everything list once its certificate is revoked).
    Rendered (disabled) without a device CA too: the operator merges config, so a listener once rendered stays."""
    listener = dict(base)
    listener["bind"] = f"0.0.0.0:{X509_PORT}"
    listener["enable"] = has_x509_listener(spec)
    listener["zone"] = X509_ZONE
    listener["enable_authn"] = False
    if has_x509_listener(spec):
        listener["ssl_options"] = {
            "certfile": f"{TLS_MOUNT_PATH}/tls.crt",
            "keyfile": f"{TLS_MOUNT_PATH}/tls.key",
            "cacertfile": f"{TLS_MOUNT_PATH}/{DEVICE_CA_KEY}",
            "verify": "verify_peer",
            "fail_if_no_peer_cert": True,
            "enable_crl_check": True,
        }
    return listener


def _identity_as_username(spec: BrokerSpec) -> bool:
    """The client certificate's common name is the username (mosquitto's use_identity_as_username): only with a
    certificate every TLS client must present."""
    tls = spec.tls
    return bool(tls and tls.use_identity_as_username and tls.verify_peer and tls.require_client_certificate)


def config_tree(spec: BrokerSpec) -> dict:
    """The whole configuration as nested dicts (HOCON objects), lists and scalars. Raises ValueError on a spec EMQX
    cannot honour."""
    version = emqx_versions.check(spec.version)
    if spec.max_connections <= 0:
        raise ValueError("max_connections must be positive")
    if not 0 < spec.message_size_limit <= MAX_PACKET_SIZE:
        raise ValueError(f"message_size_limit must be between 1 and {MAX_PACKET_SIZE} bytes (EMQX's maximum)")
    if spec.durable_sessions and not emqx_versions.has_durable_sessions(version):
        raise ValueError(f"durable sessions need EMQX 5.8 or later, not {version}")
    plan = limiter_plan(spec)
    enabled = enabled_listener_types(spec)
    per_listener = max_connections_per_listener(spec)
    listeners: dict[str, dict] = {}
    for listener_type, port in LISTENERS.values():
        listener: dict[str, object] = {
            "enable": listener_type in enabled,
            "bind": f"0.0.0.0:{port}",
            "max_connections": per_listener,
            **plan["listener"],
        }
        if listener_type in TLS_LISTENER_TYPES and spec.tls is not None:
            listener["ssl_options"] = _ssl_options(spec)
            # With the identity as username the verified certificate is the authentication (as with mosquitto's
            # use_identity_as_username): no password is asked on the TLS listeners, which refuse any client
            # without a certificate. Rendered either way: the operator merges config, a key once set stays.
            listener["enable_authn"] = not _identity_as_username(spec)
        listeners[listener_type] = {"default": listener}
    x509_type, x509_name = X509_LISTENER
    listeners[x509_type][x509_name] = _x509_listener(spec, {"max_connections": per_listener, **plan["listener"]})
    mqtt: dict[str, object] = {"max_packet_size": spec.message_size_limit}
    if spec.tls is not None:
        # Zone-wide, but only a connection that presented a certificate has a common name to take: without one
        # the CONNECT's username is kept (v5.8.6 emqx_channel:set_peercert_infos/3 then set_username/2), so the
        # tcp and ws listeners are unaffected.
        mqtt["peer_cert_as_username"] = "cn" if _identity_as_username(spec) else "disabled"
    # The dashboard listener keeps EMQX's default port, which is where the operator looks for the API too
    # (emqx-operator 2.2.29 apis/apps/v2beta1/util.go GetDashboardPortMap defaults to 18083).
    tree: dict[str, object] = {
        "mqtt": mqtt,
        "zones": {X509_ZONE: {"mqtt": {"peer_cert_as_username": "cn"}}},
        "listeners": listeners,
        # EMQX fetches a CRL again every refresh_interval (a revoked device certificate is accepted until then): the
        # shortest it allows.
        "crl_cache": {"refresh_interval": CRL_REFRESH_INTERVAL, "http_timeout": CRL_HTTP_TIMEOUT},
    }
    if emqx_versions.has_zone_limiter(version):
        mqtt["limiter"] = dict(plan["node"])
    else:
        tree["limiter"] = dict(plan["node"])
    if spec.durable_sessions:
        # builtin_raft replicates each shard over the nodes (v5.8.6 apps/emqx/src/emqx_ds_schema.erl
        # backend_fields(builtin_raft, _)); it is Enterprise storage.
        replicas = max(spec.replicas, 1)
        tree["durable_sessions"] = {"enable": True}
        tree["durable_storage"] = {
            "messages": {"backend": "builtin_raft", "n_sites": replicas, "replication_factor": min(3, replicas)}
        }
    # pbkdf2/sha512 with the credentials' own iteration count, so the hashes the control plane stores import as-is
    # (emqx_authn_password_hashing: check_password for pbkdf2 compares hex(pbkdf2(mac_fun, pw, salt, iters))).
    tree["authentication"] = [
        {
            "mechanism": "password_based",
            "backend": "built_in_database",
            "user_id_type": "username",
            "password_hash_algorithm": {"name": "pbkdf2", "mac_fun": "sha512", "iterations": _pbkdf2_iterations(spec)},
        }
    ]
    tree["authorization"] = {
        "no_match": ACL_NO_MATCH,
        "deny_action": "ignore",
        "sources": [{"type": "built_in_database", "enable": True, "max_rules": MAX_ACL_RULES_PER_SUBJECT}],
    }
    return tree


def _hocon_value(value: object, indent: str) -> str:
    if isinstance(value, Infinity):
        return "infinity"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return hocon_string(value)
    if isinstance(value, dict):
        inner = indent + "  "
        lines = [f"{inner}{key} {_hocon_assign(item)}{_hocon_value(item, inner)}" for key, item in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{indent}}}"
    if isinstance(value, list):
        inner = indent + "  "
        return "[\n" + ",\n".join(f"{inner}{_hocon_value(item, inner)}" for item in value) + f"\n{indent}]"
    raise TypeError(f"cannot render {type(value).__name__} as HOCON")


def _hocon_assign(value: object) -> str:
    return "" if isinstance(value, dict) else "= "


def to_hocon(tree: dict) -> str:
    """HOCON text of a configuration tree; keys are plain identifiers, strings JSON-quoted."""
    return "".join(f"{key} {_hocon_assign(value)}{_hocon_value(value, '')}\n" for key, value in tree.items())


def render_hocon(spec: BrokerSpec) -> str:
    """The whole `spec.config.data` for the EMQX resource, checked against the version's schema extract first.
    Raises ValueError on a spec EMQX cannot honour."""
    from deployments.emqx_schema_check import check_config

    tree = config_tree(spec)
    problems = check_config(tree, emqx_versions.schema_extract(spec.version))
    if problems:
        raise ValueError(f"EMQX {spec.version} would reject the rendered configuration: {'; '.join(problems)}")
    return to_hocon(tree)
