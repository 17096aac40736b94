import datetime
import threading
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Q

from billing import metering
from billing.models import MeteringCursor, UsageRecord
from tests.alerts.test_tasks import eager  # noqa: F401 - fixture: tasks run inline
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
    inserted = metering.usage_meter(now=at(2026, 3, 1, 13, 5), since=at(2026, 3, 1, 10))
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
    metering.usage_meter(now=at(2026, 3, 1, 10, 59, 59), since=at(2026, 3, 1, 10))
    assert records(dep) == []


def test_missed_hours_caught_up_from_cursor_when_runs_were_skipped(owner_org, make_deployment, history):
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1, 0), None)])
    metering.usage_meter(now=at(2026, 3, 1, 1, 0, 5))
    assert [r[0] for r in records(dep)] == [at(2026, 3, 1, 0)]
    # the beat missed four runs
    metering.usage_meter(now=at(2026, 3, 1, 5, 2))
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
            results.append(metering.usage_meter(now=at(2026, 3, 2, 6), since=at(2026, 3, 1)))
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
    assert metering.usage_meter(now=at(2026, 3, 2, 6), since=at(2026, 3, 1)) == 0
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
    metering.usage_meter(now=at(2026, 3, 1, 8), since=at(2026, 3, 1))
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


def test_hour_bills_at_most_3600_seconds_when_tier_or_status_changes_at_half_a_second(
    owner_org, make_deployment, history
):
    upgraded = make_deployment(owner_org.default_project)
    change = at(2026, 3, 2, 10, 30, 0, 500_000)  # 10:30:00.5
    history(upgraded, [("running", at(2026, 3, 2, 10), change, "1k"), ("running", change, at(2026, 3, 2, 11), "2k")])
    stopped = make_deployment(owner_org.default_project)
    stop = at(2026, 3, 2, 10, 20, 0, 500_000)
    history(stopped, [("running", at(2026, 3, 2, 10), stop), ("stopped", stop, at(2026, 3, 2, 11))])
    metering.usage_meter(now=at(2026, 3, 2, 11, 2), since=at(2026, 3, 2, 10))
    # The change is at 10:30:01 once rounded, half up: 1801 + 1799 seconds (each side's duration rounded half up
    # gave 1801 + 1800). The Python reference agrees.
    billed = {(r.deployment_id, r.product, r.tier.code): r.seconds for r in UsageRecord.objects.all()}
    assert billed == {
        (upgraded.pk, "running", "1k"): 1801,
        (upgraded.pk, "running", "2k"): 1799,
        (stopped.pk, "running", "1k"): 1201,
        (stopped.pk, "retention", "1k"): 2399,
    }
    intervals, terms = metering.intervals_and_terms(at(2026, 3, 2, 10), at(2026, 3, 2, 11), Q())
    reference = metering.slot_usage(start=at(2026, 3, 2, 10), end=at(2026, 3, 2, 11), intervals=intervals, terms=terms)
    assert {(u.deployment_id, u.product, u.tier_id): u.seconds for u in reference} == {
        (r.deployment_id, r.product, r.tier_id): r.seconds for r in UsageRecord.objects.all()
    }


# --- Per-second tiers, no lost hours, renewals -------------------------------------------------------------------


def test_seconds_before_and_after_an_upgrade_bill_at_their_own_tier_when_tier_changes_inside_an_hour(
    owner_org, make_deployment, history, tiers
):
    from billing import invoicing
    from billing.models import Invoice
    from tests.billing.test_scenarios import set_account

    set_account(owner_org)
    dep = make_deployment(owner_org.default_project)
    # 1k from 12:00, upgraded to 10k at 12:50, gone at 13:00 (no retention afterwards)
    history(dep, [("running", at(2026, 3, 5, 12), at(2026, 3, 5, 12, 50), "1k")])
    history(dep, [("running", at(2026, 3, 5, 12, 50), at(2026, 3, 5, 13), "10k")])
    metering.usage_meter(now=at(2026, 3, 5, 14), since=at(2026, 3, 5, 12))
    assert sorted((r.tier.code, r.seconds, r.unit_price) for r in UsageRecord.objects.filter(deployment=dep)) == [
        ("10k", 600, Decimal("1.49")),
        ("1k", 3000, Decimal("0.36")),
    ]
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    invoice = Invoice.objects.get()
    # 50 min at 0.36 = 0.30; 10 min at 1.49 = 0.248333… -> 0.25; 0.55 in all (the whole hour at 10k was 1.49)
    assert sorted(invoice.lines.values_list("tier__code", "seconds", "amount")) == [("10k", 600, 25), ("1k", 3000, 30)]
    assert invoice.subtotal == 55


