# Webhook and Slack credentials (URL userinfo and query tokens, custom header values, a Slack hook's path) move out of
# the plain `config`: the whole config is kept encrypted in `config_encrypted`, and `config` keeps what may be shown.
# Audit entries that recorded a channel's config are masked the same way. New platform event kinds for billing.

import json

from django.db import migrations, models

import controlplane.validators

SECRET_TYPES = ("webhook", "slack")


def _public(channel_type, config):
    from notifications.urlsafety import MASK, mask_url

    if channel_type == "webhook":
        return {
            "url": mask_url(config.get("url") or ""),
            "headers": {name: MASK for name in config.get("headers") or {}},
        }
    return {"url": mask_url(config.get("url") or "", secret_path=True)}


def encrypt_configs(apps, schema_editor):
    from controlplane import crypto

    Channel = apps.get_model("notifications", "NotificationChannel")
    for channel in Channel.objects.filter(type__in=SECRET_TYPES, config_encrypted=""):
        config = channel.config or {}
        channel.config_encrypted = crypto.encrypt_str(json.dumps(config, sort_keys=True))
        channel.config = _public(channel.type, config)
        channel.save(update_fields=["config", "config_encrypted"])
    # The audit log recorded configs as shown then: header values were masked, URL credentials were not.
    AuditEvent = apps.get_model("audit", "AuditEvent")
    for event in AuditEvent.objects.filter(
        action__in=["notification_channel.create", "notification_channel.update"], summary__has_key="config"
    ):
        config = event.summary.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("url"), str):
            continue
        channel_type = event.summary.get("type") or ("webhook" if "headers" in config else "slack")
        if channel_type not in SECRET_TYPES:
            continue
        event.summary = {**event.summary, "config": {**config, **_public(channel_type, config)}}
        event.save(update_fields=["summary"])


def decrypt_configs(apps, schema_editor):
    from controlplane import crypto

    Channel = apps.get_model("notifications", "NotificationChannel")
    for channel in Channel.objects.exclude(config_encrypted=""):
        channel.config = json.loads(crypto.decrypt_str(channel.config_encrypted))
        channel.config_encrypted = ""
        channel.save(update_fields=["config", "config_encrypted"])


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_initial"),
        ("notifications", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="notificationchannel",
            name="config_encrypted",
            field=models.TextField(blank=True, editable=False),
        ),
        migrations.RunPython(encrypt_configs, decrypt_configs),
        migrations.AlterField(
            model_name="notificationchannel",
            name="name",
            field=models.CharField(max_length=100, validators=[controlplane.validators.NoControlCharacters()]),
        ),
        migrations.AlterField(
            model_name="platformevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("deployment_failed", "Deployment failed to provision"),
                    ("invoice_payment_failed", "Invoice payment failed"),
                    ("invoice_overdue", "Invoice overdue"),
                    ("deployment_stopped_for_billing", "Deployment stopped for billing"),
                    ("annual_renewal_reminder", "Annual plan renewal reminder"),
                    ("vat_number_invalid", "VAT number invalid"),
                    ("premium_trial_reminder", "Premium trial ending soon"),
                    ("premium_trial_ended", "Premium trial ended"),
                    ("maintenance_scheduled", "Maintenance scheduled"),
                    ("maintenance_cancelled", "Maintenance cancelled"),
                    ("channel_failing", "Notification channel failing"),
                ],
                max_length=32,
            ),
        ),
    ]
