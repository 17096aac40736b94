"""Edge nodes (Premium), the pure part: what a customer may name a node and map as its topics, the desired
configuration document the agent publishes to `edge/{node}/config`, and the bridge configuration a node runs
(mosquitto's `connection` section, NanoMQ's HOCON `bridges.mqtt` block).

Pure functions: checks raise ValueError with a message shown beside the field; renderers take checked values only and
quote everything they write, so no customer text can add a line or a key to a bridge file. Nothing here touches the
database or a broker.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from deployments.topics import topic_filters_overlap, validate_topic_filter

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
NODE_NAME_RULE = "1 to 64 characters among A-Z, a-z, 0-9, _ and -"
KINDS = ("mosquitto", "nanomq")
MAX_TOPICS = 32
MAX_TOPIC_LENGTH = 256
MAX_DOCUMENT_BYTES = 64 * 1024  # the published desired configuration, compact JSON
MAX_SETTINGS_DEPTH = 16
NODE_USERNAME_PREFIX = "$edge-"
# The node's own topics under edge/{node}/ on the deployment. A mapping may not reach them: a local client could
# then forge the node's status or acknowledgement, and a `down` mapping would loop the control topics back.
STATUS = "status"
CONFIG = "config"
CONFIG_ACK = "config/ack"
RESERVED = (STATUS, CONFIG, CONFIG_ACK)
# Where the control topics live on the node's own broker: the configuration comes down to `edge/config`, the node's
# software acknowledges on `edge/config/ack`.
LOCAL_PREFIX = "edge/"
QOS = 1
# mosquitto reads a `topic` line as words separated by spaces and strips quotes; HOCON would need escapes. Topics of
# a bridge therefore allow none of these (MQTT itself would).
_BRIDGE_UNSAFE = re.compile(r"[\s\"'\\`$]")
_CA_FILE_RE = re.compile(r"^/[A-Za-z0-9._/-]{1,255}\Z")


def cloud_prefix(node: str) -> str:
    return f"edge/{node}/"


def status_topic(node: str) -> str:
    return cloud_prefix(node) + STATUS


def config_topic(node: str) -> str:
    return cloud_prefix(node) + CONFIG


def ack_topic(node: str) -> str:
    return cloud_prefix(node) + CONFIG_ACK


def node_topics(node: str) -> tuple[str, ...]:
    """What the node's broker user may publish and subscribe to on the deployment, and nothing else."""
    return (cloud_prefix(node) + "#",)


def client_id(node: str) -> str:
    # `$` never starts a device id (a device's client id), so a device can never take a bridge's connection over.
    return f"$edge-{node}"


# -- checks -------------------------------------------------------------------------------------------------------------


def node_name(value: Any) -> str:
    if not isinstance(value, str) or not NODE_NAME_RE.match(value):
        raise ValueError(f"An edge node's name is {NODE_NAME_RULE}: it is a topic level and a bridge name.")
    return value


def kind(value: Any) -> str:
    if value not in KINDS:
        raise ValueError(f"One of {', '.join(KINDS)}.")
    return value


def topic_filter(value: Any) -> str:
    """One topic filter of a mapping: a valid MQTT filter that a bridge file can carry and that stays clear of the
    node's status and configuration topics."""
    if not isinstance(value, str):
        raise ValueError("A topic filter is a string.")
    try:
        validate_topic_filter(value)
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}.") from None
    if len(value) > MAX_TOPIC_LENGTH:
        raise ValueError(f"{value[:40]!r}…: at most {MAX_TOPIC_LENGTH} characters.")
    unsafe = _BRIDGE_UNSAFE.search(value)
    if unsafe:
        raise ValueError(
            f"{value!r}: a bridge topic cannot contain spaces, quotes, backslashes, backquotes or '$' "
            f"(found {unsafe.group()!r} at {unsafe.start()})."
        )
    for reserved in RESERVED:
        if topic_filters_overlap(value, reserved):
            raise ValueError(
                f"{value!r} would also match edge/{{node}}/{reserved}, the node's own "
                f"{'status' if reserved == STATUS else 'configuration'} topic: give the mapping a first level of "
                "its own (e.g. 'sensors/#')."
            )
    return value


