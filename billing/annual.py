"""Annual prepaid plans: immutable quotes, the self-serve hourly-to-annual switch, tier upgrades billed prorated for
the rest of the term, reminders before the end, renewal or the return to hourly billing, and the end of a plan whose
invoice was voided.

A subscription's term is what metering subtracts, so hourly billing stops exactly at acceptance and resumes at the
exact second a term ends without renewal. It never applies coupons to annual invoices (EMQX Cloud's rule),
never charges a card itself (collection is enqueued) and raises controlplane.errors, never an HTTP error.
"""

from __future__ import annotations

import datetime
import logging
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from billing import invoicing, metering, traffic
from billing.models import (
    AnnualQuote,
    AnnualSubscription,
    BillingAccount,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    SubscriptionStatus,
)
from billing.money import HOURS_PER_YEAR, annual_price, format_money, percentage_of, prorate, round_half_up, to_decimal
from billing.selectors import billing_account_for
from controlplane.errors import Conflict, Unprocessable
from deployments.models import Deployment, Price, StatusInterval, Tier
from deployments.pricing import price_amount

logger = logging.getLogger(__name__)


class QuoteExpired(Unprocessable):
    code = "quote-expired"
    default_message = "This quote has expired; ask for a new one."


def one_year_later(at: datetime.datetime) -> datetime.datetime:
    try:
        return at.replace(year=at.year + 1)
    except ValueError:  # 29 February: the term ends on 1 March
        return at.replace(year=at.year + 1, month=3, day=1)


def _prices(tier: Tier, currency: str, on: datetime.date) -> tuple[Decimal, int]:
    hourly = price_amount(plan=tier.plan, tier=tier, kind=Price.Kind.HOURLY, currency=currency, on=on)
    if hourly is None:
        raise Conflict(f"The {tier} tier has no hourly price in {currency}; it cannot switch to an annual plan.")
    catalog = price_amount(plan=tier.plan, tier=tier, kind=Price.Kind.ANNUAL, currency=currency, on=on)
    yearly = (
        round_half_up(catalog, currency)
        if catalog is not None
        else annual_price(hourly_price=hourly, currency=currency)
    )
    return hourly, yearly


def _check_switchable(deployment: Deployment) -> None:
    if deployment.deleted_at is not None or deployment.desired_state == "deleted":
        raise Conflict("The deployment is deleted.")
    if deployment.status != "running" or deployment.desired_state != "running":
        raise Conflict(f"Only a running deployment can switch to an annual plan; this one is {deployment.status}.")
    if AnnualSubscription.objects.filter(deployment=deployment, status=SubscriptionStatus.ACTIVE).exists():
        raise Conflict("The deployment is already on an annual plan.")


@transaction.atomic
def annual_quote_create(*, deployment: Deployment, actor, now: datetime.datetime | None = None) -> AnnualQuote:
    now = now or timezone.now()
    deployment = Deployment.objects.select_related("tier__plan", "project__organization").get(pk=deployment.pk)
    _check_switchable(deployment)
    account = billing_account_for(organization=deployment.project.organization)
    tier = deployment.tier
    hourly, yearly = _prices(tier, account.currency, now.date())
    hourly_equivalent = round_half_up(HOURS_PER_YEAR * hourly, account.currency)
    decision = invoicing.tax_decision(account, now.date())
    tax = percentage_of(amount_minor=yearly, rate_percent=decision.rate)
    accrued = _accrued_this_month(deployment, account.currency, now)
    quote = AnnualQuote.objects.create(
        billing_account=account,
        deployment=deployment,
        tier=tier,
        currency=account.currency,
        hourly_price=hourly,
        annual_price=yearly,
        hourly_equivalent=hourly_equivalent,
        saving=hourly_equivalent - yearly,
        tax_treatment=decision.treatment.value,
        tax_rate=decision.rate,
        tax=tax,
        total=yearly + tax,
        accrued_this_month=accrued,
        term_start=now,
        term_end=one_year_later(now),
        expires_at=now + datetime.timedelta(days=settings.ANNUAL_QUOTE_VALID_DAYS),
        created_at=now,
    )
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.annual_quote.create",
        target=quote,
        summary={"deployment": deployment.public_id, "annual_price": yearly, "currency": account.currency},
    )
    return quote


