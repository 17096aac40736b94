"""Invoices: the monthly close (usage and traffic in arrears per billing account, with late usage of earlier months,
on an invoice of its own month when that month is taxed otherwise), single invoices (annual prepaid, upgrades),
drafts held until they can be issued complete, and credit notes. Credits apply oldest first before tax; tax follows
the billing details in force in the period; the VAT is also shown in the seller country's currency when the invoice
is in another; numbers are gapless per series, given at finalization.

Every invoice is composed whole in Python by one builder (`compose`) with billing.money's one rounding rule, and
written in one transaction with its number; the database check constraints make it reconcile to the cent. It never
charges a card (billing.services collects, on commit) and never issues an invoice while a hold reason remains.
"""

from __future__ import annotations

import datetime
import enum
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, DateField, ExpressionWrapper, Field, Func, JSONField, Q, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone
from psycopg.types.json import Jsonb

from billing import metering, traffic
from billing.models import (
    BillingAccount,
    BillingDetails,
    CreditApplication,
    CreditGrant,
    CreditKind,
    CreditNote,
    CreditNoteLine,
    ExchangeRate,
    HoldReason,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceNumberCounter,
    InvoiceStatus,
    MonthClose,
    NumberSeries,
    TrafficRecord,
    UsageProduct,
    UsageRecord,
    missing_address_fields,
)
from billing.money import SECONDS_PER_HOUR, convert, percentage_of, usage_line_amount
from billing.tax import TaxDecision, tax_treatment
from billing.vat_rates import national_currency
from controlplane.db import LockSpace, xact_lock
from deployments.models import Deployment, Tier

logger = logging.getLogger(__name__)
UTC = datetime.UTC
QUANTITY_PLACES = Decimal("0.000001")
# An ECB reference rate is published every TARGET working day: a week covers weekends and the Easter holidays.
EXCHANGE_RATE_MAX_AGE_DAYS = 7


# --- Billing details and parties -----------------------------------------------------------------------------------


def details_from_account(account: BillingAccount) -> BillingDetails:
    """The account's current fields as an unsaved details row (an account whose details were never set)."""
    return BillingDetails(
        billing_account=account,
        valid_from=account.created_at,
        country=account.country,
        company=account.company,
        email=account.email,
        address=account.address,
        city=account.city,
        state=account.state,
        postal_code=account.postal_code,
        tax_id=account.tax_id,
        vat_status=account.vat_status,
        vat_consultation_number=account.vat_consultation_number,
    )


def details_in_force(account: BillingAccount, end: datetime.datetime) -> BillingDetails:
    """The last details in force before `end`: those of a period ending there (the last ones when they changed
    within it)."""
    row = (
        BillingDetails.objects.filter(billing_account=account, valid_from__lt=end)
        .order_by("-valid_from", "-id")
        .first()
    )
    return row or details_from_account(account)


def current_details(account: BillingAccount) -> BillingDetails:
    row = BillingDetails.objects.filter(billing_account=account, valid_to__isnull=True).first()
    return row or details_from_account(account)


def _details_in_force_bulk(account_ids, end: datetime.datetime) -> dict[int, BillingDetails]:
    rows = (
        BillingDetails.objects.filter(billing_account_id__in=account_ids, valid_from__lt=end)
        .order_by("billing_account_id", "-valid_from", "-id")
        .distinct("billing_account_id")
    )
    return {row.billing_account_id: row for row in rows}


def tax_decision(details, on: datetime.date) -> TaxDecision:
    """The treatment of a supply on `on` to the customer `details` describes (a BillingDetails row or the account).
    Without a country the customer is taxed as a domestic consumer until it says otherwise."""
    return tax_treatment(
        seller_country=settings.SELLER_COUNTRY,
        customer_country=details.country or settings.SELLER_COUNTRY,
        is_business=details.is_business,
        vat_status=details.vat_status,
        on=on,
        tax_id=details.tax_id,
    )


def customer_snapshot(details: BillingDetails, *, fallback_name: str, address: BillingDetails | None = None) -> dict:
    """What the invoice shows of the buyer: name and VAT number from `details`, the postal address from `address`
    (the details that completed it, for an invoice held for a missing address) or from `details`."""
    where = address or details
    lines = [
        where.address,
        " ".join(p for p in (where.postal_code, where.city) if p),
        where.state,
        where.country,
    ]
    return {
        "name": details.company or details.email or fallback_name,
        "email": details.email,
        "address_lines": [line for line in lines if line],
        "address": {
            "street": where.address,
            "postal_code": where.postal_code,
            "city": where.city,
            "state": where.state,
            "country": where.country,
        },
        "vat_number": details.tax_id or None,
        "country": details.country,
    }


def seller_snapshot() -> dict:
    return {
        "name": settings.SELLER_NAME,
        "address_lines": [p.strip() for p in settings.SELLER_ADDRESS.split(",")],
        "vat_number": settings.SELLER_VAT_NUMBER or None,
        "country": settings.SELLER_COUNTRY,
    }


# --- Lines ------------------------------------------------------------------------------------------------------------


@dataclass
class LineDraft:
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount: int
    product: str
    deployment_id: int | None = None
    seconds: int | None = None
    tier_id: int | None = None
    usage_month: datetime.date | None = None
    bytes: int | None = None


PRODUCT_LABELS = {UsageProduct.RUNNING: "running", UsageProduct.RETENTION: "stopped, data retention"}
PRODUCT_ORDER = {UsageProduct.RUNNING: 0, UsageProduct.RETENTION: 1, "traffic": 2}


def usage_line(
    *,
    description: str,
    seconds: int,
    unit_price: Decimal,
    currency: str,
    product: str,
    deployment_id: int | None,
    tier_id: int | None = None,
    usage_month: datetime.date | None = None,
) -> LineDraft:
    quantity = (Decimal(seconds) / SECONDS_PER_HOUR).quantize(QUANTITY_PLACES)
    return LineDraft(
        description=description,
        quantity=quantity,
        unit="hour",
        unit_price=unit_price,
        amount=usage_line_amount(seconds=seconds, hourly_price=unit_price, currency=currency),
        product=product,
        deployment_id=deployment_id,
        seconds=seconds,
        tier_id=tier_id,
        usage_month=usage_month,
    )


@dataclass(frozen=True, slots=True)
class DeploymentLabel:
    name: str
    public_id: str
    plan_id: int
    tier_id: int


class Labels:
    """Names of deployments and tiers for line descriptions, loaded once per run: of the deployments with the given
    ids, or of every deployment of the organizations a subquery (`organizations`) names."""

    def __init__(self, deployment_ids=(), *, organizations=None) -> None:
        deployments = Deployment.objects.all()
        if organizations is not None:  # a subquery: no list of ids travels to the database
            deployments = deployments.filter(project__organization_id__in=organizations)
        else:
            deployments = deployments.filter(pk__in=set(deployment_ids))
        self.deployments = {
            pk: DeploymentLabel(name, public_id, plan_id, tier_id)
            for pk, name, public_id, plan_id, tier_id in deployments.values_list(
                "pk", "name", "public_id", "plan_id", "tier_id"
            )
        }
        self.tiers = {t.pk: t for t in Tier.objects.select_related("plan")}

    def deployment(self, deployment_id: int) -> str:
        d = self.deployments[deployment_id]
        return f"{d.name} ({d.public_id})"

    def tier(self, tier_id: int) -> str:
        tier = self.tiers[tier_id]
        return f"{tier.plan.name} {tier.code}"


def _late_suffix(month: datetime.date, period_month: datetime.date | None) -> str:
    return f", late usage for {month:%B %Y}" if period_month is not None and month < period_month else ""


@dataclass
class BuiltLines:
    lines: list[LineDraft]
    unpriced_seconds: int = 0
    unpriced_bytes: int = 0

    @property
    def unpriced(self) -> bool:
        return bool(self.unpriced_seconds or self.unpriced_bytes)


