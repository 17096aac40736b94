"""Metric collection and storage: one deployment's collection, raw samples, five-minute rollups, retention.

System work, never audited: set-based (one statement for any number of samples or buckets), and a broker that does
not answer is a gap in its series plus the `metrics_unavailable` condition, never a made-up value. Network I/O (the
broker, EMQX's API) never runs inside a database transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from alerts.collectors import CollectResult
from alerts.metrics import METRICS
from alerts.models import CollectorState, MetricRollup, MetricSample
from billing import traffic as billing_traffic

logger = logging.getLogger(__name__)

RAW_RETENTION = dt.timedelta(hours=48)
ROLLUP_RETENTION = dt.timedelta(days=30)


# Apps alerts may not import (networking, iot: see the layers in pyproject.toml) feed metrics of their own at each collection without alerts importing them:
# a source is called with the deployment and the time inside the transaction that stores the broker's samples, and
# answers {metric name: value}. It may update its own rows there (they commit, or not, with the samples).
SampleSource = Callable[[Any, dt.datetime], dict[str, float]]
_sample_sources: dict[str, SampleSource] = {}


def register_sample_source(name: str, source: SampleSource) -> None:
    """Add (or replace: AppConfig.ready() may run twice) the sample source called `name`."""
    _sample_sources[name] = source


def collect_interval_seconds() -> int:
    return int(getattr(settings, "COLLECT_INTERVAL_SECONDS", 60))


# -- samples and rollups -------------------------------------------------------------------------------------------


def samples_store(*, rows: Iterable[tuple[int, str, dt.datetime, float]]) -> int:
    """Insert raw samples (deployment id, metric name, time, value) with one COPY, whatever their number.

    A value that is not a finite number is not stored: its series shows a gap, never a made-up value."""
    rows = [row for row in rows if math.isfinite(row[3])]
    if not rows:
        return 0
    # COPY: no model instances, no SQL text per row, and PostgreSQL's fastest path for many rows. The text is built
    # here rather than row by row through psycopg: a minute's samples share one timestamp, formatted once.
    stamps: dict[dt.datetime, str] = {}
    lines = []
    for deployment_id, name, ts, value in rows:
        stamp = stamps.get(ts)
        if stamp is None:
            if ts.tzinfo is None:
                raise ValueError("sample times must be timezone-aware")
            stamp = stamps[ts] = ts.isoformat()
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}")
        lines.append(f"{int(deployment_id)}\t{name}\t{stamp}\t{float(value)!r}\n")
    with connection.cursor() as cursor:
        with cursor.cursor.copy(
            f"COPY {MetricSample._meta.db_table} (deployment_id, name, ts, value) FROM STDIN"
        ) as copy:
            copy.write("".join(lines))
    return len(rows)


def bucket_start(ts: dt.datetime) -> dt.datetime:
    """The start of the five-minute rollup bucket `ts` falls in."""
    seconds = int(ts.timestamp()) // MetricRollup.BUCKET_SECONDS * MetricRollup.BUCKET_SECONDS
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def rollups_compute(*, now: dt.datetime | None = None, lookback: dt.timedelta = dt.timedelta(minutes=15)) -> int:
    """(Re)compute the five-minute buckets that closed within `lookback`; idempotent, so late samples are counted."""
    now = now or timezone.now()
    end = bucket_start(now)
    start = bucket_start(now - lookback)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {MetricRollup._meta.db_table}
                   (deployment_id, name, bucket, avg, min, max, last, sum, count)
            SELECT deployment_id, name,
                   to_timestamp(floor(extract(epoch FROM ts) / %(b)s) * %(b)s) AS bucket,
                   avg(value), min(value), max(value), (array_agg(value ORDER BY ts DESC))[1], sum(value),
                   count(*)
              FROM {MetricSample._meta.db_table}
             WHERE ts >= %(start)s AND ts < %(end)s
          GROUP BY deployment_id, name, bucket
            ON CONFLICT (deployment_id, name, bucket) DO UPDATE
               SET avg = EXCLUDED.avg, min = EXCLUDED.min, max = EXCLUDED.max, last = EXCLUDED.last,
                   sum = EXCLUDED.sum, count = EXCLUDED.count
            """,
            {"b": MetricRollup.BUCKET_SECONDS, "start": start, "end": end},
        )
        return cursor.rowcount


def metrics_prune(*, now: dt.datetime | None = None) -> tuple[int, int]:
    now = now or timezone.now()
    raw, _ = MetricSample.objects.filter(ts__lt=now - RAW_RETENTION).delete()
    rolled, _ = MetricRollup.objects.filter(bucket__lt=now - ROLLUP_RETENTION).delete()
    return raw, rolled


# -- collection ----------------------------------------------------------------------------------------------------