def topic_filters(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("A list of topic filters.")
    if len(value) > MAX_TOPICS:
        raise ValueError(f"At most {MAX_TOPICS} topic filters.")
    errors = []
    checked = []
    for index, item in enumerate(value):
        try:
            checked.append(topic_filter(item))
        except ValueError as exc:
            errors.append(f"[{index}] {exc}")
    if errors:
        raise ValueError(" ".join(errors))
    return list(dict.fromkeys(checked))


def mappings(up: list[str], down: list[str]) -> None:
    """Up and down filters that share a topic would send a message up and bring it straight back down."""
    for u in up:
        for d in down:
            if topic_filters_overlap(u, d):
                raise ValueError(
                    f"{u!r} (up) and {d!r} (down) both match some topic: a message would go up and come back down."
                )


def settings(value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError("A JSON object.")
    _check_json(value, 1)
    return value


def _check_json(value: Any, depth: int) -> None:
    if depth > MAX_SETTINGS_DEPTH:
        raise ValueError(f"Nested more than {MAX_SETTINGS_DEPTH} levels.")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, "A key")
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, str):
        _check_text(value, "A string")
    elif isinstance(value, float) and value != value:  # NaN is no JSON
        raise ValueError("NaN is not JSON.")


def _check_text(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} contains the NUL character.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (a lone surrogate).") from None


def ca_file(value: Any) -> str:
    """Where the node keeps the deployment's CA certificate (written into the bridge file)."""
    if not isinstance(value, str) or not _CA_FILE_RE.match(value) or "/../" in value + "/" or "/./" in value + "/":
        raise ValueError("An absolute path of A-Z a-z 0-9 . _ - / (no '..'), at most 256 characters.")
    return value


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


# -- the desired configuration document -------------------------------------------------------------------------------


def document(*, node: str, node_kind: str, version: int, up: list[str], down: list[str], settings: dict) -> dict:
    """What the agent publishes (retained) to edge/{node}/config. The node's software applies it and answers
    {"version": n} on edge/{node}/config/ack (its local `edge/config/ack`)."""
    prefix = cloud_prefix(node)
    return {
        "version": version,
        "node": node,
        "kind": node_kind,
        "topics": {
            "up": [{"local": topic, "cloud": prefix + topic} for topic in up],
            "down": [{"cloud": prefix + topic, "local": topic} for topic in down],
        },
        "settings": settings,
        "ack": {"topic": LOCAL_PREFIX + CONFIG_ACK, "payload": {"version": version}},
    }


def document_size_check(body: dict) -> int:
    size = len(compact(body).encode("utf-8"))
    if size > MAX_DOCUMENT_BYTES:
        raise ValueError(f"The configuration document is {size} bytes of JSON; at most {MAX_DOCUMENT_BYTES}.")
    return size


def parse_ack(payload: bytes) -> int | None:
    """The version a node acknowledges: {"version": n} with n a positive integer; None for anything else."""
    if len(payload) > 1024:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return None
    return version


def parse_status(payload: bytes) -> bool | None:
    """mosquitto's bridge notification: "1" when its connection is up, "0" (its last will) when it is down."""
    if payload == b"1":
        return True
    if payload == b"0":
        return False
    return None


# -- bridge configuration ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bridge:
    """Everything a bridge file says, checked: the node, where the deployment listens and how to reach it."""

    deployment: str  # public id, for the comments
    node: str
    kind: str
    host: str
    port: int
    tls: bool
    ca_file: str
    client_certificate_required: bool
    username: str
    password: str | None  # None: a placeholder the customer replaces with the password shown once
    up: tuple[str, ...]
    down: tuple[str, ...]


PASSWORD_PLACEHOLDER = "REPLACE-WITH-THE-NODE-PASSWORD"
_HOST_RE = re.compile(r"^[A-Za-z0-9.:_\-\[\]]{1,253}\Z")
_PUBLIC_ID_RE = re.compile(r"^[a-z]{2,8}_[A-Za-z0-9]{1,40}\Z")