def build_lines(
    *,
    usage_rows,
    traffic_usages,
    currency: str,
    period_month: datetime.date | None,
    labels: Labels,
    catalog: traffic.TrafficCatalog,
) -> BuiltLines:
    """The lines of one invoice, and of the overview that forecasts it: one per deployment, product, tier, price and
    month of usage (a month before `period_month` is late usage), one per deployment and month of traffic. Each
    amount is rounded once. Rows without a price make no line; they are counted as unpriced."""
    built = BuiltLines([])
    keyed = []
    for row in usage_rows:
        if row["unit_price"] is None:
            built.unpriced_seconds += row["seconds"]
            continue
        month = row["month"]
        line = usage_line(
            description=f"{labels.deployment(row['deployment_id'])}, {labels.tier(row['tier_id'])}, "
            f"{PRODUCT_LABELS[row['product']]}{_late_suffix(month, period_month)}",
            seconds=row["seconds"],
            unit_price=row["unit_price"],
            currency=currency,
            product=row["product"],
            deployment_id=row["deployment_id"],
            tier_id=row["tier_id"],
            usage_month=month,
        )
        keyed.append(((row["deployment_id"], month, PRODUCT_ORDER[row["product"]], row["tier_id"]), line))
    for usage in traffic_usages:
        deployment = labels.deployments[usage.deployment_id]
        tier = labels.tiers[deployment.tier_id]
        charge = traffic.traffic_charge(
            usage=usage,
            allowance_bytes=catalog.allowance_bytes(plan_id=deployment.plan_id, month=usage.month),
            price_per_gib=catalog.price_per_gib(tier=tier, currency=currency, month=usage.month),
            currency=currency,
        )
        if charge.amount is None:
            built.unpriced_bytes += usage.bytes
            continue
        included = charge.allowance_bytes // traffic.BYTES_PER_GIB
        line = LineDraft(
            description=f"{labels.deployment(usage.deployment_id)}, traffic {traffic.gibibytes(usage.bytes)} GiB in + "
            f"out, {included} GiB a month included{_late_suffix(usage.month, period_month)}",
            quantity=traffic.gibibytes(charge.billable_bytes),
            unit="GiB",
            unit_price=charge.price_per_gib,
            amount=charge.amount,
            product="traffic",
            deployment_id=usage.deployment_id,
            usage_month=usage.month,
            bytes=usage.bytes,
        )
        keyed.append(((usage.deployment_id, usage.month, PRODUCT_ORDER["traffic"], 0), line))
    keyed.sort(key=lambda item: item[0])
    built.lines = [line for _, line in keyed]
    return built


USAGE_GROUP = ("organization_id", "deployment_id", "product", "tier_id", "unit_price", "currency")


class UtcMonth(Func):
    """The first day of the UTC month of a timestamp, computed by PostgreSQL (no per-row time zone conversion)."""

    template = "(date_trunc('month', %(expressions)s AT TIME ZONE 'UTC'))::date"
    output_field = DateField()


def usage_rows(queryset) -> list[dict]:
    """UsageRecord rows summed the way lines are: per deployment, product, tier, price and month."""
    return list(
        queryset.annotate(month=UtcMonth("hour"))
        .values(*USAGE_GROUP, "month")
        .annotate(seconds=Sum("seconds"))
        .order_by()
    )


# --- Credits ---------------------------------------------------------------------------------------------------------


@dataclass
class Settlement:
    subtotal: int
    credits: int
    tax: int
    total: int
    applications: list[tuple[CreditGrant, int]] = field(default_factory=list)


def settle(
    *,
    subtotal: int,
    grants: list[CreditGrant],
    rate: Decimal,
    caps: dict[int, int] | None = None,
    used: dict[int, int] | None = None,
) -> Settlement:
    """Consume `grants` (ordered oldest first) up to the subtotal, then tax what is left. `used` is what invoices
    composed before this one in the same run took of each grant (by id): not written to the grants yet, not free.

    A grant in `caps` expired inside the period: it pays at most the usage before its expiry (its cap). Those come
    first, soonest expiry first, each capped by its usage less what the grants before it paid; then the rest, oldest
    first. So a credit that could pay any usage never takes the early usage an expiring one needed."""
    caps = caps or {}
    used = used or {}
    ordered = sorted(
        grants,
        key=lambda g: (0, g.expires_at, g.pk) if g.pk in caps else (1, g.granted_at, g.pk),
    )
    left = subtotal
    applied = 0
    applications = []
    for grant in ordered:
        if left <= 0:
            break
        limit = grant.remaining - used.get(grant.pk, 0)
        if grant.pk in caps:
            limit = min(limit, max(caps[grant.pk] - applied, 0))
        take = min(limit, left)
        if take > 0:
            applications.append((grant, take))
            left -= take
            applied += take
    credits = subtotal - left
    tax = percentage_of(amount_minor=left, rate_percent=rate)
    return Settlement(subtotal, credits, tax, left + tax, applications)


def usable_grants_q(*, at: datetime.datetime, allow_coupons: bool) -> Q:
    """Grants usable by an invoice issued at `at` for no period (annual plans and upgrades)."""
    q = Q(remaining__gt=0, granted_at__lte=at) & (Q(expires_at__isnull=True) | Q(expires_at__gt=at))
    if not allow_coupons:  # coupons never apply to annual plans (EMQX Cloud's rule)
        q &= ~Q(kind=CreditKind.COUPON)
    return q


def period_grants_q(*, start: datetime.datetime, end: datetime.datetime) -> Q:
    """Grants that apply to usage of [start, end): granted by its end, and not expired before it began. One that
    expires at the end or later applies in full; one that expires inside it, to the usage before its expiry."""
    return Q(remaining__gt=0, granted_at__lte=end) & (Q(expires_at__isnull=True) | Q(expires_at__gt=start))


def expiry_caps(
    grants: list[CreditGrant], *, end: datetime.datetime, usage, currency: str, period_month, labels: Labels
) -> dict[int, int]:
    """For each grant that expires before `end`: the amount of `usage` (a UsageRecord queryset, the invoice's) in
    the hours that ended by its expiry, lines built and rounded as on the invoice. Traffic counts as used at the
    period's end, so it is never paid by a credit that expired before."""
    caps = {}
    for grant in grants:
        if grant.expires_at is None or grant.expires_at >= end:
            continue
        rows = usage_rows(usage.filter(hour__lte=grant.expires_at - metering.HOUR))
        built = build_lines(
            usage_rows=rows,
            traffic_usages=[],
            currency=currency,
            period_month=period_month,
            labels=labels,
            catalog=traffic.TrafficCatalog(),
        )
        caps[grant.pk] = sum(line.amount for line in built.lines)
    return caps


# --- Exchange rates ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VatExchange:
    currency: str
    rate: Decimal  # units of `currency` per unit of the invoice currency
    on: datetime.date
    tax: int


def exchange_rate(*, from_currency: str, to_currency: str, on: datetime.date) -> tuple[Decimal, datetime.date] | None:
    """The ECB reference rate from one currency to another on the last publication day on or before `on` (at most
    a week before), as units of `to_currency` per unit of `from_currency`; None when not loaded."""
    needed = {c for c in (from_currency, to_currency) if c != "EUR"}
    if not needed:
        return Decimal(1), on
    candidates = ExchangeRate.objects.filter(
        currency__in=needed, on__lte=on, on__gte=on - datetime.timedelta(days=EXCHANGE_RATE_MAX_AGE_DAYS)
    ).order_by("-on")
    by_day: dict[datetime.date, dict[str, Decimal]] = defaultdict(dict)
    for rate in candidates:
        by_day[rate.on][rate.currency] = rate.rate
    for day in sorted(by_day, reverse=True):
        rates = by_day[day]
        if needed <= rates.keys():
            per_eur_from = rates.get(from_currency, Decimal(1))
            per_eur_to = rates.get(to_currency, Decimal(1))
            return (per_eur_to / per_eur_from).quantize(Decimal("0.000000000001")), day
    return None


