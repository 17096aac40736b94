"""Metering: turns deployments' status history (StatusInterval) into UsageRecord rows, one per deployment, hour slot
and product, with the billable seconds and the hourly price in force.

An hour is recorded once: the unique constraint on UsageRecord is the guarantee, inserts ignore conflicts, so
concurrent runs and re-runs are harmless. It never meters an hour that has not ended, nor seconds an annual plan
covers. On PostgreSQL one INSERT … SELECT does the work; other databases use the Python reference below.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import AnnualSubscription, BillingAccount, MeteringCursor, UsageProduct, UsageRecord
from deployments.models import Deployment, Price, StatusInterval, Tier
from deployments.pricing import price_amount
from projects.models import Project

logger = logging.getLogger(__name__)

HOUR = datetime.timedelta(hours=1)
UTC = datetime.UTC
# StatusInterval status -> (usage product, catalog price kind)
PRODUCTS = {
    StatusInterval.Kind.RUNNING: (UsageProduct.RUNNING, Price.Kind.HOURLY),
    StatusInterval.Kind.STOPPED: (UsageProduct.RETENTION, Price.Kind.RETENTION_HOURLY),
}


def floor_hour(at: datetime.datetime) -> datetime.datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def month_start(at: datetime.datetime) -> datetime.datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(at: datetime.datetime) -> datetime.datetime:
    start = month_start(at)
    return (start + datetime.timedelta(days=32)).replace(day=1)


def metered_until() -> datetime.datetime | None:
    return MeteringCursor.objects.filter(pk=1).values_list("metered_until", flat=True).first()


def _default_currency() -> str:
    return getattr(settings, "BILLING_DEFAULT_CURRENCY", "USD")


def meter_usage(*, now: datetime.datetime | None = None, since: datetime.datetime | None = None) -> int:
    """Record every complete hour slot from `since` (default: where the last run stopped, at most
    BILLING_METERING_MAX_CATCHUP_HOURS back) to the hour `now` is in. Returns the number of new records."""
    now = now or timezone.now()
    end = floor_hour(now)
    if since is not None:
        start = floor_hour(since)
    else:
        bound = end - HOUR * settings.BILLING_METERING_MAX_CATCHUP_HOURS
        last = metered_until()
        start = max(last, bound) if last is not None else end - HOUR
    if start >= end:
        return 0
    if connection.vendor == "postgresql":
        inserted = _meter_sql(start, end)
    else:
        inserted = _meter_python(start, end)
    _advance_cursor(end)
    logger.info("metered %s to %s: %s new usage records", start.isoformat(), end.isoformat(), inserted)
    return inserted


def _advance_cursor(end: datetime.datetime) -> None:
    with transaction.atomic():
        cursor, created = MeteringCursor.objects.select_for_update().get_or_create(
            pk=1, defaults={"metered_until": end}
        )
        if not created and cursor.metered_until < end:
            cursor.metered_until = end
            cursor.save(update_fields=["metered_until"])


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


# The set-based metering. Per slot and interval the overlap, minus what annual terms cover; per deployment, slot and
# product the sum, billed on the tier of the last piece in the slot (a mid-hour tier change bills that hour at the
# new tier); the price in force at the slot's start, tier-specific before plan-wide, in the account's currency.
METER_SQL = """
WITH slots AS (
    SELECT gs AS slot_start, gs + interval '1 hour' AS slot_end
    FROM generate_series(%(start)s::timestamptz, %(last)s::timestamptz, interval '1 hour') AS gs
), pieces AS (
    SELECT si.deployment_id, si.tier_id, s.slot_start,
           CASE si.status WHEN 'running' THEN 'running' ELSE 'retention' END AS product,
           GREATEST(si.started_at, s.slot_start) AS p_start,
           LEAST(COALESCE(si.ended_at, s.slot_end), s.slot_end) AS p_end
    FROM {interval} si
    JOIN slots s ON si.started_at < s.slot_end AND (si.ended_at IS NULL OR si.ended_at > s.slot_start)
    WHERE si.status IN ('running', 'stopped')
      AND si.started_at < %(end)s AND (si.ended_at IS NULL OR si.ended_at > %(start)s)
), terms AS (
    -- Only the annual terms touching this run: few, so the coverage below is a hash join, not a probe per piece.
    SELECT a.deployment_id, a.term_start, a.term_end FROM {subscription} a
    WHERE a.term_start < %(end)s AND a.term_end > %(start)s
), covered AS (
    SELECT p.deployment_id, p.slot_start, p.p_start,
           SUM(GREATEST(0, EXTRACT(EPOCH FROM (LEAST(p.p_end, t.term_end) - GREATEST(p.p_start, t.term_start)))))
               AS seconds
    FROM pieces p JOIN terms t ON t.deployment_id = p.deployment_id AND t.term_start < p.p_end AND t.term_end > p.p_start
    GROUP BY p.deployment_id, p.slot_start, p.p_start
), billable AS (
    SELECT p.deployment_id, p.slot_start, p.product,
           (array_agg(p.tier_id ORDER BY p.p_start DESC))[1] AS tier_id,
           ROUND(SUM(EXTRACT(EPOCH FROM (p.p_end - p.p_start)) - COALESCE(c.seconds, 0)))::integer AS seconds
    FROM pieces p
    LEFT JOIN covered c ON c.deployment_id = p.deployment_id AND c.slot_start = p.slot_start AND c.p_start = p.p_start
    GROUP BY p.deployment_id, p.slot_start, p.product
), prices AS (
    -- The price in force at each slot's start for every tier, product and currency: tier-specific before
    -- plan-wide, newest first. Tiers x slots x currencies is small; looking it up per usage row was not.
    SELECT DISTINCT ON (t.id, k.product, c.currency, s.slot_start)
           t.id AS tier_id, k.product, c.currency, s.slot_start, c.amount
    FROM {tier} t
    CROSS JOIN (VALUES ('running', 'hourly'), ('retention', 'retention_hourly')) AS k(product, kind)
    CROSS JOIN slots s
    JOIN {price} c ON c.plan_id = t.plan_id AND (c.tier_id = t.id OR c.tier_id IS NULL) AND c.kind = k.kind
                  AND c.valid_from <= (s.slot_start AT TIME ZONE 'UTC')::date
    ORDER BY t.id, k.product, c.currency, s.slot_start, (c.tier_id IS NULL), c.valid_from DESC
)
INSERT INTO {usage} (deployment_id, organization_id, tier_id, hour, product, seconds, unit_price, currency,
                     created_at)
