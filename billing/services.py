"""Every change to billing accounts and their details history, VAT checks, invoices and credit notes, credits and
coupons, payments, Stripe webhooks and overdue handling.

Each write validates, writes and audits in one transaction and enqueues its side effects (Stripe sync, VIES check,
card collection, notices) on commit. Stripe is reached only through billing.stripe_gateway, VIES only through
billing.vies; without STRIPE_SECRET_KEY everything works but card collection. It raises controlplane.errors, never
an HTTP error.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from audit.services import audit_record
from billing import invoicing, metering
from billing import stripe_gateway as gateway
from billing.models import (
    BillingAccount,
    BillingDetails,
    Coupon,
    CreditApplication,
    CreditGrant,
    CreditKind,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Payment,
    StripeEvent,
    UsageRecord,
    VatCheck,
    VatCheckOutcome,
    missing_address_fields,
)
from billing.money import format_money, normalize_currency, round_minor
from billing.selectors import billing_account_for
from billing.tax import VatStatus, tax_id_country_mismatch, validate_postal_code, validate_tax_id
from billing.vat_rates import is_eu, normalize_country
from billing.vies import check_vat_vies
from controlplane.db import LockSpace, xact_lock
from controlplane.errors import Conflict, NotFound, Unavailable, ValidationFailed, model_clean
from controlplane.tasks import enqueue_on_commit, publish
from controlplane.validators import whole_number
from notifications.services import email_notice_on_commit, platform_event_notify

if TYPE_CHECKING:
    import stripe

    from accounts.models import User
    from deployments.models import Deployment
    from organizations.access import Principal

logger = logging.getLogger(__name__)

ACCOUNT_FIELDS = ("country", "company", "email", "address", "city", "state", "postal_code", "tax_id", "currency")
DETAIL_FIELDS = ("country", "company", "email", "address", "city", "state", "postal_code", "tax_id", "vat_status")
# VIES retries an unconfirmed number with this backoff, never giving up; a confirmed number is asked again monthly.
VIES_RETRY_FIRST = datetime.timedelta(minutes=1)
VIES_RETRY_MAX = datetime.timedelta(hours=6)
VIES_RECHECK_CONFIRMED = datetime.timedelta(days=30)
ADDRESS_MESSAGES = {
    "address": "Give the street address: an invoice must show the buyer's full address.",
    "postal_code": "Give the postal code: an invoice must show the buyer's full address.",
    "city": "Give the city: an invoice must show the buyer's full address.",
    "country": "Give the country: an invoice must show the buyer's full address.",
}


def _email(account: BillingAccount, subject: str, body: str) -> None:
    """Write to the billing contact once the caller's transaction commits, through the notifications app's e-mail
    task (alerts.send_email_notice), which retries an SMTP failure with backoff and logs and counts a notice it could
    not send. Nothing leaves for a change that rolled back."""
    if account.email:
        email_notice_on_commit(subject=subject, body=body, recipients=[account.email])


def billing_notice_send(
    *,
    account: BillingAccount,
    kind: str,
    about: str,
    title: str,
    body: str,
    dedup_key: str,
    severity: str = "warning",
    email: bool = True,
) -> None:
    """Tell the organization through its platform-event channels (webhook, Slack, PagerDuty, email; its owners and
    administrators by email when it has none) and, with `email`, the billing contact. Once per dedup key; in the
    caller's transaction, so a notice never leaves for a change that rolled back."""
    event = platform_event_notify(
        organization=account.organization,
        kind=kind,
        subject=about,
        message=f"{title}\n{body}",
        severity=severity,
        dedup_key=dedup_key,
    )
    if event is not None and email:
        _email(account, title, body)


# --- Billing account ---------------------------------------------------------------------------------------------


def offered_currencies(on: datetime.date | None = None) -> set[str]:
    """Currencies an account can be billed in on `on` (today): every tier billed by the hour has both its hourly
    and its retention price in force in it. Another currency would record usage that has no price."""
    from deployments.models import Price, Tier
    from deployments.pricing import price_amount

    on = on or timezone.now().date()
    tiers = list(Tier.objects.filter(plan__prices__kind=Price.Kind.HOURLY).select_related("plan").distinct())
    offered = set()
    for currency in Price.objects.filter(valid_from__lte=on).values_list("currency", flat=True).distinct():
        if tiers and all(
            price_amount(plan=tier.plan, tier=tier, kind=kind, currency=currency, on=on) is not None
            for tier in tiers
            for kind in (Price.Kind.HOURLY, Price.Kind.RETENTION_HOURLY)
        ):
            offered.add(currency)
    return offered


def _details_row(account: BillingAccount, valid_from: datetime.datetime) -> BillingDetails:
    return BillingDetails(
        billing_account=account,
        valid_from=valid_from,
        vat_consultation_number=account.vat_consultation_number if account.vat_status == VatStatus.VALID else "",
        **{name: getattr(account, name) for name in DETAIL_FIELDS},
    )


def _start_details(account: BillingAccount, now: datetime.datetime) -> None:
    """Close the current details row at `now` and open one with the account's fields from `now` on."""
    current = BillingDetails.objects.select_for_update().filter(billing_account=account, valid_to__isnull=True).first()
    if current is not None:
        if current.valid_from >= now:
            # Changed twice in the same instant: the later change is the one in force.
            for name in DETAIL_FIELDS:
                setattr(current, name, getattr(account, name))
            current.vat_consultation_number = _details_row(account, now).vat_consultation_number
            current.save()
            return
        current.valid_to = now
        current.save(update_fields=["valid_to"])
    _details_row(account, now).save()


def _vies_applies(country: str, tax_id: str) -> bool:
    return bool(tax_id) and (is_eu(country) or tax_id.startswith("XI"))


