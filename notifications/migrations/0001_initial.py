# The notifications app takes over channels, deliveries, their attempts and platform events from alerts. State only:
# the tables, their rows, indexes and constraints stay exactly as alerts created them (the models keep their
# db_table). Hence this app's first migration follows alerts' 0006, and alerts' 0007 lets go of the models.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

import controlplane.ids

MOVED = ("notificationchannel", "delivery", "deliveryattempt", "platformevent")


def move_content_types(apps, schema_editor, source="alerts", target="notifications"):
    """Permissions and admin history follow the models: their content types change app, unless one exists there."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in MOVED:
        if not ContentType.objects.filter(app_label=target, model=model).exists():
            ContentType.objects.filter(app_label=source, model=model).update(app_label=target)


def move_content_types_back(apps, schema_editor):
    move_content_types(apps, schema_editor, source="notifications", target="alerts")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("alerts", "0006_delivery_without_alert_key"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("organizations", "0002_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="NotificationChannel",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("public_id", controlplane.ids.PublicIdField(prefix="chn")),
                        ("name", models.CharField(max_length=100)),
                        (
                            "type",
                            models.CharField(
                                choices=[
                                    ("email", "Email"),
                                    ("webhook", "Webhook"),
                                    ("slack", "Slack"),
                                    ("pagerduty", "PagerDuty"),
                                ],
                                max_length=16,
                            ),
                        ),
                        ("config", models.JSONField(blank=True, default=dict)),
                        ("secret_encrypted", models.TextField(blank=True, editable=False)),
                        (
                            "is_default",
                            models.BooleanField(
                                default=True, help_text="Receives alerts of rules that name no channel."
                            ),
                        ),
                        (
                            "platform_events",
                            models.BooleanField(
                                default=True, help_text="Receives platform events (failed deployments…)."
                            ),
                        ),
                        ("enabled", models.BooleanField(default=True)),
                        ("failing_since", models.DateTimeField(blank=True, null=True)),
                        ("failure_notice_sent_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("updated_at", models.DateTimeField(auto_now=True)),
                        (
                            "organization",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="notification_channels",
                                to="organizations.organization",
                            ),
                        ),
                    ],
                    options={"db_table": "alerts_notificationchannel", "ordering": ["created_at", "id"]},
                ),
                migrations.CreateModel(
                    name="Delivery",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("public_id", controlplane.ids.PublicIdField(prefix="dlv")),
                        ("alert_public_id", models.CharField(blank=True, max_length=32)),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("fire", "Alert fired"),
                                    ("resolve", "Alert resolved"),
                                    ("repeat", "Alert still firing"),
                                    ("test", "Test"),
                                    ("platform", "Platform event"),
                                ],
                                max_length=16,
                            ),
                        ),
                        ("payload", models.JSONField(default=dict)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("retrying", "Retrying"),
                                    ("succeeded", "Succeeded"),
                                    ("failed", "Failed"),
                                ],
                                default="pending",
                                max_length=16,
                            ),
                        ),
                        ("attempts", models.PositiveSmallIntegerField(default=0)),
                        ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("completed_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "channel",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="deliveries",
                                to="notifications.notificationchannel",
                            ),
                        ),
                        (
                            "organization",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="organizations.organization",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "alerts_delivery",
                        "ordering": ["-created_at", "-id"],
                        "indexes": [models.Index(fields=["channel", "-created_at"], name="delivery_channel_time")],
                    },
                ),
                migrations.CreateModel(
                    name="DeliveryAttempt",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("number", models.PositiveSmallIntegerField()),
                        ("ok", models.BooleanField()),
                        ("status_code", models.PositiveSmallIntegerField(blank=True, null=True)),
                        ("response_body", models.TextField(blank=True)),
                        ("error", models.CharField(blank=True, max_length=500)),
                        ("duration_ms", models.PositiveIntegerField(default=0)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "delivery",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="attempt_rows",
                                to="notifications.delivery",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "alerts_deliveryattempt",
                        "ordering": ["number"],
                        "constraints": [
                            models.UniqueConstraint(fields=("delivery", "number"), name="delivery_attempt_unique")
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="PlatformEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("deployment_failed", "Deployment failed to provision"),
                                    ("invoice_payment_failed", "Invoice payment failed"),
                                    ("deployment_stopped_for_billing", "Deployment stopped for billing"),
                                    ("maintenance_scheduled", "Maintenance scheduled"),
                                    ("maintenance_cancelled", "Maintenance cancelled"),
                                    ("channel_failing", "Notification channel failing"),
                                ],
                                max_length=32,
                            ),
                        ),
                        ("subject", models.CharField(help_text="Public id of what it is about.", max_length=64)),
                        (
                            "severity",
                            models.CharField(
                                choices=[("info", "Info"), ("warning", "Warning"), ("critical", "Critical")],
                                max_length=8,
                            ),
                        ),
                        ("message", models.TextField()),
                        ("dedup_key", models.CharField(max_length=200)),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "organization",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="+",
                                to="organizations.organization",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "alerts_platformevent",
                        "constraints": [
                            models.UniqueConstraint(fields=("organization", "dedup_key"), name="platform_event_once")
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_types, move_content_types_back),
    ]
