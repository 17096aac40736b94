"""Reads of VPC peerings. Each takes its tenant explicitly and owns its select_related. Nothing here writes."""

from __future__ import annotations

from django.db.models import QuerySet

from deployments.models import Deployment
from networking.models import VpcPeering
from organizations.closing import DeletionBlocker, objects_blocking
from organizations.models import Organization


def live_peerings() -> QuerySet[VpcPeering]:
    """Peerings that hold (or may soon hold) a range at the provider. A failed peering that never became active
    was cleaned up at the provider before it failed, so it holds nothing."""
    return VpcPeering.objects.exclude(state=VpcPeering.State.DELETED).exclude(
        state=VpcPeering.State.FAILED, activated_at__isnull=True
    )


def peering_queryset() -> QuerySet[VpcPeering]:
    return VpcPeering.objects.select_related("deployment__region")


def peering_list(*, deployment: Deployment, include_deleted: bool = False) -> QuerySet[VpcPeering]:
    queryset = peering_queryset().filter(deployment=deployment)
    if not include_deleted:
        queryset = queryset.exclude(state=VpcPeering.State.DELETED)
    return queryset


def organization_deletion_blockers(*, organization: Organization) -> list[DeletionBlocker]:
    """VPC peerings of the organization's deployments that still hold (or may soon hold) a range at the provider:
    registered with organizations.closing. Those of a deleted deployment are deleted by the peerings sweep."""
    ids = list(
        live_peerings()
        .filter(deployment__project__organization=organization)
        .order_by("created_at", "pk")
        .values_list("public_id", flat=True)
    )
    return objects_blocking("vpc-peerings", ids, noun="VPC peering", state="not deleted", remedy="delete {them} first")
