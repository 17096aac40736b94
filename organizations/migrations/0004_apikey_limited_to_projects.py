"""A key's limitation to projects becomes a column of the key instead of being read from its (possibly emptied)
project list. A key is limited if it is linked to projects now, or if its creation was audited with projects: such a
key with no project left was widened to the whole organization by a deletion race, and is revoked here."""

from django.db import migrations, models
from django.utils import timezone


def mark_limited(apps, schema_editor):
    ApiKey = apps.get_model("organizations", "ApiKey")
    AuditEvent = apps.get_model("audit", "AuditEvent")
    ApiKey.objects.filter(projects__isnull=False).update(limited_to_projects=True)
    created_limited = (
        AuditEvent.objects.filter(action="api_key.create", target_type="apikey", summary__has_key="projects")
        .exclude(summary__projects=[])
        .values_list("target_id", flat=True)
    )
    ApiKey.objects.filter(public_id__in=list(created_limited), limited_to_projects=False).update(
        limited_to_projects=True
    )
    ApiKey.objects.filter(limited_to_projects=True, projects__isnull=True, revoked_at=None).update(
        revoked_at=timezone.now()
    )


class Migration(migrations.Migration):
    dependencies = [
        ("organizations", "0003_organization_require_two_factor"),
        ("audit", "0002_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="limited_to_projects",
            field=models.BooleanField(default=False, editable=False),
        ),
        migrations.RunPython(mark_limited, migrations.RunPython.noop),
    ]