SELECT b.deployment_id, pr.organization_id, b.tier_id, b.slot_start, b.product, b.seconds, price.amount,
       price.currency, now()
FROM billable b
JOIN {deployment} d ON d.id = b.deployment_id
JOIN {project} pr ON pr.id = d.project_id
LEFT JOIN {account} ba ON ba.organization_id = pr.organization_id
JOIN prices price ON price.tier_id = b.tier_id AND price.product = b.product AND price.slot_start = b.slot_start
                 AND price.currency = COALESCE(ba.currency, %(currency)s)
WHERE b.seconds > 0
ON CONFLICT DO NOTHING
"""


def _meter_sql(start: datetime.datetime, end: datetime.datetime) -> int:
    sql = METER_SQL.format(
        interval=_table(StatusInterval),
        subscription=_table(AnnualSubscription),
        usage=_table(UsageRecord),
        deployment=_table(Deployment),
        project=_table(Project),
        tier=_table(Tier),
        account=_table(BillingAccount),
        price=_table(Price),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, {"start": start, "last": end - HOUR, "end": end, "currency": _default_currency()})
        return cursor.rowcount


# --- The Python reference: the same rules, one deployment at a time. -----------------------------------------------


@dataclass(frozen=True)
class SlotUsage:
    deployment_id: int
    hour: datetime.datetime
    product: str
    tier_id: int
    seconds: int


def _overlap(a_start, a_end, b_start, b_end) -> datetime.timedelta:
    return max(datetime.timedelta(0), min(a_end, b_end) - max(a_start, b_start))


def _seconds(delta: datetime.timedelta) -> Decimal:
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / Decimal(1_000_000)


def slot_usage(*, start: datetime.datetime, end: datetime.datetime, intervals, terms) -> list[SlotUsage]:
    """Billable seconds per (deployment, hour, product) in [start, end) from StatusInterval-like rows and annual
    terms [(deployment_id, term_start, term_end)]. End may be mid-hour (the current, partial slot)."""
    covered = defaultdict(list)
    for deployment_id, term_start, term_end in terms:
        covered[deployment_id].append((term_start, term_end))
    pieces = defaultdict(list)  # (deployment, slot, product) -> [(p_start, tier_id, seconds)]
    for interval in intervals:
        if interval.status not in PRODUCTS:
            continue
        product = PRODUCTS[interval.status][0]
        i_end = interval.ended_at or end
        slot = floor_hour(max(interval.started_at, start))
        while slot < min(i_end, end):
            slot_end = min(slot + HOUR, end)
            p_start, p_end = max(interval.started_at, slot), min(i_end, slot_end)
            if p_end > p_start:
                seconds = _seconds(p_end - p_start) - sum(
                    (_seconds(_overlap(p_start, p_end, t0, t1)) for t0, t1 in covered[interval.deployment_id]),
                    Decimal(0),
                )
                pieces[(interval.deployment_id, slot, product)].append((p_start, interval.tier_id, seconds))
            slot += HOUR
    result = []
    for (deployment_id, slot, product), parts in pieces.items():
        total = int(sum((s for _, _, s in parts), Decimal(0)).quantize(Decimal(1), ROUND_HALF_UP))
        if total > 0:
            tier_id = max(parts, key=lambda p: p[0])[1]
            result.append(SlotUsage(deployment_id, slot, product, tier_id, total))
    return result


class PriceBook:
    """Hourly prices by (tier, product, currency, day), cached for one run."""

    def __init__(self) -> None:
        self._cache: dict = {}
        self._tiers = {}

    def price(self, *, tier_id: int, product: str, currency: str, on: datetime.date) -> Decimal | None:
        key = (tier_id, product, currency, on)
        if key not in self._cache:
            tier = self._tiers.get(tier_id) or Tier.objects.select_related("plan").get(pk=tier_id)
            self._tiers[tier_id] = tier
            kind = Price.Kind.HOURLY if product == UsageProduct.RUNNING else Price.Kind.RETENTION_HOURLY
            # The catalog's one lookup rule (tier-specific first, then plan-wide), as the dry runs quote it.
            self._cache[key] = price_amount(plan=tier.plan, tier=tier, kind=kind, currency=currency, on=on)
        return self._cache[key]


def _intervals_and_terms(start, end, deployment_filter: Q):
    intervals = list(
        StatusInterval.objects.filter(deployment_filter).filter(
            Q(ended_at__isnull=True) | Q(ended_at__gt=start), started_at__lt=end
        )
    )
    ids = {i.deployment_id for i in intervals}
    terms = list(
        AnnualSubscription.objects.filter(deployment_id__in=ids, term_start__lt=end, term_end__gt=start).values_list(
            "deployment_id", "term_start", "term_end"
        )
    )
    return intervals, terms


def _meter_python(start: datetime.datetime, end: datetime.datetime) -> int:
    intervals, terms = _intervals_and_terms(start, end, Q())
    org_of = dict(
        Deployment.objects.filter(id__in={i.deployment_id for i in intervals}).values_list(
            "id", "project__organization_id"
        )
    )
    currency_of = dict(
        BillingAccount.objects.filter(organization_id__in=set(org_of.values())).values_list(
            "organization_id", "currency"
        )
    )
    book = PriceBook()
    records = []
    for usage in slot_usage(start=start, end=end, intervals=intervals, terms=terms):
        org_id = org_of[usage.deployment_id]
        currency = currency_of.get(org_id, _default_currency())
        price = book.price(tier_id=usage.tier_id, product=usage.product, currency=currency, on=usage.hour.date())
        if price is None:
            continue
        records.append(
            UsageRecord(
                deployment_id=usage.deployment_id,
                organization_id=org_id,
                tier_id=usage.tier_id,
                hour=usage.hour,
                product=usage.product,
                seconds=usage.seconds,
                unit_price=price,
                currency=currency,
            )
        )
    before = UsageRecord.objects.filter(hour__gte=start, hour__lt=end).count()
    UsageRecord.objects.bulk_create(records, batch_size=2000, ignore_conflicts=True)
    return UsageRecord.objects.filter(hour__gte=start, hour__lt=end).count() - before


def usage_preview(
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    currency: str,
    organization_id: int | None = None,
    deployment_id: int | None = None,
    project_id: int | None = None,
) -> list[tuple[int, Decimal]]:
    """(seconds, hourly price) of usage not recorded yet, e.g. the current partial hour, computed on the fly: of one
    deployment, or of an organization's deployments (only those of one project when `project_id` is given)."""
    if start >= end:
        return []
    scope = Q(deployment_id=deployment_id) if deployment_id else Q(deployment__project__organization_id=organization_id)
    if project_id and not deployment_id:
        scope &= Q(deployment__project_id=project_id)
    intervals, terms = _intervals_and_terms(start, end, scope)
    book = PriceBook()
    out = []
    for usage in slot_usage(start=start, end=end, intervals=intervals, terms=terms):
        price = book.price(tier_id=usage.tier_id, product=usage.product, currency=currency, on=usage.hour.date())
        if price is not None:
            out.append((usage.seconds, price))
    return out