@transaction.atomic
def billing_account_update(
    *,
    account: BillingAccount,
    actor: Principal | None,
    country: str,
    company: str = "",
    email: str = "",
    address: str = "",
    city: str = "",
    state: str = "",
    postal_code: str = "",
    tax_id: str = "",
    currency: str | None = None,
    now: datetime.datetime | None = None,
) -> BillingAccount:
    """Replace the billing details from `now` on (the earlier ones stay in force for the past). The buyer's full
    address is required; the tax id is checked for format now and against VIES in the background. Invoices held
    for the address are issued at once."""
    now = now or timezone.now()
    account = BillingAccount.objects.select_for_update().select_related("organization").get(pk=account.pk)
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
            offered = offered_currencies(now.date())
            if new_currency not in offered and new_currency != account.currency:
                errors["currency"] = [
                    f"{new_currency} has no price today; choose one of {', '.join(sorted(offered)) or 'none'}."
                ]
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
        given = BillingDetails(country=country, address=address, city=city, postal_code=postal_code)
        for name in missing_address_fields(given):
            errors.setdefault(name, [ADDRESS_MESSAGES[name]])
    if errors:
        raise ValidationFailed(errors)
    # Without an error the country was valid and the tax id matched it, so the number was checked above.
    assert check is not None
    if new_currency != account.currency:
        # Metering waits while the currency changes, so no hour is recorded in the old one after this check.
        xact_lock(LockSpace.METERING, metering.USAGE_LOCK)
        if (
            account.invoices.exclude(status=InvoiceStatus.VOID).exists()
            or UsageRecord.objects.filter(organization_id=account.organization_id, invoice__isnull=True).exists()
        ):
            raise Conflict(fields={"currency": "The currency cannot change once usage has been billed in it."})

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
        account.vat_consultation_number, account.vat_consulted_at = "", None
        account.vat_check_failures = 0
        vies = account.vat_status == VatStatus.FORMAT_VALID and _vies_applies(country, tax_id)
        account.vat_next_check_at = now if vies else None
        if vies:
            account.vat_status_message = "Format and checksum are valid; waiting for VIES to confirm the number."
    account.updated_at = now
    model_clean(account, exclude=["organization"])
    account.save()
    changed = {
        name: [before[name], getattr(account, name)]
        for name in ACCOUNT_FIELDS
        if before[name] != getattr(account, name)
    }
    if changed or not BillingDetails.objects.filter(billing_account=account).exists():
        _start_details(account, now)
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.account.update",
        target=account,
        summary={"changed": changed, "vat_status": account.vat_status},
    )
    from billing import tasks

    if tax_changed and account.vat_next_check_at is not None:
        # With the queue down the number is still asked about by the sweep (check_vat_numbers) when due.
        enqueue_on_commit(tasks.check_vat_number, account.pk)
    if settings.STRIPE_SECRET_KEY:
        enqueue_on_commit(tasks.sync_stripe_customer, account.pk)
    invoicing.invoices_release_held(account=account, now=now)
    return account


class ViesUnavailable(Exception):
    """VIES did not answer; the number stays unconfirmed (taxed as a consumer's) and is asked again with backoff."""


def _vies_backoff(failures: int) -> datetime.timedelta:
    backoff: datetime.timedelta = min(VIES_RETRY_FIRST * (2 ** max(failures - 1, 0)), VIES_RETRY_MAX)
    return backoff


def billing_account_check_vat(*, account_id: int, now: datetime.datetime | None = None) -> str | None:
    """Ask VIES about the account's number, with our own VAT number as the requester, and keep the consultation as
    proof. Records valid or invalid; when VIES does not answer, schedules the next try and raises ViesUnavailable."""
    now = now or timezone.now()
    account = BillingAccount.objects.filter(pk=account_id).first()
    if (
        account is None
        or not _vies_applies(account.country, account.tax_id)
        or account.vat_status not in (VatStatus.FORMAT_VALID, VatStatus.VALID)
    ):
        return None
    number, country = account.tax_id, account.country
    requester = settings.SELLER_VAT_NUMBER if is_eu(settings.SELLER_VAT_NUMBER[:2]) else None
    result = check_vat_vies(
        "XI" if number.startswith("XI") else country,
        number,
        requester=requester,
        url=settings.VIES_URL or None,
        timeout=10.0,
    )
    with transaction.atomic():
        account = BillingAccount.objects.select_for_update().select_related("organization").get(pk=account_id)
        if (account.tax_id, account.country) != (number, country):  # changed while we asked: the newer check decides
            return None
        outcome = (
            VatCheckOutcome.UNAVAILABLE
            if result.valid is None
            else VatCheckOutcome.VALID
            if result.valid
            else VatCheckOutcome.INVALID
        )
        VatCheck.objects.create(
            billing_account=account,
            checked_at=now,
            country_code=number[:2] if number[:2].isalpha() else country,
            vat_number=number,
            requester=requester or "",
            outcome=outcome,
            consultation_number=(result.request_identifier or "")[:64],
            request_date=result.request_date or "",
            error=(result.error or "")[:200],
        )
        if result.valid is None:
            account.vat_check_failures += 1
            account.vat_next_check_at = now + _vies_backoff(account.vat_check_failures)
            account.save(update_fields=["vat_check_failures", "vat_next_check_at"])
        else:
            previous = account.vat_status
            account.vat_status = VatStatus.VALID if result.valid else VatStatus.INVALID
            account.vat_status_message = (
                "Confirmed by VIES." if result.valid else "VIES does not know this VAT number: check it and save again."
            )
            account.vat_checked_at, account.vat_check_failures = now, 0
            account.vat_next_check_at = now + VIES_RECHECK_CONFIRMED if result.valid else None
            if result.valid:
                account.vat_consultation_number = (result.request_identifier or "")[:64]
                account.vat_consulted_at = now
            account.save()
            _record_vat_answer(account, previous=previous, now=now)
            audit_record(
                actor=None,
                organization=account.organization,
                action="billing.vat.checked",
                target=account,
                summary={"vat_status": account.vat_status, "consultation": account.vat_consultation_number},
            )
            if not result.valid:
                vat_invalid_notify(account=account)
    if result.valid is None:
        raise ViesUnavailable(result.error or "VIES unavailable")
    return account.vat_status


