"""Every change to billing accounts, invoices, credits and coupons, payments, Stripe webhooks and overdue handling.

Each write validates, writes and audits in one transaction and enqueues its side effects (Stripe sync, VIES check,
card collection, emails) on commit. Stripe is reached only through billing.stripe_gateway; without
STRIPE_SECRET_KEY everything works but card collection.
"""

from __future__ import annotations

import datetime
import logging
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from billing import stripe_gateway as gateway
from billing.models import (
    BillingAccount,
    Coupon,
    CreditApplication,
    CreditGrant,
    CreditKind,
    Invoice,
    InvoiceStatus,
    Payment,
    StripeEvent,
    UsageRecord,
)
from billing.money import format_money, normalize_currency
from billing.tax import VatStatus, tax_id_country_mismatch, validate_postal_code, validate_tax_id
from billing.vat_rates import is_eu, normalize_country
from billing.vies import check_vat_vies
from controlplane.api.problems import Conflict
from controlplane.tasks import enqueue_on_commit, publish

logger = logging.getLogger(__name__)

ACCOUNT_FIELDS = ("country", "company", "email", "address", "city", "state", "postal_code", "tax_id", "currency")


def _email(account: BillingAccount, subject: str, body: str) -> None:
    if account.email:
        transaction.on_commit(
            lambda: send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [account.email], fail_silently=True)
        )


# --- Billing account ---------------------------------------------------------------------------------------------


def offered_currencies() -> set[str]:
    """Currencies the catalog has prices in: an account billed in another would meter nothing."""
    from deployments.models import Price

    return set(Price.objects.values_list("currency", flat=True).distinct()) | {settings.BILLING_DEFAULT_CURRENCY}


@transaction.atomic
def billing_account_update(
    *,
    account: BillingAccount,
    actor,
    country: str,
    company: str = "",
    email: str = "",
    address: str = "",
    city: str = "",
    state: str = "",
    postal_code: str = "",
    tax_id: str = "",
    currency: str | None = None,
) -> BillingAccount:
    """Replace the billing details. The tax id is checked for format now and against VIES in the background."""
    account = BillingAccount.objects.select_for_update().get(pk=account.pk)
    errors: dict[str, list[str]] = {}
    country = normalize_country(country)
    if len(country) != 2 or not country.isalpha():
        errors["country"] = ["Give an ISO 3166-1 alpha-2 country code, e.g. DE."]
    new_currency = account.currency
    if currency is not None:
        try:
            new_currency = normalize_currency(currency)
        except ValueError as exc:
            errors["currency"] = [str(exc)]
        else:
            offered = offered_currencies()
            if new_currency not in offered:
                errors["currency"] = [f"{new_currency} is not offered; choose one of {', '.join(sorted(offered))}."]
    check = None
    if "country" not in errors:
        postal = validate_postal_code(country, postal_code)
        if not postal.valid:
            errors["postal_code"] = [postal.message]
        postal_code = postal.normalized
        mismatch = tax_id_country_mismatch(country, tax_id)
        if mismatch:
            errors["tax_id"] = [mismatch]
        else:
            check = validate_tax_id(country, tax_id)
    if errors:
        raise ValidationError(errors)
    if new_currency != account.currency and (
        account.invoices.exists()
        or UsageRecord.objects.filter(organization_id=account.organization_id, invoice__isnull=True).exists()
    ):
        raise Conflict({"currency": ["The currency cannot change once usage has been billed in it."]})

    tax_id = (check.normalized or tax_id.strip()) if tax_id and tax_id.strip() else ""
    tax_changed = (tax_id, country) != (account.tax_id, account.country)
    before = {name: getattr(account, name) for name in ACCOUNT_FIELDS}
    account.country, account.company, account.email = country, company.strip(), email.strip()
    account.address, account.city, account.state = address.strip(), city.strip(), state.strip()
    account.postal_code, account.tax_id, account.currency = postal_code, tax_id, new_currency
    if tax_changed or account.vat_status == VatStatus.NONE:
        account.vat_status = check.status.value
        account.vat_status_message = check.message[:300]
        account.vat_checked_at = None
    account.updated_at = timezone.now()
    account.full_clean(exclude=["organization"])
    account.save()
    changed = {
        name: [before[name], getattr(account, name)]
        for name in ACCOUNT_FIELDS
        if before[name] != getattr(account, name)
    }
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.account.update",
        target=account,
        summary={"changed": changed, "vat_status": account.vat_status},
    )
    from billing import tasks

    if tax_changed and account.vat_status == VatStatus.FORMAT_VALID and (is_eu(country) or tax_id.startswith("XI")):
        enqueue_on_commit(tasks.check_vat_number, account.pk)
    if settings.STRIPE_SECRET_KEY:
        enqueue_on_commit(tasks.sync_stripe_customer, account.pk)
    return account


