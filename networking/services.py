"""Every change to a VPC peering: the pre-flight, create, deletion protection, delete, and the poll that walks a
peering through the provider's states.

Requests (create, update, delete) are one transaction each: validate, write, audit, and enqueue the poll on commit.
The poll is the only writer of what the provider says; it calls the provider with no transaction open and holds an
advisory lock per peering instead. Nothing here reads credentials from a request: they come from the region.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from alerts import collection as alerts_collection
from alerts import evaluate as alerts_evaluate
from alerts.metrics import VPC_PEERING_ABNORMAL
from audit.services import audit_record
from controlplane import crypto
from controlplane.db import LockSpace, session_try_lock
from controlplane.errors import Conflict, PermissionDenied, ValidationFailed, model_clean
from deployments.models import Deployment, DeploymentEvent, DesiredState, Plan, Region
from networking import checks, selectors
from networking.models import VpcPeering
from networking.providers import adapter_for
from networking.providers.base import Customer, Observation, Platform, ProviderError
from notifications.models import PlatformEvent
from notifications.services import platform_event_notify
from organizations.access import Principal, acting_user, has_scope

logger = logging.getLogger(__name__)

State = VpcPeering.State
PEERABLE_PLANS = (Plan.Code.DEDICATED, Plan.Code.PREMIUM)
# A poll chain whose next run is this late was lost (a killed worker, a flushed Redis): the sweep starts a new one.
SWEEP_GRACE = datetime.timedelta(seconds=60)


# -- the region's network ---------------------------------------------------------------------------------------------


def region_has_vpc(region: Region) -> bool:
    return region.provider in checks.PROVIDERS and bool((region.network or {}).get("cidr"))


def platform_of(region: Region) -> Platform:
    """The platform's side in `region`, credentials decrypted. ProviderError (temporary) when the operator has not
    loaded them: the peering waits until they are there."""
    if not region.cloud_credentials_encrypted:
        raise ProviderError(f"Region {region.code} has no cloud credentials loaded (load_regions).", permanent=False)
    try:
        credentials = json.loads(crypto.decrypt_str(region.cloud_credentials_encrypted))
    except ValueError as exc:
        raise ProviderError(f"Region {region.code}'s cloud credentials cannot be read: {exc}", permanent=False) from exc
    return Platform(
        provider=region.provider,
        region=region.cloud_region,
        network=dict(region.network),
        credentials=credentials,
        ca_bundle=settings.CLOUD_CA_BUNDLE or None,
    )


def customer_prerequisite(*, deployment: Deployment, provider: str) -> dict[str, Any] | None:
    """What the customer does in their own cloud *before* creating a peering, as {"summary", "commands"}; None when
    nothing (AWS and GCP: their step follows our side). Azure: register our application in their tenant and grant
    it the peering role on their VNet, after which we create both sides. Pure but for reading the region."""
    region = deployment.region
    if provider != "azure" or region.provider != "azure" or not region_has_vpc(region):
        return None
    try:
        application = platform_of(region).credentials.get("client_id") or ""
    except ProviderError:
        application = ""
    application = application or (region.network or {}).get("application_id") or "<the platform's application id>"
    scope = (
        "/subscriptions/<your subscription>/resourceGroups/<your resource group>/providers/"
        "Microsoft.Network/virtualNetworks/<your virtual network>"
    )
    organization = deployment.project.organization.public_id
    return {
        "summary": (
            f"Before you create the peering, register our application {application} in your Microsoft Entra tenant "
            f'and grant it the "{checks.AZURE_PEERING_ROLE}" role on your virtual network (or a custom role with '
            f"{', '.join(checks.AZURE_PEERING_ACTIONS)}), and tag the virtual network "
            f"{checks.AZURE_OWNER_TAG}={organization}: the tag shows it is yours to peer with this organization (our "
            f"application may be granted on it by others). The platform then creates both sides of the peering: "
            f"there is no peering to create on your side."
        ),
        "commands": [
            f"az ad sp create --id {application}",
            f'az role assignment create --assignee {application} --role "{checks.AZURE_PEERING_ROLE}" --scope {scope}',
            f"az tag update --operation merge --resource-id {scope} --tags {checks.AZURE_OWNER_TAG}={organization}",
        ],
    }


def customer_of(peering: VpcPeering) -> Customer:
    fields = {name: getattr(peering, name) for name in checks.PROVIDER_FIELDS[peering.provider]}
    organization, region_id = Deployment.objects.filter(pk=peering.deployment_id).values_list(
        "project__organization__public_id", "region_id"
    )[0]
    cidr_in_use = (
        _live_peerings().filter(deployment__region_id=region_id, cidr=peering.cidr).exclude(pk=peering.pk).exists()
    )
    return Customer(
        public_id=peering.public_id,
        cidr=peering.cidr,
        fields=fields,
        organization=organization,
        cidr_in_use=cidr_in_use,
    )


# -- the pre-flight ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preflight:
    """A peering request that passed every check, normalised."""

    provider: str
    cidr: str
    fields: dict[str, str]
    platform_cidr: str
    checks: list[str]


def _refuse_unpeerable(deployment: Deployment) -> None:
    """The 409s: what the deployment is, not what was typed, forbids a peering."""
    if deployment.desired_state == DesiredState.DELETED:
        raise Conflict("The deployment is being deleted or was deleted.")
    region = deployment.region
    if not region_has_vpc(region):
        raise Conflict(
            f"Region {region.code!r} has no VPC: VPC peering is available in cloud regions (AWS, GCP, Azure), not "
            f"in a {region.provider or 'local'} region.",
            code="region-without-vpc",
        )
    if deployment.plan.code not in PEERABLE_PLANS:
        raise Conflict(f"VPC peering is available for Dedicated and Premium deployments, not {deployment.plan.name}.")


def peering_unavailable_reason(deployment: Deployment) -> str | None:
    """Why no peering can be created for `deployment` (a `local` region, a Serverless plan, a deleted deployment), in
    the words the API's 409 uses; None when one can. Lets a page say so before anyone fills in a form."""
    try:
        _refuse_unpeerable(deployment)
    except Conflict as exc:
        return exc.message
    return None


