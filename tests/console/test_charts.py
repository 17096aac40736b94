"""The monitoring tab's chart data: gaps where the broker did not answer are nulls (never zeros), long ranges come
from rollups aggregated by the database, 30 days stay small, and the endpoint answers only those who may read the
deployment."""

import datetime as dt
import json

import pytest
from django.utils import timezone

from alerts.models import MetricRollup, MetricSample
from console import charts
from tests.console.helpers import console_path, deployment

pytestmark = pytest.mark.django_db

NOW = dt.datetime(2026, 11, 2, 12, 0, 30, tzinfo=dt.UTC)


def _samples(dep, minutes_ago_values):
    rows = []
    for minutes, values in minutes_ago_values:
        ts = NOW - dt.timedelta(minutes=minutes)
        rows += [MetricSample(deployment=dep, name=name, ts=ts, value=value) for name, value in values.items()]
    MetricSample.objects.bulk_create(rows)


def test_missing_collections_are_nulls_when_broker_did_not_answer(owner_org):
    dep = deployment(owner_org.default_project)
    # Collected at -10, -9, -8 minutes, then nothing for five minutes, then -2 and -1.
    _samples(dep, [(m, {"connections": 3, "traffic_bytes": 6000}) for m in (10, 9, 8, 2, 1)])
    data = charts.chart_data(deployment=dep, range_key="1h", now=NOW)
    connections = data["series"]["connections"]
    assert connections == [3, 3, 3, None, 3, 3]
    # The null sits one interval after the last sample before the gap.
    assert data["x"][3] == data["x"][2] + 60
    assert data["source"] == "raw" and data["limits"] == {"connections": 1000}
    # Bytes since the previous collection, per second of the time that collection covers: 6000 over the six
    # minutes of the gap is 16.667/s, not 100/s.
    assert data["series"]["traffic_bytes"] == [100, 100, 100, None, 16.667, 100]
    # No rate was collected: a null everywhere, never a zero.
    assert set(data["series"]["messages_received_rate"]) == {None}


def test_buckets_without_samples_are_nulls_when_range_is_a_day(owner_org):
    dep = deployment(owner_org.default_project)
    _samples(dep, [(m, {"connections": m % 3}) for m in range(0, 60)] + [(300, {"connections": 7})])
    data = charts.chart_data(deployment=dep, range_key="24h", now=NOW)
    assert data["step"] == 300 and data["source"] == "raw"
    values = data["series"]["connections"]
    assert len(values) == 24 * 12 + 1
    filled = [v for v in values if v is not None]
    assert 7 in filled and len(filled) == 14  # an hour of samples spans 13 five-minute steps, and the lone one
    assert values[0] is None


def test_thirty_days_of_rollups_fit_in_100_kb_when_every_bucket_is_filled(owner_org):
    dep = deployment(owner_org.default_project)
    start = NOW - dt.timedelta(days=30)
    rows = []
    bucket = start.replace(second=0, minute=start.minute - start.minute % 5)
    while bucket < NOW:
        for name in charts.CHART_METRICS:
            rows.append(
                MetricRollup(
                    deployment=dep, name=name, bucket=bucket, avg=812.34, min=1, max=999, last=5, sum=4061.7, count=5
                )
            )
        bucket += dt.timedelta(minutes=5)
    # A day with no rollup at all: the broker was unreachable.
    outage = (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=9))
    MetricRollup.objects.bulk_create([r for r in rows if not outage[0] <= r.bucket < outage[1]], batch_size=5000)

    data = charts.chart_data(deployment=dep, range_key="30d", now=NOW)
    assert data["source"] == "rollup" and data["step"] == 7200
    body = json.dumps(data, separators=(",", ":"))
    assert len(body) < 100_000, len(body)
    connections = data["series"]["connections"]
    assert connections.count(None) >= 11  # the day without rollups, in two-hour steps
    assert 812.34 in connections  # the mean of the step, weighted by each rollup's samples
    # A counter's total over the step, per second: 24 rollups of 4061.7 bytes in 7200 s.
    assert 13.539 in data["series"]["traffic_bytes"]


def test_summary_reads_latest_min_mean_and_max_when_shown_beside_the_chart(owner_org):
    dep = deployment(owner_org.default_project)
    _samples(dep, [(3, {"connections": 1}), (2, {"connections": 5}), (1, {"connections": 3})])
    views = {v.key: v for v in charts.chart_views(charts.chart_data(deployment=dep, range_key="1h", now=NOW))}
    [summary] = views["connections"].summaries
    assert (summary.now, summary.minimum, summary.average, summary.maximum) == (3, 1, 3, 5)
    assert views["connections"].limit == 1000 and views["subscriptions"].empty


def test_chart_data_is_not_found_when_deployment_is_another_organizations(client, org_factory):
    mine, other = org_factory(), org_factory()
    theirs = deployment(other.default_project)
    MetricSample.objects.create(deployment=theirs, name="connections", ts=timezone.now(), value=42)
    client.force_login(mine.owner)
    assert client.get(console_path(theirs, "monitoring/data")).status_code == 404
    assert client.get(console_path(theirs, "monitoring")).status_code == 404


def test_unknown_range_is_a_400_when_asking_for_chart_data(client, owner_org):
    dep = deployment(owner_org.default_project)
    client.force_login(owner_org.owner)
    response = client.get(console_path(dep, "monitoring/data"), {"range": "1y"})
    assert response.status_code == 400 and "range" in response.json()
    page = client.get(console_path(dep, "monitoring"), {"range": "<script>"})
    assert page.status_code == 200 and b'aria-current="true">1 hour' in page.content


def test_project_user_reads_the_monitoring_tab_when_granted_the_project(client, owner_org):
    dep = deployment(owner_org.default_project)
    MetricSample.objects.create(deployment=dep, name="connections", ts=timezone.now(), value=2)
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    data = client.get(console_path(dep, "monitoring/data")).json()
    assert data["series"]["connections"][-1] == 2
