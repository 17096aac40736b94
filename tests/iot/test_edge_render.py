"""The bridge files of edge nodes, without a broker: NanoMQ's HOCON parsed back with pyhocon and checked against the
keys NanoMQ reads (no NanoMQ binary runs here), mosquitto's section line by line, and the topic checks that keep
customer text from adding lines or keys. mosquitto's file is run for real in test_edge_e2e."""

import pytest
from pyhocon import ConfigFactory

from iot import edge

# The keys NanoMQ 0.25.6 reads for one `bridges.mqtt.<name>` (NanoNNG src/supplemental/nanolib/conf_ver2.c,
# conf_bridge_connector_parse_ver2 and conf_bridge_node_parse; nanomq docs/en_US/config-description/bridges.md).
NANOMQ_BRIDGE_KEYS = {
    "server",
    "proto_ver",
    "clientid",
    "keepalive",
    "backoff_max",
    "clean_start",
    "retry_qos_0",
    "no_local_v4",
    "transparent",
    "enable",
    "username",
    "password",
    "ssl",
    "tcp",
    "conn_properties",
    "will",
    "forwards",
    "subscription",
    "sub_properties",
    "hybrid_bridging",
    "hybrid_servers",
    "max_parallel_processes",
    "max_recv_queue_len",
    "max_send_queue_len",
    "resend_interval",
    "resend_wait",
    "cancel_timeout",
}
NANOMQ_WILL_KEYS = {"topic", "payload", "qos", "retain", "properties"}
NANOMQ_SSL_KEYS = {"enable", "keyfile", "certfile", "cacertfile", "key_password", "verify_peer"}
NANOMQ_FORWARD_KEYS = {"remote_topic", "local_topic", "prefix", "suffix", "retain", "qos"}
NANOMQ_SUBSCRIPTION_KEYS = {
    "remote_topic",
    "local_topic",
    "qos",
    "prefix",
    "suffix",
    "retain",
    "retain_as_published",
    "retain_handling",
    "nolocal",
    "stream_id",
}


def bridge(**overrides):
    values = {
        "deployment": "dep_test",
        "node": "gw-1",
        "kind": "nanomq",
        "host": "mqtt.example.com",
        "port": 8883,
        "tls": True,
        "ca_file": "/etc/nanomq/certs/dep_test-ca.pem",
        "client_certificate_required": False,
        "username": "$edge-0123456789abcdef",
        "password": "A" * 32,
        "up": ("sensors/#", "plant/+/temperature"),
        "down": ("commands/#",),
    }
    values.update(overrides)
    return edge.Bridge(**values)


def nanomq_repub_topic(remote_filter: str, local_filter: str, topic: str) -> str:
    """NanoMQ's remapping of a subscription's message topic (NanoNNG src/supplemental/nanolib/topics.c,
    preprocess_topics and generate_repub_topic with is_sub true), for wildcard local topics."""
    position = remote_filter.find(local_filter)
    assert position >= 0, "NanoMQ refuses a wildcard local_topic that is not part of the remote filter"
    skip = remote_filter[:position].count("/")
    levels = topic.split("/")
    assert len(remote_filter) - position == len(local_filter)  # save level -1: the whole tail is kept
    return "/".join(levels[skip:])


def test_nanomq_bridge_parses_with_pyhocon_and_uses_only_nanomq_keys_when_rendered_with_tls():
    text = edge.render(bridge())
    parsed = ConfigFactory.parse_string(text)
    node = parsed["bridges"]["mqtt"]["dep_test_gw_1"]
    assert set(node) <= NANOMQ_BRIDGE_KEYS, set(node) - NANOMQ_BRIDGE_KEYS
    assert node["server"] == "tls+mqtt-tcp://mqtt.example.com:8883"
    assert node["proto_ver"] == 4 and node["clean_start"] is False
    assert node["clientid"] == "$edge-gw-1"
    assert node["username"] == "$edge-0123456789abcdef" and node["password"] == "A" * 32
    assert set(node["will"]) <= NANOMQ_WILL_KEYS
    assert dict(node["will"]) == {"topic": "edge/gw-1/status", "payload": "0", "qos": 1, "retain": True}
    assert set(node["ssl"]) <= NANOMQ_SSL_KEYS
    assert node["ssl"]["cacertfile"] == "/etc/nanomq/certs/dep_test-ca.pem" and node["ssl"]["enable"] is True
    forwards = [dict(f) for f in node["forwards"]]
    for forward in forwards:
        assert set(forward) <= NANOMQ_FORWARD_KEYS
        assert "+" not in forward.get("prefix", "") and "#" not in forward.get("prefix", "")
    assert {"local_topic": "sensors/#", "remote_topic": "", "prefix": "edge/gw-1/", "qos": 1} in forwards
    assert {"local_topic": "edge/config/ack", "remote_topic": "edge/gw-1/config/ack", "qos": 1} in forwards
    assert {"local_topic": "edge/status", "remote_topic": "edge/gw-1/status", "qos": 1} in forwards
    subscriptions = [dict(s) for s in node["subscription"]]
    for subscription in subscriptions:
        assert set(subscription) <= NANOMQ_SUBSCRIPTION_KEYS and subscription["qos"] == 1
    assert {"remote_topic": "edge/gw-1/commands/#", "local_topic": "commands/#", "qos": 1} in subscriptions
    assert {"remote_topic": "edge/gw-1/config", "local_topic": "edge/config", "qos": 1, "retain": 1} in subscriptions
    # What NanoMQ does with them: a cloud message on edge/gw-1/commands/reboot arrives locally as commands/reboot.
    assert nanomq_repub_topic("edge/gw-1/commands/#", "commands/#", "edge/gw-1/commands/reboot/now") == (
        "commands/reboot/now"
    )


