"""Console page cost: server time (p50/p95) and SQL query count of each console page, with 100 deployments and 20
members in one organization (each deployment with a firing alert and its delivered notification), beside the API's
own deployment list in the same run; the monitoring tab of a deployment with 30 days of five-minute rollups and 48
hours of raw samples, and the bytes of chart data it sends.

Needs DATABASE_URL (PostgreSQL) and REDIS_URL: run it with `scripts/bench.sh bench/console.py`.
Each page is requested in-process through Django's full middleware stack (sessions, CSRF, CSP, idempotency), so the
time is the server's, without a network or a browser. The query count of every page is measured with 10 and with
100 deployments (and 4 and 20 members): it must not grow with the rows. Target: p95 under 150 ms on this machine
(200 ms for the monitoring tab and the billing overview), chart data under 100 kB for 30 days.
"""

import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["RATE_LIMIT_PRINCIPAL"] = "1000000000,1000000000"
os.environ["RATE_LIMIT_ORGANIZATION"] = "1000000000,1000000000"
os.environ["RATE_LIMIT_PLATFORM"] = "1000000000,1000000000"

from bench.common import setup_django  # noqa: E402

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "40"))
TARGET_P95_MS = 150.0
# The monitoring tab and the billing overview aggregate a month of metrics or of spend: their target is 200 ms.
HEAVY_TARGET_P95_MS = 200.0
CHART_BYTES_TARGET = 100_000


