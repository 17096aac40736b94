"""Metering: turns deployments' status history (StatusInterval) into UsageRecord rows, one per deployment, hour slot,
product and tier, with the billable seconds and the hourly price in force; usage without a price is recorded too.

An hour is recorded once: the unique constraint on UsageRecord is the guarantee, inserts ignore conflicts, so
concurrent runs and re-runs are harmless. It never meters an hour that has not ended, nor seconds a coverage term
(an annual plan) covers, and it never skips an hour: a long gap is caught up in bounded batches. It never writes
invoices. One INSERT … SELECT per batch does the work; `slot_usage` is the same rules in Python, the reference the
SQL is tested against and what previews the hour not metered yet.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min, Q
from django.utils import timezone

from billing.models import (
    AnnualSubscription,
    BillingAccount,
    MeteringCursor,
    SubscriptionStatus,
    UsageProduct,
    UsageRecord,
)
from billing.money import round_minor
from controlplane.db import LockSpace, xact_lock
from deployments.models import Deployment, Price, StatusInterval, Tier
from deployments.pricing import price_amount
from projects.models import Project

logger = logging.getLogger(__name__)

HOUR = datetime.timedelta(hours=1)
UTC = datetime.UTC
FOREVER = datetime.datetime.max.replace(tzinfo=UTC)
# StatusInterval status -> (usage product, catalog price kind)
PRODUCTS = {
    StatusInterval.Kind.RUNNING: (UsageProduct.RUNNING, Price.Kind.HOURLY),
    StatusInterval.Kind.STOPPED: (UsageProduct.RETENTION, Price.Kind.RETENTION_HOURLY),
}
# usage product -> catalog price kind, read from the same pairs
PRICE_KIND = dict(PRODUCTS.values())
# The enum values the metering statements compare with, bound as parameters (never spelled in the SQL), so the
# statements and the Python reference read the same mapping.
ENUM_PARAMS = {
    "interval_running": StatusInterval.Kind.RUNNING,
    "interval_stopped": StatusInterval.Kind.STOPPED,
    "product_running": PRODUCTS[StatusInterval.Kind.RUNNING][0],
    "product_retention": PRODUCTS[StatusInterval.Kind.STOPPED][0],
    "price_running": PRODUCTS[StatusInterval.Kind.RUNNING][1],
    "price_retention": PRODUCTS[StatusInterval.Kind.STOPPED][1],
    "term_active": SubscriptionStatus.ACTIVE,
}
# Keys in LockSpace.METERING. Usage writes take USAGE exclusively (one batch at a time, and the month close holds it
# while it reads and marks usage); traffic samples take TRAFFIC shared, the close takes it exclusively.
USAGE_LOCK = 0
TRAFFIC_LOCK = 1


def floor_hour(at: datetime.datetime) -> datetime.datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def month_start(at: datetime.datetime) -> datetime.datetime:
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(at: datetime.datetime) -> datetime.datetime:
    start = month_start(at)
    return (start + datetime.timedelta(days=32)).replace(day=1)


def metered_until() -> datetime.datetime | None:
    return MeteringCursor.objects.filter(pk=1).values_list("metered_until", flat=True).first()


def default_currency() -> str:
    return getattr(settings, "BILLING_DEFAULT_CURRENCY", "USD")


def coverage_end(*, term_end: datetime.datetime, status: str, auto_renew: bool) -> datetime.datetime:
    """Until when a coverage term keeps hourly billing away. An active term that renews by itself covers past its
    end until the renewal run decides: renewed, the next term starts at that end; not renewed, the seconds since the
    end are metered then (`usage_meter(since=…, deployment_ids=…)`)."""
    if status == SubscriptionStatus.ACTIVE and auto_renew:
        return FOREVER
    return term_end


@dataclass(frozen=True)
class CoverageSource:
    """Coverage terms another app owns (a Premium trial), registered from its AppConfig.ready() so billing never
    imports it. `sql` selects (deployment_id, term_start, term_end) of the terms touching [%(start)s, %(end)s);
    `terms(deployment_ids, start, end)` answers the same terms as `Term`s for the Python reference. Terms of one
    deployment must not overlap one another nor an annual plan: covered seconds are subtracted once per term.
    `waives_traffic`: bytes a covered deployment moves are not counted for billing either (a free trial)."""

    sql: str
    terms: Callable[[set[int], datetime.datetime, datetime.datetime], list]
    waives_traffic: bool = False


_coverage_sources: dict[str, CoverageSource] = {}


def register_coverage_source(name: str, source: CoverageSource) -> None:
    """Add (or replace: ready() may run twice) the coverage source called `name`."""
    _coverage_sources[name] = source


def _coverage_sql() -> str:
    return "".join(
        f"\n    UNION ALL\n    SELECT x.deployment_id, x.term_start, x.term_end FROM ({source.sql}) x"
        for _name, source in sorted(_coverage_sources.items())
    )


def traffic_waiver_sql(deployment: str, at: str) -> str:
    """A condition, true when the deployment `deployment` (an SQL expression) is under a traffic-waiving coverage
    term at the instant `at` (a parameter name); the sources' SQL reads %(start)s and %(end)s, which the caller binds
    to that instant and the next microsecond. Empty when no source waives traffic."""
    return "".join(
        f"\n    AND NOT EXISTS (SELECT 1 FROM ({source.sql}) w WHERE w.deployment_id = {deployment}"
        f" AND w.term_start <= %({at})s AND w.term_end > %({at})s)"
        for _name, source in sorted(_coverage_sources.items())
        if source.waives_traffic
    )


@dataclass(frozen=True)
class MeterResult:
    inserted: int
    unpriced: int


def usage_meter(
    *,
    now: datetime.datetime | None = None,
    since: datetime.datetime | None = None,
    deployment_ids: list[int] | None = None,
) -> int:
    """Record every complete hour slot from `since` (default: where the last run stopped, however long ago) to the
    hour `now` is in, BILLING_METERING_BATCH_HOURS at a time, each batch committed with the cursor. With
    `deployment_ids`, only those deployments and the cursor stays. Returns the number of new records."""
    now = now or timezone.now()
    end = floor_hour(now)
    if since is not None:
        start = floor_hour(since)
    else:
        last = metered_until()
        start = last if last is not None else _first_billable_hour(end)
    batch = HOUR * max(1, settings.BILLING_METERING_BATCH_HOURS)
    inserted = unpriced = 0
    while start < end:
        stop = min(start + batch, end)
        with transaction.atomic():
            xact_lock(LockSpace.METERING, USAGE_LOCK)
            result = _meter_sql(start, stop, deployment_ids)
            if deployment_ids is None:
                _advance_cursor(stop)
        inserted += result.inserted
        unpriced += result.unpriced
        start = stop
    if unpriced:
        # An operator error, not a customer's: the catalog lacks a price. The seconds are kept; their invoice waits.
        logger.error(
            "metered %s usage records without a price in the account's currency: add the missing catalog price",
            unpriced,
        )
    if inserted:
        logger.info("metered up to %s: %s new usage records", end.isoformat(), inserted)
    return inserted


def usage_remeter(*, deployment_id: int, since: datetime.datetime) -> int:
    """Meter one deployment's hours again from the one `since` is in up to where metering stands, after its billable
    time there changed (a broker crash noticed late ends the running interval in the past, in hours already
    metered). Its records not yet invoiced are replaced in one transaction under the usage lock, which the month
    close holds too; an invoiced hour keeps its record, the one its invoice was made from. Returns the records
    written."""
    start = floor_hour(since)
    with transaction.atomic():
        xact_lock(LockSpace.METERING, USAGE_LOCK)
        until = metered_until()
        if until is None or start >= until:
            return 0
        hours = UsageRecord.objects.filter(deployment_id=deployment_id, hour__gte=start, hour__lt=until)
        invoiced = hours.filter(invoice__isnull=False).exists()
        hours.filter(invoice__isnull=True).delete()
        result = _meter_sql(start, until, [deployment_id])
    if invoiced:
        logger.warning(
            "deployment %s: billable time since %s changed after some of those hours were invoiced; they stay billed",
            deployment_id,
            since.isoformat(),
        )
    return result.inserted


def deployment_time_corrected(*, deployment, since: datetime.datetime) -> None:
    """deployments' hook: re-meter after the transaction that corrected the time commits, when hours from `since`
    on were metered already (a crash is usually noticed within seconds, before the hour is)."""
    until = metered_until()
    if until is None or floor_hour(since) >= until:
        return
    from billing import tasks
    from controlplane.tasks import enqueue_on_commit

    enqueue_on_commit(tasks.remeter_usage, deployment.pk, since.isoformat())


def _first_billable_hour(end: datetime.datetime) -> datetime.datetime:
    """Where a first run starts: the first hour any deployment was billable, so nothing before it is lost."""
    first = StatusInterval.objects.aggregate(first=Min("started_at"))["first"]
    return floor_hour(first) if first is not None else end


def _advance_cursor(end: datetime.datetime) -> None:
    cursor, created = MeteringCursor.objects.select_for_update().get_or_create(pk=1, defaults={"metered_until": end})
    if not created and cursor.metered_until < end:
        cursor.metered_until = end
        cursor.save(update_fields=["metered_until"])


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


# The set-based metering of one batch. Every boundary (interval and term ends) rounded to the whole second first,
# half up, as `whole_second`; per slot and interval the overlap, minus what coverage terms cover; per deployment,
# slot, product and tier the sum (a tier change inside the hour bills each side at its own tier); the price in force
# at the slot's start, tier-specific before plan-wide, in the account's currency, or none.
METER_SQL = """
WITH slots AS (
    SELECT gs AS slot_start, gs + interval '1 hour' AS slot_end
    FROM generate_series(%(start)s::timestamptz, %(last)s::timestamptz, interval '1 hour') AS gs
), intervals AS (
    SELECT si.deployment_id, si.tier_id, si.status,
           date_trunc('second', si.started_at + interval '0.5 second') AS started_at,
           date_trunc('second', si.ended_at + interval '0.5 second') AS ended_at
    FROM {interval} si
    WHERE si.status IN (%(interval_running)s, %(interval_stopped)s)
      AND si.started_at < %(end)s AND (si.ended_at IS NULL OR si.ended_at > %(start)s)
      AND (%(deployments)s::bigint[] IS NULL OR si.deployment_id = ANY(%(deployments)s::bigint[]))
), pieces AS (
    -- An interval shorter than half a second may round to nothing: it has no piece, so no two pieces of a
    -- deployment start at the same instant (the coverage below is joined back on it).
    SELECT si.deployment_id, si.tier_id, s.slot_start,
           CASE si.status WHEN %(interval_running)s THEN %(product_running)s ELSE %(product_retention)s END AS product,
           GREATEST(si.started_at, s.slot_start) AS p_start,
           LEAST(COALESCE(si.ended_at, s.slot_end), s.slot_end) AS p_end
    FROM intervals si
    JOIN slots s ON si.started_at < s.slot_end AND (si.ended_at IS NULL OR si.ended_at > s.slot_start)
    WHERE si.ended_at IS NULL OR si.ended_at > si.started_at
), source_terms AS (
    -- Coverage terms touching this batch: few, so the coverage below is a hash join, not a probe per piece. Annual
    -- plans, then the registered coverage sources' terms (Premium trials) as more UNION ALLs.
    SELECT a.deployment_id, a.term_start,
           CASE WHEN a.status = %(term_active)s AND a.auto_renew THEN 'infinity'::timestamptz ELSE a.term_end END AS term_end
    FROM {subscription} a
    WHERE a.term_start < %(end)s AND (a.term_end > %(start)s OR (a.status = %(term_active)s AND a.auto_renew)){coverage}
), terms AS (
    SELECT t.deployment_id, date_trunc('second', t.term_start + interval '0.5 second') AS term_start,
           date_trunc('second', t.term_end + interval '0.5 second') AS term_end
    FROM source_terms t
), covered AS (
    SELECT p.deployment_id, p.slot_start, p.p_start,
           SUM(GREATEST(0, EXTRACT(EPOCH FROM (LEAST(p.p_end, t.term_end) - GREATEST(p.p_start, t.term_start)))))
               AS seconds
    FROM pieces p JOIN terms t ON t.deployment_id = p.deployment_id AND t.term_start < p.p_end AND t.term_end > p.p_start
    GROUP BY p.deployment_id, p.slot_start, p.p_start
), billable AS (
    SELECT p.deployment_id, p.slot_start, p.product, p.tier_id,
           ROUND(SUM(EXTRACT(EPOCH FROM (p.p_end - p.p_start)) - COALESCE(c.seconds, 0)))::integer AS seconds
    FROM pieces p
    LEFT JOIN covered c ON c.deployment_id = p.deployment_id AND c.slot_start = p.slot_start AND c.p_start = p.p_start
    GROUP BY p.deployment_id, p.slot_start, p.product, p.tier_id
), prices AS (
    -- The price in force at each slot's start for every tier, product and currency: tier-specific before
    -- plan-wide, newest first. Tiers x slots x currencies is small; looking it up per usage row was not.
    SELECT DISTINCT ON (t.id, k.product, c.currency, s.slot_start)
           t.id AS tier_id, k.product, c.currency, s.slot_start, c.amount
    FROM {tier} t
    CROSS JOIN (VALUES (%(product_running)s, %(price_running)s), (%(product_retention)s, %(price_retention)s))
        AS k(product, kind)
    CROSS JOIN slots s
    JOIN {price} c ON c.plan_id = t.plan_id AND (c.tier_id = t.id OR c.tier_id IS NULL) AND c.kind = k.kind
                  AND c.valid_from <= (s.slot_start AT TIME ZONE 'UTC')::date
    ORDER BY t.id, k.product, c.currency, s.slot_start, (c.tier_id IS NULL), c.valid_from DESC
), inserted AS (
    -- Seconds without a price are recorded all the same (unit_price NULL): an error for the operator to fix, never
    -- a silent drop.
    INSERT INTO {usage} (deployment_id, organization_id, tier_id, hour, product, seconds, unit_price, currency,
                         created_at)
    SELECT b.deployment_id, pr.organization_id, b.tier_id, b.slot_start, b.product, b.seconds, price.amount,
           COALESCE(ba.currency, %(currency)s), now()
    FROM billable b
    JOIN {deployment} d ON d.id = b.deployment_id
    JOIN {project} pr ON pr.id = d.project_id
    LEFT JOIN {account} ba ON ba.organization_id = pr.organization_id
    LEFT JOIN prices price ON price.tier_id = b.tier_id AND price.product = b.product
                          AND price.slot_start = b.slot_start AND price.currency = COALESCE(ba.currency, %(currency)s)
    WHERE b.seconds > 0
    ON CONFLICT DO NOTHING
    RETURNING unit_price
)
SELECT count(*), count(*) FILTER (WHERE unit_price IS NULL) FROM inserted
"""


def _meter_sql(
    start: datetime.datetime, end: datetime.datetime, deployment_ids: list[int] | None = None
) -> MeterResult:
    sql = METER_SQL.format(
        interval=_table(StatusInterval),
        subscription=_table(AnnualSubscription),
        usage=_table(UsageRecord),
        deployment=_table(Deployment),
        project=_table(Project),
        tier=_table(Tier),
        account=_table(BillingAccount),
        price=_table(Price),
        coverage=_coverage_sql(),
    )
    params: dict[str, datetime.datetime | str | list[int] | None] = {
        "start": start,
        "last": end - HOUR,
        "end": end,
        "currency": default_currency(),
        "deployments": list(deployment_ids) if deployment_ids is not None else None,
        **ENUM_PARAMS,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted, unpriced = cursor.fetchone()
    return MeterResult(inserted, unpriced)


PRICE_PENDING_SQL = """
WITH found AS (
    SELECT u.id, (
        SELECT c.amount FROM {tier} t JOIN {price} c
            ON c.plan_id = t.plan_id AND (c.tier_id = t.id OR c.tier_id IS NULL) AND c.currency = u.currency
           AND c.kind = CASE u.product WHEN %(product_running)s THEN %(price_running)s ELSE %(price_retention)s END
           AND c.valid_from <= (u.hour AT TIME ZONE 'UTC')::date
        WHERE t.id = u.tier_id
        ORDER BY (c.tier_id IS NULL), c.valid_from DESC
        LIMIT 1
    ) AS amount
    FROM {usage} u WHERE u.unit_price IS NULL
)
UPDATE {usage} u SET unit_price = found.amount FROM found WHERE u.id = found.id AND found.amount IS NOT NULL
"""


def usage_price_pending() -> int:
    """Price the unpriced usage for which the catalog now has a price (the one in force at its hour). Returns how
    many records got one. Invoices waiting for them are issued by billing.invoicing."""
    with transaction.atomic():
        xact_lock(LockSpace.METERING, USAGE_LOCK)
        with connection.cursor() as cursor:
            cursor.execute(
                PRICE_PENDING_SQL.format(usage=_table(UsageRecord), tier=_table(Tier), price=_table(Price)), ENUM_PARAMS
            )
            return cursor.rowcount


# --- The Python reference: the same rules, one interval at a time. -------------------------------------------------


@dataclass(frozen=True)
class SlotUsage:
    deployment_id: int
    hour: datetime.datetime
    product: UsageProduct
    tier_id: int
    seconds: int


@dataclass(frozen=True)
class Term:
    """A coverage term as stored: metering applies `coverage_end` to it."""

    deployment_id: int
    term_start: datetime.datetime
    term_end: datetime.datetime
    status: str = SubscriptionStatus.ACTIVE
    auto_renew: bool = False


def _overlap(a_start, a_end, b_start, b_end) -> datetime.timedelta:
    return max(datetime.timedelta(0), min(a_end, b_end) - max(a_start, b_start))


def _seconds(delta: datetime.timedelta) -> Decimal:
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / Decimal(1_000_000)


def whole_second(at: datetime.datetime) -> datetime.datetime:
    """`at` rounded to the whole second, half up. Metering rounds every boundary before it subtracts: rounding each
    side's duration instead billed a change at 10:30:00.5 as 1801 + 1800 seconds, 3601 in one hour."""
    if at >= FOREVER - datetime.timedelta(seconds=1):
        return at
    return (at + datetime.timedelta(microseconds=500_000)).replace(microsecond=0)


