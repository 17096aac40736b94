"""Celery tasks of the billing app: ids in, one service call, retries declared on the decorator."""

import datetime

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing import annual, exchange_rates, invoicing, metering, services
from billing import stripe_gateway as gateway

TRANSIENT = (OperationalError, InterfaceError)
# The close asks VIES about unconfirmed numbers first, for at most this long: a hanging VIES never delays a month.
VIES_BUDGET_SECONDS = 600


# A long gap is caught up in committed batches: a run cut short by the time limit resumes where it stopped.
@shared_task(
    name="billing.meter_usage",
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
    time_limit=3600,
    soft_time_limit=3300,
)
def meter_usage() -> int:
    recorded = metering.usage_meter()
    metering.usage_price_pending()
    invoicing.invoices_release_held()
    annual.annual_upgrades_bill()
    return recorded


@shared_task(name="billing.remeter_usage", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def remeter_usage(deployment_id: int, since: str) -> int:
    return metering.usage_remeter(deployment_id=deployment_id, since=datetime.datetime.fromisoformat(since))


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
    # Unconfirmed VAT numbers get one more chance with VIES before their month is taxed.
    services.vat_checks_run_due(unconfirmed_only=True, budget_seconds=VIES_BUDGET_SECONDS)
    return len(invoicing.invoices_close(month=last_month.date()).invoices)


@shared_task(name="billing.process_annual_renewals", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def process_annual_renewals() -> dict:
    return annual.annual_renewals_process()


@shared_task(name="billing.process_overdue", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def process_overdue() -> dict:
    return services.overdue_process()


# VIES is often down for a member state. The first check runs at once; if VIES does not answer, the account records
# when to ask again (backoff, without end while the number is unconfirmed) and `check_vat_numbers` asks then.
@shared_task(name="billing.check_vat_number", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def check_vat_number(account_id: int) -> str | None:
    try:
        return services.billing_account_check_vat(account_id=account_id)
    except services.ViesUnavailable:
        return None


@shared_task(name="billing.check_vat_numbers", autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def check_vat_numbers() -> dict:
    return services.vat_checks_run_due()


@shared_task(
    name="billing.load_exchange_rates",
    autoretry_for=(*TRANSIENT, exchange_rates.RatesUnavailable),
    retry_backoff=300,
    max_retries=12,
)
def load_exchange_rates() -> int:
    loaded = exchange_rates.exchange_rates_load(source=exchange_rates.ECB_DAILY_URL)
    invoicing.invoices_release_held()
    return loaded


@shared_task(
    name="billing.sync_stripe_customer",
    autoretry_for=(gateway.StripeTransient, *TRANSIENT),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=10,
)
def sync_stripe_customer(account_id: int) -> str | None:
    return services.billing_account_sync_stripe(account_id=account_id)


@shared_task(
    name="billing.set_default_card",
    autoretry_for=(gateway.StripeTransient, *TRANSIENT),
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
    autoretry_for=(gateway.StripeTransient, *TRANSIENT),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=5,
)
def collect_invoice(invoice_id: int) -> str | None:
    return services.invoice_collect(invoice_id=invoice_id)
