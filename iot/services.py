"""Every write of the IoT platform: devices, groups and imports (API), shadow changes (API and agent), presence and
the outbox (agent only), the agent's broker credentials.

Registry changes run in one transaction with their audit row and, when the broker's users change, a configure
Operation (deployments.services.deployment_configuration_changed) whose reconcile renders them. Shadow changes are
committed, history row included, before anything is published; what the agent must publish for a REST change is
written to the outbox in the same transaction and announced with NOTIFY on commit. Nothing here talks to a broker.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from audit.services import audit_record
from controlplane import crypto
from controlplane.errors import Conflict, FieldError, NotFound, ValidationFailed
from deployments import tls
from deployments.models import Deployment, DesiredState, Operation, Plan
from deployments.passwords import hash_mqtt_password
from deployments.services import deployment_configuration_changed
from iot import certificates, csv_import, pki, shadow, validation
from iot.agent.presence import PresenceEvent
from iot.models import (
    AGENT_USERNAME,
    AgentCredential,
    AgentLease,
    Device,
    DeviceCertificate,
    DeviceCertificateAuthority,
    DeviceGroup,
    OutboxMessage,
    Shadow,
    ShadowChange,
)
from organizations.access import Principal

NOTIFY_CHANNEL = "iot_outbox"
DEVICE_USERNAME_PREFIX = "$device-"


class LeaseLost(Exception):
    """The agent no longer holds the deployment's lease: it must stop serving it and commit nothing more."""


@dataclasses.dataclass(frozen=True)
class IssuedCredentials:
    """What a device is shown once: its username and either its password or its certificate (with the key when we
    generated it, and the device CA to verify against)."""

    username: str
    password: str = ""
    type: str = "password"
    certificate: certificates.IssuedCertificate | None = None
    ca_certificate_pem: str = ""


# -- helpers ------------------------------------------------------------------------------------------------------


def deployment_check_premium(deployment: Deployment) -> None:
    if deployment.plan.code != Plan.Code.PREMIUM:
        raise Conflict(
            f"Devices and shadows are a Premium feature; deployment {deployment.public_id} is on the "
            f"{deployment.plan.code} plan."
        )
    if deployment.desired_state == DesiredState.DELETED:
        raise Conflict("The deployment is being deleted or was deleted.")


def _locked_deployment(deployment: Deployment) -> Deployment:
    """The deployment row locked for this transaction (device writes of one deployment are serialized)."""
    locked = (
        Deployment.objects.select_for_update(of=("self",))
        .select_related("project__organization", "plan", "region")
        .get(pk=deployment.pk)
    )
    deployment_check_premium(locked)
    return locked


def _fields(checks: dict[str, Callable[[], object]]) -> dict[str, Any]:
    """Run {field: thunk} checks; ValidationFailed naming every field at fault, else {field: value}."""
    values, errors = {}, {}
    for field, thunk in checks.items():
        try:
            values[field] = thunk()
        except ValueError as exc:
            errors[field] = str(exc)
    if errors:
        raise ValidationFailed(errors)
    return values


class NewCredentials(NamedTuple):
    """A new MQTT username and password: what is shown once, and the salted hash that is stored."""

    shown: IssuedCredentials
    salt_b64: str
    hash_b64: str


def new_credentials(username_prefix: str) -> NewCredentials:
    """A random username under `username_prefix` (a device's, an edge node's) and a random password."""
    password = secrets.token_urlsafe(24)
    salt_b64, hash_b64 = hash_mqtt_password(password)
    username = username_prefix + secrets.token_hex(8)
    return NewCredentials(IssuedCredentials(username=username, password=password), salt_b64, hash_b64)


def _credential_choice(deployment: Deployment, credential_type: object, csr: object) -> tuple[str, Any]:
    """(credential type, the CSR's public key or None), checked: ValidationFailed names the field at fault."""
    if credential_type not in Device.CredentialType.values:
        raise ValidationFailed({"credential_type": 'Must be "password" or "certificate".'})
    if credential_type == Device.CredentialType.PASSWORD:
        if csr not in (None, ""):
            raise ValidationFailed({"csr": 'A CSR is only given with "credential_type": "certificate".'})
        return credential_type, None
    if deployment.region.driver != "local" and not settings.PKI_BASE_URL.startswith("http://"):
        # EMQX fetches a certificate's CRL from the URL it names, over plain HTTP only (emqx/emqx v5.8.6
        # apps/emqx/src/emqx_ssl_crl_cache.erl do_insert/2: only_http_distribution_points_supported): a certificate
        # naming another scheme would be refused by the broker at every handshake.
        raise ValidationFailed(
            {
                "credential_type": "X.509 device certificates on EMQX regions need the control plane's device CRLs "
                "served over plain http:// (PKI_BASE_URL); this control plane is configured with "
                f"{settings.PKI_BASE_URL!r}. Use password credentials, or ask the operator to set PKI_BASE_URL."
            }
        )
    if csr in (None, ""):
        return credential_type, None
    try:
        return credential_type, certificates.check_csr(csr)
    except ValueError as exc:
        raise ValidationFailed({"csr": str(exc)}) from None