class Fixture:
    def __init__(self):
        from accounts.models import User
        from organizations import services

        call_command("migrate", verbosity=0)
        self.owner = User.objects.create_user(f"bench-{time.time()}@example.com", "bench passphrase 123")
        self.org = services.organization_create(name="Console bench", owner=self.owner)
        self.project = self.org.projects.get(is_default=True)
        _key, self.secret = services.api_key_create(
            organization=self.org, actor=None, name="bench", role="owner", created_by=self.owner
        )
        self.deployments = []
        self.members = 1

    def grow(self, *, deployments: int, members: int):
        from accounts.models import User
        from deployments import services as deployment_services
        from deployments.models import Deployment, Operation
        from organizations import services
        from organizations.models import Membership
        from projects.models import ProjectGrant

        while len(self.deployments) < deployments:
            deployment, _ = deployment_services.deployment_create(
                project=self.project,
                actor=None,
                name=f"d{len(self.deployments):03d}",
                plan="dedicated",
                tier="1k",
                region="local",
            )
            self.deployments.append(deployment)
        self.usage()
        # As the reconciler leaves them: running, their operations done (a page shows settled rows).
        Operation.objects.filter(deployment__project=self.project).update(status="succeeded")
        for deployment in Deployment.objects.filter(project=self.project):
            Deployment.objects.filter(pk=deployment.pk).update(
                status="running",
                observed_generation=deployment.generation,
                endpoints={"host": "127.0.0.1", "ports": {"mqtt": 21883}},
            )
        while self.members < members:
            user = User.objects.create_user(f"member{self.members}-{time.time()}@example.com", "bench passphrase 123")
            membership = Membership.objects.create(organization=self.org, user=user, roles=["auditor"])
            ProjectGrant.objects.create(membership=membership, project=self.project, role="project_user")
            services.api_key_create(
                organization=self.org, actor=None, name=f"k{self.members}", role="auditor", created_by=user
            )
            self.members += 1
        self.alerting()

    def alerting(self):
        """A firing alert on every deployment's default connections rule, each told to one webhook channel (a
        delivery with its attempt): what the alerts page and the channel's delivery history list."""
        from django.utils import timezone

        from alerts.models import Alert, AlertRule
        from notifications.models import Delivery, DeliveryAttempt, NotificationChannel

        if not hasattr(self, "channel"):
            # Made directly: the service would resolve the webhook's host, and this machine has no DNS.
            self.channel = NotificationChannel.objects.create(
                organization=self.org, name="bench hook", type="webhook", config={"url": "https://example.com/h"}
            )
        now = timezone.now()
        rules = AlertRule.objects.filter(project=self.project, default_key="connections_high", alerts__isnull=True)
        for rule in rules:
            alert = Alert.objects.create(
                organization=self.org,
                project=self.project,
                rule=rule,
                deployment_id=rule.deployment_id,
                status="firing",
                since=now,
                fired_at=now,
                severity=rule.severity,
                value=950,
                threshold=800,
            )
            delivery = Delivery.objects.create(
                organization=self.org,
                channel=self.channel,
                alert_public_id=alert.public_id,
                kind="fire",
                status="succeeded",
                attempts=1,
                completed_at=now,
            )
            DeliveryAttempt.objects.create(delivery=delivery, number=1, ok=True, status_code=200, duration_ms=42)

    def usage(self):
        """This month's hourly usage of every deployment so far, metered (the hourly task's rows, the cursor at the
        last full hour): what the billing overview sums by day, project and deployment."""
        import datetime as dt

        from django.utils import timezone

        from billing.models import MeteringCursor, UsageRecord

        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        start = now.replace(day=1, hour=0)
        have = set(UsageRecord.objects.values_list("deployment_id", flat=True).distinct())
        rows = []
        for deployment in self.deployments:
            if deployment.pk in have:
                continue
            hour = start
            while hour < now:
                rows.append(
                    UsageRecord(
                        deployment=deployment,
                        organization=self.org,
                        tier=deployment.tier,
                        hour=hour,
                        product="running",
                        seconds=3600,
                        unit_price="0.360000",
                        currency="USD",
                    )
                )
                hour += dt.timedelta(hours=1)
        UsageRecord.objects.bulk_create(rows, batch_size=5000)
        MeteringCursor.objects.update_or_create(pk=1, defaults={"metered_until": now})
        if rows:
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {UsageRecord._meta.db_table}")

    def metrics(self):
        """30 days of five-minute rollups and 48 hours of raw samples (one a minute) of every charted metric, for
        the first deployment: what the monitoring tab reads at its longest and densest."""
        import datetime as dt

        from django.utils import timezone

        from alerts.models import MetricRollup, MetricSample
        from console.charts import CHART_METRICS

        deployment = self.deployments[0]
        now = timezone.now().replace(second=0, microsecond=0)
        bucket = now - dt.timedelta(days=30)
        bucket = bucket.replace(minute=bucket.minute - bucket.minute % 5)
        rollups = []
        while bucket < now:
            for i, name in enumerate(CHART_METRICS):
                value = 400 + 300 * ((bucket.minute + i) % 7)
                rollups.append(
                    MetricRollup(
                        deployment=deployment,
                        name=name,
                        bucket=bucket,
                        avg=value,
                        min=value - 50,
                        max=value + 50,
                        last=value,
                        sum=value * 5,
                        count=5,
                    )
                )
            bucket += dt.timedelta(minutes=5)
        MetricRollup.objects.bulk_create(rollups, batch_size=5000)
        samples = []
        ts = now - dt.timedelta(hours=48)
        while ts < now:
            for i, name in enumerate(CHART_METRICS):
                samples.append(MetricSample(deployment=deployment, name=name, ts=ts, value=300 + 17 * i + ts.minute))
            ts += dt.timedelta(minutes=1)
        MetricSample.objects.bulk_create(samples, batch_size=5000)
        from django.db import connection

        with connection.cursor() as cursor:  # what autovacuum does after a bulk load, done now
            cursor.execute(f"ANALYZE {MetricRollup._meta.db_table}, {MetricSample._meta.db_table}")
        return len(rollups), len(samples)

    def chart_pages(self):
        o, p = self.org.public_id, self.project.public_id
        d = f"/console/o/{o}/p/{p}/d/{self.deployments[0].public_id}"
        return [
            ("monitoring 1 h", f"{d}/monitoring?range=1h"),
            ("monitoring 30 d", f"{d}/monitoring?range=30d"),
            ("monitoring 30 d, cold", f"{d}/monitoring?range=30d"),
            ("chart data 1 h (JSON)", f"{d}/monitoring/data?range=1h"),
            ("chart data 6 h (JSON)", f"{d}/monitoring/data?range=6h"),
            ("chart data 24 h (JSON)", f"{d}/monitoring/data?range=24h"),
            ("chart data 7 d (JSON)", f"{d}/monitoring/data?range=7d"),
            ("chart data 30 d (JSON)", f"{d}/monitoring/data?range=30d"),
            ("chart data 30 d (JSON), cold", f"{d}/monitoring/data?range=30d"),
        ]

    def pages(self):
        o, p = self.org.public_id, self.project.public_id
        d = f"/console/o/{o}/p/{p}/d/{self.deployments[0].public_id}"
        return [
            ("projects", f"/console/o/{o}"),
            ("deployments", f"/console/o/{o}/p/{p}"),
            ("deployment rows (htmx)", f"/console/o/{o}/p/{p}/rows"),
            ("create wizard", f"/console/o/{o}/p/{p}/deployments/new"),
            ("deployment overview", d),
            ("live status (htmx)", f"{d}/live"),
            ("MQTT users", f"{d}/mqtt-users"),
            ("ACL rules", f"{d}/acl"),
            ("rate limits", f"{d}/rate-limits"),
            ("manage", f"{d}/manage"),
            ("stop dry run", f"{d}/actions/stop"),
            ("history", f"{d}/history"),
            ("VPC peering (local region)", f"{d}/vpc-peering"),
            ("members", f"/console/o/{o}/members"),
            ("API keys", f"/console/o/{o}/api-keys"),
            ("audit log", f"/console/o/{o}/audit"),
            ("settings", f"/console/o/{o}/settings"),
            ("alerts", f"/console/o/{o}/alerts"),
            ("alert rules", f"/console/o/{o}/p/{p}/alert-rules"),
            ("notification channels", f"/console/o/{o}/channels"),
            ("channel and deliveries", f"/console/o/{o}/channels/{self.channel.public_id}"),
            ("billing overview", f"/console/o/{o}/billing"),
            ("billing invoices", f"/console/o/{o}/billing/invoices"),
        ]

    def api_list(self):
        return f"/api/v1/organizations/{self.org.public_id}/projects/{self.project.public_id}/deployments?page_size=100"


