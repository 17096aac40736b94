"""The reconciler: closes the gap between a deployment's desired state and what its region's driver observes.

Level-triggered and idempotent: it may run any number of times, concurrently, or die at any line. One reconcile per
deployment at a time (a PostgreSQL advisory lock on its own connection, released by the server if we die); no DB
transaction is ever held open across a driver call. It is the only writer of observed state and StatusInterval rows,
and owns noticing a dead broker (the watcher, every few seconds) and recording the crash before restoring it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
from typing import TypedDict

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane import crypto, db
from deployments import extensions, hooks, tls_services
from deployments.drivers.base import (
    ACL_ACTIONS,
    ACL_PERMISSIONS,
    DRIVER_NAMES,
    RATE_LIMIT_LEVELS,
    AclEntry,
    BrokerSpec,
    ConfigRejectedError,
    Driver,
    DriverError,
    MqttCredential,
    Observed,
    PermanentDriverError,
    RateLimit,
    RegionTarget,
    TemporaryDriverError,
    one_of,
)
from deployments.models import (
    ACTIVE_OPERATION_STATES,
    Deployment,
    DeploymentEvent,
    DesiredState,
    Operation,
    Region,
    Status,
    StatusInterval,
    TlsCertificate,
)

logger = logging.getLogger(__name__)

API_KEY_NAME = "controlplane"

# Which billable bucket each observed status belongs to. A broker being reconfigured or on its way down still runs;
# one on its way up still only holds data. Statuses outside the map are not billable (pending, failed, deleting…).
BILLABLE: dict[str, StatusInterval.Kind] = {
    Status.RUNNING: StatusInterval.Kind.RUNNING,
    Status.UPDATING: StatusInterval.Kind.RUNNING,
    Status.STOPPING: StatusInterval.Kind.RUNNING,
    Status.STOPPED: StatusInterval.Kind.STOPPED,
    Status.STARTING: StatusInterval.Kind.STOPPED,
}


# The statuses in which a dead broker is a crash: it was serving (or being reconfigured while serving).
CRASHABLE = (Status.RUNNING, Status.UPDATING)


@dataclasses.dataclass(frozen=True)
class Outcome:
    state: str  # converged | progressing | retry | held | failed | busy | gone
    retry: bool = False
    message: str = ""
    retry_after: float | None = None  # seconds until the next attempt is due, when it is not the task's backoff


# -- drivers ----------------------------------------------------------------------------------------------------------

# Keyed by (root, answer check seconds, hung seconds).
_local_drivers: dict[tuple[str, float, float], Driver] = {}


def driver_for(region: Region) -> Driver:
    """The driver for a region. Local drivers are kept per root so they can reap the brokers they started."""
    if region.driver == Region.Driver.LOCAL:
        from deployments.drivers.local import LocalDriver

        answer_check_seconds = float(settings.BROKER_ANSWER_CHECK_SECONDS)
        hung_seconds = float(settings.BROKER_HUNG_SECONDS)
        key = (str(settings.LOCAL_BROKERS_DIR), answer_check_seconds, hung_seconds)
        if key not in _local_drivers:
            _local_drivers[key] = LocalDriver(
                root=settings.LOCAL_BROKERS_DIR, answer_check_seconds=answer_check_seconds, hung_seconds=hung_seconds
            )
        return _local_drivers[key]
    from deployments.drivers.kubernetes import KubernetesDriver

    return KubernetesDriver()


def build_spec(deployment: Deployment) -> BrokerSpec:
    """The broker's whole desired state from the rows. Raises PermanentDriverError if a stored secret is unreadable."""
    region = deployment.region
    try:
        kubeconfig = crypto.decrypt_str(region.kubeconfig_encrypted)
        api_secret = crypto.decrypt_str(deployment.api_secret_encrypted)
        tls = tls_services.broker_tls_material(deployment)
    except ValueError as exc:
        raise PermanentDriverError(
            f"a stored secret cannot be read ({exc}); the operator must restore the key"
        ) from exc
    users = [
        MqttCredential(
            username=u.username,
            salt_b64=u.salt_b64,
            hash_b64=u.hash_b64,
            iterations=u.iterations,
            is_superuser=u.is_superuser,
        )
        for u in deployment.mqtt_users.order_by("username")
    ]
    if deployment.monitor_hash_b64:
        users.append(
            MqttCredential(
                username=deployment.monitor_username,
                salt_b64=deployment.monitor_salt_b64,
                hash_b64=deployment.monitor_hash_b64,
                is_superuser=True,
            )
        )
    # Users other apps own (Premium devices, the platform agent), through the extension point.
    users.extend(extensions.contributed_users(deployment))
    # The API, the console and load_regions store only these choices; a row changed behind them stops here.
    try:
        acl = tuple(
            AclEntry(
                permission=one_of(r.permission, ACL_PERMISSIONS),
                action=one_of(r.action, ACL_ACTIONS),
                topic=r.topic,
                username=r.username,
                client_id=r.client_id,
            )
            for r in deployment.acl_rules.order_by("position", "id")
        )
        limits = tuple(
            RateLimit(
                level=one_of(p.level, RATE_LIMIT_LEVELS),
                max_conn_rate=p.max_conn_rate,
                messages_rate=p.messages_rate,
                bytes_rate=p.bytes_rate,
            )
            for p in deployment.rate_limits.all()
        )
        driver = one_of(region.driver, DRIVER_NAMES)
    except ValueError as exc:
        raise PermanentDriverError(f"a stored ACL rule, rate limit or region driver is not valid ({exc})") from exc
    local = region.driver == Region.Driver.LOCAL
    return BrokerSpec(
        name=deployment.public_id,
        region=RegionTarget(
            code=region.code,
            driver=driver,
            bind_address=region.bind_address,
            kubeconfig=kubeconfig,
            storage_class=region.storage_class,
            service_type=region.service_type,
        ),
        running=deployment.desired_state == DesiredState.RUNNING,
        max_connections=deployment.tier.max_connections,
        messages_per_second=deployment.tier.messages_per_second,
        # Two EMQX nodes, so maintenance restarts one while the other keeps the sessions.
        replicas=1 if local else 2,
        users=tuple(users),
        acl=acl,
        rate_limits=limits,
        restart_nonce=deployment.restart_nonce,
        previous_ports=_previous_ports(deployment) if local else (),
        api_key=API_KEY_NAME,
        api_secret=api_secret,
        tls=tls,
        # The client-certificate listener serves the server certificate: no TLS, no such listener.
        device_ca=extensions.device_ca(deployment) if tls is not None else None,
        **_emqx_spec(deployment, local),
    )


