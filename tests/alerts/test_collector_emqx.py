"""EMQX collector through the real requests-based client against the HTTP fake of EMQX's monitoring API."""

import pytest

from alerts.collectors.emqx import EmqxApiError, EmqxMonitorApi, collect_emqx
from tests.fakes.emqx_monitor import EmqxMonitorFake


@pytest.fixture
def fake():
    f = EmqxMonitorFake().start()
    yield f
    f.stop()


@pytest.fixture
def api(fake):
    client = EmqxMonitorApi(fake.base_url, fake.key, fake.secret, timeout=1.0)
    yield client
    client.close()


def test_gauges_map_to_vocabulary_when_api_answers(api):
    result = collect_emqx(api, None)
    assert result.available and result.error == ""
    v = result.values
    assert v["connections"] == 10  # live_connections: connected clients
    assert v["sessions"] == 12  # EMQX's "connections" counts disconnected persistent sessions too
    assert v["subscriptions"] == 25 and v["topics"] == 7 and v["retained"] == 3
    assert v["messages_received_rate"] == 40 and v["messages_sent_rate"] == 80 and v["messages_dropped_rate"] == 1
    assert v["rule_resource_down"] == 1  # the disconnected connector; the disabled one does not count


def test_counter_rates_absent_when_no_previous_state(api):
    result = collect_emqx(api, None)
    for name in ("auth_failure_rate", "acl_denied_rate", "rule_matched_rate", "rule_failed_rate", "traffic_bytes"):
        assert name not in result.values


def test_counters_become_rates_when_previous_state_given(fake, api):
    first = collect_emqx(api, None)
    fake.metrics_nodes[0]["authentication.failure"] += 30
    fake.metrics_nodes[1]["authorization.deny"] += 6
    fake.metrics_nodes[0]["bytes.received"] += 1000
    fake.metrics_nodes[1]["bytes.sent"] += 500
    fake.rule_metrics["rule_to_kafka"]["matched"] += 60
    fake.rule_metrics["rule:with/slash"]["failed"] += 3
    fake.rule_metrics["rule_to_kafka"]["actions.failed"] += 3
    # Pretend the previous run was 60 s ago, so the expected rates are exact.
    first.state["counters"] = {k: {**c, "ts": c["ts"] - 60} for k, c in first.state["counters"].items()}
    second = collect_emqx(api, first.state)
    v = second.values
    assert v["auth_failure_rate"] == pytest.approx(30 / 60, rel=0.01)
    assert v["acl_denied_rate"] == pytest.approx(6 / 60, rel=0.01)
    assert v["rule_matched_rate"] == pytest.approx(60 / 60, rel=0.01)
    assert v["rule_failed_rate"] == pytest.approx(6 / 60, rel=0.01)
    assert v["traffic_bytes"] == 1500


def test_rate_is_absent_when_counter_went_backwards(fake, api):
    first = collect_emqx(api, None)
    fake.metrics_nodes[0]["authentication.failure"] = 0  # broker restarted
    second = collect_emqx(api, first.state)
    assert "auth_failure_rate" not in second.values
    assert second.values["acl_denied_rate"] == 0


def test_rule_metrics_are_fetched_per_rule_when_rule_id_needs_quoting(fake, api):
    rules = api.rules()
    assert {r["id"]: r["metrics"]["matched"] for r in rules} == {"rule_to_kafka": 100, "rule:with/slash": 10}
    assert any("rule%3Awith%2Fslash/metrics" in p for p in fake.requests)


def test_rules_follow_pagination_when_more_than_one_page(fake, api):
    fake.rules = [dict(fake.rules[0], id=f"r{i}", name=f"r{i}") for i in range(150)]
    assert len(api.rules()) == 150


def test_unavailable_quickly_when_api_hangs(fake, api):
    fake.mode = "hang"
    # The fake holds each request for 30 s: only the client's 1 s read timeout lets this return at all.
    result = collect_emqx(api, {"ts": 1.0, "counters": {}})
    assert result.available is False and "monitor_current" in result.error and "timed out" in result.error
    assert result.state == {"ts": 1.0, "counters": {}}


def test_unavailable_when_api_answers_503(fake, api):
    fake.mode = "503"
    result = collect_emqx(api, None)
    assert result.available is False and "503" in result.error


def test_unavailable_when_api_key_is_wrong(fake):
    client = EmqxMonitorApi(fake.base_url, fake.key, "wrong-secret", timeout=1.0)
    result = collect_emqx(client, None)
    assert result.available is False and "401" in result.error


def test_partial_result_with_error_when_one_optional_endpoint_fails(fake, api):
    class BrokenConnectors:
        def __getattr__(self, name):
            return getattr(api, name)

        def connectors(self):
            raise EmqxApiError("GET /connectors: HTTP 500")

    result = collect_emqx(BrokenConnectors(), None)
    assert result.available and "connectors" in result.error
    assert "rule_resource_down" not in result.values and result.values["connections"] == 10


def test_stats_fill_gauges_when_monitor_current_lacks_them(fake, api):
    fake.monitor_current = {"received_msg_rate": 0, "sent_msg_rate": 0, "dropped_msg_rate": 0}
    v = collect_emqx(api, None).values
    assert v["connections"] == 10 and v["sessions"] == 12 and v["subscriptions"] == 25
    assert v["topics"] == 7 and v["retained"] == 3


def test_per_node_lists_are_summed_when_api_answers_without_aggregate(fake):
    class PerNode(EmqxMonitorApi):
        def metrics(self):
            return self._get("/metrics")

    client = PerNode(fake.base_url, fake.key, fake.secret, timeout=1.0)
    first = collect_emqx(client, None)
    assert first.state["counters"]["auth_failure"]["value"] == 5
    assert first.state["counters"]["bytes"]["value"] == 41_000


@pytest.mark.parametrize("version", ["5.1.1", "5.3.2"])
def test_bridges_stand_in_for_connectors_when_release_is_older_than_5_4(version):
    fake = EmqxMonitorFake(version=version).start()
    client = EmqxMonitorApi(fake.base_url, fake.key, fake.secret, timeout=1.0)
    try:
        result = collect_emqx(client, None)
    finally:
        client.close()
        fake.stop()
    assert result.available and result.error == ""  # no error recorded every minute for a missing endpoint
    assert result.values["rule_resource_down"] == 1
    assert any(path.startswith("/api/v5/connectors") for path in fake.requests)  # asked, answered 404
    assert any(path.startswith("/api/v5/bridges") for path in fake.requests)


def test_connectors_error_is_reported_when_it_is_not_a_missing_endpoint(fake, api):
    fake.key = "rotated"  # every call now answers 401
    with pytest.raises(EmqxApiError) as raised:
        api.connectors()
    assert raised.value.status == 401
