from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0005_deployment_emqx_version"),
    ]

    operations = [
        migrations.AddField(
            model_name="region",
            name="network",
            field=models.JSONField(
                blank=True, default=dict, help_text="Cloud network: see docs/operations/regions.md."
            ),
        ),
        migrations.AddField(
            model_name="region",
            name="cloud_credentials_encrypted",
            field=models.TextField(blank=True, editable=False),
        ),
    ]
