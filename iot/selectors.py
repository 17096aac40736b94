"""Reads of the IoT platform: devices and groups of a deployment with their filters, shadow history, what the
platform agent should serve, and the agents' health for /metrics. Every read takes its tenant explicitly; nothing
here writes.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from controlplane.errors import NotFound
from deployments.models import Deployment, DesiredState, Plan, Status
from iot import shadow
from iot.models import AgentHeartbeat, AgentLease, Device, DeviceCertificate, DeviceGroup, Shadow, ShadowChange

# A broker the agent serves: running, being reconfigured, or being restored after a crash (the agent reconnects by
# itself; keeping the lease avoids a handover for every blip).
SERVABLE_STATUSES = (Status.RUNNING, Status.UPDATING, Status.DEGRADED)
HEARTBEAT_RETENTION = datetime.timedelta(hours=1)


def device_queryset() -> QuerySet[Device]:
    return Device.objects.select_related("deployment").prefetch_related(
        Prefetch("groups", queryset=DeviceGroup.objects.only("pk", "name").order_by("name")),
        # The certificate on record for a certificate device: the one not finally revoked (held counts).
        Prefetch(
            "certificates",
            queryset=DeviceCertificate.objects.filter(
                Q(revoked_at__isnull=True) | Q(revocation_reason="certificateHold")
            ).order_by("-created_at"),
            to_attr="current_certificates",
        ),
    )


def device_current_certificate(device: Device) -> DeviceCertificate | None:
    """The certificate on record for a certificate device (held while it is disabled), from the prefetch of
    device_queryset when there was one."""
    if device.credential_type != Device.CredentialType.CERTIFICATE:
        return None
    prefetched = getattr(device, "current_certificates", None)
    if prefetched is not None:
        return prefetched[0] if prefetched else None
    return (
        DeviceCertificate.objects.filter(device=device)
        .filter(Q(revoked_at__isnull=True) | Q(revocation_reason="certificateHold"))
        .order_by("-created_at")
        .first()
    )


def device_groups(*, deployment: Deployment) -> QuerySet[DeviceGroup]:
    return DeviceGroup.objects.filter(deployment=deployment)


def shadow_history(*, device: Device) -> QuerySet[ShadowChange]:
    return ShadowChange.objects.filter(device=device)


def shadow_get(*, device: Device) -> dict[str, Any]:
    """The device's shadow as a get answers it (with its delta); NotFound when it has none."""
    row = Shadow.objects.filter(device=device).first()
    if row is None or not row.present:
        raise NotFound("No shadow exists for this device.")
    document = shadow.Document(
        present=True,
        version=row.version,
        desired=row.desired,
        reported=row.reported,
        desired_metadata=row.desired_metadata,
        reported_metadata=row.reported_metadata,
    )
    return shadow.get_body(document, timestamp=int(time.time()))


def servable_deployments() -> QuerySet[Deployment]:
    """Premium deployments whose broker runs: the ones an agent must hold a connection to."""
    return Deployment.objects.filter(
        plan__code=Plan.Code.PREMIUM, desired_state=DesiredState.RUNNING, status__in=SERVABLE_STATUSES
    ).select_related("region")


# -- /metrics ----------------------------------------------------------------------------------------------------------


def agent_heartbeat_ages() -> dict[tuple[str], float]:
    """Seconds since each agent's last heartbeat (agents silent for an hour are dropped from the figures)."""
    now = timezone.now()
    rows = AgentHeartbeat.objects.filter(last_heartbeat_at__gt=now - HEARTBEAT_RETENTION).values_list(
        "agent_id", "last_heartbeat_at"
    )
    return {(agent_id,): max(0.0, (now - at).total_seconds()) for agent_id, at in rows}


def agent_deployment_counts() -> dict[tuple[str], float]:
    now = timezone.now()
    rows = AgentHeartbeat.objects.filter(last_heartbeat_at__gt=now - HEARTBEAT_RETENTION).values_list(
        "agent_id", "deployments"
    )
    return {(agent_id,): float(count) for agent_id, count in rows}


def deployment_lags() -> dict[tuple[str], float]:
    """Per servable Premium deployment: the age of its agent's oldest unprocessed message while a live lease serves
    it; otherwise how long it has gone unserved (since its lease expired, or since it was created)."""
    now = timezone.now()
    leases = {lease.deployment_id: lease for lease in AgentLease.objects.all()}
    out = {}
    for deployment in servable_deployments().select_related(None).only("pk", "public_id", "created_at"):
        lease = leases.get(deployment.pk)
        if lease is not None and lease.expires_at > now:
            out[(deployment.public_id,)] = lease.lag_seconds
        else:
            since = lease.expires_at if lease is not None else deployment.created_at
            out[(deployment.public_id,)] = max(0.0, (now - since).total_seconds())
    return out


def deployment_idle_seconds() -> dict[tuple[str], float]:
    """Per served deployment, seconds since its agent last processed an event (a shadow request or a connection)."""
    now = timezone.now()
    rows = AgentLease.objects.filter(expires_at__gt=now, last_event_at__isnull=False).values_list(
        "deployment__public_id", "last_event_at"
    )
    return {(public_id,): max(0.0, (now - at).total_seconds()) for public_id, at in rows if at is not None}
