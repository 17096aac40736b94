# The networking app feeds `vpc_peering_abnormal` as a metric sample: the default rule of every existing deployment
# becomes the metric rule new deployments get (last value > 0), so it can fire. Users' own vpc_peering rules stay.

from django.db import migrations


def to_metric(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    AlertRule.objects.filter(default_key="vpc_peering_abnormal", kind="vpc_peering").update(
        kind="metric", metric="vpc_peering_abnormal", aggregation="last"
    )


def to_fact(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    AlertRule.objects.filter(default_key="vpc_peering_abnormal", kind="metric", metric="vpc_peering_abnormal").update(
        kind="vpc_peering", metric="", aggregation="max"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0008_deployment_unavailable"),
    ]

    operations = [
        migrations.RunPython(to_metric, to_fact),
    ]