class RateBook:
    """Exchange rates looked up once per (from, to, day) for one run."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, datetime.date], tuple[Decimal, datetime.date] | None] = {}

    def rate(self, *, from_currency: str, to_currency: str, on: datetime.date) -> tuple[Decimal, datetime.date] | None:
        key = (from_currency, to_currency, on)
        if key not in self._cache:
            self._cache[key] = exchange_rate(from_currency=from_currency, to_currency=to_currency, on=on)
        return self._cache[key]


class NoVatExchange(enum.Enum):
    """Why an invoice carries no VAT in the national currency."""

    NOT_NEEDED = "not_needed"  # no VAT charged, or the invoice is in the national currency already
    RATE_MISSING = "rate_missing"  # needed, but no rate is loaded: the invoice waits


def vat_exchange(
    *, currency: str, tax: int, on: datetime.date, rates: RateBook | None = None
) -> VatExchange | NoVatExchange:
    """The VAT in the seller country's national currency when the invoice is in another and VAT is charged."""
    national = national_currency(settings.SELLER_COUNTRY, on)
    if tax <= 0 or national is None or national == currency:
        return NoVatExchange.NOT_NEEDED
    found = (rates or RateBook()).rate(from_currency=currency, to_currency=national, on=on)
    if found is None:
        return NoVatExchange.RATE_MISSING
    rate, day = found
    return VatExchange(
        national, rate, day, convert(amount_minor=tax, currency=currency, to_currency=national, rate=rate)
    )


# --- Numbering ---------------------------------------------------------------------------------------------------


def _seller_key() -> str:
    return (settings.SELLER_VAT_NUMBER or settings.SELLER_NAME)[:64]


def reserve_numbers(*, count: int, year: int, series: str = NumberSeries.INVOICE) -> list[str]:
    """`count` consecutive numbers of `series` for the seller and year. Must run inside the transaction that writes
    the documents: the counter row stays locked until it commits, and a rollback gives the numbers back."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("invoice numbers must be reserved inside the invoices' transaction")
    if count <= 0:
        return []
    seller = _seller_key()
    InvoiceNumberCounter.objects.get_or_create(seller=seller, series=series, year=year)
    counter = InvoiceNumberCounter.objects.select_for_update().get(seller=seller, series=series, year=year)
    first = counter.last_number + 1
    counter.last_number += count
    counter.save(update_fields=["last_number"])
    prefix = settings.INVOICE_NUMBER_PREFIX + ("-CN" if series == NumberSeries.CREDIT_NOTE else "")
    return [f"{prefix}-{year}-{n:06d}" for n in range(first, first + count)]


# --- The one invoice builder ----------------------------------------------------------------------------------------


@dataclass
class Composed:
    """An invoice as computed: its field values, lines and credit applications; `holds` empty means issuable."""

    values: dict
    lines: list[LineDraft]
    applications: list[tuple[CreditGrant, int]]
    holds: list[str]

    def invoice(self, **extra) -> Invoice:
        return Invoice(**self.values, **extra)


def compose(
    *,
    account: BillingAccount,
    kind: str,
    lines: list[LineDraft],
    details: BillingDetails,
    address: BillingDetails,
    tax_on: datetime.date,
    now: datetime.datetime,
    grants: list[CreditGrant],
    caps: dict[int, int] | None = None,
    unpriced: bool = False,
    period: tuple[datetime.date, datetime.date] | None = None,
    subscription=None,
    rates: RateBook | None = None,
    seller: dict | None = None,
    used: dict[int, int] | None = None,
) -> Composed:
    """Every invoice is built here, monthly or single: the holds first (an incomplete address, usage without a
    price, a missing exchange rate), then, when nothing holds it, credits, tax and the VAT in the national
    currency. A held invoice is a draft that consumed nothing: subtotal only, no number."""
    holds = []
    if missing_address_fields(address):
        holds.append(HoldReason.ADDRESS_INCOMPLETE)
    if unpriced:
        holds.append(HoldReason.UNPRICED_USAGE)
    decision = tax_decision(details, tax_on)
    subtotal = sum(line.amount for line in lines)
    result = Settlement(subtotal, 0, 0, subtotal)
    exchange: VatExchange | None = None
    if not holds:
        result = settle(subtotal=subtotal, grants=grants, rate=decision.rate, caps=caps, used=used)
        found = vat_exchange(currency=account.currency, tax=result.tax, on=tax_on, rates=rates)
        if found is NoVatExchange.RATE_MISSING:
            holds.append(HoldReason.EXCHANGE_RATE_MISSING)
            result = Settlement(subtotal, 0, 0, subtotal)
        elif isinstance(found, VatExchange):
            exchange = found
    issued = not holds
    values = {
        "billing_account": account,
        "kind": kind,
        "status": (InvoiceStatus.OPEN if result.total else InvoiceStatus.PAID) if issued else InvoiceStatus.DRAFT,
        "currency": account.currency,
        "period_start": period[0] if period else None,
        "period_end": period[1] if period else None,
        "subtotal": result.subtotal,
        "credits_applied": result.credits,
        "tax_treatment": decision.treatment.value,
        "tax_rate": decision.rate,
        "tax_mention": decision.mention or "",
        "tax": result.tax,
        "total": result.total,
        "customer": customer_snapshot(details, fallback_name=account.organization.name, address=address),
        "seller": seller or seller_snapshot(),
        "subscription": subscription,
        "details": details if details.pk else None,
        "hold_reasons": [str(h) for h in holds],
        "notes": [decision.note] if decision.note else [],
        "vat_currency": exchange.currency if exchange is not None else "",
        "vat_exchange_rate": exchange.rate if exchange is not None else None,
        "vat_exchange_rate_date": exchange.on if exchange is not None else None,
        "tax_in_vat_currency": exchange.tax if exchange is not None else None,
        "issued_at": now if issued else None,
        "due_at": now + datetime.timedelta(days=settings.BILLING_PAYMENT_TERMS_DAYS) if issued else None,
        "paid_at": now if issued and not result.total else None,
    }
    return Composed(values, lines, result.applications if issued else [], [str(h) for h in holds])


def _apply_credits(applications: list[tuple[Invoice, CreditGrant, int]]) -> None:
    touched = {}
    for _invoice, grant, amount in applications:
        grant.remaining -= amount
        touched[grant.pk] = grant
    CreditApplication.objects.bulk_create(
        [CreditApplication(grant=grant, invoice=invoice, amount=amount) for invoice, grant, amount in applications],
        batch_size=5000,
    )
    CreditGrant.objects.bulk_update(touched.values(), ["remaining"], batch_size=1000)


LINE_COLUMNS = (
    "invoice_id",
    "deployment_id",
    "product",
    "description",
    "seconds",
    "quantity",
    "unit",
    "unit_price",
    "amount",
    "tier_id",
    "usage_month",
    "bytes",
)


def _write_lines(rows: list[tuple[int, LineDraft]]) -> None:
    """The lines exactly as computed, through COPY: a hundred thousand in a blink."""
    table = connection.ops.quote_name(InvoiceLine._meta.db_table)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({', '.join(LINE_COLUMNS)}) FROM STDIN") as copy:
            for invoice_id, line in rows:
                copy.write_row(
                    (
                        invoice_id,
                        line.deployment_id,
                        line.product,
                        line.description,
                        line.seconds,
                        line.quantity,
                        line.unit,
                        line.unit_price,
                        line.amount,
                        line.tier_id,
                        line.usage_month,
                        line.bytes,
                    )
                )


def _enqueue_collection(invoice_ids: list[int]) -> None:
    if invoice_ids:
        from billing import services

        transaction.on_commit(lambda: services.invoice_collection_enqueue(invoice_ids))


def _report_held(invoices: list[Invoice]) -> None:
    """A held invoice is an error the operator must see and a fact the customer must hear about."""
    if not invoices:
        return
    shown = ", ".join(f"{i.public_id} ({'; '.join(i.hold_reasons)})" for i in invoices[:20])
    logger.error("%s invoices held as drafts: %s%s", len(invoices), shown, ", …" if len(invoices) > 20 else "")
    from billing import services

    for invoice in invoices:
        services.invoice_held_notify(invoice=invoice)


# --- Single invoices (annual plans, upgrades) ------------------------------------------------------------------------


def invoice_issue(
    *,
    account: BillingAccount,
    kind: str,
    lines: list[LineDraft],
    now: datetime.datetime,
    allow_coupons: bool,
    subscription=None,
    period: tuple[datetime.date, datetime.date] | None = None,
    replaces: Invoice | None = None,
) -> Invoice:
    """Compute and write one invoice: issued (open, or paid when nothing is left to pay) with its number, or a
    draft held until it can be issued complete; `replaces` is the voided invoice it bills again. The caller enqueues
    the collection of an open one."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("invoice_issue must run inside a transaction")
    details = current_details(account)
    grants = list(
        CreditGrant.objects.select_for_update()
        .filter(
            usable_grants_q(at=now, allow_coupons=allow_coupons), billing_account=account, currency=account.currency
        )
        .order_by("granted_at", "id")
    )
    composed = compose(
        account=account,
        kind=kind,
        lines=lines,
        details=details,
        address=details,
        tax_on=now.date(),
        now=now,
        grants=grants,
        period=period,
        subscription=subscription,
    )
    number = None if composed.holds else reserve_numbers(count=1, year=now.year)[0]
    invoice = composed.invoice(number=number)
    invoice.replaces = replaces
    invoice.save()
    _write_lines([(invoice.pk, line) for line in lines])
    _apply_credits([(invoice, grant, amount) for grant, amount in composed.applications])
    if composed.holds:
        transaction.on_commit(lambda: _report_held([invoice]))
    return invoice


