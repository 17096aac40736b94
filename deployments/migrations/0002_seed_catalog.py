"""Seeds the default catalog (EMQX Cloud's public prices) in USD (plans, tiers, prices) and the `local` region that hosts brokers on this machine."""

import datetime
from decimal import Decimal

from django.db import migrations

VALID_FROM = datetime.date(2024, 1, 1)
# (code, max_connections, messages_per_second, hourly USD)
DEDICATED_TIERS = [
    ("1k", 1000, 1000, "0.36"),
    ("2k", 2000, 2000, "0.50"),
    ("5k", 5000, 10000, "0.99"),
    ("10k", 10000, 20000, "1.49"),
]
ANNUAL_DISCOUNT = Decimal("0.85")  # annual prepaid: 15% below 8,760 hourly hours
PLANS = [
    ("serverless", "Serverless", "Shared, TLS only, 1,000 sessions and 1,000 msg/s; billed per use.", 0),
    ("dedicated", "Dedicated", "One broker cluster per deployment, billed per hour.", 1),
    ("premium", "Premium", "Dedicated plus durable sessions and IoT platform features; invite-only trial.", 2),
    ("byoc", "BYOC", "Runs in your own cloud account under a license.", 3),
]


def seed(apps, schema_editor):
    Plan = apps.get_model("deployments", "Plan")
    Tier = apps.get_model("deployments", "Tier")
    Price = apps.get_model("deployments", "Price")
    Region = apps.get_model("deployments", "Region")

    plans = {}
    for code, name, description, order in PLANS:
        plans[code], _ = Plan.objects.get_or_create(
            code=code, defaults={"name": name, "description": description, "sort_order": order}
        )

    def price(plan, kind, amount, tier=None):
        Price.objects.get_or_create(
            plan=plan, tier=tier, currency="USD", kind=kind, valid_from=VALID_FROM, defaults={"amount": Decimal(amount)}
        )

    offered = []
    for plan_code in ("dedicated", "premium"):
        plan = plans[plan_code]
        for order, (code, connections, rate, hourly) in enumerate(DEDICATED_TIERS):
            tier, _ = Tier.objects.get_or_create(
                plan=plan,
                code=code,
                defaults={"max_connections": connections, "messages_per_second": rate, "sort_order": order},
            )
            offered.append(tier)
            price(plan, "hourly", hourly, tier)
            price(plan, "annual", (Decimal(hourly) * 8760 * ANNUAL_DISCOUNT).quantize(Decimal("0.01")), tier)
        price(plan, "retention_hourly", "0.06")
        price(plan, "traffic_gb", "0.15")
    price(plans["serverless"], "session_minutes_million", "2")
    price(plans["serverless"], "traffic_gb", "0.15")

    region, _ = Region.objects.get_or_create(
        code="local",
        defaults={
            "display_name": "This machine",
            "provider": "local",
            "cloud_region": "local",
            "driver": "local",
            "bind_address": "127.0.0.1",
            "is_open": True,
        },
    )
    region.tiers.add(*offered)


def unseed(apps, schema_editor):
    apps.get_model("deployments", "Region").objects.filter(code="local", deployments__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
