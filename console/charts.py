"""Chart data of a deployment's monitoring tab: the metric samples of one time range shaped for the chart module
(one shared time axis, a null wherever the broker did not answer), small enough to send every minute.

Reads only, one aggregated query per range whatever its length; never writes and never decides access (the caller
resolved the deployment through console.tenancy). A missing sample is drawn as a gap, never as a zero.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from alerts import selectors as alert_selectors
from alerts.metrics import METRICS, MetricKind
from alerts.models import MetricRollup, MetricSample

RAW_RETENTION = dt.timedelta(hours=48)
# A step between two samples longer than this many collection intervals is a gap: the broker did not answer (or
# the deployment was not running), and the chart must not draw a line across it.
GAP_INTERVALS = 1.5


@dataclasses.dataclass(frozen=True)
class TimeRange:
    key: str
    label: str
    seconds: int
    # None: every raw sample, with gaps found from the collection interval. Otherwise one point per `step` seconds:
    # raw samples aggregated in SQL inside their 48 hours, five-minute rollups beyond.
    step: int | None


RANGES: dict[str, TimeRange] = {
    r.key: r
    for r in (
        TimeRange("1h", "1 hour", 3600, None),
        TimeRange("6h", "6 hours", 6 * 3600, None),
        TimeRange("24h", "24 hours", 24 * 3600, 300),
        TimeRange("7d", "7 days", 7 * 86400, 1800),
        TimeRange("30d", "30 days", 30 * 86400, 7200),
    )
}
DEFAULT_RANGE = "1h"


@dataclasses.dataclass(frozen=True)
class Chart:
    key: str
    title: str
    unit: str
    # (metric name, label in the legend)
    series: tuple[tuple[str, str], ...]
    # The tier's field drawn as a line (the connections chart's limit).
    limit_field: str | None = None


CHARTS: tuple[Chart, ...] = (
    Chart("connections", "Connections", "connections", (("connections", "Connections"),), "max_connections"),
    Chart("subscriptions", "Subscriptions", "subscriptions", (("subscriptions", "Subscriptions"),)),
    Chart(
        "messages",
        "Messages in and out",
        "messages/s",
        (("messages_received_rate", "In (from clients)"), ("messages_sent_rate", "Out (to clients)")),
    ),
    Chart("dropped", "Messages dropped", "messages/s", (("messages_dropped_rate", "Dropped"),)),
    Chart("traffic", "Bytes in and out", "bytes/s", (("traffic_bytes", "In and out"),)),
    Chart("auth", "Authentication failures", "failures/s", (("auth_failure_rate", "Refused connections"),)),
    Chart("acl", "ACL denials", "denials/s", (("acl_denied_rate", "Denied publish or subscribe"),)),
)
CHART_METRICS: tuple[str, ...] = tuple(name for chart in CHARTS for name, _ in chart.series)
# Counters are amounts since the previous sample; the charts show them per second.
PER_SECOND = {name for name in CHART_METRICS if METRICS[name].kind == MetricKind.COUNTER}


def interval_seconds() -> int:
    return int(getattr(settings, "COLLECT_INTERVAL_SECONDS", 60))


def time_range(key: str | None) -> TimeRange:
    return RANGES.get(key or "", RANGES[DEFAULT_RANGE])


def _compact(value: float | None) -> float | int | None:
    """Three decimals at most, whole numbers without a fraction: the JSON stays small."""
    if value is None or not math.isfinite(value):
        return None
    rounded = round(value, 3)
    return int(rounded) if rounded == int(rounded) and abs(rounded) < 2**53 else rounded


def _raw_points(deployment, start: dt.datetime, end: dt.datetime) -> tuple[list[int], dict[str, list]]:
    """Every sample of the range on one time axis. A collection stores all its metrics at one instant, so samples
    of one run share their x; where two runs are further apart than the interval allows, a null point is inserted
    so the line breaks there."""
    interval = interval_seconds()
    rows = (
        MetricSample.objects.filter(deployment=deployment, name__in=CHART_METRICS, ts__gte=start, ts__lte=end)
        .order_by("ts")
        .values_list("ts", "name", "value")
    )
    by_time: dict[int, dict[str, float]] = {}
    for ts, name, value in rows:
        by_time.setdefault(int(ts.timestamp()), {})[name] = value
    xs: list[int] = []
    series: dict[str, list] = {name: [] for name in CHART_METRICS}
    previous: int | None = None
    for x in sorted(by_time):
        values = by_time[x]
        elapsed = None if previous is None else x - previous
        if previous is not None and elapsed is not None and elapsed > GAP_INTERVALS * interval:
            xs.append(previous + interval)
            for name in CHART_METRICS:
                series[name].append(None)
        xs.append(x)
        for name in CHART_METRICS:
            point = values.get(name)
            if point is not None and name in PER_SECOND:
                # The amount since the previous collection, spread over the time it covers.
                point = point / (elapsed if elapsed and elapsed > 0 else interval)
            series[name].append(_compact(point))
        previous = x
    return xs, series


# One grouped index range scan per metric (a LATERAL join over the names), each on the table's (deployment, name,
# time) index, binned with date_bin on the timestamp itself: a month of five-minute rollups is 69,000 rows, and
# hashing them by (name, numeric epoch) was most of a cold page. The half second added before binning keeps the slot
# of a raw sample with a fraction of a second where it always was: its epoch rounded to the second, then divided.
_BUCKETS_SQL = """
    SELECT n.name, extract(epoch FROM s.bin)::bigint / %(step)s AS slot, s.mean, s.total
      FROM unnest(%(names)s::text[]) AS n(name)
     CROSS JOIN LATERAL (
        SELECT date_bin(%(step)s * interval '1 second', {time} + interval '0.5 second', timestamptz 'epoch') AS bin,
               {mean} AS mean, sum({total}) AS total
          FROM {table}
         WHERE deployment_id = %(deployment)s AND name = n.name AND {time} >= %(start)s AND {time} < %(end)s
      GROUP BY bin
     ) AS s"""
BUCKETS_SQL = {
    # Gauges and rates: the mean of the step; counters: the total of the step (made per second below).
    "raw": _BUCKETS_SQL.format(time="ts", mean="avg(value)", total="value", table=MetricSample._meta.db_table),
    "rollup": _BUCKETS_SQL.format(
        time="bucket", mean="sum(sum) / nullif(sum(count), 0)", total="sum", table=MetricRollup._meta.db_table
    ),
}


def _bucket_points(
    deployment, start: dt.datetime, end: dt.datetime, step: int, source: str
) -> tuple[list[int], dict[str, list]]:
    """One point per step, aggregated by the database (a month of five-minute rollups is 8,640 rows per metric:
    they never travel to Python). A step without any sample is a null."""
    first = int(start.timestamp()) // step
    last = int(end.timestamp()) // step
    xs = [slot * step for slot in range(first, last + 1)]
    series: dict[str, list] = {name: [None] * len(xs) for name in CHART_METRICS}
    with connection.cursor() as cursor:
        cursor.execute(
            BUCKETS_SQL[source],
            {
                "step": step,
                "deployment": deployment.pk,
                "names": list(CHART_METRICS),
                "start": dt.datetime.fromtimestamp(first * step, tz=dt.UTC),
                "end": dt.datetime.fromtimestamp((last + 1) * step, tz=dt.UTC),
            },
        )
        for name, slot, mean, total in cursor.fetchall():
            index = slot - first
            if 0 <= index < len(xs):
                series[name][index] = _compact(total / step if name in PER_SECOND else mean)
    return xs, series


# Rollups change only when the rollup task runs (every few minutes): a rollup range is computed once a minute per
# deployment, and the page and its chart module share that one computation.
ROLLUP_CACHE_SECONDS = 60


def chart_data(*, deployment, range_key: str, now: dt.datetime | None = None) -> dict:
    """What the chart module draws for one range: `x` (unix seconds) and one list of values per metric, aligned;
    the tier's limits; the range's bounds."""
    selected = time_range(range_key)
    if now is not None or selected.step is None or selected.seconds <= RAW_RETENTION.total_seconds():
        return _chart_data(deployment=deployment, selected=selected, now=now or timezone.now())
    now = timezone.now().replace(second=0, microsecond=0)
    key = f"console:charts:{deployment.public_id}:{deployment.tier_id}:{selected.key}:{int(now.timestamp())}"
    try:
        found = cache.get(key)
    except Exception:  # noqa: BLE001 - without Redis the chart is computed, never refused
        found = None
    if found is not None:
        return found
    data = _chart_data(deployment=deployment, selected=selected, now=now)
    try:
        cache.set(key, data, ROLLUP_CACHE_SECONDS)
    except Exception:  # noqa: BLE001
        pass
    return data


def _chart_data(*, deployment, selected: TimeRange, now: dt.datetime) -> dict:
    start = now - dt.timedelta(seconds=selected.seconds)
    if selected.step is None:
        xs, series = _raw_points(deployment, start, now)
        source, step = "raw", interval_seconds()
    else:
        source = "raw" if start >= now - RAW_RETENTION else "rollup"
        xs, series = _bucket_points(deployment, start, now, selected.step, source)
        step = selected.step
    tier = deployment.tier
    return {
        "range": selected.key,
        "from": int(start.timestamp()),
        "to": int(now.timestamp()),
        "step": step,
        "source": source,
        "x": xs,
        "series": series,
        "limits": {chart.key: getattr(tier, chart.limit_field) for chart in CHARTS if chart.limit_field},
    }


@dataclasses.dataclass
class SeriesSummary:
    name: str
    label: str
    now: float | None
    minimum: float | None
    average: float | None
    maximum: float | None
    points: int


@dataclasses.dataclass
class ChartView:
    chart: Chart
    limit: int | None
    summaries: list[SeriesSummary]

    @property
    def key(self) -> str:
        return self.chart.key

    @property
    def empty(self) -> bool:
        return not any(s.points for s in self.summaries)


def chart_views(data: dict) -> list[ChartView]:
    """Each chart with the text that stands for it: per series the latest value, minimum, mean and maximum over
    the range (what a screen reader reads instead of the drawing)."""
    views = []
    for chart in CHARTS:
        summaries = []
        for name, label in chart.series:
            values = [v for v in data["series"][name] if v is not None]
            summaries.append(
                SeriesSummary(
                    name=name,
                    label=label,
                    now=values[-1] if values else None,
                    minimum=min(values) if values else None,
                    average=sum(values) / len(values) if values else None,
                    maximum=max(values) if values else None,
                    points=len(values),
                )
            )
        views.append(ChartView(chart=chart, limit=data["limits"].get(chart.key), summaries=summaries))
    return views


@dataclasses.dataclass
class CurrentValue:
    key: str
    label: str
    unit: str
    value: float | None
    limit: int | None
    percent: float | None


CURRENT = (
    ("connections", "Connections"),
    ("subscriptions", "Subscriptions"),
    ("messages_received_rate", "Messages in"),
    ("messages_sent_rate", "Messages out"),
    ("messages_dropped_rate", "Messages dropped"),
    ("traffic_bytes", "Bytes in and out"),
    ("auth_failure_rate", "Authentication failures"),
    ("acl_denied_rate", "ACL denials"),
)


def current_values(*, deployment, now: dt.datetime | None = None) -> dict:
    """The latest sample of each charted metric (the API's `metrics/current`), its tier limit where it has one,
    when it was taken, and whether the broker is answering now."""
    now = now or timezone.now()
    current = alert_selectors.current_metrics(deployment=deployment)
    by_name = {m["name"]: m for m in current["metrics"]}
    interval = interval_seconds()
    values = []
    latest = None
    for name, label in CURRENT:
        metric: Mapping[str, Any] = by_name.get(name) or {}
        value = metric.get("value")
        unit = METRICS[name].unit
        if value is not None and name in PER_SECOND:
            value, unit = value / interval, f"{unit}/s"
        if metric.get("at") and (latest is None or metric["at"] > latest):
            latest = metric["at"]
        values.append(
            CurrentValue(
                key=name,
                label=label,
                unit=unit,
                value=value,
                limit=metric.get("limit") if name == "connections" else None,
                percent=metric.get("percent_of_limit") if name == "connections" else None,
            )
        )
    stale = latest is not None and (now - latest).total_seconds() > 3 * interval
    return {
        "values": values,
        "at": latest,
        "stale": stale,
        "unavailable": next((c for c in current["conditions"] if c["type"] == "metrics_unavailable"), None),
    }