def _checked(bridge: Bridge) -> None:
    """Last line of defence before text is written: every value is re-checked, whatever the caller did."""
    node_name(bridge.node)
    kind(bridge.kind)
    if not _PUBLIC_ID_RE.match(bridge.deployment):
        raise ValueError(f"unusable deployment id {bridge.deployment!r}")
    if not _HOST_RE.match(bridge.host) or not (0 < bridge.port < 65536):
        raise ValueError(f"unusable broker address {bridge.host!r}:{bridge.port}")
    if not bridge.username.startswith(NODE_USERNAME_PREFIX) or _BRIDGE_UNSAFE.search(bridge.username[1:]):
        raise ValueError("unusable username")
    if bridge.password is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,128}", bridge.password):
        raise ValueError("unusable password")
    ca_file(bridge.ca_file)
    for topic in (*bridge.up, *bridge.down):
        topic_filter(topic)


def _address(bridge: Bridge) -> str:
    host = bridge.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"{host}:{bridge.port}"


def render_mosquitto(bridge: Bridge) -> str:
    """A `connection` section for mosquitto.conf (mosquitto.conf(5), Bridges; 2.0.11 tested): put it in
    /etc/mosquitto/conf.d/. `topic <pattern> <direction> <qos> <local prefix> <remote prefix>`: the node's local
    `sensors/#` is the deployment's `edge/{node}/sensors/#`, and back for `down`."""
    _checked(bridge)
    prefix = cloud_prefix(bridge.node)
    password = bridge.password if bridge.password is not None else PASSWORD_PLACEHOLDER
    lines = [
        f"# Edge node {bridge.node} of deployment {bridge.deployment}: mosquitto bridge to the deployment.",
        "# Generated by the control plane; put it in /etc/mosquitto/conf.d/ and restart mosquitto.",
    ]
    if bridge.password is None:
        lines.append(f"# Replace {PASSWORD_PLACEHOLDER} with the node's password (shown once, when it was issued).")
    lines += [
        # Unique per edge broker even when it bridges to several deployments with nodes of the same name.
        f"connection {bridge_name(bridge)}",
        f"address {_address(bridge)}",
        "bridge_protocol_version mqttv311",
        f"remote_clientid {client_id(bridge.node)}",
        f"remote_username {bridge.username}",
        f"remote_password {password}",
        "cleansession false",
        "start_type automatic",
        "restart_timeout 2 30",
        "keepalive_interval 30",
        # The bridge's state on the deployment: "1" (retained) once connected, "0" as its last will.
        "notifications true",
        "notifications_local_only false",
        f"notification_topic {status_topic(bridge.node)}",
    ]
    if bridge.tls:
        lines += [
            "# The deployment's CA certificate: GET …/deployments/{dep}/ca.pem (your own CA while a server",
            "# certificate of your own is served).",
            f"bridge_cafile {bridge.ca_file}",
            "bridge_insecure false",
            "bridge_tls_version tlsv1.2",
        ]
        if bridge.client_certificate_required:
            lines += [
                "# The deployment requires a client certificate (two-way TLS): give the bridge one signed by its",
                "# client CA.",
                "#bridge_certfile /etc/mosquitto/certs/edge-node.crt",
                "#bridge_keyfile /etc/mosquitto/certs/edge-node.key",
            ]
    for topic in bridge.up:
        lines.append(f'topic {topic} out {QOS} "" {prefix}')
    for topic in bridge.down:
        lines.append(f'topic {topic} in {QOS} "" {prefix}')
    # The control topics: the desired configuration comes down to `edge/config`, the ack goes up.
    lines.append(f"topic {CONFIG} in {QOS} {LOCAL_PREFIX} {prefix}")
    lines.append(f"topic {CONFIG_ACK} out {QOS} {LOCAL_PREFIX} {prefix}")
    return "\n".join(lines) + "\n"


def _hocon(value: str) -> str:
    # A JSON string is a valid HOCON quoted string; checked values carry no quote or backslash anyway.
    return json.dumps(value, ensure_ascii=False)


