"""The console's heavy pages read with a fixed number of SQL queries, however many deployments, alerts, usage rows
or metric samples the organization has: the billing overview, the alerts page, the monitoring tab and its chart
data, and the overdue run's billing accounts. A query per row (an N+1) coming back fails here."""

import datetime as dt

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.console.helpers import console_path, deployment, settle
from tests.factories import make_organization

pytestmark = pytest.mark.django_db

# What each page reads today (session, user, membership, projects, the page's own reads, the overdue banner), with a
# little room; the point is that the same bound holds at 2 rows and at 8.
MAX_QUERIES = {"billing": 26, "alerts": 10, "monitoring": 15, "monitoring-data": 10}


class Org:
    def __init__(self):
        from billing import selectors, services
        from notifications.models import NotificationChannel

        self.org = make_organization(name="Acme")
        account = selectors.billing_account_for(organization=self.org.organization)
        services.billing_account_update(
            account=account,
            actor=None,
            country="US",
            company="Acme Inc.",
            email="ap@acme.example",
            address="1 Main St",
            city="Springfield",
            postal_code="62701",
        )
        self.channel = NotificationChannel.objects.create(
            organization=self.org.organization, name="hook", type="webhook", config={"url": "https://example.com/h"}
        )
        self.deployments = []
        self.points = 0
        self.client = Client()
        self.client.force_login(self.org.owner)

    def grow(self, count: int):
        from alerts.models import Alert, AlertRule, MetricRollup, MetricSample
        from billing.models import MeteringCursor, UsageRecord

        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        start = now.replace(day=1, hour=0)
        hours = max(1, int((now - start).total_seconds() // 3600))
        while len(self.deployments) < count:
            plant = settle(deployment(self.org.default_project, name=f"d{len(self.deployments)}"))
            self.deployments.append(plant)
            UsageRecord.objects.bulk_create(
                UsageRecord(
                    deployment=plant,
                    organization=self.org.organization,
                    tier=plant.tier,
                    hour=start + dt.timedelta(hours=h),
                    product="running",
                    seconds=3600,
                    unit_price="0.360000",
                    currency="USD",
                )
                for h in range(hours)
            )
            rule = AlertRule.objects.get(deployment=plant, default_key="connections_high")
            Alert.objects.create(
                organization=self.org.organization,
                project=self.org.default_project,
                rule=rule,
                deployment=plant,
                status="firing",
                since=now,
                fired_at=now,
                severity=rule.severity,
                value=950,
                threshold=800,
            )
        MeteringCursor.objects.update_or_create(pk=1, defaults={"metered_until": now})
        # The first deployment's metrics grow too: a rollup and a raw sample more of each charted metric.
        from console.charts import CHART_METRICS

        first = self.deployments[0]
        for i in range(self.points, count):
            for name in CHART_METRICS:
                MetricRollup.objects.create(
                    deployment=first,
                    name=name,
                    bucket=now - dt.timedelta(days=3, minutes=5 * i),
                    avg=1,
                    min=1,
                    max=1,
                    last=1,
                    sum=5,
                    count=5,
                )
                MetricSample.objects.create(
                    deployment=first, name=name, ts=timezone.now() - dt.timedelta(minutes=i + 1), value=i
                )
        self.points = count

    def pages(self):
        first = self.deployments[0]
        o = self.org.id
        return {
            "billing": f"/console/o/{o}/billing",
            "alerts": f"/console/o/{o}/alerts",
            "monitoring": console_path(first, "monitoring?range=7d"),
            "monitoring-data": console_path(first, "monitoring/data?range=30d"),
        }


def _queries(client, path) -> int:
    from django.core.cache import cache

    cache.clear()  # the chart data of a rollup range is cached for a minute: count the cold read
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, path
    return len(captured)


@pytest.mark.parametrize("page", sorted(MAX_QUERIES))
def test_page_reads_with_a_fixed_number_of_queries_when_rows_grow_fourfold(page, deployments_catalog):
    org = Org()
    org.grow(2)
    small = _queries(org.client, org.pages()[page])
    org.grow(8)
    large = _queries(org.client, org.pages()[page])
    assert large <= small <= MAX_QUERIES[page], (page, small, large)


@pytest.mark.parametrize("page", sorted(MAX_QUERIES))
def test_page_stays_under_its_query_bound_when_eight_deployments_alert(
    page, deployments_catalog, django_assert_max_num_queries
):
    from django.core.cache import cache

    org = Org()
    org.grow(8)
    org.client.get(org.pages()[page])  # the session's first request writes what later ones only read
    cache.clear()
    with django_assert_max_num_queries(MAX_QUERIES[page]):
        assert org.client.get(org.pages()[page]).status_code == 200


def test_alerts_page_lists_every_firing_alert_with_its_acknowledge_form_when_eight_fire(deployments_catalog):
    org = Org()
    org.grow(8)
    html = org.client.get(org.pages()["alerts"]).content.decode()
    for plant in org.deployments:
        assert f'href="{console_path(plant, "monitoring")}"' in html
    assert html.count('/acknowledge"') == 8
    keys = [part.split('"')[0] for part in html.split('name="form_key" value="')[1:]]
    assert len(keys) >= 8 and len(set(keys)) == len(keys)  # each form its own key against a double submit
