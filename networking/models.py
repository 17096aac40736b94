"""VPC peerings between a deployment's region network and a customer's own VPC or VNet.

Fields and constraints only. Requests change a peering through networking.services; the provider's answers are
written only by the poll (networking.services.peering_poll).
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.ids import PublicIdField


class VpcPeering(models.Model):
    class Provider(models.TextChoices):
        AWS = "aws", "AWS"
        GCP = "gcp", "Google Cloud"
        AZURE = "azure", "Azure"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        AWAITING_CUSTOMER_ACTION = "awaiting_customer_action", "Awaiting customer action"
        ACTIVE = "active", "Active"
        FAILED = "failed", "Failed"
        DELETING = "deleting", "Deleting"
        DELETED = "deleted", "Deleted"

    public_id = PublicIdField(prefix="pcx")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.PROTECT, related_name="vpc_peerings")
    provider = models.CharField(max_length=8, choices=Provider.choices)
    cidr = models.CharField(max_length=18, help_text="The customer's network, e.g. 10.1.0.0/16.")

    # The customer's side, as entered (only the provider's own fields are set).
    account_id = models.CharField(max_length=12, blank=True)
    vpc_id = models.CharField(max_length=21, blank=True)
    region = models.CharField(max_length=32, blank=True)
    project_id = models.CharField(max_length=30, blank=True)
    network = models.CharField(max_length=63, blank=True)
    tenant_id = models.CharField(max_length=36, blank=True)
    subscription_id = models.CharField(max_length=36, blank=True)
    resource_group = models.CharField(max_length=90, blank=True)
    vnet_name = models.CharField(max_length=64, blank=True)

    state = models.CharField(max_length=32, choices=State.choices, default=State.PENDING)
    provider_state = models.CharField(max_length=64, blank=True, help_text="The provider's own word for it.")
    # What we made at the provider: AWS pcx id, routes; GCP peering name; Azure peering resource id.
    provider_ids = models.JSONField(default=dict, blank=True)
    # {"summary": str, "commands": [str]}: what the customer must do while awaiting_customer_action.
    customer_action = models.JSONField(default=dict, blank=True)
    last_error = models.TextField(blank=True)
    deletion_protection = models.BooleanField(default=False)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    # Set the first time it became active: a peering that was active and is not any more is abnormal (the alert).
    activated_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    # The poll chain: only the task carrying `poll_token` may act, so a duplicate or a superseded task is a no-op.
    poll_token = models.CharField(max_length=32, blank=True, editable=False)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    poll_attempt = models.PositiveIntegerField(default=0)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    # When it last began awaiting the customer: it expires VPC_PEERING_AWAITING_TTL_SECONDS later.
    awaiting_since = models.DateTimeField(null=True, blank=True)

    @property
    def awaiting_expires_at(self):
        """When a peering still awaiting the customer stops waiting (fails as expired); None in any other state."""
        import datetime

        if self.state != self.State.AWAITING_CUSTOMER_ACTION or self.awaiting_since is None:
            return None
        return self.awaiting_since + datetime.timedelta(seconds=settings.VPC_PEERING_AWAITING_TTL_SECONDS)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(provider__in=["aws", "gcp", "azure"]), name="vpc_peering_provider_known"
            ),
            models.CheckConstraint(
                condition=Q(
                    state__in=["pending", "awaiting_customer_action", "active", "failed", "deleting", "deleted"]
                ),
                name="vpc_peering_state_known",
            ),
        ]
        indexes = [
            models.Index(fields=["deployment", "state"], name="vpc_peering_deployment_idx"),
            models.Index(fields=["state", "next_poll_at"], name="vpc_peering_poll_idx"),
        ]

    def __str__(self):
        return f"{self.public_id} ({self.provider} {self.cidr}, {self.state})"

    @property
    def is_abnormal(self) -> bool:
        """Was active, is not now, and nobody asked for it to go."""
        return self.activated_at is not None and self.state == self.State.FAILED