def render_nanomq(bridge: Bridge) -> str:
    """A `bridges.mqtt.<name>` block for nanomq.conf (HOCON, NanoMQ 0.23.7 or later for `local_topic` remapping of
    subscriptions; keys as nanomq/nanomq docs/en_US/config-description/bridges.md and NanoNNG's
    src/supplemental/nanolib/conf_ver2.c `conf_bridge_node_parse` read them). Forwards keep the local topic
    (`remote_topic = ""`) and add the `prefix`; subscriptions strip it (`local_topic` is the remote filter's tail)."""
    _checked(bridge)
    prefix = cloud_prefix(bridge.node)
    password = bridge.password if bridge.password is not None else PASSWORD_PLACEHOLDER
    scheme = "tls+mqtt-tcp" if bridge.tls else "mqtt-tcp"
    # NanoMQ's bridge has no birth message: software on the node may say "1" on the local edge/status itself.
    forwards = [
        *((topic, "") for topic in bridge.up),
        (LOCAL_PREFIX + CONFIG_ACK, CONFIG_ACK),
        (LOCAL_PREFIX + STATUS, STATUS),
    ]
    out = [
        f"# Edge node {bridge.node} of deployment {bridge.deployment}: NanoMQ bridge to the deployment.",
        "# Generated by the control plane; include it from nanomq.conf and restart NanoMQ.",
    ]
    if bridge.password is None:
        out.append(f"# Replace {PASSWORD_PLACEHOLDER} with the node's password (shown once, when it was issued).")
    out += [
        f"bridges.mqtt.{bridge_name(bridge).replace('-', '_')} {{",
        f"  server = {_hocon(f'{scheme}://{_address(bridge)}')}",
        "  proto_ver = 4",
        f"  clientid = {_hocon(client_id(bridge.node))}",
        '  keepalive = "30s"',
        '  backoff_max = "30s"',
        "  clean_start = false",
        f"  username = {_hocon(bridge.username)}",
        f"  password = {_hocon(password)}",
        # NanoMQ's bridge sends no birth message: "0" as its last will marks the node offline; see docs/iot.md.
        "  will {",
        f"    topic = {_hocon(status_topic(bridge.node))}",
        '    payload = "0"',
        f"    qos = {QOS}",
        "    retain = true",
        "  }",
    ]
    if bridge.tls:
        out += [
            "  # The deployment's CA certificate: GET …/deployments/{dep}/ca.pem",
            "  ssl {",
            "    enable = true",
            f"    cacertfile = {_hocon(bridge.ca_file)}",
        ]
        if bridge.client_certificate_required:
            out += [
                "    # Two-way TLS: a client certificate signed by the deployment's client CA.",
                '    # certfile = "/etc/nanomq/certs/edge-node.crt"',
                '    # keyfile = "/etc/nanomq/certs/edge-node.key"',
            ]
        out.append("  }")
    out.append("  forwards = [")
    for local, remote in forwards:
        if remote:
            out.append(
                f"    {{ local_topic = {_hocon(local)}, remote_topic = {_hocon(prefix + remote)}, qos = {QOS} }}"
            )
        else:
            out.append(
                f'    {{ local_topic = {_hocon(local)}, remote_topic = "", prefix = {_hocon(prefix)}, qos = {QOS} }}'
            )
    out.append("  ]")
    out.append("  subscription = [")
    for topic in bridge.down:
        out.append(f"    {{ remote_topic = {_hocon(prefix + topic)}, local_topic = {_hocon(topic)}, qos = {QOS} }}")
    # The configuration stays retained on the node: without MQTT 3.1.1 bridge mode the deployment's broker forwards a
    # live retained message with the flag cleared, and `retain = 1` sets it again (nanomq/bridge.c).
    out.append(
        f"    {{ remote_topic = {_hocon(prefix + CONFIG)}, local_topic = {_hocon(LOCAL_PREFIX + CONFIG)}, "
        f"qos = {QOS}, retain = 1 }}"
    )
    out.append("  ]")
    out.append("}")
    return "\n".join(out) + "\n"


def bridge_name(bridge: Bridge) -> str:
    """The bridge's name on the node: its mosquitto `connection`, and with `_` for `-` its NanoMQ
    `bridges.mqtt.<name>` (an unquoted HOCON key of letters, digits and `_`, as NanoMQ's own examples are)."""
    return f"{bridge.deployment}-{bridge.node}"


def render(bridge: Bridge) -> str:
    return render_mosquitto(bridge) if bridge.kind == "mosquitto" else render_nanomq(bridge)


def filename(node: str, node_kind: str) -> str:
    return f"edge-{node}.conf" if node_kind == "mosquitto" else f"nanomq-bridge-{node}.conf"