# --- The monthly close -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloseResult:
    period_start: datetime.date
    invoices: list[int]  # issued
    held: list[int] = field(default_factory=list)  # drafts waiting for an address, a price or a rate


def month_bounds(month: datetime.date) -> tuple[datetime.datetime, datetime.datetime]:
    start = datetime.datetime(month.year, month.month, 1, tzinfo=UTC)
    return start, metering.next_month_start(start)


def month_last_day(month: datetime.date) -> datetime.date:
    """The last day of `month` (a date in it): the supply date its usage is taxed on."""
    return (month_bounds(month)[1] - datetime.timedelta(days=1)).date()


def lock_usage_for_invoicing(period_start: datetime.date) -> None:
    """One close of a month at a time, and no usage or traffic written while invoices read and mark it: metering
    batches and traffic samples wait for the commit, then land unbilled (late usage for the next invoice)."""
    xact_lock(LockSpace.INVOICE_CLOSE, int(period_start.strftime("%Y%m")))
    xact_lock(LockSpace.METERING, metering.USAGE_LOCK)
    xact_lock(LockSpace.METERING, metering.TRAFFIC_LOCK)


def invoices_close(
    *,
    month: datetime.date,
    now: datetime.datetime | None = None,
    organization_ids=None,
    record: Callable[[CloseResult], None] | None = None,
) -> CloseResult:
    """Invoice every billing account's unbilled usage and traffic up to the end of `month` (a date in it): this
    month's, and late usage of earlier months, on the monthly invoice when taxed alike, else on a late-usage invoice
    of its own month (`_split_months`). Safe to run again: an account gets one live monthly invoice per
    period (a unique constraint), and usage once invoiced is never billed twice. `organization_ids` limits the
    close to those organizations (a corrected invoice after a credit note). `record(result)` runs inside the close's
    transaction (the caller's audit event: invoices and their event commit together or not at all)."""
    now = now or timezone.now()
    start, end = month_bounds(month)
    if now < end:
        raise ValueError(f"{start:%Y-%m} is not over yet")
    # The last hours of the month may not have been metered yet (a beat that ran late): catch them up first, and
    # price what a new catalog price now covers.
    metering.usage_meter(now=end)
    metering.usage_price_pending()
    with transaction.atomic():
        lock_usage_for_invoicing(start.date())
        issued, held = _close(start=start, end=end, now=now, organization_ids=organization_ids)
        if organization_ids is None:
            MonthClose.objects.update_or_create(
                period_start=start.date(), defaults={"closed_at": now, "invoices": len(issued), "held": len(held)}
            )
        result = CloseResult(start.date(), issued, held)
        if record is not None:
            record(result)
    logger.info("closed %s: %s invoices issued, %s held", start.strftime("%Y-%m"), len(issued), len(held))
    return result


def _close(*, start, end, now, organization_ids=None) -> tuple[list[int], list[int]]:
    period_month, last_day = start.date(), month_last_day(start.date())
    usage = UsageRecord.objects.filter(invoice__isnull=True, hour__lt=end)
    traffic_rows = TrafficRecord.objects.filter(invoice__isnull=True, day__lt=end.date())
    if organization_ids is not None:
        usage = usage.filter(organization_id__in=organization_ids)
        traffic_rows = traffic_rows.filter(organization_id__in=organization_ids)
    org_ids = set(usage.values_list("organization_id", flat=True).distinct())
    org_ids |= set(traffic_rows.values_list("organization_id", flat=True).distinct())
    if not org_ids:
        return [], []
    BillingAccount.objects.bulk_create([BillingAccount(organization_id=o) for o in org_ids], ignore_conflicts=True)
    live = Invoice.objects.filter(kind=InvoiceKind.MONTHLY, period_start=period_month).exclude(
        status=InvoiceStatus.VOID
    )
    # The accounts invoiced now, as a subquery: ten thousand ids never travel as parameters.
    included = BillingAccount.objects.filter(
        Q(organization_id__in=usage.values("organization_id"))
        | Q(organization_id__in=traffic_rows.values("organization_id"))
    ).exclude(pk__in=live.values("billing_account_id"))
    accounts = {a.organization_id: a for a in included.select_related("organization")}
    if not accounts:
        return [], []
    included_orgs = included.values("organization_id")
    rows_of: dict[int, list[dict]] = defaultdict(list)
    for row in usage_rows(usage.filter(organization_id__in=included_orgs)):
        rows_of[row["organization_id"]].append(row)
    traffic_of: dict[int, list] = defaultdict(list)
    for item in traffic.unbilled_traffic(organization_ids=included_orgs, before=end.date(), period_month=period_month):
        traffic_of[item.organization_id].append(item)
    labels = Labels(organizations=included_orgs)
    catalog = traffic.TrafficCatalog()
    details_of = _details_in_force_bulk(included.values("pk"), end)
    grants_of: dict[int, list[CreditGrant]] = defaultdict(list)
    for grant in (
        CreditGrant.objects.select_for_update()
        .filter(period_grants_q(start=start, end=end), billing_account_id__in=included.values("pk"))
        .order_by("granted_at", "id")
    ):
        grants_of[grant.billing_account_id].append(grant)

    context = _CloseContext(now=now, labels=labels, catalog=catalog, rates=RateBook(), seller=seller_snapshot())
    late_details = _late_details(rows_of, traffic_of, accounts, period_month)
    composed: list[tuple[BillingAccount, Composed]] = []
    for account in sorted(accounts.values(), key=lambda a: a.pk):
        rows, usages = rows_of[account.organization_id], traffic_of[account.organization_id]
        if not rows and not usages:
            continue
        foreign = {r["currency"] for r in rows} - {account.currency}
        if foreign:
            # billing.services refuses a currency change while usage is unbilled, so this is a bug: leave the
            # account's usage untouched, loudly, rather than bill it in the wrong currency.
            logger.error(
                "account %s has unbilled usage in %s, is billed in %s", account.public_id, foreign, account.currency
            )
            continue
        details = details_of.get(account.pk) or details_from_account(account)
        account_usage = usage.filter(organization_id=account.organization_id)
        # Late usage of a month whose tax decision differs from this one's goes on its own invoice (Art. 64(1)).
        split = _split_months(
            account,
            late_details,
            months={r["month"] for r in rows} | {u.month for u in usages},
            decision=tax_decision(details, last_day),
        )
        for month in split:
            account_usage = account_usage.exclude(hour__gte=month_bounds(month)[0], hour__lt=month_bounds(month)[1])
        monthly_rows = [r for r in rows if r["month"] not in split]
        monthly_usages = [u for u in usages if u.month not in split]
        grants = [g for g in grants_of[account.pk] if g.currency == account.currency]
        used: dict[int, int] = {}
        if monthly_rows or monthly_usages:
            monthly = _compose_month(
                account,
                kind=InvoiceKind.MONTHLY,
                month=period_month,
                rows=monthly_rows,
                usages=monthly_usages,
                details=details,
                grants=grants,
                usage=account_usage,
                used=used,
                context=context,
            )
            composed.append((account, monthly))
            _add_used(used, monthly.applications)
        # Then each split month, oldest first, paid by what the grants usable in that month have left.
        shared = {g.pk: g for g in grants}
        for month, late_month in sorted(split.items()):
            month_start, month_end = month_bounds(month)
            month_grants = [
                shared.setdefault(g.pk, g) for g in _month_grants(account, start=month_start, end=month_end)
            ]
            late = _compose_month(
                account,
                kind=InvoiceKind.LATE_USAGE,
                month=month,
                rows=[r for r in rows if r["month"] == month],
                usages=[u for u in usages if u.month == month],
                details=late_month.details,
                grants=month_grants,
                usage=usage.filter(organization_id=account.organization_id, hour__gte=month_start, hour__lt=month_end),
                used=used,
                context=context,
            )
            composed.append((account, late))
            _add_used(used, late.applications)
    if not composed:
        return [], []
    return _write_composed([c for _, c in composed], now=now, period_start=period_month, end=end)


