"""Alert-rule evaluation: lifecycle, for-duration, repeats, acknowledgement, silences, maintenance, gaps."""

from datetime import UTC, datetime, timedelta

import pytest

from alerts.evaluation import AlertState, AlertStatus, Notify, RuleSpec, aggregate, evaluate

NOW = 1_800_000_000.0


def rule(**overrides) -> RuleSpec:
    fields = dict(
        metric="connections",
        aggregation="avg",
        window_seconds=300,
        operator=">",
        threshold=100,
        for_seconds=0,
        severity="warning",
        repeat_interval_seconds=3600,
    )
    fields.update(overrides)
    return RuleSpec(**fields)


def flat(value: float, *, count: int = 5, step: float = 60) -> list[tuple[float, float]]:
    return [(NOW - i * step, value) for i in range(count)]


def firing(since=NOW - 600, notified=NOW - 600, **kw) -> AlertState:
    return AlertState(status="firing", since=since, last_notified_at=notified, **kw)


@pytest.mark.parametrize(
    "aggregation, expected",
    [("avg", 2.5), ("max", 4), ("min", 1), ("sum", 10), ("last", 4), ("count", 4)],
)
def test_aggregate_returns_expected_value_when_given_each_aggregation(aggregation, expected):
    assert aggregate(aggregation, [1, 2, 3, 4]) == expected


def test_last_aggregation_uses_newest_sample_when_samples_are_unordered():
    samples = [(NOW - 10, 500.0), (NOW - 200, 1.0), (NOW - 100, 2.0)]
    t = evaluate(rule(aggregation="last"), samples, NOW, None, None)
    assert t.value == 500.0 and t.status is AlertStatus.FIRING


@pytest.mark.parametrize(
    "op, value, fires",
    [
        (">", 101, True),
        (">", 100, False),
        (">=", 100, True),
        (">=", 99, False),
        ("<", 99, True),
        ("<", 100, False),
        ("<=", 100, True),
        ("<=", 101, False),
        ("==", 100, True),
        ("==", 100.5, False),
        ("!=", 5, True),
        ("!=", 100, False),
    ],
)
def test_operator_decides_firing_when_value_is_compared_to_threshold(op, value, fires):
    t = evaluate(rule(operator=op, aggregation="last"), [(NOW, value)], NOW, None, None)
    assert (t.status is AlertStatus.FIRING) is fires
    assert (t.notify is Notify.FIRE) is fires


def test_fires_and_notifies_immediately_when_for_duration_is_zero():
    t = evaluate(rule(), flat(150), NOW, None, None)
    assert t.status is AlertStatus.FIRING and t.notify is Notify.FIRE
    assert t.changed and t.since == NOW and t.value == 150 and t.threshold == 100


def test_no_alert_and_no_notification_when_condition_not_met_and_no_state():
    t = evaluate(rule(), flat(50), NOW, None, None)
    assert t.status is None and t.notify is None and not t.changed and not t.data_missing


def test_goes_pending_without_notification_when_for_duration_not_yet_held():
    t = evaluate(rule(for_seconds=300), flat(150), NOW, None, None)
    assert t.status is AlertStatus.PENDING and t.notify is None and t.since == NOW


def test_stays_pending_and_keeps_since_when_for_duration_still_running():
    state = AlertState(status="pending", since=NOW - 200)
    t = evaluate(rule(for_seconds=300), flat(150), NOW, state, None)
    assert t.status is AlertStatus.PENDING and t.since == NOW - 200 and t.notify is None and not t.changed


def test_fires_when_pending_condition_held_for_the_for_duration():
    state = AlertState(status="pending", since=NOW - 300)
    t = evaluate(rule(for_seconds=300), flat(150), NOW, state, None)
    assert t.status is AlertStatus.FIRING and t.notify is Notify.FIRE and t.since == NOW


def test_pending_resolves_silently_when_condition_clears_before_for_duration():
    state = AlertState(status="pending", since=NOW - 100)
    t = evaluate(rule(for_seconds=300), flat(10), NOW, state, None)
    assert t.status is AlertStatus.RESOLVED and t.notify is None


def test_resolves_and_notifies_when_firing_condition_clears():
    t = evaluate(rule(), flat(10), NOW, firing(), None)
    assert t.status is AlertStatus.RESOLVED and t.notify is Notify.RESOLVE and t.since == NOW


def test_resolve_is_not_notified_when_fire_was_never_notified():
    t = evaluate(rule(), flat(10), NOW, firing(notified=None), None)
    assert t.status is AlertStatus.RESOLVED and t.notify is None


def test_resolved_alert_fires_again_when_condition_returns():
    state = AlertState(status="resolved", since=NOW - 60, last_notified_at=NOW - 60)
    t = evaluate(rule(), flat(150), NOW, state, None)
    assert t.status is AlertStatus.FIRING and t.notify is Notify.FIRE


def test_resolved_alert_stays_resolved_when_condition_still_clear():
    state = AlertState(status="resolved", since=NOW - 60)
    t = evaluate(rule(), flat(10), NOW, state, None)
    assert t.status is AlertStatus.RESOLVED and not t.changed and t.since == NOW - 60


def test_no_repeat_when_repeat_interval_not_elapsed():
    t = evaluate(rule(), flat(150), NOW, firing(notified=NOW - 3599), None)
    assert t.status is AlertStatus.FIRING and t.notify is None and t.since == NOW - 600


