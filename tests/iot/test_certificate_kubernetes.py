"""Certificate devices on a Kubernetes (EMQX) region, through the REST API and the reconciler: the real `kubernetes`
client against the HTTP fake API server, EMQX's management API faked at HTTP level. What the certificate names (CN,
CRL Distribution Points), what the EMQX resource renders for the device-certificate listener, what the control
plane's CRL URL serves, and what EMQX's authorization and connections become when a device is disabled, enabled,
rotated and deleted."""

import base64

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from pyhocon import ConfigFactory

from deployments import manifests as m
from tests.deployments.test_kubernetes_driver import cluster  # noqa: F401
from tests.iot.test_certificate_api import fields
from tests.iot.test_certificates import make_csr, tampered

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]

PKI = "http://pki.test"


@pytest.fixture
def emqx_region(cluster, owner_org, monkeypatch, settings, tmp_path):  # noqa: F811
    """(deployment, fake EMQX, reconcile()) for a running Premium deployment on a Kubernetes region."""
    from controlplane import crypto
    from deployments import reconcile as reconcile_module
    from deployments import services
    from deployments.drivers.kubernetes import KubernetesDriver
    from deployments.emqx_api import EmqxApi
    from organizations.models import Organization
    from tests.fakes.emqx_api import FakeEmqxServer

    settings.EMQX_LICENSE_KEY = "test-licence-key"
    settings.PKI_BASE_URL = PKI
    (tmp_path / "secrets" / "eu").mkdir(parents=True)
    (tmp_path / "secrets" / "eu" / "kubeconfig").write_text(cluster.kubeconfig())
    (tmp_path / "regions.yaml").write_text(
        "- code: eu-k8s\n  display_name: EU\n  provider: aws\n  region: eu-west-1\n"
        "  driver: kubernetes\n  kubeconfig_secret: eu\n  open: true\n  tiers: [premium/1k]\n"
    )
    monkeypatch.setenv("KUBECONFIG_SECRETS_DIR", str(tmp_path / "secrets"))
    call_command("load_regions", file=str(tmp_path / "regions.yaml"))
    Organization.objects.filter(pk=owner_org.organization.pk).update(premium_trial_deployments=2)
    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="premium", tier="1k", region="eu-k8s"
    )
    emqx = FakeEmqxServer(api_key="controlplane", api_secret=crypto.decrypt_str(deployment.api_secret_encrypted))
    emqx.start()
    driver = KubernetesDriver(
        emqx_api_factory=lambda *, base_url, api_key, api_secret: EmqxApi(emqx.url, api_key, api_secret)
    )
    monkeypatch.setattr(reconcile_module, "driver_for", lambda region: driver)
    namespace = m.namespace_name(deployment.public_id)

    def reconcile():
        return reconcile_module.reconcile_deployment(deployment.pk)

    reconcile()  # TLS is issued, the Secret and the EMQX resource are applied
    cluster.state.mark_emqx_ready(namespace, replicas=2)
    cluster.state.set_listeners_service(namespace, ip="203.0.113.7")
    reconcile()
    reconcile()  # the load balancer's address is named in the reissued certificate: converged
    deployment.refresh_from_db()
    yield deployment, emqx, reconcile
    emqx.stop()


@pytest.fixture
def base(owner_org, emqx_region):
    deployment = emqx_region[0]
    return (
        f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}"
        f"/deployments/{deployment.public_id}"
    )


@pytest.fixture
def client(owner_org, key_client):
    return key_client(owner_org.owner_secret)


def _emqx_config(cluster, deployment):  # noqa: F811
    namespace = m.namespace_name(deployment.public_id)
    resource = cluster.state.get("apps.emqx.io/v2beta1", "emqxes", namespace, "emqx")
    return ConfigFactory.parse_string(resource["spec"]["config"]["data"])


