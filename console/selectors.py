"""Reads the console's pages need beyond the apps' own selectors: whole tables in a fixed number of queries.

Each takes its tenant explicitly and reads; nothing here writes or decides access (the caller resolved the tenant
through console.tenancy). A page's query count must not grow with its rows: these functions are why.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection
from typing import TYPE_CHECKING

from django.db.models import Count, Prefetch, Q, QuerySet
from django.urls import reverse

from accounts.models import User
from audit.models import AuditEvent
from billing.models import AnnualSubscription, SubscriptionStatus
from deployments.models import Deployment, DesiredState, Operation
from deployments.pricing import DEFAULT_CURRENCY, PriceBook
from organizations.models import ApiKey, Invitation, Membership, Organization
from projects.models import Project, ProjectGrant

if TYPE_CHECKING:
    from alerts.models import AlertRule, Silence

# What the deployment list shows of each row and what `is_converged` reads.
ROW_FIELDS = (
    "id",
    "public_id",
    "project_id",
    "name",
    "plan_id",
    "tier_id",
    "region_id",
    "desired_state",
    "status",
    "generation",
    "observed_generation",
    "restart_nonce",
    "observed_restart_nonce",
    "created_at",
    "deleted_at",
)


def projects_with_counts(projects: list[Project]) -> list[Project]:
    """The given (visible) projects, each with `.deployment_count` of deployments not deleted."""
    counts = dict(
        Project.objects.filter(pk__in=[p.pk for p in projects])
        .annotate(n=Count("deployments", filter=~Q(deployments__desired_state=DesiredState.DELETED)))
        .values_list("pk", "n")
    )
    for project in projects:
        project.deployment_count = counts.get(project.pk, 0)
    return projects


def deployment_rows(*, project: Project, include_deleted: bool = False) -> list[Deployment]:
    """A project's deployments as the list shows them: catalog rows joined, the hourly price in its current state
    (from one read of the price book) and, for those on an annual plan, the term's end."""
    queryset = (
        Deployment.objects.filter(project=project)
        .select_related("plan", "tier", "region")
        .only(*ROW_FIELDS, "plan__name", "plan__code", "tier__code", "region__display_name", "region__code")
    )
    if not include_deleted:
        queryset = queryset.exclude(desired_state=DesiredState.DELETED, deleted_at__isnull=False)
    rows = list(queryset.order_by("-created_at", "-id"))
    # The page's own links, built once instead of a URL reversal per row.
    base = reverse("console:project", args=[project.organization.public_id, project.public_id])
    book = PriceBook(currency=DEFAULT_CURRENCY)
    annual = dict(
        AnnualSubscription.objects.filter(deployment__in=rows, status=SubscriptionStatus.ACTIVE).values_list(
            "deployment_id", "term_end"
        )
    )
    for row in rows:
        row.project = project
        row.hourly_price = book.hourly(plan_id=row.plan_id, tier_id=row.tier_id, state=row.desired_state)
        row.annual_until = annual.get(row.pk)
        row.url = f"{base}/d/{row.public_id}"
    return rows


def annual_term_end(deployment: Deployment) -> datetime.datetime | None:
    return (
        AnnualSubscription.objects.filter(deployment=deployment, status=SubscriptionStatus.ACTIVE)
        .values_list("term_end", flat=True)
        .first()
    )


def current_operation(deployment: Deployment) -> Operation | None:
    """The operation a deployment is busy with, else its latest one."""
    operations = Operation.objects.filter(deployment=deployment).select_related("requested_by")
    active = operations.filter(status__in=[Operation.State.PENDING, Operation.State.RUNNING]).order_by("created_at")
    return active.first() or operations.order_by("-created_at", "-id").first()


def deployments_by_pk(ids: Collection[int]) -> dict[int, Deployment]:
    """The named deployments (deleted ones included: alerts and bills outlive them), by primary key."""
    if not ids:
        return {}
    return {
        d.pk: d for d in Deployment.objects.filter(pk__in=set(ids)).only("id", "public_id", "name", "desired_state")
    }


def alert_rules(*, project: Project, deployment: Deployment | None = None) -> list[AlertRule]:
    """A project's own alert rules and, of the defaults its deployments get, those of `deployment` (None: every
    deployment's), with deployment and channels."""
    from django.db.models import Q

    from alerts.models import AlertRule

    queryset = AlertRule.objects.filter(project=project)
    if deployment is not None:
        queryset = queryset.filter(Q(default_key="") | Q(deployment=deployment))
    return list(
        queryset.select_related("deployment")
        .prefetch_related("channels")
        .order_by("deployment__name", "default_key", "created_at", "id")
    )


def silences(*, project: Project, limit: int = 50) -> list[Silence]:
    from alerts.models import Silence

    return list(
        Silence.objects.filter(project=project).select_related("created_by").order_by("-ends_at", "-id")[:limit]
    )


def members(*, organization: Organization) -> list[Membership]:
    return list(
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .prefetch_related(Prefetch("grants", queryset=ProjectGrant.objects.select_related("project")))
        .order_by("created_at", "id")
    )


def pending_invitations(*, organization: Organization) -> list[Invitation]:
    return list(
        Invitation.objects.filter(organization=organization, accepted_at=None, revoked_at=None)
        .select_related("invited_by")
        .order_by("-created_at")
    )


def active_keys_of(*, organization: Organization, user: User) -> list[ApiKey]:
    return list(ApiKey.objects.filter(organization=organization, created_by=user, revoked_at=None).order_by("name"))


def api_keys(*, organization: Organization) -> list[ApiKey]:
    return list(
        ApiKey.objects.filter(organization=organization)
        .select_related("created_by")
        .prefetch_related("projects")
        .order_by("-created_at", "-id")
    )


def audit_events(*, organization: Organization) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(organization=organization).order_by("-created_at", "-id")