def _collect_local(deployment, state: CollectorState, timeout: float) -> CollectResult:
    from alerts.collectors.mosquitto import collect_mosquitto
    from deployments.selectors import monitor_credentials

    endpoints = deployment.endpoints or {}
    username, password = monitor_credentials(deployment)
    return collect_mosquitto(
        host=endpoints.get("host") or deployment.region.bind_address,
        port=int((endpoints.get("ports") or {}).get("mqtt") or 0),
        username=username,
        password=password,
        log_path=(deployment.observed_details or {}).get("log_path"),
        log_offset=state.log_offset,
        previous=state.state,
        timeout=timeout,
    )


def _emqx_credentials(deployment) -> tuple[str, str]:
    """The bootstrap API key the reconciler gave the EMQX cluster: its name, and the secret stored encrypted."""
    from controlplane import crypto
    from deployments.reconcile import API_KEY_NAME

    return API_KEY_NAME, crypto.decrypt_str(deployment.api_secret_encrypted)


def _collect_kubernetes(deployment, state: CollectorState, timeout: float) -> CollectResult:
    from alerts.collectors.emqx import EmqxMonitorApi, collect_emqx

    base_url = (deployment.observed_details or {}).get("management_url")
    if not base_url:
        return CollectResult(state=state.state, available=False, error="no management URL observed yet")
    key, secret = _emqx_credentials(deployment)
    api = EmqxMonitorApi(base_url, key, secret, timeout=timeout)
    try:
        return collect_emqx(api, state.state)
    finally:
        api.close()


COLLECTORS = {"local": _collect_local, "kubernetes": _collect_kubernetes}


def deployment_collect(*, deployment_id: int) -> CollectorState | None:
    """Collect one running deployment: store its samples, or record the gap and `metrics_unavailable`."""
    from deployments.models import Deployment, Status

    deployment = Deployment.objects.select_related("region", "tier", "plan").filter(pk=deployment_id).first()
    if deployment is None or deployment.status != Status.RUNNING:
        return None
    state, _ = CollectorState.objects.get_or_create(deployment=deployment)
    timeout = float(getattr(settings, "COLLECT_TIMEOUT_SECONDS", 5))
    collector = COLLECTORS.get(deployment.region.driver)
    try:
        result = collector(deployment, state, timeout) if collector else None
    except Exception as exc:  # noqa: BLE001 - a broken collector is recorded as unavailable, never a stuck task
        logger.exception("collector failed for %s", deployment.public_id)
        result = CollectResult(
            state=state.state, log_offset=state.log_offset, available=False, error=f"{type(exc).__name__}: {exc}"
        )
    now = timezone.now()
    with transaction.atomic():
        state = CollectorState.objects.select_for_update().get(pk=state.pk)
        state.last_attempt_at = now
        if result is None:
            state.available, state.last_error = False, f"no collector for driver {deployment.region.driver!r}"
            state.unavailable_since = state.unavailable_since or now
        elif result.available:
            values = dict(result.values)
            for source_name, source in sorted(_sample_sources.items()):
                for name, value in source(deployment, now).items():
                    if name in values:
                        raise ValueError(f"sample source {source_name!r} gave {name!r}, which the collector gives")
                    values[name] = value
            samples_store(rows=[(deployment.pk, name, now, float(value)) for name, value in values.items()])
            # Billing meters traffic from the same reading of the broker's byte counters (billing.traffic).
            billing_traffic.traffic_record_from_collector(deployment_id=deployment.pk, at=now, state=result.state)
            state.available, state.unavailable_since, state.last_success_at = True, None, now
            state.state, state.log_offset, state.last_error = result.state, result.log_offset, result.error
        else:
            # No samples at all: the series shows a gap, not zeros; the collector's state is kept for next time.
            state.available, state.last_error = False, result.error[:2000]
            state.unavailable_since = state.unavailable_since or now
        state.save()
    return state


def running_deployment_ids() -> list[int]:
    from deployments.models import Deployment, Status

    return list(Deployment.objects.filter(status=Status.RUNNING).values_list("pk", flat=True))


def uncollected_deployment_ids_to_evaluate() -> list[int]:
    """Deployments that are not running (so not collected, and not evaluated after a collection) but whose rules
    still have something to say: down while asked to run (degraded, failed), or holding an unresolved alert (a
    deleted one's too: its evaluation resolves them)."""
    from alerts.models import AlertStatus
    from deployments.models import Deployment, DesiredState, Status

    return list(
        Deployment.objects.exclude(status=Status.RUNNING)
        .filter(
            Q(desired_state=DesiredState.RUNNING, status__in=[Status.DEGRADED, Status.FAILED])
            | Q(alerts__status__in=[AlertStatus.PENDING, AlertStatus.FIRING])
        )
        .order_by()
        .values_list("pk", flat=True)
        .distinct()
    )
