from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_line_unit_price_wider"),
    ]

    operations = [
        migrations.AlterField(
            model_name="invoice",
            name="kind",
            field=models.CharField(
                choices=[
                    ("monthly", "Monthly usage"),
                    ("annual", "Annual plan (prepaid)"),
                    ("annual_upgrade", "Annual plan tier upgrade"),
                    ("late_usage", "Late usage of an earlier month"),
                ],
                max_length=16,
            ),
        ),
    ]