def _live_peerings() -> QuerySet[VpcPeering]:
    return selectors.live_peerings()


def peering_preflight_check(
    *, deployment: Deployment, actor: Principal | None, provider: str, cidr: str, fields: Mapping[str, str | None]
) -> Preflight:
    """Every check a peering must pass before anything is created. Raises Conflict for a deployment that cannot be
    peered, ValidationFailed naming each field at fault (and the range it conflicts with: the peering in the way is
    named only to an `actor` who may read its deployment)."""
    _refuse_unpeerable(deployment)
    region = deployment.region
    network = region.network
    errors: dict[str, str] = {}
    passed: list[str] = []

    if provider not in checks.PROVIDERS:
        errors["provider"] = f"One of {', '.join(checks.PROVIDERS)}."
    elif provider != region.provider:
        errors["provider"] = (
            f"This deployment's region {region.code!r} runs on {region.provider}; a {provider} network cannot be "
            f"peered with it."
        )
    else:
        passed.append(f"provider {provider} matches region {region.code}")

    wanted = checks.PROVIDER_FIELDS.get(provider, ())
    values: dict[str, str] = {}
    for name in checks.ALL_FIELDS:
        value = fields.get(name)
        if name in wanted:
            if not value:
                errors[name] = f"Required for a {provider} peering."
            elif message := checks.field_error(name, value):
                errors[name] = message
            else:
                values[name] = checks.normalize_field(name, value)
        elif value:
            takes = ", ".join(wanted) if wanted else "its own fields"
            errors[name] = f"Not a field of a {provider} peering (it takes {takes})."
    if provider == "aws" and "region" in values and values["region"] != region.cloud_region:
        errors["region"] = (
            f"Peering is within one region: this deployment runs in {region.cloud_region}, not {values['region']}."
        )

    platform_cidr = ipaddress.IPv4Network(network["cidr"])
    try:
        requested = checks.parse_cidr(cidr)
    except ValueError as exc:
        errors["cidr"] = str(exc)
        requested = None
    if requested is not None:
        errors_before = len(errors)
        private = checks.private_range_of(requested)
        reserved = checks.reserved_conflict(requested, region.provider, network.get("reserved_cidrs", ()))
        if private is None:
            errors["cidr"] = checks.public_range_message(requested)
        elif reserved is not None:
            errors["cidr"] = f"{requested} overlaps the reserved range {reserved[0]}: {reserved[1]}."
        elif requested.overlaps(platform_cidr):
            errors["cidr"] = f"{requested} overlaps the platform's network {platform_cidr} in region {region.code}."
        else:
            for other in _live_peerings().filter(deployment__region=region).select_related("deployment__project"):
                if not requested.overlaps(ipaddress.IPv4Network(other.cidr)):
                    continue
                if other.deployment_id == deployment.pk:
                    errors["cidr"] = (
                        f"{requested} overlaps peering {other.public_id} ({other.cidr}) of this deployment."
                    )
                elif other.deployment.project.organization_id == deployment.project.organization_id and (
                    actor is None
                    or has_scope(
                        actor,
                        "deployment:read",
                        organization=deployment.project.organization,
                        project=other.deployment.project,
                    )
                ):
                    errors["cidr"] = (
                        f"{requested} overlaps peering {other.public_id} ({other.cidr}) of deployment "
                        f"{other.deployment.public_id}, which shares region {region.code}'s network."
                    )
                else:
                    # Another organization's range, or one of a project the caller may not read: say that it is
                    # taken, not whose it is.
                    errors["cidr"] = (
                        f"{requested} overlaps a range already peered with region {region.code}'s network; choose "
                        f"another range."
                    )
                break
        # A range outside the private ones has failed above, with its cidr error.
        if private is not None and len(errors) == errors_before:
            passed.append(f"{requested} is private ({private[1]})")
            passed.append(f"{requested} does not overlap the platform's network {platform_cidr}")
            passed.append(f"{requested} does not overlap a reserved range or another peering")

    if not errors and wanted:
        same = {name: values[name] for name in wanted if name not in ("tenant_id",)}
        duplicate = _live_peerings().filter(deployment=deployment, provider=provider, **same).first()
        if duplicate is not None:
            field = {"aws": "vpc_id", "gcp": "network", "azure": "vnet_name"}[provider]
            errors[field] = f"Peering {duplicate.public_id} already connects this deployment with that network."
    if errors:
        raise ValidationFailed(errors)
    return Preflight(
        provider=provider, cidr=str(requested), fields=values, platform_cidr=str(platform_cidr), checks=passed
    )


