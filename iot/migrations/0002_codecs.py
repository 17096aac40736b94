# Premium codecs: schemas and their versions, codec rules, the agent's counters; and the "Rule-engine failures
# (codecs)" default alert rule for the Premium deployments that exist now (new ones get it from alerts.defaults).

import controlplane.ids
import controlplane.validators
import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


# Its values as alerts.defaults.DEFAULT_RULES has them when this runs (a migration must not import live code).
CODEC_DEFAULT = {
    "name": "Rule-engine failures (codecs)",
    "kind": "metric",
    "metric": "codec_failures",
    "aggregation": "sum",
    "window_seconds": 300,
    "operator": ">",
    "threshold": 0,
    "threshold_unit": "absolute",
    "for_seconds": 0,
    "severity": "warning",
    "repeat_interval_seconds": 3600,
    "default_key": "codec_failures",
}


def give_premium_deployments_the_default(apps, schema_editor):
    """Once per live Premium deployment, recorded in its collector state as every default is, so a rule the user
    deletes later is never given back."""
    Deployment = apps.get_model("deployments", "Deployment")
    AlertRule = apps.get_model("alerts", "AlertRule")
    CollectorState = apps.get_model("alerts", "CollectorState")
    premium = Deployment.objects.filter(plan__code="premium").exclude(desired_state="deleted").select_related("project")
    for deployment in premium:
        state, _ = CollectorState.objects.get_or_create(deployment=deployment)
        keys = list(state.default_rule_keys or [])
        if "codec_failures" in keys:
            continue
        AlertRule.objects.bulk_create(
            [
                AlertRule(
                    organization_id=deployment.project.organization_id,
                    project_id=deployment.project_id,
                    deployment=deployment,
                    **CODEC_DEFAULT,
                )
            ],
            ignore_conflicts=True,
        )
        state.default_rule_keys = sorted([*keys, "codec_failures"])
        state.save(update_fields=["default_rule_keys"])


def take_the_default_back(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    AlertRule.objects.filter(default_key="codec_failures").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0009_vpc_peering_default_is_a_metric"),
        ("deployments", "0007_tls_certificates"),
        ("iot", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Schema",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=64)),
                (
                    "type",
                    models.CharField(
                        choices=[("protobuf", "Protobuf"), ("avro", "Avro"), ("json_schema", "JSON Schema")],
                        max_length=16,
                    ),
                ),
                (
                    "description",
                    models.CharField(
                        blank=True, max_length=500, validators=[controlplane.validators.NoControlCharacters()]
                    ),
                ),
                ("latest_version", models.PositiveIntegerField(default=1)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "deployment",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="codec_schemas",
                        to="deployments.deployment",
                    ),
                ),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.CreateModel(
            name="SchemaVersion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("version", models.PositiveIntegerField()),
                ("source", models.TextField()),
                ("message_type", models.CharField(blank=True, max_length=256)),
                ("descriptor_set", models.BinaryField(blank=True, default=b"")),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "schema",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="versions", to="iot.schema"
                    ),
                ),
            ],
            options={
                "ordering": ["schema", "version"],
            },
        ),
        migrations.CreateModel(
            name="CodecRule",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("public_id", controlplane.ids.PublicIdField(prefix="cdr")),
                (
                    "name",
                    models.CharField(
                        blank=True, max_length=128, validators=[controlplane.validators.NoControlCharacters()]
                    ),
                ),
                ("topic_filter", models.CharField(max_length=512)),
                (
                    "direction",
                    models.CharField(
                        choices=[("decode", "binary to JSON"), ("encode", "JSON to binary")], max_length=8
                    ),
                ),
                ("topic_template", models.CharField(max_length=512)),
                ("enabled", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("updated_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "deployment",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="codec_rules",
                        to="deployments.deployment",
                    ),
                ),
                (
                    "schema_version",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="rules", to="iot.schemaversion"
                    ),
                ),
            ],
            options={
                "ordering": ["created_at", "id"],
            },
        ),
        migrations.CreateModel(
            name="CodecCounter",
            fields=[
                (
                    "rule",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="counter",
                        serialize=False,
                        to="iot.codecrule",
                    ),
                ),
                ("processed", models.PositiveBigIntegerField(default=0)),
                ("failures", models.PositiveBigIntegerField(default=0)),
                ("failures_collected", models.PositiveBigIntegerField(default=0)),
                ("last_failure", models.TextField(blank=True)),
                ("last_failure_at", models.DateTimeField(blank=True, null=True)),
                (
                    "deployment",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="deployments.deployment"
                    ),
                ),
            ],
        ),
        migrations.AddConstraint(
            model_name="schema",
            constraint=models.UniqueConstraint(fields=("deployment", "name"), name="codec_schema_name_unique"),
        ),
        migrations.AddConstraint(
            model_name="schemaversion",
            constraint=models.UniqueConstraint(fields=("schema", "version"), name="codec_schema_version_unique"),
        ),
        migrations.AddIndex(
            model_name="codecrule",
            index=models.Index(fields=["deployment", "enabled"], name="codec_rule_enabled_idx"),
        ),
        migrations.AddConstraint(
            model_name="codecrule",
            constraint=models.CheckConstraint(
                condition=models.Q(("direction__in", ["decode", "encode"])), name="codec_rule_direction"
            ),
        ),
        migrations.RunPython(give_premium_deployments_the_default, take_the_default_back),
    ]
