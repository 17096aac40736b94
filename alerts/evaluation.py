"""Pure alert-rule evaluation: samples and the alert's current state in, the next state and what to notify out.

Owns the lifecycle pending -> firing -> resolved, for-durations, repeat intervals, acknowledgement, silences and
maintenance. Never touches the database, the clock or a channel: the caller passes `now`, stores the result and sends.
Times are unix seconds (int/float) or aware datetimes; `Transition.since` comes back in the type of `now`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from alerts.metrics import validate_metric_name


class AlertStatus(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Notify(StrEnum):
    FIRE = "fire"
    RESOLVE = "resolve"
    REPEAT = "repeat"


AGGREGATIONS = ("avg", "max", "min", "sum", "last", "count")
OPERATORS = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
SEVERITIES = ("info", "warning", "critical")

Timestamp = float | int | datetime


def _seconds(t: Timestamp) -> float:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime or unix seconds")
        return t.timestamp()
    return float(t)


def _like(template: Timestamp, seconds: float) -> Timestamp:
    if isinstance(template, datetime):
        return datetime.fromtimestamp(seconds, tz=template.tzinfo or UTC)
    return seconds


@dataclass(frozen=True, slots=True)
class RuleSpec:
    metric: str
    aggregation: str
    window_seconds: float
    operator: str
    threshold: float
    # When true, `threshold` is a percentage of the deployment tier's limit for this metric (80 = 80 %).
    threshold_is_percent: bool = False
    for_seconds: float = 0
    severity: str = "warning"
    # None: notify once when firing, never again until resolved.
    repeat_interval_seconds: float | None = 3600

    def __post_init__(self) -> None:
        validate_metric_name(self.metric)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if self.operator not in OPERATORS:
            raise ValueError(f"operator must be one of {' '.join(OPERATORS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        if self.window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if self.for_seconds < 0:
            raise ValueError("for_seconds must not be negative")
        if self.repeat_interval_seconds is not None and self.repeat_interval_seconds <= 0:
            raise ValueError("repeat_interval_seconds must be positive or None")


@dataclass(frozen=True, slots=True)
class AlertState:
    status: AlertStatus | str
    # When the current status began.
    since: Timestamp
    last_notified_at: Timestamp | None = None
    acknowledged_until: Timestamp | None = None
    silenced: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    # None only when there was no alert and none is needed.
    status: AlertStatus | None
    previous_status: AlertStatus | None
    since: Timestamp | None
    notify: Notify | None
    value: float | None
    threshold: float | None
    data_missing: bool = False
    # "silence" or "maintenance" when a notification was due but withheld.
    suppressed_by: str | None = None
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.status != self.previous_status


def aggregate(aggregation: str, values: Sequence[float]) -> float:
    if aggregation == "count":
        return float(len(values))
    if not values:
        raise ValueError("no values to aggregate")
    if aggregation == "avg":
        return sum(values) / len(values)
    if aggregation == "max":
        return max(values)
    if aggregation == "min":
        return min(values)
    if aggregation == "sum":
        return float(sum(values))
    if aggregation == "last":
        return values[-1]
    raise ValueError(f"unknown aggregation {aggregation!r}")


def evaluate(
    rule: RuleSpec,
    samples: Sequence[tuple[Timestamp, float]],
    now: Timestamp,
    state: AlertState | None,
    tier_limit: float | None,
    *,
    maintenance: bool = False,
) -> Transition:
    """Decide the alert's next status and the notification due, if any.

    Samples count when `now - window < ts <= now`. No sample in the window is a gap, not a zero: nothing changes and
    `data_missing` is set. A percent threshold without a tier limit is treated the same way.
    """
    now_s = _seconds(now)
    prev_status = AlertStatus(state.status) if state else None
    prev_since = state.since if state else None

    def unchanged(*, value: float | None, threshold: float | None, missing: bool, reason: str) -> Transition:
        return Transition(
            status=prev_status,
            previous_status=prev_status,
            since=prev_since,
            notify=None,
            value=value,
            threshold=threshold,
            data_missing=missing,
            reason=reason,
        )

    window = sorted(
        ((_seconds(ts), float(v)) for ts, v in samples if now_s - rule.window_seconds < _seconds(ts) <= now_s),
        key=lambda tv: tv[0],
    )
    if not window:
        return unchanged(value=None, threshold=None, missing=True, reason="no samples in window")
    value = aggregate(rule.aggregation, [v for _, v in window])

    if rule.threshold_is_percent:
        if tier_limit is None:
            return unchanged(value=value, threshold=None, missing=True, reason="percent threshold without tier limit")
        threshold = tier_limit * rule.threshold / 100.0
    else:
        threshold = float(rule.threshold)
    breached = OPERATORS[rule.operator](value, threshold)

    suppressed_by = "silence" if state and state.silenced else ("maintenance" if maintenance else None)
    acknowledged = bool(state and state.acknowledged_until is not None and _seconds(state.acknowledged_until) > now_s)
    notified_before = bool(state and state.last_notified_at is not None)

    def to(status: AlertStatus | None, notify: Notify | None, reason: str, *, keep_since: bool = False) -> Transition:
        withheld = None
        if notify is not None and suppressed_by:
            notify, withheld = None, suppressed_by
        return Transition(
            status=status,
            previous_status=prev_status,
            since=prev_since if keep_since else _like(now, now_s),
            notify=notify,
            value=value,
            threshold=threshold,
            suppressed_by=withheld,
            reason=reason,
        )

    if breached:
        if prev_status in (None, AlertStatus.RESOLVED):
            if rule.for_seconds <= 0:
                return to(AlertStatus.FIRING, Notify.FIRE, "condition met")
            return to(AlertStatus.PENDING, None, "condition met, waiting for for-duration")
        if prev_status is AlertStatus.PENDING:
            if now_s - _seconds(state.since) >= rule.for_seconds:
                return to(AlertStatus.FIRING, Notify.FIRE, "condition held for the for-duration")
            return to(AlertStatus.PENDING, None, "condition met, waiting for for-duration", keep_since=True)
        # Firing already.
        if not notified_before:
            # The fire notice was withheld (silence, maintenance) or failed: send it once allowed.
            return to(AlertStatus.FIRING, Notify.FIRE, "still firing, never notified", keep_since=True)
        if acknowledged:
            return to(AlertStatus.FIRING, None, "still firing, acknowledged", keep_since=True)
        if rule.repeat_interval_seconds is not None and (
            now_s - _seconds(state.last_notified_at) >= rule.repeat_interval_seconds
        ):
            return to(AlertStatus.FIRING, Notify.REPEAT, "still firing, repeat interval elapsed", keep_since=True)
        return to(AlertStatus.FIRING, None, "still firing", keep_since=True)

    if prev_status is AlertStatus.FIRING:
        # Nobody was told it fired, so nobody is told it resolved.
        return to(AlertStatus.RESOLVED, Notify.RESOLVE if notified_before else None, "condition cleared")
    if prev_status is AlertStatus.PENDING:
        return to(AlertStatus.RESOLVED, None, "condition cleared before the for-duration")
    return unchanged(value=value, threshold=threshold, missing=False, reason="condition not met")
