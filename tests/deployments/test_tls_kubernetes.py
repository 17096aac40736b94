"""TLS on the Kubernetes driver: the certificate Secret and EMQX's ssl/wss listeners, validated against the
Kubernetes schemas, the EMQX Operator's CRD and EMQX's schema extract; applied through the real client to the HTTP
fake API server; filled from the deployment's certificates by the reconciler; shown (redacted) by render_manifests."""

import base64
import dataclasses
import datetime
import io

import kubernetes_validate
import pytest
import yaml
from django.core.management import call_command
from pyhocon import ConfigFactory

from deployments import emqx_config, tls
from deployments import manifests as m
from deployments.drivers.base import TlsMaterial
from tests.deployments.test_kubernetes_driver import (  # noqa: F401
    EMQX_KEY,
    NS,
    _make_ready,
    broker_api,
    cluster,
    driver,
    management_urls,  # noqa: F401
    spec,
)
from tests.deployments.test_manifests import K8S_VERSION, _spec, _validate, emqx_schema  # noqa: F401
from tests.deployments.tls_helpers import make_ca, pem

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def material():
    ca_pem, ca_key = tls.generate_certificate_authority(common_name="Test CA", now=NOW)
    certificate, key = tls.issue_server_certificate(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, host_names=["emqx-listeners.mqtt-x.svc"], now=NOW
    )
    return TlsMaterial(certificate_pem=certificate, private_key_pem=key)


def _two_way(material, **changes):
    return dataclasses.replace(
        material, has_client_ca=True, verify_peer=True, client_ca_pem=pem(make_ca("Devices CA")[0]), **changes
    )


def _listener(spec, kind="ssl"):
    return ConfigFactory.parse_string(emqx_config.render_hocon(spec))["listeners"][kind]["default"]


