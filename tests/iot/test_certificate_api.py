"""Certificate devices through the REST API: what is answered once, what is recorded, bad input, roles, tenancy,
and what the broker is given (users, device CA, CRL)."""

import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.iot.conftest import premium_deployment
from tests.iot.test_certificates import make_csr, tampered

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


def fields(response):
    assert response.status_code == 400, response.content[:500]
    assert response["Content-Type"] == PROBLEM, response.content[:300]
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def create(client, base, device_id, **extra):
    response = client.post(f"{base}/devices", {"device_id": device_id, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def crl_serials(deployment):
    from iot.models import DeviceCertificateAuthority

    authority = DeviceCertificateAuthority.objects.get(deployment=deployment)
    return {format(r.serial_number, "x"): r for r in x509.load_pem_x509_crl(authority.crl_pem.encode())}


def test_certificate_device_gets_a_certificate_key_and_ca_shown_once_when_created_without_csr(client, base, premium):
    from audit.models import AuditEvent
    from iot.models import Device, DeviceCertificate, DeviceCertificateAuthority

    body = create(client, base, "cam-1", credential_type="certificate")
    credentials = body["credentials"]
    assert credentials["type"] == "certificate" and "password" not in credentials
    certificate = x509.load_pem_x509_certificate(credentials["certificate"].encode())
    authority = x509.load_pem_x509_certificate(credentials["ca_certificate"].encode())
    certificate.verify_directly_issued_by(authority)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == credentials["username"]
    assert credentials["username"] == body["username"]
    assert "BEGIN PRIVATE KEY" in credentials["private_key"]
    assert body["credential_type"] == "certificate"
    assert body["certificate"]["fingerprint_sha256"] == credentials["fingerprint_sha256"]
    assert body["certificate"]["serial"] == format(certificate.serial_number, "x")
    # The key is never kept, and never shown again.
    device = Device.objects.get(device_id="cam-1")
    assert device.salt_b64 == "" and device.hash_b64 == ""
    stored = json.dumps(
        [
            list(Device.objects.values()),
            list(DeviceCertificate.objects.values()),
            list(DeviceCertificateAuthority.objects.values()),
        ],
        default=str,
    )
    key_body = credentials["private_key"].splitlines()[1]
    assert key_body not in stored
    shown = client.get(f"{base}/devices/cam-1").json()
    assert "credentials" not in shown and "PRIVATE KEY" not in json.dumps(shown)
    assert shown["certificate"] == body["certificate"]
    assert "-----BEGIN" not in DeviceCertificateAuthority.objects.get().private_key_encrypted
    event = AuditEvent.objects.get(action="device.create")
    assert event.summary["credential_type"] == "certificate"
    assert event.summary["certificate"]["serial"] == body["certificate"]["serial"]
    assert "PRIVATE" not in json.dumps(event.summary)


def test_password_devices_answer_their_type_beside_username_and_password_when_created(client, base):
    body = create(client, base, "plain")
    assert body["credentials"]["type"] == "password" and body["credentials"]["password"]
    assert body["credential_type"] == "password" and body["certificate"] is None


def test_csr_device_certificate_is_for_the_csr_key_with_our_cn_and_no_key_answered_when_created(client, base):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = create(client, base, "cam-2", credential_type="certificate", csr=make_csr(key, cn="$controlplane-agent"))
    credentials = body["credentials"]
    assert "private_key" not in credentials
    certificate = x509.load_pem_x509_certificate(credentials["certificate"].encode())
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()
    assert certificate.subject.rfc4514_string() == f"CN={body['username']}"


def test_one_device_ca_per_deployment_is_made_by_the_first_certificate_device_when_the_reconciler_made_none(
    client, base, premium, owner_org
):
    from iot.models import DeviceCertificateAuthority

    create(client, base, "plain")
    assert not DeviceCertificateAuthority.objects.exists()
    one = create(client, base, "a", credential_type="certificate")["credentials"]["ca_certificate"]
    two = create(client, base, "b", credential_type="certificate")["credentials"]["ca_certificate"]
    assert one == two and DeviceCertificateAuthority.objects.count() == 1
    other = premium_deployment(owner_org, name="other")
    from iot import services

    _device, credentials, _op = services.device_create(
        deployment=other, actor=None, device_id="a", credential_type="certificate"
    )
    assert credentials.ca_certificate_pem != one and DeviceCertificateAuthority.objects.count() == 2


def _bad_csrs():
    weak = make_csr(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    return [
        ({"credential_type": "certificate", "csr": "not a csr"}, "csr", "Not PEM"),
        (
            {"credential_type": "certificate", "csr": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            "csr",
            "Expected exactly one CERTIFICATE REQUEST",
        ),
        ({"credential_type": "certificate", "csr": tampered(make_csr())}, "csr", "signature does not verify"),
        ({"credential_type": "certificate", "csr": weak}, "csr", "too weak"),
        ({"credential_type": "certificate", "csr": make_csr().replace("\n", "\x07", 1)}, "csr", "control characters"),
        ({"credential_type": "certificate", "csr": 12}, "csr", "Not PEM"),
        ({"credential_type": "password", "csr": make_csr()}, "csr", "only given with"),
        ({"credential_type": "x509"}, "credential_type", ""),
    ]


@pytest.mark.parametrize("payload, field, message", _bad_csrs())
def test_bad_certificate_input_answers_400_naming_the_field_and_stores_nothing_when_posted(
    client, base, payload, field, message
):
    from audit.models import AuditEvent
    from iot.models import Device, DeviceCertificate, DeviceCertificateAuthority

    errors = fields(client.post(f"{base}/devices", {"device_id": "cam", **payload}, format="json"))
    assert field in errors and message in errors[field], errors
    assert not Device.objects.exists() and not DeviceCertificate.objects.exists()
    assert not DeviceCertificateAuthority.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="device.").exists()


@pytest.mark.parametrize("payload, field, message", _bad_csrs())
def test_bad_certificate_input_answers_400_and_keeps_the_old_credentials_when_rotating(
    client, base, payload, field, message
):
    from iot.models import Device

    before = create(client, base, "cam", credential_type="certificate")
    errors = fields(client.post(f"{base}/devices/cam/credentials", payload, format="json"))
    assert field in errors and message in errors[field], errors
    device = Device.objects.get(device_id="cam")
    assert device.username == before["username"] and device.credential_type == "certificate"
    assert client.get(f"{base}/devices/cam").json()["certificate"] == before["certificate"]


def test_disable_holds_the_certificate_on_the_crl_and_enable_releases_it_when_patched(client, base, premium):
    body = create(client, base, "cam", credential_type="certificate")
    serial = body["certificate"]["serial"]
    assert crl_serials(premium) == {}
    assert client.patch(f"{base}/devices/cam", {"enabled": False}, format="json").status_code == 200
    held = crl_serials(premium)
    assert list(held) == [serial]
    assert (
        held[serial].extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.certificate_hold
    )
    assert client.get(f"{base}/devices/cam").json()["certificate"]["serial"] == serial
    assert client.patch(f"{base}/devices/cam", {"enabled": True}, format="json").status_code == 200
    assert crl_serials(premium) == {}


def test_rotation_supersedes_the_old_certificate_and_issues_a_new_one_when_posted(client, base, premium):
    from audit.models import AuditEvent
    from iot.models import OutboxMessage

    old = create(client, base, "cam", credential_type="certificate")
    response = client.post(f"{base}/devices/cam/credentials", {}, format="json")
    assert response.status_code == 201, response.content
    new = response.json()
    assert new["credentials"]["type"] == "certificate" and new["username"] != old["username"]
    assert new["certificate"]["serial"] != old["certificate"]["serial"]
    revoked = crl_serials(premium)
    assert list(revoked) == [old["certificate"]["serial"]]
    reason = revoked[old["certificate"]["serial"]].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.superseded
    assert OutboxMessage.objects.filter(kind="kick", client_id="cam").exists()
    event = AuditEvent.objects.get(action="device.credentials.rotate")
    assert event.summary["revoked"] == [old["certificate"]["serial"]]


def test_enabling_again_keeps_the_replaced_certificates_disconnect_when_both_are_pending(client, base, premium):
    # mosquitto keeps a client whose certificate was replaced connected through the reload: that disconnect must
    # stay when the device is disabled and enabled again before the agent carried it out; the disable's goes.
    from iot.models import OutboxMessage

    create(client, base, "cam", credential_type="certificate")
    assert client.post(f"{base}/devices/cam/credentials", {}, format="json").status_code == 201
    assert client.patch(f"{base}/devices/cam", {"enabled": False}, format="json").status_code == 200
    assert client.patch(f"{base}/devices/cam", {"enabled": True}, format="json").status_code == 200
    kicks = OutboxMessage.objects.filter(kind="kick", client_id="cam")
    assert list(kicks.values_list("reason", flat=True)) == ["credentials"]


def test_rotation_switches_between_password_and_certificate_both_ways_when_asked(client, base, premium):
    from deployments.passwords import verify_mqtt_password
    from iot import broker
    from iot.models import Device

    create(client, base, "dev")
    to_certificate = client.post(
        f"{base}/devices/dev/credentials", {"credential_type": "certificate", "csr": make_csr()}, format="json"
    )
    assert to_certificate.status_code == 201, to_certificate.content
    body = to_certificate.json()
    assert body["credential_type"] == "certificate" and "private_key" not in body["credentials"]
    user = next(u for u in broker.spec_users(premium) if u.username == body["username"])
    assert user.certificate_only and user.confined_to == ("devices/dev/#",)
    to_password = client.post(f"{base}/devices/dev/credentials", {"credential_type": "password"}, format="json")
    assert to_password.status_code == 201, to_password.content
    again = to_password.json()
    assert again["credentials"]["type"] == "password" and again["certificate"] is None
    device = Device.objects.get(device_id="dev")
    from deployments.drivers.base import MqttCredential

    assert verify_mqtt_password(
        again["credentials"]["password"], MqttCredential(device.username, device.salt_b64, device.hash_b64)
    )
    assert list(crl_serials(premium)) == [body["certificate"]["serial"]]


def test_delete_revokes_the_certificate_for_good_when_asked(client, base, premium):
    from iot.models import DeviceCertificate

    body = create(client, base, "cam", credential_type="certificate")
    assert client.delete(f"{base}/devices/cam").status_code == 204
    revoked = crl_serials(premium)
    reason = revoked[body["certificate"]["serial"]].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.cessation_of_operation
    row = DeviceCertificate.objects.get()
    assert row.device is None and row.device_identifier == "cam"


def test_broker_spec_gets_the_device_ca_and_crl_and_no_password_for_certificate_devices_when_built(
    client, base, premium
):
    from deployments.drivers.local import LocalDriver
    from deployments.reconcile import build_spec
    from deployments.tls_services import server_certificate_ensure

    assert build_spec(premium).device_ca is None
    body = create(client, base, "cam", credential_type="certificate")
    create(client, base, "plain")
    server_certificate_ensure(deployment=premium)
    premium.refresh_from_db()
    spec = build_spec(premium)
    assert spec.device_ca is not None and spec.device_ca.ca_pem == body["credentials"]["ca_certificate"]
    assert x509.load_pem_x509_crl(spec.device_ca.crl_pem.encode()) is not None
    passwd = LocalDriver(root="/nonexistent")._render_passwd(spec)
    assert body["username"] not in passwd and "$device-" in passwd
    from deployments.drivers.local import render_acl

    acl = render_acl(spec)[0]
    assert f"user {body['username']}\ntopic readwrite devices/cam/#\n" in acl


def test_viewer_and_other_organizations_cannot_create_or_rotate_certificate_devices(
    owner_org, premium, key_client, base, org_factory, client
):
    from iot.models import Device
    from organizations.roles import Role

    create(client, base, "cam", credential_type="certificate")
    auditor_user, _ = owner_org.add_member(roles=[Role.AUDITOR])
    _key, secret = owner_org.key_for(auditor_user, role=Role.AUDITOR)
    auditor = key_client(secret)
    assert (
        auditor.post(f"{base}/devices", {"device_id": "x", "credential_type": "certificate"}, format="json").status_code
        == 403
    )
    assert auditor.post(f"{base}/devices/cam/credentials", {}, format="json").status_code == 403
    outsider = key_client(org_factory().owner_secret)
    assert (
        outsider.post(
            f"{base}/devices", {"device_id": "x", "credential_type": "certificate"}, format="json"
        ).status_code
        == 404
    )
    assert outsider.post(f"{base}/devices/cam/credentials", {}, format="json").status_code == 404
    assert list(Device.objects.values_list("device_id", flat=True)) == ["cam"]


def test_certificate_devices_are_refused_on_kubernetes_regions_when_crls_would_not_be_served_over_plain_http(
    owner_org, settings
):
    from controlplane.errors import ValidationFailed
    from iot import services
    from iot.models import Device

    deployment = premium_deployment(owner_org)
    region = deployment.region
    type(region).objects.filter(pk=region.pk).update(driver="kubernetes")
    deployment.refresh_from_db()
    settings.PKI_BASE_URL = "https://cloud.example.com"
    with pytest.raises(ValidationFailed) as refused:
        services.device_create(deployment=deployment, actor=None, device_id="cam", credential_type="certificate")
    assert "PKI_BASE_URL" in str(refused.value.errors)
    assert not Device.objects.exists()
    # The same control plane with a plain-HTTP PKI base issues them there.
    settings.PKI_BASE_URL = "http://pki.example.com"
    _device, credentials, _op = services.device_create(
        deployment=deployment, actor=None, device_id="cam", credential_type="certificate"
    )
    assert credentials.certificate is not None


def test_local_driver_renders_the_mqtts_x509_listener_only_when_the_spec_has_a_device_ca(
    client, base, premium, tmp_path
):
    import dataclasses

    from deployments.drivers.local import LocalDriver, _Paths, _RunAs
    from deployments.reconcile import build_spec
    from deployments.tls_services import server_certificate_ensure

    server_certificate_ensure(deployment=premium)
    driver = LocalDriver(root=tmp_path, websockets=False)
    paths = _Paths(tmp_path / premium.public_id)
    run_as = _RunAs(config_user=None, uid=None, gid=None)
    spec = build_spec(premium)  # a Premium broker with TLS has its device CA from the start
    assert driver._served_protocols(spec) == ["mqtt", "mqtts", "mqtts_x509"]
    assert driver._served_protocols(dataclasses.replace(spec, device_ca=None)) == ["mqtt", "mqtts"]
    create(client, base, "cam", credential_type="certificate")
    assert build_spec(premium).device_ca == spec.device_ca  # the first certificate device changes no listener
    conf = driver._render_conf(spec, paths, {"mqtt": 1883, "mqtts": 8883, "mqtts_x509": 8884}, run_as)
    listener = conf.split("listener 8884 127.0.0.1\n", 1)[1]
    assert listener.splitlines() == [
        "protocol mqtt",
        f"max_connections {spec.max_connections}",
        f"certfile {paths.server_certificate}",
        f"keyfile {paths.server_key}",
        f"cafile {paths.device_ca}",
        f"crlfile {paths.device_crl}",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    files = driver._render_tls(spec, paths)
    assert files[paths.device_ca] == spec.device_ca.ca_pem and files[paths.device_crl] == spec.device_ca.crl_pem
    # A CRL that is not PEM as we write it never reaches the broker's file.
    from deployments.drivers.base import PermanentDriverError

    bad = dataclasses.replace(spec, device_ca=dataclasses.replace(spec.device_ca, crl_pem="crlfile /etc/shadow\n"))
    with pytest.raises(PermanentDriverError, match="device CRL"):
        driver._validate(bad)


def test_certificate_device_on_a_kubernetes_region_answers_400_on_credential_type_when_pki_is_not_plain_http(
    client, base, premium, settings
):
    from iot.models import Device, DeviceCertificateAuthority

    type(premium.region).objects.filter(pk=premium.region.pk).update(driver="kubernetes")
    settings.PKI_BASE_URL = "https://cloud.example.com"
    errors = fields(
        client.post(f"{base}/devices", {"device_id": "cam", "credential_type": "certificate"}, format="json")
    )
    assert "plain http://" in errors["credential_type"]
    assert not Device.objects.exists() and not DeviceCertificateAuthority.objects.exists()
    assert create(client, base, "plain")["credentials"]["type"] == "password"  # passwords still work there


def test_certificate_device_registered_disabled_is_on_hold_from_the_start_when_created(client, base, premium):
    from iot import broker

    body = create(client, base, "cam", credential_type="certificate", enabled=False)
    assert list(crl_serials(premium)) == [body["certificate"]["serial"]]
    assert body["username"] not in {u.username for u in broker.spec_users(premium)}


def test_crl_is_signed_again_when_the_spec_is_built_close_to_its_next_update(client, base, premium):
    import datetime

    from django.utils import timezone

    from iot import broker, certificates
    from iot.models import DeviceCertificateAuthority

    create(client, base, "cam", credential_type="certificate")
    authority = DeviceCertificateAuthority.objects.get()
    assert broker.spec_device_ca(premium).crl_pem == authority.crl_pem  # far from due: untouched
    soon = timezone.now() + certificates.CRL_REFRESH_BEFORE - datetime.timedelta(days=1)
    DeviceCertificateAuthority.objects.filter(pk=authority.pk).update(crl_next_update=soon)
    material = broker.spec_device_ca(premium)
    authority.refresh_from_db()
    assert material.crl_pem == authority.crl_pem and authority.crl_next_update > soon + datetime.timedelta(days=100)
    crl = x509.load_pem_x509_crl(material.crl_pem.encode())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == authority.crl_number


def test_reconciler_gets_the_device_ca_before_any_device_asks_and_devices_then_use_that_one_when_the_spec_is_built(
    client, base, premium, owner_org
):
    from cryptography.hazmat.primitives.asymmetric import ec

    from iot import broker
    from iot.models import DeviceCertificateAuthority

    material = broker.spec_device_ca(premium)  # the broker's first spec with TLS: its listener from the start
    authority = DeviceCertificateAuthority.objects.get(deployment=premium)
    assert material.ca_pem == authority.certificate_pem
    assert list(x509.load_pem_x509_crl(material.crl_pem.encode())) == []  # nothing revoked: an empty, signed CRL
    assert broker.spec_device_ca(premium).ca_pem == material.ca_pem  # built again: the same CA
    issued = create(client, base, "cam", credential_type="certificate")["credentials"]
    assert issued["ca_certificate"] == material.ca_pem and DeviceCertificateAuthority.objects.count() == 1
    ca = x509.load_pem_x509_certificate(material.ca_pem.encode())
    device = x509.load_pem_x509_certificate(issued["certificate"].encode())
    ca.public_key().verify(device.signature, device.tbs_certificate_bytes, ec.ECDSA(device.signature_hash_algorithm))
    # A Premium deployment on a Kubernetes region gets its own; another plan gets none, and nothing is made for it.
    other = premium_deployment(owner_org, name="k8s")
    type(other.region).objects.filter(pk=other.region.pk).update(driver="kubernetes")
    other = type(other).objects.select_related("plan", "region").get(pk=other.pk)
    assert broker.spec_device_ca(other).ca_pem not in (material.ca_pem, "")
    from deployments import services as deployment_services

    third, _ = deployment_services.deployment_create(
        project=owner_org.default_project, actor=None, name="dedicated", plan="dedicated", tier="1k", region="local"
    )
    third = type(third).objects.select_related("plan", "region").get(pk=third.pk)
    assert broker.spec_device_ca(third) is None
    assert not DeviceCertificateAuthority.objects.filter(deployment=third).exists()