def _record_vat_answer(account: BillingAccount, *, previous: str, now: datetime.datetime) -> None:
    """An answer about a number still unconfirmed says what it was all along: it goes on the rows carrying it. A
    confirmed number VIES no longer knows is a new fact from now: a new row."""
    if previous == VatStatus.FORMAT_VALID:
        BillingDetails.objects.filter(
            billing_account=account,
            country=account.country,
            tax_id=account.tax_id,
            vat_status=VatStatus.FORMAT_VALID,
        ).update(vat_status=account.vat_status, vat_consultation_number=account.vat_consultation_number)
    elif previous != account.vat_status:
        _start_details(account, now)
    else:
        BillingDetails.objects.filter(billing_account=account, valid_to__isnull=True).update(
            vat_consultation_number=account.vat_consultation_number
        )


def vat_checks_run_due(
    *, now: datetime.datetime | None = None, unconfirmed_only: bool = False, budget_seconds: float | None = None
) -> dict[str, int]:
    """Ask VIES about every number whose check is due (unconfirmed ones on their backoff, confirmed ones monthly),
    or, before a month is closed, about every unconfirmed number at once. With `budget_seconds`, stop asking when it
    is spent (the rest keep their schedule). Returns counts by outcome."""
    import time

    now = now or timezone.now()
    deadline = time.monotonic() + budget_seconds if budget_seconds is not None else None
    # A closed (deleted) organization bills nothing any more: its number is not asked about again.
    candidates = BillingAccount.objects.exclude(tax_id="").filter(organization__closed_at__isnull=True)
    if unconfirmed_only:
        candidates = candidates.filter(vat_status=VatStatus.FORMAT_VALID)
    else:
        candidates = candidates.filter(
            vat_status__in=(VatStatus.FORMAT_VALID, VatStatus.VALID), vat_next_check_at__lte=now
        )
    counts = {"valid": 0, "invalid": 0, "unavailable": 0}
    for account_id in candidates.order_by("vat_next_check_at", "pk").values_list("pk", flat=True):
        if deadline is not None and time.monotonic() > deadline:
            break
        try:
            status = billing_account_check_vat(account_id=account_id, now=now)
        except ViesUnavailable:
            counts["unavailable"] += 1
            continue
        if status in counts:
            counts[status] += 1
    return counts


def vat_invalid_notify(*, account: BillingAccount) -> None:
    billing_notice_send(
        account=account,
        kind="vat_number_invalid",
        about=account.public_id,
        title="Your VAT number could not be confirmed",
        body=f"VIES, the EU's register, does not know the VAT number {account.tax_id}. Until a confirmed number is "
        "on file, invoices charge VAT as to a consumer. Check the number in your billing details.",
        dedup_key=f"vat_number_invalid:{account.public_id}:{account.tax_id}",
    )


# --- Stripe --------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _client_for(api_key: str, api_base: str, timeout: float, retries: int) -> stripe.StripeClient:
    return gateway.make_client(api_key=api_key, api_base=api_base or None, timeout=timeout, max_network_retries=retries)


def stripe_client(*, waiting: bool = False) -> stripe.StripeClient:
    """The client of a task: three tries of at most STRIPE_TIMEOUT_SECONDS each. `waiting`: the client of a call a
    person waits on (a page, an API request), two tries of at most STRIPE_REQUEST_TIMEOUT_SECONDS, so that a stuck
    Stripe is answered well within the web server's 30 s worker timeout."""
    if not settings.STRIPE_SECRET_KEY:
        raise gateway.GatewayNotConfigured("STRIPE_SECRET_KEY is not set")
    if waiting:
        return _client_for(
            settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_REQUEST_TIMEOUT_SECONDS, 1
        )
    return _client_for(settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_TIMEOUT_SECONDS, 2)


def billing_account_sync_stripe(
    *, account_id: int, client: stripe.StripeClient | None = None, actor: Principal | None = None
) -> str | None:
    """Create or update the account's Stripe customer (address, email, tax id). Network first, then one write, which
    records billing.account.stripe_customer when it stores another customer id (a new customer, or one made again
    for a customer deleted on Stripe): the id is kept whatever the caller does next, so it is audited here, in its
    own transaction. `client`: the one to use instead of a task's (stripe_client); `actor`: who asked (the system,
    for the sync after a billing details change)."""
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
        # Two first calls at once (two card setups) both find no customer: with one key Stripe makes one customer
        # and answers both with it. The customer held before is in the key, so one made again after it was deleted
        # on Stripe is a new request, not the replay of the first creation.
        create_key=f"customer-create:{account.public_id}:{account.stripe_customer_id or 'none'}",
        # The details in force (their row, and the VAT status that decides whether a number is sent at all).
        tax_id_key=f"tax-id-create:{account.public_id}:{invoicing.current_details(account).pk}:{account.vat_status}",
        client=client or stripe_client(),
    )
    with transaction.atomic():
        stored = BillingAccount.objects.select_for_update().select_related("organization").filter(pk=account_id).first()
        if stored is None:
            return None  # deleted with its organization while Stripe was asked
        previous = stored.stripe_customer_id
        stored.stripe_customer_id, stored.stripe_synced_at = customer_id, timezone.now()
        stored.save(update_fields=["stripe_customer_id", "stripe_synced_at"])
        if customer_id != previous:
            audit_record(
                actor=actor,
                organization=stored.organization,
                action="billing.account.stripe_customer",
                target=stored,
                summary={"stripe_customer": customer_id, "previous": previous},
            )
    return customer_id


def _cards_enabled() -> None:
    if not settings.STRIPE_SECRET_KEY:
        raise Conflict("Card payments are not enabled on this installation; pay by bank transfer.")


def _waiting_client() -> stripe.StripeClient:
    """The client of a call a person waits on; Conflict, not a server error, where cards are not enabled."""
    _cards_enabled()
    return stripe_client(waiting=True)


