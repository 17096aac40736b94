"""Projects group an organization's deployments; project grants give members roles on single projects."""

from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import no_control_characters
from organizations.roles import Role

DEFAULT_PROJECT_NAME = "Default project"


class ActiveProjectManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(deleted_at__isnull=True)


class Project(models.Model):
    public_id = PublicIdField(prefix="prj")
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=100, validators=[no_control_characters])
    description = models.CharField(max_length=500, blank=True)
    is_default = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    # A project whose deployments are all deleted is kept, hidden, because those deployments are billing history.
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ActiveProjectManager()
    all_objects = models.Manager()

    class Meta:
        base_manager_name = "all_objects"
        constraints = [
            models.UniqueConstraint(
                "organization",
                Lower("name"),
                condition=models.Q(deleted_at__isnull=True),
                name="project_name_unique_ci",
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.public_id})"


class ProjectGrant(models.Model):
    membership = models.ForeignKey("organizations.Membership", on_delete=models.CASCADE, related_name="grants")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="grants")
    role = models.CharField(
        max_length=32,
        choices=[
            (Role.PROJECT_ADMINISTRATOR.value, "Project Administrator"),
            (Role.PROJECT_USER.value, "Project User"),
        ],
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["membership", "project"], name="project_grant_unique")]
