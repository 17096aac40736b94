"""Rendered manifests validated against the Kubernetes 1.30 schemas and the EMQX Operator's v2beta1 CRD."""

import os
import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pyhocon import ConfigFactory

from deployments import manifests as m
from deployments.drivers.base import BrokerSpec, RegionTarget, TlsMaterial

# ../shared/data beside the checkout; EMQX_OPERATOR_CRD names another copy (a worktree elsewhere).
CRD_PATH = pathlib.Path(
    os.environ.get("EMQX_OPERATOR_CRD")
    or pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "emqx-operator" / "apps.emqx.io_emqxes.yaml"
)
K8S_VERSION = "1.30.0"


def _spec(**overrides) -> BrokerSpec:
    values = dict(
        name="dep_X7Kq2ZP9",
        region=RegionTarget(code="eu-1", driver="kubernetes", storage_class="fast-ssd"),
        running=True,
        max_connections=25_000,
        messages_per_second=1000,
        replicas=3,
        version="5.8.6",
        restart_nonce=4,
        api_key="controlplane",
        api_secret="a-long-secret-value",
        license_key="lic-key-text",
    )
    values.update(overrides)
    return BrokerSpec(**values)


@pytest.fixture(scope="module")
def emqx_schema() -> dict:
    if not CRD_PATH.exists():
        pytest.skip(f"{CRD_PATH.parent} (../shared/data/emqx-operator) not present")
    crd = yaml.load(CRD_PATH.read_text(), Loader=yaml.CSafeLoader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v2beta1")
    # The CRD's bootstrap-key pattern `[a-zA-Z\d-_]` is valid RE2 (Go reads the `-` after a class escape as a
    # literal) but a bad range for Python's `re`; the same set written the portable way:
    text = yaml.dump(version["schema"]["openAPIV3Schema"], Dumper=yaml.CSafeDumper).replace("\\d-_]", "\\d_-]")
    return yaml.load(text, Loader=yaml.CSafeLoader)


def _validate(obj: dict, schema: dict) -> None:
    jsonschema.Draft7Validator(schema).validate(obj)


def test_render_manifests_returns_objects_in_apply_order_when_running():
    kinds = [obj["kind"] for obj in m.render_manifests(_spec())]
    assert kinds == ["Namespace", "ResourceQuota", "NetworkPolicy", "Secret", "Secret", "EMQX"]


def test_render_manifests_omits_emqx_resource_when_stopped():
    kinds = [obj["kind"] for obj in m.render_manifests(_spec(running=False))]
    assert kinds == ["Namespace", "ResourceQuota", "NetworkPolicy", "Secret", "Secret"]


def test_builtin_manifests_validate_against_kubernetes_schemas_when_rendered():
    for obj in m.render_manifests(_spec())[:5]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_builtin_manifest_validation_fails_when_field_is_wrong():
    quota = m.render_resource_quota(_spec())
    quota["spec"]["hardd"] = quota["spec"].pop("hard")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(quota, K8S_VERSION, strict=True)


def test_emqx_resource_validates_against_crd_schema_when_rendered(emqx_schema):
    emqx = m.render_emqx(_spec())
    _validate(emqx, emqx_schema)
    spec = emqx["spec"]
    assert emqx["apiVersion"] == "apps.emqx.io/v2beta1"
    # The Enterprise edition: the operator evacuates sessions only from nodes that report it.
    assert spec["image"] == "emqx/emqx-enterprise:5.8.6"
    assert spec["revisionHistoryLimit"] == 0
    assert spec["updateStrategy"]["evacuationStrategy"]["waitTakeover"] > 0
    assert spec["coreTemplate"]["spec"]["env"] == [
        {"name": "EMQX_LICENSE__KEY", "valueFrom": {"secretKeyRef": {"name": "emqx-license", "key": "key"}}}
    ]
    assert spec["coreTemplate"]["spec"]["replicas"] == 3
    assert spec["listenersServiceTemplate"]["spec"]["type"] == "LoadBalancer"
    assert spec["coreTemplate"]["metadata"]["annotations"]["controlplane.io/restart-nonce"] == "4"
    assert spec["coreTemplate"]["spec"]["volumeClaimTemplates"]["storageClassName"] == "fast-ssd"
    ConfigFactory.parse_string(spec["config"]["data"])


def test_emqx_resource_fails_crd_schema_when_bootstrap_key_ref_is_incomplete(emqx_schema):
    emqx = m.render_emqx(_spec())
    del emqx["spec"]["bootstrapAPIKeys"][0]["secretRef"]["secret"]
    with pytest.raises(jsonschema.ValidationError):
        _validate(emqx, emqx_schema)


def test_bootstrap_key_secret_holds_key_and_secret_that_crd_refs_point_to():
    spec = _spec()
    secret, emqx = m.render_api_key_secret(spec), m.render_emqx(spec)
    ref = emqx["spec"]["bootstrapAPIKeys"][0]["secretRef"]
    assert ref["key"]["secretName"] == ref["secret"]["secretName"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]["secretKey"]] == "controlplane"
    assert secret["stringData"][ref["secret"]["secretKey"]] == "a-long-secret-value"
    assert "a-long-secret-value" not in str(emqx)