class ViesUnavailable(Exception):
    """VIES did not answer; the task retries later and the format check stands meanwhile."""


def billing_account_check_vat(*, account_id: int) -> str | None:
    """Ask VIES about the account's number and record valid/invalid. Raises ViesUnavailable to be retried."""
    account = BillingAccount.objects.filter(pk=account_id).first()
    if account is None or not account.tax_id or account.vat_status not in (VatStatus.FORMAT_VALID, VatStatus.VALID):
        return None
    number = account.tax_id
    result = check_vat_vies(account.country, number, url=settings.VIES_URL or None, timeout=10.0)
    if result.valid is None:
        raise ViesUnavailable(result.error or "VIES unavailable")
    with transaction.atomic():
        account = BillingAccount.objects.select_for_update().get(pk=account_id)
        if account.tax_id != number:  # changed while we asked: the newer check decides
            return None
        account.vat_status = VatStatus.VALID if result.valid else VatStatus.INVALID
        account.vat_status_message = "Confirmed by VIES." if result.valid else "VIES does not know this VAT number."
        account.vat_checked_at = timezone.now()
        account.save(update_fields=["vat_status", "vat_status_message", "vat_checked_at"])
        audit_record(
            actor=None,
            organization=account.organization,
            action="billing.vat.checked",
            target=account,
            summary={"vat_status": account.vat_status},
        )
    return account.vat_status


# --- Stripe --------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _client_for(api_key: str, api_base: str):
    return gateway.make_client(api_key=api_key, api_base=api_base or None)


def stripe_client():
    if not settings.STRIPE_SECRET_KEY:
        raise gateway.GatewayNotConfigured("STRIPE_SECRET_KEY is not set")
    return _client_for(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)


def billing_account_sync_stripe(*, account_id: int) -> str | None:
    """Create or update the account's Stripe customer (address, email, tax id). Network first, then one write."""
    account = BillingAccount.objects.select_related("organization").filter(pk=account_id).first()
    if account is None or not settings.STRIPE_SECRET_KEY:
        return None
    check = validate_tax_id(account.country, account.tax_id) if account.country else None
    tax_id = (
        (check.stripe_type, check.normalized)
        if check and check.stripe_type and check.normalized and account.vat_status != VatStatus.INVALID
        else None
    )
    customer_id = gateway.ensure_customer(
        customer_id=account.stripe_customer_id or None,
        email=account.email,
        name=account.company or account.organization.name,
        address={
            "line1": account.address,
            "city": account.city,
            "state": account.state,
            "postal_code": account.postal_code,
            "country": account.country,
        },
        tax_id=tax_id,
        metadata={"billing_account": account.public_id, "organization": account.organization.public_id},
        client=stripe_client(),
    )
    with transaction.atomic():
        BillingAccount.objects.filter(pk=account_id).update(
            stripe_customer_id=customer_id, stripe_synced_at=timezone.now()
        )
    return customer_id


def _customer_id(account: BillingAccount) -> str:
    if not settings.STRIPE_SECRET_KEY:
        raise Conflict("Card payments are not enabled on this installation; pay by bank transfer.")
    return account.stripe_customer_id or billing_account_sync_stripe(account_id=account.pk)


def card_setup_intent(*, account: BillingAccount, actor) -> tuple[str, str]:
    intent_id, secret = gateway.create_setup_intent(_customer_id(account), client=stripe_client())
    with transaction.atomic():
        audit_record(
            actor=actor,
            organization=account.organization,
            action="billing.card.setup_intent",
            target=account,
            summary={"setup_intent": intent_id},
        )
    return intent_id, secret


