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


@pytest.fixture(autouse=True)
def emqx_licence(settings):
    settings.EMQX_LICENSE_KEY = "test-licence-key"


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
            # TLS listeners on: the reconciler issued the deployment's certificate before its first apply.
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


def _deployments_url(owner_org) -> str:
    return f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"


def _create(client, owner_org, **extra):
    body = {"name": "eu", "plan": "dedicated", "tier": "1k", "region": "aws-eu-west-1", **extra}
    return client.post(_deployments_url(owner_org), body, format="json")


@pytest.mark.parametrize(
    ("version", "message"), [("5.0.26", "5.1.1 or later"), ("5.7.2", "not offered"), ("5.8", "release number")]
)
def test_create_is_refused_naming_emqx_version_when_release_cannot_run(region, owner_org, key_client, version, message):
    client = key_client(owner_org.owner_secret)
    response = _create(client, owner_org, emqx_version=version)
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    errors = response.json()["errors"]
    assert errors[0]["field"] == "emqx_version" and message in errors[0]["message"]
    assert not Deployment.objects.filter(project=owner_org.default_project).exists()


def test_create_records_the_default_release_and_renders_it_when_none_is_asked(region, cluster, owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    created = _create(client, owner_org)
    assert created.status_code == 202, created.content
    assert created.json()["deployment"]["emqx_version"] == "5.8.6"
    newer = _create(client, owner_org, name="eu2", emqx_version="5.10.2")
    assert newer.json()["deployment"]["emqx_version"] == "5.10.2"


def test_emqx_version_is_refused_when_region_runs_mosquitto(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    response = _create(client, owner_org, region="local", emqx_version="5.8.6")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "emqx_version"


def test_acl_order_emqx_cannot_express_is_refused_naming_the_rules_and_nothing_is_saved(region, owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    url = f"{_deployments_url(owner_org)}/{_create(client, owner_org).json()['deployment']['id']}/acl-rules"
    first = client.post(
        url, {"permission": "deny", "action": "publish", "topic": "a/#", "username": "alice"}, format="json"
    )
    assert first.status_code == 201, first.content
    refused = client.post(
        url, {"permission": "allow", "action": "publish", "topic": "a/b", "client_id": "c1"}, format="json"
    )
    assert refused.status_code == 400, refused.content
    error = refused.json()["errors"][0]
    assert error["field"] == "position"
    assert "rule 1 (deny publish 'a/#' for username 'alice')" in error["message"]
    assert "rule 2 (allow publish 'a/b' for client id 'c1')" in error["message"]
    # The same rule placed first is an order EMQX can express.
    placed = client.post(
        url,
        {"permission": "allow", "action": "publish", "topic": "a/b", "client_id": "c1", "position": 0},
        format="json",
    )
    assert placed.status_code == 201, placed.content
    assert [r["topic"] for r in client.get(url).json()["results"]] == ["a/b", "a/#"]


def test_acl_rules_beyond_100_for_one_username_are_refused_when_region_runs_emqx(region, owner_org, key_client):
    from deployments import services

    client = key_client(owner_org.owner_secret)
    public_id = _create(client, owner_org).json()["deployment"]["id"]
    deployment = Deployment.objects.get(public_id=public_id)
    for index in range(100):
        services.acl_rule_create(
            deployment=deployment, actor=None, permission="allow", action="all", topic=f"t/{index}", username="bob"
        )
    refused = client.post(
        f"{_deployments_url(owner_org)}/{public_id}/acl-rules",
        {"permission": "allow", "action": "all", "topic": "t/100", "username": "bob"},
        format="json",
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "username"
    assert "at most 100 per subject" in refused.json()["errors"][0]["message"]


def test_rate_limit_answer_says_what_each_emqx_release_enforces(region, owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    public_id = _create(client, owner_org).json()["deployment"]["id"]
    body = client.get(f"{_deployments_url(owner_org)}/{public_id}/rate-limits").json()
    assert body["emqx_version"] == "5.8.6"
    keys = {(e["field"], e["emqx_versions"]): e["emqx_key"] for e in body["emqx_enforcement"]["global"]}
    assert keys[("messages_rate", "5.1.1-5.8.x")] == "limiter.messages_rate"
    assert keys[("messages_rate", "5.9.0 and later")] == "mqtt.limiter.messages_rate"
    assert [e["field"] for e in body["emqx_enforcement"]["listener"]] == ["max_conn_rate"]
    assert body["honoured"]["listener"] == ["max_conn_rate"]  # no per-listener message or byte rate on EMQX
    assert "divided by the number of nodes" in body["note"]


def test_rate_limit_answer_has_no_emqx_enforcement_when_region_runs_mosquitto(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    public_id = _create(client, owner_org, region="local").json()["deployment"]["id"]
    body = client.get(f"{_deployments_url(owner_org)}/{public_id}/rate-limits").json()
    assert body["emqx_enforcement"] is None and body["emqx_version"] is None


def test_render_manifests_prints_documents_without_contacting_the_cluster_and_redacts_secrets(
    region, cluster, owner_org
):
    import io

    import yaml

    from deployments import services

    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="eu", plan="dedicated", tier="1k", region="local"
    )
    out = io.StringIO()
    call_command(
        "render_manifests", deployment=deployment.public_id, region="aws-eu-west-1", emqx_version="5.9.1", stdout=out
    )
    documents = list(yaml.load_all(out.getvalue(), Loader=yaml.CSafeLoader))
    assert [d["kind"] for d in documents] == ["Namespace", "ResourceQuota", "NetworkPolicy", "Secret", "Secret", "EMQX"]
    assert documents[-1]["spec"]["image"] == "emqx/emqx-enterprise:5.9.1"
    assert "mqtt {" in documents[-1]["spec"]["config"]["data"]
    secret_text = crypto.decrypt_str(deployment.api_secret_encrypted)
    assert secret_text not in out.getvalue() and "test-licence-key" not in out.getvalue()
    assert documents[3]["stringData"] == {"key": "<redacted>", "secret": "<redacted>"}
    assert cluster.state.seen == []
    assert Deployment.objects.get(pk=deployment.pk).region.code == "local"  # nothing saved


def test_render_manifests_refuses_a_local_region_and_an_old_release(region, owner_org):
    from django.core.management.base import CommandError

    from deployments import services

    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="eu", plan="dedicated", tier="1k", region="local"
    )
    with pytest.raises(CommandError, match="not kubernetes"):
        call_command("render_manifests", deployment=deployment.public_id)
    with pytest.raises(CommandError, match="--emqx-version: .*5.1.1 or later"):
        call_command("render_manifests", deployment=deployment.public_id, region="aws-eu-west-1", emqx_version="5.0.9")


def test_an_already_inexpressible_acl_list_can_still_be_reordered_toward_one_emqx_accepts(
    region, owner_org, key_client
):
    from deployments.models import AclRule

    client = key_client(owner_org.owner_secret)
    public_id = _create(client, owner_org).json()["deployment"]["id"]
    deployment = Deployment.objects.get(public_id=public_id)
    # Stored before the check existed: username rule, then two conflicting client rules.
    for position, (permission, topic, username, client_id) in enumerate(
        [("deny", "a/#", "alice", None), ("allow", "a/b", None, "c1"), ("allow", "a/c", None, "c2")]
    ):
        AclRule.objects.create(
            deployment=deployment,
            position=position,
            permission=permission,
            action="publish",
            topic=topic,
            username=username,
            client_id=client_id,
        )
    url = f"{_deployments_url(owner_org)}/{public_id}/acl-rules"
    rules = client.get(url).json()["results"]
    moved = client.patch(f"{url}/{rules[1]['id']}", {"position": 0}, format="json")
    assert moved.status_code == 200, moved.content  # still one conflict left, but no worse than before
    moved = client.patch(f"{url}/{rules[2]['id']}", {"position": 0}, format="json")
    assert moved.status_code == 200, moved.content
    assert [r["topic"] for r in client.get(url).json()["results"]] == ["a/c", "a/b", "a/#"]


@pytest.mark.parametrize("topic", ["devices/${username}/state", "eq a/b"])
def test_an_acl_topic_emqx_would_expand_or_match_exactly_answers_400_when_region_runs_emqx(
    region, owner_org, key_client, topic
):
    """The same refusal as in a mosquitto region: one rule means one thing wherever it runs."""
    client = key_client(owner_org.owner_secret)
    url = f"{_deployments_url(owner_org)}/{_create(client, owner_org).json()['deployment']['id']}"
    rule = client.post(f"{url}/acl-rules", {"permission": "allow", "action": "all", "topic": topic}, format="json")
    assert rule.status_code == 400, rule.content
    assert rule["Content-Type"].startswith("application/problem+json")
    [error] = rule.json()["errors"]
    assert error["field"] == "topic" and ("'${'" if "${" in topic else "'eq '") in error["message"], error
    assert client.get(f"{url}/acl-rules").json()["results"] == []


@pytest.mark.parametrize("name", [".", ".."])
def test_a_dot_segment_username_or_client_id_answers_400_when_region_runs_emqx(region, owner_org, key_client, name):
    """EMQX's API addresses users and rule lists by name in the URL path, where `.` and `..` are dot segments:
    deleting a user called `..` would delete the deployment's password authenticator."""
    client = key_client(owner_org.owner_secret)
    url = f"{_deployments_url(owner_org)}/{_create(client, owner_org).json()['deployment']['id']}"

    user = client.post(f"{url}/mqtt-users", {"username": name, "password": "dots-password"}, format="json")
    assert user.status_code == 400, user.content
    assert user["Content-Type"].startswith("application/problem+json")
    assert user.json()["errors"][0]["field"] == "username"
    for subject in ("username", "client_id"):
        rule = client.post(
            f"{url}/acl-rules", {"permission": "deny", "action": "all", "topic": "#", subject: name}, format="json"
        )
        assert rule.status_code == 400, rule.content
        assert rule["Content-Type"].startswith("application/problem+json")
        assert rule.json()["errors"][0]["field"] == subject
    assert client.get(f"{url}/mqtt-users").json()["results"] == []
    assert client.get(f"{url}/acl-rules").json()["results"] == []
