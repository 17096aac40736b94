"""Alerting at scale: 10,000 deployments x 14 metrics with the default rules. Prints the seconds to store one minute
of samples and to evaluate every rule, each beside a hand-written SQL floor measured in the same run, and peak memory.

Run against a throwaway PostgreSQL (it creates and fills tables):
    bash -c 'source scripts/services.sh && services_start && CONTROLPLANE_ENV=test .venv/bin/python bench/alerts.py'
It never gates the test suite. Targets: store < 2 s, evaluate < 2 s, each within 3x of its floor.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import setup_django  # noqa: E402

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

DEPLOYMENTS = int(os.environ.get("BENCH_DEPLOYMENTS", "10000"))


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def peak_heap(fn) -> float:
    """Peak Python heap (MiB) of one more call, traced separately: tracing slows the code it watches."""
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def setup():
    from alerts import defaults
    from deployments.models import Deployment, Plan, Region, Tier
    from tests.factories import make_organization

    call_command("migrate", verbosity=0)
    org = make_organization(name="Bench")
    plan = Plan.objects.get(code="dedicated")
    tier = Tier.objects.get(plan=plan, code="1k")
    region = Region.objects.get(code="local")
    Deployment.objects.bulk_create(
        [
            Deployment(project=org.default_project, name=f"d{i}", plan=plan, tier=tier, region=region, status="running")
            for i in range(DEPLOYMENTS)
        ],
        batch_size=5000,
    )
    ids = list(Deployment.objects.values_list("pk", flat=True))
    started = time.perf_counter()
    defaults.default_rules_ensure()
    print(f"setup: {len(ids)} deployments, default rules in {time.perf_counter() - started:.2f} s")
    return ids


def minute_of_samples(ids, at, rng):
    from alerts.metrics import METRIC_NAMES

    rows = []
    for dep in ids:
        for name in METRIC_NAMES:
            # A realistic minute: about 1 % of deployments above 80 % of their 1k tier's connections and 1 % with
            # authentication failures; the rest quiet.
            if name == "connections":
                value = rng.uniform(800, 1000) if rng.random() < 0.01 else rng.uniform(0, 790)
            elif name == "auth_failure_rate":
                value = 0.5 if rng.random() < 0.01 else 0.0
            elif name in ("sessions", "subscriptions", "topics", "retained"):
                value = float(rng.randrange(0, 800))
            elif name in ("messages_received_rate", "messages_sent_rate"):
                value = rng.uniform(0, 500)
            elif name == "traffic_bytes":
                value = float(rng.randrange(0, 10_000_000))
            else:  # drops, ACL denials, rule-engine failures and resources down: none
                value = 0.0
            rows.append((dep, name, at, value))
    return rows


def copy_floor(rows):
    with connection.cursor() as cursor:
        with cursor.connection.cursor().copy(
            "COPY alerts_metricsample (deployment_id, name, ts, value) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
    connection.commit() if not connection.get_autocommit() else None
    return len(rows)


EVALUATE_FLOOR_SQL = """
WITH agg AS (
    SELECT s.deployment_id, s.name, r.window_seconds,
           avg(s.value) AS avg, max(s.value) AS max, min(s.value) AS min, sum(s.value) AS sum, count(*) AS count
      FROM alerts_metricsample s
      JOIN (SELECT DISTINCT metric, window_seconds FROM alerts_alertrule WHERE enabled AND kind = 'metric') r
        ON r.metric = s.name AND s.ts > %(now)s - make_interval(secs => r.window_seconds) AND s.ts <= %(now)s
  GROUP BY s.deployment_id, s.name, r.window_seconds
)
SELECT r.id, r.deployment_id,
       CASE r.aggregation WHEN 'avg' THEN a.avg WHEN 'max' THEN a.max WHEN 'min' THEN a.min
                          WHEN 'sum' THEN a.sum ELSE a.count END AS value
  FROM alerts_alertrule r
  JOIN deployments_deployment d ON d.id = r.deployment_id
  JOIN deployments_tier t ON t.id = d.tier_id
  JOIN agg a ON a.deployment_id = r.deployment_id AND a.name = r.metric AND a.window_seconds = r.window_seconds
  LEFT JOIN alerts_alert al ON al.rule_id = r.id AND al.deployment_id = r.deployment_id
 WHERE r.enabled AND r.kind = 'metric'
"""


def evaluate_floor(now):
    """Aggregates, rule join and the alerts' current state in one statement; breach test on the rows fetched."""
    with connection.cursor() as cursor:
        cursor.execute(EVALUATE_FLOOR_SQL, {"now": now})
        rows = cursor.fetchall()
    return len(rows)


def main():
    from alerts import collection, evaluate
    from alerts.models import Alert, AlertRule, MetricSample

    rng = random.Random(7)
    ids = setup()
    now = timezone.now().replace(microsecond=0)

    minutes = iter(range(1, 100))

    def rows():
        return minute_of_samples(ids, now - dt.timedelta(seconds=5 * next(minutes)), rng)

    floor_rows, store_rows = rows(), rows()
    floor_s, _ = timed(lambda: copy_floor(floor_rows))
    store_s, stored = timed(lambda: collection.samples_store(rows=store_rows))
    heap_rows = rows()
    store_mem = peak_heap(lambda: collection.samples_store(rows=heap_rows))
    print(
        f"store {stored} samples: {store_s:.3f} s (floor COPY {floor_s:.3f} s, ratio {store_s / floor_s:.2f}x); "
        f"peak heap {store_mem:.0f} MiB beyond the rows themselves"
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE alerts_metricsample")

    rules = AlertRule.objects.filter(enabled=True).count()
    floor_s1, floor_count = timed(lambda: evaluate_floor(now))
    eval_s, summary = timed(lambda: evaluate.rules_evaluate(now=now))
    floor_s2, _ = timed(lambda: evaluate_floor(now))
    again_s, again = timed(lambda: evaluate.rules_evaluate(now=now + dt.timedelta(seconds=1)))
    eval_mem = peak_heap(lambda: evaluate.rules_evaluate(now=now + dt.timedelta(seconds=2)))
    floor_best = min(floor_s1, floor_s2)
    print(
        f"evaluate {rules} rules ({summary.evaluated} needing a state, {summary.changed} alert changes; "
        f"floor rows {floor_count}): {eval_s:.3f} s (floor SQL {floor_best:.3f} s, ratio "
        f"{eval_s / floor_best:.2f}x); peak heap {eval_mem:.0f} MiB"
    )
    print(
        f"evaluate again with the alerts in place: {again_s:.3f} s ({again_s / floor_best:.2f}x the floor), "
        f"{again.changed} changes"
    )
    print(
        f"alerts: {Alert.objects.count()}; samples: {MetricSample.objects.count()}; "
        f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    print("targets: store < 2 s, evaluate < 2 s, each within 3x of its floor")


if __name__ == "__main__":
    main()
