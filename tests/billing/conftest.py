"""Billing test data: deployments on the seeded catalog and their status history, written as the reconciler would."""

import datetime

import pytest

UTC = datetime.UTC


def at(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


@pytest.fixture
def tiers(db):
    import importlib

    from django.apps import apps

    from deployments.models import Tier

    # Transactional tests flush the seeded catalog away; the seed is idempotent, so run it again.
    importlib.import_module("deployments.migrations.0002_seed_catalog").seed(apps, None)
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