def _customer_id(account: BillingAccount, *, client: stripe.StripeClient, actor: Principal | None) -> str:
    """The account's Stripe customer, made first if it has none (a client exists only where cards are enabled). A
    customer made here is stored and audited at once, before the caller's own Stripe call: if that call fails, the
    next try uses the same customer instead of leaving one more behind on Stripe."""
    customer_id = account.stripe_customer_id or billing_account_sync_stripe(
        account_id=account.pk, client=client, actor=actor
    )
    if customer_id is None:
        # The account's row went away (its organization was deleted) since it was read: without this, Stripe would
        # be asked for a card setup or a charge with no customer at all.
        raise NotFound("No such billing account.")
    return customer_id


@contextmanager
def _stripe_answering() -> Iterator[None]:
    """Around a call a person waits for (an API request, a console page): Stripe being down is their 503 with a
    message, never a 500. Tasks let StripeTransient through and retry instead."""
    try:
        yield
    except gateway.StripeTransient as exc:
        logger.warning("Stripe did not answer: %s", exc)
        raise Unavailable("Stripe did not answer; nothing was changed. Try again in a minute.", retry_after=60) from exc


def card_setup_intent_create(*, account: BillingAccount, actor: Principal | None) -> tuple[str, str]:
    with _stripe_answering():
        client = _waiting_client()
        intent_id, secret = gateway.create_setup_intent(
            _customer_id(account, client=client, actor=actor), client=client
        )
    with transaction.atomic():
        audit_record(
            actor=actor,
            organization=account.organization,
            action="billing.card.setup_intent",
            target=account,
            summary={"setup_intent": intent_id},
        )
    return intent_id, secret


def card_checkout_session_create(
    *, account: BillingAccount, actor: Principal | None, success_url: str, cancel_url: str
) -> str:
    with _stripe_answering():
        client = _waiting_client()
        url = gateway.create_checkout_setup_session(
            _customer_id(account, client=client, actor=actor), success_url, cancel_url, client=client
        )
    with transaction.atomic():
        audit_record(
            actor=actor,
            organization=account.organization,
            action="billing.card.checkout_session",
            target=account,
            summary={},
        )
    return url


def card_checkout_complete(*, account: BillingAccount, actor: Principal | None, session_id: str) -> bool:
    """The browser is back from Checkout: save the card the session set up, as the setup_intent.succeeded webhook
    would (whichever comes first; the second changes nothing). A session of another customer is refused. Returns
    whether the session saved a card."""
    _cards_enabled()
    if not re.fullmatch(r"cs_[A-Za-z0-9_]{1,200}", session_id):
        raise ValidationFailed({"session_id": "Not a Checkout session id."})
    try:
        setup = gateway.checkout_setup_result(session_id, client=stripe_client(waiting=True))
    except gateway.StripeObjectMissing as exc:
        raise NotFound("No such Checkout session.") from exc
    except gateway.StripeUnavailable as exc:
        raise Conflict("Stripe did not answer; the card will appear once Stripe confirms it.") from exc
    if not account.stripe_customer_id or setup.customer != account.stripe_customer_id:
        raise NotFound("No such Checkout session.")
    if setup.status != "complete" or not setup.payment_method:
        return False
    with transaction.atomic():
        locked = BillingAccount.objects.select_for_update().select_related("organization").get(pk=account.pk)
        _card_save(locked, actor=actor, payment_method=setup.payment_method, created=setup.created)
    account.stripe_payment_method_id = locked.stripe_payment_method_id
    return True


def _card_save(account: BillingAccount, *, actor: Principal | None, payment_method: str, created: Any) -> str:
    """Make the card a SetupIntent saved the account's card (`account` locked), unless a card of a newer SetupIntent
    is saved already: Stripe delivers its notices in no particular order, and the card the customer replaced must not
    come back to be charged. `created`: the SetupIntent's creation in Unix seconds, if known."""
    seconds = whole_number(str(created)) if created is not None else None
    at = datetime.datetime.fromtimestamp(seconds, datetime.UTC) if seconds is not None else None
    if account.stripe_payment_method_id == payment_method:
        return "card saved"
    known = account.stripe_payment_method_created_at
    if at is not None and known is not None and at < known:
        return f"ignored: card {payment_method} was set up before the card saved since"
    account.stripe_payment_method_id, account.stripe_payment_method_created_at = payment_method, at
    account.save(update_fields=["stripe_payment_method_id", "stripe_payment_method_created_at"])
    audit_record(
        actor=actor,
        organization=account.organization,
        action="billing.card.added",
        target=account,
        summary={"payment_method": payment_method},
    )
    from billing import tasks

    enqueue_on_commit(tasks.set_default_card, account.pk)
    return "card saved"


@dataclass(frozen=True)
class CardOnFile:
    brand: str
    last4: str


def card_on_file(*, account: BillingAccount) -> CardOnFile | None:
    """The default card's brand and last four digits, asked of Stripe and kept for ten minutes per card (a card's
    details never change; a new card is a new PaymentMethod id). None without a card or while Stripe cannot say."""
    if not account.stripe_payment_method_id or not settings.STRIPE_SECRET_KEY:
        return None
    key = f"billing:card:{account.stripe_payment_method_id}"
    try:
        found = cache.get(key)
    except Exception:  # noqa: BLE001 - without Redis Stripe is asked, never the page refused
        found = None
    if found is None:
        try:
            found = gateway.card_summary(account.stripe_payment_method_id, client=stripe_client(waiting=True))
        except gateway.StripeUnavailable:
            logger.warning("could not read card %s from Stripe", account.stripe_payment_method_id)
            return None
        try:
            cache.set(key, found, 600)
        except Exception:  # noqa: BLE001
            pass
    return CardOnFile(*found)


