"""Every change to projects: create, update, delete. Validates, writes, audits in one transaction."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from controlplane.errors import Conflict, NotFound, model_clean
from organizations.access import Principal
from organizations.models import Organization
from projects.models import Project


def _save(project: Project, *, check_name: bool, **save_kwargs: Any) -> None:
    """Validate and save, answering 409 for a name the organization already uses (case-insensitively). The query
    gives the clear message; the unique constraint catches a concurrent request that took the name meanwhile."""
    conflict = Conflict(fields={"name": f"A project named {project.name!r} already exists in this organization."})
    if (
        check_name
        and Project.objects.filter(organization_id=project.organization_id, name__iexact=project.name)
        .exclude(pk=project.pk)
        .exists()
    ):
        raise conflict
    model_clean(project, exclude=["organization"])
    try:
        with transaction.atomic():
            project.save(**save_kwargs)
    except IntegrityError:
        raise conflict from None


@transaction.atomic
def project_create(*, organization: Organization, actor: Principal | None, name: str, description: str = "") -> Project:
    project = Project(organization=organization, name=name, description=description)
    _save(project, check_name=True)
    audit_record(
        actor=actor,
        organization=organization,
        action="project.create",
        target=project,
        summary={"name": name, "description": description},
    )
    return project


@transaction.atomic
def project_update(
    *, project: Project, actor: Principal | None, name: str | None = None, description: str | None = None
) -> Project:
    # Read again under the row's lock, which project_delete takes too: a deletion that committed since the caller
    # loaded the project leaves nothing to rename (a row deleted, or one hidden as billing history), so the rename
    # answers as for a missing project instead of failing to save or changing a project nobody can see.
    found = Project.objects.select_for_update().filter(pk=project.pk).first()
    if found is None:
        raise NotFound("No such project.")
    found.organization = project.organization  # the same row's organization, already read: not read again
    project = found
    changes: dict[str, list[str]] = {}
    if name is not None and name != project.name:
        changes["name"] = [project.name, name]
        project.name = name
    if description is not None and description != project.description:
        changes["description"] = [project.description, description]
        project.description = description
    _save(project, check_name="name" in changes, update_fields=["name", "description"])
    audit_record(
        actor=actor, organization=project.organization, action="project.update", target=project, summary=changes
    )
    return project


@transaction.atomic
def project_delete(*, project: Project, actor: Principal | None) -> None:
    found = Project.objects.select_for_update().filter(pk=project.pk).first()
    if found is None:  # deleted by a concurrent request
        raise NotFound("No such project.")
    project = found
    if project.is_default:
        raise Conflict("The Default project cannot be deleted.")
    if project.deployments.exclude(status="deleted").exists():
        raise Conflict("The project still holds deployments: delete or move them first.")
    revoked = _detach_api_keys(project)
    audit_record(
        actor=actor,
        organization=project.organization,
        action="project.delete",
        target=project,
        summary={"name": project.name, "revoked_api_keys": revoked},
    )
    project.grants.all().delete()
    if project.deployments.exists():
        # Its deleted deployments are invoice history: hide the project, free its name, keep the rows.
        project.deleted_at = timezone.now()
        project.save(update_fields=["deleted_at"])
    else:
        project.delete()


def _detach_api_keys(project: Project) -> list[str]:
    """Unlink the project from the keys limited to it, and revoke those left with no project.

    The keys' rows are locked (in id order, so concurrent deletions queue rather than deadlock) and the revocation is
    decided after unlinking: two projects of one key deleted at once each see the other's unlinking once its
    transaction commits, and the second one revokes the key. (A limited key with no project reaches nothing even
    unrevoked, organizations.access; revoking says so in the key's status.)"""
    from organizations.models import ApiKey

    through = ApiKey.projects.through
    key_ids = list(
        ApiKey.objects.select_for_update()
        .filter(pk__in=through.objects.filter(project=project).values("apikey_id"))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    through.objects.filter(project=project).delete()
    left_empty = ApiKey.objects.filter(pk__in=key_ids, revoked_at=None).exclude(
        pk__in=through.objects.filter(apikey_id__in=key_ids).values("apikey_id")
    )
    revoked = sorted(left_empty.values_list("prefix", flat=True))
    left_empty.update(revoked_at=timezone.now())
    return revoked