def slot_usage(*, start: datetime.datetime, end: datetime.datetime, intervals, terms) -> list[SlotUsage]:
    """Billable seconds per (deployment, hour, product, tier) in [start, end) from StatusInterval-like rows and
    coverage terms (Term). End may be mid-hour (the current, partial slot)."""
    covered = defaultdict(list)
    for term in terms:
        covered[term.deployment_id].append(
            (
                whole_second(term.term_start),
                whole_second(coverage_end(term_end=term.term_end, status=term.status, auto_renew=term.auto_renew)),
            )
        )
    pieces = defaultdict(lambda: Decimal(0))  # (deployment, slot, product, tier) -> seconds
    for interval in intervals:
        if interval.status not in PRODUCTS:
            continue
        product = PRODUCTS[interval.status][0]
        i_start = whole_second(interval.started_at)
        i_end = whole_second(interval.ended_at) if interval.ended_at else end
        slot = floor_hour(max(i_start, start))
        while slot < min(i_end, end):
            slot_end = min(slot + HOUR, end)
            p_start, p_end = max(i_start, slot), min(i_end, slot_end)
            if p_end > p_start:
                seconds = _seconds(p_end - p_start) - sum(
                    (_seconds(_overlap(p_start, p_end, t0, t1)) for t0, t1 in covered[interval.deployment_id]),
                    Decimal(0),
                )
                pieces[(interval.deployment_id, slot, product, interval.tier_id)] += seconds
            slot += HOUR
    result = []
    for (deployment_id, slot, product, tier_id), seconds in pieces.items():
        total = round_minor(seconds)
        if total > 0:
            result.append(SlotUsage(deployment_id, slot, product, tier_id, total))
    return result