def _previous_ports(deployment: Deployment) -> tuple[tuple[str, int], ...]:
    ports = (deployment.endpoints or {}).get("ports") or {}
    return tuple(sorted((str(k), v) for k, v in ports.items() if type(v) is int))


class _EmqxSpec(TypedDict, total=False):
    """BrokerSpec's EMQX-only fields; absent for a local broker, which takes BrokerSpec's defaults."""

    version: str
    license_key: str
    durable_sessions: bool


def _emqx_spec(deployment: Deployment, local: bool) -> _EmqxSpec:
    """The EMQX-only parts of the spec (deployments.emqx_versions, deployments.manifests)."""
    if local:
        return {}
    from deployments import emqx_versions

    return {
        "version": deployment.emqx_version or emqx_versions.DEFAULT_VERSION,
        "license_key": settings.EMQX_LICENSE_KEY,
        # Durable sessions stay off, Premium included: emqx-operator 2.2.x replaces every core node on an update
        # without moving the builtin_raft replicas to the new nodes (only its unreleased 2.3 line does), so the
        # first maintenance would strand the sessions' storage. Sessions survive maintenance by evacuation instead.
        "durable_sessions": False,
    }


# -- mutual exclusion -------------------------------------------------------------------------------------------------


def deployment_lock(deployment_id: int) -> contextlib.AbstractContextManager[bool]:
    """Whether this process holds the deployment's reconcile lock: a session-level advisory lock on a connection of
    its own, held across the driver call without any open transaction and dropped by PostgreSQL the moment that
    connection dies (a SIGKILLed worker strands nothing)."""
    return db.session_try_lock(db.LockSpace.RECONCILE, deployment_id)


# -- the reconcile -----------------------------------------------------------------------------------------------------