def test_repeats_when_repeat_interval_elapsed_while_firing():
    t = evaluate(rule(), flat(150), NOW, firing(notified=NOW - 3600), None)
    assert t.notify is Notify.REPEAT and not t.changed


def test_never_repeats_when_repeat_interval_is_none():
    t = evaluate(rule(repeat_interval_seconds=None), flat(150), NOW, firing(notified=NOW - 86400), None)
    assert t.notify is None


def test_no_repeat_when_acknowledged_until_later():
    state = firing(notified=NOW - 7200, acknowledged_until=NOW + 60)
    t = evaluate(rule(), flat(150), NOW, state, None)
    assert t.notify is None and t.status is AlertStatus.FIRING


def test_repeats_again_when_acknowledgement_expired():
    state = firing(notified=NOW - 7200, acknowledged_until=NOW - 1)
    t = evaluate(rule(), flat(150), NOW, state, None)
    assert t.notify is Notify.REPEAT


def test_resolve_is_notified_when_alert_was_acknowledged():
    state = firing(acknowledged_until=NOW + 3600)
    t = evaluate(rule(), flat(10), NOW, state, None)
    assert t.notify is Notify.RESOLVE


def test_fire_is_withheld_but_status_changes_when_silenced():
    state = AlertState(status="resolved", since=NOW - 60, silenced=True)
    t = evaluate(rule(), flat(150), NOW, state, None)
    assert t.status is AlertStatus.FIRING and t.notify is None and t.suppressed_by == "silence"


def test_repeat_is_withheld_when_silenced():
    t = evaluate(rule(), flat(150), NOW, firing(notified=NOW - 7200, silenced=True), None)
    assert t.notify is None and t.suppressed_by == "silence"


def test_resolve_is_withheld_when_silenced():
    t = evaluate(rule(), flat(10), NOW, firing(silenced=True), None)
    assert t.status is AlertStatus.RESOLVED and t.notify is None and t.suppressed_by == "silence"


def test_fire_is_withheld_when_in_maintenance():
    t = evaluate(rule(), flat(150), NOW, None, None, maintenance=True)
    assert t.status is AlertStatus.FIRING and t.notify is None and t.suppressed_by == "maintenance"


def test_withheld_fire_is_sent_when_silence_or_maintenance_ends():
    t = evaluate(rule(), flat(150), NOW, firing(notified=None), None)
    assert t.notify is Notify.FIRE and not t.changed


def test_nothing_is_suppressed_when_no_notification_was_due():
    t = evaluate(rule(), flat(150), NOW, firing(notified=NOW - 10, silenced=True), None)
    assert t.notify is None and t.suppressed_by is None


def test_no_change_and_data_missing_when_window_has_no_samples():
    state = firing()
    t = evaluate(rule(), [(NOW - 301, 500.0), (NOW - 1000, 500.0)], NOW, state, None)
    assert t.data_missing and t.status is AlertStatus.FIRING and t.notify is None and not t.changed
    assert t.since == state.since


def test_firing_alert_is_not_resolved_when_data_goes_missing():
    t = evaluate(rule(), [], NOW, firing(), None)
    assert t.data_missing and t.status is AlertStatus.FIRING


def test_samples_outside_window_are_ignored_when_aggregating():
    samples = [(NOW - 10, 10.0), (NOW - 400, 10_000.0), (NOW + 5, 10_000.0)]
    t = evaluate(rule(aggregation="max"), samples, NOW, None, None)
    assert t.value == 10.0 and t.status is None


def test_percent_threshold_is_applied_to_tier_limit_when_limit_given():
    r = rule(threshold=80, threshold_is_percent=True, aggregation="last")
    fired = evaluate(r, [(NOW, 850.0)], NOW, None, 1000)
    quiet = evaluate(r, [(NOW, 750.0)], NOW, None, 1000)
    assert fired.threshold == 800 and fired.status is AlertStatus.FIRING
    assert quiet.status is None


def test_percent_threshold_is_data_missing_when_tier_limit_unknown():
    r = rule(threshold=80, threshold_is_percent=True)
    t = evaluate(r, flat(10_000), NOW, None, None)
    assert t.data_missing and t.status is None and t.notify is None


def test_count_aggregation_counts_samples_when_window_has_samples():
    r = rule(metric="auth_failure_rate", aggregation="count", operator=">=", threshold=3)
    assert evaluate(r, flat(1, count=3), NOW, None, None).status is AlertStatus.FIRING
    assert evaluate(r, flat(1, count=2), NOW, None, None).status is None


def test_datetimes_are_accepted_and_since_returned_as_datetime_when_now_is_datetime():
    now = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    state = AlertState(status="pending", since=now - timedelta(minutes=6))
    t = evaluate(rule(for_seconds=300), [(now - timedelta(seconds=30), 150.0)], now, state, None)
    assert t.status is AlertStatus.FIRING and t.since == now


@pytest.mark.parametrize(
    "overrides",
    [
        dict(metric="cpu"),
        dict(aggregation="median"),
        dict(operator="=>"),
        dict(severity="fatal"),
        dict(window_seconds=0),
        dict(for_seconds=-1),
        dict(repeat_interval_seconds=0),
    ],
)
def test_rule_spec_rejects_invalid_field_when_constructed(overrides):
    with pytest.raises(ValueError):
        rule(**overrides)


def test_rule_spec_accepts_legacy_metric_alias_when_constructed():
    assert rule(metric="rule_resources_down").metric == "rule_resources_down"
