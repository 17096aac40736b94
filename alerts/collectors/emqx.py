"""Collect one EMQX 5 cluster's metrics through its management API (monitoring calls only).

Owns the EMQX-to-vocabulary mapping and a small read-only HTTP client for the five monitoring endpoints; users and
ACLs are another module's client. Never raises for an unreachable or failing API: it returns available=False.

Payload shapes (EMQX 5.x): `/api/v5/monitor_current` is a flat object (`connections` = sessions including
disconnected persistent ones, `live_connections` = connected clients, `subscriptions`, `topics`,
`retained_msg_count`, `received_msg_rate`, `sent_msg_rate`, `dropped_msg_rate`, per second). `/api/v5/stats` and
`/api/v5/metrics` are a list with one object per node, or one object with `?aggregate=true`; keys are dotted
(`sessions.count`, `authentication.failure`, `authorization.deny`, `bytes.received`...), metrics are cumulative
counters. `/api/v5/rules` pages `{"data": [...], "meta": {...}}`, each rule's counters come from
`/api/v5/rules/{id}/metrics` as `{"metrics": {"matched", "failed", "actions.failed"...}}`. `/api/v5/connectors` is
a list with `status` in connected|connecting|disconnected|inconsistent; before 5.4 the data integrations are
`/api/v5/bridges` with the same `status` (emqx/emqx e5.1.1 apps/emqx_bridge/src/emqx_bridge_api.erl), and
`/connectors` answers 404 (its API arrived with 5.3.1's emqx_connector_api.erl, complete in 5.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

import requests

from alerts import metrics as m
from alerts.collectors import CollectResult, counter_delta, counter_rate

_T = TypeVar("_T")
# An object of EMQX's JSON answers.
_Json = dict[str, Any]


class EmqxApiError(Exception):
    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EmqxMonitorApi:
    """Read-only client for the monitoring endpoints; authenticates with an API key and secret (HTTP Basic)."""

    def __init__(self, base_url: str, key: str, secret: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.auth = (key, secret)
        self.session.headers["Accept"] = "application/json"

    def _get(self, path: str, params: dict[str, str | int] | None = None) -> Any:
        try:
            response = self.session.get(f"{self.base_url}/api/v5{path}", params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise EmqxApiError(f"GET {path}: {exc}") from exc
        if response.status_code != 200:
            raise EmqxApiError(
                f"GET {path}: HTTP {response.status_code} {response.text[:200]}", status=response.status_code
            )
        try:
            return response.json()
        except ValueError as exc:
            raise EmqxApiError(f"GET {path}: response is not JSON") from exc

    # The answers are JSON of the shapes the module docstring gives; they are passed on as parsed, unchecked.
    def monitor_current(self) -> _Json:
        current: _Json = self._get("/monitor_current")
        return current

    def stats(self) -> _Json | list[_Json]:
        stats: _Json | list[_Json] = self._get("/stats", {"aggregate": "true"})
        return stats

    def metrics(self) -> _Json | list[_Json]:
        metrics: _Json | list[_Json] = self._get("/metrics", {"aggregate": "true"})
        return metrics

    def rules(self) -> list[_Json]:
        """Every rule, each with its cluster-wide counters under "metrics"."""
        rules: list[_Json] = []
        page = 1
        while True:
            body = self._get("/rules", {"page": page, "limit": 100})
            rules.extend(body.get("data", []))
            if not body.get("meta", {}).get("hasnext"):
                break
            page += 1
        for rule in rules:
            rule["metrics"] = self._get(f"/rules/{quote(str(rule['id']), safe='')}/metrics").get("metrics", {})
        return rules

    def connectors(self) -> list[_Json]:
        """Connectors (5.4+), or the bridges of an older release; none when the release has neither API."""
        connectors: list[_Json]
        try:
            connectors = self._get("/connectors")
            return connectors
        except EmqxApiError as exc:
            if exc.status != 404:
                raise
        try:
            connectors = self._get("/bridges")
            return connectors
        except EmqxApiError as exc:
            if exc.status != 404:
                raise
        return []

    def close(self) -> None:
        self.session.close()


def _aggregate(payload: _Json | list[_Json] | None) -> dict[str, Any]:
    """One object per node (the default) or already aggregated: sum numeric fields across nodes."""
    if payload is None:
        return {}
    if isinstance(payload, dict):
        return payload
    total: dict[str, float] = {}
    for node in payload:
        for key, value in node.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _enabled(items: Iterable[_Json]) -> list[_Json]:
    return [i for i in items if i.get("enable", True)]


def collect_emqx(api: EmqxMonitorApi, previous: dict[str, Any] | None) -> CollectResult:
    """Map one round of EMQX API answers onto the vocabulary; counters become rates against `previous`."""
    previous = previous or {}
    now = time.time()
    errors: list[str] = []

    # Any exception from the api object is a remote failure to record, never a crash of the collecting task.
    try:
        current = api.monitor_current()
    except Exception as exc:  # noqa: BLE001
        return CollectResult(state=previous, available=False, error=f"monitor_current: {exc}")

    def optional(name: str, call: Callable[[], _T]) -> _T | None:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{name}: {exc}")
            return None

    stats = _aggregate(optional("stats", api.stats))
    metrics_payload = optional("metrics", api.metrics)
    counters_raw = _aggregate(metrics_payload)
    rules = optional("rules", api.rules)
    connectors = optional("connectors", api.connectors)

    values: dict[str, float] = {}

    def first(metric: str, *candidates: float | None) -> None:
        for candidate in candidates:
            if candidate is not None:
                values[metric] = candidate
                return

    first(m.CONNECTIONS, _number(current.get("live_connections")), _number(stats.get("live_connections.count")))
    first(m.SESSIONS, _number(current.get("connections")), _number(stats.get("sessions.count")))
    first(m.SUBSCRIPTIONS, _number(current.get("subscriptions")), _number(stats.get("subscriptions.count")))
    first(m.TOPICS, _number(current.get("topics")), _number(stats.get("topics.count")))
    first(m.RETAINED, _number(current.get("retained_msg_count")), _number(stats.get("retained.count")))
    first(m.MESSAGES_RECEIVED_RATE, _number(current.get("received_msg_rate")))
    first(m.MESSAGES_SENT_RATE, _number(current.get("sent_msg_rate")))
    first(m.MESSAGES_DROPPED_RATE, _number(current.get("dropped_msg_rate")))

    counters: dict[str, float | None] = {
        "auth_failure": _number(counters_raw.get("authentication.failure")),
        "acl_denied": _number(counters_raw.get("authorization.deny")),
        "messages_dropped": _number(counters_raw.get("messages.dropped")),
        "bytes": None,
        "rule_matched": None,
        "rule_failed": None,
    }
    received, sent = _number(counters_raw.get("bytes.received")), _number(counters_raw.get("bytes.sent"))
    if received is not None and sent is not None:
        counters["bytes"] = received + sent
    if rules is not None:
        # Disabled rules keep their old counters; including them is harmless, their delta is zero.
        counters["rule_matched"] = float(sum(_number(r.get("metrics", {}).get("matched")) or 0 for r in rules))
        counters["rule_failed"] = float(
            sum(
                (_number(r.get("metrics", {}).get("failed")) or 0)
                + (_number(r.get("metrics", {}).get("actions.failed")) or 0)
                for r in rules
            )
        )
    if connectors is not None:
        values[m.RULE_RESOURCE_DOWN] = float(sum(1 for c in _enabled(connectors) if c.get("status") != "connected"))

    # Each counter keeps its own timestamp: one endpoint failing this round must not skew the next round's rate.
    prev_counters: dict[str, dict[str, float]] = previous.get("counters", {})

    def rate_of(key: str) -> float | None:
        prev = prev_counters.get(key)
        if prev is None:
            return None
        return counter_rate(current=counters[key], previous=prev["value"], elapsed=now - prev["ts"])

    for metric, key in (
        (m.AUTH_FAILURE_RATE, "auth_failure"),
        (m.ACL_DENIED_RATE, "acl_denied"),
        (m.RULE_MATCHED_RATE, "rule_matched"),
        (m.RULE_FAILED_RATE, "rule_failed"),
    ):
        rate = rate_of(key)
        if rate is not None:
            values[metric] = rate
    if m.MESSAGES_DROPPED_RATE not in values:
        rate = rate_of("messages_dropped")
        if rate is not None:
            values[m.MESSAGES_DROPPED_RATE] = rate
    if "bytes" in prev_counters:
        traffic = counter_delta(current=counters["bytes"], previous=prev_counters["bytes"]["value"])
        if traffic is not None:
            values[m.TRAFFIC_BYTES] = traffic

    state_counters = dict(prev_counters)
    state_counters.update({k: {"value": v, "ts": now} for k, v in counters.items() if v is not None})
    return CollectResult(
        values=values, state={"ts": now, "counters": state_counters}, available=True, error="; ".join(errors)
    )