def test_tls_secret_is_a_kubernetes_tls_secret_that_validates_when_material_is_present(material):
    secret = m.render_tls_secret(_spec(tls=material))
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["name"] == "broker-tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key"}
    assert base64.b64decode(secret["data"]["tls.crt"]).decode() == material.certificate_pem
    two_way = m.render_tls_secret(_spec(tls=_two_way(material)))
    kubernetes_validate.validate(two_way, K8S_VERSION, strict=True)
    assert set(two_way["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    kinds = [obj["kind"] for obj in m.render_manifests(_spec(tls=material))]
    assert kinds == ["Namespace", "ResourceQuota", "NetworkPolicy", "Secret", "Secret", "Secret", "EMQX"]


def test_no_tls_secret_is_rendered_when_spec_only_names_an_existing_one():
    assert m.render_tls_secret(_spec(tls=TlsMaterial(secret_name="dep-tls"))) is None
    assert m.render_tls_secret(_spec()) is None


def test_emqx_listeners_verify_peer_and_refuse_clients_without_certificate_when_two_way(material, emqx_schema):
    spec = _spec(tls=_two_way(material))
    emqx = m.render_emqx(spec)
    _validate(emqx, emqx_schema)  # the operator's CRD
    for kind in ("ssl", "wss"):
        listener = _listener(spec, kind)  # render_hocon checks EMQX 5.8.6's schema extract first
        assert listener["enable"] is True
        assert listener["ssl_options"]["verify"] == "verify_peer"
        assert listener["ssl_options"]["fail_if_no_peer_cert"] is True
        assert listener["ssl_options"]["cacertfile"] == "/opt/emqx/etc/certs/deployment/ca.crt"
        assert listener["enable_authn"] is True
    volumes = emqx["spec"]["coreTemplate"]["spec"]["extraVolumes"]
    assert volumes == [{"name": "deployment-tls", "secret": {"secretName": "broker-tls"}}]


def test_one_way_tls_verifies_no_peer_and_optional_client_certificates_do_not_fail(material):
    one_way = _listener(_spec(tls=material))["ssl_options"]
    assert (one_way["verify"], one_way["fail_if_no_peer_cert"]) == ("verify_none", False)
    optional = _listener(_spec(tls=_two_way(material, require_client_certificate=False)))["ssl_options"]
    assert (optional["verify"], optional["fail_if_no_peer_cert"]) == ("verify_peer", False)


@pytest.mark.parametrize("version", ["5.1.1", "5.8.6", "5.9.1", "5.10.2"])
def test_identity_as_username_takes_the_cn_and_skips_passwords_on_tls_listeners_only(material, version):
    spec = _spec(tls=_two_way(material, use_identity_as_username=True), version=version)
    conf = ConfigFactory.parse_string(emqx_config.render_hocon(spec))  # checked against that release's extract
    assert conf["mqtt"]["peer_cert_as_username"] == "cn"
    assert conf["listeners"]["ssl"]["default"]["enable_authn"] is False
    assert conf["listeners"]["wss"]["default"]["enable_authn"] is False
    assert "enable_authn" not in conf["listeners"]["tcp"]["default"]
    plain = ConfigFactory.parse_string(emqx_config.render_hocon(_spec(tls=material, version=version)))
    assert plain["mqtt"]["peer_cert_as_username"] == "disabled"


def test_driver_applies_the_tls_secret_and_drops_the_client_ca_when_two_way_tls_is_turned_off(
    driver,  # noqa: F811
    spec,  # noqa: F811
    cluster,  # noqa: F811
    material,
):
    two_way = dataclasses.replace(spec, tls=_two_way(material))
    driver.apply(two_way)
    secret = cluster.state.get("v1", "secrets", NS, "broker-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert base64.b64decode(secret["data"]["tls.key"]).decode() == material.private_key_pem
    _make_ready(cluster)
    observed = driver.apply(two_way)
    assert observed.ports == {"mqtt": 1883, "mqtts": 8883, "ws": 8083, "wss": 8084}

    driver.apply(dataclasses.replace(spec, tls=material))
    secret = cluster.state.get("v1", "secrets", NS, "broker-tls")
    assert set(secret["data"]) == {"tls.crt", "tls.key"}
    conf = ConfigFactory.parse_string(cluster.state.get(*EMQX_KEY)["spec"]["config"]["data"])
    assert conf["listeners"]["ssl"]["default"]["ssl_options"]["verify"] == "verify_none"


@pytest.mark.django_db
@pytest.mark.usefixtures("deployments_catalog")
def test_reconciler_fills_the_secret_from_the_deployments_certificates_and_reissues_for_the_load_balancer(
    cluster,  # noqa: F811
    owner_org,
    monkeypatch,
    settings,
    tmp_path,
):
    from controlplane import crypto
    from deployments import reconcile as reconcile_module
    from deployments import services, tls_services
    from deployments.drivers.kubernetes import KubernetesDriver
    from deployments.emqx_api import EmqxApi
    from deployments.models import Deployment, TlsCertificate
    from tests.fakes.emqx_api import FakeEmqxServer

    settings.EMQX_LICENSE_KEY = "test-licence-key"
    (tmp_path / "secrets" / "eu").mkdir(parents=True)
    (tmp_path / "secrets" / "eu" / "kubeconfig").write_text(cluster.kubeconfig())
    (tmp_path / "regions.yaml").write_text(
        "- code: eu-k8s\n  display_name: EU\n  provider: aws\n  region: eu-west-1\n"
        "  driver: kubernetes\n  kubeconfig_secret: eu\n  open: true\n  tiers: [dedicated/1k]\n"
    )
    monkeypatch.setenv("KUBECONFIG_SECRETS_DIR", str(tmp_path / "secrets"))
    call_command("load_regions", file=str(tmp_path / "regions.yaml"))
    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="eu", plan="dedicated", tier="1k", region="eu-k8s"
    )
    emqx = FakeEmqxServer(api_key="controlplane", api_secret=crypto.decrypt_str(deployment.api_secret_encrypted))
    emqx.start()
    try:
        driver = KubernetesDriver(
            emqx_api_factory=lambda *, base_url, api_key, api_secret: EmqxApi(emqx.url, api_key, api_secret)
        )
        monkeypatch.setattr(reconcile_module, "driver_for", lambda region: driver)
        namespace = m.namespace_name(deployment.public_id)

        reconcile_module.reconcile_deployment(deployment.pk)
        issued = TlsCertificate.objects.get(deployment=deployment, source="control_plane")
        assert issued.sans == [f"emqx-listeners.{namespace}.svc", f"emqx-listeners.{namespace}.svc.cluster.local"]
        secret = cluster.state.get("v1", "secrets", namespace, "broker-tls")
        assert base64.b64decode(secret["data"]["tls.crt"]).decode() == issued.certificate_pem

        cluster.state.mark_emqx_ready(namespace, replicas=2)
        cluster.state.set_listeners_service(namespace, ip="203.0.113.7")
        outcome = reconcile_module.reconcile_deployment(deployment.pk)
        assert outcome.state == "converged" and outcome.retry  # the new address is not named yet: come back
        body = Deployment.objects.get(pk=deployment.pk).endpoints
        assert body == {"host": "203.0.113.7", "ports": {"mqtt": 1883, "mqtts": 8883, "ws": 8083, "wss": 8084}}

        outcome = reconcile_module.reconcile_deployment(deployment.pk)
        assert (outcome.state, outcome.retry) == ("converged", False)
        reissued = TlsCertificate.objects.get(deployment=deployment, source="control_plane")
        assert "203.0.113.7" in reissued.sans
        secret = cluster.state.get("v1", "secrets", namespace, "broker-tls")
        assert base64.b64decode(secret["data"]["tls.crt"]).decode() == reissued.certificate_pem
        assert tls_services.issued_certificate_covers(deployment.pk, "203.0.113.7")

        out = io.StringIO()
        call_command("render_manifests", deployment=deployment.public_id, stdout=out)
        documents = list(yaml.load_all(out.getvalue(), Loader=yaml.CSafeLoader))
        tls_secret = next(d for d in documents if d["metadata"]["name"] == "broker-tls")
        assert tls_secret["data"] == {"tls.crt": "<redacted>", "tls.key": "<redacted>"}
        assert "PRIVATE KEY" not in out.getvalue() and "BEGIN CERTIFICATE" not in out.getvalue()
        conf = ConfigFactory.parse_string(documents[-1]["spec"]["config"]["data"])
        assert conf["listeners"]["ssl"]["default"]["enable"] is True
    finally:
        emqx.stop()


def _device_ca():
    from deployments.drivers.base import DeviceCaMaterial

    return DeviceCaMaterial(ca_pem=pem(make_ca("Device CA dep_X7Kq2ZP9")[0]), crl_pem="")


@pytest.mark.parametrize("version", ["5.1.1", "5.8.6", "5.9.1", "5.10.2"])
def test_device_certificate_listener_renders_against_each_releases_schema_when_spec_has_a_device_ca(
    material, version, emqx_schema
):
    spec = _spec(tls=material, device_ca=_device_ca(), version=version)
    emqx = m.render_emqx(spec)
    _validate(emqx, emqx_schema)  # the operator's CRD
    conf = ConfigFactory.parse_string(emqx_config.render_hocon(spec))  # checked against that release's extract
    listener = conf["listeners"]["ssl"]["x509"]
    assert listener["enable"] is True and listener["zone"] == "x509_devices" and listener["enable_authn"] is False
    assert listener["ssl_options"]["enable_crl_check"] is True
    assert conf["zones"]["x509_devices"]["mqtt"] == {"peer_cert_as_username": "cn"}
    assert conf["mqtt"]["peer_cert_as_username"] == "disabled"  # the password listeners keep the CONNECT's username
    # The tier is split over five listeners now, never exceeded.
    per_listener = conf["listeners"]["tcp"]["default"]["max_connections"]
    assert listener["max_connections"] == per_listener and per_listener * 5 * spec.replicas <= spec.max_connections
    secret = m.render_tls_secret(spec)
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert base64.b64decode(secret["data"]["devices-ca.crt"]).decode() == spec.device_ca.ca_pem


def test_device_certificate_listener_is_rendered_off_without_a_device_ca_or_without_tls(material):
    for each in (_spec(tls=material), _spec(device_ca=_device_ca())):
        conf = ConfigFactory.parse_string(emqx_config.render_hocon(each))
        assert conf["listeners"]["ssl"]["x509"]["enable"] is False  # the operator merges: rendered off, not left out
        assert "ssl_options" not in conf["listeners"]["ssl"]["x509"]
    assert "devices-ca.crt" not in m.render_tls_secret(_spec(tls=material))["data"]


def test_schema_check_refuses_a_zone_setting_emqx_does_not_have_when_rendered(material):
    from deployments import emqx_versions
    from deployments.emqx_schema_check import check_config

    tree = emqx_config.config_tree(_spec(tls=material, device_ca=_device_ca()))
    extract = emqx_versions.schema_extract("5.8.6")
    assert check_config(tree, extract) == []
    tree["zones"]["x509_devices"]["mqtt"]["peer_cert_as_user"] = "cn"
    tree["zones"]["x509_devices"]["authorization"] = {"no_match": "deny"}
    tree["crl_cache"]["refresh_interval"] = "soon"
    problems = check_config(tree, extract)
    assert any("zones.x509_devices.mqtt.peer_cert_as_user: unknown key" in p for p in problems)
    assert any(p.startswith("zones.x509_devices.authorization") for p in problems)
    assert any(p.startswith("crl_cache.refresh_interval") for p in problems)
