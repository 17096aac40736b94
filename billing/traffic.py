"""Traffic: the broker's own cumulative byte counters turned into billable bytes per deployment and UTC day, and the
monthly traffic lines (the plan's allowance free, the rest at the catalog's price per GiB).

Owns counter resets: a broker restart never yields a negative count, and a sample seen twice is never counted twice.
It never reaches a broker (the alerts collectors do, and call `traffic_record_from_collector`) and never writes an
invoice (billing.invoicing does, with the lines built here).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Sum
from django.db.models.functions import TruncMonth

from billing.models import TrafficAllowance, TrafficCounter, TrafficRecord
from billing.money import BYTES_PER_GIB, traffic_line_amount
from controlplane.db import LockSpace, xact_lock_shared
from deployments.models import Deployment, Price
from deployments.pricing import price_amount
from projects.models import Project

logger = logging.getLogger(__name__)
UTC = datetime.UTC
# A first sample from a broker up for less than this counts its counters: they are this deployment's new traffic.
# An older broker's first sample (traffic metering turned on under a running deployment) is only the baseline.
FRESH_BROKER_SECONDS = 3600
GIB_PLACES = Decimal("0.000001")


READ_SQL = """
SELECT sampled_at, bytes_received, bytes_sent, uptime_seconds, resets FROM {counter}
WHERE deployment_id = %(deployment)s FOR UPDATE
"""
# The counter's new state and the day's bytes in one statement.
WRITE_SQL = """
WITH counter AS (
    INSERT INTO {counter} (deployment_id, sampled_at, bytes_received, bytes_sent, uptime_seconds, resets)
    VALUES (%(deployment)s, %(at)s, %(received)s, %(sent)s, %(uptime)s, %(resets)s)
    ON CONFLICT (deployment_id) DO UPDATE SET
        sampled_at = EXCLUDED.sampled_at, bytes_received = EXCLUDED.bytes_received,
        bytes_sent = EXCLUDED.bytes_sent, uptime_seconds = EXCLUDED.uptime_seconds, resets = EXCLUDED.resets
)
INSERT INTO {traffic} (deployment_id, organization_id, day, bytes)
SELECT d.id, p.organization_id, %(day)s, %(counted)s
FROM {deployment} d JOIN {project} p ON p.id = d.project_id
WHERE d.id = %(deployment)s AND %(counted)s > 0{waiver}
ON CONFLICT (deployment_id, day) WHERE invoice_id IS NULL DO UPDATE SET bytes = {traffic}.bytes + EXCLUDED.bytes
"""


@dataclass(frozen=True)
class CounterState:
    sampled_at: datetime.datetime
    bytes_received: int
    bytes_sent: int
    uptime_seconds: float | None
    resets: int = 0


def counter_step(
    previous: CounterState | None, *, at: datetime.datetime, received: int, sent: int, uptime: float | None
) -> tuple[int, CounterState] | None:
    """The bytes a reading adds and the counter's next state; None for a reading no newer than the last.

    A broker that reports its uptime restarted when the uptime went down: the bytes since the restart are counted.
    Otherwise each direction counts what it grew; a counter that dipped without a restart (mosquitto's, less our
    monitor's own share) counts nothing and keeps its high-water mark, so the dip is never counted again. Without an
    uptime a counter that went down is a restart of one of the nodes summed: that reading becomes the new base (what
    the node counted since is not separable from the sum: a minute lost, nothing twice). A first reading is the base,
    but for a broker up for less than an hour, whose counters are this deployment's new traffic."""
    if previous is None:
        fresh = uptime is not None and uptime < FRESH_BROKER_SECONDS
        return (received + sent if fresh else 0), CounterState(at, received, sent, uptime)
    if at <= previous.sampled_at:
        return None
    if uptime is not None and previous.uptime_seconds is not None:
        if uptime < previous.uptime_seconds:
            return received + sent, CounterState(at, received, sent, uptime, previous.resets + 1)
    elif received < previous.bytes_received or sent < previous.bytes_sent:
        return 0, CounterState(at, received, sent, uptime, previous.resets + 1)
    counted = max(received - previous.bytes_received, 0) + max(sent - previous.bytes_sent, 0)
    return counted, CounterState(
        at, max(received, previous.bytes_received), max(sent, previous.bytes_sent), uptime, previous.resets
    )


def traffic_counters_record(
    *,
    deployment_id: int,
    at: datetime.datetime,
    bytes_received: float,
    bytes_sent: float,
    uptime_seconds: float | None = None,
) -> int:
    """Record one reading of a broker's cumulative counters (bytes received and sent since it started) taken at
    `at`; returns the bytes it adds to the deployment's traffic of that day (`counter_step` says how), or 0 while a
    traffic-waiving coverage term (a Premium trial) covers `at`: the counter still moves on, so those bytes are never
    counted later either."""
    from billing.metering import TRAFFIC_LOCK, traffic_waiver_sql

    received, sent = int(bytes_received), int(bytes_sent)
    if received < 0 or sent < 0:
        raise ValueError("byte counters are never negative")
    names = {
        "counter": connection.ops.quote_name(TrafficCounter._meta.db_table),
        "traffic": connection.ops.quote_name(TrafficRecord._meta.db_table),
        "deployment": connection.ops.quote_name(Deployment._meta.db_table),
        "project": connection.ops.quote_name(Project._meta.db_table),
        "waiver": traffic_waiver_sql("d.id", "at"),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        # Shared with every other reading; the month close takes it exclusively while it reads and marks traffic.
        xact_lock_shared(LockSpace.METERING, TRAFFIC_LOCK)
        cursor.execute(READ_SQL.format(**names), {"deployment": deployment_id})
        row = cursor.fetchone()
        previous = CounterState(*row) if row is not None else None
        step = counter_step(previous, at=at, received=received, sent=sent, uptime=uptime_seconds)
        if step is None:
            return 0
        counted, state = step
        cursor.execute(
            WRITE_SQL.format(**names),
            {
                "start": state.sampled_at,
                "end": state.sampled_at + datetime.timedelta(microseconds=1),
                "deployment": deployment_id,
                "at": state.sampled_at,
                "received": state.bytes_received,
                "sent": state.bytes_sent,
                "uptime": state.uptime_seconds,
                "resets": state.resets,
                "day": at.astimezone(UTC).date(),
                "counted": counted,
            },
        )
        if cursor.rowcount == 0:
            return 0
    return counted


def traffic_record_from_collector(*, deployment_id: int, at: datetime.datetime, state: dict) -> int:
    """The alerts collectors' call: `state` is the state a collector returned after a successful reading.

    The shapes read: mosquitto's `{"uptime": s, "counters": {"bytes_received": n, "bytes_sent": n}}` ($SYS
    broker/bytes/*, less the monitor's own messages) and EMQX's `{"counters": {"bytes": {"value": n, "ts": t}}}`
    (metrics API bytes.received + bytes.sent, summed over the nodes). Anything else records nothing."""
    counters = (state or {}).get("counters") or {}
    received, sent = counters.get("bytes_received"), counters.get("bytes_sent")
    if received is not None and sent is not None:
        return traffic_counters_record(
            deployment_id=deployment_id,
            at=at,
            bytes_received=received,
            bytes_sent=sent,
            uptime_seconds=state.get("uptime"),
        )
    total = counters.get("bytes")
    if isinstance(total, dict) and total.get("value") is not None:
        return traffic_counters_record(deployment_id=deployment_id, at=at, bytes_received=total["value"], bytes_sent=0)
    return 0


# --- Lines --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficUsage:
    """Unbilled bytes of one deployment in one month, with what that month already billed (for its allowance)."""

    organization_id: int
    deployment_id: int
    month: datetime.date
    bytes: int
    billed_bytes: int = 0


def unbilled_traffic(
    *, organization_ids, before: datetime.date, period_month: datetime.date, deployment_ids=None
) -> list[TrafficUsage]:
    """Unbilled traffic of the organizations on days before `before`, per deployment and month. For a month before
    `period_month` (late traffic), `billed_bytes` is what that month's invoices already billed of the deployment."""
    unbilled = TrafficRecord.objects.filter(invoice__isnull=True, day__lt=before, organization_id__in=organization_ids)
    if deployment_ids is not None:
        unbilled = unbilled.filter(deployment_id__in=deployment_ids)
    rows = list(
        unbilled.annotate(month=TruncMonth("day"))
        .values("organization_id", "deployment_id", "month")
        .annotate(total=Sum("bytes"))
        .order_by("organization_id", "deployment_id", "month")
    )
    billed = {}
    late = {(r["deployment_id"], r["month"]) for r in rows if r["month"] < period_month}
    if late:
        for row in (
            TrafficRecord.objects.filter(
                invoice__isnull=False,
                deployment_id__in={d for d, _ in late},
                day__gte=min(m for _, m in late),
                day__lt=period_month,
            )
            .annotate(month=TruncMonth("day"))
            .values("deployment_id", "month")
            .annotate(total=Sum("bytes"))
            .order_by()
        ):
            billed[(row["deployment_id"], row["month"])] = row["total"]
    return [
        TrafficUsage(
            r["organization_id"],
            r["deployment_id"],
            r["month"],
            int(r["total"]),
            int(billed.get((r["deployment_id"], r["month"]), 0)),
        )
        for r in rows
        if r["total"]
    ]


class TrafficCatalog:
    """The plan's monthly allowance and the price per GiB in force on a month's first day, cached for one run."""

    def __init__(self) -> None:
        self._allowance: dict = {}
        self._price: dict = {}

    def allowance_bytes(self, *, plan_id: int, month: datetime.date) -> int:
        key = (plan_id, month)
        if key not in self._allowance:
            gib = (
                TrafficAllowance.objects.filter(plan_id=plan_id, valid_from__lte=month)
                .order_by("-valid_from")
                .values_list("included_gb", flat=True)
                .first()
            )
            self._allowance[key] = (gib or 0) * BYTES_PER_GIB
        return self._allowance[key]

    def price_per_gib(self, *, tier, currency: str, month: datetime.date) -> Decimal | None:
        key = (tier.pk, currency, month)
        if key not in self._price:
            self._price[key] = price_amount(
                plan=tier.plan, tier=tier, kind=Price.Kind.TRAFFIC_GIB, currency=currency, on=month
            )
        return self._price[key]


@dataclass(frozen=True)
class TrafficCharge:
    billable_bytes: int
    allowance_bytes: int
    price_per_gib: Decimal | None
    amount: int | None  # None: no price in the currency (unpriced)


def traffic_charge(*, usage: TrafficUsage, allowance_bytes: int, price_per_gib: Decimal | None, currency: str):
    """What the unbilled bytes of a month cost: the part of the month's total above the allowance that the billed
    part had not already passed."""
    before = max(usage.billed_bytes - allowance_bytes, 0)
    after = max(usage.billed_bytes + usage.bytes - allowance_bytes, 0)
    billable = after - before
    amount = (
        None
        if price_per_gib is None
        else traffic_line_amount(billable_bytes=billable, price_per_gib=price_per_gib, currency=currency)
    )
    return TrafficCharge(billable, allowance_bytes, price_per_gib, amount)


def gibibytes(count: int) -> Decimal:
    return (Decimal(count) / BYTES_PER_GIB).quantize(GIB_PLACES)