def _device_ca(deployment: Deployment, now: datetime.datetime) -> DeviceCertificateAuthority:
    """The deployment's device CA, made with its broker's first TLS spec (device_ca_ensure) or, failing that, its first
    certificate device. The one-to-one on the deployment makes sure there is never a second."""
    found = DeviceCertificateAuthority.objects.select_for_update().filter(deployment=deployment).first()
    if found is not None:
        return found
    certificate_pem, key_pem = certificates.generate_device_ca(deployment_name=deployment.public_id, now=now)
    crl_pem = certificates.build_crl(
        ca_certificate_pem=certificate_pem, ca_private_key_pem=key_pem, revoked=(), number=1, now=now
    )
    facts = tls.certificate_facts(certificate_pem)
    return DeviceCertificateAuthority.objects.create(
        deployment=deployment,
        certificate_pem=certificate_pem,
        private_key_encrypted=crypto.encrypt_str(key_pem),
        fingerprint_sha256=facts.fingerprint_sha256,
        not_after=facts.not_after,
        crl_pem=crl_pem,
        crl_number=1,
        crl_next_update=now + certificates.CRL_VALIDITY,
        created_at=now,
    )


def device_ca_ensure(deployment: Deployment, now: datetime.datetime | None = None) -> DeviceCertificateAuthority:
    """The deployment's device CA, made now if it has none (the reconciler asks before any device does). Two callers
    at once make one: the one-to-one refuses the second (in its own savepoint), which reads the first's."""
    try:
        with transaction.atomic():
            return _device_ca(deployment, now or timezone.now())
    except IntegrityError:
        return DeviceCertificateAuthority.objects.get(deployment=deployment)


def device_crl_refresh(authority: DeviceCertificateAuthority, now: datetime.datetime) -> None:
    """Sign the CA's CRL again from the certificates on record: every revoked one not yet expired (an expired
    certificate is refused anyway). Call with the CA's row locked."""
    revoked = [
        certificates.Revoked(serial=c.serial, revoked_at=c.revoked_at, reason=c.revocation_reason)
        for c in DeviceCertificate.objects.filter(
            deployment_id=authority.deployment_id, revoked_at__isnull=False, not_after__gt=now
        )
        if c.revoked_at is not None
    ]
    authority.crl_number += 1
    authority.crl_pem = certificates.build_crl(
        ca_certificate_pem=authority.certificate_pem,
        ca_private_key_pem=crypto.decrypt_str(authority.private_key_encrypted),
        revoked=revoked,
        number=authority.crl_number,
        now=now,
    )
    authority.crl_next_update = now + certificates.CRL_VALIDITY
    authority.save(update_fields=["crl_pem", "crl_number", "crl_next_update"])


def _issue_certificate(
    deployment: Deployment, device: Device, public_key: Any, now: datetime.datetime
) -> IssuedCredentials:
    """A new certificate for `device` (CN = its username), recorded; the credentials to show once."""
    authority = device_ca_ensure(deployment, now)
    issued = certificates.issue_device_certificate(
        ca_certificate_pem=authority.certificate_pem,
        ca_private_key_pem=crypto.decrypt_str(authority.private_key_encrypted),
        username=device.username,
        public_key=public_key,
        now=now,
        crl_url=pki.device_crl_url(deployment.public_id, pem=deployment.region.driver != "local"),
    )
    DeviceCertificate.objects.create(
        deployment=deployment,
        device=device,
        device_identifier=device.device_id,
        username=device.username,
        serial=issued.serial,
        fingerprint_sha256=issued.fingerprint_sha256,
        not_before=issued.not_before,
        not_after=issued.not_after,
        from_csr=public_key is not None,
        created_at=now,
    )
    return IssuedCredentials(
        username=device.username,
        type=Device.CredentialType.CERTIFICATE,
        certificate=issued,
        ca_certificate_pem=authority.certificate_pem,
    )


def _revoke_current(device: Device, reason: str, now: datetime.datetime) -> list[str]:
    """Revoke the device's current certificate (held or not) for good with `reason`; answers the serials revoked.
    The CRL is not rebuilt here: the caller does, once."""
    current = (
        DeviceCertificate.objects.select_for_update()
        .filter(device=device)
        .filter(Q(revoked_at__isnull=True) | Q(revocation_reason=certificates.Reason.CERTIFICATE_HOLD))
    )
    serials = []
    for row in current:
        row.revoked_at = row.revoked_at or now
        row.revocation_reason = reason
        row.save(update_fields=["revoked_at", "revocation_reason"])
        serials.append(row.serial)
    return serials


def _hold(device: Device, held: bool, now: datetime.datetime) -> list[str]:
    """Put the device's current certificate on hold (disabled) or take it off hold (enabled); answers the serials."""
    if held:
        rows = DeviceCertificate.objects.select_for_update().filter(device=device, revoked_at__isnull=True)
    else:
        rows = DeviceCertificate.objects.select_for_update().filter(
            device=device, revocation_reason=certificates.Reason.CERTIFICATE_HOLD
        )
    serials = []
    for row in rows:
        row.revoked_at = now if held else None
        row.revocation_reason = certificates.Reason.CERTIFICATE_HOLD if held else ""
        row.save(update_fields=["revoked_at", "revocation_reason"])
        serials.append(row.serial)
    return serials


def _refresh_crl_of(deployment: Deployment, now: datetime.datetime) -> None:
    authority = DeviceCertificateAuthority.objects.select_for_update().filter(deployment=deployment).first()
    if authority is not None:
        device_crl_refresh(authority, now)


def _groups(deployment: Deployment, names: list[str], field: str = "groups") -> list[DeviceGroup]:
    found = {g.name: g for g in DeviceGroup.objects.filter(deployment=deployment, name__in=names)}
    missing = [name for name in names if name not in found]
    if missing:
        raise ValidationFailed({field: f"No device group named {missing[0]!r} on this deployment: create it first."})
    return [found[name] for name in names]


