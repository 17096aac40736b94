# The "deployment unavailable" rule kind, names checked for control characters, and the record of which default
# rules a deployment was given: a list of keys in a field of its own (a default added since reaches it once) instead
# of a flag inside the collector's state, which each successful collection replaced (and with it the flag, so the
# next evaluation gave back defaults the user had deleted).

from django.db import migrations, models

import controlplane.validators

# The defaults there were when "defaults_created" was the record.
FIRST_DEFAULT_KEYS = [
    "acl_denied",
    "auth_failures",
    "certificate_expiring",
    "connections_high",
    "messages_dropped",
    "rate_limit",
    "rule_failures",
    "rule_resource_down",
    "traffic_daily",
    "vpc_peering_abnormal",
]


def keys_from_flag(apps, schema_editor):
    """A deployment was given the first defaults if its state says so, or if it has any default rule left (the flag
    may have been lost to a collection)."""
    AlertRule = apps.get_model("alerts", "AlertRule")
    CollectorState = apps.get_model("alerts", "CollectorState")
    given = set(AlertRule.objects.exclude(default_key="").values_list("deployment_id", flat=True).distinct())
    for state in CollectorState.objects.all():
        if state.state.get("defaults_created") or state.deployment_id in given:
            state.default_rule_keys = FIRST_DEFAULT_KEYS
        state.state = {k: v for k, v in state.state.items() if k != "defaults_created"}
        state.save(update_fields=["state", "default_rule_keys"])


def flag_from_keys(apps, schema_editor):
    CollectorState = apps.get_model("alerts", "CollectorState")
    for state in CollectorState.objects.exclude(default_rule_keys=[]):
        state.state = {**state.state, "defaults_created": True}
        state.save(update_fields=["state"])


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0007_notifications_moved_out"),
    ]

    operations = [
        migrations.AddField(
            model_name="collectorstate",
            name="default_rule_keys",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AlterField(
            model_name="alertrule",
            name="kind",
            field=models.CharField(
                choices=[
                    ("metric", "Metric threshold"),
                    ("certificate_expiry", "TLS certificate expiring"),
                    ("vpc_peering", "VPC peering abnormal"),
                    ("budget", "Budget on spend"),
                    ("deployment_unavailable", "Deployment unavailable"),
                ],
                default="metric",
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="alertrule",
            name="name",
            field=models.CharField(max_length=100, validators=[controlplane.validators.NoControlCharacters()]),
        ),
        migrations.RunPython(keys_from_flag, flag_from_keys),
    ]
