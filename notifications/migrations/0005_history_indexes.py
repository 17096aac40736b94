# Indexes for alerts.prune_notifications, which forgets finished deliveries and e-mail notices by completed_at.
# Built CONCURRENTLY (so outside a transaction): alerts_delivery can be large, and a plain CREATE INDEX would block
# every delivery being written while it builds.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("notifications", "0004_email_notice_outbox"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="delivery",
            index=models.Index(fields=["completed_at"], name="delivery_completed"),
        ),
        AddIndexConcurrently(
            model_name="emailnotice",
            index=models.Index(fields=["completed_at"], name="email_notice_completed"),
        ),
    ]