def _write_composed(
    composed: list[Composed], *, now: datetime.datetime, period_start: datetime.date, end: datetime.datetime, **extra
) -> tuple[list[int], list[int]]:
    """Write what a close (of the month `period_start`, ending at `end`) composed: numbers, invoices, lines,
    credits, and the usage and traffic attached to them (`_mark_invoiced`); collection and held notices on commit.
    `extra` are fields every invoice gets (`replaces`). Returns the ids issued and held."""
    numbers = iter(reserve_numbers(count=sum(1 for c in composed if not c.holds), year=now.year))
    invoices = [c.invoice(number=None if c.holds else next(numbers), **extra) for c in composed]
    _insert_invoices(invoices)
    _write_lines([(invoice.pk, line) for invoice, c in zip(invoices, composed) for line in c.lines])
    _apply_credits(
        [(invoice, grant, amount) for invoice, c in zip(invoices, composed) for grant, amount in c.applications]
    )
    _mark_invoiced(first_id=invoices[0].pk, last_id=invoices[-1].pk, period_start=period_start, end=end)
    issued = [i.pk for i in invoices if i.status != InvoiceStatus.DRAFT]
    held = [i for i in invoices if i.status == InvoiceStatus.DRAFT]
    _enqueue_collection([i.pk for i in invoices if i.status == InvoiceStatus.OPEN])
    transaction.on_commit(lambda: _report_held(held))
    return issued, [i.pk for i in held]


def late_usage_reissue(*, voided: Invoice, now: datetime.datetime | None = None) -> CloseResult:
    """The corrected invoice of `voided`, a voided late-usage invoice of month M, issued now rather than at the next
    close: M's usage and traffic that are unbilled (what voiding released, and any of M metered since) on a new
    late-usage invoice for M, composed by the close's own `_compose_month` with M's rules: the details in force at
    M's end, the rate and exchange rate of M's last day, the credits usable in M (Art. 64(1) Directive
    2006/112/EC). Usage of any other month stays for its close. Empty when nothing of M is left to bill."""
    if voided.kind != InvoiceKind.LATE_USAGE or voided.status != InvoiceStatus.VOID or voided.period_start is None:
        raise ValueError(f"{voided.public_id} is not a voided late-usage invoice")
    now = now or timezone.now()
    month = voided.period_start
    start, end = month_bounds(month)
    with transaction.atomic():
        # The month's close lock and the metering locks: no close and no metering writes M's rows meanwhile.
        lock_usage_for_invoicing(start.date())
        issued, held = _late_usage_reissue(voided, month=month, now=now)
    logger.info("late usage of %s reissued: %s invoices issued, %s held", start.strftime("%Y-%m"), issued, held)
    return CloseResult(start.date(), issued, held)


def _late_usage_reissue(
    voided: Invoice, *, month: datetime.date, now: datetime.datetime
) -> tuple[list[int], list[int]]:
    account = (
        BillingAccount.objects.select_related("organization").select_for_update().get(pk=voided.billing_account_id)
    )
    start, end = month_bounds(month)
    after = end.date()  # M's rows are late usage as seen from the month after it, as the close that split them saw
    usage = UsageRecord.objects.filter(
        organization_id=account.organization_id, invoice__isnull=True, hour__gte=start, hour__lt=end
    )
    rows = usage_rows(usage)
    usages = [
        u
        for u in traffic.unbilled_traffic(organization_ids=[account.organization_id], before=after, period_month=after)
        if u.month == month
    ]
    if not rows and not usages:
        return [], []
    foreign = {r["currency"] for r in rows} - {account.currency}
    if foreign:  # as in _close: a bug, never billed in the wrong currency
        logger.error(
            "account %s has unbilled usage in %s, is billed in %s", account.public_id, foreign, account.currency
        )
        return [], []
    context = _CloseContext(
        now=now,
        labels=Labels({r["deployment_id"] for r in rows} | {u.deployment_id for u in usages}),
        catalog=traffic.TrafficCatalog(),
        rates=RateBook(),
        seller=seller_snapshot(),
    )
    composed = _compose_month(
        account,
        kind=InvoiceKind.LATE_USAGE,
        month=month,
        rows=rows,
        usages=usages,
        details=details_in_force(account, end),
        grants=_month_grants(account, start=start, end=end),
        usage=usage,
        used={},
        context=context,
    )
    return _write_composed([composed], now=now, period_start=after, end=end, replaces=voided)


@dataclass(frozen=True)
class _CloseContext:
    """What every invoice of one close shares."""

    now: datetime.datetime
    labels: Labels
    catalog: traffic.TrafficCatalog
    rates: RateBook
    seller: dict


def _compose_month(
    account: BillingAccount,
    *,
    kind: str,
    month: datetime.date,
    rows: list[dict],
    usages: list,
    details: BillingDetails,
    grants: list[CreditGrant],
    usage,
    used: dict[int, int],
    context: _CloseContext,
) -> Composed:
    """One invoice of the close for the supply of `month`: its lines (usage of earlier months marked late), taxed by
    `details` on the month's last day, paid by `grants` less what this close's earlier invoices `used`, capped by
    their expiry against `usage` (the invoice's usage records)."""
    start, end = month_bounds(month)
    last_day = month_last_day(month)
    built = build_lines(
        usage_rows=rows,
        traffic_usages=usages,
        currency=account.currency,
        period_month=month,
        labels=context.labels,
        catalog=context.catalog,
    )
    caps = (
        expiry_caps(grants, end=end, usage=usage, currency=account.currency, period_month=month, labels=context.labels)
        if any(g.expires_at is not None and g.expires_at < end for g in grants)
        else None
    )
    return compose(
        account=account,
        kind=kind,
        lines=built.lines,
        details=details,
        address=details,
        tax_on=last_day,
        now=context.now,
        grants=grants,
        caps=caps,
        unpriced=built.unpriced,
        period=(start.date(), last_day),
        rates=context.rates,
        seller=context.seller,
        used=used,
    )