def reconcile_deployment(deployment_id: int) -> Outcome:
    with deployment_lock(deployment_id) as acquired:
        if not acquired:
            return Outcome("busy")
        return _reconcile(deployment_id)


def _reconcile(deployment_id: int) -> Outcome:
    deployment = Deployment.objects.select_related("region", "tier", "plan", "project").filter(pk=deployment_id).first()
    if deployment is None or deployment.status == Status.DELETED:
        return Outcome("gone")
    if deployment.status == Status.FAILED and deployment.observed_generation >= deployment.generation:
        return Outcome("failed", message=deployment.last_error)
    generation, desired = deployment.generation, deployment.desired_state
    try:
        if desired != DesiredState.DELETED:
            # The server certificate the TLS listeners serve by default: issued once, renewed before it expires,
            # reissued when the deployment's host names change (a load balancer's address appearing).
            tls_services.server_certificate_ensure(deployment=deployment)
        spec = build_spec(deployment)
    except PermanentDriverError as exc:
        return _record(
            deployment_id, generation=generation, desired=desired, spec=None, tier_id=deployment.tier_id, error=exc
        )
    except ValueError as exc:  # the CA's key cannot be decrypted
        error = PermanentDriverError(
            f"the control plane's CA cannot issue a certificate ({exc}); the operator must restore the key"
        )
        return _record(
            deployment_id, generation=generation, desired=desired, spec=None, tier_id=deployment.tier_id, error=error
        )
    held = _restart_held(deployment)
    if held is not None:
        return held
    if not deployment.is_converged:
        _mark_in_progress(deployment_id)
    driver = driver_for(deployment.region)
    try:
        observed = driver.delete(spec) if desired == DesiredState.DELETED else driver.apply(spec)
    except DriverError as exc:
        if isinstance(exc, ConfigRejectedError) and exc.observed.crashed and deployment.status in CRASHABLE:
            _record_crash(
                deployment_id,
                message=exc.observed.crashed,
                last_seen_alive=exc.observed.last_seen_alive,
                restarted=True,
            )
        return _record(
            deployment_id, generation=generation, desired=desired, spec=spec, tier_id=deployment.tier_id, error=exc
        )
    except Exception as exc:  # noqa: BLE001 - a driver bug must not strand the deployment: retry, loudly
        logger.exception("driver raised an unexpected error", extra={"deployment": deployment.public_id})
        return _record(
            deployment_id,
            generation=generation,
            desired=desired,
            spec=spec,
            tier_id=deployment.tier_id,
            error=TemporaryDriverError(f"internal error: {type(exc).__name__}"),
        )
    if observed.crashed and deployment.status in CRASHABLE:
        # This reconcile found the broker dead before the watcher did (and has already started it again): the crash
        # is recorded first, in its own transaction, so the status walks running -> degraded -> running.
        _record_crash(deployment_id, message=observed.crashed, last_seen_alive=observed.last_seen_alive, restarted=True)
    outcome = _record(
        deployment_id, generation=generation, desired=desired, spec=spec, tier_id=deployment.tier_id, observed=observed
    )
    if (
        desired == DesiredState.RUNNING
        and observed.host
        and outcome.state in ("converged", "progressing")
        and not tls_services.issued_certificate_covers(deployment_id, observed.host)
    ):
        # The broker has an address its issued certificate does not name yet (a load balancer's, known only now):
        # come back at once, and the next run reissues the certificate before it applies.
        return dataclasses.replace(outcome, retry=True)
    return outcome


def _restart_held(deployment: Deployment) -> Outcome | None:
    """A crash-looping broker's restart waits out its back-off (see _crash_loop), unless something new was asked
    of the deployment since (a change, a restart, a stop or a delete is carried out at once)."""
    if (
        deployment.status != Status.DEGRADED
        or deployment.desired_state != DesiredState.RUNNING
        or deployment.observed_generation < deployment.generation
        or deployment.observed_restart_nonce < deployment.restart_nonce
    ):
        return None
    loop = _crash_loop(deployment, timezone.now())
    if loop is None or loop.wait <= 0:
        return None
    # The sweep re-drives a degraded deployment every RECONCILE_SWEEP_SECONDS: only a wait that ends before its next
    # pass needs a task of its own (one per sweep pass would pile up, all due at once, over a long wait).
    retry = loop.wait <= float(settings.RECONCILE_SWEEP_SECONDS)
    return Outcome("held", retry=retry, message=loop.describe(), retry_after=loop.wait)


