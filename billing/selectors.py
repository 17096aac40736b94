"""Reads of billing data for one tenant: the billing account (made on first use), credits, and the month-to-date
spend, forecast and overview, computed from the lines the next invoice will have.

The only write here is the lazy creation of an organization's empty billing account; nothing else changes state.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from billing import invoicing, metering
from billing.models import (
    AnnualSubscription,
    BillingAccount,
    CreditGrant,
    Invoice,
    InvoiceStatus,
    SubscriptionStatus,
    TrafficRecord,
    UsageRecord,
    missing_address_fields,
)
from deployments.models import StatusInterval
from organizations.closing import DeletionBlocker, objects_blocking

if TYPE_CHECKING:
    from organizations.models import Organization


def billing_account_for(*, organization: Organization) -> BillingAccount:
    """The organization's billing account; organizations get one the first time billing needs it."""
    account, _ = BillingAccount.objects.get_or_create(organization=organization)
    return account


def credit_list(*, account: BillingAccount) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(billing_account=account).select_related("coupon")


def credit_balance(*, account: BillingAccount, at: datetime.datetime | None = None) -> int:
    at = at or timezone.now()
    usable = CreditGrant.objects.filter(billing_account=account, currency=account.currency, remaining__gt=0).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=at)
    )
    return usable.aggregate(total=Sum("remaining"))["total"] or 0


@dataclass(frozen=True)
class LateUsageInvoice:
    """Late usage of `month` in this month's spend that the close bills on a late-usage invoice of its own, taxed by
    that month's rules (invoicing._split_months): its subtotal so far, before credits and tax, and that tax."""

    month: datetime.date
    subtotal: int
    tax_treatment: str
    tax_rate: Decimal


@dataclass(frozen=True)
class Overview:
    currency: str
    month_start: datetime.date
    month_to_date: int
    forecast: int
    credit_balance: int
    open_invoices: int
    open_amount: int
    held_invoices: int
    missing_details: list[str]
    late_usage_invoices: list[LateUsageInvoice] = field(default_factory=list)


@dataclass(frozen=True)
class Spend:
    """Spend of the current month in integer minor units of `currency`, before tax and credits: all the close will
    bill, `late_usage` the part of it on late-usage invoices of earlier months."""

    currency: str
    month_start: datetime.datetime
    month_to_date: int
    forecast: int
    late_usage: list[LateUsageInvoice] = field(default_factory=list)


def _late_usage(lines: invoicing.OpenLines) -> list[LateUsageInvoice]:
    return [
        LateUsageInvoice(
            month=month,
            subtotal=sum(line.amount for line in lines.lines if line.usage_month == month),
            tax_treatment=decision.treatment.value,
            tax_rate=decision.rate,
        )
        for month, decision in sorted(lines.late_invoices.items())
    ]


def spend_month_to_date(
    *, account: BillingAccount, now: datetime.datetime | None = None, project_id: int | None = None
) -> Spend:
    """What the account's invoice for this month holds so far (of one project's deployments with `project_id`):
    exactly its lines, built and rounded as the invoice builds them, so month-to-date is the invoice's subtotal for
    the same usage; and the forecast, the same lines with this month's quantities extended to the month's end."""
    now = now or timezone.now()
    lines = invoicing.open_lines(account=account, now=now, project_id=project_id)
    return Spend(
        currency=account.currency,
        month_start=metering.month_start(now),
        month_to_date=sum(line.amount for line in lines.lines),
        forecast=sum(line.amount for line in lines.forecast_lines),
        late_usage=_late_usage(lines),
    )


def billing_overview(
    *, account: BillingAccount, now: datetime.datetime | None = None, spend: Spend | None = None
) -> Overview:
    """Month-to-date usage and its forecast (spend_month_to_date, or `spend` when the caller has it already),
    credits, open and held invoices, and the billing details an invoice still needs. Amounts are before tax and
    credits."""
    now = now or timezone.now()
    spend = spend or spend_month_to_date(account=account, now=now)
    open_qs = Invoice.objects.filter(billing_account=account, status=InvoiceStatus.OPEN)
    return Overview(
        currency=account.currency,
        month_start=spend.month_start.date(),
        month_to_date=spend.month_to_date,
        forecast=spend.forecast,
        credit_balance=credit_balance(account=account, at=now),
        open_invoices=open_qs.count(),
        open_amount=open_qs.aggregate(t=Sum("total"))["t"] or 0,
        held_invoices=Invoice.objects.filter(billing_account=account, status=InvoiceStatus.DRAFT)
        .exclude(hold_reasons=[])
        .count(),
        missing_details=missing_address_fields(account),
        late_usage_invoices=spend.late_usage,
    )


@dataclass(frozen=True)
class SpendRow:
    key: int
    amount: int


@dataclass(frozen=True)
class SpendBreakdown:
    """This month's spend so far (`spend`, as spend_month_to_date computes it) split three ways, in integer minor
    units of the account's currency, before tax and credits.

    By deployment and by project: the next invoice's lines (spend_month_to_date's, so each adds up to its total)
    summed per deployment and per project. By day: the hourly usage of each UTC day of the month (metered, or
    computed as metering will record it), each day and price rounded once; traffic has no day (it is billed on
    the month's total past the allowance), so the days add up to the running and retention lines only, within
    rounding."""

    spend: Spend
    by_deployment: list[SpendRow]  # deployment pk, largest first
    by_project: list[SpendRow]  # project pk, largest first
    by_day: list[tuple[datetime.date, int]]  # every day of the month up to today, zero days included


