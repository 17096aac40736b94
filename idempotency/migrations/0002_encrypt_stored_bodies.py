"""Stored responses are encrypted from now on: encrypt those already kept (a replay decrypts every body)."""

from django.db import migrations


def encrypt_bodies(apps, schema_editor):
    from controlplane import crypto

    IdempotencyRecord = apps.get_model("idempotency", "IdempotencyRecord")
    for record in IdempotencyRecord.objects.filter(completed=True).iterator():
        record.body = crypto.encrypt_bytes(bytes(record.body))
        record.save(update_fields=["body"])


def decrypt_bodies(apps, schema_editor):
    from controlplane import crypto

    IdempotencyRecord = apps.get_model("idempotency", "IdempotencyRecord")
    for record in IdempotencyRecord.objects.filter(completed=True).iterator():
        record.body = crypto.decrypt_bytes(bytes(record.body))
        record.save(update_fields=["body"])


class Migration(migrations.Migration):
    dependencies = [("idempotency", "0001_initial")]

    operations = [migrations.RunPython(encrypt_bodies, decrypt_bodies)]
