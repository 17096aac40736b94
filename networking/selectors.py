"""Reads of VPC peerings. Each takes its tenant explicitly and owns its select_related. Nothing here writes."""

from __future__ import annotations

from django.db.models import QuerySet

from deployments.models import Deployment
from networking.models import VpcPeering


def peering_queryset() -> QuerySet[VpcPeering]:
    return VpcPeering.objects.select_related("deployment__region")


def peering_list(*, deployment: Deployment, include_deleted: bool = False) -> QuerySet[VpcPeering]:
    queryset = peering_queryset().filter(deployment=deployment)
    if not include_deleted:
        queryset = queryset.exclude(state=VpcPeering.State.DELETED)
    return queryset
