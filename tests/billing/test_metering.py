import threading
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Q

from billing import metering
from billing.models import MeteringCursor, UsageRecord
from tests.billing.conftest import at

pytestmark = pytest.mark.django_db


def records(deployment):
    return list(
        UsageRecord.objects.filter(deployment=deployment)
        .order_by("hour", "product")
        .values_list("hour", "product", "seconds", "unit_price")
    )


def test_running_and_stopped_seconds_recorded_per_hour_when_status_changes_mid_hour(
    owner_org, make_deployment, history
):
    dep = make_deployment(owner_org.default_project)
    history(
        dep, [("running", at(2026, 3, 1, 10, 15), at(2026, 3, 1, 11, 40)), ("stopped", at(2026, 3, 1, 11, 40), None)]
    )
    inserted = metering.meter_usage(now=at(2026, 3, 1, 13, 5), since=at(2026, 3, 1, 10))
    assert inserted == 4
    assert records(dep) == [
        (at(2026, 3, 1, 10), "running", 2700, Decimal("0.36")),
        (at(2026, 3, 1, 11), "retention", 1200, Decimal("0.06")),
        (at(2026, 3, 1, 11), "running", 2400, Decimal("0.36")),
        (at(2026, 3, 1, 12), "retention", 3600, Decimal("0.06")),
    ]


def test_current_hour_not_metered_when_it_has_not_ended(owner_org, make_deployment, history):
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1, 10), None)])
    metering.meter_usage(now=at(2026, 3, 1, 10, 59, 59), since=at(2026, 3, 1, 10))
    assert records(dep) == []


def test_missed_hours_caught_up_from_cursor_when_runs_were_skipped(owner_org, make_deployment, history):
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1, 0), None)])
    metering.meter_usage(now=at(2026, 3, 1, 1, 0, 5))
    assert [r[0] for r in records(dep)] == [at(2026, 3, 1, 0)]
    # the beat missed four runs
    metering.meter_usage(now=at(2026, 3, 1, 5, 2))
    assert [r[0] for r in records(dep)] == [at(2026, 3, 1, h) for h in range(5)]
    assert MeteringCursor.objects.get().metered_until == at(2026, 3, 1, 5)


@pytest.mark.django_db(transaction=True)
def test_each_hour_recorded_once_when_two_runs_race_and_one_reruns(owner_org, make_deployment, history):
    deployments = [make_deployment(owner_org.default_project) for _ in range(30)]
    for dep in deployments:
        history(
            dep, [("running", at(2026, 3, 1, 0, 30), at(2026, 3, 2, 3, 10)), ("stopped", at(2026, 3, 2, 3, 10), None)]
        )
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run():
        from django.db import connection as thread_connection

        try:
            barrier.wait()
            results.append(metering.meter_usage(now=at(2026, 3, 2, 6), since=at(2026, 3, 1)))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # 24 running hours (00:30 start) + 3 running hours and 1 split hour on the 2nd + 3 stopped hours
    per_deployment = 24 + 4 + 3
    assert sum(results) == 30 * per_deployment
    assert metering.meter_usage(now=at(2026, 3, 2, 6), since=at(2026, 3, 1)) == 0
    call_command("meter_usage", "--now", "2026-03-02T06:30:00Z", "--since", "2026-03-01T00:00:00Z")
    assert UsageRecord.objects.count() == 30 * per_deployment
    one = records(deployments[0])
    assert one[0] == (at(2026, 3, 1, 0), "running", 1800, Decimal("0.36"))
    assert (at(2026, 3, 2, 3), "running", 600, Decimal("0.36")) in one
    assert (at(2026, 3, 2, 3), "retention", 3000, Decimal("0.06")) in one


def test_set_based_sql_matches_python_reference_when_history_is_mixed(owner_org, make_deployment, history):
    assert connection.vendor == "postgresql"
    a = make_deployment(owner_org.default_project, tier="1k")
    b = make_deployment(owner_org.default_project, tier="2k")
    history(
        a,
        [
            ("running", at(2026, 3, 1, 0, 0, 10), at(2026, 3, 1, 2, 30), "1k"),
            ("running", at(2026, 3, 1, 2, 30), at(2026, 3, 1, 4, 45, 30), "2k"),
            ("stopped", at(2026, 3, 1, 4, 45, 30), None, "2k"),
        ],
    )
    history(b, [("stopped", at(2026, 3, 1, 1, 20), at(2026, 3, 1, 1, 25)), ("running", at(2026, 3, 1, 1, 25), None)])
    metering.meter_usage(now=at(2026, 3, 1, 8), since=at(2026, 3, 1))
    by_sql = {
        (r.deployment_id, r.hour, r.product, r.tier_id): (r.seconds, r.unit_price) for r in UsageRecord.objects.all()
    }
    intervals, terms = metering.intervals_and_terms(at(2026, 3, 1), at(2026, 3, 1, 8), Q())
    book = metering.PriceBook()
    by_python = {
        (u.deployment_id, u.hour, u.product, u.tier_id): (
            u.seconds,
            book.price(tier_id=u.tier_id, product=u.product, currency="USD", on=u.hour.date()),
        )
        for u in metering.slot_usage(start=at(2026, 3, 1), end=at(2026, 3, 1, 8), intervals=intervals, terms=terms)
    }
    assert by_sql == by_python
    # the hour of the tier change bills 30 minutes on each tier, each at its own price
    tiers = {t.code: t.pk for t in a.plan.tiers.all()}
    assert by_sql[(a.pk, at(2026, 3, 1, 2), "running", tiers["1k"])] == (1800, Decimal("0.36"))
    assert by_sql[(a.pk, at(2026, 3, 1, 2), "running", tiers["2k"])] == (1800, Decimal("0.5"))