def test_nanomq_bridge_is_plain_mqtt_without_ssl_when_the_deployment_has_no_tls():
    node = ConfigFactory.parse_string(edge.render(bridge(tls=False, port=1883)))["bridges"]["mqtt"]["dep_test_gw_1"]
    assert node["server"] == "mqtt-tcp://mqtt.example.com:1883"
    assert "ssl" not in node


def test_nanomq_bridge_has_a_password_placeholder_when_no_password_is_given():
    node = ConfigFactory.parse_string(edge.render(bridge(password=None)))["bridges"]["mqtt"]["dep_test_gw_1"]
    assert node["password"] == edge.PASSWORD_PLACEHOLDER


def test_mosquitto_section_maps_topics_under_the_node_prefix_when_rendered():
    text = edge.render(bridge(kind="mosquitto", ca_file="/etc/mosquitto/certs/ca.pem"))
    lines = text.splitlines()
    assert "connection dep_test-gw-1" in lines
    assert "address mqtt.example.com:8883" in lines
    assert "remote_clientid $edge-gw-1" in lines and "remote_username $edge-0123456789abcdef" in lines
    assert "notifications true" in lines and "notification_topic edge/gw-1/status" in lines
    assert "bridge_cafile /etc/mosquitto/certs/ca.pem" in lines
    assert 'topic sensors/# out 1 "" edge/gw-1/' in lines
    assert 'topic plant/+/temperature out 1 "" edge/gw-1/' in lines
    assert 'topic commands/# in 1 "" edge/gw-1/' in lines
    assert "topic config in 1 edge/ edge/gw-1/" in lines and "topic config/ack out 1 edge/ edge/gw-1/" in lines
    plain = edge.render(bridge(kind="mosquitto", tls=False, port=1883)).splitlines()
    assert "address mqtt.example.com:1883" in plain and not any(line.startswith("bridge_cafile") for line in plain)


def test_ipv6_host_is_bracketed_when_rendered():
    assert "address [::1]:8883" in edge.render(bridge(kind="mosquitto", host="::1")).splitlines()


@pytest.mark.parametrize(
    "topic",
    [
        "sensors/#\ntopic # both 2",  # a newline would add a line to mosquitto.conf
        "sensors/#\r",
        "a b",  # mosquitto splits `topic` lines on spaces
        'a"b',
        "a'b",
        "a\\b",
        "$SYS/#",
        "a/#/b",
        "a+",
        "",
        "#",  # would reach edge/{node}/status
        "+",
        "+/ack",
        "config/#",
        "status",
        "x" * 257,
        "a\u0085b",  # a Unicode line break
    ],
)
def test_topic_filter_is_refused_when_unsafe_or_reaching_the_node_topics(topic):
    with pytest.raises(ValueError):
        edge.topic_filter(topic)


@pytest.mark.parametrize("name", ["gw 1", "gw/1", "gw\n1", "+", "#", "", "x" * 65, "gw.1", "ünï"])
def test_node_name_is_refused_when_not_a_plain_topic_level(name):
    with pytest.raises(ValueError):
        edge.node_name(name)


def test_up_and_down_filters_are_refused_when_they_share_a_topic():
    with pytest.raises(ValueError, match="up"):
        edge.mappings(["sensors/#"], ["sensors/commands"])
    edge.mappings(["sensors/#"], ["commands/#"])


def test_renderer_refuses_unchecked_values_when_called_directly():
    with pytest.raises(ValueError):
        edge.render(bridge(up=("a\nconnection evil",)))
    with pytest.raises(ValueError):
        edge.render(bridge(host="evil\nhost"))
    with pytest.raises(ValueError):
        edge.render(bridge(password="short pass"))


def test_ack_and_status_payloads_are_parsed_strictly():
    assert edge.parse_ack(b'{"version": 3}') == 3
    for payload in (b'{"version": 0}', b'{"version": true}', b'{"version": "3"}', b"[3]", b"3", b"\xff", b""):
        assert edge.parse_ack(payload) is None
    assert edge.parse_status(b"1") is True and edge.parse_status(b"0") is False
    assert edge.parse_status(b"online") is None
