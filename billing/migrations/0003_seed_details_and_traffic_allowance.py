"""Every existing account's details become its first history row (in force since the account existed), every month
already invoiced is recorded as closed (usage of it metered from now on is late usage), and the catalog gets its
default traffic allowance: 100 GiB (stored as included_gb=100) a month per Dedicated (and Premium) deployment."""

import datetime

from django.db import migrations
from django.db.models import Min

DETAIL_FIELDS = ("country", "company", "email", "address", "city", "state", "postal_code", "tax_id", "vat_status")
ALLOWANCES = {"dedicated": 100, "premium": 100}
VALID_FROM = datetime.date(2024, 1, 1)


def seed(apps, schema_editor):
    BillingAccount = apps.get_model("billing", "BillingAccount")
    BillingDetails = apps.get_model("billing", "BillingDetails")
    TrafficAllowance = apps.get_model("billing", "TrafficAllowance")
    Plan = apps.get_model("deployments", "Plan")
    with_history = BillingDetails.objects.values("billing_account_id")
    BillingDetails.objects.bulk_create(
        [
            BillingDetails(
                billing_account=account,
                valid_from=account.created_at,
                **{name: getattr(account, name) for name in DETAIL_FIELDS},
            )
            for account in BillingAccount.objects.exclude(pk__in=with_history)
        ],
        batch_size=2000,
    )
    MonthClose = apps.get_model("billing", "MonthClose")
    Invoice = apps.get_model("billing", "Invoice")
    for period_start, closed_at in (
        Invoice.objects.filter(kind="monthly", issued_at__isnull=False)
        .values_list("period_start")
        .annotate(closed_at=Min("issued_at"))
        .values_list("period_start", "closed_at")
    ):
        MonthClose.objects.get_or_create(period_start=period_start, defaults={"closed_at": closed_at})
    for plan in Plan.objects.filter(code__in=ALLOWANCES):
        TrafficAllowance.objects.get_or_create(
            plan=plan, valid_from=VALID_FROM, defaults={"included_gb": ALLOWANCES[plan.code]}
        )


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_eu_invoices_traffic_history"), ("deployments", "0002_seed_catalog")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