def card_checkout_session(*, account: BillingAccount, actor, success_url: str, cancel_url: str) -> str:
    url = gateway.create_checkout_setup_session(_customer_id(account), success_url, cancel_url, client=stripe_client())
    with transaction.atomic():
        audit_record(
            actor=actor,
            organization=account.organization,
            action="billing.card.checkout_session",
            target=account,
            summary={},
        )
    return url


def enqueue_collection(invoice_ids: list[int]) -> None:
    if not settings.STRIPE_SECRET_KEY:
        return
    from billing import tasks

    for invoice_id in (
        Invoice.objects.filter(pk__in=invoice_ids, status=InvoiceStatus.OPEN)
        .exclude(billing_account__stripe_customer_id="")
        .values_list("pk", flat=True)
    ):
        publish(tasks.collect_invoice, invoice_id)


def invoice_collect(*, invoice_id: int) -> str | None:
    """Charge an open invoice to the account's card. The attempt is committed before the call, so the idempotency
    key (invoice id + attempt) is new per deliberate attempt and identical when a lost call is retried."""
    if not settings.STRIPE_SECRET_KEY:
        return None  # bank transfer only: staff mark invoices paid
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().select_related("billing_account").filter(pk=invoice_id).first()
        if invoice is None or invoice.status != InvoiceStatus.OPEN or invoice.total <= 0:
            return None
        if invoice.payments.filter(method="stripe", status="processing").exists():
            return None  # the bank is still deciding; the webhook tells us
        # An attempt whose call never returned is repeated with its own number, so Stripe sees the same key.
        payment = invoice.payments.filter(method="stripe", status="pending").order_by("-attempt").first()
        if payment is None:
            invoice.payment_attempts += 1
            invoice.save(update_fields=["payment_attempts"])
            payment = Payment.objects.create(
                invoice=invoice,
                method="stripe",
                attempt=invoice.payment_attempts,
                amount=invoice.total,
                currency=invoice.currency,
                status="pending",
            )
    customer_id = _customer_id(invoice.billing_account)
    result = gateway.collect_invoice(
        customer_id=customer_id,
        amount_minor=invoice.total,
        currency=invoice.currency,
        invoice_id=invoice.public_id,
        attempt=payment.attempt,
        client=stripe_client(),
    )
    with transaction.atomic():
        Payment.objects.filter(pk=payment.pk).update(
            status=result.status.value,
            payment_intent_id=result.payment_intent_id or "",
            failure_message=(result.failure_message or "")[:300],
        )
        if result.status == gateway.PaymentStatus.SUCCEEDED:
            _mark_paid(
                Invoice.objects.select_for_update().get(pk=invoice_id),
                actor=None,
                method="stripe",
                payment_intent_id=result.payment_intent_id or "",
                payment=payment,
            )
        else:
            invoice = Invoice.objects.get(pk=invoice_id)
            audit_record(
                actor=None,
                organization=invoice.billing_account.organization,
                action="billing.invoice.payment_failed",
                target=invoice,
                summary={"attempt": payment.attempt, "status": result.status.value, "message": result.failure_message},
            )
    return result.status.value


# --- Invoice lifecycle ----------------------------------------------------------------------------------------------


def _mark_paid(
    invoice: Invoice, *, actor, method: str, payment_intent_id: str = "", payment: Payment | None = None, user=None
) -> Invoice:
    if invoice.status == InvoiceStatus.PAID:
        return invoice
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        raise Conflict(f"A {invoice.status} invoice cannot be paid.")
    now = timezone.now()
    invoice.status, invoice.paid_at = InvoiceStatus.PAID, now
    invoice.save(update_fields=["status", "paid_at"])
    if payment is None:
        Payment.objects.create(
            invoice=invoice,
            method=method,
            attempt=invoice.payment_attempts or 1,
            amount=invoice.total,
            currency=invoice.currency,
            status="succeeded",
            payment_intent_id=payment_intent_id,
            created_by=user,
        )
    else:
        Payment.objects.filter(pk=payment.pk).update(status="succeeded")
    account = invoice.billing_account
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.invoice.paid",
        target=invoice,
        summary={"method": method, "total": invoice.total, "payment_intent": payment_intent_id},
    )
    _email(
        account,
        f"Invoice {invoice.number} paid",
        f"We received {format_money(invoice.total, invoice.currency)} for invoice {invoice.number}. Thank you.",
    )
    overdue_release(account=account)
    return invoice