# -- requests ----------------------------------------------------------------------------------------------------------


def _event(peering: VpcPeering, kind: str, message: str) -> None:
    DeploymentEvent.objects.create(deployment_id=peering.deployment_id, kind=kind, message=message)


def _schedule(peering: VpcPeering, countdown: float, *, now: datetime.datetime | None = None) -> None:
    """Start the next poll of `peering` after commit. A new token supersedes any task already queued; the caller
    saves the row. A lost enqueue (Redis down) is found by the sweep once next_poll_at has passed. A poll passes the
    `now` it recorded as last_checked_at, so next_poll_at is exactly `countdown` after it whatever the lock wait."""
    peering.poll_token = secrets.token_hex(8)
    peering.next_poll_at = (now or timezone.now()) + datetime.timedelta(seconds=countdown)
    pk, token = peering.pk, peering.poll_token

    def send() -> None:
        from networking.tasks import poll_peering

        poll_peering.apply_async((pk, token), countdown=countdown)

    transaction.on_commit(send, robust=True)


def _locked(peering: VpcPeering) -> VpcPeering:
    return (
        VpcPeering.objects.select_for_update(of=("self",))
        .select_related("deployment__project__organization", "deployment__region")
        .get(pk=peering.pk)
    )


@transaction.atomic
def vpc_peering_create(
    *,
    deployment: Deployment,
    actor: Principal | None,
    provider: str,
    cidr: str,
    deletion_protection: bool = False,
    **fields: str | None,
) -> VpcPeering:
    """Record the peering (pending) after the pre-flight; the poll creates it at the provider."""
    deployment = (
        Deployment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "plan", "region")
        .get(pk=deployment.pk)
    )
    # One creation per region at a time: the overlap checks against the region's other peerings hold until commit.
    list(Region.objects.select_for_update().filter(pk=deployment.region_id).values_list("pk", flat=True))
    checked = peering_preflight_check(deployment=deployment, actor=actor, provider=provider, cidr=cidr, fields=fields)
    peering = VpcPeering(
        deployment=deployment,
        provider=checked.provider,
        cidr=checked.cidr,
        deletion_protection=deletion_protection,
        created_by=acting_user(actor),
        **checked.fields,
    )
    model_clean(peering)
    peering.save()
    _schedule(peering, 0)
    peering.save(update_fields=["poll_token", "next_poll_at"])
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="vpc_peering.create",
        target=peering,
        summary={
            "deployment": deployment.public_id,
            "provider": checked.provider,
            "cidr": checked.cidr,
            **checked.fields,
            "deletion_protection": deletion_protection,
        },
    )
    _event(peering, "vpc_peering.created", f"{peering.public_id}: {checked.provider} peering with {checked.cidr}")
    return peering