def invoice_collection_enqueue(invoice_ids: list[int]) -> None:
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
    client = stripe_client()
    customer_id = _customer_id(invoice.billing_account, client=client, actor=None)
    result = gateway.collect_invoice(
        customer_id=customer_id,
        amount_minor=invoice.total,
        currency=invoice.currency,
        invoice_id=invoice.public_id,
        attempt=payment.attempt,
        client=client,
    )
    with transaction.atomic():
        # The invoice first, as the webhook and invoice_void lock it: either may have changed it while Stripe
        # was charging.
        invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice_id)
        if result.status == gateway.PaymentStatus.SUCCEEDED:
            _stripe_payment_succeeded(
                invoice,
                payment=Payment.objects.select_for_update().get(pk=payment.pk),
                payment_intent_id=result.payment_intent_id or "",
            )
        else:
            Payment.objects.filter(pk=payment.pk).update(
                status=result.status.value,
                payment_intent_id=result.payment_intent_id or "",
                failure_message=(result.failure_message or "")[:300],
            )
            processing = result.status == gateway.PaymentStatus.PROCESSING
            audit_record(
                actor=None,
                organization=invoice.billing_account.organization,
                # Processing is no failure: the bank decides later, and Stripe's webhook settles the payment.
                action="billing.invoice.payment_processing" if processing else "billing.invoice.payment_failed",
                target=invoice,
                summary={"attempt": payment.attempt, "status": result.status.value, "message": result.failure_message},
            )
            if not processing:
                _payment_failed_notice(
                    invoice,
                    reason=result.failure_message or "",
                    attempt=f"attempt-{payment.attempt}",
                    needs_confirmation=result.status == gateway.PaymentStatus.REQUIRES_ACTION,
                )
    return result.status.value


def _payment_failed_notice(invoice: Invoice, *, reason: str, attempt: str, needs_confirmation: bool = False) -> None:
    """Once per payment attempt (a Stripe notice of the same attempt, or its replay, says nothing new).
    `needs_confirmation`: the bank wants the cardholder to authenticate (3-D Secure), which an off-session charge
    cannot do; saving the card again in the console goes through the bank's check with the customer there."""
    reason = " ".join(reason.split())[:200].rstrip(".")
    amount = format_money(invoice.total, invoice.currency)
    if needs_confirmation:
        title = f"Payment of invoice {invoice.number} needs your confirmation"
        body = (
            f"Your bank asks you to confirm the payment of {amount} for invoice {invoice.number}, which it cannot do "
            "without you. Add your card again in the console's billing details (your bank asks you to confirm it "
            "there); we then try again."
        )
    else:
        title = f"Payment of invoice {invoice.number} failed"
        body = (
            f"We could not collect {amount} for invoice {invoice.number}"
            + (f": {reason}" if reason else "")
            + ". Check the card in your billing details; we try again."
        )
    billing_notice_send(
        account=invoice.billing_account,
        kind="invoice_payment_failed",
        about=invoice.public_id,
        title=title,
        body=body,
        dedup_key=f"invoice_payment_failed:{invoice.public_id}:{attempt}",
    )


# --- Invoice lifecycle ----------------------------------------------------------------------------------------------


def _mark_paid(
    invoice: Invoice,
    *,
    actor: Principal | None,
    method: str,
    payment_intent_id: str = "",
    payment: Payment | None = None,
    user: User | None = None,
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
        Payment.objects.filter(pk=payment.pk).update(
            status="succeeded", payment_intent_id=payment_intent_id or payment.payment_intent_id
        )
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
def invoice_mark_paid(*, invoice: Invoice, actor: Principal | None, method: str = "manual") -> Invoice:
    """Staff record a bank transfer (or any payment made outside Stripe)."""
    invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice.pk)
    return _mark_paid(invoice, actor=actor, method=method, user=getattr(actor, "user", None))


def _stripe_payment_succeeded(invoice: Invoice, *, payment: Payment | None, payment_intent_id: str) -> str:
    """Book money Stripe took for `invoice` (locked): it pays the invoice if the invoice is still payable. Otherwise
    (voided, or paid by a transfer or another attempt while this charge was in flight) the money is never lost: the
    payment is recorded as succeeded and its amount becomes a refund credit in the invoice's currency, which the
    account's next invoices consume. `payment` is this charge's row if it has one; one already succeeded was booked."""
    if payment is not None and payment.status == "succeeded":
        return f"payment {payment_intent_id} of invoice {invoice.public_id} already recorded"
    if invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        _mark_paid(invoice, actor=None, method="stripe", payment_intent_id=payment_intent_id, payment=payment)
        return f"invoice {invoice.public_id} paid"
    if payment is None:
        payment = Payment.objects.create(
            invoice=invoice,
            method="stripe",
            attempt=invoice.payment_attempts or 1,
            amount=invoice.total,
            currency=invoice.currency,
            status="succeeded",
            payment_intent_id=payment_intent_id,
        )
    else:
        Payment.objects.filter(pk=payment.pk).update(
            status="succeeded", payment_intent_id=payment_intent_id or payment.payment_intent_id
        )
    account = invoice.billing_account
    why = "void" if invoice.status == InvoiceStatus.VOID else f"already {invoice.status}"
    # Credits are taken off an invoice before its tax, so the credit is the payment before this invoice's VAT: against
    # an invoice taxed as this one was it pays exactly the money received, and the VAT is charged once, on the supply
    # it pays. (The gross amount as a credit would take its VAT off the next invoice a second time.)
    net = _before_tax(payment.amount, invoice)
    grant = credit_grant(
        account=account,
        actor=None,
        kind=CreditKind.REFUND,
        amount=net,
        currency=payment.currency,
        description=f"Card payment {payment_intent_id} of invoice {invoice.number or invoice.public_id}, "
        f"which was {why}",
        source_invoice=invoice,
    )
    audit_record(
        actor=None,
        organization=account.organization,
        action="billing.invoice.payment_credited",
        target=invoice,
        summary={
            "payment_intent": payment_intent_id,
            "amount": payment.amount,
            "currency": payment.currency,
            "invoice_status": invoice.status,
            "credit": grant.public_id,
            "credit_amount": net,
        },
    )
    amount = format_money(payment.amount, payment.currency)
    before_tax = (
        ""
        if net == payment.amount
        else f" It is a credit of {format_money(net, payment.currency)} before VAT, which pays {amount} of an invoice "
        "taxed as that one was."
    )
    _email(
        account,
        f"Payment of {amount} credited to your account",
        f"We received {amount} by card for invoice {invoice.number or invoice.public_id}, which was {why}. The amount "
        f"is a credit on your account: your next invoices use it.{before_tax}",
    )
    return f"payment {payment_intent_id} of {why} invoice {invoice.public_id} credited"