def _in_progress_status(deployment: Deployment) -> str:
    if deployment.desired_state == DesiredState.DELETED:
        return Status.DELETING
    if deployment.desired_state == DesiredState.STOPPED:
        # A stopped broker whose configuration changes stays stopped: its files are rewritten, nothing runs. Nor
        # does a crashed one: it is billed as stopped from the request on, never as running.
        return Status.STOPPED if deployment.status in (Status.STOPPED, Status.DEGRADED) else Status.STOPPING
    if deployment.status == Status.DEGRADED and deployment.desired_state == DesiredState.RUNNING:
        return Status.DEGRADED  # being restored: it stays degraded (and unbilled) until it serves again
    if deployment.status in (Status.PENDING, Status.PROVISIONING, Status.FAILED):
        return Status.PROVISIONING if deployment.observed_generation == 0 else Status.STARTING
    if deployment.status in (Status.STOPPED, Status.STOPPING, Status.STARTING):
        return Status.STARTING
    return Status.UPDATING


@transaction.atomic
def _mark_in_progress(deployment_id: int) -> None:
    deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
    if deployment is None:
        return
    now = timezone.now()
    status = _in_progress_status(deployment)
    if status != deployment.status:
        _event(deployment, "status.changed", f"{deployment.status} → {status}")
        deployment.status = status
        deployment.save(update_fields=["status", "updated_at"])
        _sync_interval(deployment, status, tier_id=None, now=now)
    Operation.objects.filter(
        deployment=deployment, status=Operation.State.PENDING, target_generation__lte=deployment.generation
    ).update(status=Operation.State.RUNNING)


def _status_from(observed: Observed, desired: str, spec: BrokerSpec) -> tuple[str, bool]:
    """(status, settled) for what the driver reported while closing the gap toward `desired`."""
    if desired == DesiredState.DELETED:
        return (Status.DELETED, True) if observed.phase == "absent" else (Status.DELETING, False)
    if desired == DesiredState.STOPPED:
        return (Status.STOPPED, True) if observed.phase in ("stopped", "absent") else (Status.STOPPING, False)
    if observed.phase == "running" and observed.restart_nonce >= spec.restart_nonce:
        return Status.RUNNING, True
    return "", False  # still on its way: keep the in-progress status