def size(client, path) -> int:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return len(response.content)


def queries(client, path, **headers) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    return len(captured)


def timings(client, path, *, cold=False, **headers) -> list[float]:
    """`cold`: the cache emptied before each request (the chart data of a rollup range is cached for a minute)."""
    from django.core.cache import cache

    client.get(path, **headers)  # warm: templates compiled, connections open
    out = []
    for _ in range(REQUESTS):
        if cold:
            cache.clear()
        start = time.perf_counter()
        response = client.get(path, **headers)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return out


def billing_floor(fixture) -> tuple[list[float], int]:
    """The least the billing overview must do: sum the month's unbilled usage rows once, grouped as the invoice's
    lines are (billing.invoicing.usage_rows), straight from the ORM."""
    from django.utils import timezone

    from billing import metering
    from billing.invoicing import usage_rows
    from billing.models import UsageRecord

    now = timezone.now()
    usage = UsageRecord.objects.filter(
        organization=fixture.org, invoice__isnull=True, hour__lt=metering.next_month_start(now)
    )
    usage_rows(usage)
    out = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        usage_rows(usage)
        out.append((time.perf_counter() - start) * 1000)
    return out, usage.count()


def p95(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main():
    fixture = Fixture()
    client = Client()
    client.force_login(fixture.owner)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {fixture.secret}")

    fixture.grow(deployments=10, members=4)
    small = {name: queries(client, path) for name, path in fixture.pages()}
    small_api = queries(api, fixture.api_list())
    fixture.grow(deployments=100, members=20)
    rollups, samples = fixture.metrics()
    rows = []
    for name, path in fixture.pages():
        values = timings(client, path)
        rows.append((name, statistics.median(values), p95(values), small[name], queries(client, path)))
    chart_rows = []
    for name, path in fixture.chart_pages():
        values = timings(client, path, cold=name.endswith("cold"))
        count = queries(client, path)
        chart_rows.append((name, statistics.median(values), p95(values), count, count, size(client, path)))
    floor_values, usage_count = billing_floor(fixture)
    api_values = timings(api, fixture.api_list())
    api_row = ("API: list 100 deployments", statistics.median(api_values), p95(api_values), small_api)
    api_row += (queries(api, fixture.api_list()),)

    print(
        f"{REQUESTS} requests per page, in-process, 100 deployments and 20 members in the organization; "
        "the billing overview sums this month's metered hours of every deployment"
    )
    print(f"{'page':28} {'p50 ms':>8} {'p95 ms':>8} {'SQL@10':>7} {'SQL@100':>8}")
    for name, p50, high, before, after in [*rows, api_row]:
        grew = "" if after <= before else "  <- grows with rows"
        target = HEAVY_TARGET_P95_MS if name == "billing overview" else TARGET_P95_MS
        slow = "" if high <= target else f"  <- above the {target:.0f} ms target"
        print(f"{name:28} {p50:8.1f} {high:8.1f} {before:7d} {after:8d}{grew}{slow}")
    worst = max((r for r in rows if r[0] != "billing overview"), key=lambda r: r[2])
    print(
        f"worst console p95: {worst[2]:.1f} ms ({worst[0]}); target {TARGET_P95_MS:.0f} ms; "
        f"API list p95 in the same run: {api_row[2]:.1f} ms"
    )
    print("query counts equal at 10 and 100 rows:", all(r[3] == r[4] for r in rows))
    overview = next(r for r in rows if r[0] == "billing overview")
    floor = statistics.median(floor_values)
    print(
        f"billing overview p50 {overview[1]:.1f} ms beside its floor, one SQL aggregation of the month's "
        f"{usage_count:,} usage rows as the invoice groups them: p50 {floor:.1f} ms ({overview[1] / floor:.1f}x)"
    )
    print()
    print(f"monitoring tab of one deployment: {rollups:,} rollups (30 days) and {samples:,} raw samples (48 hours)")
    print("(7 d and 30 d chart data is cached for a minute, shared by the page and its chart module; 'cold' empties")
    print(" the cache before every request)")
    print(f"{'page':28} {'p50 ms':>8} {'p95 ms':>8} {'SQL':>7} {'bytes':>9}")
    for name, p50, high, count, _, body in chart_rows:
        slow = "" if high <= HEAVY_TARGET_P95_MS else f"  <- above the {HEAVY_TARGET_P95_MS:.0f} ms target"
        big = "" if "JSON" not in name or body <= CHART_BYTES_TARGET else "  <- above 100 kB"
        print(f"{name:28} {p50:8.1f} {high:8.1f} {count:7d} {body:9,d}{slow}{big}")


if __name__ == "__main__":
    main()
