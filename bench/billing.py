"""Billing at scale: meter one hour for 100,000 running deployments (a tenth of them change tier inside the hour, so
that hour bills two per-second segments), then close the month for the 10,000 billing accounts holding them (usage
lines, a traffic line per deployment, credits, VAT and its amount in euros); then record one traffic sample for each
of 10,000 deployments as the collectors do. Each beside a hand-written SQL floor doing the same work in the same run.

Run it with scripts/bench.sh bench/billing.py (a throwaway PostgreSQL; it creates and fills tables). It never gates
the test suite. Targets: metering an hour < 10 s, closing the month < 120 s, each within 3x of its floor.
BENCH_ACCOUNTS, BENCH_PER_ACCOUNT and BENCH_TRAFFIC_SAMPLES change the size.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import setup_django  # noqa: E402

setup_django()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "10000"))
PER_ACCOUNT = int(os.environ.get("BENCH_PER_ACCOUNT", "10"))
TRAFFIC_SAMPLES = int(os.environ.get("BENCH_TRAFFIC_SAMPLES", "10000"))
UTC = dt.UTC
MONTH = dt.date(2026, 3, 1)
HOUR = dt.datetime(2026, 3, 31, 23, tzinfo=UTC)  # the month's last hour: the close has nothing left to catch up
MONTH_END = dt.datetime(2026, 4, 1, tzinfo=UTC)
TIER_CHANGE = HOUR + dt.timedelta(minutes=25)
COUNTRIES = [("US", "94105"), ("DE", "10115"), ("FR", "75001"), ("FI", "00100"), ("NL", "1012 AB")]
GIB = 1024**3


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def setup() -> None:
    from billing.models import BillingAccount, BillingDetails, CreditGrant, ExchangeRate, TrafficRecord
    from deployments.models import Deployment, Plan, Region, StatusInterval, Tier
    from organizations.models import Organization
    from projects.models import Project

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    plan = Plan.objects.get(code="dedicated")
    tiers = list(Tier.objects.filter(plan=plan).order_by("sort_order"))
    region = Region.objects.get(code="local")
    orgs = Organization.objects.bulk_create([Organization(name=f"Bench {i}") for i in range(ACCOUNTS)], batch_size=5000)
    projects = Project.objects.bulk_create(
        [Project(organization=o, name="Default project", is_default=True) for o in orgs], batch_size=5000
    )
    details = {
        "email": "ap@bench.example",
        "address": "1 Bench Street",
        "city": "Benchville",
    }
    accounts = BillingAccount.objects.bulk_create(
        [
            BillingAccount(
                organization=o,
                country=COUNTRIES[i % len(COUNTRIES)][0],
                postal_code=COUNTRIES[i % len(COUNTRIES)][1],
                company="" if i % 2 else f"Company {i}",
                **details,
            )
            for i, o in enumerate(orgs)
        ],
        batch_size=5000,
    )
    BillingDetails.objects.bulk_create(
        [
            BillingDetails(
                billing_account=a,
                valid_from=HOUR - dt.timedelta(days=40),
                country=a.country,
                postal_code=a.postal_code,
                company=a.company,
                **details,
            )
            for a in accounts
        ],
        batch_size=5000,
    )
    ExchangeRate.objects.create(currency="USD", on=HOUR.date(), rate="1.0823", source="bench")
    CreditGrant.objects.bulk_create(
        [
            CreditGrant(
                billing_account=a,
                kind="promotion",
                currency="USD",
                amount=50,
                remaining=50,
                granted_at=HOUR - dt.timedelta(days=40),
            )
            for a in accounts[::10]
        ],
        batch_size=5000,
    )
    deployments = Deployment.objects.bulk_create(
        [
            Deployment(project=p, name=f"d{j}", plan=plan, tier=tiers[j % len(tiers)], region=region, status="running")
            for p in projects
            for j in range(PER_ACCOUNT)
        ],
        batch_size=10000,
    )
    intervals = []
    for i, d in enumerate(deployments):
        start, end = HOUR - dt.timedelta(minutes=20), MONTH_END + dt.timedelta(minutes=5)
        if i % 10 == 0:  # upgraded from 1k to 10k at 23:25: the hour bills 25 min at 0.36 and 35 min at 1.49
            intervals.append(
                StatusInterval(deployment=d, status="running", tier=tiers[0], started_at=start, ended_at=TIER_CHANGE)
            )
            intervals.append(
                StatusInterval(deployment=d, status="running", tier=tiers[-1], started_at=TIER_CHANGE, ended_at=end)
            )
        else:
            intervals.append(
                StatusInterval(deployment=d, status="running", tier_id=d.tier_id, started_at=start, ended_at=end)
            )
    StatusInterval.objects.bulk_create(intervals, batch_size=10000)
    # a day of traffic per deployment: a tenth above the 100 GiB included
    TrafficRecord.objects.bulk_create(
        [
            TrafficRecord(
                deployment=d,
                organization_id=d.project.organization_id,
                day=HOUR.date(),
                bytes=(130 if i % 10 == 3 else 5) * GIB,
            )
            for i, d in enumerate(deployments)
        ],
        batch_size=10000,
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(
        f"setup: {len(orgs)} accounts, {len(deployments)} deployments, {len(intervals)} intervals in "
        f"{time.perf_counter() - started:.1f} s"
    )


def meter_floor() -> int:
    """One INSERT … SELECT of the same rows into the real usage table (its constraints and foreign keys checked),
    rolled back afterwards: overlap, price, conflict handling, nothing else."""
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute(
            """
            INSERT INTO billing_usagerecord (deployment_id, organization_id, tier_id, hour, product, seconds, unit_price,
                                     currency, created_at)
            SELECT si.deployment_id, p.organization_id, si.tier_id, %(h)s,
                   'running',
                   EXTRACT(EPOCH FROM LEAST(COALESCE(si.ended_at, %(e)s), %(e)s) - GREATEST(si.started_at, %(h)s))::int,
                   pr.amount, 'USD', now()
            FROM deployments_statusinterval si
            JOIN deployments_deployment d ON d.id = si.deployment_id
            JOIN projects_project p ON p.id = d.project_id
            JOIN deployments_tier t ON t.id = si.tier_id
            JOIN deployments_price pr ON pr.plan_id = t.plan_id AND pr.tier_id = si.tier_id AND pr.kind = 'hourly'
                 AND pr.currency = 'USD'
            WHERE si.status = 'running' AND si.started_at < %(e)s AND (si.ended_at IS NULL OR si.ended_at > %(h)s)
            ON CONFLICT DO NOTHING
        """,
            {"h": HOUR, "e": HOUR + dt.timedelta(hours=1)},
        )
        rows = cursor.rowcount
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the foreign keys are checked, as at a commit
        transaction.set_rollback(True)
    return rows


def close_floor() -> int:
    """The month close in set-based statements on the real tables, rolled back afterwards: invoices with numbers,
    subtotals (usage and traffic lines), credits, tax and the tax in euros; their lines; the usage and traffic marked
    invoiced; the credits consumed."""
    rates = "CASE ba.country WHEN 'DE' THEN 19 WHEN 'FR' THEN 20 WHEN 'FI' THEN 25.5 WHEN 'NL' THEN 21 ELSE 0 END"
    params: dict[str, dt.date | int] = {
        "s": MONTH,
        "e": MONTH_END,
        "last": MONTH_END.date() - dt.timedelta(days=1),
        "gib": GIB,
    }
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute(
            f"""
            WITH lines AS (
                SELECT organization_id, ROUND(SUM(seconds) * unit_price * 100 / 3600)::bigint AS amount
                FROM billing_usagerecord WHERE hour < %(e)s AND invoice_id IS NULL
                GROUP BY organization_id, deployment_id, product, tier_id, unit_price, date_trunc('month', hour)
                UNION ALL
                SELECT organization_id, ROUND(GREATEST(SUM(bytes) - 100 * %(gib)s::bigint, 0) * 0.15 * 100 / %(gib)s::bigint)::bigint
                FROM billing_trafficrecord WHERE day < %(e)s AND invoice_id IS NULL
                GROUP BY organization_id, deployment_id, date_trunc('month', day)
            ), sums AS (
                SELECT organization_id, SUM(amount)::bigint AS subtotal FROM lines GROUP BY organization_id
            ), credit AS (
                SELECT billing_account_id, SUM(remaining)::bigint AS available FROM billing_creditgrant
                WHERE remaining > 0 GROUP BY billing_account_id
            ), settled AS (
                SELECT ba.id AS account_id, s.subtotal, LEAST(s.subtotal, COALESCE(c.available, 0)) AS credits,
                       {rates} AS rate, row_number() OVER (ORDER BY ba.id) AS n
                FROM sums s JOIN billing_billingaccount ba ON ba.organization_id = s.organization_id
                LEFT JOIN credit c ON c.billing_account_id = ba.id
            ), taxed AS (
                SELECT *, ROUND((subtotal - credits) * rate / 100) AS tax FROM settled
            )
            INSERT INTO billing_invoice (public_id, billing_account_id, kind, status, number, currency,
                                         period_start, period_end, subtotal, credits_applied, tax_treatment,
                                         tax_rate, tax_mention, tax, total, customer, seller, issued_at, due_at,
                                         payment_attempts, overdue_reminders_sent, created_at, hold_reasons, notes,
                                         vat_currency, vat_exchange_rate, vat_exchange_rate_date, tax_in_vat_currency)
            SELECT 'inv_f' || n, account_id, 'monthly', 'open', 'F-2026-' || lpad(n::text, 6, '0'), 'USD', %(s)s,
                   %(last)s, subtotal, credits, 'x', rate, '', tax, subtotal - credits + tax, '{{}}', '{{}}', now(),
                   now(), 0, 0, now(), '[]', '[]', 'EUR', 0.923958237088, %(last)s, ROUND(tax * 0.923958237088)
            FROM taxed
        """,
            params,
        )
        invoices = cursor.rowcount
        cursor.execute(
            """
            INSERT INTO billing_invoiceline (invoice_id, deployment_id, product, description, seconds, quantity,
                                             unit, unit_price, amount, tier_id, usage_month)
            SELECT i.id, u.deployment_id, u.product, d.name || ' (' || d.public_id || ')', SUM(u.seconds),
                   ROUND(SUM(u.seconds) / 3600.0, 6), 'hour', u.unit_price,
                   ROUND(SUM(u.seconds) * u.unit_price * 100 / 3600), u.tier_id, date_trunc('month', u.hour)
            FROM billing_usagerecord u
            JOIN billing_billingaccount ba ON ba.organization_id = u.organization_id
            JOIN billing_invoice i ON i.billing_account_id = ba.id AND i.kind = 'monthly' AND i.period_start = %(s)s
            JOIN deployments_deployment d ON d.id = u.deployment_id
            WHERE u.hour < %(e)s AND u.invoice_id IS NULL
            GROUP BY i.id, u.deployment_id, u.product, u.tier_id, u.unit_price, date_trunc('month', u.hour), d.name,
                     d.public_id
        """,
            params,
        )
        cursor.execute(
            """
            INSERT INTO billing_invoiceline (invoice_id, deployment_id, product, description, quantity, unit,
                                             unit_price, amount, usage_month, bytes)
            SELECT i.id, t.deployment_id, 'traffic', d.name || ' (' || d.public_id || '), traffic',
                   ROUND(GREATEST(SUM(t.bytes) - 100 * %(gib)s::bigint, 0) / %(gib)s::bigint::numeric, 6), 'GiB', 0.15,
                   ROUND(GREATEST(SUM(t.bytes) - 100 * %(gib)s::bigint, 0) * 0.15 * 100 / %(gib)s::bigint),
                   date_trunc('month', t.day), SUM(t.bytes)
            FROM billing_trafficrecord t
            JOIN billing_billingaccount ba ON ba.organization_id = t.organization_id
            JOIN billing_invoice i ON i.billing_account_id = ba.id AND i.kind = 'monthly' AND i.period_start = %(s)s
            JOIN deployments_deployment d ON d.id = t.deployment_id
            WHERE t.day < %(e)s AND t.invoice_id IS NULL
            GROUP BY i.id, t.deployment_id, date_trunc('month', t.day), d.name, d.public_id
        """,
            params,
        )
        for table, column in (("billing_usagerecord", "hour"), ("billing_trafficrecord", "day")):
            cursor.execute(
                f"""
                UPDATE {table} u SET invoice_id = i.id
                FROM billing_billingaccount ba
                JOIN billing_invoice i ON i.billing_account_id = ba.id AND i.kind = 'monthly'
                                      AND i.period_start = %(s)s
                WHERE ba.organization_id = u.organization_id AND u.{column} < %(e)s AND u.invoice_id IS NULL
            """,
                params,
            )
        cursor.execute("UPDATE billing_creditgrant SET remaining = 0 WHERE remaining > 0")
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        transaction.set_rollback(True)
    return invoices


TRAFFIC_FLOOR_SQL = (
    "UPDATE billing_trafficcounter SET sampled_at = %s, bytes_received = %s, bytes_sent = %s WHERE deployment_id = %s",
    "INSERT INTO billing_trafficrecord (deployment_id, organization_id, day, bytes) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (deployment_id, day) WHERE invoice_id IS NULL "
    "DO UPDATE SET bytes = billing_trafficrecord.bytes + EXCLUDED.bytes",
)


def traffic_samples() -> tuple[float, float, int]:
    """One reading per deployment through billing.traffic (each its own transaction, as a collector task does),
    beside the floor: the counter update and the day's upsert as two plain statements per reading."""
    from billing.models import TrafficCounter
    from billing.traffic import traffic_counters_record
    from deployments.models import Deployment

    ids = list(Deployment.objects.order_by("pk").values_list("pk", "project__organization_id")[: TRAFFIC_SAMPLES * 2])
    base = dt.datetime(2026, 4, 2, 12, tzinfo=UTC)
    TrafficCounter.objects.bulk_create(
        [
            TrafficCounter(deployment_id=d, sampled_at=base, bytes_received=0, bytes_sent=0, uptime_seconds=600)
            for d, _ in ids
        ],
        batch_size=10000,
    )
    floor_ids, bench_ids = ids[:TRAFFIC_SAMPLES], ids[TRAFFIC_SAMPLES:]
    at = base + dt.timedelta(minutes=1)
    started = time.perf_counter()
    for deployment_id, organization_id in floor_ids:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(TRAFFIC_FLOOR_SQL[0], [at, 1500, 2500, deployment_id])
            cursor.execute(TRAFFIC_FLOOR_SQL[1], [deployment_id, organization_id, at.date(), 4000])
    floor = time.perf_counter() - started
    started = time.perf_counter()
    counted = 0
    for deployment_id, _ in bench_ids:
        counted += traffic_counters_record(
            deployment_id=deployment_id, at=at, bytes_received=1500, bytes_sent=2500, uptime_seconds=660
        )
    bench = time.perf_counter() - started
    assert counted == 4000 * len(bench_ids), counted
    return bench, floor, len(bench_ids)


