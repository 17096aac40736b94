"""EMQX configuration rendering: limits where each EMQX release enforces them, every key every time, TLS listeners,
and the rendered HOCON (parsed back with pyhocon) checked against the schema extract of every supported release."""

import json

import pytest
from pyhocon import ConfigFactory

from deployments import emqx_versions
from deployments.drivers.base import BrokerSpec, MqttCredential, RateLimit, RegionTarget, TlsMaterial
from deployments.emqx_config import (
    MAX_PACKET_SIZE,
    config_tree,
    hocon_string,
    limiter_plan,
    render_hocon,
    validate_rate_limit_hierarchy,
)
from deployments.emqx_schema_check import check_config

LIMITS = (
    RateLimit(level="global", max_conn_rate=100, messages_rate=1000, bytes_rate=1_000_000),
    RateLimit(level="zone", messages_rate=500),
    RateLimit(level="listener", max_conn_rate=50, messages_rate=100, bytes_rate=8192),
    RateLimit(level="connection", max_conn_rate=5, messages_rate=10, bytes_rate=4096),
)
LIMITER_KEYS = ("max_conn_rate", "messages_rate", "bytes_rate")


def _spec(**overrides) -> BrokerSpec:
    values = dict(
        name="dep_1",
        region=RegionTarget(code="eu-1", driver="kubernetes"),
        running=True,
        max_connections=1000,
        messages_per_second=2000,
        replicas=2,
        version="5.8.6",
    )
    values.update(overrides)
    return BrokerSpec(**values)


def _parsed(spec: BrokerSpec) -> dict:
    """The rendered text as EMQX's HOCON reader would see it, as plain data."""
    return json.loads(json.dumps(ConfigFactory.parse_string(render_hocon(spec)).as_plain_ordered_dict()))


def test_deployment_wide_limits_go_to_node_limiter_divided_by_replicas_when_version_is_5_8():
    conf = _parsed(_spec(rate_limits=LIMITS, replicas=2))
    # The lowest of global, zone and the tier's rate, split over two nodes: the cluster never exceeds it.
    assert conf["limiter"] == {"max_conn_rate": "50/s", "messages_rate": "250/s", "bytes_rate": "500000/s"}
    assert "limiter" not in conf["mqtt"]


def test_deployment_wide_limits_go_to_zone_limiter_when_version_is_5_9_or_later():
    for version in ("5.9.1", "5.10.2"):
        conf = _parsed(_spec(rate_limits=LIMITS, replicas=2, version=version))
        assert conf["mqtt"]["limiter"] == {"max_conn_rate": "50/s", "messages_rate": "250/s", "bytes_rate": "500000/s"}
        assert "limiter" not in conf  # 5.9 has no node-level limiter root


def test_rate_that_does_not_divide_is_rendered_exactly_over_the_replicas_when_split():
    conf = _parsed(_spec(rate_limits=(RateLimit(level="global", max_conn_rate=101),), replicas=3))
    assert conf["limiter"]["max_conn_rate"] == "101/3s"


def test_listener_and_connection_levels_go_to_listener_keys_when_rendered():
    conf = _parsed(_spec(rate_limits=LIMITS))
    for listener in ("tcp", "ssl", "ws", "wss"):
        settings = conf["listeners"][listener]["default"]
        assert settings["max_conn_rate"] == "50/s"  # listener level: per listener per node
        assert settings["messages_rate"] == "10/s"  # connection level: per client
        assert settings["bytes_rate"] == "4096/s"


def test_tier_rate_caps_the_deployment_not_each_client_when_no_policy_is_set():
    conf = _parsed(_spec(messages_per_second=2000, replicas=2))
    assert conf["limiter"]["messages_rate"] == "1000/s"
    assert conf["listeners"]["tcp"]["default"]["messages_rate"] == "infinity"


def test_every_limiter_key_is_rendered_as_infinity_when_its_limit_is_unset():
    for version in emqx_versions.supported_versions():
        conf = _parsed(_spec(messages_per_second=0, version=version))
        node = conf["mqtt"]["limiter"] if emqx_versions.has_zone_limiter(version) else conf["limiter"]
        assert node == dict.fromkeys(LIMITER_KEYS, "infinity")
        for listener in conf["listeners"].values():
            assert {k: listener["default"][k] for k in LIMITER_KEYS} == dict.fromkeys(LIMITER_KEYS, "infinity")


