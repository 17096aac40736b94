"""Platform events alerts raises on the deployments app's behalf: a deployment that failed to provision.

A sweep, every five minutes, over deployments that failed; each failure is told once (the dedup key names the
failed generation and its create operation), through notifications.services.platform_event_notify.
"""

from __future__ import annotations

from notifications.models import PlatformEvent, Severity
from notifications.services import platform_event_notify


def failed_deployments_notify() -> int:
    """Platform events for deployments that failed to provision; returns how many were told now."""
    from deployments.models import Deployment, Operation, Status

    count = 0
    failed = Deployment.objects.filter(status=Status.FAILED).select_related("project__organization")
    for deployment in failed:
        operation = deployment.operations.filter(kind=Operation.Kind.CREATE).order_by("-created_at").first()
        reason = deployment.last_error or "the broker did not start"
        event = platform_event_notify(
            organization=deployment.project.organization,
            kind=PlatformEvent.Kind.DEPLOYMENT_FAILED,
            subject=deployment.public_id,
            severity=Severity.CRITICAL,
            message=f"Deployment {deployment.name} ({deployment.public_id}) failed: {reason}",
            dedup_key=f"deployment_failed:{deployment.public_id}:{deployment.observed_generation}"
            f":{operation.public_id if operation else ''}",
        )
        count += event is not None
    return count