def test_namespace_name_is_dns1123_label_when_id_has_capitals_underscores_or_is_long():
    assert m.namespace_name("dep_X7Kq2ZP9") == "mqtt-dep-x7kq2zp9"
    long_a, long_b = "dep_" + "A" * 80, "dep_" + "A" * 79 + "B"
    for name in (m.namespace_name(long_a), m.namespace_name(long_b)):
        assert len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert m.namespace_name(long_a) != m.namespace_name(long_b)


def test_labels_mark_objects_as_managed_by_controlplane_for_the_deployment():
    for obj in m.render_manifests(_spec()):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "controlplane"
        assert labels["controlplane.io/deployment"] == "dep_X7Kq2ZP9"


def test_network_policy_admits_only_listener_ports_from_anywhere_and_management_from_control_plane():
    policy = m.render_network_policy(_spec())["spec"]
    open_rule, management_rule, cluster_rule = policy["ingress"]
    assert "from" not in open_rule
    assert sorted(p["port"] for p in open_rule["ports"]) == [1883, 8083, 8084, 8883, 8884]  # 8884: mqtts_x509
    assert [p["port"] for p in management_rule["ports"]] == [18083]
    assert {"controlplane.io/role": "control-plane"} in [
        f["namespaceSelector"]["matchLabels"] for f in management_rule["from"]
    ]
    assert cluster_rule["from"] == [{"podSelector": {"matchLabels": {"apps.emqx.io/instance": "emqx"}}}]


def test_resource_quota_holds_two_generations_of_pods_when_operator_updates_blue_green():
    quota = m.render_resource_quota(_spec(replicas=3))["spec"]["hard"]
    per_pod = m.pod_resources(_spec(replicas=3))
    assert quota["pods"] == "6"
    assert quota["limits.memory"] == f"{int(per_pod['limits']['memory'][:-2]) * 6}Mi"


def test_emqx_resource_with_certificate_mounts_secret_and_validates_against_crd(emqx_schema):
    emqx = m.render_emqx(_spec(tls=TlsMaterial(secret_name="dep-tls", has_client_ca=True, verify_peer=True)))
    _validate(emqx, emqx_schema)
    core = emqx["spec"]["coreTemplate"]["spec"]
    assert core["extraVolumes"] == [{"name": "deployment-tls", "secret": {"secretName": "dep-tls"}}]
    assert core["extraVolumeMounts"] == [
        {"name": "deployment-tls", "mountPath": "/opt/emqx/etc/certs/deployment", "readOnly": True}
    ]
    conf = ConfigFactory.parse_string(emqx["spec"]["config"]["data"])
    assert conf["listeners.ssl.default.enable"] is True
    assert conf["listeners.ssl.default.ssl_options.certfile"].startswith("/opt/emqx/etc/certs/deployment/")