def _notify(deployment_id: int) -> None:
    """Wake the agent serving the deployment once this transaction commits (PostgreSQL delivers NOTIFY on commit)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, str(deployment_id)])


def _withdraw_publishes(deployment_id: int, topic_prefix: str) -> None:
    """Drop what is queued for the agent to publish under `topic_prefix` and not yet published: it describes state
    that no longer exists. (A row the agent has already read may still go out once: at least once.)"""
    OutboxMessage.objects.filter(
        deployment_id=deployment_id, kind=OutboxMessage.Kind.PUBLISH, topic__startswith=topic_prefix
    ).delete()


def _disconnect_pending(deployment: Deployment, device_ids: list[str]) -> set[str]:
    """Which of these ids, none of them registered, still have a deleted device's disconnect queued. Until the agent
    carries it out, the broker holds that device's session under the id (its subscriptions and queued messages): a
    device registered under it now could resume that session with clean_session=false, and the disconnect would then
    end the new device's connection. So the id is not registered again until then."""
    return set(_kicks(deployment, device_ids).values_list("client_id", flat=True))


def _kicks(deployment: Deployment, device_ids: list[str]) -> QuerySet[OutboxMessage]:
    """The disconnects queued for these client ids and not yet carried out by the agent."""
    return OutboxMessage.objects.filter(deployment=deployment, kind=OutboxMessage.Kind.KICK, client_id__in=device_ids)


def _kick(deployment: Deployment, device_id: str, after_generation: int, reason: OutboxMessage.Reason) -> None:
    """Disconnect whatever holds `device_id` once the broker runs without the device's credentials: mosquitto drops
    it itself on the reload, EMQX keeps it until the agent takes the client id over."""
    OutboxMessage.objects.create(
        deployment=deployment,
        kind=OutboxMessage.Kind.KICK,
        client_id=device_id,
        after_generation=after_generation,
        reason=reason,
    )
    _notify(deployment.pk)


# -- the agent's own credentials ------------------------------------------------------------------------------------


def agent_credential_ensure(deployment: Deployment) -> AgentCredential:
    """The agent's broker user on `deployment`, made once (concurrent callers get the same row)."""
    existing = AgentCredential.objects.filter(deployment=deployment).first()
    if existing is not None:
        return existing
    password = secrets.token_urlsafe(32)
    salt_b64, hash_b64 = hash_mqtt_password(password)
    try:
        with transaction.atomic():
            return AgentCredential.objects.create(
                deployment=deployment,
                username=AGENT_USERNAME,
                password_encrypted=crypto.encrypt_str(password),
                salt_b64=salt_b64,
                hash_b64=hash_b64,
            )
    except IntegrityError:
        return AgentCredential.objects.get(deployment=deployment)


# -- devices --------------------------------------------------------------------------------------------------------


@transaction.atomic
def device_create(
    *,
    deployment: Deployment,
    actor: Principal | None,
    device_id: str,
    name: str = "",
    product: str = "",
    tags: list[str] | None = None,
    attributes: dict[str, Any] | None = None,
    groups: list[str] | None = None,
    enabled: bool = True,
    credential_type: str = Device.CredentialType.PASSWORD,
    csr: str | None = None,
) -> tuple[Device, IssuedCredentials, Operation]:
    """Register a device; answers (device, its credentials shown this once, the configure Operation). With
    `credential_type` "certificate" it gets a client certificate of the deployment's device CA (for the key of
    `csr` when given, else for a key generated here) instead of a password."""
    deployment = _locked_deployment(deployment)
    values = _fields(
        {
            "device_id": lambda: validation.device_id(device_id),
            "name": lambda: validation.text(name, max_length=128),
            "product": lambda: validation.text(product, max_length=64),
            "tags": lambda: validation.tags(tags if tags is not None else []),
            "attributes": lambda: validation.attributes(attributes if attributes is not None else {}),
            "groups": lambda: validation.group_names(groups if groups is not None else []),
        }
    )
    credential_type, public_key = _credential_choice(deployment, credential_type, csr)
    group_rows = _groups(deployment, values.pop("groups"))
    if Device.objects.filter(deployment=deployment, device_id=values["device_id"]).exists():
        raise Conflict(f"A device {values['device_id']!r} is already registered on this deployment.")
    if _disconnect_pending(deployment, [values["device_id"]]):
        raise Conflict(
            f"A device {values['device_id']!r} was deleted and the agent has not yet disconnected it, which also "
            "ends its broker session; register it again once it has (seconds, while the deployment runs)."
        )
    new = new_credentials(DEVICE_USERNAME_PREFIX)
    credentials = new.shown
    certificate = credential_type == Device.CredentialType.CERTIFICATE
    now = timezone.now()
    try:
        with transaction.atomic():
            device = Device.objects.create(
                deployment=deployment,
                enabled=enabled,
                credential_type=credential_type,
                username=credentials.username,
                salt_b64="" if certificate else new.salt_b64,
                hash_b64="" if certificate else new.hash_b64,
                credentials_issued_at=now,
                **values,
            )
    except IntegrityError:
        raise Conflict(f"A device {values['device_id']!r} is already registered on this deployment.") from None
    if certificate:
        credentials = _issue_certificate(deployment, device, public_key, now)
        if not enabled:
            _hold(device, True, now)
            _refresh_crl_of(deployment, now)
    device.groups.set(group_rows)
    Shadow.objects.create(device=device)
    operation = deployment_configuration_changed(
        deployment=deployment, actor=actor, change="device.create", summary={"device": device.device_id}
    )
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device.create",
        target=device,
        summary={
            "deployment": deployment.public_id,
            "device_id": device.device_id,
            "operation": operation.public_id,
            "credential_type": device.credential_type,
            **_certificate_summary(credentials),
        },
    )
    return device, credentials, operation