LIFT_NEEDS_WRITE = "Lifting deletion protection needs the deployment:write scope, which your role does not grant."


@transaction.atomic
def vpc_peering_update(
    *, peering: VpcPeering, actor: Principal | None, deletion_protection: bool | None = None
) -> VpcPeering:
    """Turn deletion protection on or off; lifting it needs deployment:write (turning it on, the deployment:configure
    every caller of this already holds) and is its own audit entry."""
    peering = _locked(peering)
    if (
        deletion_protection is False
        and actor is not None
        and not has_scope(
            actor,
            "deployment:write",
            organization=peering.deployment.project.organization,
            project=peering.deployment.project,
        )
    ):
        raise PermissionDenied(LIFT_NEEDS_WRITE)
    if peering.state in (State.DELETING, State.DELETED):
        raise Conflict("The peering is being deleted or was deleted.")
    if deletion_protection is not None and deletion_protection != peering.deletion_protection:
        peering.deletion_protection = deletion_protection
        peering.save(update_fields=["deletion_protection", "updated_at"])
        audit_record(
            actor=actor,
            organization=peering.deployment.project.organization,
            action="vpc_peering.protection.enable" if deletion_protection else "vpc_peering.protection.lift",
            target=peering,
            summary={"deployment": peering.deployment.public_id, "deletion_protection": deletion_protection},
        )
    return peering


@transaction.atomic
def vpc_peering_delete(
    *, peering: VpcPeering, actor: Principal | None, force: bool = False, reason: str = ""
) -> VpcPeering:
    """Start deleting the peering at the provider (the poll finishes it). Deletion protection answers 409; `force`
    (the deployment itself was deleted) overrides it."""
    peering = _locked(peering)
    if peering.state in (State.DELETING, State.DELETED):
        raise Conflict("The peering is already being deleted or was deleted.")
    if peering.deletion_protection and not force:
        raise Conflict("Deletion protection is on for this peering; lift it first (PATCH deletion_protection).")
    before = peering.state
    peering.state = State.DELETING
    peering.poll_attempt = 0
    peering.last_error = ""
    _schedule(peering, 0)
    peering.save()
    audit_record(
        actor=actor,
        organization=peering.deployment.project.organization,
        action="vpc_peering.delete",
        target=peering,
        summary={"deployment": peering.deployment.public_id, "state": before, "force": force, "reason": reason},
    )
    _event(peering, "vpc_peering.deleting", f"{peering.public_id}: {before} → deleting")
    if before == State.FAILED and peering.activated_at is not None:
        _report_abnormal(peering.deployment_id)
    return peering


@transaction.atomic
def vpc_peering_poll_now(*, peering: VpcPeering) -> None:
    """Look at the provider again now (the backoffice's action), superseding the poll already scheduled."""
    peering = _locked(peering)
    if peering.state == State.DELETED:
        return
    _schedule(peering, 0)
    peering.save(update_fields=["poll_token", "next_poll_at"])


# -- the poll ----------------------------------------------------------------------------------------------------------


def _backoff(attempt: int, cap: float) -> float:
    delay: float = min(settings.VPC_PEERING_POLL_BASE_SECONDS * (2 ** min(attempt, 20)), cap)
    return delay


def peering_poll(*, peering_id: int, token: str) -> str:
    """One look at the provider for one peering, and the next step of its state walk. Returns what happened."""
    with session_try_lock(LockSpace.VPC_PEERING, peering_id) as held:
        if not held:
            return "busy"  # another worker polls it; that poll schedules the next one
        peering = VpcPeering.objects.select_related("deployment__region").filter(pk=peering_id).first()
        if peering is None or not token or peering.poll_token != token:
            return "stale"
        return _poll(peering)