def _accrued_this_month(deployment: Deployment, currency: str, now: datetime.datetime) -> int:
    """The deployment's hourly usage since the month began, in lines as the invoice will have them."""
    rows: dict[tuple, dict] = {}
    for priced in metering.usage_preview(
        start=metering.month_start(now), end=now, currency=currency, deployment_id=deployment.pk
    ):
        usage = priced.usage
        key = (usage.product, usage.tier_id, priced.unit_price)
        row = rows.setdefault(
            key,
            {
                "deployment_id": deployment.pk,
                "product": usage.product,
                "tier_id": usage.tier_id,
                "unit_price": priced.unit_price,
                "month": metering.month_start(now).date(),
                "seconds": 0,
            },
        )
        row["seconds"] += usage.seconds
    built = invoicing.build_lines(
        usage_rows=list(rows.values()),
        traffic_usages=[],
        currency=currency,
        period_month=metering.month_start(now).date(),
        labels=invoicing.Labels([deployment.pk]),
        catalog=traffic.TrafficCatalog(),
    )
    return sum(line.amount for line in built.lines)


def _annual_line(
    deployment: Deployment, tier: Tier, start: datetime.datetime, end: datetime.datetime, yearly: int, currency: str
) -> invoicing.LineDraft:
    return invoicing.LineDraft(
        description=f"Annual plan {tier.plan.name} {tier.code}, {deployment.name} ({deployment.public_id}), "
        f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC",
        quantity=Decimal(1),
        unit="year",
        unit_price=to_decimal(yearly, currency),
        amount=yearly,
        product="annual",
        deployment_id=deployment.pk,
    )


def _start_subscription(
    *,
    account: BillingAccount,
    deployment: Deployment,
    tier: Tier,
    start: datetime.datetime,
    hourly: Decimal,
    yearly: int,
    auto_renew: bool,
    renewed_from=None,
):
    end = one_year_later(start)
    subscription = AnnualSubscription.objects.create(
        billing_account=account,
        deployment=deployment,
        tier=tier,
        term_start=start,
        term_end=end,
        currency=account.currency,
        hourly_price=hourly,
        annual_price=yearly,
        auto_renew=auto_renew,
        renewed_from=renewed_from,
    )
    invoice = invoicing.invoice_issue(
        account=account,
        kind=InvoiceKind.ANNUAL,
        now=start,
        allow_coupons=False,
        subscription=subscription,
        period=(start.date(), end.date()),
        lines=[_annual_line(deployment, tier, start, end, yearly, account.currency)],
    )
    return subscription, invoice


def _enqueue_collection(invoice) -> None:
    if invoice.status == "open":
        from billing import services

        transaction.on_commit(lambda: services.invoice_collection_enqueue([invoice.pk]))


def _end(subscription: AnnualSubscription, *, at: datetime.datetime, reason: str) -> None:
    """End a term at `at`: hourly billing resumes at that second. An auto-renewing term kept hourly billing away
    past its end while it waited for this decision (even if auto-renewal was turned off since), and a voided one may
    end before hours already metered: the hours since `at` are metered again for that deployment alone, which adds
    exactly the seconds that were skipped (as late usage if their month is invoiced)."""
    subscription.status, subscription.end_reason = SubscriptionStatus.ENDED, reason
    subscription.term_end = max(at, subscription.term_start + datetime.timedelta(microseconds=1))
    subscription.save(update_fields=["status", "end_reason", "term_end"])
    audit_record(
        actor=None,
        organization=subscription.billing_account.organization,
        action="billing.annual.end",
        target=subscription,
        summary={"reason": reason, "at": subscription.term_end.isoformat()},
    )
    metered = metering.metered_until()
    if metered is not None and metered > subscription.term_end:
        metering.usage_meter(now=metered, since=subscription.term_end, deployment_ids=[subscription.deployment_id])


def annual_subscription_end_now(*, subscription_id: int, now: datetime.datetime, reason: str) -> None:
    """End an active plan at `now` (its prepaid invoice was voided): the deployment is billed by the hour again."""
    subscription = (
        AnnualSubscription.objects.select_for_update()
        .select_related("billing_account__organization")
        .get(pk=subscription_id)
    )
    if subscription.status == SubscriptionStatus.ACTIVE:
        _end(subscription, at=min(now, subscription.term_end), reason=reason)