def _certificate_summary(credentials: IssuedCredentials) -> dict[str, Any]:
    issued = credentials.certificate
    if issued is None:
        return {}
    return {"certificate": {"serial": issued.serial, "fingerprint_sha256": issued.fingerprint_sha256}}


_UNSET = object()


@transaction.atomic
def device_update(
    *,
    device: Device,
    actor: Principal | None,
    name: Any = _UNSET,
    product: Any = _UNSET,
    tags: Any = _UNSET,
    attributes: Any = _UNSET,
    groups: Any = _UNSET,
    enabled: Any = _UNSET,
) -> tuple[Device, Operation | None]:
    """Change a device's description, groups or enabled flag. Disabling removes its broker user (the broker drops
    it and refuses it from then on) and disconnects it; answers (device, the Operation when the broker changes)."""
    deployment = _locked_deployment(device.deployment)
    device = Device.objects.select_for_update().get(pk=device.pk)
    checks: dict[str, Callable[[], object]] = {}
    if name is not _UNSET:
        checks["name"] = lambda: validation.text(name, max_length=128)
    if product is not _UNSET:
        checks["product"] = lambda: validation.text(product, max_length=64)
    if tags is not _UNSET:
        checks["tags"] = lambda: validation.tags(tags)
    if attributes is not _UNSET:
        checks["attributes"] = lambda: validation.attributes(attributes)
    if groups is not _UNSET:
        checks["groups"] = lambda: validation.group_names(groups)
    if enabled is not _UNSET:
        checks["enabled"] = lambda: _boolean(enabled)
    values = _fields(checks)
    changed = []
    if "groups" in values:
        device.groups.set(_groups(deployment, values.pop("groups")))
        changed.append("groups")
    for field, value in values.items():
        if getattr(device, field) != value:
            setattr(device, field, value)
            changed.append(field)
    device.save()
    operation = None
    held: list[str] = []
    if "enabled" in changed and device.credential_type == Device.CredentialType.CERTIFICATE:
        # Disabled: its certificate goes on the CRL (certificateHold), refused at the next handshake; enabled: off
        # it again. The broker reloads the CRL without a restart.
        now = timezone.now()
        held = _hold(device, not device.enabled, now)
        if held:
            _refresh_crl_of(deployment, now)
    if "enabled" in changed:
        operation = deployment_configuration_changed(
            deployment=deployment,
            actor=actor,
            change="device.enable" if device.enabled else "device.disable",
            summary={"device": device.device_id},
        )
        if not device.enabled:
            _kick(deployment, device.device_id, operation.target_generation, OutboxMessage.Reason.DISABLED)
        else:
            # Enabled again before the agent carried out the disable's disconnect: it would end the session the
            # device is allowed to have now. (A replaced certificate's disconnect stays: that connection is not.)
            _kicks(deployment, [device.device_id]).filter(reason=OutboxMessage.Reason.DISABLED).delete()
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device.update",
        target=device,
        summary={
            "deployment": deployment.public_id,
            "device_id": device.device_id,
            "changed": changed,
            **({"enabled": device.enabled} if "enabled" in changed else {}),
            **({"operation": operation.public_id} if operation else {}),
            **({"certificate_hold" if not device.enabled else "certificate_released": held} if held else {}),
        },
    )
    return device, operation


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("Must be true or false.")
    return value


@transaction.atomic
def device_delete(*, device: Device, actor: Principal | None) -> Operation:
    """Remove a device, its shadow, history and queued messages; its broker user goes and it is disconnected."""
    deployment = _locked_deployment(device.deployment)
    device_id, public_id = device.device_id, device.public_id
    now = timezone.now()
    revoked = _revoke_current(device, certificates.Reason.CESSATION_OF_OPERATION, now)
    if revoked:
        _refresh_crl_of(deployment, now)
    Device.objects.filter(pk=device.pk).delete()
    # What was queued for it and not yet published (shadow deltas and answers) goes with it: a device registered
    # again under the same id must never receive the deleted one's desired state. The kick below stays.
    _withdraw_publishes(deployment.pk, f"devices/{device_id}/")
    operation = deployment_configuration_changed(
        deployment=deployment, actor=actor, change="device.delete", summary={"device": device_id}
    )
    _kick(deployment, device_id, operation.target_generation, OutboxMessage.Reason.DELETED)
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device.delete",
        target=device,
        summary={
            "deployment": deployment.public_id,
            "device_id": device_id,
            "device": public_id,
            "operation": operation.public_id,
            **({"revoked": revoked} if revoked else {}),
        },
    )
    return operation


@transaction.atomic
def device_credentials_rotate(
    *, device: Device, actor: Principal | None, credential_type: Any = None, csr: str | None = None
) -> tuple[Device, IssuedCredentials, Operation]:
    """New credentials for a device (shown this once): a new username and a password, or a certificate
    (`credential_type`, the device's current type when None; `csr` as for device_create). The old ones stop
    working when the broker reloads: a replaced certificate is revoked (superseded) and a client still connected
    with it is disconnected; mosquitto drops a client connected with a replaced password itself."""
    deployment = _locked_deployment(device.deployment)
    device = Device.objects.select_for_update().get(pk=device.pk)
    previous_type = device.credential_type
    credential_type, public_key = _credential_choice(
        deployment, device.credential_type if credential_type is None else credential_type, csr
    )
    now = timezone.now()
    revoked = _revoke_current(device, certificates.Reason.SUPERSEDED, now)
    new = new_credentials(DEVICE_USERNAME_PREFIX)
    credentials = new.shown
    certificate = credential_type == Device.CredentialType.CERTIFICATE
    device.credential_type = credential_type
    device.username = credentials.username
    device.salt_b64 = "" if certificate else new.salt_b64
    device.hash_b64 = "" if certificate else new.hash_b64
    device.credentials_issued_at = now
    device.save()
    if certificate:
        credentials = _issue_certificate(deployment, device, public_key, now)
        if not device.enabled:
            _hold(device, True, now)
    if revoked or (certificate and not device.enabled):
        _refresh_crl_of(deployment, now)
    operation = deployment_configuration_changed(
        deployment=deployment, actor=actor, change="device.credentials", summary={"device": device.device_id}
    )
    if previous_type == Device.CredentialType.CERTIFICATE:
        # mosquitto keeps a client whose certificate was revoked connected through the reload (it checks the CRL at
        # the handshake only): it is taken over once the broker runs the new generation.
        _kick(deployment, device.device_id, operation.target_generation, OutboxMessage.Reason.CREDENTIALS)
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device.credentials.rotate",
        target=device,
        summary={
            "deployment": deployment.public_id,
            "device_id": device.device_id,
            "operation": operation.public_id,
            "credential_type": [previous_type, device.credential_type],
            **_certificate_summary(credentials),
            **({"revoked": revoked} if revoked else {}),
        },
    )
    return device, credentials, operation


