"""Celery tasks of the billing app: ids in, one service call, retries declared on the decorator."""

import datetime

import stripe
from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing import annual, invoicing, metering, services

TRANSIENT = (OperationalError, InterfaceError)
STRIPE_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


@shared_task(name="billing.meter_usage", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def meter_usage() -> int:
    recorded = metering.meter_usage()
    annual.annual_upgrades_bill()
    return recorded


@shared_task(
    name="billing.close_invoices",
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
    time_limit=3600,
    soft_time_limit=3300,
)
def close_invoices() -> int:
    last_month = metering.month_start(timezone.now()) - datetime.timedelta(days=1)
    return len(invoicing.close_invoices(month=last_month.date()).invoices)


@shared_task(name="billing.process_annual_renewals", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def process_annual_renewals() -> dict:
    return annual.annual_renewals_process()


@shared_task(name="billing.process_overdue", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def process_overdue() -> dict:
    return services.overdue_process()


# VIES is often down for a member state: retry for about a day; the format check stands meanwhile.
@shared_task(
    name="billing.check_vat_number",
    autoretry_for=(services.ViesUnavailable, *TRANSIENT),
    retry_backoff=60,
    retry_backoff_max=3600,
    max_retries=30,
)
def check_vat_number(account_id: int) -> str | None:
    return services.billing_account_check_vat(account_id=account_id)


@shared_task(
    name="billing.sync_stripe_customer",
    autoretry_for=(*STRIPE_TRANSIENT, *TRANSIENT),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=10,
)
def sync_stripe_customer(account_id: int) -> str | None:
    return services.billing_account_sync_stripe(account_id=account_id)


@shared_task(
    name="billing.set_default_card",
    autoretry_for=(*STRIPE_TRANSIENT, *TRANSIENT),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=10,
)
def set_default_card(account_id: int) -> None:
    services.billing_account_set_default_card(account_id=account_id)


# A retry of a failed network call reuses the same attempt number, hence the same idempotency key: Stripe answers
# the first outcome instead of charging again.
@shared_task(
    name="billing.collect_invoice",
    autoretry_for=(*STRIPE_TRANSIENT, *TRANSIENT),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=5,
)
def collect_invoice(invoice_id: int) -> str | None:
    return services.invoice_collect(invoice_id=invoice_id)