def test_removed_limit_is_overwritten_when_operator_merges_the_next_config():
    from tests.fakes.kubernetes_api import _deep_merge

    with_limits = _parsed(_spec(rate_limits=LIMITS))
    without = _parsed(_spec(rate_limits=(), messages_per_second=0))
    running = _deep_merge(with_limits, without)  # the operator's mode=merge
    assert running["limiter"] == dict.fromkeys(LIMITER_KEYS, "infinity")
    assert running["listeners"]["tcp"]["default"]["messages_rate"] == "infinity"


def test_max_connections_split_over_nodes_and_enabled_listeners_when_tls_listeners_are_off():
    conf = _parsed(_spec(max_connections=1000, replicas=2))
    assert conf["listeners"]["ssl"]["default"]["enable"] is False
    assert conf["listeners"]["wss"]["default"]["enable"] is False
    enabled = [name for name, listener in conf["listeners"].items() if listener["default"]["enable"]]
    assert sorted(enabled) == ["tcp", "ws"]
    per_listener = conf["listeners"]["tcp"]["default"]["max_connections"]
    assert per_listener == 250
    assert per_listener * len(enabled) * 2 <= 1000


def test_max_connections_never_sum_above_the_tier_when_it_does_not_divide():
    conf = _parsed(_spec(max_connections=1000, replicas=3, tls=TlsMaterial(secret_name="tls")))
    per_listener = conf["listeners"]["tcp"]["default"]["max_connections"]
    assert per_listener == 83 and per_listener * 4 * 3 <= 1000


def test_tls_listeners_serve_the_deployment_certificate_when_spec_has_one():
    conf = _parsed(_spec(tls=TlsMaterial(secret_name="dep-tls", has_client_ca=True, verify_peer=True)))
    for listener in ("ssl", "wss"):
        settings = conf["listeners"][listener]["default"]
        assert settings["enable"] is True
        assert settings["ssl_options"] == {
            "certfile": "/opt/emqx/etc/certs/deployment/tls.crt",
            "keyfile": "/opt/emqx/etc/certs/deployment/tls.key",
            "cacertfile": "/opt/emqx/etc/certs/deployment/ca.crt",
            "verify": "verify_peer",
            "fail_if_no_peer_cert": True,
        }


def test_one_way_tls_keeps_image_ca_and_verifies_no_peer_when_no_client_ca():
    settings = _parsed(_spec(tls=TlsMaterial(secret_name="dep-tls")))["listeners"]["ssl"]["default"]["ssl_options"]
    assert settings["verify"] == "verify_none" and settings["fail_if_no_peer_cert"] is False
    assert settings["cacertfile"] == "${EMQX_ETC_DIR}/certs/cacert.pem"


@pytest.mark.parametrize("version", ["5.1.1", "5.8.6", "5.9.1", "5.10.2"])
def test_rendered_hocon_passes_the_release_schema_extract_when_every_feature_is_on(version):
    spec = _spec(
        version=version,
        rate_limits=LIMITS,
        tls=TlsMaterial(secret_name="dep-tls", has_client_ca=True, verify_peer=True),
        durable_sessions=emqx_versions.has_durable_sessions(version),
        users=(MqttCredential(username="a", salt_b64="c2FsdA==", hash_b64="aGFzaA==", iterations=101),),
    )
    parsed = _parsed(spec)
    extract = emqx_versions.schema_extract(version)
    assert check_config(parsed, extract) == []
    assert extract["version"] == version and extract["tag"] and extract["commit"]


def test_schema_check_names_unknown_key_when_layout_belongs_to_another_release():
    extract = emqx_versions.schema_extract("5.9.1")
    conf = _parsed(_spec(version="5.8.6"))
    problems = check_config(conf, extract)
    assert "limiter: not a configuration root of EMQX 5.9.1" in problems
    # The 5.0 layout (limiter buckets) is refused by 5.8 too.
    legacy = {"limiter": {"message_in": {"global": {"rate": "10/s"}}}}
    assert any(
        "limiter.message_in: unknown key" in p for p in check_config(legacy, emqx_versions.schema_extract("5.8.6"))
    )


def test_schema_check_names_value_outside_type_when_rendered():
    extract = emqx_versions.schema_extract("5.8.6")
    bad = {
        "mqtt": {"max_packet_size": MAX_PACKET_SIZE + 1},
        "listeners": {"tcp": {"default": {"max_connections": 0, "messages_rate": "fast", "enable": "yes"}}},
    }
    problems = check_config(bad, extract)
    assert any(p.startswith("mqtt.max_packet_size: 268435456") for p in problems)
    assert any(p.startswith("listeners.tcp.default.max_connections: 0") for p in problems)
    assert any(p.startswith("listeners.tcp.default.messages_rate: 'fast'") for p in problems)
    assert any(p.startswith("listeners.tcp.default.enable: 'yes'") for p in problems)