def spend_breakdown(*, account: BillingAccount, now: datetime.datetime | None = None) -> SpendBreakdown:
    """One read of the month's usage (invoicing.open_lines with its days) split by deployment, project and day."""
    from deployments.models import Deployment

    now = now or timezone.now()
    lines = invoicing.open_lines(account=account, now=now, daily=True)
    per_deployment: dict[int, int] = {}
    for line in lines.lines:
        if line.deployment_id is not None:
            per_deployment[line.deployment_id] = per_deployment.get(line.deployment_id, 0) + line.amount
    project_of = dict(Deployment.objects.filter(pk__in=list(per_deployment)).values_list("pk", "project_id"))
    per_project: dict[int, int] = {}
    for deployment_id, amount in per_deployment.items():
        project_id = project_of[deployment_id]
        per_project[project_id] = per_project.get(project_id, 0) + amount
    return SpendBreakdown(
        spend=Spend(
            currency=account.currency,
            month_start=metering.month_start(now),
            month_to_date=sum(line.amount for line in lines.lines),
            forecast=sum(line.amount for line in lines.forecast_lines),
            late_usage=_late_usage(lines),
        ),
        by_deployment=sorted((SpendRow(k, v) for k, v in per_deployment.items()), key=lambda r: (-r.amount, r.key)),
        by_project=sorted((SpendRow(k, v) for k, v in per_project.items()), key=lambda r: (-r.amount, r.key)),
        by_day=_spend_by_day(account=account, now=now, seconds=lines.daily),
    )


def _spend_by_day(
    *, account: BillingAccount, now: datetime.datetime, seconds: dict[tuple[datetime.date, Decimal], int]
) -> list[tuple[datetime.date, int]]:
    """Every day of the month up to today with its amount: each day's seconds at each price rounded once."""
    from billing.money import usage_line_amount

    per_day: dict[datetime.date, int] = {}
    for (day, unit_price), total in seconds.items():
        amount = usage_line_amount(seconds=total, hourly_price=unit_price, currency=account.currency)
        per_day[day] = per_day.get(day, 0) + amount
    days, day = [], metering.month_start(now).date()
    while day <= now.date():
        days.append((day, per_day.get(day, 0)))
        day += datetime.timedelta(days=1)
    return days


@dataclass(frozen=True)
class OverdueNotice:
    invoices: int
    oldest_due_at: datetime.datetime
    stop_on: datetime.datetime  # when the account's deployments are stopped if nothing is paid by then


def overdue_notice(*, organization_id: int, now: datetime.datetime | None = None) -> OverdueNotice | None:
    """Open invoices past their due date, and when overdue_process stops the deployments (due date + grace)."""
    from django.conf import settings
    from django.db.models import Count, Min

    now = now or timezone.now()
    found = Invoice.objects.filter(
        billing_account__organization_id=organization_id, status=InvoiceStatus.OPEN, due_at__lt=now
    ).aggregate(n=Count("id"), oldest=Min("due_at"))
    if not found["n"]:
        return None
    grace = datetime.timedelta(days=settings.BILLING_GRACE_DAYS)
    return OverdueNotice(invoices=found["n"], oldest_due_at=found["oldest"], stop_on=found["oldest"] + grace)


def organization_deletion_blockers(*, organization: Organization) -> list[DeletionBlocker]:
    """What the organization still owes or has bought: usage not yet invoiced (metered or not yet), invoices not
    paid (draft, open, uncollectible), annual plans still active. Registered with organizations.closing."""
    blockers = []
    # Billable time the hourly metering has not turned into usage records yet (a deployment deleted in the last hour).
    cursor = metering.metered_until()
    intervals = StatusInterval.objects.filter(deployment__project__organization=organization)
    if cursor is not None:
        intervals = intervals.filter(Q(ended_at__isnull=True) | Q(ended_at__gt=cursor))
    # One row is enough to block: the first query that finds one ends the search.
    if (
        UsageRecord.objects.filter(organization=organization, invoice__isnull=True).exists()
        or TrafficRecord.objects.filter(organization=organization, invoice__isnull=True, bytes__gt=0).exists()
        or intervals.exists()
    ):
        blockers.append(
            DeletionBlocker(
                "unbilled-usage",
                "Usage is not invoiced yet (this month's usage is billed when the month closes, on the 1st): delete "
                "the organization once that invoice is paid.",
            )
        )
    unpaid = list(
        Invoice.objects.filter(
            billing_account__organization=organization,
            status__in=[InvoiceStatus.DRAFT, InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE],
        )
        .order_by("created_at", "pk")
        .values_list("public_id", flat=True)
    )
    blockers += objects_blocking("invoices", unpaid, noun="invoice", state="not paid", remedy="pay {them} first")
    active = list(
        AnnualSubscription.objects.filter(billing_account__organization=organization, status=SubscriptionStatus.ACTIVE)
        .order_by("term_start", "pk")
        .values_list("public_id", flat=True)
    )
    blockers += objects_blocking(
        "annual-subscriptions",
        active,
        noun="annual plan",
        state="active",
        remedy="the organization can be deleted once the term ends (turn auto-renew off)",
    )
    return blockers
