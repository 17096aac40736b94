"""Catalog prices as of a date: the hourly price of a deployment running or stopped, for dry runs and billing.

Reads only (Decimal, never float). It never decides whether a deployment is billable; StatusInterval rows do.
"""

from __future__ import annotations

import datetime
from decimal import Decimal

from django.utils import timezone

from deployments.models import Plan, Price, Tier

DEFAULT_CURRENCY = "USD"


def price_amount(
    *, plan: Plan, tier: Tier | None, kind: str, currency: str = DEFAULT_CURRENCY, on: datetime.date | None = None
) -> Decimal | None:
    """The newest price of `kind` valid on `on` (today by default): tier-specific first, then plan-wide; or None."""
    on = on or timezone.now().date()
    base = Price.objects.filter(plan=plan, kind=kind, currency=currency, valid_from__lte=on).order_by("-valid_from")
    if tier is not None:
        found = base.filter(tier=tier).values_list("amount", flat=True).first()
        if found is not None:
            return found
    return base.filter(tier__isnull=True).values_list("amount", flat=True).first()


def hourly_price(
    *, plan: Plan, tier: Tier, state: str, currency: str = DEFAULT_CURRENCY, on: datetime.date | None = None
) -> Decimal:
    """Per hour in `state` (running, stopped, deleted). Plans metered by use (Serverless) have no hourly price: 0."""
    if state == "running":
        amount = price_amount(plan=plan, tier=tier, kind=Price.Kind.HOURLY, currency=currency, on=on)
    elif state == "stopped":
        amount = price_amount(plan=plan, tier=tier, kind=Price.Kind.RETENTION_HOURLY, currency=currency, on=on)
    else:
        amount = None
    return amount if amount is not None else Decimal("0")
