"""Reads of billing data for one tenant: the billing account (made on first use), credits, and the month-to-date
spend, forecast and overview, computed from the lines the next invoice will have.

The only write here is the lazy creation of an organization's empty billing account; nothing else changes state.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from billing import invoicing, metering
from billing.models import BillingAccount, CreditGrant, Invoice, InvoiceStatus, missing_address_fields


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
    held_invoices: int
    missing_details: list[str]


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
    )


def billing_overview(*, account: BillingAccount, now: datetime.datetime | None = None) -> Overview:
    """Month-to-date usage and its forecast (spend_month_to_date), credits, open and held invoices, and the billing
    details an invoice still needs. Amounts are before tax and credits."""
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
        held_invoices=Invoice.objects.filter(billing_account=account, status=InvoiceStatus.DRAFT)
        .exclude(hold_reasons=[])
        .count(),
        missing_details=missing_address_fields(account),
    )
