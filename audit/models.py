"""The audit log: one row per mutation, written in the same transaction as the change. Rows are never updated."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from controlplane.ids import PublicIdField


class AuditEvent(models.Model):
    public_id = PublicIdField(prefix="evt")
    organization = models.ForeignKey(
        "organizations.Organization", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept so the trail survives the organization's deletion.
    organization_public_id = models.CharField(max_length=32, blank=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_email = models.CharField(max_length=254, blank=True)
    api_key = models.ForeignKey(
        "organizations.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    api_key_prefix = models.CharField(max_length=16, blank=True)
    action = models.CharField(max_length=64, db_index=True)  # e.g. project.create, api_key.rotate
    target_type = models.CharField(max_length=32)
    target_id = models.CharField(max_length=64, db_index=True)
    summary = models.JSONField(default=dict)
    via = models.CharField(max_length=16, default="system")  # api | console | admin | system | task
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    operation_id = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["organization", "-created_at", "-id"], name="audit_org_time")]

    def __str__(self):
        return f"{self.action} {self.target_id}"
