"""A Kubernetes region end to end through the HTTP fakes: load_regions, the API, the reconciler, the real client."""

import pytest
from django.core.management import call_command

from controlplane import crypto
from deployments import manifests
from deployments import reconcile as reconcile_module
from deployments.drivers.kubernetes import KubernetesDriver
from deployments.emqx_api import EmqxApi
from deployments.models import Deployment, Region, StatusInterval
from deployments.reconcile import reconcile_deployment
from tests.fakes.emqx_api import FakeEmqxServer
from tests.fakes.kubernetes_api import FakeKubernetesServer

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]


@pytest.fixture
def cluster():
    server = FakeKubernetesServer().start()
    yield server
    server.stop()


@pytest.fixture
def region(cluster, tmp_path, monkeypatch):
    (tmp_path / "secrets" / "eu-cluster").mkdir(parents=True)
    (tmp_path / "secrets" / "eu-cluster" / "kubeconfig").write_text(cluster.kubeconfig())
    (tmp_path / "regions.yaml").write_text(
        "- code: aws-eu-west-1\n  display_name: Ireland\n  provider: aws\n  region: eu-west-1\n"
        "  driver: kubernetes\n  kubeconfig_secret: eu-cluster\n  open: true\n  tiers: [dedicated/1k, dedicated/2k]\n"
    )
    monkeypatch.setenv("KUBECONFIG_SECRETS_DIR", str(tmp_path / "secrets"))
    call_command("load_regions", file=str(tmp_path / "regions.yaml"))
    call_command("load_regions", file=str(tmp_path / "regions.yaml"))  # an upsert: running it twice is harmless
    return Region.objects.get(code="aws-eu-west-1")


def test_load_regions_stores_the_kubeconfig_encrypted(region, cluster):
    assert Region.objects.filter(code="aws-eu-west-1").count() == 1
    assert "server" not in region.kubeconfig_encrypted
    assert crypto.decrypt_str(region.kubeconfig_encrypted) == cluster.kubeconfig()
    assert sorted(t.code for t in region.tiers.all()) == ["1k", "2k"]


def test_deployment_runs_on_emqx_with_users_pushed_when_operator_reports_ready(
    region, cluster, owner_org, key_client, monkeypatch
):
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    created = client.post(
        base, {"name": "eu", "plan": "dedicated", "tier": "1k", "region": "aws-eu-west-1"}, format="json"
    )
    assert created.status_code == 202, created.content
    public_id = created.json()["deployment"]["id"]
    url = f"{base}/{public_id}"
    assert (
        client.post(f"{url}/mqtt-users", {"username": "sensor", "password": "sensor-secret"}, format="json").status_code
        == 201
    )
    rule = client.post(
        f"{url}/acl-rules",
        {"permission": "deny", "action": "publish", "topic": "cmd/#", "client_id": "gateway-1"},
        format="json",
    )
    assert rule.status_code == 201, rule.content  # EMQX selects rules by client id; mosquitto could not
    deployment = Deployment.objects.get(public_id=public_id)
    emqx = FakeEmqxServer(api_key="controlplane", api_secret=crypto.decrypt_str(deployment.api_secret_encrypted))
    emqx.start()
    try:
        driver = KubernetesDriver(
            emqx_api_factory=lambda *, base_url, api_key, api_secret: EmqxApi(emqx.url, api_key, api_secret)
        )
        monkeypatch.setattr(reconcile_module, "driver_for", lambda region: driver)

        first = reconcile_deployment(deployment.pk)
        assert (first.state, first.retry) == ("progressing", True)
        assert client.get(url).json()["status"] == "provisioning"
        namespace = manifests.namespace_name(public_id)
        emqx_resource = cluster.state.get("apps.emqx.io/v2beta1", "emqxes", namespace, "emqx")
        assert emqx_resource["spec"]["coreTemplate"]["spec"]["replicas"] == 2

        cluster.state.mark_emqx_ready(namespace, replicas=2)
        cluster.state.set_listeners_service(namespace, ip="203.0.113.7")
        assert reconcile_deployment(deployment.pk).state == "converged"

        body = client.get(url).json()
        assert body["status"] == "running"
        assert body["connection"] == {
            "host": "203.0.113.7",
            "ports": {"mqtt": 1883, "mqtts": 8883, "ws": 8083, "wss": 8084},
        }
        assert set(emqx.users()) == {"sensor", "$controlplane-monitor"}
        assert emqx.rules()["clients"]["gateway-1"]
        assert StatusInterval.objects.filter(deployment=deployment, ended_at__isnull=True, status="running").exists()
        rate_limits = client.get(f"{url}/rate-limits").json()
        assert rate_limits["driver"] == "kubernetes" and "messages_rate" in rate_limits["honoured"]["connection"]

        assert client.delete(url).status_code == 202
        assert reconcile_deployment(deployment.pk).state == "converged"
        assert client.get(url).json()["status"] == "deleted"
        assert cluster.state.get("v1", "namespaces", "", namespace) is None
    finally:
        emqx.stop()


def test_status_is_failed_with_an_actionable_reason_when_cluster_forbids(region, cluster, owner_org, monkeypatch):
    from deployments import services

    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="eu", plan="dedicated", tier="1k", region="aws-eu-west-1"
    )
    cluster.state.fail_next("PATCH", "/namespaces/", 403, "Forbidden", "namespaces is forbidden")
    monkeypatch.setattr(reconcile_module, "driver_for", lambda region: KubernetesDriver())

    assert reconcile_deployment(deployment.pk).state == "failed"

    failed = Deployment.objects.get(pk=deployment.pk)
    assert failed.status == "failed" and "service account needs the permission" in failed.last_error