@transaction.atomic
def annual_quote_accept(
    *, quote: AnnualQuote, actor, auto_renew: bool = False, now: datetime.datetime | None = None
) -> AnnualSubscription:
    """Switch the deployment to its annual plan now: the subscription starts this instant, which ends hourly
    metering, and its prepaid invoice is issued at once."""
    now = now or timezone.now()
    quote = AnnualQuote.objects.select_for_update().get(pk=quote.pk)
    if quote.accepted_at is not None:
        raise Conflict("This quote was already accepted.")
    if quote.expires_at <= now:
        raise QuoteExpired()
    deployment = (
        Deployment.objects.select_for_update().select_related("project__organization").get(pk=quote.deployment_id)
    )
    _check_switchable(deployment)
    if deployment.tier_id != quote.tier_id:
        raise Conflict("The deployment changed tier since this quote; ask for a new one.")
    account = BillingAccount.objects.select_for_update().get(pk=quote.billing_account_id)
    if account.currency != quote.currency:
        raise Conflict("The billing currency changed since this quote; ask for a new one.")
    # The quote showed its VAT and total: the prepaid invoice is taxed as the billing details stand now, so a change
    # of country or VAT status since would charge a total the customer never saw.
    decision = invoicing.tax_decision(invoicing.current_details(account), now.date())
    if decision.treatment.value != quote.tax_treatment or decision.rate != quote.tax_rate:
        raise Conflict("The tax on this quote changed since it was made (billing details or rates); ask for a new one.")
    subscription, invoice = _start_subscription(
        account=account,
        deployment=deployment,
        tier=quote.tier,
        start=now,
        hourly=quote.hourly_price,
        yearly=quote.annual_price,
        auto_renew=auto_renew,
    )
    quote.accepted_at, quote.subscription = now, subscription
    quote.save(update_fields=["accepted_at", "subscription"])
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.annual.switch",
        target=subscription,
        summary={
            "deployment": deployment.public_id,
            "quote": quote.public_id,
            "invoice": invoice.number,
            "term_start": now.isoformat(),
            "annual_price": quote.annual_price,
        },
    )
    _enqueue_collection(invoice)
    return subscription


@transaction.atomic
def annual_subscription_set_auto_renew(
    *, subscription: AnnualSubscription, actor, auto_renew: bool
) -> AnnualSubscription:
    """Renew the term for another year at its end, or not. Only a term still running can change; metering reads the
    flag (coverage_end), so turning it off before the end hands the deployment back to hourly billing then."""
    subscription = (
        AnnualSubscription.objects.select_for_update()
        .select_related("billing_account__organization", "deployment")
        .get(pk=subscription.pk)
    )
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise Conflict(fields={"auto_renew": "This plan has ended: its renewal can no longer change."})
    if subscription.auto_renew == auto_renew:
        return subscription
    subscription.auto_renew = auto_renew
    subscription.save(update_fields=["auto_renew"])
    audit_record(
        actor=actor,
        organization=subscription.billing_account.organization,
        action="billing.annual.auto_renew",
        target=subscription,
        summary={"deployment": subscription.deployment.public_id, "auto_renew": auto_renew},
    )
    return subscription


@transaction.atomic
def annual_subscription_start(
    *, deployment: Deployment, actor, auto_renew: bool = False, now: datetime.datetime | None = None
) -> AnnualSubscription:
    """Buy an annual plan for a deployment directly (at creation), at the catalog's annual price."""
    now = now or timezone.now()
    deployment = (
        Deployment.objects.select_for_update()
        .select_related("project__organization", "tier__plan")
        .get(pk=deployment.pk)
    )
    if AnnualSubscription.objects.filter(deployment=deployment, status=SubscriptionStatus.ACTIVE).exists():
        raise Conflict("The deployment is already on an annual plan.")
    account = billing_account_for(organization=deployment.project.organization)
    hourly, yearly = _prices(deployment.tier, account.currency, now.date())
    subscription, invoice = _start_subscription(
        account=account,
        deployment=deployment,
        tier=deployment.tier,
        start=now,
        hourly=hourly,
        yearly=yearly,
        auto_renew=auto_renew,
    )
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.annual.start",
        target=subscription,
        summary={"deployment": deployment.public_id, "invoice": invoice.number, "annual_price": yearly},
    )
    _enqueue_collection(invoice)
    return subscription


def _seconds(delta: datetime.timedelta) -> int:
    return int(delta.total_seconds())