@dataclasses.dataclass
class _Result:
    observation: Observation | None = None
    error: ProviderError | None = None
    cleanup_error: ProviderError | None = None
    ids: dict[str, Any] = dataclasses.field(default_factory=dict)
    step: dict[str, Any] | None = None
    # Still awaiting the customer when its time ran out: what we made is removed and it fails as expired.
    expired: bool = False


def _awaiting_deadline(peering: VpcPeering) -> datetime.datetime | None:
    if peering.awaiting_since is None:
        return None
    return peering.awaiting_since + datetime.timedelta(seconds=settings.VPC_PEERING_AWAITING_TTL_SECONDS)


def _out_of_time(peering: VpcPeering, doing: str) -> ProviderError:
    """Celery's soft time limit struck inside the provider's call (the adapters let it through, whatever the provider):
    a temporary error, so the state stands and the next poll, with its own time, goes on from what the provider
    finished meanwhile. Caught here, before the catch-all below could call it a bug."""
    logger.warning("vpc peering %s: the soft time limit interrupted the poll", peering.public_id)
    provider = VpcPeering.Provider(peering.provider).label
    return ProviderError(f"The poll ran out of time to {doing} at {provider}: a later poll goes on.", permanent=False)


def _poll(peering: VpcPeering) -> str:
    started = peering.state
    result = _Result(ids=dict(peering.provider_ids))
    if started == State.DELETED or (started == State.FAILED and peering.activated_at is None):
        return _apply(peering.pk, started, result)
    adapter = adapter_for(peering.provider)
    customer = customer_of(peering)
    try:
        platform = platform_of(peering.deployment.region)
        if started == State.DELETING:
            adapter.remove(platform, customer, result.ids)
        elif started == State.PENDING:
            result.observation = adapter.request(platform, customer)
        else:
            result.observation = adapter.refresh(platform, customer, result.ids)
    except SoftTimeLimitExceeded:
        doing = {State.DELETING: "delete", State.PENDING: "request"}.get(State(started), "check")
        result.error = _out_of_time(peering, f"{doing} the peering")
    except ProviderError as exc:
        result.error = exc
    except Exception as exc:  # a bug in an adapter must not strand the peering: log it, retry with backoff
        logger.exception("vpc peering %s: unexpected error from the %s adapter", peering.public_id, peering.provider)
        result.error = ProviderError(f"Unexpected error ({type(exc).__name__}); retrying.", permanent=False)
    if result.observation is not None:
        result.ids.update(result.observation.ids)
        if result.observation.status == "waiting":
            result.step = adapter.customer_step(platform, customer, result.ids).as_dict()
            deadline = _awaiting_deadline(peering)
            # Looked at once more at the deadline: a customer who acted at the last minute is active, not expired.
            result.expired = (
                started == State.AWAITING_CUSTOMER_ACTION and deadline is not None and timezone.now() >= deadline
            )
    never_active = started in (State.PENDING, State.AWAITING_CUSTOMER_ACTION) and peering.activated_at is None
    failing = (
        (result.error is not None and result.error.permanent)
        or (result.observation is not None and result.observation.status == "broken")
        or result.expired
    )
    if never_active and failing:
        # Nothing half-made stays at the provider: a peering that fails before it ever worked is taken down first.
        try:
            adapter.remove(platform, customer, result.ids)
        except SoftTimeLimitExceeded:
            result.cleanup_error = _out_of_time(peering, "remove what it made")
        except ProviderError as exc:
            result.cleanup_error = exc
        except Exception as exc:  # as above: logged, and the same failing step is retried with its cleanup
            logger.exception("vpc peering %s: unexpected error cleaning up at %s", peering.public_id, peering.provider)
            result.cleanup_error = ProviderError(f"Unexpected error ({type(exc).__name__}).", permanent=False)
    return _apply(peering.pk, started, result)


