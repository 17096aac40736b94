"""Reads of monitoring and alerting: aligned metric series, current values against tier limits, alerts and their
history.

Every read takes its tenant explicitly and owns its select_related/prefetch_related. Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterable
from typing import TypedDict

from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from alerts.collection import RAW_RETENTION
from alerts.metrics import METRICS, TIER_LIMIT_FIELDS, MetricKind
from alerts.models import Alert, AlertEvent, CollectorState, MetricRollup, MetricSample
from deployments.models import Deployment
from organizations.models import Organization

MAX_POINTS = 1440


class MetricsCondition(TypedDict):
    type: str
    status: bool
    reason: str
    message: str
    since: dt.datetime | None


class CurrentMetric(TypedDict):
    name: str
    unit: str
    value: float | None
    at: dt.datetime | None
    limit: int | None
    percent_of_limit: float | None


class CurrentMetrics(TypedDict):
    metrics: list[CurrentMetric]
    conditions: list[MetricsCondition]


@dataclasses.dataclass
class Series:
    name: str
    unit: str
    kind: str
    values: list[float | None]


@dataclasses.dataclass
class MetricSeries:
    start: dt.datetime
    end: dt.datetime
    step: int
    source: str
    timestamps: list[dt.datetime]
    series: list[Series]
    conditions: list[MetricsCondition]


def metrics_conditions(*, deployment: Deployment) -> list[MetricsCondition]:
    """`metrics_unavailable` while the broker does not answer the collector; empty otherwise."""
    state = CollectorState.objects.filter(deployment=deployment).first()
    if state is None or state.available:
        return []
    return [
        {
            "type": "metrics_unavailable",
            "status": True,
            "reason": "BrokerUnreachable",
            "message": state.last_error,
            "since": state.unavailable_since,
        }
    ]


def metric_series(
    *,
    deployment: Deployment,
    names: list[str],
    start: dt.datetime,
    end: dt.datetime,
    step: int,
    now: dt.datetime | None = None,
) -> MetricSeries:
    """Buckets of `step` seconds aligned to the epoch; gauges and rates averaged, counters summed; no data is None.

    Raw samples answer while the range lies inside their 48 hours; older ranges come from the five-minute rollups.
    """
    now = now or timezone.now()
    first = int(start.timestamp()) // step * step
    count = max(1, math.ceil((end.timestamp() - first) / step))
    timestamps = [dt.datetime.fromtimestamp(first + i * step, tz=dt.UTC) for i in range(count)]
    sums = {name: [0.0] * count for name in names}
    seen = {name: [0] * count for name in names}
    lower, upper = timestamps[0], timestamps[-1] + dt.timedelta(seconds=step)
    use_raw = start >= now - RAW_RETENTION
    # (name, bucket start, average, sum): a raw sample is both its own average and its own sum.
    rows: Iterable[tuple[str, dt.datetime, float, float]]
    if use_raw:
        rows = (
            MetricSample.objects.filter(deployment=deployment, name__in=names, ts__gte=lower, ts__lt=upper)
            .values_list("name", "ts", "value", "value")
            .order_by()
        )
        source = "raw"
    else:
        rows = (
            MetricRollup.objects.filter(deployment=deployment, name__in=names, bucket__gte=lower, bucket__lt=upper)
            .values_list("name", "bucket", "avg", "sum")
            .order_by()
        )
        source = "rollup"
    for name, ts, avg, total in rows:
        index = int((ts.timestamp() - first) // step)
        if 0 <= index < count:
            counter = METRICS[name].kind == MetricKind.COUNTER
            sums[name][index] += total if counter else avg
            seen[name][index] += 1
    series = []
    for name in names:
        metric = METRICS[name]
        counter = metric.kind == MetricKind.COUNTER
        values = [None if not n else (s if counter else s / n) for s, n in zip(sums[name], seen[name], strict=True)]
        series.append(Series(name=name, unit=metric.unit, kind=metric.kind.value, values=values))
    return MetricSeries(
        start=timestamps[0],
        end=upper,
        step=step,
        source=source,
        timestamps=timestamps,
        series=series,
        conditions=metrics_conditions(deployment=deployment),
    )


# The newest sample of each metric: one backward step on the (deployment, name, ts) index per name. A DISTINCT ON
# over the deployment's samples sorted 48 hours of them (23,000 rows for the charted metrics alone) for 15 answers.
_LATEST_SQL = f"""
    SELECT n.name, s.ts, s.value
      FROM unnest(%(names)s::text[]) AS n(name)
     CROSS JOIN LATERAL (
        SELECT ts, value FROM {MetricSample._meta.db_table}
         WHERE deployment_id = %(deployment)s AND name = n.name AND ts >= %(since)s
      ORDER BY ts DESC
         LIMIT 1
     ) AS s"""


def _latest_samples(
    *, deployment_id: int, names: list[str], since: dt.datetime
) -> dict[str, tuple[dt.datetime, float]]:
    with connection.cursor() as cursor:
        cursor.execute(_LATEST_SQL, {"names": names, "deployment": deployment_id, "since": since})
        return {name: (ts, value) for name, ts, value in cursor.fetchall()}


def current_metrics(*, deployment: Deployment) -> CurrentMetrics:
    """The latest sample of each metric (within 48 h) and, where the tier has one, its limit and usage percent."""
    values = _latest_samples(deployment_id=deployment.pk, names=list(METRICS), since=timezone.now() - RAW_RETENTION)
    tier = deployment.tier
    out: list[CurrentMetric] = []
    for name, metric in METRICS.items():
        ts, value = values.get(name, (None, None))
        limit_field = TIER_LIMIT_FIELDS.get(name)
        limit: int | None = getattr(tier, limit_field) if limit_field else None
        out.append(
            {
                "name": name,
                "unit": metric.unit,
                "value": value,
                "at": ts,
                "limit": limit,
                "percent_of_limit": round(value * 100 / limit, 1) if value is not None and limit else None,
            }
        )
    return {"metrics": out, "conditions": metrics_conditions(deployment=deployment)}


def alert_list(*, organization: Organization) -> QuerySet[Alert]:
    return Alert.objects.filter(organization=organization).select_related(
        "rule", "organization", "deployment", "project", "acknowledged_by"
    )


def alert_events(*, alert: Alert) -> QuerySet[AlertEvent]:
    return AlertEvent.objects.filter(alert=alert).order_by("created_at", "id")


def alert_table(*, organization: Organization) -> QuerySet[Alert]:
    """The organization's alerts for a table that attaches their organization, project and deployment itself (it
    holds them already): only the rule and who acknowledged are joined, not three more tables' columns per row."""
    return Alert.objects.filter(organization=organization).select_related("rule", "acknowledged_by")
