"""A voided annual upgrade invoice is billed again once: the new invoice names the one it replaces."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0004_traffic_in_gib"),
    ]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="replaces",
            field=models.OneToOneField(
                blank=True,
                help_text="The voided invoice this one bills again (an annual upgrade's).",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="replaced_by",
                to="billing.invoice",
            ),
        ),
    ]