def main() -> None:
    from billing import invoicing, metering
    from billing.models import Invoice, InvoiceLine, UsageRecord

    setup()
    segments = ACCOUNTS * PER_ACCOUNT + len(range(0, ACCOUNTS * PER_ACCOUNT, 10))
    floor_meter_s, floor_rows = timed(meter_floor)
    meter_s, rows = timed(lambda: metering.usage_meter(now=MONTH_END + dt.timedelta(minutes=1), since=HOUR))
    assert rows == floor_rows == segments, (rows, floor_rows, segments)
    print(
        f"meter one hour, {ACCOUNTS * PER_ACCOUNT} deployments ({rows} per-second tier segments): {meter_s:.2f} s  "
        f"(floor {floor_meter_s:.2f} s, ratio {meter_s / floor_meter_s:.2f}x; target < 10 s and < 3x)",
        flush=True,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    floor_close_s, floor_invoices = timed(close_floor)
    close_s, result = timed(lambda: invoicing.invoices_close(month=MONTH, now=MONTH_END + dt.timedelta(minutes=30)))
    lines = InvoiceLine.objects.count()
    print(
        f"close the month, {ACCOUNTS} accounts / {lines} lines (traffic included): {close_s:.2f} s  "
        f"(floor {floor_close_s:.2f} s, ratio {close_s / floor_close_s:.2f}x; target < 120 s and < 3x)",
        flush=True,
    )
    assert len(result.invoices) == floor_invoices == ACCOUNTS and not result.held, (
        len(result.invoices),
        floor_invoices,
    )
    assert lines == segments + ACCOUNTS * PER_ACCOUNT  # usage segments + a traffic line each
    assert not UsageRecord.objects.filter(invoice__isnull=True).exists()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # the tables the close filled: without it the check below plans a nested loop
    mismatched = Invoice.objects.raw(
        "SELECT i.id FROM billing_invoice i JOIN billing_invoiceline l ON l.invoice_id = i.id "
        "GROUP BY i.id HAVING SUM(l.amount) <> i.subtotal"
    )
    assert not list(mismatched), "an invoice does not reconcile"
    assert Invoice.objects.filter(tax__gt=0, tax_in_vat_currency__isnull=True).count() == 0
    traffic_s, traffic_floor_s, samples = traffic_samples()
    print(
        f"record a traffic sample, {samples} deployments one by one: {traffic_s:.2f} s, "
        f"{traffic_s / samples * 1000:.2f} ms each  (floor {traffic_floor_s:.2f} s, ratio "
        f"{traffic_s / traffic_floor_s:.2f}x)",
        flush=True,
    )


if __name__ == "__main__":
    main()