@transaction.atomic
def _record(
    deployment_id: int,
    *,
    generation: int,
    desired: str,
    spec: BrokerSpec | None,
    tier_id: int,
    observed: Observed | None = None,
    error: DriverError | None = None,
) -> Outcome:
    """Write what this attempt found, in one short transaction, and say whether to come back."""
    deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
    if deployment is None:
        return Outcome("gone")
    now = timezone.now()
    old_status = deployment.status
    deployment.last_reconciled_at = now
    settled = False
    status = old_status
    message = ""

    if isinstance(error, ConfigRejectedError):
        # The broker refused the change and serves with its previous configuration: the change failed, the
        # deployment did not. Not retried: the same rows would render the same refused files.
        message, observed = str(error), error.observed
        status = Status.RUNNING if observed.phase == "running" else old_status
        deployment.observed_generation = max(deployment.observed_generation, generation)
        # A restart asked for with the refused change did happen (with the accepted files): not to be done again.
        deployment.observed_restart_nonce = max(deployment.observed_restart_nonce, observed.restart_nonce)
        if observed.host or observed.ports:
            deployment.endpoints = {"host": observed.host, "ports": dict(observed.ports)}
        deployment.observed_details = {str(k): str(v) for k, v in observed.details.items()}
        deployment.conditions = [
            _condition("Ready", status == Status.RUNNING, "BrokerRunning", "", generation, now),
            _condition("ConfigAccepted", False, "ConfigRejected", message, generation, now),
        ]
        for operation in _active_operations(deployment, generation):
            operation.status, operation.error, operation.finished_at = Operation.State.FAILED, message, now
            operation.save(update_fields=["status", "error", "finished_at"])
        if message != deployment.last_error:
            _event(deployment, "config.rejected", message)
        deployment.last_error = message
    elif isinstance(error, PermanentDriverError):
        status, message = Status.FAILED, str(error)
        deployment.observed_generation = max(deployment.observed_generation, generation)
        deployment.last_error = message
        deployment.conditions = [_condition("Ready", False, "DriverRejected", message, generation, now)]
        for operation in _active_operations(deployment, generation):
            operation.status, operation.error, operation.finished_at = Operation.State.FAILED, message, now
            operation.save(update_fields=["status", "error", "finished_at"])
        _event(deployment, "reconcile.failed", message)
    elif error is not None:
        message = str(error)
        if message != deployment.last_error:
            _event(deployment, "reconcile.retry", message)
        deployment.last_error = message
        deployment.conditions = [
            _condition("Ready", old_status == Status.RUNNING, "TemporaryError", message, generation, now)
        ]
        if old_status == Status.DEGRADED:
            deployment.conditions.append(
                _condition("BrokerAvailable", False, "BrokerCrashed", f"not restored yet: {message}", generation, now)
            )
    else:
        # Without an error the driver answered: every caller passes what it observed and the spec it applied.
        assert observed is not None and spec is not None
        new_status, settled = _status_from(observed, desired, spec)
        status = new_status or old_status
        message = observed.message
        if status == Status.DELETED:
            deployment.endpoints, deployment.deleted_at = {}, now
            # Its brokers are gone: so are the keys they served with (the row stays, for billing and history).
            TlsCertificate.objects.filter(deployment=deployment).delete()
        elif observed.host or observed.ports:
            deployment.endpoints = {"host": observed.host, "ports": dict(observed.ports)}
        deployment.observed_details = {str(k): str(v) for k, v in observed.details.items()}
        if settled:
            deployment.observed_generation = max(deployment.observed_generation, generation)
            deployment.observed_restart_nonce = max(deployment.observed_restart_nonce, spec.restart_nonce)
            deployment.last_error = ""
            for operation in _active_operations(deployment, generation):
                operation.status, operation.finished_at = Operation.State.SUCCEEDED, now
                operation.save(update_fields=["status", "finished_at"])
                _event(deployment, "operation.succeeded", f"{operation.kind.replace('_', ' ')} done", operation)
        ready = status == Status.RUNNING
        deployment.conditions = [
            _condition(
                "Ready", ready, "BrokerRunning" if ready else observed.phase.capitalize(), message, generation, now
            )
        ]
        if status == Status.DEGRADED:
            # Still being restored: keep saying why.
            deployment.conditions = [
                _condition("Ready", False, "BrokerCrashed", deployment.last_error, generation, now),
                _condition("BrokerAvailable", False, "BrokerCrashed", deployment.last_error, generation, now),
            ]

    if old_status == Status.DEGRADED and status == Status.RUNNING:
        down = _down_seconds(deployment, now)
        recovered = f"serving again after {down:.1f} s down" if down is not None else "serving again"
        _event(deployment, "broker.recovered", recovered)
        deployment.conditions.append(_condition("BrokerAvailable", True, "BrokerRecovered", recovered, generation, now))
    if status != old_status:
        _event(deployment, "status.changed", f"{old_status} → {status}" + (f": {message}" if message else ""))
        deployment.status = status
    deployment.save()
    # The tier the broker now runs with is the spec's; an in-progress status keeps the interval's own tier.
    _sync_interval(deployment, status, tier_id=tier_id if settled else None, now=now)

    if status == Status.FAILED:
        # A newer change than the one that failed deserves its own attempt.
        return Outcome("failed", retry=deployment.generation > generation, message=message)
    if status == Status.DELETED:
        return Outcome("converged")
    if deployment.is_converged:
        return Outcome("converged")
    return Outcome("retry" if error is not None else "progressing", retry=True, message=message)


def _active_operations(deployment: Deployment, generation: int) -> list[Operation]:
    return list(
        Operation.objects.select_for_update().filter(
            deployment=deployment,
            status__in=ACTIVE_OPERATION_STATES,
            target_generation__lte=generation,
        )
    )


class Condition(TypedDict):
    """One entry of Deployment.conditions, as Kubernetes spells a condition."""

    type: str
    status: str  # "True" or "False"
    reason: str
    message: str
    observed_generation: int
    last_transition_time: str  # ISO 8601


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int, now: datetime.datetime) -> Condition:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1000],
        "observed_generation": generation,
        "last_transition_time": now.isoformat(),
    }


