"""What a Premium deployment's broker must hold for the IoT platform, given to the reconciler through the
deployments.extensions spec contributor: the agent's user (full access, this deployment only) and one user per
enabled device, confined to `devices/{device_id}/#` whatever the deployment's ACL rules say (a certificate device as
a user without password); on EMQX also every revoked, unexpired device certificate's username, denied everything;
and, through the device CA source, the deployment's device CA and CRL.

It reads devices and makes the agent's credential once (and re-signs a CRL nearing its next update); it never
changes a device or talks to a broker.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from deployments.drivers.base import DeviceCaMaterial, MqttCredential
from deployments.models import Deployment, Plan
from iot import certificates
from iot.models import Device, DeviceCertificate, DeviceCertificateAuthority


def device_topics(device_id: str) -> tuple[str, ...]:
    return (f"devices/{device_id}/#",)


def spec_users(deployment: Deployment) -> list[MqttCredential]:
    if deployment.plan.code != Plan.Code.PREMIUM:
        return []
    from iot.services import agent_credential_ensure

    agent = agent_credential_ensure(deployment)
    users = [
        MqttCredential(username=agent.username, salt_b64=agent.salt_b64, hash_b64=agent.hash_b64, is_superuser=True)
    ]
    rows = (
        Device.objects.filter(deployment=deployment, enabled=True)
        .order_by("username")
        .values_list("username", "salt_b64", "hash_b64", "iterations", "device_id", "credential_type")
    )
    users += [
        MqttCredential(
            username=username,
            salt_b64=salt_b64,
            hash_b64=hash_b64,
            iterations=iterations,
            confined_to=device_topics(device_id),
            certificate_only=credential_type == Device.CredentialType.CERTIFICATE,
        )
        for username, salt_b64, hash_b64, iterations, device_id, credential_type in rows
    ]
    if deployment.region.driver != "local":
        users += _revoked_identities(deployment, {user.username for user in users})
    return users


def _revoked_identities(deployment: Deployment, live: set[str]) -> list[MqttCredential]:
    """A user denied everything for each username a revoked (held, superseded, or deleted device's) certificate
    still carries until it expires. EMQX takes a CRL from its cache, fetched again at most once a minute, so it may
    accept such a certificate at a handshake meanwhile, and without a password there is no user record to remove:
    this list of rules is what refuses it at once (EMQX checks a username's rules before the rules for all, so the
    deployment's rules for everyone never reach it; a rule for its client id would, as for any device: EMQX checks
    those first). mosquitto reloads its crlfile with every change and needs none."""
    now = timezone.now()
    usernames = (
        DeviceCertificate.objects.filter(deployment=deployment, revoked_at__isnull=False, not_after__gt=now)
        .exclude(username__in=live)
        .order_by("username")
        .values_list("username", flat=True)
        .distinct()
    )
    return [
        MqttCredential(username=username, salt_b64="", hash_b64="", confined_to=(), certificate_only=True)
        for username in usernames
    ]


def spec_device_ca(deployment: Deployment) -> DeviceCaMaterial | None:
    """The deployment's device CA and CRL. The CA is made with the broker's first spec that has TLS, before any
    device asks for a certificate: the mqtts_x509 listener is then in the broker's configuration from the start, and
    a first certificate device only reloads the broker (a new listener would restart it, disconnecting every client
    once; on EMQX the CA's file is a key of the TLS Secret from the start). A CRL nearing its next update is signed
    again first: once that time passes, OpenSSL (mosquitto) and Erlang's ssl (EMQX, which fetches the CRL from
    iot.pki) would refuse every device certificate."""
    if deployment.plan.code != Plan.Code.PREMIUM:
        return None
    authority = DeviceCertificateAuthority.objects.filter(deployment=deployment).first()
    if authority is None:
        from iot.services import device_ca_ensure

        authority = device_ca_ensure(deployment)
    now = timezone.now()
    if authority.crl_next_update - now < certificates.CRL_REFRESH_BEFORE:
        from iot.services import device_crl_refresh

        with transaction.atomic():
            authority = DeviceCertificateAuthority.objects.select_for_update().get(pk=authority.pk)
            if authority.crl_next_update - now < certificates.CRL_REFRESH_BEFORE:
                device_crl_refresh(authority, now)
    return DeviceCaMaterial(ca_pem=authority.certificate_pem, crl_pem=authority.crl_pem)