@transaction.atomic
def invoice_void(
    *, invoice: Invoice, actor: Principal | None, reason: str = "", now: datetime.datetime | None = None
) -> Invoice:
    """Cancel an unpaid invoice; refused while a card payment of it is processing at Stripe. An issued one gets a
    credit note (its own number series, the amounts negated); a held draft simply goes. Either way the credits it
    consumed go back to their grants and its usage is released, so the month can be invoiced again, correctly.
    Voiding an annual plan's prepaid invoice ends the plan at once: the deployment is billed by the hour again from
    that second, and the plan's upgrade invoices go with it (_plan_upgrades_cancel). A voided annual upgrade's
    invoice is billed again, its same lines, by the next billing.annual.annual_upgrades_bill: the plan stays on the
    dearer tier."""
    now = now or timezone.now()
    invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice.pk)
    if invoice.status not in (InvoiceStatus.DRAFT, InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        raise Conflict(f"A {invoice.status} invoice cannot be voided.")
    # As invoice_collect, wait for the bank: voided now, the invoice's usage is billed again while Stripe goes on to
    # take the money for it. (A `pending` charge whose call is in flight is not waited for: it may never return, and
    # if Stripe takes the money meanwhile it becomes a credit, see _stripe_payment_succeeded.)
    if invoice.payments.filter(method="stripe", status="processing").exists():
        raise Conflict(
            f"A card payment of invoice {invoice.number} is processing at Stripe: void it once Stripe has decided."
        )
    issued = invoice.status != InvoiceStatus.DRAFT
    # An atomic increment: a month being closed may consume the same grant meanwhile.
    for application in CreditApplication.objects.filter(invoice=invoice):
        CreditGrant.objects.filter(pk=application.grant_id).update(remaining=F("remaining") + application.amount)
    CreditApplication.objects.filter(invoice=invoice).delete()
    note = invoicing.credit_note_issue(invoice=invoice, now=now, reason=reason) if issued else None
    invoicing.invoice_release_usage(invoice)
    invoice.status, invoice.voided_at, invoice.hold_reasons = InvoiceStatus.VOID, now, []
    invoice.save(update_fields=["status", "voided_at", "hold_reasons"])
    if invoice.kind == InvoiceKind.ANNUAL and invoice.subscription_id:
        from billing import annual

        annual.annual_subscription_end_now(subscription_id=invoice.subscription_id, now=now, reason="voided")
        _plan_upgrades_cancel(invoice, actor=actor, now=now)
    audit_record(
        actor=actor,
        organization=invoice.billing_account.organization,
        action="billing.invoice.void",
        target=invoice,
        summary={
            "number": invoice.number,
            "total": invoice.total,
            "credit_note": note.number if note else None,
            "reason": reason,
        },
    )
    overdue_release(account=invoice.billing_account)
    return invoice


def _plan_upgrades_cancel(prepaid: Invoice, *, actor: Principal | None, now: datetime.datetime) -> None:
    """A plan ended by voiding its prepaid invoice never was (its term is not billed), so neither were its upgrades:
    an unpaid upgrade invoice is voided too, and what paid a paid one becomes a refund credit, before its VAT (as for a
    payment for a voided invoice, _stripe_payment_succeeded). Left, the customer paid for the rest of a term on the
    dearer tier while the same hours were billed by the hour again."""
    upgrades = (
        Invoice.objects.select_for_update()
        .filter(subscription_id=prepaid.subscription_id, kind=InvoiceKind.ANNUAL_UPGRADE)
        .exclude(status=InvoiceStatus.VOID)
        .order_by("pk")
    )
    reason = f"The annual plan of invoice {prepaid.number or prepaid.public_id} was voided."
    for upgrade in upgrades:
        if upgrade.status != InvoiceStatus.PAID:
            invoice_void(invoice=upgrade, actor=actor, reason=reason, now=now)
            continue
        # What it was paid with, before VAT: the money less its tax, and the credits it consumed (the paid invoice
        # keeps its record of them), less what refund credits of it gave back already (invoice_refund, a second
        # payment's credit).
        left = _received_before_tax(upgrade) + upgrade.credits_applied - _refunded(upgrade)
        if left > 0:
            credit_grant(
                account=upgrade.billing_account,
                actor=actor,
                kind=CreditKind.REFUND,
                amount=left,
                currency=upgrade.currency,
                description=f"Upgrade invoice {upgrade.number}, paid: {reason}",
                source_invoice=upgrade,
            )


def invoice_reissue(
    *, account: BillingAccount, month: datetime.date, actor: Principal | None, now: datetime.datetime | None = None
) -> invoicing.CloseResult:
    """Invoice a month again for one account after its invoice was voided: its released usage, corrected. Its audit
    event is written in the close's own transaction: no corrected invoice without it."""

    def record(result: invoicing.CloseResult) -> None:
        audit_record(
            actor=actor,
            organization=account.organization,
            action="billing.invoice.reissue",
            target=account,
            summary={"month": month.strftime("%Y-%m"), "issued": len(result.invoices), "held": len(result.held)},
        )

    return invoicing.invoices_close(month=month, now=now, organization_ids=[account.organization_id], record=record)


def invoice_reissue_late_usage(
    *, invoice: Invoice, actor: Principal | None, now: datetime.datetime | None = None
) -> invoicing.CloseResult:
    """The corrected invoice of a voided late-usage invoice of month M, at once: M's released usage on a new
    late-usage invoice by M's rules (invoicing.late_usage_reissue), not left for the next monthly close."""
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice.pk)
        month = invoice.period_start
        if invoice.kind != InvoiceKind.LATE_USAGE or invoice.status != InvoiceStatus.VOID or month is None:
            raise Conflict(
                f"only a voided late-usage invoice is reissued here; this is a {invoice.status} {invoice.kind}"
            )
        again = Invoice.objects.filter(replaces=invoice).first()
        if again is not None:
            raise Conflict(f"{invoice.public_id} was billed again already, on {again.number or again.public_id}.")
        result = invoicing.late_usage_reissue(voided=invoice, now=now)
        if not result.invoices and not result.held:
            raise Conflict(f"Nothing of {month:%B %Y} is left to bill: a close billed its usage already.")
        account = invoice.billing_account
        audit_record(
            actor=actor,
            organization=account.organization,
            action="billing.invoice.reissue",
            target=invoice,
            summary={
                "month": month.strftime("%Y-%m"),
                "kind": invoice.kind,
                "issued": len(result.invoices),
                "held": len(result.held),
            },
        )
    return result