class PriceBook:
    """Hourly prices by (tier, product, currency, day), cached for one run."""

    def __init__(self) -> None:
        self._cache: dict = {}
        self._tiers: dict = {}

    def price(self, *, tier_id: int, product: UsageProduct, currency: str, on: datetime.date) -> Decimal | None:
        key = (tier_id, product, currency, on)
        if key not in self._cache:
            tier = self._tiers.get(tier_id) or Tier.objects.select_related("plan").get(pk=tier_id)
            self._tiers[tier_id] = tier
            # The catalog's one lookup rule (tier-specific first, then plan-wide), as the dry runs quote it.
            self._cache[key] = price_amount(
                plan=tier.plan, tier=tier, kind=PRICE_KIND[product], currency=currency, on=on
            )
        return self._cache[key]


def intervals_and_terms(start, end, deployment_filter: Q) -> tuple[list[StatusInterval], list[Term]]:
    intervals = list(
        StatusInterval.objects.filter(deployment_filter).filter(
            Q(ended_at__isnull=True) | Q(ended_at__gt=start), started_at__lt=end
        )
    )
    ids = {i.deployment_id for i in intervals}
    terms = [
        Term(**row)
        for row in AnnualSubscription.objects.filter(deployment_id__in=ids, term_start__lt=end)
        .filter(Q(term_end__gt=start) | Q(status=SubscriptionStatus.ACTIVE, auto_renew=True))
        .values("deployment_id", "term_start", "term_end", "status", "auto_renew")
    ]
    for _name, source in sorted(_coverage_sources.items()):
        terms.extend(source.terms(ids, start, end))
    return intervals, terms