def _event(deployment: Deployment, kind: str, message: str, operation: Operation | None = None) -> None:
    DeploymentEvent.objects.create(deployment=deployment, operation=operation, kind=kind, message=message[:2000])


def _sync_interval(deployment: Deployment, status: str, *, tier_id: int | None, now: datetime.datetime) -> None:
    """Keep exactly one open StatusInterval while billable, switching at this instant on a bucket or tier change."""
    bucket = BILLABLE.get(status)
    current = StatusInterval.objects.select_for_update().filter(deployment=deployment, ended_at__isnull=True).first()
    if current is not None:
        tier_changed = tier_id is not None and current.tier_id != tier_id
        if current.status == bucket and not tier_changed:
            return
        current.ended_at = now
        current.save(update_fields=["ended_at"])
    if bucket is not None:
        next_tier = tier_id or (current.tier_id if current is not None else deployment.tier_id)
        StatusInterval.objects.create(deployment=deployment, status=bucket, tier_id=next_tier, started_at=now)


# -- crashes ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CrashLoop:
    """A broker that crashed `crashes` times within BROKER_CRASH_LOOP_WINDOW_SECONDS (at least
    BROKER_CRASH_LOOP_CRASHES): its next restart is due `backoff` seconds after its last crash, `wait` from now."""

    crashes: int
    backoff: float
    restart_at: datetime.datetime
    wait: float

    def describe(self) -> str:
        return (
            f"crashed {self.crashes} times in {settings.BROKER_CRASH_LOOP_WINDOW_SECONDS:g} s: the next restart "
            f"waits {self.backoff:g} s, until {self.restart_at.isoformat(timespec='seconds')}"
        )


def _crash_loop(deployment: Deployment, now: datetime.datetime) -> CrashLoop | None:
    """The deployment's crash loop, from its `broker.crashed` events, or None if it is not in one. The back-off
    starts at BROKER_CRASH_BACKOFF_SECONDS with the BROKER_CRASH_LOOP_CRASHES-th crash of the window and doubles
    with each crash after it, up to BROKER_CRASH_BACKOFF_MAX_SECONDS; a broker that serves for a whole window
    leaves the loop (the Kubernetes CrashLoopBackOff, counted over a window)."""
    threshold = int(settings.BROKER_CRASH_LOOP_CRASHES)
    since = now - datetime.timedelta(seconds=float(settings.BROKER_CRASH_LOOP_WINDOW_SECONDS))
    crashes = list(
        DeploymentEvent.objects.filter(deployment=deployment, kind="broker.crashed", created_at__gte=since)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:1000]
    )
    if threshold < 1 or len(crashes) < threshold:
        return None
    backoff = min(
        float(settings.BROKER_CRASH_BACKOFF_SECONDS) * 2 ** min(len(crashes) - threshold, 30),
        float(settings.BROKER_CRASH_BACKOFF_MAX_SECONDS),
    )
    restart_at = crashes[0] + datetime.timedelta(seconds=backoff)
    return CrashLoop(
        crashes=len(crashes), backoff=backoff, restart_at=restart_at, wait=(restart_at - now).total_seconds()
    )