def invoice_held_notify(*, invoice: Invoice) -> None:
    """Tell the customer why an invoice waits (the operator sees it in the log, the admin and /metrics)."""
    account = invoice.billing_account
    reasons = {
        "address_incomplete": "your billing address is incomplete (street, postal code, city and country)",
        "unpriced_usage": "part of the usage has no price yet in your billing currency",
        "exchange_rate_missing": "the exchange rate for the VAT is not available yet",
    }
    why = "; ".join(reasons.get(r, r) for r in invoice.hold_reasons)
    name = invoice.period_name
    what = (
        f" (usage of {invoice.period_start:%B %Y} metered after that month's invoice was issued, taxed by that "
        "month's rules)"
        if invoice.kind == InvoiceKind.LATE_USAGE and invoice.period_start
        else ""
    )
    with transaction.atomic():
        _email(
            account,
            f"Your {name} is waiting",
            f"Your {name}{what} is prepared but cannot be issued yet: {why}. It is issued as soon as this is "
            "resolved; nothing is lost.",
        )
        audit_record(
            actor=None,
            organization=account.organization,
            action="billing.invoice.held",
            target=invoice,
            summary={"hold_reasons": invoice.hold_reasons, "subtotal": invoice.subtotal},
        )


@transaction.atomic
def invoice_mark_uncollectible(*, invoice: Invoice, actor: Principal | None) -> Invoice:
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


def _received_before_tax(invoice: Invoice) -> int:
    """The money its succeeded payments brought for `invoice`, less that invoice's VAT on it."""
    found = invoice.payments.filter(status="succeeded", currency=invoice.currency).aggregate(total=Sum("amount"))
    return _before_tax(int(found["total"] or 0), invoice)


def _refunded(invoice: Invoice) -> int:
    """What refund credits of `invoice` gave back so far, in its currency."""
    found = CreditGrant.objects.filter(source_invoice=invoice, kind=CreditKind.REFUND).aggregate(total=Sum("amount"))
    return int(found["total"] or 0)


@transaction.atomic
def invoice_refund(*, invoice: Invoice, actor: Principal | None) -> CreditGrant:
    """Give back what was paid for an invoice as a refund credit: the money received for it before its VAT (credits
    are taken off before tax, so against an invoice taxed as this one the credit pays back exactly the money; the
    gross amount would take the VAT off a second time), in the currency it was paid in, less every refund credit it
    already gave. So an unpaid invoice, or one already refunded, gives nothing: a credit never exceeds what it credits."""
    invoice = Invoice.objects.select_for_update().select_related("billing_account__organization").get(pk=invoice.pk)
    refundable = _received_before_tax(invoice) - _refunded(invoice)
    if refundable <= 0:
        raise Conflict(f"Nothing paid for invoice {invoice} is left to refund.")
    return credit_grant(
        account=invoice.billing_account,
        actor=actor,
        kind=CreditKind.REFUND,
        amount=refundable,
        currency=invoice.currency,
        description=f"Refund of invoice {invoice.number}",
        source_invoice=invoice,
    )


