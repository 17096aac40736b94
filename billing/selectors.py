"""Reads of billing data for one tenant: the billing account (made on first use), credits, and the month-to-date
spend and overview.

The only write here is the lazy creation of an organization's empty billing account; nothing else changes state.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from billing import metering
from billing.models import BillingAccount, CreditGrant, Invoice, InvoiceStatus, UsageRecord
from billing.money import usage_line_amount


def billing_account_for(*, organization) -> BillingAccount:
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
class Overview:
    currency: str
    month_start: datetime.date
    month_to_date: int
    forecast: int
    credit_balance: int
    open_invoices: int
    open_amount: int


@dataclass(frozen=True)
class Spend:
    """Spend of the current month in integer minor units of `currency`, before tax and credits."""

    currency: str
    month_start: datetime.datetime
    month_to_date: int
    forecast: int


def spend_month_to_date(
    *, account: BillingAccount, now: datetime.datetime | None = None, project_id: int | None = None
) -> Spend:
    """Month-to-date usage (metered hours plus the seconds since the last metered hour) of the account's
    organization, or of one of its projects, and a straight-line forecast to the month's end."""
    now = now or timezone.now()
    month_start = metering.month_start(now)
    month_end = metering.next_month_start(now)
    metered = UsageRecord.objects.filter(
        organization_id=account.organization_id, hour__gte=month_start, invoice__isnull=True
    )
    if project_id is not None:
        metered = metered.filter(deployment__project_id=project_id)
    metered = metered.values("unit_price").annotate(seconds=Sum("seconds"))
    total = sum(
        usage_line_amount(seconds=row["seconds"], hourly_price=row["unit_price"], currency=account.currency)
        for row in metered
    )
    metered_until = metering.metered_until()
    if metered_until is not None and metered_until < now:
        pending = metering.usage_preview(
            organization_id=account.organization_id,
            project_id=project_id,
            start=max(metered_until, month_start),
            end=now,
            currency=account.currency,
        )
        total += sum(
            usage_line_amount(seconds=seconds, hourly_price=price, currency=account.currency)
            for seconds, price in pending
        )
    elapsed = int((now - month_start).total_seconds())
    whole = int((month_end - month_start).total_seconds())
    forecast = (
        int((Decimal(total) * Decimal(whole) / Decimal(elapsed)).quantize(Decimal(1), ROUND_HALF_UP))
        if elapsed > 0
        else total
    )
    return Spend(currency=account.currency, month_start=month_start, month_to_date=total, forecast=forecast)


def billing_overview(*, account: BillingAccount, now: datetime.datetime | None = None) -> Overview:
    """Month-to-date usage and its straight-line forecast (spend_month_to_date), credits and open invoices.
    Amounts are before tax and credits."""
    now = now or timezone.now()
    spend = spend_month_to_date(account=account, now=now)
    open_qs = Invoice.objects.filter(billing_account=account, status=InvoiceStatus.OPEN)
    return Overview(
        currency=account.currency,
        month_start=spend.month_start.date(),
        month_to_date=spend.month_to_date,
        forecast=spend.forecast,
        credit_balance=credit_balance(account=account, at=now),
        open_invoices=open_qs.count(),
        open_amount=open_qs.aggregate(t=Sum("total"))["t"] or 0,
    )