@transaction.atomic
def invoice_mark_paid(*, invoice: Invoice, actor, method: str = "manual") -> Invoice:
    """Staff record a bank transfer (or any payment made outside Stripe)."""
    invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice.pk)
    return _mark_paid(invoice, actor=actor, method=method, user=getattr(actor, "user", None))


@transaction.atomic
def invoice_void(*, invoice: Invoice, actor) -> Invoice:
    """Cancel an unpaid invoice; the credits it consumed go back to their grants."""
    invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice.pk)
    if invoice.status not in (InvoiceStatus.DRAFT, InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        raise Conflict(f"A {invoice.status} invoice cannot be voided.")
    # An atomic increment: a month being closed may consume the same grant meanwhile.
    for application in CreditApplication.objects.filter(invoice=invoice):
        CreditGrant.objects.filter(pk=application.grant_id).update(remaining=F("remaining") + application.amount)
    CreditApplication.objects.filter(invoice=invoice).delete()
    invoice.status, invoice.voided_at = InvoiceStatus.VOID, timezone.now()
    invoice.save(update_fields=["status", "voided_at"])
    audit_record(
        actor=actor,
        organization=invoice.billing_account.organization,
        action="billing.invoice.void",
        target=invoice,
        summary={"number": invoice.number, "total": invoice.total},
    )
    overdue_release(account=invoice.billing_account)
    return invoice


@transaction.atomic
def invoice_mark_uncollectible(*, invoice: Invoice, actor) -> Invoice:
    invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice.pk)
    if invoice.status != InvoiceStatus.OPEN:
        raise Conflict(f"A {invoice.status} invoice cannot be marked uncollectible.")
    invoice.status = InvoiceStatus.UNCOLLECTIBLE
    invoice.save(update_fields=["status"])
    audit_record(
        actor=actor,
        organization=invoice.billing_account.organization,
        action="billing.invoice.uncollectible",
        target=invoice,
        summary={"number": invoice.number},
    )
    return invoice


# --- Credits and coupons ------------------------------------------------------------------------------------------------


@transaction.atomic
def credit_grant(
    *,
    account: BillingAccount,
    actor,
    kind: str,
    amount: int,
    description: str = "",
    expires_at: datetime.datetime | None = None,
    source_invoice: Invoice | None = None,
) -> CreditGrant:
    if amount <= 0:
        raise ValidationError({"amount": ["A credit must be positive."]})
    if kind not in CreditKind.values or kind == CreditKind.COUPON:
        raise ValidationError({"kind": ["Coupons are redeemed by code; give promotion, refund or prepaid."]})
    grant = CreditGrant.objects.create(
        billing_account=account,
        kind=kind,
        amount=amount,
        remaining=amount,
        currency=account.currency,
        description=description,
        expires_at=expires_at,
        source_invoice=source_invoice,
    )
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.credit.grant",
        target=grant,
        summary={
            "kind": kind,
            "amount": amount,
            "currency": account.currency,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return grant


@transaction.atomic
def coupon_redeem(*, account: BillingAccount, actor, code: str, now: datetime.datetime | None = None) -> CreditGrant:
    """Turn a coupon into a credit grant. Each coupon once per account; expired or used-up coupons are refused."""
    now = now or timezone.now()
    coupon = Coupon.objects.select_for_update().filter(code=code.strip().upper()).first()
    if coupon is None:
        raise ValidationError({"code": ["No such coupon."]})
    if coupon.valid_until is not None and coupon.valid_until <= now:
        raise ValidationError({"code": ["This coupon has expired."]})
    if coupon.currency != account.currency:
        raise ValidationError({"code": [f"This coupon is for accounts billed in {coupon.currency}."]})
    if coupon.max_redemptions is not None and coupon.grants.count() >= coupon.max_redemptions:
        raise Conflict({"code": ["This coupon has been used up."]})
    if CreditGrant.objects.filter(billing_account=account, coupon=coupon).exists():
        raise Conflict({"code": ["This coupon was already redeemed on this account."]})
    expires_at = now + datetime.timedelta(days=coupon.credit_valid_days) if coupon.credit_valid_days else None
    try:
        with transaction.atomic():
            grant = CreditGrant.objects.create(
                billing_account=account,
                kind=CreditKind.COUPON,
                coupon=coupon,
                amount=coupon.amount,
                remaining=coupon.amount,
                currency=coupon.currency,
                description=f"Coupon {coupon.code}",
                granted_at=now,
                expires_at=expires_at,
            )
    except IntegrityError:  # a concurrent redemption of the same coupon on this account won
        raise Conflict({"code": ["This coupon was already redeemed on this account."]}) from None
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.coupon.redeem",
        target=grant,
        summary={"code": coupon.code, "amount": coupon.amount},
    )
    return grant