@transaction.atomic
def devices_import(
    *, deployment: Deployment, actor: Principal | None, data: bytes, content_encoding: str = ""
) -> tuple[list[tuple[Device, IssuedCredentials]], Operation]:
    """Register every device of a CSV file, or none: ValidationFailed lists each row's errors (`rows.<line>.<column>`).
    Answers ([(device, credentials)], the Operation)."""
    deployment = _locked_deployment(deployment)
    try:
        rows = csv_import.parse(csv_import.decompress(data, content_encoding))
    except csv_import.ImportInvalid as exc:
        raise ValidationFailed(exc.errors) from None
    errors: list[FieldError] = []
    taken = set(
        Device.objects.filter(deployment=deployment, device_id__in=[r.device_id for r in rows]).values_list(
            "device_id", flat=True
        )
    )
    groups = {g.name: g for g in DeviceGroup.objects.filter(deployment=deployment)}
    disconnecting = _disconnect_pending(deployment, [r.device_id for r in rows if r.device_id not in taken])
    for row in rows:
        if row.device_id in taken:
            errors.append(csv_import.row_error(row.line, "device_id", f"{row.device_id!r} is already registered"))
        elif row.device_id in disconnecting:
            errors.append(
                csv_import.row_error(
                    row.line, "device_id", f"{row.device_id!r} was deleted and is not yet disconnected; retry shortly"
                )
            )
        missing = [name for name in row.groups if name not in groups]
        if missing:
            errors.append(csv_import.row_error(row.line, "groups", f"no device group named {missing[0]!r}"))
    if errors:
        raise ValidationFailed(csv_import.cap(errors))

    issued = []
    devices = []
    for row in rows:
        new = new_credentials(DEVICE_USERNAME_PREFIX)
        issued.append(new.shown)
        devices.append(
            Device(
                deployment=deployment,
                device_id=row.device_id,
                name=row.name,
                product=row.product,
                tags=list(row.tags),
                attributes=row.attributes,
                enabled=row.enabled,
                username=new.shown.username,
                salt_b64=new.salt_b64,
                hash_b64=new.hash_b64,
            )
        )
    for device in devices:
        device.public_id = device._meta.get_field("public_id").pre_save(device, True)
    try:
        with transaction.atomic():
            Device.objects.bulk_create(devices, batch_size=1000)
    except IntegrityError:  # a concurrent registration took one of the ids
        raise Conflict("A device of this file was registered meanwhile; nothing was imported. Retry.") from None
    Shadow.objects.bulk_create([Shadow(device=device) for device in devices], batch_size=1000)
    through = Device.groups.through
    through.objects.bulk_create(
        [
            through(device_id=device.pk, devicegroup_id=groups[name].pk)
            for device, row in zip(devices, rows)
            for name in row.groups
        ],
        batch_size=5000,
    )
    operation = deployment_configuration_changed(
        deployment=deployment, actor=actor, change="device.import", summary={"devices": len(devices)}
    )
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device.import",
        target=deployment,
        summary={"devices": len(devices), "operation": operation.public_id},
    )
    return list(zip(devices, issued)), operation


# -- groups ---------------------------------------------------------------------------------------------------------


@transaction.atomic
def device_group_create(
    *, deployment: Deployment, actor: Principal | None, name: str, description: str = ""
) -> DeviceGroup:
    deployment = _locked_deployment(deployment)
    values = _fields(
        {
            "name": lambda: validation.group_name(name),
            "description": lambda: validation.text(description, max_length=500),
        }
    )
    if DeviceGroup.objects.filter(deployment=deployment, name=values["name"]).exists():
        raise Conflict(f"A device group named {values['name']!r} already exists on this deployment.")
    group = DeviceGroup.objects.create(deployment=deployment, **values)
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device_group.create",
        target=group,
        summary={"deployment": deployment.public_id, "name": group.name},
    )
    return group


@transaction.atomic
def device_group_update(*, group: DeviceGroup, actor: Principal | None, description: str) -> DeviceGroup:
    deployment = _locked_deployment(group.deployment)
    values = _fields({"description": lambda: validation.text(description, max_length=500)})
    group = DeviceGroup.objects.select_for_update().get(pk=group.pk)
    old = group.description
    group.description = values["description"]
    group.save(update_fields=["description"])
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device_group.update",
        target=group,
        summary={"deployment": deployment.public_id, "name": group.name, "description": [old, group.description]},
    )
    return group


