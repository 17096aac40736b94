"""Every change to a deployment's desired state: create, stop/start/restart, tier, move, delete, MQTT users, ACL, limits.

Each is one transaction that validates, updates desired state (bumping `generation`), records an Operation, an event
and the audit entry, and enqueues `deployments.reconcile` on commit. Nothing here calls a driver or writes observed
state: that is deployments.reconcile's alone. `dry_run=True` validates exactly the same way and changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, TypeVar, overload

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record
from controlplane import crypto
from controlplane.errors import (
    Conflict,
    DomainError,
    FieldError,
    NotFound,
    PermissionDenied,
    ValidationFailed,
    model_clean,
)
from controlplane.ids import holds_nul
from controlplane.tasks import publish
from controlplane.validators import CONTROL_CHARACTER_CODE, control_character_message, find_control_character
from deployments import emqx_acl, emqx_versions, hooks, pricing, selectors
from deployments.drivers.base import ACL_ACTIONS, ACL_PERMISSIONS, AclEntry, RateLimit, one_of
from deployments.emqx_api import DOT_SEGMENTS
from deployments.emqx_config import validate_rate_limit_hierarchy
from deployments.models import (
    ACTIVE_OPERATION_STATES,
    MAX_PREMIUM_TRIAL_DEPLOYMENTS,
    OPEN_MAINTENANCE_STATES,
    AclRule,
    Deployment,
    DeploymentEvent,
    DesiredState,
    MaintenanceWindow,
    MqttUser,
    Operation,
    Plan,
    RateLimitPolicy,
    Region,
    Status,
    Tier,
)
from deployments.passwords import hash_mqtt_password, validate_mqtt_username
from deployments.topics import validate_acl_topic
from notifications.models import PlatformEvent
from notifications.services import platform_event_notify
from organizations.access import Principal, acting_user
from organizations.services import organization_require_open
from projects.models import Project

logger = logging.getLogger(__name__)
_Choice = TypeVar("_Choice", bound=str)

MONITOR_USERNAME = "$controlplane-monitor"
# Operations that change what runs; only one may be in flight per deployment. Configuration changes may overlap.
STATE_CHANGING = [k for k in Operation.Kind.values if k != Operation.Kind.CONFIGURE]


@dataclasses.dataclass(frozen=True)
class DryRun:
    """What a change would do, without doing it."""

    action: str
    currency: str
    price_per_hour_before: Decimal
    price_per_hour_after: Decimal
    disruption: str  # none | rolling | restart
    summary: str


# -- helpers ----------------------------------------------------------------------------------------------------------


def reconcile_enqueue(deployment_id: int) -> None:
    """Reconcile after the current transaction commits. A lost enqueue (Redis down) is caught by the sweep."""

    def send() -> None:
        from deployments.tasks import reconcile

        publish(reconcile, deployment_id)

    transaction.on_commit(send, robust=True)


def _locked(deployment: Deployment) -> Deployment:
    """The row, locked for this transaction, with the catalog rows the checks need."""
    return (
        Deployment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "plan", "tier", "region")
        .get(pk=deployment.pk)
    )


def _event(deployment: Deployment, kind: str, message: str, operation: Operation | None = None) -> None:
    DeploymentEvent.objects.create(deployment=deployment, operation=operation, kind=kind, message=message)


def _operation(
    deployment: Deployment,
    kind: str,
    actor: Principal | None,
    params: dict[str, Any] | None = None,
    status: str = Operation.State.PENDING,
) -> Operation:
    operation = Operation.objects.create(
        deployment=deployment,
        kind=kind,
        status=status,
        target_generation=deployment.generation,
        params=params or {},
        requested_by=acting_user(actor),
        finished_at=timezone.now() if status == Operation.State.SUCCEEDED else None,
    )
    _event(deployment, f"operation.{kind}", f"{kind.replace('_', ' ')} requested", operation)
    return operation


def _refuse_if_deleted(deployment: Deployment) -> None:
    if deployment.desired_state == DesiredState.DELETED:
        raise Conflict("The deployment is being deleted or was deleted.")


def _refuse_if_busy(deployment: Deployment) -> None:
    active = (
        Operation.objects.filter(deployment=deployment, kind__in=STATE_CHANGING, status__in=ACTIVE_OPERATION_STATES)
        .order_by("created_at")
        .first()
    )
    if active is not None:
        raise Conflict(f"Operation {active.public_id} ({active.kind}) is still in progress; retry once it finishes.")


def _lock_live_project(project: Project) -> None:
    """Lock the project's row, as project_delete does before it looks for live deployments, and refuse one deleted
    meanwhile: a deployment created in (or moved to) a project being deleted is then either seen by the deletion, which
    refuses, or refused here. Locked after the organization's row and the deployment's, never before."""
    if Project.objects.select_for_update().filter(pk=project.pk).values_list("pk", flat=True).first() is None:
        raise NotFound("No such project: it was deleted.")


def _name_taken(project: Project, name: str, exclude_pk: int | None = None) -> bool:
    qs = Deployment.objects.filter(project=project, name__iexact=name).exclude(desired_state=DesiredState.DELETED)
    if exclude_pk is not None:
        qs = qs.exclude(pk=exclude_pk)
    return qs.exists()


def _name_conflict(name: str) -> Conflict:
    return Conflict(fields={"name": [f"A deployment named {name!r} already exists in this project."]})


def _refuse_control_characters(**fields: str | None) -> None:
    """400 naming each field whose value holds a control character (the API's serializers refuse them first; this
    holds for every other caller: the console, the admin, commands)."""
    errors = []
    for field, value in fields.items():
        found = find_control_character(value) if isinstance(value, str) else None
        if found is not None:
            errors.append(FieldError(field, control_character_message(*found), CONTROL_CHARACTER_CODE))
    if errors:
        raise ValidationFailed(errors)


def _bump(deployment: Deployment, *fields: str) -> None:
    deployment.generation += 1
    deployment.save(update_fields=["generation", "updated_at", *fields])


def _disruption(deployment: Deployment, kind: str) -> str:
    if kind == "create":
        return "none"
    # A Kubernetes cluster of several nodes is restarted one node at a time; a single local broker all at once.
    rolling = deployment.region.driver == Region.Driver.KUBERNETES
    if kind in ("restart", "change_tier"):
        return "rolling" if rolling else "restart"
    if kind == "stop":
        return "restart"  # every client is disconnected until the deployment is started again
    return "none"


def _dry_run(deployment: Deployment, action: str, *, state_after: str, tier_after: Tier, summary: str) -> DryRun:
    before = (
        pricing.hourly_price(plan=deployment.plan, tier=deployment.tier, state=deployment.desired_state)
        if deployment.pk
        else Decimal("0")
    )
    after = pricing.hourly_price(plan=deployment.plan, tier=tier_after, state=state_after)
    return DryRun(
        action=action,
        currency=pricing.DEFAULT_CURRENCY,
        price_per_hour_before=before,
        price_per_hour_after=after,
        disruption=_disruption(deployment, action),
        summary=summary,
    )


# -- deployments -------------------------------------------------------------------------------------------------------


@overload
def deployment_create(
    *,
    project: Project,
    actor: Principal | None,
    name: str,
    plan: str,
    tier: str,
    region: str,
    dry_run: Literal[False] = ...,
    emqx_version: str | None = ...,
    billing_cycle: str = ...,
    auto_renew: bool = ...,
) -> tuple[Deployment, Operation]: ...


@overload
def deployment_create(
    *,
    project: Project,
    actor: Principal | None,
    name: str,
    plan: str,
    tier: str,
    region: str,
    dry_run: Literal[True],
    emqx_version: str | None = ...,
    billing_cycle: str = ...,
    auto_renew: bool = ...,
) -> DryRun: ...


@overload
def deployment_create(
    *,
    project: Project,
    actor: Principal | None,
    name: str,
    plan: str,
    tier: str,
    region: str,
    dry_run: bool,
    emqx_version: str | None = ...,
    billing_cycle: str = ...,
    auto_renew: bool = ...,
) -> tuple[Deployment, Operation] | DryRun: ...


@transaction.atomic
def deployment_create(
    *,
    project: Project,
    actor: Principal | None,
    name: str,
    plan: str,
    tier: str,
    region: str,
    dry_run: bool = False,
    emqx_version: str | None = None,
    billing_cycle: str = "hourly",
    auto_renew: bool = False,
) -> tuple[Deployment, Operation] | DryRun:
    """Create a deployment; with billing_cycle "annual", buy its annual plan in the same transaction (the two exist
    together or not at all). The caller has checked the deployment:annual scope for that."""
    if billing_cycle not in ("hourly", "annual"):
        raise ValidationFailed({"billing_cycle": [f"Unknown billing cycle {billing_cycle!r}."]})
    _refuse_control_characters(name=name)
    plan_row = Plan.objects.filter(code=plan).first()
    if plan_row is None:
        raise ValidationFailed({"plan": [f"Unknown plan {plan!r}."]})
    tier_row = Tier.objects.select_related("plan").filter(plan=plan_row, code=tier).first()
    if tier_row is None:
        raise ValidationFailed({"tier": [f"Unknown tier {tier!r} for plan {plan!r}."]})
    region_row = Region.objects.filter(code=region).first()
    if region_row is None:
        raise ValidationFailed({"region": [f"Unknown region {region!r}."]})
    if not region_row.is_open:
        raise ValidationFailed({"region": [f"Region {region!r} is closed for new deployments."]})
    if not region_row.tiers.filter(pk=tier_row.pk).exists():
        raise ValidationFailed({"tier": [f"Tier {plan}/{tier} is not offered in region {region!r}."]})
    emqx_version = _check_emqx_version(region_row, emqx_version)
    organization = project.organization
    if plan_row.code == Plan.Code.PREMIUM:
        # Lock the organization so two concurrent creates cannot both take the last trial.
        organization = type(organization).objects.select_for_update().get(pk=organization.pk)
        granted = min(organization.premium_trial_deployments, MAX_PREMIUM_TRIAL_DEPLOYMENTS)
        if granted == 0:
            raise PermissionDenied("Premium is invite-only: ask us for a trial to create a Premium deployment.")
        used = selectors.premium_deployments_count(organization.pk)
        if used >= granted:
            raise Conflict(f"Your organization has used its {granted} Premium trial deployment(s).")
    # Shared with organization_delete's lock: a deployment created while its organization is deleted is then either
    # seen by the deletion, which refuses, or refused here. Shared, so creations do not wait on each other.
    organization_require_open(organization_id=organization.pk)
    _lock_live_project(project)
    if _name_taken(project, name):
        raise _name_conflict(name)

    deployment = Deployment(
        project=project, name=name, plan=plan_row, tier=tier_row, region=region_row, emqx_version=emqx_version
    )
    if dry_run:
        return _dry_run(
            deployment,
            "create",
            state_after="running",
            tier_after=tier_row,
            summary=f"Create a {plan}/{tier} deployment in {region}.",
        )
    monitor_password = secrets.token_urlsafe(24)
    salt_b64, hash_b64 = hash_mqtt_password(monitor_password)
    deployment.monitor_username = MONITOR_USERNAME
    deployment.monitor_password_encrypted = crypto.encrypt_str(monitor_password)
    deployment.monitor_salt_b64, deployment.monitor_hash_b64 = salt_b64, hash_b64
    deployment.api_secret_encrypted = crypto.encrypt_str(secrets.token_urlsafe(32))
    model_clean(deployment, exclude=["project", "plan", "tier", "region"], validate_constraints=False)
    try:
        with transaction.atomic():
            deployment.save()
    except IntegrityError:  # a concurrent create took the name
        raise _name_conflict(name) from None
    operation = _operation(deployment, Operation.Kind.CREATE, actor, {"plan": plan, "tier": tier, "region": region})
    audit_record(
        actor=actor,
        organization=organization,
        action="deployment.create",
        target=deployment,
        summary={"name": name, "plan": plan, "tier": tier, "region": region, "operation": operation.public_id},
    )
    hooks.deployment_created(deployment)  # what upper apps create with every deployment (alerts: default rules)
    reconcile_enqueue(deployment.pk)
    if billing_cycle == "annual":
        # Billing sits above deployments; the one call down from here is deferred to run time.
        from billing.annual import annual_subscription_start

        annual_subscription_start(deployment=deployment, actor=actor, auto_renew=auto_renew)
    return deployment, operation


@transaction.atomic
def deployment_update(
    *, deployment: Deployment, actor: Principal | None, name: str | None = None, deletion_protection: bool | None = None
) -> Deployment:
    """Rename, and turn deletion protection on or off (each its own audit entry: lifting protection is audited)."""
    _refuse_control_characters(name=name)
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    organization = deployment.project.organization
    if name is not None and name != deployment.name:
        if _name_taken(deployment.project, name, exclude_pk=deployment.pk):
            raise _name_conflict(name)
        old, deployment.name = deployment.name, name
        try:
            with transaction.atomic():
                deployment.save(update_fields=["name", "updated_at"])
        except IntegrityError:
            raise _name_conflict(name) from None
        _event(deployment, "deployment.renamed", f"renamed from {old!r} to {name!r}")
        audit_record(
            actor=actor,
            organization=organization,
            action="deployment.rename",
            target=deployment,
            summary={"name": [old, name]},
        )
    if deletion_protection is not None and deletion_protection != deployment.deletion_protection:
        deployment.deletion_protection = deletion_protection
        deployment.save(update_fields=["deletion_protection", "updated_at"])
        verb = "enabled" if deletion_protection else "lifted"
        _event(deployment, "deployment.protection", f"deletion protection {verb}")
        audit_record(
            actor=actor,
            organization=organization,
            action="deployment.protection.enable" if deletion_protection else "deployment.protection.lift",
            target=deployment,
            summary={"deletion_protection": deletion_protection},
        )
    return deployment


@overload
def deployment_stop(
    *, deployment: Deployment, actor: Principal | None, reason: str = ..., dry_run: Literal[False] = ...
) -> tuple[Deployment, Operation]: ...


@overload
def deployment_stop(
    *, deployment: Deployment, actor: Principal | None, reason: str = ..., dry_run: Literal[True]
) -> DryRun: ...


@overload
def deployment_stop(
    *, deployment: Deployment, actor: Principal | None, reason: str = ..., dry_run: bool
) -> tuple[Deployment, Operation] | DryRun: ...


@transaction.atomic
def deployment_stop(
    *, deployment: Deployment, actor: Principal | None, reason: str = "", dry_run: bool = False
) -> tuple[Deployment, Operation] | DryRun:
    """Stop the broker, keeping its data. reason "billing" marks a stop for an unpaid invoice (only billing lifts it).

    A billing stop supersedes an operation in flight; a user's stop waits for it (409).
    """
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    if deployment.desired_state == DesiredState.STOPPED:
        raise Conflict("The deployment is already stopped.")
    if reason != "billing":
        _refuse_if_busy(deployment)
    if dry_run:
        return _dry_run(
            deployment,
            "stop",
            state_after="stopped",
            tier_after=deployment.tier,
            summary="Stop the broker; clients are disconnected, data and sessions are kept.",
        )
    deployment.desired_state = DesiredState.STOPPED
    deployment.status_reason = reason[:32]
    _bump(deployment, "desired_state", "status_reason")
    operation = _operation(deployment, Operation.Kind.STOP, actor, {"reason": reason} if reason else {})
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="deployment.stop",
        target=deployment,
        summary={"reason": reason, "operation": operation.public_id},
    )
    reconcile_enqueue(deployment.pk)
    return deployment, operation


@overload
def deployment_start(
    *, deployment: Deployment, actor: Principal | None, dry_run: Literal[False] = ...
) -> tuple[Deployment, Operation]: ...


@overload
def deployment_start(*, deployment: Deployment, actor: Principal | None, dry_run: Literal[True]) -> DryRun: ...


@overload
def deployment_start(
    *, deployment: Deployment, actor: Principal | None, dry_run: bool
) -> tuple[Deployment, Operation] | DryRun: ...


@transaction.atomic
def deployment_start(
    *, deployment: Deployment, actor: Principal | None, dry_run: bool = False
) -> tuple[Deployment, Operation] | DryRun:
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    if deployment.desired_state == DesiredState.RUNNING:
        raise Conflict("The deployment is already running.")
    if deployment.status_reason == "billing" and actor is not None:
        raise Conflict("The deployment was stopped for an unpaid invoice; it starts again once the invoice is paid.")
    hooks.deployment_starting(deployment)  # e.g. iot: a Premium trial deployment whose trial ended stays stopped
    _refuse_if_busy(deployment)
    if dry_run:
        return _dry_run(
            deployment,
            "start",
            state_after="running",
            tier_after=deployment.tier,
            summary="Start the broker again with its data and sessions.",
        )
    deployment.desired_state = DesiredState.RUNNING
    deployment.status_reason = ""
    _bump(deployment, "desired_state", "status_reason")
    operation = _operation(deployment, Operation.Kind.START, actor)
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="deployment.start",
        target=deployment,
        summary={"operation": operation.public_id},
    )
    reconcile_enqueue(deployment.pk)
    return deployment, operation


@overload
def deployment_restart(
    *, deployment: Deployment, actor: Principal | None, dry_run: Literal[False] = ...
) -> tuple[Deployment, Operation]: ...


@overload
def deployment_restart(*, deployment: Deployment, actor: Principal | None, dry_run: Literal[True]) -> DryRun: ...


@overload
def deployment_restart(
    *, deployment: Deployment, actor: Principal | None, dry_run: bool
) -> tuple[Deployment, Operation] | DryRun: ...


@transaction.atomic
def deployment_restart(
    *, deployment: Deployment, actor: Principal | None, dry_run: bool = False
) -> tuple[Deployment, Operation] | DryRun:
    """Maintenance: brokers restart one at a time; persistent sessions and their queued messages survive."""
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    if deployment.desired_state != DesiredState.RUNNING:
        raise Conflict("Only a running deployment can be restarted; start it instead.")
    _refuse_if_busy(deployment)
    if dry_run:
        return _dry_run(
            deployment,
            "restart",
            state_after="running",
            tier_after=deployment.tier,
            summary="Restart the brokers one at a time; persistent sessions are kept.",
        )
    deployment.restart_nonce += 1
    _bump(deployment, "restart_nonce")
    operation = _operation(deployment, Operation.Kind.RESTART, actor, {"restart_nonce": deployment.restart_nonce})
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="deployment.restart",
        target=deployment,
        summary={"operation": operation.public_id},
    )
    reconcile_enqueue(deployment.pk)
    return deployment, operation


@overload
def deployment_change_tier(
    *, deployment: Deployment, actor: Principal | None, tier: str, dry_run: Literal[False] = ...
) -> tuple[Deployment, Operation]: ...


@overload
def deployment_change_tier(
    *, deployment: Deployment, actor: Principal | None, tier: str, dry_run: Literal[True]
) -> DryRun: ...


@overload
def deployment_change_tier(
    *, deployment: Deployment, actor: Principal | None, tier: str, dry_run: bool
) -> tuple[Deployment, Operation] | DryRun: ...


@transaction.atomic
def deployment_change_tier(
    *, deployment: Deployment, actor: Principal | None, tier: str, dry_run: bool = False
) -> tuple[Deployment, Operation] | DryRun:
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    # The console passes its form's text as it came: a NUL (no tier code holds one) would fail the query.
    new_tier = (
        None if holds_nul(tier) else Tier.objects.select_related("plan").filter(plan=deployment.plan, code=tier).first()
    )
    if new_tier is None:
        raise ValidationFailed({"tier": [f"Unknown tier {tier!r} for plan {deployment.plan.code!r}."]})
    if new_tier.pk == deployment.tier_id:
        raise ValidationFailed({"tier": [f"The deployment is already on tier {tier!r}."]})
    if not deployment.region.tiers.filter(pk=new_tier.pk).exists():
        raise ValidationFailed({"tier": [f"Tier {tier!r} is not offered in region {deployment.region.code!r}."]})
    hours = settings.TIER_CHANGE_MIN_INTERVAL_HOURS
    if deployment.last_tier_change_at is not None:
        allowed_at = deployment.last_tier_change_at + datetime.timedelta(hours=hours)
        if timezone.now() < allowed_at:
            raise Conflict(
                f"The tier can change once every {hours} hours; the next change is possible at "
                f"{allowed_at.isoformat(timespec='seconds')}."
            )
    _refuse_if_busy(deployment)
    if dry_run:
        return _dry_run(
            deployment,
            "change_tier",
            state_after=deployment.desired_state,
            tier_after=new_tier,
            summary=f"Change the tier from {deployment.tier.code} to {new_tier.code}.",
        )
    old = deployment.tier.code
    deployment.tier = new_tier
    deployment.last_tier_change_at = timezone.now()
    _bump(deployment, "tier", "last_tier_change_at")
    operation = _operation(deployment, Operation.Kind.CHANGE_TIER, actor, {"from": old, "to": tier})
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="deployment.change_tier",
        target=deployment,
        summary={"tier": [old, tier], "operation": operation.public_id},
    )
    reconcile_enqueue(deployment.pk)
    return deployment, operation


@transaction.atomic
def deployment_move(
    *, deployment: Deployment, actor: Principal | None, project: Project
) -> tuple[Deployment, Operation]:
    """Move to another project of the same organization. The broker is not touched."""
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    if project.organization_id != deployment.project.organization_id:
        raise ValidationFailed({"project": ["No such project in this organization."]})
    if project.pk == deployment.project_id:
        raise ValidationFailed({"project": ["The deployment is already in that project."]})
    _refuse_if_busy(deployment)
    _lock_live_project(project)
    if _name_taken(project, deployment.name):
        raise Conflict(fields={"project": [f"The project already holds a deployment named {deployment.name!r}."]})
    source = deployment.project
    deployment.project = project
    try:
        with transaction.atomic():
            deployment.save(update_fields=["project", "updated_at"])
    except IntegrityError:
        raise Conflict(
            fields={"project": [f"The project already holds a deployment named {deployment.name!r}."]}
        ) from None
    hooks.deployment_moved(deployment, source)  # what upper apps keep per project follows it (alerts: its rules)
    operation = _operation(
        deployment,
        Operation.Kind.MOVE,
        actor,
        {"from": source.public_id, "to": project.public_id},
        status=Operation.State.SUCCEEDED,
    )
    audit_record(
        actor=actor,
        organization=project.organization,
        action="deployment.move",
        target=deployment,
        summary={"project": [source.public_id, project.public_id], "operation": operation.public_id},
    )
    return deployment, operation


@transaction.atomic
def deployment_delete(
    *, deployment: Deployment, actor: Principal | None, force: bool = False
) -> tuple[Deployment, Operation]:
    """Delete the broker and its data. The row stays (status deleted) for billing and history.

    Deletion protection answers 409; `force` (billing's policy for long-overdue accounts) overrides it and any
    operation in flight.
    """
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    if deployment.deletion_protection and not force:
        raise Conflict("Deletion protection is on for this deployment; lift it first (PATCH deletion_protection).")
    if not force:
        _refuse_if_busy(deployment)
    deployment.desired_state = DesiredState.DELETED
    _bump(deployment, "desired_state")
    operation = _operation(deployment, Operation.Kind.DELETE, actor, {"force": True} if force else {})
    # Maintenance of a deployment that is going away is moot; whoever deleted it needs no notice of that.
    cancelled = MaintenanceWindow.objects.filter(
        deployment=deployment, status=MaintenanceWindow.Status.SCHEDULED
    ).update(status=MaintenanceWindow.Status.CANCELLED, cancelled_at=timezone.now())
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="deployment.delete",
        target=deployment,
        summary={"force": force, "operation": operation.public_id, "maintenance_cancelled": cancelled},
    )
    reconcile_enqueue(deployment.pk)
    return deployment, operation


def _check_emqx_version(region: Region, emqx_version: str | None) -> str:
    """The EMQX release a deployment in `region` runs: the default when not given, "" outside Kubernetes."""
    if region.driver != Region.Driver.KUBERNETES:
        if emqx_version:
            raise ValidationFailed(
                {
                    "emqx_version": f"Region {region.code!r} runs mosquitto brokers; an EMQX version applies only to "
                    "Kubernetes (EMQX) regions."
                }
            )
        return ""
    try:
        return emqx_versions.check(emqx_version or emqx_versions.DEFAULT_VERSION)
    except emqx_versions.UnsupportedVersion as exc:
        raise ValidationFailed({"emqx_version": str(exc)}) from exc


def _check_acl_expressible(deployment: Deployment, rules: list[AclRule], before: list[AclEntry]) -> None:
    """EMQX evaluates client-id, then username, then everyone's rules: refuse a change that leads to an order it
    cannot express. A list that was already inexpressible (stored before this check) may still be edited toward
    one that is; the reconciler reports it meanwhile."""
    if deployment.region.driver != Region.Driver.KUBERNETES:
        return
    try:
        emqx_acl.compile_acl(_acl_entries(rules))
    except emqx_acl.AclNotExpressible as exc:
        try:
            emqx_acl.compile_acl(before)
        except emqx_acl.AclNotExpressible:
            return
        raise ValidationFailed({exc.field: str(exc)}) from exc


def _acl_entries(rules: list[AclRule]) -> list[AclEntry]:
    return [
        AclEntry(
            permission=_choice(r.permission, ACL_PERMISSIONS, "permission"),
            action=_choice(r.action, ACL_ACTIONS, "action"),
            topic=r.topic,
            username=r.username,
            client_id=r.client_id,
        )
        for r in rules
    ]


def _choice(value: str, choices: tuple[_Choice, ...], field: str) -> _Choice:
    # The API and the console offer only these; a service caller passing anything else is refused here.
    try:
        return one_of(value, choices)
    except ValueError as exc:
        raise ValidationFailed({field: str(exc)}) from exc


# -- configuration: MQTT users, ACL, rate limits ------------------------------------------------------------------------


def _configure(deployment: Deployment, actor: Principal | None, action: str, summary: dict[str, Any]) -> Operation:
    _bump(deployment)
    operation = _operation(deployment, Operation.Kind.CONFIGURE, actor, {"change": action, **summary})
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action=f"deployment.{action}",
        target=deployment,
        summary={**summary, "operation": operation.public_id},
    )
    reconcile_enqueue(deployment.pk)
    return operation


@transaction.atomic
def deployment_configuration_changed(
    *, deployment: Deployment, actor: Principal | None, change: str, summary: dict[str, Any]
) -> Operation:
    """Configuration another app owns through deployments.extensions (Premium devices) changed: bump the generation,
    record a configure Operation and reconcile on commit, exactly as an MQTT user change does. The caller writes
    its own audit row in the same transaction; this writes none."""
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    _bump(deployment)
    operation = _operation(deployment, Operation.Kind.CONFIGURE, actor, {"change": change, **summary})
    reconcile_enqueue(deployment.pk)
    return operation


def _gone(what: str) -> NotFound:
    """A row the request resolved before it took the deployment's lock, deleted by a request that held the lock: as
    missing as if it had never existed."""
    return NotFound(f"No such {what}: it was deleted.")


def _check_username(deployment: Deployment, username: str, field: str = "username") -> None:
    _refuse_control_characters(**{field: username})
    try:
        validate_mqtt_username(username)
    except ValueError as exc:
        raise ValidationFailed({field: [str(exc)]}) from exc
    if username.startswith("$"):
        raise ValidationFailed({field: ["Usernames starting with '$' are reserved for the control plane."]})
    if username.startswith("#") and deployment.region.driver == Region.Driver.LOCAL:
        raise ValidationFailed(
            {field: ["Usernames starting with '#' are not supported in this region: mosquitto reads them as comments."]}
        )
    _refuse_dot_segment(deployment, field, username)


def _refuse_dot_segment(deployment: Deployment, field: str, name: str | None) -> None:
    """EMQX's management API names a user or a rule list in the URL path, where `.` and `..` are dot segments that
    address another resource (deleting a user `..` would delete the password authenticator)."""
    if name in DOT_SEGMENTS and deployment.region.driver == Region.Driver.KUBERNETES:
        raise ValidationFailed(
            {field: [f"{name!r} is not supported in this region: EMQX's API could not address it by name."]}
        )


@transaction.atomic
def mqtt_user_create(
    *, deployment: Deployment, actor: Principal | None, username: str, password: str, is_superuser: bool = False
) -> tuple[MqttUser, Operation]:
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    _check_username(deployment, username)
    if MqttUser.objects.filter(deployment=deployment, username=username).exists():
        raise Conflict(fields={"username": [f"The MQTT user {username!r} already exists on this deployment."]})
    salt_b64, hash_b64 = hash_mqtt_password(password)
    try:
        with transaction.atomic():
            user = MqttUser.objects.create(
                deployment=deployment,
                username=username,
                salt_b64=salt_b64,
                hash_b64=hash_b64,
                is_superuser=is_superuser,
            )
    except IntegrityError:
        raise Conflict(
            fields={"username": [f"The MQTT user {username!r} already exists on this deployment."]}
        ) from None
    operation = _configure(deployment, actor, "mqtt_user.create", {"username": username, "superuser": is_superuser})
    return user, operation


@transaction.atomic
def mqtt_user_update(
    *, user: MqttUser, actor: Principal | None, password: str | None = None, is_superuser: bool | None = None
) -> tuple[MqttUser, Operation]:
    deployment = _locked(user.deployment)
    _refuse_if_deleted(deployment)
    # Looked up again under the deployment's lock: a request that deleted the user meanwhile has committed.
    found = MqttUser.objects.select_for_update().filter(pk=user.pk).first()
    if found is None:
        raise _gone("MQTT user")
    user = found
    changed = []
    if password is not None:
        user.salt_b64, user.hash_b64 = hash_mqtt_password(password)
        changed.append("password")
    if is_superuser is not None and is_superuser != user.is_superuser:
        user.is_superuser = is_superuser
        changed.append("superuser")
    user.save()
    operation = _configure(deployment, actor, "mqtt_user.update", {"username": user.username, "changed": changed})
    return user, operation


@transaction.atomic
def mqtt_user_delete(*, user: MqttUser, actor: Principal | None) -> Operation:
    deployment = _locked(user.deployment)
    _refuse_if_deleted(deployment)
    username = user.username
    deleted, _ = MqttUser.objects.filter(pk=user.pk).delete()
    if not deleted:  # another request deleted it while this one waited for the lock: that one is the deletion
        raise _gone("MQTT user")
    return _configure(deployment, actor, "mqtt_user.delete", {"username": username})


def _check_acl(deployment: Deployment, *, topic: str, username: str | None, client_id: str | None) -> None:
    _refuse_control_characters(topic=topic, username=username, client_id=client_id)
    try:
        validate_acl_topic(topic)
    except ValueError as exc:
        raise ValidationFailed({"topic": [str(exc)]}) from exc
    if topic != topic.strip() and deployment.region.driver == Region.Driver.LOCAL:
        raise ValidationFailed(
            {
                "topic": [
                    "Topic filters starting or ending with whitespace are not supported in this region: mosquitto "
                    "trims it from its ACL file, so the rule would apply to another topic."
                ]
            }
        )
    if username is not None and client_id is not None:
        raise ValidationFailed(
            {
                "client_id": [
                    "A rule is for a username, a client id or everyone: give at most one of username and client_id."
                ]
            }
        )
    if username is not None:
        try:
            validate_mqtt_username(username)
        except ValueError as exc:
            raise ValidationFailed({"username": [str(exc)]}) from exc
        if username.startswith("#") and deployment.region.driver == Region.Driver.LOCAL:
            raise ValidationFailed(
                {"username": ["Usernames starting with '#' are not supported in this region: no such user can exist."]}
            )
        _refuse_dot_segment(deployment, "username", username)
    if client_id is not None:
        if not client_id or any(c in client_id for c in "\r\n\x00"):
            raise ValidationFailed({"client_id": ["A client id must be non-empty, without line breaks."]})
        _refuse_dot_segment(deployment, "client_id", client_id)
        if deployment.region.driver == Region.Driver.LOCAL:
            raise ValidationFailed(
                {
                    "client_id": [
                        "Rules for a client id are not supported in this region: its brokers (mosquitto) select ACL "
                        "rules by username only."
                    ]
                }
            )


@transaction.atomic
def acl_rule_create(
    *,
    deployment: Deployment,
    actor: Principal | None,
    permission: str,
    action: str,
    topic: str,
    username: str | None = None,
    client_id: str | None = None,
    position: int | None = None,
) -> tuple[AclRule, Operation]:
    """Insert a rule at `position` (0 is first; default last); later rules shift down."""
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    _check_acl(deployment, topic=topic, username=username, client_id=client_id)
    rules = list(AclRule.objects.filter(deployment=deployment).order_by("position", "id"))
    before = _acl_entries(rules)
    position = len(rules) if position is None else min(position, len(rules))
    rule = AclRule(
        deployment=deployment,
        position=position,
        permission=permission,
        action=action,
        topic=topic,
        username=username,
        client_id=client_id,
    )
    rules.insert(position, rule)
    _check_acl_expressible(deployment, rules, before)
    _renumber(rules)
    operation = _configure(
        deployment,
        actor,
        "acl_rule.create",
        {
            "rule": rule.public_id,
            "permission": permission,
            "action": action,
            "topic": topic,
            "username": username,
            "client_id": client_id,
            "position": position,
        },
    )
    return rule, operation


@transaction.atomic
def acl_rule_update(*, rule: AclRule, actor: Principal | None, **changes: Any) -> tuple[AclRule, Operation]:
    deployment = _locked(rule.deployment)
    _refuse_if_deleted(deployment)
    rules = list(AclRule.objects.select_for_update().filter(deployment=deployment).order_by("position", "id"))
    before = _acl_entries(rules)
    found = next((r for r in rules if r.pk == rule.pk), None)
    if found is None:  # deleted by a request that held the deployment's lock while this one waited for it
        raise _gone("ACL rule")
    rule = found
    position = changes.pop("position", None)
    for field in ("permission", "action", "topic", "username", "client_id"):
        if field in changes:
            setattr(rule, field, changes[field])
    _check_acl(deployment, topic=rule.topic, username=rule.username, client_id=rule.client_id)
    if position is not None:
        rules.remove(rule)
        rules.insert(min(position, len(rules)), rule)
    _check_acl_expressible(deployment, rules, before)
    _renumber(rules, always=rule)
    operation = _configure(
        deployment,
        actor,
        "acl_rule.update",
        {"rule": rule.public_id, **changes, **({"position": position} if position is not None else {})},
    )
    return rule, operation


@transaction.atomic
def acl_rule_delete(*, rule: AclRule, actor: Principal | None) -> Operation:
    deployment = _locked(rule.deployment)
    _refuse_if_deleted(deployment)
    public_id = rule.public_id
    deleted, _ = AclRule.objects.filter(pk=rule.pk).delete()
    if not deleted:  # another request deleted it while this one waited for the lock: that one is the deletion
        raise _gone("ACL rule")
    _renumber(list(AclRule.objects.filter(deployment=deployment).order_by("position", "id")))
    return _configure(deployment, actor, "acl_rule.delete", {"rule": public_id})


def _renumber(rules: list[AclRule], always: AclRule | None = None) -> None:
    for index, rule in enumerate(rules):
        if rule.pk is None or rule.position != index or rule is always:
            rule.position = index
            rule.save()


@transaction.atomic
def rate_limits_replace(
    *, deployment: Deployment, actor: Principal | None, policies: Sequence[Mapping[str, Any]]
) -> tuple[list[RateLimitPolicy], Operation]:
    """Replace the deployment's policy set (one per level); a level may not exceed any level above it."""
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    for index, policy in enumerate(policies):
        for field, most in RateLimitPolicy.MAX_RATES.items():
            value = policy.get(field)
            if value is not None and value > most:  # the column cannot hold it: PostgreSQL would refuse the insert
                raise ValidationFailed(
                    {f"policies.{index}.{field}": [f"Ensure this value is less than or equal to {most}."]}
                )
    limits = [
        RateLimit(
            level=p["level"],
            max_conn_rate=p.get("max_conn_rate"),
            messages_rate=p.get("messages_rate"),
            bytes_rate=p.get("bytes_rate"),
        )
        for p in policies
    ]
    try:
        validate_rate_limit_hierarchy(limits)
    except ValueError as exc:
        raise ValidationFailed({"policies": [str(exc)]}) from exc
    RateLimitPolicy.objects.filter(deployment=deployment).delete()
    rows = RateLimitPolicy.objects.bulk_create(
        [
            RateLimitPolicy(
                deployment=deployment,
                level=limit.level,
                max_conn_rate=limit.max_conn_rate,
                messages_rate=limit.messages_rate,
                bytes_rate=limit.bytes_rate,
            )
            for limit in limits
        ]
    )
    operation = _configure(
        deployment, actor, "rate_limits.replace", {"policies": [dataclasses.asdict(limit) for limit in limits]}
    )
    return rows, operation


# -- maintenance windows ------------------------------------------------------------------------------------------

# Customers are told in advance: 14 days for planned maintenance, 24 hours for an emergency.
MAINTENANCE_LEAD_TIME = datetime.timedelta(days=14)
EMERGENCY_MAINTENANCE_LEAD_TIME = datetime.timedelta(hours=24)
MAINTENANCE_MAX_DURATION = datetime.timedelta(hours=4)


def _utc(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def maintenance_window_text(window: MaintenanceWindow) -> str:
    starts, ends = (w.astimezone(datetime.UTC) for w in (window.starts_at, window.ends_at))
    end = ends.strftime("%H:%M" if starts.date() == ends.date() else "%Y-%m-%d %H:%M")
    return f"{starts:%Y-%m-%d %H:%M}–{end} UTC"


def maintenance_validate(
    *,
    deployment: Deployment,
    starts_at: datetime.datetime,
    ends_at: datetime.datetime,
    reason: str,
    emergency: bool = False,
    now: datetime.datetime | None = None,
) -> str:
    """The checks of maintenance_schedule, without writing: the lead time, the duration, overlaps. Returns the
    cleaned reason; raises ValidationError (400) or Conflict (409) naming the field at fault."""
    now = now or timezone.now()
    _refuse_if_deleted(deployment)
    for field, value in (("starts_at", starts_at), ("ends_at", ends_at)):
        if not isinstance(value, datetime.datetime) or timezone.is_naive(value):
            raise ValidationFailed({field: ["A date and time with a timezone (ISO 8601), e.g. 2026-12-01T02:00:00Z."]})
        try:  # every notice and audit entry states it in UTC: one past year 9999 there cannot be written
            value.astimezone(datetime.UTC)
        except OverflowError:
            raise ValidationFailed({field: ["A date and time no later than 9999-12-31T23:59:59Z."]}) from None
    reason = (reason or "").strip()
    if not reason or len(reason) > 500 or any(c in reason for c in "\x00\r"):
        raise ValidationFailed({"reason": ["Say why, in 1 to 500 characters: customers read it."]})
    lead = EMERGENCY_MAINTENANCE_LEAD_TIME if emergency else MAINTENANCE_LEAD_TIME
    earliest = now + lead
    if starts_at < earliest:
        kind = (
            "Emergency maintenance must be announced at least 24 hours ahead"
            if emergency
            else "Maintenance must be announced at least 14 days ahead (24 hours for an emergency)"
        )
        raise ValidationFailed({"starts_at": [f"{kind}: the earliest allowed start is {_utc(earliest)}."]})
    if ends_at <= starts_at:
        raise ValidationFailed({"ends_at": ["The window must end after it starts."]})
    if ends_at - starts_at > MAINTENANCE_MAX_DURATION:
        hours = MAINTENANCE_MAX_DURATION.total_seconds() / 3600
        raise ValidationFailed({"ends_at": [f"A maintenance window lasts at most {hours:g} hours."]})
    clash = (
        MaintenanceWindow.objects.filter(
            deployment=deployment, status__in=OPEN_MAINTENANCE_STATES, starts_at__lt=ends_at, ends_at__gt=starts_at
        )
        .order_by("starts_at")
        .first()
    )
    if clash is not None:
        raise Conflict(
            fields={
                "starts_at": [
                    f"The deployment already has maintenance {clash.public_id} "
                    f"({maintenance_window_text(clash)}) overlapping this window."
                ]
            }
        )
    return reason


@transaction.atomic
def maintenance_schedule(
    *,
    deployment: Deployment,
    starts_at: datetime.datetime,
    ends_at: datetime.datetime,
    reason: str,
    emergency: bool = False,
    actor: Principal | None,
    now: datetime.datetime | None = None,
) -> MaintenanceWindow:
    """Announce maintenance: the brokers restart once inside the window, alerts are withheld during it, and the
    organization hears of it now through its platform-event channels (or its administrators by email)."""
    deployment = _locked(deployment)  # serializes schedules of one deployment: the overlap check holds
    reason = maintenance_validate(
        deployment=deployment, starts_at=starts_at, ends_at=ends_at, reason=reason, emergency=emergency, now=now
    )
    window = MaintenanceWindow(
        deployment=deployment,
        starts_at=starts_at,
        ends_at=ends_at,
        emergency=emergency,
        reason=reason,
        created_by=acting_user(actor),
        created_at=now or timezone.now(),
    )
    window.save()
    what = "Emergency maintenance" if emergency else "Maintenance"
    _event(
        deployment,
        "maintenance.scheduled",
        f"{what} {window.public_id} scheduled for {maintenance_window_text(window)}: {reason}",
    )
    organization = deployment.project.organization
    audit_record(
        actor=actor,
        organization=organization,
        action="deployment.maintenance.schedule",
        target=window,
        summary={
            "deployment": deployment.public_id,
            "starts_at": _utc(starts_at),
            "ends_at": _utc(ends_at),
            "emergency": emergency,
            "reason": reason,
        },
    )
    platform_event_notify(
        organization=organization,
        kind=PlatformEvent.Kind.MAINTENANCE_SCHEDULED,
        subject=deployment.public_id,
        severity="warning" if emergency else "info",
        dedup_key=f"maintenance:{window.public_id}",
        message=(
            f"{what} scheduled for deployment {deployment.name} ({deployment.public_id}): "
            f"{maintenance_window_text(window)}.\n"
            f"Reason: {reason}\n"
            f"Its brokers restart once during the window (one at a time where there are several); persistent "
            f"sessions and their queued messages are kept. Alerts of this deployment are withheld during the "
            f"window. Reference: {window.public_id}."
        ),
    )
    return window


@transaction.atomic
def maintenance_cancel(
    *, window: MaintenanceWindow, actor: Principal | None, now: datetime.datetime | None = None
) -> MaintenanceWindow:
    """Call off a window that has not started; the organization is told, as it was told of the schedule."""
    now = now or timezone.now()
    window = (
        MaintenanceWindow.objects.select_for_update(of=("self",))
        .select_related("deployment__project__organization")
        .get(pk=window.pk)
    )
    if window.status != MaintenanceWindow.Status.SCHEDULED:
        raise Conflict(
            f"Only a scheduled maintenance window can be cancelled; {window.public_id} is "
            f"{window.get_status_display().lower()}."
        )
    window.status, window.cancelled_at = MaintenanceWindow.Status.CANCELLED, now
    window.save(update_fields=["status", "cancelled_at"])
    deployment = window.deployment
    _event(
        deployment,
        "maintenance.cancelled",
        f"Maintenance {window.public_id} ({maintenance_window_text(window)}) cancelled",
    )
    organization = deployment.project.organization
    audit_record(
        actor=actor,
        organization=organization,
        action="deployment.maintenance.cancel",
        target=window,
        summary={"deployment": deployment.public_id, "starts_at": _utc(window.starts_at)},
    )
    platform_event_notify(
        organization=organization,
        kind=PlatformEvent.Kind.MAINTENANCE_CANCELLED,
        subject=deployment.public_id,
        severity="info",
        dedup_key=f"maintenance_cancelled:{window.public_id}",
        message=(
            f"Maintenance cancelled for deployment {deployment.name} ({deployment.public_id}): "
            f"{maintenance_window_text(window)} will not take place.\nReference: {window.public_id}."
        ),
    )
    return window


@transaction.atomic
def _maintenance_start(window_id: int, now: datetime.datetime) -> bool:
    # The window's row lock and its status are the guarantee of one restart per window: a second run (or a
    # concurrent one) finds it locked or no longer scheduled.
    window = (
        MaintenanceWindow.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("deployment")
        .filter(pk=window_id, status=MaintenanceWindow.Status.SCHEDULED)
        .first()
    )
    if window is None:
        return False
    deployment = window.deployment
    if deployment.desired_state == DesiredState.DELETED:
        window.status, window.cancelled_at = MaintenanceWindow.Status.CANCELLED, now
        window.save(update_fields=["status", "cancelled_at"])
        return False
    if window.ends_at <= now:
        # Nothing ran it while it was open (beat was down): a restart now would be one nobody announced.
        window.status = MaintenanceWindow.Status.COMPLETED
        window.save(update_fields=["status"])
        _event(
            deployment,
            "maintenance.missed",
            f"Maintenance {window.public_id} ({maintenance_window_text(window)}) passed without a restart",
        )
        return False
    window.status = MaintenanceWindow.Status.IN_PROGRESS
    try:
        with transaction.atomic():
            _, operation = deployment_restart(deployment=deployment, actor=None)
    except DomainError as exc:  # stopped, or another operation in flight: alerts stay withheld anyway
        window.save(update_fields=["status"])
        _event(
            deployment,
            "maintenance.started",
            f"Maintenance {window.public_id} started without a restart: {exc.message}",
        )
        return True
    window.operation = operation
    window.save(update_fields=["status", "operation"])
    _event(deployment, "maintenance.started", f"Maintenance {window.public_id} started: {window.reason}", operation)
    return True


def maintenance_start_due(*, now: datetime.datetime | None = None) -> tuple[int, int]:
    """Start every window whose time has come (one restart each) and complete those that have ended.
    Returns (started, completed); safe to run any number of times, concurrently included."""
    now = now or timezone.now()
    due = list(
        MaintenanceWindow.objects.filter(status=MaintenanceWindow.Status.SCHEDULED, starts_at__lte=now)
        .order_by("starts_at")
        .values_list("pk", flat=True)
    )
    started = sum(_maintenance_start(pk, now) for pk in due)
    with transaction.atomic():
        ended = list(
            MaintenanceWindow.objects.select_for_update(skip_locked=True).filter(
                status=MaintenanceWindow.Status.IN_PROGRESS, ends_at__lte=now
            )
        )
        for window in ended:
            window.status = MaintenanceWindow.Status.COMPLETED
        MaintenanceWindow.objects.bulk_update(ended, ["status"])
        DeploymentEvent.objects.bulk_create(
            [
                DeploymentEvent(
                    deployment_id=w.deployment_id,
                    operation_id=w.operation_id,
                    kind="maintenance.completed",
                    message=f"Maintenance {w.public_id} completed",
                    created_at=now,
                )
                for w in ended
            ]
        )
    return started, len(ended)


# -- the sweep -------------------------------------------------------------------------------------------------------


def reconcile_sweep() -> int:
    """Enqueue a reconcile for every deployment not converged, and for every live one not looked at for a while
    (a broker that died is drift the level-triggered reconciler repairs). Returns how many were enqueued."""
    from django.db.models import F, Q

    from deployments.tasks import reconcile

    stale = timezone.now() - datetime.timedelta(seconds=settings.RECONCILE_RESYNC_SECONDS)
    not_converged = (
        Q(observed_generation__lt=F("generation"))
        | Q(observed_restart_nonce__lt=F("restart_nonce"))
        | (~Q(status__in=[Status.RUNNING, Status.STOPPED, Status.DELETED, Status.FAILED]))
        | (Q(desired_state=DesiredState.RUNNING) & ~Q(status__in=[Status.RUNNING, Status.FAILED]))
        | (Q(desired_state=DesiredState.STOPPED) & ~Q(status__in=[Status.STOPPED, Status.FAILED]))
        | (Q(desired_state=DesiredState.DELETED) & ~Q(status=Status.DELETED))
        | Q(last_reconciled_at__isnull=True)
        | (Q(last_reconciled_at__lt=stale) & ~Q(status=Status.FAILED))
    )
    ids = list(Deployment.objects.exclude(status=Status.DELETED).filter(not_converged).values_list("pk", flat=True))
    for pk in ids:
        reconcile.apply_async((pk,))
    return len(ids)