def _late_details(rows_of, traffic_of, accounts, period_month) -> dict[datetime.date, dict[int, BillingDetails]]:
    """For each month of late usage (before `period_month`): the details in force at its end of the accounts that
    have late usage of it, by account id. One query per such month."""
    months: dict[datetime.date, list[int]] = defaultdict(list)
    for organization_id, account in accounts.items():
        late = {r["month"] for r in rows_of.get(organization_id, ())} | {
            u.month for u in traffic_of.get(organization_id, ())
        }
        for month in late:
            if month < period_month:
                months[month].append(account.pk)
    return {month: _details_in_force_bulk(ids, month_bounds(month)[1]) for month, ids in months.items()}


class LateMonth(NamedTuple):
    """A month of late usage billed on a late-usage invoice of its own: the details in force at its end, and its
    tax decision by them."""

    details: BillingDetails
    decision: TaxDecision


def _split_months(
    account: BillingAccount,
    late_details: dict[datetime.date, dict[int, BillingDetails]],
    *,
    months,
    decision: TaxDecision,
) -> dict[datetime.date, LateMonth]:
    """The months of late usage whose own tax decision (the details in force at their end, the rate on their last
    day: Art. 64(1) Directive 2006/112/EC) differs from `decision`, the invoiced month's, with those details and that
    decision. Late usage of any other month stays on the monthly invoice: taxed alike, it needs no invoice of its
    own."""
    split = {}
    for month in months:
        if month not in late_details:
            continue  # the invoiced month itself
        details = late_details[month].get(account.pk) or details_from_account(account)
        own = tax_decision(details, month_last_day(month))
        if own != decision:
            split[month] = LateMonth(details, own)
    return split


def _month_grants(account: BillingAccount, *, start: datetime.datetime, end: datetime.datetime) -> list[CreditGrant]:
    """The account's grants in its currency that apply to usage of [start, end) (period_grants_q), locked, oldest
    first: what pays an invoice for that month."""
    return list(
        CreditGrant.objects.select_for_update()
        .filter(period_grants_q(start=start, end=end), billing_account=account, currency=account.currency)
        .order_by("granted_at", "id")
    )


def _add_used(used: dict[int, int], applications: list[tuple[CreditGrant, int]]) -> None:
    for grant, amount in applications:
        used[grant.pk] = used.get(grant.pk, 0) + amount


def _insert_invoices(invoices: list[Invoice]) -> None:
    """Write the invoices through COPY with ids taken from their sequence first (ascending: `_mark_invoiced` relies
    on it): bulk_create's per-value SQL quoting was most of a ten-thousand-account close."""
    fields = [f for f in Invoice._meta.concrete_fields]
    table = connection.ops.quote_name(Invoice._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [Invoice._meta.db_table, len(invoices)],
        )
        ids = sorted(row[0] for row in cursor.fetchall())
        for invoice, pk in zip(invoices, ids):
            invoice.pk = pk
        columns = ", ".join(connection.ops.quote_name(_column(f)) for f in fields)
        with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for invoice in invoices:
                copy.write_row(
                    [
                        Jsonb(getattr(invoice, f.attname)) if isinstance(f, JSONField) else f.pre_save(invoice, True)
                        for f in fields
                    ]
                )
    for invoice in invoices:
        invoice._state.adding, invoice._state.db = False, "default"


def _column(field: Field) -> str:
    if field.column is None:
        # Django calls a field concrete exactly when it has a column; only concrete fields are copied.
        raise RuntimeError(f"{field} has no column")
    return field.column


def _mark_invoiced(*, first_id: int, last_id: int, period_start: datetime.date, end: datetime.datetime) -> None:
    """Attach every unbilled usage record and traffic row before `end` of each organization to its new invoice:
    exactly the rows read above, as the close holds the metering locks. The new invoices are those with ids from
    `first_id` to `last_id`: the month's lock keeps any other close of it out meanwhile. A late-usage invoice takes
    the rows of its month first; this period's monthly invoice takes the rest."""
    params: dict[str, int | str | datetime.date] = {
        "first": first_id,
        "last": last_id,
        "period": period_start,
        "end": end,
        "end_day": end.date(),
        "late_usage": InvoiceKind.LATE_USAGE,
        "monthly": InvoiceKind.MONTHLY,
    }
    invoice = connection.ops.quote_name(Invoice._meta.db_table)
    account = connection.ops.quote_name(BillingAccount._meta.db_table)
    usage_table = connection.ops.quote_name(UsageRecord._meta.db_table)
    traffic_table = connection.ops.quote_name(TrafficRecord._meta.db_table)
    with connection.cursor() as cursor:
        for table, in_period in (
            (
                usage_table,
                "u.hour >= (i.period_start::timestamp AT TIME ZONE 'UTC') "
                "AND u.hour < ((i.period_end + 1)::timestamp AT TIME ZONE 'UTC')",
            ),
            (traffic_table, "u.day BETWEEN i.period_start AND i.period_end"),
        ):
            cursor.execute(
                f"""
                UPDATE {table} u SET invoice_id = i.id
                FROM {invoice} i JOIN {account} ba ON ba.id = i.billing_account_id
                WHERE i.id BETWEEN %(first)s AND %(last)s AND i.kind = %(late_usage)s AND i.period_start < %(period)s
                  AND u.organization_id = ba.organization_id AND u.invoice_id IS NULL AND {in_period}
                """,
                params,
            )
        for table, column, bound in ((usage_table, "hour", "end"), (traffic_table, "day", "end_day")):
            cursor.execute(
                f"""
                UPDATE {table} u SET invoice_id = i.id
                FROM {invoice} i JOIN {account} ba ON ba.id = i.billing_account_id
                WHERE i.id BETWEEN %(first)s AND %(last)s AND i.kind = %(monthly)s AND i.period_start = %(period)s
                  AND u.organization_id = ba.organization_id AND u.invoice_id IS NULL AND u.{column} < %({bound})s
                """,
                params,
            )


# --- Held drafts ---------------------------------------------------------------------------------------------------------


def invoices_release_held(*, account: BillingAccount | None = None, now: datetime.datetime | None = None) -> list[int]:
    """Issue every held draft (of one account, or all) whose hold reasons are gone: the address completed, a
    price added for its usage, the exchange rate loaded. Each is rebuilt from what it holds and issued in its own
    transaction; one still held records its current reasons. Returns the ids issued."""
    now = now or timezone.now()
    drafts = Invoice.objects.filter(status=InvoiceStatus.DRAFT).exclude(hold_reasons=[])
    if account is not None:
        drafts = drafts.filter(billing_account=account)
    issued = []
    for invoice_id in drafts.order_by("period_start", "id").values_list("pk", flat=True):
        with transaction.atomic():
            if _release(invoice_id, now):
                issued.append(invoice_id)
    return issued


