"""Remembered responses to mutating API requests that carried an Idempotency-Key."""

from django.db import models
from django.utils import timezone


class IdempotencyRecord(models.Model):
    # Who sent it (a hash of the credential) and the key they chose: unique together, which is what makes a
    # concurrent duplicate wait for the first instead of running the operation twice.
    scope = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    completed = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(null=True)
    headers = models.JSONField(default=dict)
    # Fernet-encrypted (controlplane.crypto): a response can hold a secret, such as a new API key's.
    body = models.BinaryField(default=b"")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_unique")]
