"""Premium trials (iot.trials_models), and the Premium annual prices the trials' conversion quotes: one per Premium
tier and currency that has an hourly price but no annual price on the same day, at 15% below 8,760 hours,
as deployments' catalog seed prices them. Prices already in the catalog are never changed."""

from decimal import ROUND_HALF_UP, Decimal

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

import controlplane.ids

ANNUAL_FACTOR = Decimal(8760) * Decimal("0.85")


def add_missing_premium_annual_prices(apps, schema_editor):
    Price = apps.get_model("deployments", "Price")
    hourly = Price.objects.filter(plan__code="premium", kind="hourly", tier__isnull=False)
    for price in hourly:
        exists = Price.objects.filter(
            plan_id=price.plan_id, tier_id=price.tier_id, currency=price.currency, kind="annual"
        ).exists()
        if not exists:
            Price.objects.create(
                plan_id=price.plan_id,
                tier_id=price.tier_id,
                currency=price.currency,
                kind="annual",
                amount=(price.amount * ANNUAL_FACTOR).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
                valid_from=price.valid_from,
            )


class Migration(migrations.Migration):
    dependencies = [
        ("iot", "0001_initial"),
        ("deployments", "0002_seed_catalog"),
        ("organizations", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="PremiumTrial",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("public_id", controlplane.ids.PublicIdField(prefix="trl")),
                (
                    "deployments",
                    models.PositiveSmallIntegerField(help_text="Trial deployments the organization may create (1–2)."),
                ),
                ("starts_at", models.DateTimeField()),
                ("ends_at", models.DateTimeField()),
                ("reminded_3d_at", models.DateTimeField(blank=True, null=True)),
                ("reminded_1d_at", models.DateTimeField(blank=True, null=True)),
                ("ended_at", models.DateTimeField(blank=True, null=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "granted_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "organization",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="premium_trial",
                        to="organizations.organization",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["ended_at", "ends_at"], name="premium_trial_due_idx")],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("deployments__gte", 1), ("deployments__lte", 2)),
                        name="premium_trial_deployments_range",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("ends_at__gt", models.F("starts_at"))), name="premium_trial_ordered"
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="TrialDeployment",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("started_at", models.DateTimeField()),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("trial", "On trial"),
                            ("converted", "Converted to the annual plan"),
                            ("stopped", "Stopped at the end of the trial (data retained)"),
                            ("deleted", "Deleted after the retention period"),
                        ],
                        default="trial",
                        max_length=16,
                    ),
                ),
                ("converted_at", models.DateTimeField(blank=True, null=True)),
                ("stopped_at", models.DateTimeField(blank=True, null=True)),
                ("deleted_at", models.DateTimeField(blank=True, null=True)),
                (
                    "deployment",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="deployments.deployment"
                    ),
                ),
                (
                    "trial",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="trial_deployments",
                        to="iot.premiumtrial",
                    ),
                ),
            ],
            options={
                "ordering": ["started_at", "id"],
                "indexes": [models.Index(fields=["outcome"], name="trial_deployment_outcome_idx")],
            },
        ),
        migrations.RunPython(add_missing_premium_annual_prices, migrations.RunPython.noop),
    ]
