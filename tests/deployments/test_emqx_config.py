"""HOCON rendering of EMQX configuration: rate limits for 5.0 and 5.8, the hierarchy check, string escaping."""

import pytest
from pyhocon import ConfigFactory

from deployments.drivers.base import BrokerSpec, MqttCredential, RateLimit, RegionTarget
from deployments.emqx_config import hocon_string, render_hocon, render_rate_limits, validate_rate_limit_hierarchy


def _spec(**overrides) -> BrokerSpec:
    values = dict(
        name="dep_ABC123",
        region=RegionTarget(code="eu-1", driver="kubernetes"),
        running=True,
        max_connections=1000,
        messages_per_second=500,
        replicas=2,
        api_key="cp-key",
        api_secret="s3cret-value",
    )
    values.update(overrides)
    return BrokerSpec(**values)


LIMITS = (
    RateLimit(level="global", max_conn_rate=1000, messages_rate=5000, bytes_rate=10_000_000),
    RateLimit(level="zone", messages_rate=4000),
    RateLimit(level="listener", max_conn_rate=200, messages_rate=3000),
    RateLimit(level="connection", messages_rate=10, bytes_rate=4096),
)


def test_render_rate_limits_uses_v50_limiter_buckets_when_version_is_5_0():
    conf = ConfigFactory.parse_string(render_rate_limits(LIMITS, "5.0.26"))
    assert conf["limiter.message_in.global.rate"] == "5000/s"
    assert conf["limiter.message_in.zone.default.rate"] == "4000/s"
    assert conf["limiter.message_in.bucket.default.aggregated.rate"] == "3000/s"
    assert conf["limiter.message_in.bucket.default.per_client.rate"] == "10/s"
    assert conf["limiter.connection.global.rate"] == "1000/s"
    assert conf["limiter.connection.zone.default.rate"] == "infinity"
    assert conf["limiter.connection.bucket.default.aggregated.rate"] == "200/s"
    assert conf["limiter.bytes_in.bucket.default.per_client.rate"] == "4096/s"


def test_render_rate_limits_uses_listener_keys_with_tightest_value_when_version_is_5_8():
    conf = ConfigFactory.parse_string(render_rate_limits(LIMITS, "5.8.6"))
    for listener in ("tcp", "ssl", "ws", "wss"):
        assert conf[f"listeners.{listener}.default.max_conn_rate"] == "200/s"
        assert conf[f"listeners.{listener}.default.messages_rate"] == "10/s"
        assert conf[f"listeners.{listener}.default.bytes_rate"] == "4096/s"
    assert "limiter" not in conf


def test_render_rate_limits_renders_nothing_when_no_level_is_set():
    assert render_rate_limits((), "5.8.6") == ""
    assert render_rate_limits((), "5.0.1") == ""


def test_validate_rate_limit_hierarchy_names_level_and_field_when_child_exceeds_parent():
    with pytest.raises(ValueError, match=r"listener messages_rate \(200/s\) exceeds its parent zone messages_rate"):
        validate_rate_limit_hierarchy(
            (RateLimit(level="zone", messages_rate=100), RateLimit(level="listener", messages_rate=200))
        )


def test_validate_rate_limit_hierarchy_compares_with_grandparent_when_parent_unset():
    with pytest.raises(ValueError, match=r"connection bytes_rate .* global bytes_rate"):
        validate_rate_limit_hierarchy(
            (RateLimit(level="global", bytes_rate=1000), RateLimit(level="connection", bytes_rate=2000))
        )


def test_validate_rate_limit_hierarchy_accepts_when_children_are_within_parents():
    validate_rate_limit_hierarchy(LIMITS)


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
    conf = ConfigFactory.parse_string(render_hocon(_spec(users=users, message_size_limit=65536)))
    authn = conf["authentication"][0]
    assert (authn["mechanism"], authn["backend"]) == ("password_based", "built_in_database")
    assert dict(authn["password_hash_algorithm"]) == {"name": "pbkdf2", "mac_fun": "sha512", "iterations": 101}
    assert conf["authorization.sources"][0]["type"] == "built_in_database"
    assert conf["authorization.no_match"] == "allow"  # as on mosquitto: the same rules mean the same everywhere
    assert conf["mqtt.max_packet_size"] == 65536
    # 1000 connections over 2 nodes: each node's listener takes half.
    assert conf["listeners.tcp.default.max_connections"] == 500
    assert conf["listeners.tcp.default.bind"] == "0.0.0.0:1883"
    # The tier's messages_per_second becomes the global message rate (5.8: a per-client ceiling).
    assert conf["listeners.tcp.default.messages_rate"] == "500/s"


def test_render_hocon_raises_when_users_have_different_iteration_counts():
    users = (
        MqttCredential(username="a", salt_b64="c2FsdA==", hash_b64="aGFzaA==", iterations=101),
        MqttCredential(username="b", salt_b64="c2FsdA==", hash_b64="aGFzaA==", iterations=1000),
    )
    with pytest.raises(ValueError, match="iteration count"):
        render_hocon(_spec(users=users))


def test_render_hocon_raises_when_rate_limits_violate_hierarchy():
    limits = (RateLimit(level="global", max_conn_rate=10), RateLimit(level="listener", max_conn_rate=20))
    with pytest.raises(ValueError, match="listener max_conn_rate"):
        render_hocon(_spec(rate_limits=limits))
