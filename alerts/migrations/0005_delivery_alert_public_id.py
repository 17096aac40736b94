# Deliveries move to the notifications app, which sits below alerts and may not point into its tables: a delivery
# keeps the public id of the alert it told of instead of a foreign key. The key itself goes in 0006.

from django.db import migrations, models


def copy_public_ids(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "UPDATE alerts_delivery AS d SET alert_public_id = a.public_id FROM alerts_alert AS a WHERE a.id = d.alert_id"
        )


def copy_keys_back(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        # Checked now, not at commit: this migration's next step alters the table, which PostgreSQL refuses while
        # deferred foreign-key checks are pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(
            "UPDATE alerts_delivery AS d SET alert_id = a.id FROM alerts_alert AS a "
            "WHERE a.public_id = d.alert_public_id AND d.alert_public_id <> ''"
        )
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0004_metric_sample_without_db_foreign_key"),
    ]

    operations = [
        migrations.AddField(
            model_name="delivery",
            name="alert_public_id",
            field=models.CharField(blank=True, default="", max_length=32),
        ),
        migrations.RunPython(copy_public_ids, copy_keys_back),
    ]