@transaction.atomic
def _record_crash(deployment_id: int, *, message: str, last_seen_alive: float | None, restarted: bool = False) -> bool:
    """A broker meant to be serving was found dead: the deployment turns degraded (condition BrokerAvailable False,
    reason BrokerCrashed, the exit in the message), the crash is an event, and the running interval ends when the
    broker was last seen alive (never later than now, never before the interval began): the seconds it was down are
    not billed. A crash that makes a crash loop says so instead (reason CrashLoop, an event `broker.crash_loop`
    naming when the restart is due), unless the broker was `restarted` already (found dead by a reconcile).
    False if the row no longer says it was serving (already recorded, stopped, deleted)."""
    deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
    if deployment is None or deployment.status not in CRASHABLE or deployment.desired_state != DesiredState.RUNNING:
        return False
    now = timezone.now()
    down_since = now
    if last_seen_alive is not None:
        down_since = min(now, datetime.datetime.fromtimestamp(last_seen_alive, tz=datetime.UTC))
    current = StatusInterval.objects.filter(deployment=deployment, ended_at__isnull=True).first()
    if current is not None:
        down_since = max(down_since, current.started_at)
    old_status = deployment.status
    _event(
        deployment,
        "broker.crashed",
        f"{message}; last seen alive at {down_since.isoformat(timespec='milliseconds')}, "
        f"noticed at {now.isoformat(timespec='milliseconds')}",
    )
    reason = "BrokerCrashed"
    loop = None if restarted else _crash_loop(deployment, now)
    if loop is not None:
        reason, message = "CrashLoop", f"{message}; {loop.describe()}"
        _event(deployment, "broker.crash_loop", message)
    _event(deployment, "status.changed", f"{old_status} → {Status.DEGRADED}: {message}")
    deployment.status = Status.DEGRADED
    deployment.last_error = message
    deployment.last_reconciled_at = now
    deployment.conditions = [
        _condition("Ready", False, reason, message, deployment.observed_generation, now),
        _condition("BrokerAvailable", False, reason, message, deployment.observed_generation, now),
    ]
    deployment.save(update_fields=["status", "last_error", "last_reconciled_at", "conditions", "updated_at"])
    _sync_interval(deployment, Status.DEGRADED, tier_id=None, now=down_since)
    if down_since < now:
        hooks.billable_time_corrected(deployment, down_since)
    return True


def _down_seconds(deployment: Deployment, now: datetime.datetime) -> float | None:
    """Seconds since the last running interval ended: how long a recovering broker was down (and not billed)."""
    ended = (
        StatusInterval.objects.filter(deployment=deployment, status=StatusInterval.Kind.RUNNING, ended_at__isnull=False)
        .order_by("-ended_at")
        .values_list("ended_at", flat=True)
        .first()
    )
    return (now - ended).total_seconds() if ended is not None else None


def watch_local_brokers() -> dict[str, int]:
    """Look at every local broker meant to be serving and record each dead one as a crash at once, then enqueue its
    reconcile (which starts it again). Run by beat every BROKER_WATCH_SECONDS from any worker of this machine;
    per live broker it costs a non-blocking flock and a few reads of /proc, and a CONNECT every
    BROKER_ANSWER_CHECK_SECONDS (a stopped or hung broker is dead too), with no database write.

    A dead broker is confirmed again under the deployment's reconcile lock: a reconcile holding it will find the
    crash itself (its apply reports it), so a busy deployment is left to it."""
    from deployments.drivers.local import LocalDriver
    from deployments.services import reconcile_enqueue

    counts = {"alive": 0, "dead": 0, "busy": 0, "idle": 0, "missing": 0, "recorded": 0}
    rows = list(
        Deployment.objects.filter(
            region__driver=Region.Driver.LOCAL, desired_state=DesiredState.RUNNING, status__in=CRASHABLE
        ).values_list("pk", "public_id")
    )
    if not rows:
        return counts
    driver = driver_for(Region(driver=Region.Driver.LOCAL))
    assert isinstance(driver, LocalDriver)
    for pk, public_id in rows:
        try:
            liveness = driver.probe(public_id)
        except (DriverError, OSError) as exc:
            logger.warning("cannot probe broker %s: %s", public_id, exc)
            continue
        counts[liveness.state] += 1
        # Every row here says its broker serves, and only an apply holding its lock can change that on this machine:
        # one with nothing of it left here (a reboot onto an empty LOCAL_BROKERS_DIR, a clean-up) died with its
        # files, and one whose files say it was stopped (idle) is not serving either.
        if liveness.state in ("alive", "busy"):
            continue
        with deployment_lock(pk) as acquired:
            if not acquired:
                continue
            again = driver.probe(public_id)
            if again.state in ("alive", "busy"):
                continue
            message = again.message or liveness.message
            if again.state == "idle":
                message = "its files on this machine say the broker was stopped, yet the deployment should be serving"
            if _record_crash(pk, message=message, last_seen_alive=again.last_seen_alive):
                counts["recorded"] += 1
                logger.warning("broker of %s crashed: %s", public_id, message, extra={"deployment": public_id})
        reconcile_enqueue(pk)
    return counts