@transaction.atomic
def credit_grant(
    *,
    account: BillingAccount,
    actor: Principal | None,
    kind: str,
    amount: int,
    description: str = "",
    expires_at: datetime.datetime | None = None,
    source_invoice: Invoice | None = None,
    currency: str | None = None,
) -> CreditGrant:
    """A credit in `currency` (the account's by default) that the account's invoices in that currency consume."""
    currency = currency or account.currency
    if amount <= 0:
        raise ValidationFailed({"amount": "A credit must be positive."})
    if kind not in CreditKind.values or kind == CreditKind.COUPON:
        raise ValidationFailed({"kind": "Coupons are redeemed by code; give promotion, refund or prepaid."})
    grant = CreditGrant.objects.create(
        billing_account=account,
        kind=kind,
        amount=amount,
        remaining=amount,
        currency=currency,
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
            "currency": currency,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return grant


@transaction.atomic
def coupon_redeem(
    *, account: BillingAccount, actor: Principal | None, code: str, now: datetime.datetime | None = None
) -> CreditGrant:
    """Turn a coupon into a credit grant. Each coupon once per account; expired or used-up coupons are refused."""
    now = now or timezone.now()
    coupon = Coupon.objects.select_for_update().filter(code=code.strip().upper()).first()
    if coupon is None:
        raise ValidationFailed({"code": "No such coupon."})
    if coupon.valid_until is not None and coupon.valid_until <= now:
        raise ValidationFailed({"code": "This coupon has expired."})
    if coupon.currency != account.currency:
        raise ValidationFailed({"code": f"This coupon is for accounts billed in {coupon.currency}."})
    if coupon.max_redemptions is not None and coupon.grants.count() >= coupon.max_redemptions:
        raise Conflict(fields={"code": "This coupon has been used up."})
    if CreditGrant.objects.filter(billing_account=account, coupon=coupon).exists():
        raise Conflict(fields={"code": "This coupon was already redeemed on this account."})
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
        raise Conflict(fields={"code": "This coupon was already redeemed on this account."}) from None
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


def _apply_event(event: dict[str, Any]) -> str:
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
        intent_id = str(obj.get("id") or "")
        payment = _intent_payment(invoice, intent_id=intent_id, attempt=(obj.get("metadata") or {}).get("attempt"))
        if kind == "payment_intent.succeeded":
            if obj.get("amount_received", obj.get("amount")) != gateway.to_stripe_amount(
                invoice.total, invoice.currency
            ):
                return "ignored: amount differs from the invoice"
            return _stripe_payment_succeeded(invoice, payment=payment, payment_intent_id=intent_id)
        # Stripe does not deliver in order: a first confirmation's failure may arrive after the intent succeeded.
        if payment is not None and payment.status == "succeeded":
            return f"ignored: payment {intent_id} already succeeded"
        error = obj.get("last_payment_error") or {}
        if payment is not None:
            Payment.objects.filter(pk=payment.pk).update(
                status="failed", payment_intent_id=intent_id, failure_message=str(error.get("message") or "")[:300]
            )
        audit_record(
            actor=None,
            organization=invoice.billing_account.organization,
            action="billing.invoice.payment_failed",
            target=invoice,
            summary={"payment_intent": intent_id, "message": error.get("message")},
        )
        if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
            return f"invoice {invoice.public_id} payment failed; the invoice is {invoice.status}, nothing to ask"
        _payment_failed_notice(invoice, reason=str(error.get("message") or ""), attempt=intent_id)
        return f"invoice {invoice.public_id} payment failed"
    if kind == "setup_intent.succeeded":
        account = (
            BillingAccount.objects.select_for_update()
            .select_related("organization")
            .filter(stripe_customer_id=obj.get("customer"))
            .first()
        )
        if account is None or not obj.get("payment_method"):
            return "ignored: unknown customer"
        return _card_save(account, actor=None, payment_method=str(obj["payment_method"]), created=obj.get("created"))
    return "ignored"


def _before_tax(amount: int, invoice: Invoice) -> int:
    """The part of `amount`, paid towards `invoice`, that is not its VAT (in proportion to the invoice's own): for the
    whole total, exactly total - tax."""
    if not invoice.total or not invoice.tax:
        return amount
    return round_minor(Decimal(amount) * Decimal(invoice.total - invoice.tax) / Decimal(invoice.total))


def _intent_payment(invoice: Invoice, *, intent_id: str, attempt: Any) -> Payment | None:
    """The Payment row (locked) of a PaymentIntent: by its id, or, while invoice_collect's call has not returned
    and the row does not know its id yet, by the attempt the intent's metadata names."""
    payments = Payment.objects.select_for_update().filter(invoice=invoice, method="stripe")
    payment = payments.filter(payment_intent_id=intent_id).first() if intent_id else None
    if payment is None and (number := whole_number(str(attempt or ""))) is not None:
        payment = payments.filter(payment_intent_id="", attempt=number).first()
    return payment


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
    invoice_collection_enqueue(
        list(Invoice.objects.filter(billing_account=account, status=InvoiceStatus.OPEN).values_list("pk", flat=True))
    )


# --- Overdue --------------------------------------------------------------------------------------------------------


def _billing_stopped(account: BillingAccount) -> QuerySet[Deployment]:
    from deployments.models import Deployment

    return Deployment.objects.filter(
        project__organization_id=account.organization_id, status_reason="billing", deleted_at__isnull=True
    ).exclude(desired_state="deleted")


def overdue_process(*, now: datetime.datetime | None = None) -> dict[str, int]:
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
        assert invoice.due_at is not None  # the query's due_at__lt leaves out invoices without a due date
        days = (now - invoice.due_at).days
        due_reminders = sum(1 for t in thresholds if days >= t)
        if due_reminders > invoice.overdue_reminders_sent:
            with transaction.atomic():
                updated = Invoice.objects.filter(
                    pk=invoice.pk, overdue_reminders_sent=invoice.overdue_reminders_sent
                ).update(overdue_reminders_sent=due_reminders)
                if updated:
                    billing_notice_send(
                        account=invoice.billing_account,
                        kind="invoice_overdue",
                        about=invoice.public_id,
                        title=f"Invoice {invoice.number} is overdue",
                        body=f"Invoice {invoice.number} of {format_money(invoice.total, invoice.currency)} was due "
                        f"on {invoice.due_at:%Y-%m-%d}. Deployments are stopped {settings.BILLING_GRACE_DAYS} days "
                        "after the due date.",
                        dedup_key=f"invoice_overdue:{invoice.public_id}:{due_reminders}",
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
    # Every overdue organization has its billing account (its invoices hang on it): read them once, not once per
    # deployment stopped.
    accounts = {
        account.organization_id: account
        for account in BillingAccount.objects.filter(organization_id__in=overdue_orgs).select_related("organization")
    }
    for deployment in Deployment.objects.filter(
        project__organization_id__in=overdue_orgs, desired_state="running", deleted_at__isnull=True
    ).select_related("project__organization"):
        organization = deployment.project.organization
        try:
            with transaction.atomic():
                deployment_services.deployment_stop(deployment=deployment, actor=None, reason="billing")
                billing_notice_send(
                    account=accounts.get(organization.pk) or billing_account_for(organization=organization),
                    kind="deployment_stopped_for_billing",
                    about=deployment.public_id,
                    title=f"Deployment {deployment.name} was stopped: an invoice is overdue",
                    body=f"{deployment.name} ({deployment.public_id}) was stopped because an invoice is unpaid "
                    f"{settings.BILLING_GRACE_DAYS} days after its due date. Paying it starts the deployment again; "
                    f"{settings.BILLING_DELETE_AFTER_STOPPED_DAYS} days after the stop it is deleted.",
                    dedup_key=f"deployment_stopped_for_billing:{deployment.public_id}:{now:%Y-%m-%dT%H:%M}",
                    severity="critical",
                )
        except Conflict as exc:  # an operation in flight: the next overdue run tries again
            logger.warning("could not stop %s for billing: %s", deployment.public_id, exc)
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


def overdue_release(*, account: BillingAccount, actor: Principal | None = None) -> int:
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
            logger.warning("could not restart %s after payment: %s", deployment.public_id, exc)
            continue
        started += 1
    return started
