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


class PriceBook:
    """Every price of one currency valid on one date, read in one query, answering as price_amount and hourly_price
    do: for pages that price many deployments at once (a per-row lookup would cost a query per row)."""

    def __init__(self, *, currency: str = DEFAULT_CURRENCY, on: datetime.date | None = None) -> None:
        on = on or timezone.now().date()
        self._amounts: dict[tuple[int, int | None, str], Decimal] = {}
        rows = Price.objects.filter(currency=currency, valid_from__lte=on).order_by("valid_from")
        for plan_id, tier_id, kind, amount in rows.values_list("plan_id", "tier_id", "kind", "amount"):
            self._amounts[(plan_id, tier_id, kind)] = amount  # ascending valid_from: the newest wins

    def amount(self, *, plan_id: int, tier_id: int | None, kind: str) -> Decimal | None:
        if tier_id is not None and (plan_id, tier_id, kind) in self._amounts:
            return self._amounts[(plan_id, tier_id, kind)]
        return self._amounts.get((plan_id, None, kind))

    def hourly(self, *, plan_id: int, tier_id: int, state: str) -> Decimal:
        kind = {"running": Price.Kind.HOURLY, "stopped": Price.Kind.RETENTION_HOURLY}.get(state)
        amount = self.amount(plan_id=plan_id, tier_id=tier_id, kind=kind) if kind else None
        return amount if amount is not None else Decimal("0")
