# The notifications app now owns channels, deliveries, attempts and platform events (its 0001): alerts lets go of
# them in state only, and its rules' channels point at the moved model. No table, row or constraint changes.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0006_delivery_without_alert_key"),
        ("notifications", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="alertrule",
                    name="channels",
                    field=models.ManyToManyField(
                        blank=True, related_name="rules", to="notifications.notificationchannel"
                    ),
                ),
                migrations.DeleteModel(name="DeliveryAttempt"),
                migrations.DeleteModel(name="Delivery"),
                migrations.DeleteModel(name="PlatformEvent"),
                migrations.DeleteModel(name="NotificationChannel"),
            ],
            database_operations=[],
        ),
    ]
