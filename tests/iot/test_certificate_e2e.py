"""Certificate devices end to end on real parts: the REST API, a real Celery worker reconciling a real mosquitto, a
real platform agent, and paho clients presenting the client certificates the API issued on the mqtts_x509 port.

A certificate device connects with its certificate alone, is online, is confined to devices/{its id}/#; clients
without a certificate, or with one of another CA (another deployment's device CA included), are refused; disabling,
rotating and deleting refuse it through the CRL, reloaded without a restart: a password device on the plain
listener stays connected through all of it.
"""

import ssl

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.deployments.tls_helpers import load_cert_chain, tls_connect
from tests.iot.agent_process import agents  # noqa: F401
from tests.iot.devices import Device
from tests.iot.test_agent_e2e import premium_api, register, settle, wait_until  # noqa: F401
from tests.iot.test_certificates import make_csr

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def context(server_ca: str, certificate: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A careful client: verifies the broker against the control plane's CA, presents `certificate` if given."""
    result = ssl.create_default_context(cadata=server_ca)
    if certificate is not None:
        load_cert_chain(result, certificate, key or "")
    return result


def verdict(port, ctx) -> str:
    answer, connected = tls_connect(port, ctx)
    if connected is not None:
        connected.loop_stop()
        connected.disconnect()
    return answer


def create_certificate_device(client, url, device_id, **extra):
    response = client.post(
        f"{url}/devices", {"device_id": device_id, "credential_type": "certificate", **extra}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    settle(client, url, body["operation"])
    return body


def online(client, url, device_id) -> bool:
    return client.get(f"{url}/devices/{device_id}").json()["online"]


def test_certificate_devices_connect_stay_confined_and_are_refused_once_revoked_without_a_restart(
    premium_api,
    agents,  # noqa: F811
):
    client, url, port = premium_api
    agents()
    server_ca = client.get(f"{url}/ca.pem").content.decode()
    # The device CA and its listener come with the broker's TLS, before any device asks for a certificate.
    ports = client.get(url).json()["connection"]["ports"]
    x509_port = ports["mqtts_x509"]
    assert x509_port not in (ports["mqtt"], ports["mqtts"])

    # A password device on the plain listener, connected from here on: nothing below may restart the broker, the
    # first certificate device included.
    plain_credentials = register(client, url, "plain-1")
    plain = Device(port, "plain-1", **{k: plain_credentials[k] for k in ("username", "password")})
    assert not plain.connect().is_failure
    plain.wait_served()

    # 1. The first certificate device: a certificate of the deployment's device CA.
    cam = create_certificate_device(client, url, "cam-1")
    credentials = cam["credentials"]
    assert client.get(url).json()["connection"]["ports"]["mqtts_x509"] == x509_port

    # 2. It connects with its certificate alone (MQTT 5, to read the PUBACK reason codes), is online, is confined.
    ctx = context(server_ca, credentials["certificate"], credentials["private_key"])
    device = Device(x509_port, "cam-1", protocol=mqtt.MQTTv5, tls=ctx)
    assert not device.connect().is_failure
    wait_until(lambda: online(client, url, "cam-1"), 10, "cam-1 online")
    acks = []
    device.mqtt.on_publish = lambda c, u, mid, reason, props: acks.append((mid, reason))
    own = device.publish("devices/cam-1/telemetry", {"t": 21.5})
    other = device.publish("devices/plain-1/telemetry", {"t": 0})
    elsewhere = device.publish("factory/line-1", b"x")
    wait_until(lambda: len(acks) >= 3, 10, "three PUBACKs")
    reasons = dict(acks)
    assert not reasons[own.mid].is_failure  # accepted (0x10: no subscriber yet)
    assert reasons[other.mid].value == 135 and reasons[elsewhere.mid].value == 135  # 0x87 Not authorized
    device.update({"state": {"reported": {"lens": "clean"}}})
    device.wait_for("update/accepted")  # the agent serves it as any device

    # 3. A device with a CSR: its own key, our CN.
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cam2 = create_certificate_device(client, url, "cam-2", csr=make_csr(key, cn="cam-2-asks-for-this"))
    assert "private_key" not in cam2["credentials"]
    ctx2 = context(server_ca, cam2["credentials"]["certificate"], key_pem)
    device2 = Device(x509_port, "cam-2", tls=ctx2)
    assert not device2.connect().is_failure
    wait_until(lambda: online(client, url, "cam-2"), 10, "cam-2 online")

    # 4. Refused: no certificate; a certificate with the same CN from a CA of its own; one from another
    # deployment's device CA; a password on the certificate listener.
    assert verdict(x509_port, context(server_ca)).startswith("refused")
    from iot import certificates

    stranger_ca, stranger_key = certificates.generate_device_ca(deployment_name="dep_stranger", now=_now())
    forged = certificates.issue_device_certificate(
        ca_certificate_pem=stranger_ca, ca_private_key_pem=stranger_key, username=credentials["username"], now=_now()
    )
    assert verdict(x509_port, context(server_ca, forged.certificate_pem, forged.private_key_pem)).startswith("refused")
    other_ca_certificate, other_ca_key = _other_deployments_device_ca(client, url)
    theirs = certificates.issue_device_certificate(
        ca_certificate_pem=other_ca_certificate,
        ca_private_key_pem=other_ca_key,
        username=credentials["username"],
        now=_now(),
    )
    assert verdict(x509_port, context(server_ca, theirs.certificate_pem, theirs.private_key_pem)).startswith("refused")
    answer, _ = tls_connect(x509_port, context(server_ca), username=plain_credentials["username"], password="x")
    assert answer.startswith("refused")

    # 5. Disable: disconnected (the agent's kick), the next handshake refused (CRL, certificateHold).
    disabled = client.patch(f"{url}/devices/cam-1", {"enabled": False}, format="json")
    assert disabled.status_code == 200, disabled.content
    assert device.disconnected.wait(30), "the disabled certificate device is still connected"
    device.close()
    settle(client, url, disabled.json()["operation"])
    assert verdict(x509_port, ctx).startswith("refused")
    assert device2.connected.is_set()

    # 6. Enable: it connects again with the same certificate.
    enabled = client.patch(f"{url}/devices/cam-1", {"enabled": True}, format="json")
    settle(client, url, enabled.json()["operation"])
    assert verdict(x509_port, ctx) == "accepted"

    # 7. Rotate: the connected client with the old certificate is dropped, the old certificate refused, the new one
    # accepted.
    device = Device(x509_port, "cam-1", tls=ctx)
    assert not device.connect(subscribe=False).is_failure
    rotated = client.post(f"{url}/devices/cam-1/credentials", {}, format="json")
    assert rotated.status_code == 201, rotated.content
    new = rotated.json()["credentials"]
    settle(client, url, rotated.json()["operation"])
    assert device.disconnected.wait(30), "the rotated-out certificate is still connected"
    device.close()
    assert verdict(x509_port, ctx).startswith("refused")
    new_ctx = context(server_ca, new["certificate"], new["private_key"])
    device = Device(x509_port, "cam-1", tls=new_ctx)
    assert not device.connect(subscribe=False).is_failure
    wait_until(lambda: online(client, url, "cam-1"), 10, "cam-1 online with its new certificate")
    device.close()

    # 8. Delete: disconnected and refused for good.
    assert client.delete(f"{url}/devices/cam-2").status_code == 204
    assert device2.disconnected.wait(30), "the deleted certificate device is still connected"
    device2.close()
    wait_until(lambda: verdict(x509_port, ctx2).startswith("refused"), 30, "cam-2's certificate refused")

    # Through all of it the broker reloaded, never restarted: the password device never lost its connection.
    assert plain.connected.is_set() and not plain.disconnected.is_set()
    plain.wait_served()  # and is still served on that connection
    plain.close()


def _now():
    from django.utils import timezone

    return timezone.now()


def _other_deployments_device_ca(client, url):
    """(CA certificate, CA key) of the device CA of another Premium deployment of the same organization."""
    from controlplane import crypto
    from deployments.models import Deployment
    from iot import services
    from iot.models import DeviceCertificateAuthority

    this = Deployment.objects.get(public_id=url.rsplit("/", 1)[1])
    base = url.rsplit("/", 1)[0]
    created = client.post(base, {"name": "other", "plan": "premium", "tier": "1k", "region": "local"}, format="json")
    assert created.status_code == 202, created.content
    other = Deployment.objects.get(public_id=created.json()["deployment"]["id"])
    assert other.pk != this.pk
    services.device_create(deployment=other, actor=None, device_id="theirs", credential_type="certificate")
    authority = DeviceCertificateAuthority.objects.get(deployment=other)
    return authority.certificate_pem, crypto.decrypt_str(authority.private_key_encrypted)