# --- Stripe webhooks ----------------------------------------------------------------------------------------------------


def stripe_event_process(*, payload: bytes, signature: str) -> tuple[bool, str]:
    """Verify and apply one webhook. Returns (first_time, outcome). A replayed event id changes nothing."""
    event = gateway.verify_webhook(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    with transaction.atomic():
        record, created = StripeEvent.objects.get_or_create(
            event_id=str(event["id"]), defaults={"type": str(event["type"]), "payload": event}
        )
        if not created:
            return False, record.outcome
        outcome = _apply_event(event)
        record.outcome = outcome[:200]
        record.save(update_fields=["outcome"])
    return True, outcome


def _apply_event(event: dict) -> str:
    kind = event["type"]
    obj = (event.get("data") or {}).get("object") or {}
    if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
        invoice_public_id = (obj.get("metadata") or {}).get("invoice_id")
        invoice = (
            Invoice.objects.select_for_update()
            .select_related("billing_account__organization")
            .filter(public_id=invoice_public_id)
            .first()
        )
        if invoice is None:
            return f"ignored: no invoice {invoice_public_id!r}"
        if kind == "payment_intent.succeeded":
            if invoice.status == InvoiceStatus.PAID:
                return "invoice already paid"
            if obj.get("amount_received", obj.get("amount")) != gateway.to_stripe_amount(
                invoice.total, invoice.currency
            ):
                return "ignored: amount differs from the invoice"
            _mark_paid(
                invoice,
                actor=None,
                method="stripe",
                payment_intent_id=str(obj.get("id") or ""),
                payment=Payment.objects.filter(invoice=invoice, payment_intent_id=obj.get("id")).first(),
            )
            return f"invoice {invoice.public_id} paid"
        error = obj.get("last_payment_error") or {}
        Payment.objects.filter(invoice=invoice, payment_intent_id=obj.get("id")).update(
            status="failed", failure_message=str(error.get("message") or "")[:300]
        )
        audit_record(
            actor=None,
            organization=invoice.billing_account.organization,
            action="billing.invoice.payment_failed",
            target=invoice,
            summary={"payment_intent": obj.get("id"), "message": error.get("message")},
        )
        return f"invoice {invoice.public_id} payment failed"
    if kind == "setup_intent.succeeded":
        account = BillingAccount.objects.select_for_update().filter(stripe_customer_id=obj.get("customer")).first()
        if account is None or not obj.get("payment_method"):
            return "ignored: unknown customer"
        account.stripe_payment_method_id = str(obj["payment_method"])
        account.save(update_fields=["stripe_payment_method_id"])
        audit_record(
            actor=None,
            organization=account.organization,
            action="billing.card.added",
            target=account,
            summary={"payment_method": account.stripe_payment_method_id},
        )
        from billing import tasks

        enqueue_on_commit(tasks.set_default_card, account.pk)
        return "card saved"
    return "ignored"


def billing_account_set_default_card(*, account_id: int) -> None:
    account = BillingAccount.objects.filter(pk=account_id).first()
    if account is None or not account.stripe_payment_method_id or not settings.STRIPE_SECRET_KEY:
        return
    gateway.set_default_payment_method(
        customer_id=account.stripe_customer_id,
        payment_method_id=account.stripe_payment_method_id,
        client=stripe_client(),
    )
    # A card arriving is the moment to retry what is still open.
    enqueue_collection(
        list(Invoice.objects.filter(billing_account=account, status=InvoiceStatus.OPEN).values_list("pk", flat=True))
    )


# --- Overdue --------------------------------------------------------------------------------------------------------


def _billing_stopped(account: BillingAccount):
    from deployments.models import Deployment

    return Deployment.objects.filter(
        project__organization_id=account.organization_id, status_reason="billing", deleted_at__isnull=True
    ).exclude(desired_state="deleted")


def overdue_process(*, now: datetime.datetime | None = None) -> dict:
    """Remind after 1, 3 and 7 days overdue; after the grace period stop the account's deployments (reason
    billing); delete those stopped by billing for BILLING_DELETE_AFTER_STOPPED_DAYS. Safe to run any number of times."""
    from deployments import services as deployment_services
    from deployments.models import Deployment

    now = now or timezone.now()
    counts = {"reminders": 0, "stopped": 0, "deleted": 0}
    thresholds = sorted(settings.BILLING_OVERDUE_REMINDER_DAYS)
    for invoice in Invoice.objects.filter(status=InvoiceStatus.OPEN, due_at__lt=now).select_related(
        "billing_account__organization"
    ):
        days = (now - invoice.due_at).days
        due_reminders = sum(1 for t in thresholds if days >= t)
        if due_reminders > invoice.overdue_reminders_sent:
            with transaction.atomic():
                updated = Invoice.objects.filter(
                    pk=invoice.pk, overdue_reminders_sent=invoice.overdue_reminders_sent
                ).update(overdue_reminders_sent=due_reminders)
                if updated:
                    _email(
                        invoice.billing_account,
                        f"Invoice {invoice.number} is overdue",
                        f"Invoice {invoice.number} of {format_money(invoice.total, invoice.currency)} was due on "
                        f"{invoice.due_at:%Y-%m-%d}. Deployments are stopped {settings.BILLING_GRACE_DAYS} days "
                        "after the due date.",
                    )
                    audit_record(
                        actor=None,
                        organization=invoice.billing_account.organization,
                        action="billing.invoice.reminder",
                        target=invoice,
                        summary={"days_overdue": days},
                    )
                    counts["reminders"] += 1
    grace = now - datetime.timedelta(days=settings.BILLING_GRACE_DAYS)
    overdue_orgs = set(
        Invoice.objects.filter(status=InvoiceStatus.OPEN, due_at__lt=grace).values_list(
            "billing_account__organization_id", flat=True
        )
    )
    for deployment in Deployment.objects.filter(
        project__organization_id__in=overdue_orgs, desired_state="running", deleted_at__isnull=True
    ).select_related("project__organization"):
        try:
            with transaction.atomic():
                deployment_services.deployment_stop(deployment=deployment, actor=None, reason="billing")
        except Conflict as exc:
            logger.warning("could not stop %s for billing: %s", deployment.public_id, exc.detail)
            continue
        counts["stopped"] += 1
    delete_before = now - datetime.timedelta(days=settings.BILLING_DELETE_AFTER_STOPPED_DAYS)
    candidates = Deployment.objects.filter(
        status_reason="billing",
        desired_state="stopped",
        deleted_at__isnull=True,
        project__organization_id__in=overdue_orgs,
    )
    for deployment in candidates:
        stopped_since = (
            deployment.status_intervals.filter(ended_at__isnull=True, status="stopped")
            .values_list("started_at", flat=True)
            .first()
        )
        if stopped_since is not None and stopped_since <= delete_before:
            deployment_services.deployment_delete(deployment=deployment, actor=None, force=True)
            counts["deleted"] += 1
    counts["restarted"] = 0
    for account in (
        BillingAccount.objects.filter(
            organization__projects__deployments__status_reason="billing",
        )
        .exclude(organization_id__in=overdue_orgs)
        .distinct()
    ):
        counts["restarted"] += overdue_release(account=account)
    return counts


def overdue_release(*, account: BillingAccount, actor=None) -> int:
    """Restart what billing stopped once nothing is overdue past the grace period any more. The restart is the
    system's (actor None): a user may not lift a billing stop themselves."""
    from deployments import services as deployment_services

    grace = timezone.now() - datetime.timedelta(days=settings.BILLING_GRACE_DAYS)
    if Invoice.objects.filter(billing_account=account, status=InvoiceStatus.OPEN, due_at__lt=grace).exists():
        return 0
    started = 0
    for deployment in _billing_stopped(account).filter(desired_state="stopped").select_related("project__organization"):
        try:
            with transaction.atomic():
                deployment_services.deployment_start(deployment=deployment, actor=None)
        except Conflict as exc:  # an operation in flight: the next overdue run tries again
            logger.warning("could not restart %s after payment: %s", deployment.public_id, exc.detail)
            continue
        started += 1
    return started