def _crl(deployment):
    """The deployment's CRL as a broker fetches it: plain HTTP, no credentials."""
    from django.test import Client

    response = Client().get(f"/pki/deployments/{deployment.public_id}/devices.crl.pem")
    assert response.status_code == 200, response.content[:200]
    assert response["Content-Type"] == "application/x-pem-file"
    crl = x509.load_pem_x509_crl(response.content)  # PEM: the URL EMQX's certificates name, its cache refresh's form
    der = Client().get(f"/pki/deployments/{deployment.public_id}/devices.crl")
    assert der.status_code == 200 and der["Content-Type"] == "application/pkix-crl"
    assert x509.load_der_x509_crl(der.content) == crl  # the same CRL as DER, as RFC 5280 gives it over HTTP
    return {format(r.serial_number, "x"): r for r in crl}


def test_emqx_cluster_serves_the_device_certificate_listener_from_the_start_when_premium_has_tls(
    cluster,  # noqa: F811
    emqx_region,
):
    from iot.models import DeviceCertificateAuthority

    deployment, _emqx, _reconcile = emqx_region
    authority = DeviceCertificateAuthority.objects.get(deployment=deployment)
    namespace = m.namespace_name(deployment.public_id)
    secret = cluster.state.get("v1", "secrets", namespace, "broker-tls")
    assert base64.b64decode(secret["data"]["devices-ca.crt"]).decode() == authority.certificate_pem
    conf = _emqx_config(cluster, deployment)
    listener = conf["listeners"]["ssl"]["x509"]
    assert listener["enable"] is True and listener["bind"] == "0.0.0.0:8884"
    options = listener["ssl_options"]
    assert options["verify"] == "verify_peer" and options["fail_if_no_peer_cert"] is True
    assert options["enable_crl_check"] is True
    assert options["cacertfile"] == "/opt/emqx/etc/certs/deployment/devices-ca.crt"
    assert options["certfile"] == "/opt/emqx/etc/certs/deployment/tls.crt"
    # CN as username on this listener only: through its own zone; the global setting stays off, and no password is
    # asked on it (the certificate is the authentication); the password listeners still ask one.
    assert listener["zone"] == "x509_devices" and listener["enable_authn"] is False
    assert conf["zones"]["x509_devices"]["mqtt"]["peer_cert_as_username"] == "cn"
    assert conf["mqtt"]["peer_cert_as_username"] == "disabled"
    for other in ("ssl", "wss"):
        assert conf["listeners"][other]["default"].get("zone", "default") == "default"
        assert conf["listeners"][other]["default"]["enable_authn"] is True
    assert conf["crl_cache"]["refresh_interval"] == "1m"
    deployment.refresh_from_db()
    assert deployment.endpoints["ports"]["mqtts_x509"] == 8884  # the operator's `ssl-x509` Service port