@transaction.atomic
def device_group_delete(*, group: DeviceGroup, actor: Principal | None) -> None:
    """Remove a group; its devices stay, outside it."""
    deployment = _locked_deployment(group.deployment)
    name, members = group.name, group.devices.count()
    DeviceGroup.objects.filter(pk=group.pk).delete()
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action="device_group.delete",
        target=group,
        summary={"deployment": deployment.public_id, "name": name, "devices": members},
    )


# -- shadows ------------------------------------------------------------------------------------------------------


def _document(row: Shadow) -> shadow.Document:
    return shadow.Document(
        present=row.present,
        version=row.version,
        desired=row.desired,
        reported=row.reported,
        desired_metadata=row.desired_metadata,
        reported_metadata=row.reported_metadata,
    )


def _store(row: Shadow, document: shadow.Document, now: datetime.datetime) -> None:
    row.present, row.version = document.present, document.version
    row.desired, row.reported = document.desired, document.reported
    row.desired_metadata, row.reported_metadata = document.desired_metadata, document.reported_metadata
    row.updated_at = now


SHADOW_FIELDS = ["present", "version", "desired", "reported", "desired_metadata", "reported_metadata", "updated_at"]


def _publish(deployment_id: int, topic: str, body: dict[str, Any]) -> OutboxMessage:
    return OutboxMessage(
        deployment_id=deployment_id,
        kind=OutboxMessage.Kind.PUBLISH,
        topic=topic,
        payload=shadow.compact(body).decode("utf-8"),
    )


@transaction.atomic
def shadow_update_desired(*, device: Device, actor: Principal | None, body: Any) -> dict[str, Any]:
    """A desired-state change from the REST API: checked as a device's update is (reported refused), committed
    with its history row, and its accepted, documents and delta messages queued for the device. Answers the accepted
    body; ValidationFailed (400, 413 as 400 with code too-large) or Conflict (version) refuse it, changing nothing."""
    deployment_check_premium(device.deployment)
    try:
        request = shadow.parse_update(body, sections=("desired",))
    except shadow.ShadowRejected as exc:
        raise _domain_error(exc) from None
    row, _ = Shadow.objects.get_or_create(device=device)
    row = Shadow.objects.select_for_update().get(pk=row.pk)
    now = timezone.now()
    try:
        result = shadow.apply_update(_document(row), request, timestamp=int(now.timestamp()))
    except shadow.ShadowRejected as exc:
        raise _domain_error(exc) from None
    _store(row, result.document, now)
    row.save(update_fields=SHADOW_FIELDS)
    ShadowChange.objects.create(
        device=device,
        version=result.document.version,
        kind=ShadowChange.Kind.UPDATE,
        source=ShadowChange.Source.API,
        state=request.state,
        client_token=request.client_token,
        created_at=now,
    )
    base = f"devices/{device.device_id}/shadow/update"
    messages = [_publish(device.deployment_id, f"{base}/accepted", result.accepted)]
    messages.append(_publish(device.deployment_id, f"{base}/documents", result.documents))
    if result.delta is not None:
        messages.append(_publish(device.deployment_id, f"{base}/delta", result.delta))
    OutboxMessage.objects.bulk_create(messages)
    _notify(device.deployment_id)
    audit_record(
        actor=actor,
        organization=device.deployment.project.organization,
        action="device.shadow.update",
        target=device,
        # Which fields, not their values: the shadow's history holds the values.
        summary={
            "device_id": device.device_id,
            "version": result.document.version,
            "fields": sorted(request.state.get("desired") or {}) if request.state.get("desired") is not None else None,
        },
    )
    return result.accepted


@transaction.atomic
def shadow_delete(*, device: Device, actor: Principal | None, version: int | None = None) -> dict[str, Any]:
    """Delete a device's shadow (its version keeps counting), and the shadow messages still queued for it; answers
    {"version", "timestamp"}."""
    deployment_check_premium(device.deployment)
    row = Shadow.objects.select_for_update().filter(device=device).first()
    if row is None or not row.present:
        raise NotFound("No shadow exists for this device.")
    if version is not None and version != row.version:
        raise Conflict(
            f"Version conflict: the shadow is at version {row.version}, not {version}.", code="version-conflict"
        )
    now = timezone.now()
    document = shadow.delete_document(_document(row))
    _store(row, document, now)
    row.save(update_fields=SHADOW_FIELDS)
    # The accepted, documents and delta messages of earlier REST changes not yet published describe the document
    # deleted here: a delta would have the device act on a desired state that no longer exists.
    _withdraw_publishes(device.deployment_id, f"devices/{device.device_id}/shadow/")
    ShadowChange.objects.create(
        device=device,
        version=document.version,
        kind=ShadowChange.Kind.DELETE,
        source=ShadowChange.Source.API,
        created_at=now,
    )
    audit_record(
        actor=actor,
        organization=device.deployment.project.organization,
        action="device.shadow.delete",
        target=device,
        summary={"device_id": device.device_id, "version": document.version},
    )
    return {"version": document.version, "timestamp": int(now.timestamp())}


def _domain_error(exc: shadow.ShadowRejected) -> Conflict | NotFound | ValidationFailed:
    if exc.code == 409:
        return Conflict(exc.message, code="version-conflict")
    if exc.code == 404:
        return NotFound(exc.message)
    code = "too-large" if exc.code == 413 else "invalid"
    return ValidationFailed([FieldError(exc.field, exc.message, code)])


# -- the agent: shadow requests over MQTT ---------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _json_value(value: Any) -> Any:
    """A jsonb column read with a raw cursor: Django's backend has psycopg hand jsonb over as text."""
    return json.loads(value) if isinstance(value, str) else value


