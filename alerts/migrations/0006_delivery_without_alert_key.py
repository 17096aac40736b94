# A transaction of its own: 0005's UPDATE and this ALTER TABLE never share one.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0005_delivery_alert_public_id"),
    ]

    operations = [
        migrations.RemoveField(model_name="delivery", name="alert"),
    ]