def test_nine_days_without_the_beat_metered_in_full_in_daily_batches_when_it_comes_back(
    owner_org, make_deployment, history, settings, monkeypatch
):
    settings.BILLING_METERING_BATCH_HOURS = 24
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    metering.usage_meter(now=at(2026, 3, 1, 0, 5), since=at(2026, 2, 28, 23))
    assert MeteringCursor.objects.get().metered_until == at(2026, 3, 1)
    batches = []
    real = metering._meter_sql

    def observed(start, end, deployment_ids=None):
        batches.append((start, end))
        return real(start, end, deployment_ids)

    monkeypatch.setattr(metering, "_meter_sql", observed)
    # the beat was down from 1 March 00:05 to 10 March 00:05: nine days, 216 hours, past any catch-up window
    assert metering.usage_meter(now=at(2026, 3, 10, 0, 5)) == 216
    assert len(batches) == 9 and all(end - start == datetime.timedelta(hours=24) for start, end in batches)
    assert UsageRecord.objects.filter(deployment=dep).count() == 216
    assert sum(UsageRecord.objects.filter(deployment=dep).values_list("seconds", flat=True)) == 216 * 3600
    assert MeteringCursor.objects.get().metered_until == at(2026, 3, 10)


def test_first_run_meters_from_the_first_billable_hour_when_no_cursor_exists(owner_org, make_deployment, history):
    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1, 7, 30), None)])
    assert MeteringCursor.objects.count() == 0
    # 07:30-08:00, then 08:00 to 12:00: five records, none lost to a missing cursor
    assert metering.usage_meter(now=at(2026, 3, 1, 12, 1)) == 5
    assert sorted(UsageRecord.objects.values_list("seconds", flat=True)) == [1800, 3600, 3600, 3600, 3600]


def test_late_usage_goes_on_the_next_invoice_once_when_metered_after_its_month_was_invoiced(
    owner_org, make_deployment, history
):
    from billing import invoicing
    from billing.models import Invoice
    from tests.billing.test_scenarios import set_account

    set_account(owner_org)
    steady = make_deployment(owner_org.default_project, name="steady")
    history(steady, [("running", at(2026, 3, 31, 23), at(2026, 4, 30, 23))])
    invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 0, 20))
    march = Invoice.objects.get(period_start=datetime.date(2026, 3, 1))
    assert march.subtotal == 36  # one hour at 0.36
    # The reconciler of another deployment reports its March hours only now: they are metered late.
    late = make_deployment(owner_org.default_project, name="late")
    history(late, [("running", at(2026, 3, 31, 22), at(2026, 4, 1, 2))])
    metering.usage_meter(now=at(2026, 4, 1, 3), since=at(2026, 3, 31, 22))
    assert invoicing.invoices_close(month=datetime.date(2026, 3, 1), now=at(2026, 4, 1, 3)).invoices == []
    march.refresh_from_db()
    assert march.subtotal == 36  # an issued invoice never changes

    invoicing.invoices_close(month=datetime.date(2026, 4, 1), now=at(2026, 5, 1, 0, 20))
    invoicing.invoices_close(month=datetime.date(2026, 4, 1), now=at(2026, 5, 1, 1))  # a re-run adds nothing
    april = Invoice.objects.get(period_start=datetime.date(2026, 4, 1))
    lines = {(line.description.split(",")[0].split(" ")[0], line.usage_month): line for line in april.lines.all()}
    late_line = lines[("late", datetime.date(2026, 3, 1))]
    # 22:00-24:00 on 31 March: 2 h x 0.36 = 0.72, labelled with its month
    assert (late_line.seconds, late_line.amount) == (7200, 72)
    assert "late usage for March 2026" in late_line.description
    assert lines[("late", datetime.date(2026, 4, 1))].seconds == 7200  # 00:00-02:00 on 1 April, its own line
    assert lines[("steady", datetime.date(2026, 4, 1))].seconds == 719 * 3600
    # 719 h + 2 h + 2 h at 0.36 = 258.84 + 0.72 + 0.72
    assert april.subtotal == 25884 + 72 + 72
    assert not UsageRecord.objects.filter(invoice__isnull=True, hour__lt=at(2026, 5, 1)).exists()


def test_no_hourly_second_between_term_end_and_renewal_run_when_annual_plan_renews_itself(
    org_factory, make_deployment, history
):
    from billing import annual

    renewing, lapsing = org_factory(), org_factory()
    subs = {}
    for org, auto_renew in ((renewing, True), (lapsing, False)):
        dep = make_deployment(org.default_project)
        history(dep, [("running", at(2026, 3, 1), None)])
        subs[auto_renew] = annual.annual_subscription_start(
            deployment=dep, actor=None, auto_renew=auto_renew, now=at(2026, 3, 1, 13, 20)
        )
    # Both terms end on 1 March 2027 at 13:20. Metering runs at 16:05, before the renewal run of 16:10.
    metering.usage_meter(now=at(2027, 3, 1, 16, 5), since=at(2027, 3, 1, 12))
    assert not UsageRecord.objects.filter(deployment=subs[True].deployment).exists()
    # The term that ends without renewal is hourly again from 13:20:00 exactly: 40 min, then whole hours.
    assert list(
        UsageRecord.objects.filter(deployment=subs[False].deployment).order_by("hour").values_list("hour", "seconds")
    ) == [(at(2027, 3, 1, 13), 2400), (at(2027, 3, 1, 14), 3600), (at(2027, 3, 1, 15), 3600)]
    assert annual.annual_renewals_process(now=at(2027, 3, 1, 16, 10))["renewed"] == 1
    metering.usage_meter(now=at(2027, 3, 1, 18, 5))
    assert not UsageRecord.objects.filter(deployment=subs[True].deployment).exists()  # the new term from 13:20


