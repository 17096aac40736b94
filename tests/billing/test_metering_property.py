"""The metering SQL against the Python reference on generated histories: mid-hour status and tier changes, annual
terms (ended, renewed, active, renewing by themselves), price changes within the window, and accounts in a currency
the catalog prices only partly. Seeded; the seed is printed (BILLING_PROPERTY_SEED=<seed> replays a run)."""

import datetime
import os
import random
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from billing import metering
from billing.models import AnnualSubscription, BillingAccount, UsageRecord
from deployments.models import Price
from tests.billing.conftest import at

pytestmark = pytest.mark.django_db
# The run's seed (tests/conftest.py sets CONTROLPLANE_TEST_SEED) unless this test's own is given.
SEED = int(
    os.environ.get("BILLING_PROPERTY_SEED")
    or os.environ.get("CONTROLPLANE_TEST_SEED")
    or random.SystemRandom().randrange(2**32)
)
print(f"billing metering property test: hypothesis seed {SEED} (BILLING_PROPERTY_SEED={SEED} replays it)")

WINDOW_START = at(2026, 3, 1, 21)  # six hours across midnight: prices valid from 2 March apply to the last three
WINDOW_END = at(2026, 3, 2, 3)
TIER_CODES = ["1k", "2k", "5k", "10k"]
SECOND = datetime.timedelta(seconds=1)


@dataclass(frozen=True)
class Span:
    status: str
    tier: str
    start: datetime.datetime
    end: datetime.datetime | None


@dataclass(frozen=True)
class TermSpec:
    start: datetime.datetime
    end: datetime.datetime
    status: str
    auto_renew: bool


def instants():
    """From two hours before the window to one after it, on whole or half seconds (metering rounds
    every boundary to the second, half up)."""
    return st.builds(
        lambda s, half: WINDOW_START + datetime.timedelta(seconds=s, microseconds=500_000 if half else 0),
        st.integers(min_value=-7200, max_value=7 * 3600),
        st.booleans(),
    )


@st.composite
def histories(draw):
    spans = []
    cuts = sorted(set(draw(st.lists(instants(), min_size=1, max_size=6))))
    open_end = draw(st.booleans())
    for i, start in enumerate(cuts):
        end = cuts[i + 1] if i + 1 < len(cuts) else (None if open_end else start + draw(st.integers(1, 5000)) * SECOND)
        spans.append(Span(draw(st.sampled_from(["running", "stopped"])), draw(st.sampled_from(TIER_CODES)), start, end))
    term = None
    if draw(st.booleans()):
        a, b = sorted(draw(st.lists(instants(), min_size=2, max_size=2, unique=True)))
        term = TermSpec(a, b, draw(st.sampled_from(["active", "ended", "renewed"])), draw(st.booleans()))
    return spans, term


@st.composite
def worlds(draw):
    return {
        "deployments": draw(st.lists(histories(), min_size=1, max_size=3)),
        "currency": draw(st.sampled_from(["USD", "EUR"])),
        # tiers whose hourly price changes on 2 March (USD), and the EUR tiers priced from 1 or 2 March
        "usd_changes": draw(st.sets(st.sampled_from(TIER_CODES))),
        "retention_change": draw(st.booleans()),
        "eur_tiers": draw(st.dictionaries(st.sampled_from(TIER_CODES), st.sampled_from([1, 2]))),
        "eur_retention": draw(st.sampled_from([None, 1, 2])),
    }


def reference(world, deployments, tiers, currency):
    """What the Python reference says: slot_usage over the generated spans and terms, prices by the catalog's
    lookup rule (tier-specific first, newest valid_from), None where the currency has no price."""
    intervals, terms = [], []
    for (spans, term), dep in zip(world["deployments"], deployments):
        for span in spans:
            intervals.append(_Interval(dep.pk, span.status, tiers[span.tier].pk, span.start, span.end))
        if term:
            terms.append(metering.Term(dep.pk, term.start, term.end, term.status, term.auto_renew))
    book = metering.PriceBook()
    return {
        (u.deployment_id, u.hour, u.product, u.tier_id): (
            u.seconds,
            book.price(tier_id=u.tier_id, product=u.product, currency=currency, on=u.hour.date()),
        )
        for u in metering.slot_usage(start=WINDOW_START, end=WINDOW_END, intervals=intervals, terms=terms)
    }


@dataclass(frozen=True)
class _Interval:
    deployment_id: int
    status: str
    tier_id: int
    started_at: datetime.datetime
    ended_at: datetime.datetime | None


@settings(
    max_examples=int(os.environ.get("BILLING_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)
@seed(SEED)
@given(world=worlds())
def test_metering_sql_matches_the_python_reference_when_histories_are_generated(
    owner_org, tiers, make_deployment, history, world
):
    plan = tiers["1k"].plan
    with transaction.atomic():
        account, _ = BillingAccount.objects.get_or_create(organization=owner_org.organization)
        BillingAccount.objects.filter(pk=account.pk).update(currency=world["currency"])
        for code in world["usd_changes"]:
            Price.objects.create(
                plan=plan, tier=tiers[code], currency="USD", kind="hourly", amount=Decimal("0.77"), valid_from=_day(2)
            )
        if world["retention_change"]:
            Price.objects.create(
                plan=plan, currency="USD", kind="retention_hourly", amount=Decimal("0.07"), valid_from=_day(2)
            )
        for code, day in world["eur_tiers"].items():
            Price.objects.create(
                plan=plan, tier=tiers[code], currency="EUR", kind="hourly", amount=Decimal("0.31"), valid_from=_day(day)
            )
        if world["eur_retention"]:
            Price.objects.create(
                plan=plan,
                currency="EUR",
                kind="retention_hourly",
                amount=Decimal("0.05"),
                valid_from=_day(world["eur_retention"]),
            )
        deployments = []
        for spans, term in world["deployments"]:
            dep = make_deployment(owner_org.default_project, name=f"p-{uuid.uuid4().hex[:10]}")
            history(dep, [(s.status, s.start, s.end, s.tier) for s in spans])
            if term:
                AnnualSubscription.objects.create(
                    billing_account=account,
                    deployment=dep,
                    tier=tiers["1k"],
                    status=term.status,
                    term_start=term.start,
                    term_end=term.end,
                    currency=world["currency"],
                    hourly_price=Decimal("0.36"),
                    annual_price=268056,
                    auto_renew=term.auto_renew,
                )
            deployments.append(dep)
        metering.usage_meter(now=WINDOW_END, since=WINDOW_START)
        by_sql = {
            (r.deployment_id, r.hour, r.product, r.tier_id): (r.seconds, r.unit_price)
            for r in UsageRecord.objects.filter(deployment__in=deployments)
        }
        assert all(r.currency == world["currency"] for r in UsageRecord.objects.filter(deployment__in=deployments))
        expected = reference(world, deployments, tiers, world["currency"])
        assert by_sql == expected, f"seed {SEED}"
        per_hour: dict = {}
        for (deployment_id, hour, _product, _tier), (seconds, _price) in by_sql.items():
            per_hour[(deployment_id, hour)] = per_hour.get((deployment_id, hour), 0) + seconds
        assert max(per_hour.values(), default=0) <= 3600, f"seed {SEED}"
        transaction.set_rollback(True)


def _day(day: int) -> datetime.date:
    return datetime.date(2026, 3, day)
