"""Labels only, no schema change: the `traffic_gb` price is per GiB (1024³ bytes), as it always was billed; the
stored value `traffic_gb` is an API contract and stays."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0007_tls_certificates"),
    ]

    operations = [
        migrations.AlterField(
            model_name="price",
            name="kind",
            field=models.CharField(
                choices=[
                    ("hourly", "per hour running"),
                    ("retention_hourly", "per hour stopped (data retention)"),
                    ("annual", "per year, prepaid"),
                    ("session_minutes_million", "per million session-minutes"),
                    ("traffic_gb", "per GiB of traffic"),
                ],
                max_length=32,
            ),
        ),
    ]
