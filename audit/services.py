"""Writes the audit trail. Called by every service that changes something, inside that service's transaction."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.db import transaction

from audit.models import AuditEvent
from controlplane import context
from organizations.access import Principal, acting_user
from organizations.models import Organization


def _valid_ip(value: str | None) -> str | None:
    """The client address as the column takes it, or None: a malformed X-Forwarded-For hop must not turn the change
    (or a sign-in attempt) it accompanies into a database error."""
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def audit_record(
    *,
    actor: Principal | None,
    organization: Organization | None,
    action: str,
    target: object,
    summary: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record one mutation. `actor` is an organizations.access.Principal or None for the system itself."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change it records")
    ctx = context.current()
    user = acting_user(actor)
    key = getattr(actor, "api_key", None)
    return AuditEvent.objects.create(
        organization=organization,
        organization_public_id=getattr(organization, "public_id", "") or "",
        actor=user,
        actor_email=getattr(user, "email", "") or "",
        api_key=key,
        api_key_prefix=key.prefix if key is not None else "",
        action=action,
        target_type=target._meta.model_name if hasattr(target, "_meta") else str(type(target).__name__).lower(),
        target_id=getattr(target, "public_id", "") or str(getattr(target, "pk", "")),
        summary=summary or {},
        via=ctx.via,
        ip=_valid_ip(ctx.ip),
        user_agent=ctx.user_agent,
        request_id=ctx.request_id,
        operation_id=ctx.operation_id,
    )
