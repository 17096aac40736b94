"""Two month closes, a repeated close and a late-usage metering run at once, on real connections: numbers stay
gap-free, every second is on exactly one invoice line, none on two."""

import datetime
import threading

import pytest
from django.db.models import Sum

from billing import invoicing, metering
from billing.models import Invoice, InvoiceLine, UsageRecord
from tests.billing.conftest import at
from tests.billing.test_scenarios import set_account

pytestmark = pytest.mark.django_db(transaction=True)
MARCH, APRIL, MAY = datetime.date(2026, 3, 1), datetime.date(2026, 4, 1), datetime.date(2026, 5, 1)


def test_numbers_gap_free_and_no_second_on_two_lines_when_closes_and_late_metering_race(
    org_factory, make_deployment, history
):
    orgs = [org_factory() for _ in range(6)]
    late = []
    for i, org in enumerate(orgs):
        set_account(org)
        history(make_deployment(org.default_project, name="steady"), [("running", at(2026, 3, 30), at(2026, 4, 2))])
        if i % 2 == 0:
            late.append(make_deployment(org.default_project, name="late"))
    metering.usage_meter(now=at(2026, 4, 30, 23, 5), since=at(2026, 3, 30))
    # the reconciler reports these hours only now: 31 March 20:00 to 1 April 04:00, metered while the closes run
    for dep in late:
        history(dep, [("running", at(2026, 3, 31, 20), at(2026, 4, 1, 4))])

    barrier = threading.Barrier(4)
    errors = []

    def run(fn):
        from django.db import connection

        try:
            barrier.wait()
            fn()
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    jobs = [
        lambda: invoicing.invoices_close(month=MARCH, now=at(2026, 4, 1, 0, 20)),
        lambda: invoicing.invoices_close(month=MARCH, now=at(2026, 4, 1, 0, 21)),
        lambda: invoicing.invoices_close(month=APRIL, now=at(2026, 5, 1, 0, 20)),
        lambda: metering.usage_meter(now=at(2026, 5, 1, 0, 5), since=at(2026, 3, 31, 20)),
    ]
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    # whatever the interleaving, a later close sweeps what landed after the others (late usage)
    invoicing.invoices_close(month=MAY, now=at(2026, 6, 1, 0, 20))

    numbers = sorted(Invoice.objects.exclude(status="draft").values_list("number", flat=True))
    assert numbers == [f"MQC-2026-{n:06d}" for n in range(1, len(numbers) + 1)]
    assert not UsageRecord.objects.filter(invoice__isnull=True).exists()
    # 6 x 72 h steady (30 March to 2 April) + 3 x 8 h late
    total = 6 * 72 * 3600 + 3 * 8 * 3600
    assert UsageRecord.objects.aggregate(s=Sum("seconds"))["s"] == total
    assert InvoiceLine.objects.filter(product="running").aggregate(s=Sum("seconds"))["s"] == total
    for invoice in Invoice.objects.all():
        attached = UsageRecord.objects.filter(invoice=invoice).aggregate(s=Sum("seconds"))["s"] or 0
        assert (invoice.lines.aggregate(s=Sum("seconds"))["s"] or 0) == attached
    assert Invoice.objects.filter(period_start=MARCH).count() <= len(orgs)  # never two for one account and month