def _apply(pk: int, started: str, result: _Result) -> str:
    """Write what the poll learnt, unless a request changed the peering meanwhile, and schedule the next poll."""
    now = timezone.now()
    with transaction.atomic():
        peering = VpcPeering.objects.select_for_update().filter(pk=pk).first()
        if peering is None:
            return "gone"
        peering.provider_ids = {**peering.provider_ids, **result.ids}
        peering.last_checked_at = now
        if peering.state != started:
            # Deleted while we asked the provider: the request's state stands, and the ids we just learnt let
            # the deletion find what this poll may have created.
            _schedule(peering, 0)
            peering.save()
            return "superseded"
        new_state, next_in = _next(peering, started, result, now)
        changed = new_state != started
        peering.state = new_state
        peering.poll_attempt = 0 if changed else peering.poll_attempt + 1
        if new_state == State.AWAITING_CUSTOMER_ACTION and (changed or peering.awaiting_since is None):
            peering.awaiting_since = now
        elif new_state == State.ACTIVE:
            peering.awaiting_since = None
        if next_in is None:
            peering.poll_token = ""
            peering.next_poll_at = None
        else:
            _schedule(peering, next_in(peering.poll_attempt), now=now)
        peering.save()
        if changed:
            _event(peering, f"vpc_peering.{new_state}", _transition_text(peering, started))
            if State.ACTIVE in (started, new_state) or (new_state == State.DELETED and peering.activated_at):
                _report_abnormal(peering.deployment_id)
            if new_state == State.FAILED and result.expired:
                _notify_expired(peering)
    return new_state


def _notify_expired(peering: VpcPeering) -> None:
    """The organization's platform-event channels (or its owners' email) hear of it, once per peering."""
    deployment = Deployment.objects.select_related("project__organization").get(pk=peering.deployment_id)
    platform_event_notify(
        organization=deployment.project.organization,
        kind=PlatformEvent.Kind.VPC_PEERING_EXPIRED,
        subject=peering.public_id,
        severity="warning",
        message=f"VPC peering {peering.public_id} of deployment {deployment.name} ({deployment.public_id}) expired. "
        f"{peering.last_error}",
        dedup_key=f"vpc_peering_expired:{peering.public_id}",
    )


