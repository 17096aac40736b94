"""Deployments' TLS: the control plane's CA, the server certificate it issues each deployment, the customer's own
certificates (create, replace, delete) and the material a broker is given.

Writes follow deployments.services: one transaction that validates (all `cryptography` work is deployments.tls's),
writes, records a configure Operation and the audit entry, and enqueues a reconcile on commit. Private keys are
stored only as Fernet tokens and leave this module only inside a BrokerSpec; nothing here calls a driver.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import secrets
import socket

from django.db import transaction
from django.utils import timezone

from controlplane import crypto, db
from controlplane.errors import Conflict, NotFound, ValidationFailed
from controlplane.validators import find_control_character
from deployments import tls
from deployments.drivers.base import TlsMaterial
from deployments.models import (
    CertificateAuthority,
    Deployment,
    DeploymentEvent,
    Operation,
    Region,
    TlsCertificate,
)
from deployments.services import _configure, _locked, _refuse_if_deleted
from organizations.access import Principal, acting_user

logger = logging.getLogger(__name__)

# An issued certificate is renewed this long before it expires (it is valid tls.SERVER_VALIDITY), well before the
# 30-day "certificate expiring" alert would speak of it.
RENEW_BEFORE = datetime.timedelta(days=60)
# The Secret (kubernetes.io/tls) the Kubernetes driver writes the material into, in the deployment's namespace.
TLS_SECRET_NAME = "broker-tls"
# Names a customer may add to the issued certificate, beyond the deployment's own.
MAX_EXTRA_SANS = 20


# -- the control plane's CA ---------------------------------------------------------------------------------------------


def certificate_authority(*, now: datetime.datetime | None = None) -> CertificateAuthority:
    """The control plane's CA, created on first use.

    Lazily, rather than in a migration: the key is generated and encrypted by the running control plane with the
    field-encryption keys it actually uses (a migration job may run with other settings, and every test database
    would carry a CA nobody asked for), at the moment something needs it. The advisory lock makes concurrent first
    uses wait for one creation instead of generating keys to throw away; the unique name is the guarantee."""
    found = CertificateAuthority.objects.filter(name="default").first()
    if found is not None:
        return found
    with transaction.atomic():
        db.xact_lock(db.LockSpace.CERTIFICATE_AUTHORITY, 0)
        found = CertificateAuthority.objects.filter(name="default").first()
        if found is not None:
            return found
        now = now or timezone.now()
        # A name of its own per installation: two installations' CAs in one trust store never shadow each other.
        common_name = f"MQTT Control Plane CA {secrets.token_hex(4)}"
        certificate_pem, key_pem = tls.generate_certificate_authority(common_name=common_name, now=now)
        facts = tls.certificate_facts(certificate_pem)
        authority = CertificateAuthority.objects.create(
            certificate_pem=certificate_pem,
            private_key_encrypted=crypto.encrypt_str(key_pem),
            subject=facts.subject,
            not_before=facts.not_before,
            not_after=facts.not_after,
            fingerprint_sha256=facts.fingerprint_sha256,
            created_at=now,
        )
        logger.info("created the control plane's CA %s (%s)", facts.subject, facts.fingerprint_sha256)
        return authority


# -- host names -------------------------------------------------------------------------------------------------------


def deployment_host_names(deployment: Deployment) -> list[str]:
    """The names clients reach the deployment's brokers by: what the region gives (a local region's listen address,
    and the loopback names when it listens on every address; a Kubernetes region's in-cluster Service names) and
    the host `connection.host` shows once the broker serves (a load balancer's address). First is the common name."""
    from deployments import manifests

    region = deployment.region
    names: list[str] = []
    if region.driver == Region.Driver.LOCAL:
        address = ipaddress.ip_address(region.bind_address)
        if address.is_unspecified:
            names += ["localhost", "127.0.0.1", "::1", socket.gethostname()]
        else:
            names.append(str(address))
            if address.is_loopback:
                names.append("localhost")
    else:
        namespace = manifests.namespace_name(deployment.public_id)
        service = manifests.listeners_service_name()
        names += [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    host = (deployment.endpoints or {}).get("host") or ""
    if host:
        names.append(host)
    cleaned: list[str] = []
    for name in names:
        try:
            name = tls.normalise_host_name(name)
        except ValueError:
            continue
        try:
            if ipaddress.ip_address(name).is_unspecified:
                continue
        except ValueError:
            pass
        if name not in cleaned:
            cleaned.append(name)
    return cleaned


def _connection_host(deployment: Deployment) -> list[str]:
    """The name the API tells clients to connect to (`connection.host`), or the region's first name before the
    broker has served: what a customer's certificate is warned about not covering."""
    names = deployment_host_names(deployment)
    host = (deployment.endpoints or {}).get("host") or ""
    try:
        host = tls.normalise_host_name(host) if host else ""
    except ValueError:
        host = ""
    return [host] if host in names else names[:1]


# -- the issued server certificate -----------------------------------------------------------------------------------


def _fill(row: TlsCertificate, facts: tls.CertificateFacts) -> None:
    row.subject, row.common_name, row.issuer = facts.subject, facts.common_name, facts.issuer
    row.sans = list(facts.sans)
    row.not_before, row.not_after = facts.not_before, facts.not_after
    row.fingerprint_sha256, row.key_type = facts.fingerprint_sha256, facts.key_type


@transaction.atomic
def server_certificate_ensure(*, deployment: Deployment, now: datetime.datetime | None = None) -> bool:
    """Issue the deployment's server certificate from the control plane's CA if it has none, renew it when it
    expires within RENEW_BEFORE, and reissue it when its names no longer cover the deployment's host names. True if
    a certificate was written. Called by the reconciler before it builds the spec; raises ValueError when the CA's
    key cannot be decrypted."""
    now = now or timezone.now()
    authority = certificate_authority(now=now)
    current = (
        TlsCertificate.objects.select_for_update()
        .filter(deployment=deployment, kind=TlsCertificate.Kind.SERVER, source=TlsCertificate.Source.CONTROL_PLANE)
        .first()
    )
    # The names a customer asked for (tls_certificate_issue) stay on every renewal, after the deployment's own.
    # A name stored with an IPv6 zone (before zones were refused) is the address alone, which is what was issued.
    extras = [name.split("%", 1)[0] for name in current.host_names] if current is not None else []
    wanted = _with_extras(deployment_host_names(deployment), extras)
    if (
        current is not None
        and current.issuer == authority.subject
        and current.not_after - now > RENEW_BEFORE
        and all(tls.names_cover(current.sans, host) for host in wanted)
    ):
        return False
    certificate_pem, key_pem = tls.issue_server_certificate(
        ca_certificate_pem=authority.certificate_pem,
        ca_private_key_pem=crypto.decrypt_str(authority.private_key_encrypted),
        host_names=wanted,
        now=now,
    )
    facts = tls.certificate_facts(certificate_pem)
    row = current or TlsCertificate(
        deployment=deployment, kind=TlsCertificate.Kind.SERVER, source=TlsCertificate.Source.CONTROL_PLANE
    )
    row.certificate_pem, row.chain_pem = certificate_pem, ""
    row.private_key_encrypted = crypto.encrypt_str(key_pem)
    _fill(row, facts)
    row.created_at = now
    row.save()
    verb = "issued" if current is None else "renewed"
    DeploymentEvent.objects.create(
        deployment=deployment,
        kind=f"tls.certificate.{verb}",
        message=f"server certificate {verb} by the control plane's CA for {', '.join(facts.sans)}, valid until "
        f"{facts.not_after:%Y-%m-%d}",
        created_at=now,
    )
    return True


def _with_extras(names: list[str], extras: list[str]) -> list[str]:
    return list(dict.fromkeys([*names, *extras]))


def _extra_san_error(value: object) -> str | None:
    """Why `value` cannot be a name of the issued certificate (our CA's policy), or None."""
    if not isinstance(value, str) or not value:
        return "an empty name"
    if find_control_character(value) is not None:
        return "control characters are not allowed"
    if "*" in value:
        return "wildcard names are not issued by the control plane's CA: name each host"
    try:
        name = tls.normalise_host_name(value)
    except ValueError:
        return "not a DNS name (letters, digits and hyphens in dot-separated labels, RFC 1123) or an IP address"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    if address.is_unspecified or address.is_multicast:
        return "an unspecified or multicast address names no host"
    return None


def clean_extra_sans(values: object) -> list[str]:
    """The extra names as the certificate will carry them (normalised, duplicates dropped, in order). Raises
    ValidationFailed on `extra_sans`, naming each name at fault by its position."""
    if values is None:
        return []
    if not isinstance(values, list | tuple):
        raise ValidationFailed({"extra_sans": "A list of DNS names and IP addresses."})
    if len(values) > MAX_EXTRA_SANS:
        raise ValidationFailed({"extra_sans": f"At most {MAX_EXTRA_SANS} names ({len(values)} given)."})
    problems = []
    for position, value in enumerate(values, start=1):
        if (problem := _extra_san_error(value)) is not None:
            shown = repr(value) if problem.startswith("control") else f"{value!r}"[:80]
            problems.append(f"Name {position} ({shown}): {problem}.")
    if problems:
        raise ValidationFailed({"extra_sans": problems})
    return list(dict.fromkeys(tls.normalise_host_name(v) for v in values))


# A broker's in-cluster Service names (manifests.listeners_service_name() in its namespace): the control plane's,
# given to each deployment for its own namespace only.
_IN_CLUSTER = (".svc", ".svc.cluster.local", ".cluster.local")


def _platform_host() -> str:
    from urllib.parse import urlsplit

    from django.conf import settings

    return (urlsplit(settings.PUBLIC_URL).hostname or "").lower()


def _served_for_others(deployment: Deployment, names: list[str]) -> set[str]:
    """Those of `names` (normalised) this installation serves for someone else: the control plane's own host, a
    broker's in-cluster name, another organization's deployment's address or a name on one of its certificates (or
    a wildcard covering it). Every customer's devices trust the one CA, so a certificate it signed for such a name,
    served by this deployment, would pass for that service. Within one organization names are its own business."""
    own = set(deployment_host_names(deployment))
    asked = [name for name in names if name not in own]
    if not asked:
        return set()
    taken = {name for name in asked if name == _platform_host() or name.endswith(_IN_CLUSTER)}
    others = Deployment.objects.filter(deleted_at__isnull=True).exclude(
        project__organization_id=deployment.project.organization_id
    )
    taken |= {
        str(host).lower() for host in others.filter(endpoints__host__in=asked).values_list("endpoints__host", flat=True)
    }
    covering = {}
    for name in asked:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if "." in name:
                covering[name] = "*." + name.split(".", 1)[1]
    looked_for = sorted({*asked, *covering.values()})
    for sans in TlsCertificate.objects.filter(deployment__in=others, sans__has_any_keys=looked_for).values_list(
        "sans", flat=True
    ):
        held = {str(san).lower() for san in sans}
        taken |= {name for name in asked if name in held or covering.get(name) in held}
    return taken


def _refuse_names_served_for_others(deployment: Deployment, given: list[object], extras: list[str]) -> None:
    taken = _served_for_others(deployment, extras)
    if not taken:
        return
    problems = []
    for position, value in enumerate(given, start=1):
        name = tls.normalise_host_name(value)
        if name in taken:
            taken.discard(name)
            problems.append(
                f"Name {position} ({name!r}): this installation serves that name for someone else, and its CA, which "
                "every customer's devices trust, issues it to no one else. If the name is yours, upload a certificate "
                "of your own for it."
            )
    raise ValidationFailed({"extra_sans": problems})


@transaction.atomic
def tls_certificate_issue(
    *,
    deployment: Deployment,
    actor: Principal | None,
    extra_sans: list[str] | None = None,
    now: datetime.datetime | None = None,
) -> tuple[TlsCertificate, Operation]:
    """Issue the deployment's server certificate from the control plane's CA now, for its own host names and
    `extra_sans` (kept on renewals), replacing the issued one (a new key and serial: a rotation). The brokers take
    it up through the reconcile the configure operation starts; a customer's own server certificate, while there,
    is still what they serve (the row carries that warning). Returns the row and the operation."""
    now = now or timezone.now()
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    extras = clean_extra_sans(extra_sans)
    _refuse_names_served_for_others(deployment, list(extra_sans or []), extras)
    authority = certificate_authority(now=now)
    names = _with_extras(deployment_host_names(deployment), extras)
    if not names:
        raise Conflict("The deployment has no host name to issue a certificate for yet.")
    certificate_pem, key_pem = tls.issue_server_certificate(
        ca_certificate_pem=authority.certificate_pem,
        ca_private_key_pem=crypto.decrypt_str(authority.private_key_encrypted),
        host_names=names,
        now=now,
    )
    facts = tls.certificate_facts(certificate_pem)
    current = (
        TlsCertificate.objects.select_for_update()
        .filter(deployment=deployment, kind=TlsCertificate.Kind.SERVER, source=TlsCertificate.Source.CONTROL_PLANE)
        .first()
    )
    replaced = current.fingerprint_sha256 if current is not None else None
    row = current or TlsCertificate(
        deployment=deployment, kind=TlsCertificate.Kind.SERVER, source=TlsCertificate.Source.CONTROL_PLANE
    )
    row.certificate_pem, row.chain_pem = certificate_pem, ""
    row.private_key_encrypted = crypto.encrypt_str(key_pem)
    _fill(row, facts)
    row.host_names = extras
    row.created_by, row.created_at = acting_user(actor), now
    own = TlsCertificate.objects.filter(
        deployment=deployment, kind=TlsCertificate.Kind.SERVER, source=TlsCertificate.Source.CUSTOMER
    ).exists()
    row.warnings = (
        ["A server certificate of your own is served instead of this one until you remove it."] if own else []
    )
    row.save()
    DeploymentEvent.objects.create(
        deployment=deployment,
        kind="tls.certificate.issued",
        message=f"server certificate issued on request by the control plane's CA for {', '.join(facts.sans)}, "
        f"valid until {facts.not_after:%Y-%m-%d}",
        created_at=now,
    )
    operation = _configure(
        deployment,
        actor,
        "tls_certificate.issue",
        {
            "certificate": row.public_id,
            "sans": list(facts.sans),
            "extra_sans": extras,
            "serial": facts.serial_number,
            "fingerprint_sha256": row.fingerprint_sha256,
            "not_after": row.not_after.isoformat(),
            "replaced_fingerprint_sha256": replaced,
        },
    )
    return row, operation


# -- the customer's certificates ---------------------------------------------------------------------------------------


def _only_for(kind: str, **given: object) -> None:
    errors = {name: f"Only for kind {kind}." for name, value in given.items() if value is not None}
    if errors:
        raise ValidationFailed(errors)


@transaction.atomic
def tls_certificate_create(
    *,
    deployment: Deployment,
    actor: Principal | None,
    kind: str,
    certificate: str,
    private_key: str | None = None,
    chain: str | None = None,
    host_names: list[str] | None = None,
    require_client_certificate: bool | None = None,
    use_identity_as_username: bool | None = None,
    now: datetime.datetime | None = None,
) -> tuple[TlsCertificate, Operation, str | None]:
    """Add the customer's server certificate (one-way TLS; it replaces the issued one) or client CA (two-way TLS).
    A certificate of the same kind already there is replaced in the same transaction. Returns the row, the configure
    operation and the id of the certificate it replaced, if any. Nothing is written unless every check passes."""
    now = now or timezone.now()
    deployment = _locked(deployment)
    _refuse_if_deleted(deployment)
    row = TlsCertificate(
        deployment=deployment,
        kind=kind,
        source=TlsCertificate.Source.CUSTOMER,
        created_by=acting_user(actor),
        created_at=now,
    )
    if kind == TlsCertificate.Kind.SERVER:
        _only_for(
            "client_ca",
            require_client_certificate=require_client_certificate,
            use_identity_as_username=use_identity_as_username,
        )
        if private_key is None:
            raise ValidationFailed({"private_key": "Required for a server certificate: the key it was issued for."})
        checked = tls.check_server_certificate(
            certificate=certificate,
            private_key=private_key,
            chain=chain or "",
            host_names=host_names or [],
            our_host_names=_connection_host(deployment),
            now=now,
        )
        row.certificate_pem, row.chain_pem = checked.certificate_pem, checked.chain_pem
        row.private_key_encrypted = crypto.encrypt_str(checked.private_key_pem)
        row.host_names = [tls.normalise_host_name(h) for h in host_names or []]
        facts, warnings = checked.facts, list(checked.warnings)
    elif kind == TlsCertificate.Kind.CLIENT_CA:
        _only_for("server", private_key=private_key, chain=chain, host_names=host_names)
        require = True if require_client_certificate is None else require_client_certificate
        identity = bool(use_identity_as_username)
        if identity and not require:
            raise ValidationFailed(
                {
                    "use_identity_as_username": "Needs require_client_certificate: the username comes from the certificate."
                }
            )
        if not require and deployment.region.driver == Region.Driver.LOCAL:
            raise ValidationFailed(
                {
                    "require_client_certificate": "This region runs mosquitto, which either requires a client "
                    "certificate or never asks for one: two-way TLS here requires it."
                }
            )
        checked_ca = tls.check_client_ca(certificate=certificate, now=now)
        row.certificate_pem = checked_ca.certificate_pem
        row.require_client_certificate, row.use_identity_as_username = require, identity
        facts, warnings = checked_ca.facts, list(checked_ca.warnings)
    else:
        raise ValidationFailed({"kind": f"Unknown kind {kind!r}: server or client_ca."})
    _fill(row, facts)
    row.warnings = warnings
    existing = (
        TlsCertificate.objects.select_for_update()
        .filter(deployment=deployment, kind=kind, source=TlsCertificate.Source.CUSTOMER)
        .first()
    )
    replaced = existing.public_id if existing is not None else None
    if existing is not None:
        existing.delete()
    row.save()
    operation = _configure(
        deployment,
        actor,
        "tls_certificate.create",
        {
            "certificate": row.public_id,
            "kind": kind,
            "subject": row.subject,
            "fingerprint_sha256": row.fingerprint_sha256,
            "not_after": row.not_after.isoformat(),
            "replaced": replaced,
        },
    )
    return row, operation, replaced


@transaction.atomic
def tls_certificate_delete(*, certificate: TlsCertificate, actor: Principal | None) -> Operation:
    """Remove a customer's certificate: a server certificate gives way to the issued one again, a client CA turns
    two-way TLS off. The issued certificate itself cannot be removed (409): upload one of your own instead."""
    deployment = _locked(certificate.deployment)
    _refuse_if_deleted(deployment)
    if certificate.source == TlsCertificate.Source.CONTROL_PLANE:
        raise Conflict(
            "This certificate is issued and renewed by the control plane; it is served unless a server certificate "
            "of your own replaces it (upload one with kind server)."
        )
    public_id, kind, subject = certificate.public_id, certificate.kind, certificate.subject
    deleted, _ = TlsCertificate.objects.filter(pk=certificate.pk).delete()
    if not deleted:  # another request deleted it while this one waited for the deployment's lock
        raise NotFound("No such certificate: it was deleted.")
    return _configure(
        deployment, actor, "tls_certificate.delete", {"certificate": public_id, "kind": kind, "subject": subject}
    )


# -- reads ------------------------------------------------------------------------------------------------------------


def active_server_certificate(deployment: Deployment) -> TlsCertificate | None:
    """What the deployment's TLS listeners serve: the customer's certificate while it exists, else the issued one."""
    rows = {
        row.source: row for row in TlsCertificate.objects.filter(deployment=deployment, kind=TlsCertificate.Kind.SERVER)
    }
    return rows.get(TlsCertificate.Source.CUSTOMER) or rows.get(TlsCertificate.Source.CONTROL_PLANE)


def issued_certificate_covers(deployment_id: int, host: str) -> bool:
    """Whether the deployment's issued certificate names `host` (an address that is no host name counts as named:
    there is nothing to add for it). False when none was issued."""
    try:
        host = tls.normalise_host_name(host)
    except ValueError:
        return True
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return True
    except ValueError:
        pass  # a DNS name
    sans = (
        TlsCertificate.objects.filter(deployment_id=deployment_id, kind="server", source="control_plane")
        .values_list("sans", flat=True)
        .first()
    )
    return sans is not None and tls.names_cover(sans, host)


def broker_tls_material(deployment: Deployment) -> TlsMaterial | None:
    """The TLS part of the deployment's BrokerSpec, keys decrypted; None while no server certificate exists (the
    TLS listeners then stay off). Raises ValueError when a stored key cannot be decrypted."""
    rows = list(TlsCertificate.objects.filter(deployment=deployment))
    server = next((r for r in rows if r.kind == "server" and r.source == "customer"), None) or next(
        (r for r in rows if r.kind == "server"), None
    )
    if server is None:
        return None
    client_ca = next((r for r in rows if r.kind == TlsCertificate.Kind.CLIENT_CA), None)
    return TlsMaterial(
        secret_name=TLS_SECRET_NAME,
        certificate_pem=server.certificate_pem + server.chain_pem,
        private_key_pem=crypto.decrypt_str(server.private_key_encrypted),
        client_ca_pem=client_ca.certificate_pem if client_ca is not None else "",
        has_client_ca=client_ca is not None,
        verify_peer=client_ca is not None,
        require_client_certificate=client_ca.require_client_certificate if client_ca is not None else False,
        use_identity_as_username=client_ca.use_identity_as_username if client_ca is not None else False,
    )