def annual_upgrades_bill(*, now: datetime.datetime | None = None) -> int:
    """Bill the prorated difference for every active subscription whose deployment now runs on a dearer tier, and
    bill again every upgrade whose invoice was voided (a correction)."""
    now = now or timezone.now()
    billed = 0
    voided = Invoice.objects.filter(
        kind=InvoiceKind.ANNUAL_UPGRADE, status=InvoiceStatus.VOID, replaced_by__isnull=True, subscription__isnull=False
    ).exclude(subscription__end_reason="voided")
    for invoice_id in voided.values_list("pk", flat=True):
        with transaction.atomic():
            billed += _bill_upgrade_again(invoice_id, now)
    candidates = AnnualSubscription.objects.filter(status=SubscriptionStatus.ACTIVE, term_end__gt=now).values_list(
        "pk", flat=True
    )
    for subscription_id in candidates:
        with transaction.atomic():
            subscription = (
                AnnualSubscription.objects.select_for_update()
                .select_related("billing_account__organization", "deployment", "tier__plan")
                .get(pk=subscription_id)
            )
            current = subscription.deployment.status_intervals.filter(ended_at__isnull=True).first()
            if current is None or current.tier_id == subscription.tier_id:
                continue
            billed += _bill_upgrade(subscription, current, now)
    return billed


def _bill_upgrade(subscription: AnnualSubscription, current: StatusInterval, now: datetime.datetime) -> int:
    intervals = subscription.deployment.status_intervals.filter(started_at__gte=subscription.term_start)
    last_old = intervals.filter(tier_id=subscription.tier_id).order_by("-started_at").first()
    since = last_old.started_at if last_old else subscription.term_start
    first_new = intervals.filter(tier_id=current.tier_id, started_at__gte=since).order_by("started_at").first()
    at = min(max(first_new.started_at if first_new else now, subscription.term_start), subscription.term_end)
    account = subscription.billing_account
    new_tier = Tier.objects.select_related("plan").get(pk=current.tier_id)
    hourly, yearly = _prices(new_tier, subscription.currency, at.date())
    old_tier, difference = subscription.tier, yearly - subscription.annual_price
    subscription.tier, subscription.hourly_price = new_tier, hourly
    invoice = None
    if difference > 0:
        amount = prorate(
            amount_minor=difference,
            part=_seconds(subscription.term_end - at),
            whole=_seconds(subscription.term_end - subscription.term_start),
        )
        subscription.annual_price = yearly
        days_left = Decimal(_seconds(subscription.term_end - at)) / 86400
        line = invoicing.LineDraft(
            description=f"Annual plan upgrade {old_tier.plan.name} {old_tier.code} to {new_tier.code}, "
            f"{subscription.deployment.name} ({subscription.deployment.public_id}), "
            f"{at:%Y-%m-%d %H:%M} to {subscription.term_end:%Y-%m-%d %H:%M} UTC "
            f"({days_left.quantize(Decimal('0.01'))} days of {format_money(difference, subscription.currency)} a year)",
            quantity=Decimal(1),
            unit="upgrade",
            unit_price=to_decimal(amount, subscription.currency),
            amount=amount,
            product="annual_upgrade",
            deployment_id=subscription.deployment_id,
        )
        if amount > 0:
            invoice = invoicing.invoice_issue(
                account=account,
                kind=InvoiceKind.ANNUAL_UPGRADE,
                lines=[line],
                now=now,
                allow_coupons=False,
                subscription=subscription,
                period=(at.date(), subscription.term_end.date()),
            )
            _enqueue_collection(invoice)
    subscription.save(update_fields=["tier", "hourly_price", "annual_price"])
    audit_record(
        actor=None,
        organization=account.organization,
        action="billing.annual.tier_change",
        target=subscription,
        summary={
            "from": old_tier.code,
            "to": new_tier.code,
            "at": at.isoformat(),
            "invoice": invoice.number if invoice else None,
        },
    )
    return 1 if invoice else 0


def _bill_upgrade_again(invoice_id: int, now: datetime.datetime) -> int:
    """Bill a voided upgrade invoice's lines again, taxed and credited as of `now`. _bill_upgrade moved the plan to
    the dearer tier when it billed the upgrade, so it never sees that upgrade again, and the deployment's seconds on
    that tier stay covered by the plan: without this the rest of the term on the dearer tier is never billed. The
    amount stands whatever the deployment did since (an upgrade is billed for the rest of the term when it happens).
    Not for a plan that ended because its own invoice was voided: that plan is cancelled, its upgrade with it."""
    voided = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice_id)
    if voided.status != InvoiceStatus.VOID or Invoice.objects.filter(replaces=voided).exists():
        return 0
    account, subscription = voided.billing_account, voided.subscription
    if account.currency != voided.currency:
        logger.error(
            "upgrade invoice %s was in %s, the account is now in %s: bill it by hand",
            voided.public_id,
            voided.currency,
            account.currency,
        )
        return 0
    invoice = invoicing.invoice_issue(
        account=account,
        kind=InvoiceKind.ANNUAL_UPGRADE,
        lines=invoicing.line_drafts(voided),
        now=now,
        allow_coupons=False,
        subscription=subscription,
        period=(voided.period_start, voided.period_end) if voided.period_start and voided.period_end else None,
        replaces=voided,
    )
    _enqueue_collection(invoice)
    audit_record(
        actor=None,
        organization=account.organization,
        action="billing.annual.upgrade_billed_again",
        target=subscription,
        summary={"voided": voided.number or voided.public_id, "invoice": invoice.number or invoice.public_id},
    )
    return 1


