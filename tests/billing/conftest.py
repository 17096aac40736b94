"""Billing test data: deployments on the seeded catalog and their status history, written as the reconciler would;
ECB rates for invoices in US dollars that charge VAT."""

import datetime
from decimal import Decimal

import pytest

UTC = datetime.UTC
# A full address: an invoice is issued only with one.
ADDRESS = {"address": "1 Main St", "city": "Springfield"}
# The ECB's euro rate of the dollar in the tests: 1 EUR = 1.0823 USD, so 1 USD = 0.923958... EUR.
USD_PER_EUR = Decimal("1.0823")


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


@pytest.fixture
def usd_rates(db):
    """The ECB's USD rate on every day of 2026 and 2027 (weekends too: the tests do not care about the calendar)."""
    from billing.models import ExchangeRate

    day, rows = datetime.date(2026, 1, 1), []
    while day < datetime.date(2028, 1, 1):
        rows.append(ExchangeRate(currency="USD", on=day, rate=USD_PER_EUR, source="tests"))
        day += datetime.timedelta(days=1)
    ExchangeRate.objects.bulk_create(rows, ignore_conflicts=True)


@pytest.fixture
def tiers(db):
    import importlib

    from django.apps import apps

    from deployments.models import Tier

    # Transactional tests flush the seeded catalog away; the seeds are idempotent, so run them again.
    importlib.import_module("deployments.migrations.0002_seed_catalog").seed(apps, None)
    importlib.import_module("billing.migrations.0003_seed_details_and_traffic_allowance").seed(apps, None)
    return {t.code: t for t in Tier.objects.filter(plan__code="dedicated").select_related("plan")}


@pytest.fixture
def make_deployment(db, tiers):
    """make_deployment(project, tier="1k", status="running") -> Deployment (no reconcile, no broker)."""
    from deployments.models import Deployment, Region

    counter = iter(range(1, 10_000))

    def make(project, *, tier="1k", status="running", name=None):
        tier_obj = tiers[tier]
        desired = "stopped" if status == "stopped" else "running"
        return Deployment.objects.create(
            project=project,
            name=name or f"dep-{next(counter)}",
            plan=tier_obj.plan,
            tier=tier_obj,
            region=Region.objects.get(code="local"),
            desired_state=desired,
            status=status,
        )

    return make


@pytest.fixture
def history(tiers):
    """history(deployment, [(status, start, end_or_None, tier_code?), ...]) writes StatusInterval rows."""
    from deployments.models import StatusInterval

    def write(deployment, spans):
        rows = []
        for span in spans:
            status, start, end = span[:3]
            tier = tiers[span[3]] if len(span) > 3 else deployment.tier
            rows.append(
                StatusInterval.objects.create(
                    deployment=deployment, status=status, tier=tier, started_at=start, ended_at=end
                )
            )
        return rows

    return write
