"""Labels only, no schema change: a traffic allowance is counted in GiB (1024³ bytes), as it always was billed.
The column keeps its name `included_gb`."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_seed_details_and_traffic_allowance"),
    ]

    operations = [
        migrations.AlterField(
            model_name="trafficallowance",
            name="included_gb",
            field=models.PositiveIntegerField(
                help_text="Traffic included each calendar month, in GiB (1 GiB = 1024³ bytes).",
                verbose_name="included GiB",
            ),
        ),
    ]
