"""Premium trials: the trial staff granted an organization (how many trial deployments, until when) and each
deployment made under it with what became of it at the end (converted to the annual plan, stopped, deleted).

Fields and constraints only; every change is made by iot.trials. Imported by iot.models so Django registers them.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.ids import PublicIdField
from deployments.models import MAX_PREMIUM_TRIAL_DEPLOYMENTS as MAX_TRIAL_DEPLOYMENTS


class PremiumTrial(models.Model):
    """One per organization: a re-grant before the end changes it; once it ended it is history."""

    public_id = PublicIdField(prefix="trl")
    organization = models.OneToOneField(
        "organizations.Organization", on_delete=models.CASCADE, related_name="premium_trial"
    )
    deployments = models.PositiveSmallIntegerField(help_text="Trial deployments the organization may create (1–2).")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Set by the sweep, under the trial's lock, when the notice went out (the notice's dedup key is the guarantee).
    reminded_3d_at = models.DateTimeField(null=True, blank=True)
    reminded_1d_at = models.DateTimeField(null=True, blank=True)
    # When the sweep settled every trial deployment at the end (converted or stopped).
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(deployments__gte=1, deployments__lte=MAX_TRIAL_DEPLOYMENTS),
                name="premium_trial_deployments_range",
            ),
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="premium_trial_ordered"),
        ]
        indexes = [models.Index(fields=["ended_at", "ends_at"], name="premium_trial_due_idx")]

    def __str__(self):
        return f"{self.public_id} until {self.ends_at:%Y-%m-%d %H:%M} UTC"


class TrialDeployment(models.Model):
    """A Premium deployment created under a trial. Metering covers it from `started_at` until its annual plan
    starts or, never bought, until it is deleted (iot.trials.COVERAGE_SQL)."""

    class Outcome(models.TextChoices):
        TRIAL = "trial", "On trial"
        CONVERTED = "converted", "Converted to the annual plan"
        STOPPED = "stopped", "Stopped at the end of the trial (data retained)"
        DELETED = "deleted", "Deleted after the retention period"

    trial = models.ForeignKey(PremiumTrial, on_delete=models.CASCADE, related_name="trial_deployments")
    deployment = models.OneToOneField("deployments.Deployment", on_delete=models.CASCADE, related_name="+")
    started_at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.TRIAL)
    converted_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        indexes = [models.Index(fields=["outcome"], name="trial_deployment_outcome_idx")]
