"""Billing at scale: meter one hour for 100,000 running deployments, then close the month for the 10,000 billing
accounts holding them; each beside a hand-written set-based SQL floor doing the same work in the same run.

Run against a throwaway PostgreSQL (it creates and fills tables):
    bash -c 'source scripts/services.sh && services_start && CONTROLPLANE_ENV=test .venv/bin/python bench/billing.py'
It never gates the test suite. Targets (issue 4): metering an hour < 10 s, closing the month < 120 s, each within 3x
of its floor. BENCH_ACCOUNTS and BENCH_PER_ACCOUNT change the size.
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
UTC = dt.UTC
MONTH = dt.date(2026, 3, 1)
HOUR = dt.datetime(2026, 3, 31, 23, tzinfo=UTC)  # the month's last hour: the close has nothing left to catch up
MONTH_END = dt.datetime(2026, 4, 1, tzinfo=UTC)
COUNTRIES = ["US", "DE", "FR", "FI", "NL"]


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def setup() -> None:
    from billing.models import BillingAccount, CreditGrant
    from deployments.models import Deployment, Plan, Region, StatusInterval, Tier
    from organizations.models import Organization
    from projects.models import Project

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    plan = Plan.objects.get(code="dedicated")
    tiers = list(Tier.objects.filter(plan=plan))
    region = Region.objects.get(code="local")
    orgs = Organization.objects.bulk_create([Organization(name=f"Bench {i}") for i in range(ACCOUNTS)], batch_size=5000)
    projects = Project.objects.bulk_create(
        [Project(organization=o, name="Default project", is_default=True) for o in orgs], batch_size=5000
    )
    accounts = BillingAccount.objects.bulk_create(
        [
            BillingAccount(
                organization=o,
                country=COUNTRIES[i % len(COUNTRIES)],
                email=f"ap{i}@bench.example",
                company="" if i % 2 else f"Company {i}",
            )
            for i, o in enumerate(orgs)
        ],
        batch_size=5000,
    )
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
    StatusInterval.objects.bulk_create(
        [
            StatusInterval(
                deployment=d,
                status="running",
                tier_id=d.tier_id,
                started_at=HOUR - dt.timedelta(minutes=20),
                ended_at=MONTH_END + dt.timedelta(minutes=5),
            )
            for d in deployments
        ],
        batch_size=10000,
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"setup: {len(orgs)} accounts, {len(deployments)} deployments in {time.perf_counter() - started:.1f} s")


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
    subtotals, credits and tax; their lines; the usage marked invoiced; the credits consumed."""
    rates = "CASE ba.country WHEN 'DE' THEN 19 WHEN 'FR' THEN 20 WHEN 'FI' THEN 25.5 WHEN 'NL' THEN 21 ELSE 0 END"
    with connection.cursor() as cursor, transaction.atomic():
        cursor.execute(
            f"""
            WITH lines AS (
                SELECT organization_id, ROUND(SUM(seconds) * unit_price * 100 / 3600)::bigint AS amount
                FROM billing_usagerecord WHERE hour >= %(s)s AND hour < %(e)s AND invoice_id IS NULL
                GROUP BY organization_id, deployment_id, product, unit_price
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
            )
            INSERT INTO billing_invoice (public_id, billing_account_id, kind, status, number, currency,
                                         period_start, period_end, subtotal, credits_applied, tax_treatment,
                                         tax_rate, tax_mention, tax, total, customer, seller, issued_at, due_at,
                                         payment_attempts, overdue_reminders_sent, created_at)
            SELECT 'inv_f' || n, account_id, 'monthly', 'open', 'F-2026-' || lpad(n::text, 6, '0'), 'USD', %(s)s,
                   %(last)s, subtotal, credits, 'x', rate, '', ROUND((subtotal - credits) * rate / 100),
                   subtotal - credits + ROUND((subtotal - credits) * rate / 100), '{{}}', '{{}}', now(), now(), 0, 0,
                   now()
            FROM settled
        """,
            {"s": MONTH, "e": MONTH_END, "last": MONTH_END.date() - dt.timedelta(days=1)},
        )
        invoices = cursor.rowcount
        cursor.execute(
            """
            INSERT INTO billing_invoiceline (invoice_id, deployment_id, product, description, seconds, quantity,
                                             unit, unit_price, amount)
            SELECT i.id, u.deployment_id, u.product, d.name || ' (' || d.public_id || ')', SUM(u.seconds),
                   ROUND(SUM(u.seconds) / 3600.0, 6), 'hour', u.unit_price,
                   ROUND(SUM(u.seconds) * u.unit_price * 100 / 3600)
            FROM billing_usagerecord u
            JOIN billing_billingaccount ba ON ba.organization_id = u.organization_id
            JOIN billing_invoice i ON i.billing_account_id = ba.id AND i.kind = 'monthly' AND i.period_start = %(s)s
            JOIN deployments_deployment d ON d.id = u.deployment_id
            WHERE u.hour >= %(s)s AND u.hour < %(e)s AND u.invoice_id IS NULL
            GROUP BY i.id, u.deployment_id, u.product, u.unit_price, d.name, d.public_id
        """,
            {"s": MONTH, "e": MONTH_END},
        )
        cursor.execute(
            """
            UPDATE billing_usagerecord u SET invoice_id = i.id
            FROM billing_billingaccount ba
            JOIN billing_invoice i ON i.billing_account_id = ba.id AND i.kind = 'monthly' AND i.period_start = %(s)s
            WHERE ba.organization_id = u.organization_id AND u.hour >= %(s)s AND u.hour < %(e)s
              AND u.invoice_id IS NULL
        """,
            {"s": MONTH, "e": MONTH_END},
        )
        cursor.execute("UPDATE billing_creditgrant SET remaining = 0 WHERE remaining > 0")
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        transaction.set_rollback(True)
    return invoices


def main() -> None:
    from billing import invoicing, metering
    from billing.models import Invoice, InvoiceLine, UsageRecord

    setup()
    floor_meter_s, floor_rows = timed(meter_floor)
    meter_s, rows = timed(lambda: metering.meter_usage(now=MONTH_END + dt.timedelta(minutes=1), since=HOUR))
    assert rows == floor_rows == ACCOUNTS * PER_ACCOUNT, (rows, floor_rows)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    floor_close_s, floor_invoices = timed(close_floor)
    close_s, result = timed(lambda: invoicing.close_invoices(month=MONTH, now=MONTH_END + dt.timedelta(minutes=30)))
    assert len(result.invoices) == floor_invoices == ACCOUNTS, (len(result.invoices), floor_invoices)
    assert InvoiceLine.objects.count() == ACCOUNTS * PER_ACCOUNT
    assert not UsageRecord.objects.filter(invoice__isnull=True).exists()
    mismatched = Invoice.objects.raw(
        "SELECT i.id FROM billing_invoice i JOIN billing_invoiceline l ON l.invoice_id = i.id "
        "GROUP BY i.id HAVING SUM(l.amount) <> i.subtotal"
    )
    assert not list(mismatched), "an invoice does not reconcile"

    print(
        f"meter one hour, {rows} deployments: {meter_s:.2f} s  (floor {floor_meter_s:.2f} s, "
        f"ratio {meter_s / floor_meter_s:.2f}x; target < 10 s and < 3x)"
    )
    print(
        f"close the month, {ACCOUNTS} accounts / {rows} lines: {close_s:.2f} s  (floor {floor_close_s:.2f} s, "
        f"ratio {close_s / floor_close_s:.2f}x; target < 120 s and < 3x)"
    )


if __name__ == "__main__":
    main()
