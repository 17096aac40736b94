# A deployment moved to another project before its rules followed it left them, and their alerts, in the project it
# left: they follow it now, as deployment_move makes them do since. The old project's project-wide rules' alerts about
# such a deployment are left as they are: the evaluator no longer looks at them.

from django.db import migrations
from django.db.models import F, OuterRef, Subquery


def follow(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    Alert = apps.get_model("alerts", "Alert")
    Deployment = apps.get_model("deployments", "Deployment")
    home = Subquery(Deployment.objects.filter(pk=OuterRef("deployment_id")).values("project_id")[:1])
    AlertRule.objects.filter(deployment__isnull=False).exclude(project_id=F("deployment__project_id")).update(
        project_id=home
    )
    Alert.objects.filter(rule__deployment__isnull=False).exclude(project_id=F("deployment__project_id")).update(
        project_id=home
    )


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0009_vpc_peering_default_is_a_metric"),
        ("deployments", "0008_traffic_in_gib"),
    ]

    operations = [
        migrations.RunPython(follow, migrations.RunPython.noop),
    ]