def _duration(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _transition_text(peering: VpcPeering, started: str) -> str:
    text = f"{peering.public_id}: {started} → {peering.state}"
    return f"{text} ({peering.last_error})" if peering.state == State.FAILED and peering.last_error else text


def _next(
    peering: VpcPeering, started: str, result: _Result, now: datetime.datetime
) -> tuple[str, Callable[[int], float] | None]:
    """The state the poll moves the peering to, and when to look again (a function of the attempt, or None)."""
    waiting_cap = settings.VPC_PEERING_POLL_MAX_SECONDS
    resync: float = settings.VPC_PEERING_RESYNC_SECONDS

    def backoff(attempt: int) -> float:
        return _backoff(attempt, waiting_cap)

    def awaiting(attempt: int) -> float:
        # Less and less often while the customer takes their time, and never past the moment it expires.
        wait = _backoff(attempt, settings.VPC_PEERING_AWAITING_POLL_MAX_SECONDS)
        deadline = _awaiting_deadline(peering)
        if deadline is not None:
            wait = min(wait, max((deadline - timezone.now()).total_seconds(), 0.0) + 1.0)
        return wait

    def watch(attempt: int) -> float:
        return resync

    error, observation = result.error, result.observation
    was_active = peering.activated_at is not None
    if started == State.DELETED:
        return started, None
    if started == State.FAILED and not was_active:
        return started, None
    if started == State.DELETING:
        if error is not None:
            peering.last_error = error.message
            return started, backoff
        peering.deleted_at = now
        peering.last_error = ""
        peering.customer_action = {}
        return State.DELETED, None
    if error is not None and (not error.permanent or was_active):
        # A temporary failure, or any refusal while checking a peering that once worked: keep the state, retry.
        peering.last_error = error.message
        return started, (backoff if not was_active else (lambda attempt: _backoff(attempt, resync)))
    reason = error.message if error is not None else (observation.detail if observation else "")
    if result.cleanup_error is not None:
        peering.last_error = f"{reason} Cleaning up at the provider failed, retrying: {result.cleanup_error.message}"
        return started, backoff
    if error is not None:
        peering.last_error = error.message
        return State.FAILED, None
    # Every other state was polled with request or refresh (_poll), which answered or raised: no error, an answer.
    assert observation is not None
    peering.provider_state = observation.provider_state[:64]
    if observation.status == "active":
        peering.activated_at = peering.activated_at or now
        peering.last_error = observation.detail  # active, but not all is well (Azure's address spaces out of sync)
        peering.customer_action = {}
        return State.ACTIVE, watch
    if observation.status == "waiting":
        if was_active:
            peering.last_error = f"The peering is no longer active ({observation.provider_state}): {observation.detail}"
            return State.FAILED, watch
        if result.expired:
            waited = datetime.timedelta(seconds=settings.VPC_PEERING_AWAITING_TTL_SECONDS)
            peering.last_error = (
                f"Expired: the peering awaited your action for {_duration(waited)} without it "
                f"({observation.detail or observation.provider_state}). What the platform had created is removed; "
                f"create the peering again when you are ready to take your step."
            )
            peering.customer_action = {}
            return State.FAILED, None
        peering.customer_action = {**(result.step or {}), "status": observation.detail}
        peering.last_error = ""
        return State.AWAITING_CUSTOMER_ACTION, awaiting
    peering.last_error = observation.detail
    return State.FAILED, None


# -- the sweep and the alert's metric ----------------------------------------------------------------------------------


def _report_abnormal(deployment_id: int) -> None:
    """Feed the deployment's `vpc_peering_abnormal` metric after commit (see alerts)."""
    transaction.on_commit(lambda: abnormal_metric_store(deployment_ids=[deployment_id], evaluate=True), robust=True)


def abnormal_values(*, deployment_ids: Iterable[int] | None = None) -> dict[int, float]:
    """Per deployment with a peering that ever became active: 1.0 while one of them is not active (and nobody asked
    for it to go), else 0.0."""
    qs = VpcPeering.objects.filter(activated_at__isnull=False)
    if deployment_ids is not None:
        qs = qs.filter(deployment_id__in=deployment_ids)
    values: dict[int, float] = {}
    for deployment_id, state, deleted_at in qs.values_list("deployment_id", "state", "deleted_at"):
        abnormal = state == State.FAILED
        recent = deleted_at is None or deleted_at > timezone.now() - datetime.timedelta(hours=1)
        if abnormal or recent:
            values[deployment_id] = max(values.get(deployment_id, 0.0), 1.0 if abnormal else 0.0)
    if deployment_ids is not None:
        for deployment_id in deployment_ids:
            values.setdefault(deployment_id, 0.0)
    return values


def abnormal_metric_store(*, deployment_ids: Iterable[int] | None = None, evaluate: bool = False) -> int:
    """Store the `vpc_peering_abnormal` sample of each deployment (all that have or recently had an active peering,
    or those listed) in the alerts app's sample store; `evaluate` runs their alert rules at once, so a peering that
    breaks raises its alert without waiting for the next collection. Returns how many samples were stored."""
    values = abnormal_values(deployment_ids=deployment_ids)
    if not values:
        return 0
    now = timezone.now()
    stored = alerts_collection.samples_store(
        rows=[(deployment_id, VPC_PEERING_ABNORMAL, now, value) for deployment_id, value in values.items()]
    )
    if evaluate:
        alerts_evaluate.rules_evaluate(now=now, deployment_ids=list(values))
    return stored


def peerings_sweep(*, now: datetime.datetime | None = None) -> int:
    """Start a poll for every peering whose chain was lost, and delete the peerings of deleted deployments.
    Returns how many polls were started."""
    now = now or timezone.now()
    orphaned = VpcPeering.objects.filter(deployment__desired_state=DesiredState.DELETED).exclude(
        state__in=[State.DELETING, State.DELETED]
    )
    for orphan in orphaned:
        try:
            vpc_peering_delete(peering=orphan, actor=None, force=True, reason="the deployment was deleted")
        except Conflict:
            pass  # deleted meanwhile
    lost = VpcPeering.objects.exclude(state=State.DELETED).filter(
        Q(next_poll_at__lt=now - SWEEP_GRACE) | (Q(next_poll_at__isnull=True) & ~Q(state=State.FAILED))
    )
    started = 0
    for pk in lost.values_list("pk", flat=True):
        with transaction.atomic():
            peering = VpcPeering.objects.select_for_update(skip_locked=True).filter(pk=pk).first()
            if peering is None or peering.state == State.DELETED:
                continue
            late = peering.next_poll_at is not None and peering.next_poll_at < now - SWEEP_GRACE
            if not late and not (peering.next_poll_at is None and peering.state != State.FAILED):
                continue
            _schedule(peering, 0)
            peering.save(update_fields=["poll_token", "next_poll_at"])
            started += 1
    abnormal_metric_store()
    return started