def test_deprecated_key_is_refused_when_emqx_would_drop_it():
    extract = emqx_versions.schema_extract("5.8.6")
    problems = check_config({"limiter": {"client": {}}}, extract)
    assert problems == ["limiter.client: deprecated, EMQX ignores it"]


def test_render_refuses_version_below_5_1_1_when_asked_for_5_0():
    with pytest.raises(emqx_versions.UnsupportedVersion, match="5.1.1 or later"):
        render_hocon(_spec(version="5.0.26"))


def test_render_refuses_version_without_extract_when_not_offered():
    with pytest.raises(emqx_versions.UnsupportedVersion, match="not offered"):
        render_hocon(_spec(version="5.7.2"))


def test_render_refuses_message_size_above_emqx_maximum():
    with pytest.raises(ValueError, match="268435455"):
        config_tree(_spec(message_size_limit=MAX_PACKET_SIZE + 1))
    assert _parsed(_spec(message_size_limit=MAX_PACKET_SIZE))["mqtt"]["max_packet_size"] == MAX_PACKET_SIZE


def test_durable_sessions_render_builtin_raft_over_the_nodes_when_enabled():
    conf = _parsed(_spec(durable_sessions=True, replicas=3, version="5.8.6"))
    assert conf["durable_sessions"] == {"enable": True}
    assert conf["durable_storage"]["messages"] == {"backend": "builtin_raft", "n_sites": 3, "replication_factor": 3}
    with pytest.raises(ValueError, match="durable sessions need EMQX 5.8"):
        config_tree(_spec(durable_sessions=True, version="5.1.1"))


def test_limiter_plan_ignores_connection_max_conn_rate_and_listener_message_rates():
    plan = limiter_plan(_spec(messages_per_second=0), LIMITS[2:])
    assert [repr(plan["node"][key]) for key in LIMITER_KEYS] == ["infinity"] * 3
    assert plan["listener"]["max_conn_rate"] == "50/s"
    assert plan["listener"]["messages_rate"] == "10/s"  # the connection level's, not the listener's 100


def test_validate_rate_limit_hierarchy_names_level_and_field_when_child_exceeds_parent():
    with pytest.raises(ValueError, match=r"listener messages_rate \(200/s\) exceeds its parent zone messages_rate"):
        validate_rate_limit_hierarchy(
            (RateLimit(level="zone", messages_rate=100), RateLimit(level="listener", messages_rate=200))
        )


def test_validate_rate_limit_hierarchy_rejects_when_level_repeated_or_rate_not_positive():
    with pytest.raises(ValueError, match="given twice"):
        validate_rate_limit_hierarchy((RateLimit(level="zone"), RateLimit(level="zone")))
    with pytest.raises(ValueError, match="listener max_conn_rate must be a positive"):
        validate_rate_limit_hierarchy((RateLimit(level="listener", max_conn_rate=0),))


def test_hocon_string_round_trips_when_value_has_quotes_backslashes_and_newlines():
    tricky = 'a "quoted" \\ value\nwith ${subst} and #comment'
    conf = ConfigFactory.parse_string(f"k = {hocon_string(tricky)}")
    assert conf["k"] == tricky


def test_render_hocon_configures_pbkdf2_sha512_authn_and_builtin_authz_when_users_share_iterations():
    users = (MqttCredential(username="a", salt_b64="c2FsdA==", hash_b64="aGFzaA==", iterations=101),)
    conf = _parsed(_spec(users=users, message_size_limit=65536))
    authn = conf["authentication"][0]
    assert (authn["mechanism"], authn["backend"]) == ("password_based", "built_in_database")
    assert authn["password_hash_algorithm"] == {"name": "pbkdf2", "mac_fun": "sha512", "iterations": 101}
    assert conf["authorization"]["sources"][0] == {"type": "built_in_database", "enable": True, "max_rules": 100}
    assert conf["authorization"]["no_match"] == "allow"  # as on mosquitto: the same rules mean the same everywhere
    assert conf["mqtt"]["max_packet_size"] == 65536


def test_render_hocon_raises_when_users_have_different_iteration_counts():
    users = (
        MqttCredential(username="a", salt_b64="c2FsdA==", hash_b64="aGFzaA==", iterations=101),
        MqttCredential(username="b", salt_b64="c2FsdA==", hash_b64="aGFzaA==", iterations=1000),
    )
    with pytest.raises(ValueError, match="iteration count"):
        render_hocon(_spec(users=users))