def annual_renewals_process(*, now: datetime.datetime | None = None) -> dict:
    """Remind 15 days before a term ends; at its end renew (auto_renew) or hand the deployment back to hourly."""
    now = now or timezone.now()
    counts = {"reminders": 0, "renewed": 0, "ended": 0}
    remind_before = now + datetime.timedelta(days=settings.ANNUAL_REMINDER_DAYS)
    for subscription_id in AnnualSubscription.objects.filter(
        status=SubscriptionStatus.ACTIVE, reminder_sent_at__isnull=True, term_end__lte=remind_before, term_end__gt=now
    ).values_list("pk", flat=True):
        with transaction.atomic():
            subscription = (
                AnnualSubscription.objects.select_for_update()
                .select_related("billing_account__organization", "deployment")
                .get(pk=subscription_id)
            )
            if subscription.reminder_sent_at is not None:
                continue
            subscription.reminder_sent_at = now
            subscription.save(update_fields=["reminder_sent_at"])
            what = (
                "renews automatically"
                if subscription.auto_renew
                else "ends, and the deployment returns to hourly billing,"
            )
            from billing.services import billing_notice_send

            billing_notice_send(
                account=subscription.billing_account,
                kind="annual_renewal_reminder",
                about=subscription.deployment.public_id,
                title=f"Your annual plan for {subscription.deployment.name} ends soon",
                body=f"The annual plan of {subscription.deployment.name} ({subscription.deployment.public_id}) "
                f"{what} on {subscription.term_end:%Y-%m-%d}.",
                dedup_key=f"annual_renewal_reminder:{subscription.public_id}:{subscription.term_end:%Y-%m-%d}",
            )
            audit_record(
                actor=None,
                organization=subscription.billing_account.organization,
                action="billing.annual.reminder",
                target=subscription,
                summary={},
            )
            counts["reminders"] += 1
    for subscription_id in AnnualSubscription.objects.filter(
        status=SubscriptionStatus.ACTIVE, term_end__lte=now
    ).values_list("pk", flat=True):
        with transaction.atomic():
            subscription = (
                AnnualSubscription.objects.select_for_update()
                .select_related("billing_account__organization", "deployment__tier__plan")
                .get(pk=subscription_id)
            )
            if subscription.status != SubscriptionStatus.ACTIVE:
                continue
            deployment = subscription.deployment
            alive = deployment.deleted_at is None and deployment.desired_state != "deleted"
            account = subscription.billing_account
            renewal = None
            if subscription.auto_renew and alive:
                try:
                    hourly, yearly = _prices(deployment.tier, account.currency, subscription.term_end.date())
                except Conflict as exc:  # the catalog lost the tier's price: the deployment goes back to hourly
                    logger.error("cannot renew %s: %s", subscription.public_id, exc)
                else:
                    subscription.status = SubscriptionStatus.RENEWED
                    subscription.save(update_fields=["status"])
                    # The next term starts where this one ends: no second between them is billed by the hour.
                    renewal, invoice = _start_subscription(
                        account=account,
                        deployment=deployment,
                        tier=deployment.tier,
                        start=subscription.term_end,
                        hourly=hourly,
                        yearly=yearly,
                        auto_renew=True,
                        renewed_from=subscription,
                    )
                    _enqueue_collection(invoice)
                    audit_record(
                        actor=None,
                        organization=account.organization,
                        action="billing.annual.renew",
                        target=renewal,
                        summary={"invoice": invoice.number, "annual_price": yearly},
                    )
                    counts["renewed"] += 1
            if renewal is None:
                reason = "renewal_failed" if subscription.auto_renew and alive else "expired"
                _end(subscription, at=subscription.term_end, reason=reason)
                counts["ended"] += 1
    return counts


def annual_offer(*, tier: Tier, currency: str, on: datetime.date | None = None) -> tuple[Decimal, int]:
    """(hourly price, annual price in minor units) for buying `tier` on an annual plan: what
    annual_subscription_start charges, for pages that show the offer before anything is bought."""
    return _prices(tier, currency, on or timezone.now().date())
