"""Reads: deployments of a project, their operations and events, the catalog, and what a region's driver honours.

Every read takes its tenant explicitly and owns its select_related/prefetch_related, so list endpoints make a fixed
number of queries whatever the page size. Nothing here writes.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from django.db.models import Prefetch, QuerySet
from django.db.models.functions import Now

from controlplane import crypto
from deployments.drivers.local import RATE_LIMIT_LEVELS, honoured_rate_limits
from deployments.models import (
    OPEN_MAINTENANCE_STATES,
    Deployment,
    MaintenanceWindow,
    Plan,
    Price,
    RateLimitPolicy,
    Region,
    Status,
    Tier,
)
from organizations.closing import DeletionBlocker, objects_blocking
from organizations.models import Organization


def deployment_queryset() -> QuerySet[Deployment]:
    return Deployment.objects.select_related("project", "plan", "tier", "region")


def _upcoming_maintenance() -> QuerySet[MaintenanceWindow]:
    # Now() rather than a Python timestamp: view classes build their queryset once, at import.
    return MaintenanceWindow.objects.filter(
        status__in=OPEN_MAINTENANCE_STATES,
        ends_at__gt=Now(),
    ).order_by("starts_at", "id")


def deployment_detail_queryset() -> QuerySet[Deployment]:
    """Deployments as the API shows them: with their current or next maintenance window (one query for a page)."""
    return deployment_queryset().prefetch_related(
        Prefetch("maintenance_windows", queryset=_upcoming_maintenance(), to_attr="upcoming_maintenance")
    )


def next_maintenance(deployment: Deployment) -> MaintenanceWindow | None:
    """The window in progress or the next one scheduled; prefetched by deployment_detail_queryset, else one query."""
    upcoming = getattr(deployment, "upcoming_maintenance", None)
    if upcoming is not None:
        return upcoming[0] if upcoming else None
    if deployment.pk is None:
        return None
    return _upcoming_maintenance().filter(deployment=deployment).first()


def rate_limit_list(*, deployment: Deployment) -> list[RateLimitPolicy]:
    order = {level: index for index, level in enumerate(RATE_LIMIT_LEVELS)}
    return sorted(RateLimitPolicy.objects.filter(deployment=deployment), key=lambda p: order[p.level])


def premium_deployments_count(organization_id: int) -> int:
    """Premium deployments the organization ever created, deleted ones included: what a trial grant is counted
    against."""
    return Deployment.objects.filter(project__organization_id=organization_id, plan__code=Plan.Code.PREMIUM).count()


def region_list() -> QuerySet[Region]:
    return Region.objects.prefetch_related(Prefetch("tiers", queryset=Tier.objects.select_related("plan")))


def plan_list() -> QuerySet[Plan]:
    return Plan.objects.prefetch_related(
        Prefetch("tiers", queryset=Tier.objects.order_by("sort_order", "code")),
        Prefetch("prices", queryset=Price.objects.select_related("tier").order_by("kind", "currency", "-valid_from")),
    )


def monitor_credentials(deployment: Deployment) -> tuple[str, str]:
    """(username, plaintext password) of the control plane's own MQTT superuser on this deployment's broker."""
    return deployment.monitor_username, crypto.decrypt_str(deployment.monitor_password_encrypted)


class DriverCapabilities(TypedDict):
    driver: str
    # Per rate-limit level, the fields the broker enforces.
    rate_limits: dict[str, list[str]]
    rate_limits_note: str
    # EMQX regions only: how each enforced field maps onto EMQX's own limiter.
    emqx_enforcement: NotRequired[dict[str, list[dict[str, str]]]]
    acl_client_id_rules: bool
    acl_note: str


def driver_capabilities(region: Region) -> DriverCapabilities:
    """What a deployment in `region` actually enforces of its configuration, said plainly."""
    if region.driver == Region.Driver.LOCAL:
        return {
            "driver": "local",
            "rate_limits": {level: list(fields) for level, fields in honoured_rate_limits().items()},
            "rate_limits_note": "Not enforced: this region runs mosquitto, which has no rate limiting at any level. "
            "Policies are stored and applied if the deployment moves to an EMQX region.",
            "acl_client_id_rules": False,
            "acl_note": "Rules select clients by username or apply to everyone; client-id rules are refused.",
        }
    from deployments.emqx_config import ENFORCEMENT, ENFORCEMENT_NOTE

    return {
        "driver": "kubernetes",
        "rate_limits": {level: sorted({e["field"] for e in entries}) for level, entries in ENFORCEMENT.items()},
        "rate_limits_note": ENFORCEMENT_NOTE,
        "emqx_enforcement": ENFORCEMENT,
        "acl_client_id_rules": True,
        "acl_note": "Rules may select a username, a client id, or everyone.",
    }


def organization_deletion_blockers(*, organization: Organization) -> list[DeletionBlocker]:
    """Deployments of the organization, in any project, that are not deleted (a deployment being deleted still runs
    until its broker is gone): registered with organizations.closing."""
    ids = list(
        Deployment.objects.filter(project__organization=organization)
        .exclude(status=Status.DELETED)
        .order_by("created_at", "pk")
        .values_list("public_id", flat=True)
    )
    return objects_blocking(
        "deployments",
        ids,
        noun="deployment",
        state="not deleted",
        remedy="delete {them} and wait until the deletion completes",
    )