def test_hourly_from_the_term_end_second_when_renewal_is_turned_off_after_metering_passed_it(
    owner_org, make_deployment, history
):
    from billing import annual
    from billing.models import AnnualSubscription

    dep = make_deployment(owner_org.default_project)
    history(dep, [("running", at(2026, 3, 1), None)])
    sub = annual.annual_subscription_start(deployment=dep, actor=None, auto_renew=True, now=at(2026, 3, 1, 13, 20))
    metering.usage_meter(now=at(2027, 3, 1, 16, 5), since=at(2027, 3, 1, 12))
    assert not UsageRecord.objects.filter(deployment=dep).exists()  # still waiting for the renewal decision
    AnnualSubscription.objects.filter(pk=sub.pk).update(auto_renew=False)  # turned off in the backoffice, late
    assert annual.annual_renewals_process(now=at(2027, 3, 1, 16, 10))["ended"] == 1
    # the skipped hours are metered at the decision: 13:20-14:00, 14:00-15:00, 15:00-16:00
    assert list(UsageRecord.objects.filter(deployment=dep).order_by("hour").values_list("hour", "seconds")) == [
        (at(2027, 3, 1, 13), 2400),
        (at(2027, 3, 1, 14), 3600),
        (at(2027, 3, 1, 15), 3600),
    ]


def test_hours_metered_before_a_crash_was_noticed_are_metered_again_without_the_time_it_was_down(
    owner_org, make_deployment, history, eager, django_capture_on_commit_callbacks
):
    """A crash noticed late (the watcher or the workers were down past the hourly run) ends the running interval
    when the broker was last seen alive, in hours already metered: those hours are metered again."""
    from django.utils import timezone

    from deployments import reconcile

    now = timezone.now()
    hour = metering.floor_hour(now)
    dep = make_deployment(owner_org.default_project)
    other = make_deployment(owner_org.default_project)
    for each in (dep, other):
        history(each, [("running", hour - datetime.timedelta(hours=3), None)])
    metering.usage_meter(now=now, since=hour - datetime.timedelta(hours=3))
    assert [seconds for _h, _p, seconds, _u in records(dep)] == [3600, 3600, 3600]
    last_seen = hour - datetime.timedelta(hours=2) + datetime.timedelta(minutes=30)
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile._record_crash(dep.pk, message="mosquitto exited", last_seen_alive=last_seen.timestamp())
    assert [(h, p, seconds) for h, p, seconds, _u in records(dep)] == [
        (hour - datetime.timedelta(hours=3), "running", 3600),
        (hour - datetime.timedelta(hours=2), "running", 1800),
    ]
    assert [seconds for _h, _p, seconds, _u in records(other)] == [3600, 3600, 3600]
    assert MeteringCursor.objects.get().metered_until == hour


def test_an_invoiced_hour_keeps_its_record_when_the_time_before_it_is_corrected(owner_org, make_deployment, history):
    import datetime as dt

    from billing import invoicing
    from billing.models import Invoice

    dep = make_deployment(owner_org.default_project)
    [interval] = history(dep, [("running", at(2026, 3, 31, 20), None)])
    metering.usage_meter(now=at(2026, 4, 1, 2), since=at(2026, 3, 31, 20))
    invoicing.invoices_close(month=dt.date(2026, 3, 1), now=at(2026, 4, 1, 1))
    invoice = Invoice.objects.get(billing_account__organization=owner_org.organization)
    before = records(dep)
    interval.ended_at = at(2026, 3, 31, 22, 30)
    interval.save()
    metering.usage_remeter(deployment_id=dep.pk, since=at(2026, 3, 31, 22, 30))
    after = records(dep)
    march = [r for r in after if r[0] < at(2026, 4, 1)]
    assert march == [r for r in before if r[0] < at(2026, 4, 1)]  # invoiced: as billed
    assert UsageRecord.objects.filter(deployment=dep, invoice=invoice).count() == len(march)
    assert [r for r in after if r[0] >= at(2026, 4, 1)] == []  # April's hours, not invoiced: metered again, none run