def test_certificate_device_on_emqx_is_confined_by_its_cn_and_held_on_the_served_crl_when_disabled(
    client,
    base,
    emqx_region,
):
    from iot.models import Device

    deployment, emqx, reconcile = emqx_region
    response = client.post(f"{base}/devices", {"device_id": "cam", "credential_type": "certificate"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    certificate = x509.load_pem_x509_certificate(body["credentials"]["certificate"].encode())
    username = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert username == body["username"] == Device.objects.get().username
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [name.value for point in points for name in point.full_name] == [
        f"{PKI}/pki/deployments/{deployment.public_id}/devices.crl.pem"
    ]
    serial = body["certificate"]["serial"]
    assert _crl(deployment) == {}

    reconcile()
    assert username not in emqx.users()  # no password: nothing for the password authenticator
    emqx.connect(client_id="cam", username=username)  # what peer_cert_as_username = cn makes of its handshake
    assert emqx.authorize(client_id="cam", username=username, action="publish", topic="devices/cam/t") == "allow"
    assert emqx.authorize(client_id="cam", username=username, action="publish", topic="devices/other/t") == "deny"

    assert client.patch(f"{base}/devices/cam", {"enabled": False}, format="json").status_code == 200
    held = _crl(deployment)
    assert list(held) == [serial]
    assert held[serial].extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.certificate_hold
    )
    reconcile()
    assert "cam" not in emqx.connected()  # kicked through EMQX's API
    # Until EMQX's CRL cache fetches the new CRL the handshake may pass: its username is banned, so CONNECT is
    # refused at once, and denied everything besides.
    with pytest.raises(ConnectionRefusedError):
        emqx.connect(client_id="cam", username=username)
    assert emqx.authorize(client_id="cam", username=username, action="publish", topic="devices/cam/t") == "deny"

    assert client.patch(f"{base}/devices/cam", {"enabled": True}, format="json").status_code == 200
    assert _crl(deployment) == {}
    reconcile()
    emqx.connect(client_id="cam", username=username)  # the ban is lifted
    assert emqx.authorize(client_id="cam", username=username, action="publish", topic="devices/cam/t") == "allow"


def test_rotated_and_deleted_certificate_devices_are_denied_on_emqx_when_their_old_certificate_is_presented(
    client,
    base,
    emqx_region,
):
    deployment, emqx, reconcile = emqx_region
    first = client.post(f"{base}/devices", {"device_id": "cam", "credential_type": "certificate"}, format="json")
    old_username, old_serial = first.json()["username"], first.json()["certificate"]["serial"]
    reconcile()
    emqx.connect(client_id="cam", username=old_username)
    rotated = client.post(f"{base}/devices/cam/credentials", {}, format="json")
    assert rotated.status_code == 201, rotated.content
    new_username = rotated.json()["credentials"]["username"]
    assert list(_crl(deployment)) == [old_serial]
    reconcile()
    assert "cam" not in emqx.connected()
    with pytest.raises(ConnectionRefusedError):
        emqx.connect(client_id="cam", username=old_username)
    assert emqx.authorize(client_id="cam", username=old_username, action="publish", topic="devices/cam/t") == "deny"
    emqx.connect(client_id="cam", username=new_username)
    assert emqx.authorize(client_id="cam", username=new_username, action="publish", topic="devices/cam/t") == "allow"

    new_serial = rotated.json()["certificate"]["serial"]
    assert client.delete(f"{base}/devices/cam").status_code in (202, 204)
    assert set(_crl(deployment)) == {old_serial, new_serial}
    reconcile()
    assert "cam" not in emqx.connected()
    for username in (old_username, new_username):
        with pytest.raises(ConnectionRefusedError):
            emqx.connect(client_id="cam", username=username)
        assert emqx.authorize(client_id="cam", username=username, action="publish", topic="devices/cam/t") == "deny"


def test_device_crl_url_answers_404_without_revealing_anything_when_the_deployment_is_unknown(emqx_region):
    from django.test import Client

    deployment = emqx_region[0]
    for name in ("devices.crl", "devices.crl.pem"):
        for path in ("dep_doesnotexist", "x" * 300, "dep_%00", deployment.public_id.upper()):
            response = Client().get(f"/pki/deployments/{path}/{name}")
            assert response.status_code == 404 and response.content == b""
        assert Client().post(f"/pki/deployments/{deployment.public_id}/{name}").status_code == 405


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"credential_type": "certificate", "csr": "not pem"}, "Not PEM"),
        ({"credential_type": "certificate", "csr": tampered(make_csr())}, "signature does not verify"),
        ({"credential_type": "certificate", "csr": make_csr().replace("\n", "\x07", 1)}, "control characters"),
    ],
)
def test_bad_csr_answers_400_on_an_emqx_region_as_on_local_when_posted(client, base, payload, message):
    from iot.models import Device

    errors = fields(client.post(f"{base}/devices", {"device_id": "cam", **payload}, format="json"))
    assert message in errors["csr"]
    assert not Device.objects.exists()


def test_device_crl_is_served_over_plain_http_when_the_control_plane_redirects_everything_else_to_https(
    emqx_region, settings
):
    from django.test import Client

    deployment = emqx_region[0]
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/api/v1/organizations").status_code == 301  # the redirect is on
    assert _crl(deployment) == {}  # 200 over plain HTTP: EMQX follows no redirect to https