def _shadows_save(
    documents: dict[int, shadow.Document], history: list[tuple[int, int, dict[str, Any], str]], now: datetime.datetime
) -> None:
    """Every changed shadow of a batch and its history rows, in one statement, the rows passed as one JSON
    document each. (Django's bulk_update builds a CASE per row and field, and binding arrays of JSON text element by
    element, each cost more than the rest of a batch together.)"""
    shadows = [
        {
            "device_id": pk,
            "present": document.present,
            "version": document.version,
            "desired": document.desired,
            "reported": document.reported,
            "desired_metadata": document.desired_metadata,
            "reported_metadata": document.reported_metadata,
        }
        for pk, document in documents.items()
    ]
    changes = [
        {"device_id": pk, "version": version, "state": state, "client_token": client_token}
        for pk, version, state, client_token in history
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH saved AS (
                UPDATE iot_shadow AS shadow
                   SET present = v.present, version = v.version, desired = v.desired, reported = v.reported,
                       desired_metadata = v.desired_metadata, reported_metadata = v.reported_metadata,
                       updated_at = %s
                  FROM jsonb_to_recordset(%s::jsonb) AS v(device_id bigint, present boolean, version bigint,
                       desired jsonb, reported jsonb, desired_metadata jsonb, reported_metadata jsonb)
                 WHERE shadow.device_id = v.device_id
            )
            INSERT INTO iot_shadowchange (device_id, version, kind, source, state, client_token, created_at)
            SELECT h.device_id, h.version, %s, %s, h.state, h.client_token, %s
              FROM jsonb_to_recordset(%s::jsonb) AS h(device_id bigint, version bigint, state jsonb, client_token text)
            """,
            [
                now,
                _json_text(shadows),
                ShadowChange.Kind.UPDATE,
                ShadowChange.Source.MQTT,
                now,
                _json_text(changes),
            ],
        )


def _presence_save(devices: list[Device]) -> None:
    """One UPDATE for a batch of presence changes (a broker restart changes every device at once)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE iot_device AS device
               SET online = v.online, connected_at = v.connected_at, disconnected_at = v.disconnected_at,
                   last_seen = v.last_seen, client_address = v.client_address
              FROM unnest(%s::bigint[], %s::boolean[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[],
                          %s::text[])
                   AS v(id, online, connected_at, disconnected_at, last_seen, client_address)
             WHERE device.id = v.id
            """,
            [
                [d.pk for d in devices],
                [d.online for d in devices],
                [d.connected_at for d in devices],
                [d.disconnected_at for d in devices],
                [d.last_seen for d in devices],
                [d.client_address for d in devices],
            ],
        )


@dataclasses.dataclass(frozen=True)
class ShadowRequest:
    device_id: str
    operation: str  # "update" | "get"
    payload: bytes


def _fence(deployment_id: int, holder: str, token: int) -> None:
    """Inside the transaction: hold the lease row in share mode so no takeover commits between our check and our
    commit, and refuse if the lease is no longer ours (expired, or taken by another agent)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM iot_agentlease WHERE deployment_id = %s AND holder = %s AND token = %s "
            "AND expires_at > clock_timestamp() FOR SHARE",
            [deployment_id, holder, token],
        )
        if cursor.fetchone() is None:
            raise LeaseLost(f"the lease of deployment {deployment_id} is no longer held by {holder}")


def shadow_process_batch(
    *, deployment_id: int, holder: str, token: int, requests: list[ShadowRequest]
) -> list[tuple[str, dict[str, Any]]]:
    """Carry out a batch of shadow requests received over MQTT, in order, in one transaction: answers
    [(topic, body)] to publish once this returns (after the commit). Raises LeaseLost (nothing committed)."""
    now = timezone.now()
    timestamp = int(now.timestamp())
    parsed: list[tuple[ShadowRequest, shadow.UpdateRequest | str | None, shadow.ShadowRejected | None]] = []
    for request in requests:
        try:
            if request.operation == "update":
                if len(request.payload) > shadow.MAX_DOCUMENT_BYTES:
                    raise shadow.ShadowRejected(413, f"The request is larger than {shadow.MAX_DOCUMENT_BYTES} bytes")
                body = shadow.decode_json(request.payload)
                parsed.append((request, shadow.parse_update(body, size=len(request.payload)), None))
            else:
                parsed.append((request, shadow.parse_get(request.payload), None))
        except shadow.ShadowRejected as exc:
            parsed.append((request, None, exc))

    answers: list[tuple[str, dict[str, Any]]] = []
    with transaction.atomic():
        _fence(deployment_id, holder, token)
        wanted = sorted({r.device_id for r, _, error in parsed if error is None})
        devices: dict[str, int] = {}
        documents: dict[int, shadow.Document] = {}
        with connection.cursor() as cursor:
            # The device rows and their shadows, locked in one round trip (in id order: no deadlock between batches).
            cursor.execute(
                """
                SELECT device.device_id, shadow.device_id, shadow.present, shadow.version, shadow.desired,
                       shadow.reported, shadow.desired_metadata, shadow.reported_metadata
                  FROM iot_shadow AS shadow JOIN iot_device AS device ON device.id = shadow.device_id
                 WHERE device.deployment_id = %s AND device.device_id = ANY(%s)
                 ORDER BY shadow.device_id
                   FOR UPDATE OF shadow
                """,
                [deployment_id, wanted],
            )
            for device_id, pk, present, version, desired, reported, desired_meta, reported_meta in cursor.fetchall():
                devices[device_id] = pk
                documents[pk] = shadow.Document(
                    present=present,
                    version=version,
                    desired=_json_value(desired),
                    reported=_json_value(reported),
                    desired_metadata=_json_value(desired_meta),
                    reported_metadata=_json_value(reported_meta),
                )
        changed: set[int] = set()
        history: list[tuple[int, int, dict[str, Any], str]] = []  # (device pk, version, state, client token)
        for request, value, error in parsed:
            base = f"devices/{request.device_id}/shadow/{request.operation}"
            if error is None and request.device_id not in devices:
                error = shadow.ShadowRejected(404, f"No device {request.device_id!r} is registered on this deployment")
            if error is not None:
                token_text = shadow.client_token_of(request.payload)
                answers.append(
                    (f"{base}/rejected", shadow.rejected_body(error, timestamp=timestamp, client_token=token_text))
                )
                continue
            pk = devices[request.device_id]
            if isinstance(value, str):  # a get request: its value is the clientToken
                try:
                    body = shadow.get_body(documents[pk], timestamp=timestamp, client_token=value)
                except shadow.ShadowRejected as exc:
                    answers.append(
                        (f"{base}/rejected", shadow.rejected_body(exc, timestamp=timestamp, client_token=value))
                    )
                    continue
                answers.append((f"{base}/accepted", body))
                continue
            if value is None:  # parsed without an error, so never None: an update request
                continue
            try:
                result = shadow.apply_update(documents[pk], value, timestamp=timestamp)
            except shadow.ShadowRejected as exc:
                answers.append(
                    (
                        f"{base}/rejected",
                        shadow.rejected_body(exc, timestamp=timestamp, client_token=value.client_token),
                    )
                )
                continue
            documents[pk] = result.document
            changed.add(pk)
            history.append((pk, result.document.version, value.state, value.client_token))
            answers.append((f"{base}/accepted", result.accepted))
            answers.append((f"{base}/documents", result.documents))
            if result.delta is not None:
                answers.append((f"{base}/delta", result.delta))
        if changed:
            _shadows_save({pk: documents[pk] for pk in changed}, history, now)
    return answers


# -- the agent: presence ------------------------------------------------------------------------------------------


PRESENCE_FIELDS = ["online", "connected_at", "disconnected_at", "last_seen", "client_address"]


def presence_apply(
    *, deployment_id: int, holder: str, token: int, events: list[PresenceEvent], cursor: dict[str, Any] | None = None
) -> int:
    """Apply connection events in order to the deployment's devices, and move the presence cursor, in one
    transaction. A device is online while the connection holding its id was made with its own username; edge nodes'
    bridges likewise (iot.edge_services.edge_connections_apply). Answers how many devices changed. Raises LeaseLost (nothing committed)."""
    with transaction.atomic():
        _fence(deployment_id, holder, token)
        client_ids = {e.client_id for e in events if e.client_id}
        query = Q(device_id__in=client_ids)
        if any(e.kind == "broker_reset" for e in events):
            query |= Q(online=True)
        devices = {
            d.device_id: d
            for d in Device.objects.select_for_update()
            .filter(query, deployment_id=deployment_id)
            .only("pk", "device_id", "username", *PRESENCE_FIELDS)
            .order_by("pk")
        }
        changed: set[str] = set()
        for event in events:
            if event.kind == "broker_reset":
                for each in devices.values():
                    if each.online:
                        each.online, each.disconnected_at = False, event.at
                        changed.add(each.device_id)
                continue
            device = devices.get(event.client_id)
            if device is None:
                continue
            if event.kind == "connected":
                if event.username == device.username:
                    device.online = True
                    device.connected_at = device.last_seen = event.at
                    device.client_address = event.address[:128]
                elif device.online:
                    # Another client took its id over: the broker closed the device's connection.
                    device.online, device.disconnected_at = False, event.at
                changed.add(device.device_id)
            elif event.kind == "disconnected" and device.online:
                if (
                    event.connection_started_at is not None
                    and device.connected_at is not None
                    and event.connection_started_at < device.connected_at
                ):
                    continue  # the end of an older connection, reported after the newer one began
                device.online = False
                device.disconnected_at = device.last_seen = event.at
                changed.add(device.device_id)
        if changed:
            _presence_save([devices[i] for i in changed])
        # The same events tell which edge nodes' bridges are connected (imported here: edge_services imports us).
        from iot.edge_services import edge_connections_apply

        edge_connections_apply(deployment_id=deployment_id, events=events)
        if cursor is not None:
            AgentLease.objects.filter(deployment_id=deployment_id).update(presence_cursor=cursor)
    return len(changed)


# -- the agent: outbox ------------------------------------------------------------------------------------------------


def outbox_due(*, deployment_id: int, observed_generation: int, limit: int = 500) -> list[OutboxMessage]:
    """What the agent should carry out now, oldest first: publishes, and kicks whose broker change is live."""
    return list(
        OutboxMessage.objects.filter(deployment_id=deployment_id)
        .filter(Q(kind=OutboxMessage.Kind.PUBLISH) | Q(after_generation__lte=observed_generation))
        .order_by("id")[:limit]
    )


def outbox_done(*, deployment_id: int, ids: list[int]) -> None:
    """The agent serving `deployment_id` carried these out; ids of another deployment's rows are never its to drop."""
    if ids:
        OutboxMessage.objects.filter(pk__in=ids, deployment_id=deployment_id).delete()


def shadow_history_prune(*, older_than: datetime.timedelta, deployment_ids: list[int]) -> int:
    """Drop history older than the retention, except each device's row for its current version."""
    cutoff = timezone.now() - older_than
    deleted, _ = (
        ShadowChange.objects.filter(device__deployment_id__in=deployment_ids, created_at__lt=cutoff)
        .exclude(version=F("device__shadow__version"))
        .delete()
    )
    return deleted
