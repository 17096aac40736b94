"""The one metric vocabulary shared by collectors, samples and alert rules.

Owns names, units and kinds. Never imports Django or a broker client: collectors map their broker's figures onto
these names, and nothing outside this module invents a metric name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MetricKind(StrEnum):
    # A level at sampling time (connections now).
    GAUGE = "gauge"
    # Events per second averaged over the interval since the previous sample.
    RATE = "rate"
    # Amount accumulated since the previous sample (a delta, never a cumulative total): summing a window gives the
    # total for that window.
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: MetricKind
    unit: str
    description: str


CONNECTIONS = "connections"
SESSIONS = "sessions"
SUBSCRIPTIONS = "subscriptions"
TOPICS = "topics"
RETAINED = "retained"
MESSAGES_RECEIVED_RATE = "messages_received_rate"
MESSAGES_SENT_RATE = "messages_sent_rate"
MESSAGES_DROPPED_RATE = "messages_dropped_rate"
AUTH_FAILURE_RATE = "auth_failure_rate"
ACL_DENIED_RATE = "acl_denied_rate"
TRAFFIC_BYTES = "traffic_bytes"
RULE_MATCHED_RATE = "rule_matched_rate"
RULE_FAILED_RATE = "rule_failed_rate"
RULE_RESOURCE_DOWN = "rule_resource_down"
# Fed by the networking app (alerts never imports it): 1 while one of the deployment's VPC peerings that was active
# is not, else 0.
VPC_PEERING_ABNORMAL = "vpc_peering_abnormal"
# Fed by the iot app's sample source (Premium codec rules): messages a rule could not decode or encode.
CODEC_FAILURES = "codec_failures"

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(CONNECTIONS, MetricKind.GAUGE, "connections", "MQTT clients connected now"),
        Metric(SESSIONS, MetricKind.GAUGE, "sessions", "sessions held, connected or not"),
        Metric(SUBSCRIPTIONS, MetricKind.GAUGE, "subscriptions", "active subscriptions"),
        Metric(TOPICS, MetricKind.GAUGE, "topics", "distinct topics with a route"),
        Metric(RETAINED, MetricKind.GAUGE, "messages", "retained messages stored (broker's own $SYS excluded)"),
        Metric(MESSAGES_RECEIVED_RATE, MetricKind.RATE, "messages/s", "PUBLISH messages received from clients"),
        Metric(MESSAGES_SENT_RATE, MetricKind.RATE, "messages/s", "PUBLISH messages delivered to clients"),
        Metric(MESSAGES_DROPPED_RATE, MetricKind.RATE, "messages/s", "messages dropped by the broker"),
        Metric(AUTH_FAILURE_RATE, MetricKind.RATE, "failures/s", "connections refused for bad credentials"),
        Metric(ACL_DENIED_RATE, MetricKind.RATE, "denials/s", "publish/subscribe refused by ACL"),
        Metric(TRAFFIC_BYTES, MetricKind.COUNTER, "bytes", "bytes received plus sent since the previous sample"),
        Metric(RULE_MATCHED_RATE, MetricKind.RATE, "matches/s", "rule-engine SQL matches"),
        Metric(RULE_FAILED_RATE, MetricKind.RATE, "failures/s", "rule-engine executions that failed"),
        Metric(RULE_RESOURCE_DOWN, MetricKind.GAUGE, "resources", "rule-engine connectors not connected"),
        Metric(VPC_PEERING_ABNORMAL, MetricKind.GAUGE, "flag", "1 while a VPC peering that was active is not"),
        Metric(CODEC_FAILURES, MetricKind.COUNTER, "messages", "messages a codec rule could not decode or encode"),
    )
}

METRIC_NAMES: tuple[str, ...] = tuple(METRICS)

# rule_resources_down is an older spelling of rule_resource_down: accepted, and resolved to the canonical name.
_ALIASES = {"rule_resources_down": RULE_RESOURCE_DOWN}


def validate_metric_name(name: str) -> str:
    """Return the canonical metric name, or raise ValueError naming the allowed ones."""
    canonical = _ALIASES.get(name, name)
    if canonical not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of: {', '.join(METRIC_NAMES)}")
    return canonical


# Budget rules watch spend, not a broker: these names are valid only for `kind: budget`, never as sample names.
SPEND_MONTH_TO_DATE = "spend_month_to_date"
SPEND_FORECAST = "spend_forecast"
BUDGET_METRICS: dict[str, str] = {
    SPEND_MONTH_TO_DATE: "spend of the calendar month so far (UTC), before tax and credits",
    SPEND_FORECAST: "month-to-date spend extended in a straight line to the month's end",
}


def validate_budget_metric_name(name: str) -> str:
    if name not in BUDGET_METRICS:
        raise ValueError(f"unknown budget metric {name!r}; expected one of: {', '.join(BUDGET_METRICS)}")
    return name


# Which tier limit a percent threshold refers to, per metric (a field of deployments.models.Tier).
TIER_LIMIT_FIELDS: dict[str, str] = {
    CONNECTIONS: "max_connections",
    SESSIONS: "max_connections",
    MESSAGES_RECEIVED_RATE: "messages_per_second",
    MESSAGES_SENT_RATE: "messages_per_second",
}
