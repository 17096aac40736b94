# A webhook's URL is shown with every path segment after the first masked: Discord, Mattermost, Zapier and Teams put
# their token in the path, which the API, the console and the audit log showed to every member who may read
# channels (an Auditor among them). Channels stored before keep the whole URL encrypted; what is shown is worked out
# again from it, and audit entries that recorded a webhook's config are masked the same way.

import json

from django.db import migrations


def _shown(url):
    from notifications.urlsafety import mask_url

    return mask_url(url or "", first_segment_only=True)


def mask_paths(apps, schema_editor):
    from controlplane import crypto

    Channel = apps.get_model("notifications", "NotificationChannel")
    for channel in Channel.objects.filter(type="webhook").exclude(config_encrypted=""):
        whole = json.loads(crypto.decrypt_str(channel.config_encrypted))
        channel.config = {**(channel.config or {}), "url": _shown(whole.get("url"))}
        channel.save(update_fields=["config"])
    AuditEvent = apps.get_model("audit", "AuditEvent")
    for event in AuditEvent.objects.filter(
        action__in=["notification_channel.create", "notification_channel.update"], summary__has_key="config"
    ):
        config = event.summary.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("url"), str):
            continue
        if (event.summary.get("type") or ("webhook" if "headers" in config else "")) != "webhook":
            continue
        event.summary = {**event.summary, "config": {**config, "url": _shown(config["url"])}}
        event.save(update_fields=["summary"])


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_initial"),
        ("notifications", "0005_history_indexes"),
    ]

    # Backwards there is nothing to undo: the whole URL is still in config_encrypted, and the shorter mask is safe.
    operations = [migrations.RunPython(mask_paths, migrations.RunPython.noop)]