def _release(invoice_id: int, now: datetime.datetime) -> bool:
    invoice = (
        Invoice.objects.select_for_update()
        .select_related("billing_account__organization")
        .filter(pk=invoice_id)
        .first()
    )
    if invoice is None or invoice.status != InvoiceStatus.DRAFT or not invoice.hold_reasons:
        return False
    account = invoice.billing_account
    current = current_details(account)
    caps = None
    period = _period_of(invoice)
    if invoice.kind in (InvoiceKind.MONTHLY, InvoiceKind.LATE_USAGE):
        # A late-usage invoice is rebuilt as its month's: that month's details, rate, exchange rate and credits.
        if period is None:
            raise RuntimeError(f"{invoice.kind} invoice {invoice.public_id} has no period")
        period_month, last_day = period
        start, end = month_bounds(period_month)
        usage = UsageRecord.objects.filter(invoice=invoice)
        rows = usage_rows(usage)
        records = TrafficRecord.objects.filter(invoice=invoice)
        usages = _attached_traffic(invoice, records)
        labels = Labels({r["deployment_id"] for r in rows} | {u.deployment_id for u in usages})
        built = build_lines(
            usage_rows=rows,
            traffic_usages=usages,
            currency=account.currency,
            period_month=period_month,
            labels=labels,
            catalog=traffic.TrafficCatalog(),
        )
        lines, unpriced, tax_on = built.lines, built.unpriced, last_day
        month_details = details_in_force(account, end)
        # The month's own details decide the tax; the address is theirs, or the one given since that completed it.
        details = month_details if month_details.country else current
        address = details if not missing_address_fields(details) else current
        grants = _month_grants(account, start=start, end=end)
        if any(g.expires_at is not None and g.expires_at < end for g in grants):
            caps = expiry_caps(
                grants,
                end=end,
                usage=usage,
                currency=account.currency,
                period_month=period_month,
                labels=labels,
            )
    else:
        lines = [_draft_of(line) for line in invoice.lines.all()]
        unpriced, tax_on = False, now.date()
        details = current
        address = current
        grants = list(
            CreditGrant.objects.select_for_update()
            .filter(usable_grants_q(at=now, allow_coupons=False), billing_account=account, currency=account.currency)
            .order_by("granted_at", "id")
        )
    composed = compose(
        account=account,
        kind=invoice.kind,
        lines=lines,
        details=details,
        address=address,
        tax_on=tax_on,
        now=now,
        grants=grants,
        caps=caps,
        unpriced=unpriced,
        period=period,
        subscription=invoice.subscription,
    )
    number = None if composed.holds else reserve_numbers(count=1, year=now.year)[0]
    for name, value in composed.values.items():
        setattr(invoice, name, value)
    invoice.number = number
    invoice.save()
    invoice.lines.all().delete()
    _write_lines([(invoice.pk, line) for line in lines])
    if composed.holds:
        return False
    _apply_credits([(invoice, grant, amount) for grant, amount in composed.applications])
    from audit.services import audit_record

    audit_record(
        actor=None,
        organization=account.organization,
        action="billing.invoice.released",
        target=invoice,
        summary={"number": invoice.number, "total": invoice.total},
    )
    if invoice.status == InvoiceStatus.OPEN:
        _enqueue_collection([invoice.pk])
    return True


def _period_of(invoice: Invoice) -> tuple[datetime.date, datetime.date] | None:
    """The period as `compose` wrote it: both days or neither."""
    start, end = invoice.period_start, invoice.period_end
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise RuntimeError(f"invoice {invoice.public_id} has half a period: {start} to {end}")
    return start, end


def _attached_traffic(invoice: Invoice, records) -> list[traffic.TrafficUsage]:
    rows = (
        records.annotate(month=TruncMonth("day"))
        .values("organization_id", "deployment_id", "month")
        .annotate(total=Sum("bytes"))
        .order_by()
    )
    out = []
    for row in rows:
        billed = 0
        # What the month's other invoices billed counts against its allowance: for late traffic of a monthly
        # invoice, and for all of a late-usage invoice's (its month's own invoice billed first).
        if row["month"] < invoice.period_start or invoice.kind == InvoiceKind.LATE_USAGE:
            next_month = (row["month"] + datetime.timedelta(days=32)).replace(day=1)
            billed = (
                TrafficRecord.objects.filter(
                    deployment_id=row["deployment_id"], day__gte=row["month"], day__lt=next_month, invoice__isnull=False
                )
                .exclude(invoice=invoice)
                .aggregate(total=Sum("bytes"))["total"]
                or 0
            )
        out.append(
            traffic.TrafficUsage(row["organization_id"], row["deployment_id"], row["month"], int(row["total"]), billed)
        )
    return out


def line_drafts(invoice: Invoice) -> list[LineDraft]:
    """An invoice's lines as drafts, to bill them again on another invoice."""
    return [_draft_of(line) for line in invoice.lines.all()]


def _draft_of(line: InvoiceLine) -> LineDraft:
    return LineDraft(
        description=line.description,
        quantity=line.quantity,
        unit=line.unit,
        unit_price=line.unit_price,
        amount=line.amount,
        product=line.product,
        deployment_id=line.deployment_id,
        seconds=line.seconds,
        tier_id=line.tier_id,
        usage_month=line.usage_month,
        bytes=line.bytes,
    )


# --- Credit notes ----------------------------------------------------------------------------------------------------


def credit_note_issue(*, invoice: Invoice, now: datetime.datetime, reason: str = "") -> CreditNote:
    """Cancel an issued invoice with a credit note: the next number of the credit-note series, every amount of the
    invoice negated, its parties and tax as they were. Runs in the voiding transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("a credit note is issued inside the transaction that voids its invoice")
    (number,) = reserve_numbers(count=1, year=now.year, series=NumberSeries.CREDIT_NOTE)
    note = CreditNote.objects.create(
        invoice=invoice,
        billing_account=invoice.billing_account,
        number=number,
        currency=invoice.currency,
        subtotal=-invoice.subtotal,
        credits_applied=-invoice.credits_applied,
        tax=-invoice.tax,
        total=-invoice.total,
        tax_treatment=invoice.tax_treatment,
        tax_rate=invoice.tax_rate,
        tax_mention=invoice.tax_mention,
        vat_currency=invoice.vat_currency,
        vat_exchange_rate=invoice.vat_exchange_rate,
        vat_exchange_rate_date=invoice.vat_exchange_rate_date,
        tax_in_vat_currency=-invoice.tax_in_vat_currency if invoice.tax_in_vat_currency is not None else None,
        customer=invoice.customer,
        seller=invoice.seller,
        reason=reason[:300],
        issued_at=now,
    )
    CreditNoteLine.objects.bulk_create(
        [
            CreditNoteLine(
                credit_note=note,
                deployment_id=line.deployment_id,
                product=line.product,
                description=line.description,
                quantity=line.quantity,
                unit=line.unit,
                unit_price=line.unit_price,
                amount=-line.amount,
            )
            for line in invoice.lines.all()
        ],
        batch_size=5000,
    )
    return note


def invoice_release_usage(invoice: Invoice) -> None:
    """A voided invoice lets go of its usage and traffic, so a corrected invoice can bill them once."""
    UsageRecord.objects.filter(invoice=invoice).update(invoice=None)
    for record in TrafficRecord.objects.filter(invoice=invoice):
        # A day's bytes counted after this invoice took the row are in an open row of the same day: merge them.
        open_row = (
            TrafficRecord.objects.select_for_update()
            .filter(deployment_id=record.deployment_id, day=record.day, invoice__isnull=True)
            .first()
        )
        if open_row is None:
            TrafficRecord.objects.filter(pk=record.pk).update(invoice=None)
        else:
            TrafficRecord.objects.filter(pk=open_row.pk).update(bytes=open_row.bytes + record.bytes)
            record.delete()


# --- What the next invoice holds so far (the overview, forecasts and budgets) ---------------------------------------


@dataclass(frozen=True)
class OpenLines:
    """The current month's next invoice as it stands: its lines (current and late), and the same lines with the
    current month's quantities extended in a straight line to the month's end. With `daily`, the seconds of this
    month's hourly usage up to now per (UTC day, unit price) in the account's currency, billed or not, metered or
    previewed: what the overview's spend by day rounds once per day and price."""

    lines: list[LineDraft]
    forecast_lines: list[LineDraft]
    daily: dict[tuple[datetime.date, Decimal], int] = field(default_factory=dict)
    # The months of late usage whose lines the close puts on a late-usage invoice of their own (their tax differs
    # from this month's, as far as the details in force now tell), with that invoice's tax decision (_split_months).
    late_invoices: dict[datetime.date, TaxDecision] = field(default_factory=dict)