def test_emqx_resource_without_certificate_mounts_nothing_and_disables_tls_listeners(emqx_schema):
    emqx = m.render_emqx(_spec())
    _validate(emqx, emqx_schema)
    assert "extraVolumes" not in emqx["spec"]["coreTemplate"]["spec"]
    conf = ConfigFactory.parse_string(emqx["spec"]["config"]["data"])
    assert conf["listeners.ssl.default.enable"] is False and conf["listeners.wss.default.enable"] is False
    assert "ssl_options" not in conf["listeners.ssl.default"]


def test_data_volume_is_claimed_even_when_region_names_no_storage_class(emqx_schema):
    emqx = m.render_emqx(_spec(region=RegionTarget(code="eu-1", driver="kubernetes")))
    _validate(emqx, emqx_schema)
    claim = emqx["spec"]["coreTemplate"]["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim and claim["resources"]["requests"]["storage"] == "1Gi"


def test_api_key_digest_in_pod_template_changes_when_secret_changes():
    before = m.render_emqx(_spec())["spec"]["coreTemplate"]["metadata"]["annotations"]
    after = m.render_emqx(_spec(api_secret="another-secret"))["spec"]["coreTemplate"]["metadata"]["annotations"]
    assert before[m.API_KEY_DIGEST_ANNOTATION] != after[m.API_KEY_DIGEST_ANNOTATION]
    assert "another-secret" not in str(after)


def test_operator_bootstrap_secret_keeps_operator_line_and_replaces_ours_when_key_changed():
    import base64

    old = "controlplane:old-secret\nemqx-operator-controller:op-pw"
    current = {"data": {"bootstrap_api_key": base64.b64encode(old.encode()).decode()}}
    manifest = m.render_operator_bootstrap_secret(_spec(api_secret="new-secret"), current)
    lines = base64.b64decode(manifest["data"]["bootstrap_api_key"]).decode().split("\n")
    assert lines == ["controlplane:new-secret", "emqx-operator-controller:op-pw"]
    current["data"]["bootstrap_api_key"] = manifest["data"]["bootstrap_api_key"]
    assert m.render_operator_bootstrap_secret(_spec(api_secret="new-secret"), current) is None
    assert m.render_operator_bootstrap_secret(_spec(), None) is None


@pytest.mark.parametrize("version", ["5.0.26", "4.4.19", "5.1.0"])
def test_render_manifests_refuses_emqx_older_than_5_1_1(version):
    with pytest.raises(ValueError, match="5.1.1 or later"):
        m.render_manifests(_spec(version=version))


def test_render_manifests_refuses_when_no_licence_is_configured():
    with pytest.raises(ValueError, match="EMQX_LICENSE_KEY"):
        m.render_manifests(_spec(license_key=""))


def test_render_manifests_raises_when_api_key_breaks_crd_pattern():
    with pytest.raises(ValueError, match="api_key"):
        m.render_manifests(_spec(api_key="bad key:with colon"))


def test_printed_spec_holds_no_credential_when_a_driver_logs_or_raises_with_it():
    """A spec travels through drivers, their logs and their exceptions: its credentials never show in its repr."""
    spec = _spec(
        region=RegionTarget(code="eu-1", driver="kubernetes", kubeconfig="token: kube-admin-SECRET-1"),
        api_key="bootstrap",
        api_secret="api-SECRET-2",
        license_key="licence-SECRET-3",
        tls=TlsMaterial(certificate_pem="-----BEGIN CERTIFICATE-----", private_key_pem="key-SECRET-4"),
    )
    printed = repr(spec)
    assert "SECRET" not in printed, printed
    assert "eu-1" in printed and "bootstrap" in printed and spec.api_secret == "api-SECRET-2"