@dataclass(frozen=True)
class PricedUsage:
    usage: SlotUsage
    unit_price: Decimal | None


def usage_preview(
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    currency: str,
    organization_id: int | None = None,
    deployment_id: int | None = None,
    project_id: int | None = None,
) -> list[PricedUsage]:
    """Usage not recorded yet (e.g. the current partial hour) computed on the fly with its price, as metering will
    record it: of one deployment, or of an organization's deployments (only one project's with `project_id`)."""
    if start >= end:
        return []
    scope = Q(deployment_id=deployment_id) if deployment_id else Q(deployment__project__organization_id=organization_id)
    if project_id and not deployment_id:
        scope &= Q(deployment__project_id=project_id)
    intervals, terms = intervals_and_terms(start, end, scope)
    book = PriceBook()
    return [
        PricedUsage(
            usage,
            book.price(tier_id=usage.tier_id, product=usage.product, currency=currency, on=usage.hour.date()),
        )
        for usage in slot_usage(start=start, end=end, intervals=intervals, terms=terms)
    ]


def unpriced_usage_summary() -> dict[str, tuple[int, int]]:
    """Unpriced usage by currency: (records, seconds). What /metrics and the admin show the operator."""
    from django.db.models import Count, Sum

    rows = (
        UsageRecord.objects.filter(unit_price__isnull=True)
        .values("currency")
        .annotate(records=Count("id"), seconds=Sum("seconds"))
    )
    return {row["currency"]: (row["records"], row["seconds"] or 0) for row in rows}
