"""The customer account (Organization), its members and their roles, invitations and API keys.

Models hold fields and constraints only; every change goes through organizations.services, every access decision
through organizations.access.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import no_control_characters
from organizations.roles import Role


class Organization(models.Model):
    public_id = PublicIdField(prefix="org")
    # One line: it heads every invitation's email.
    name = models.CharField(max_length=100, validators=[no_control_characters])
    # Operator overrides of the API rate limits: {"organization": [capacity, refill_per_second], "principal": [...]}.
    rate_limits = models.JSONField(default=dict, blank=True)
    premium_trial_deployments = models.PositiveSmallIntegerField(
        default=0, help_text="Premium trial deployments staff granted this organization (at most 2)."
    )
    # Members' console sessions must be verified by a second factor (TOTP) to reach anything of the organization.
    # API keys are not affected.
    require_two_factor = models.BooleanField(
        default=False, help_text="Members must sign in to the console with two-factor authentication."
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Set when its Owner deleted it (organizations.services.organization_delete). The row stays, with its projects,
    # billing account, invoices and audit log (kept for the legal retention period), but no member, invitation or
    # API key is left to reach it.
    closed_at = models.DateTimeField(null=True, blank=True, help_text="When its Owner deleted the organization.")

    def __str__(self):
        return f"{self.name} ({self.public_id})"

    @property
    def is_closed(self) -> bool:
        return self.closed_at is not None


class Membership(models.Model):
    """A user's place in an organization: a 'sub-account'. Holds organization roles; project roles are grants."""

    public_id = PublicIdField(prefix="mem")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    roles = models.JSONField(default=list, help_text="Organization roles (owner, administrator, accountant, auditor).")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="membership_unique")]

    def __str__(self):
        return f"{self.user} in {self.organization}"

    @property
    def is_owner(self) -> bool:
        return Role.OWNER in self.roles


class Invitation(models.Model):
    public_id = PublicIdField(prefix="ivt")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    roles = models.JSONField(default=list)
    # [{"project": "prj_…", "role": "project_user"}]: granted when the invitation is accepted.
    project_grants = models.JSONField(default=list, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One open invitation per address and organization; accepted or revoked ones stay as history.
            models.UniqueConstraint(
                fields=["organization", "email"],
                condition=Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_open_unique",
            )
        ]

    @property
    def status(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


class ApiKey(models.Model):
    """A credential for automation. The secret is shown once; only its SHA-256 is stored."""

    public_id = PublicIdField(prefix="key")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, validators=[no_control_characters])
    role = models.CharField(max_length=32, choices=Role.choices)
    # Set at creation and never changed: a limited key acts only inside `projects`, and a limited key whose projects
    # are all gone reaches nothing (it is never read as organization-wide). Not limited: the whole organization.
    limited_to_projects = models.BooleanField(default=False, editable=False)
    projects = models.ManyToManyField("projects.Project", blank=True, related_name="api_keys")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_keys")
    prefix = models.CharField(max_length=16, unique=True, help_text="The visible start of the secret.")
    secret_hash = models.CharField(max_length=64)
    # After a rotation the previous secret keeps working until previous_expires_at.
    previous_secret_hash = models.CharField(max_length=64, blank=True)
    previous_expires_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    deletion_protection = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)