class UtcDay(Func):
    """The UTC date of a timestamp, computed by PostgreSQL (no per-row time zone conversion in Python)."""

    template = "(%(expressions)s AT TIME ZONE 'UTC')::date"
    output_field = DateField()


def _open_usage_rows(
    usage, *, organization_id: int, month_start: datetime.datetime, now: datetime.datetime, daily: bool
) -> tuple[list[dict], dict[tuple[datetime.date, Decimal, str], int]]:
    """The unbilled usage of `usage` (one organization's) summed as usage_rows sums it and, with `daily`, in the same
    scan of the table, every record of [month_start, now), billed or not, summed per UTC day, price and currency.

    The scan groups by UTC day (a month of hourly rows is 30 groups per deployment and product, not 720), and the
    months of usage_rows are summed from the days here: the same rows, the same integer seconds."""
    if not daily:
        return usage_rows(usage.filter(invoice__isnull=True)), {}
    scanned = (
        usage.filter(Q(invoice__isnull=True) | Q(hour__gte=month_start, hour__lt=now))
        .annotate(
            day=UtcDay("hour"),
            unbilled=ExpressionWrapper(Q(invoice__isnull=True), output_field=BooleanField()),
            before_now=ExpressionWrapper(Q(hour__lt=now), output_field=BooleanField()),
        )
        .values("deployment_id", "product", "tier_id", "unit_price", "currency", "day", "unbilled", "before_now")
        .annotate(seconds=Sum("seconds"))
        .order_by()
    )
    first_day = month_start.date()
    rows: dict[tuple, dict] = {}
    days: dict[tuple[datetime.date, Decimal, str], int] = {}
    for row in scanned:
        day = row["day"]
        if row["unbilled"]:
            month = day.replace(day=1)
            key = (row["deployment_id"], row["product"], row["tier_id"], row["unit_price"], row["currency"], month)
            found = rows.get(key)
            if found is None:
                rows[key] = {
                    "organization_id": organization_id,
                    "deployment_id": row["deployment_id"],
                    "product": row["product"],
                    "tier_id": row["tier_id"],
                    "unit_price": row["unit_price"],
                    "currency": row["currency"],
                    "month": month,
                    "seconds": row["seconds"],
                }
            else:
                found["seconds"] += row["seconds"]
        if day >= first_day and row["before_now"] and row["unit_price"] is not None:
            by_day = (day, row["unit_price"], row["currency"])
            days[by_day] = days.get(by_day, 0) + row["seconds"]
    return list(rows.values()), days


def open_lines(
    *,
    account: BillingAccount,
    now: datetime.datetime,
    project_id: int | None = None,
    forecast: bool = True,
    daily: bool = False,
) -> OpenLines:
    """Lines the account's invoice for the month of `now` will have for the usage so far: metered usage not billed
    yet, the seconds not metered yet (computed as metering will record them), traffic, and late usage of earlier
    months already closed. Built by `build_lines`, so the sum is the invoice's subtotal for the same usage. With
    `daily`, also the month's usage by day (OpenLines.daily), read in the same scan of the usage table."""
    month_start = metering.month_start(now)
    month_end = metering.next_month_start(now)
    period_month = month_start.date()
    closed = set(MonthClose.objects.filter(period_start__lt=period_month).values_list("period_start", flat=True))
    usage = UsageRecord.objects.filter(organization_id=account.organization_id, hour__lt=month_end)
    if project_id is not None:
        usage = usage.filter(deployment__project_id=project_id)
    unbilled, recorded_days = _open_usage_rows(
        usage, organization_id=account.organization_id, month_start=month_start, now=now, daily=daily
    )
    day_seconds: dict[tuple[datetime.date, Decimal], int] = {}
    for (day, unit_price, currency), seconds in recorded_days.items():
        if currency == account.currency:
            day_seconds[(day, unit_price)] = day_seconds.get((day, unit_price), 0) + seconds
    grouped: dict[tuple, dict] = {}
    for row in unbilled:
        if row["month"] < period_month and row["month"] not in closed:
            continue  # still to be billed by its own month's close
        grouped[(row["deployment_id"], row["product"], row["tier_id"], row["unit_price"], row["month"])] = row
    until = metering.metered_until()
    if until is not None and until < now:
        for priced in metering.usage_preview(
            organization_id=account.organization_id,
            project_id=project_id,
            start=until,
            end=now,
            currency=account.currency,
        ):
            u = priced.usage
            if daily and priced.unit_price is not None and u.hour >= month_start:
                day_key = (u.hour.date(), priced.unit_price)
                day_seconds[day_key] = day_seconds.get(day_key, 0) + u.seconds
            month = metering.month_start(u.hour).date()
            if month < period_month and month not in closed:
                continue
            key = (u.deployment_id, u.product, u.tier_id, priced.unit_price, month)
            row = grouped.setdefault(
                key,
                {
                    "deployment_id": u.deployment_id,
                    "product": u.product,
                    "tier_id": u.tier_id,
                    "unit_price": priced.unit_price,
                    "month": month,
                    "seconds": 0,
                },
            )
            row["seconds"] += u.seconds
    usages = [
        u
        for u in traffic.unbilled_traffic(
            organization_ids=[account.organization_id],
            before=month_end.date(),
            period_month=period_month,
            deployment_ids=None
            if project_id is None
            else list(Deployment.objects.filter(project_id=project_id).values_list("pk", flat=True)),
        )
        if u.month >= period_month or u.month in closed
    ]
    rows = list(grouped.values())
    labels = Labels({r["deployment_id"] for r in rows} | {u.deployment_id for u in usages})
    catalog = traffic.TrafficCatalog()

    def lines_of(usage_rows_, traffic_usages_):
        return build_lines(
            usage_rows=usage_rows_,
            traffic_usages=traffic_usages_,
            currency=account.currency,
            period_month=period_month,
            labels=labels,
            catalog=catalog,
        ).lines

    current = lines_of(rows, usages)
    late = _late_invoices(account, months={r["month"] for r in rows} | {u.month for u in usages}, month=period_month)
    if not forecast:
        return OpenLines(current, current, day_seconds, late)
    elapsed = Decimal(int((now - month_start).total_seconds()))
    whole = Decimal(int((month_end - month_start).total_seconds()))
    if elapsed <= 0:
        return OpenLines(current, current, day_seconds, late)
    from billing.money import round_minor

    scaled_rows = [
        {**r, "seconds": round_minor(Decimal(r["seconds"]) * whole / elapsed)} if r["month"] == period_month else r
        for r in rows
    ]
    scaled_usages = [
        traffic.TrafficUsage(
            u.organization_id, u.deployment_id, u.month, round_minor(Decimal(u.bytes) * whole / elapsed), u.billed_bytes
        )
        if u.month == period_month
        else u
        for u in usages
    ]
    return OpenLines(current, lines_of(scaled_rows, scaled_usages), day_seconds, late)


def _late_invoices(account: BillingAccount, *, months, month: datetime.date) -> dict[datetime.date, TaxDecision]:
    """Which of `months` (of the open lines) the close of `month` will bill on a late-usage invoice, decided as the
    close decides it (_split_months); `month` is not over, so the details in force now stand for those at its end."""
    late = {m for m in months if m < month}
    if not late:
        return {}
    split = _split_months(
        account,
        {m: {account.pk: details_in_force(account, month_bounds(m)[1])} for m in late},
        months=late,
        decision=tax_decision(current_details(account), month_last_day(month)),
    )
    return {m: late_month.decision for m, late_month in split.items()}
