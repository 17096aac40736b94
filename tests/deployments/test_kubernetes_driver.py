"""KubernetesDriver end to end: the real `kubernetes` client against the HTTP fake API server, EMQX's API faked too."""

import base64
import dataclasses
import hashlib

import pytest

from deployments import manifests
from deployments.drivers.base import (
    AclEntry,
    BrokerSpec,
    MqttCredential,
    PermanentDriverError,
    RateLimit,
    RegionTarget,
    TemporaryDriverError,
    TlsMaterial,
)
from deployments.drivers.kubernetes import KubernetesDriver
from deployments.emqx_api import EmqxApi
from tests.fakes.emqx_api import AUTHN, FakeEmqxServer
from tests.fakes.kubernetes_api import FakeKubernetesServer

NS = "mqtt-dep-k8s1"
EMQX_KEY = ("apps.emqx.io/v2beta1", "emqxes", NS, "emqx")


def _credential(username: str, password: str) -> MqttCredential:
    salt = b"a1b2c3d4e5f60718"
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return MqttCredential(
        username=username, salt_b64=base64.b64encode(salt).decode(), hash_b64=base64.b64encode(derived).decode()
    )


@pytest.fixture
def cluster():
    server = FakeKubernetesServer().start()
    yield server
    server.stop()


@pytest.fixture
def broker_api():
    server = FakeEmqxServer(api_key="controlplane", api_secret="bootstrap-secret").start()
    yield server
    server.stop()


@pytest.fixture
def management_urls():
    return []


@pytest.fixture
def driver(broker_api, management_urls):
    def emqx_api_factory(*, base_url, api_key, api_secret):
        # The cluster-internal management URL is not reachable from a test: keep it, talk to the fake instead.
        management_urls.append(base_url)
        return EmqxApi(broker_api.url, api_key, api_secret)

    return KubernetesDriver(emqx_api_factory=emqx_api_factory)


@pytest.fixture
def spec(cluster):
    return BrokerSpec(
        name="dep_K8S1",
        region=RegionTarget(code="eu-1", driver="kubernetes", kubeconfig=cluster.kubeconfig()),
        running=True,
        max_connections=1000,
        messages_per_second=100,
        replicas=2,
        users=(_credential("alice", "pw"),),
        acl=(AclEntry(permission="allow", action="all", topic="dev/alice/#", username="alice"),),
        api_key="controlplane",
        api_secret="bootstrap-secret",
        license_key="licence",
    )


def _make_ready(cluster, ip="203.0.113.7"):
    cluster.state.mark_emqx_ready(NS, replicas=2)
    cluster.state.set_listeners_service(NS, ip=ip)


def test_apply_creates_every_object_by_server_side_apply_when_namespace_is_new(driver, spec, cluster):
    observed = driver.apply(spec)
    patches = cluster.state.requests_for("PATCH")
    assert len(patches) == 6
    for request in patches:
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == ["controlplane"]
        assert request.query["force"] == ["true"]
    state = cluster.state
    assert state.get("v1", "namespaces", "", NS)["metadata"]["labels"]["controlplane.io/deployment"] == "dep_K8S1"
    assert state.get("v1", "resourcequotas", NS, "broker-quota") is not None
    assert state.get("networking.k8s.io/v1", "networkpolicies", NS, "broker-ingress") is not None
    secret = state.get("v1", "secrets", NS, "emqx-api-key")
    assert base64.b64decode(secret["data"]["secret"]) == b"bootstrap-secret"
    emqx = state.get(*EMQX_KEY)
    assert emqx["spec"]["coreTemplate"]["spec"]["replicas"] == 2
    assert observed.phase == "starting"


def test_apply_changes_nothing_when_spec_is_unchanged(driver, spec, cluster):
    driver.apply(spec)
    before = cluster.state.get(*EMQX_KEY)["metadata"]
    driver.apply(spec)
    after = cluster.state.get(*EMQX_KEY)["metadata"]
    assert (after["generation"], after["resourceVersion"], after["uid"]) == (
        before["generation"],
        before["resourceVersion"],
        before["uid"],
    )


def test_apply_bumps_generation_when_spec_changes(driver, spec, cluster):
    driver.apply(spec)
    driver.apply(dataclasses.replace(spec, replicas=3))
    emqx = cluster.state.get(*EMQX_KEY)
    assert emqx["metadata"]["generation"] == 2
    assert emqx["spec"]["coreTemplate"]["spec"]["replicas"] == 3


def test_apply_reports_running_with_endpoints_and_pushes_users_and_acl_when_operator_says_ready(
    driver, spec, cluster, broker_api, management_urls
):
    driver.apply(spec)
    assert broker_api.users() == {}
    _make_ready(cluster)
    observed = driver.apply(spec)
    assert observed.phase == "running"
    assert observed.host == "203.0.113.7"
    # No certificate yet: the TLS listeners are disabled, so the operator's Service has no port for them.
    assert observed.ports == {"mqtt": 1883, "ws": 8083}
    assert observed.ready_replicas == 2
    assert list(broker_api.users()) == ["alice"]
    assert [r["topic"] for r in broker_api.rules()["users"]["alice"]] == ["dev/alice/#"]
    assert management_urls == [f"http://emqx-dashboard.{NS}.svc:18083"]


def test_apply_deploys_a_stored_placeholder_rule_as_written_and_says_what_it_approximated(
    driver, spec, cluster, broker_api
):
    stored = (
        AclEntry(permission="allow", action="publish", topic="dev/${username}/state", username="alice"),
        AclEntry(permission="allow", action="all", topic="dev/${clientid}/#", username="alice"),
    )
    driver.apply(spec)
    _make_ready(cluster)
    observed = driver.apply(dataclasses.replace(spec, acl=stored))
    assert observed.phase == "running"
    assert [r["topic"] for r in broker_api.rules()["users"]["alice"]] == ["eq dev/${username}/state"]
    assert observed.details["acl"].startswith("approximated on the strict side: rule 2 (allow all 'dev/${clientid}/#'")
    assert driver.apply(spec).details["acl"] == "exact"


def test_apply_stays_starting_when_ready_but_load_balancer_has_no_address(driver, spec, cluster):
    driver.apply(spec)
    cluster.state.mark_emqx_ready(NS, replicas=2)
    cluster.state.set_listeners_service(NS)
    observed = driver.apply(spec)
    assert observed.phase == "starting"
    assert "load balancer" in observed.message


def test_apply_uses_hostname_when_load_balancer_gives_one(driver, spec, cluster):
    driver.apply(spec)
    cluster.state.mark_emqx_ready(NS, replicas=2)
    cluster.state.set_listeners_service(NS, hostname="abc.elb.example.com")
    assert driver.apply(spec).host == "abc.elb.example.com"


def test_apply_recreates_secret_when_it_was_deleted_behind_our_back(driver, spec, cluster):
    driver.apply(spec)
    cluster.state.delete_object("v1", "secrets", NS, "emqx-api-key")
    driver.apply(spec)
    assert cluster.state.get("v1", "secrets", NS, "emqx-api-key") is not None


def test_apply_rolls_pods_and_reports_nonce_only_after_ready_again_when_restart_nonce_bumped(driver, spec, cluster):
    driver.apply(spec)
    _make_ready(cluster)
    assert driver.apply(spec).restart_nonce == 0
    generation = cluster.state.get(*EMQX_KEY)["metadata"]["generation"]

    restarting = dataclasses.replace(spec, restart_nonce=1)
    observed = driver.apply(restarting)
    emqx = cluster.state.get(*EMQX_KEY)
    assert emqx["spec"]["coreTemplate"]["metadata"]["annotations"]["controlplane.io/restart-nonce"] == "1"
    assert emqx["metadata"]["generation"] == generation + 1
    assert observed.phase == "starting" and observed.restart_nonce == 0

    cluster.state.mark_emqx_ready(NS, ready=False)
    assert driver.apply(restarting).restart_nonce == 0
    cluster.state.mark_emqx_ready(NS, replicas=2)
    observed = driver.apply(restarting)
    assert (observed.phase, observed.restart_nonce) == ("running", 1)


def test_apply_waits_when_ready_condition_is_from_an_older_generation(driver, spec, cluster):
    driver.apply(spec)
    cluster.state.mark_emqx_ready(NS, replicas=2, observed_generation=1)
    cluster.state.set_listeners_service(NS, ip="203.0.113.7")
    driver.apply(dataclasses.replace(spec, replicas=3))
    assert driver.observe(dataclasses.replace(spec, replicas=3)).phase == "starting"


def test_apply_deletes_emqx_but_keeps_namespace_when_stopped(driver, spec, cluster):
    driver.apply(spec)
    _make_ready(cluster)
    observed = driver.apply(dataclasses.replace(spec, running=False))
    assert observed.phase == "stopped"
    assert cluster.state.get(*EMQX_KEY) is None
    assert cluster.state.get("v1", "namespaces", "", NS) is not None
    assert cluster.state.get("v1", "secrets", NS, "emqx-api-key") is not None
    assert driver.observe(spec).phase == "stopped"


def test_observe_changes_nothing_when_called(driver, spec, cluster):
    driver.apply(spec)
    _make_ready(cluster)
    patches = len(cluster.state.requests_for("PATCH"))
    observed = driver.observe(spec)
    assert observed.phase == "running" and observed.host == "203.0.113.7"
    assert len(cluster.state.requests_for("PATCH")) == patches


def test_delete_removes_namespace_with_foreground_propagation_and_reports_absent(driver, spec, cluster):
    driver.apply(spec)
    observed = driver.delete(spec)
    assert observed.phase == "absent"
    deletes = cluster.state.requests_for("DELETE", f"/api/v1/namespaces/{NS}")
    assert (
        deletes[0].query.get("propagationPolicy") == ["Foreground"]
        or (deletes[0].body or {}).get("propagationPolicy") == "Foreground"
    )
    assert cluster.state.get(*EMQX_KEY) is None
    assert driver.observe(spec).phase == "absent"
    assert driver.delete(spec).phase == "absent"


@pytest.mark.parametrize("status", [409, 500, 503])
def test_apply_raises_temporary_when_api_server_answers(driver, spec, cluster, status):
    cluster.state.fail_next("PATCH", "/emqxes/", status, "Conflict" if status == 409 else "InternalError")
    with pytest.raises(TemporaryDriverError, match=str(status)):
        driver.apply(spec)


def test_apply_raises_permanent_with_server_message_when_api_server_answers_422(driver, spec, cluster):
    cluster.state.fail_next(
        "PATCH", "/emqxes/", 422, "Invalid", 'EMQX.apps.emqx.io "emqx" is invalid: spec.image: Required value'
    )
    with pytest.raises(PermanentDriverError, match="spec.image: Required value"):
        driver.apply(spec)


def test_apply_raises_permanent_naming_quota_when_api_server_answers_403_quota(driver, spec, cluster):
    cluster.state.fail_next(
        "PATCH", "/namespaces/", 403, "Forbidden", "exceeded quota: region-quota, requested: services.loadbalancers=1"
    )
    with pytest.raises(PermanentDriverError, match="quota is exhausted"):
        driver.apply(spec)


def test_apply_raises_temporary_when_api_server_refuses_connections(driver, spec, cluster):
    cluster.stop()
    with pytest.raises(TemporaryDriverError, match="unreachable"):
        driver.apply(spec)


def test_apply_raises_permanent_when_spec_is_invalid(driver, spec):
    with pytest.raises(PermanentDriverError, match="invalid broker configuration"):
        driver.apply(dataclasses.replace(spec, api_key=""))


def _roll_out(cluster, emqx_fake=None):
    """The operator's pass; the new nodes read the bootstrap file, so EMQX knows the key written there."""
    cluster.state.operator_reconcile(NS)
    if emqx_fake is not None:
        for line in cluster.state.nodes_bootstrap_lines(NS):
            key, _, secret = line.partition(":")
            if key == emqx_fake.state.api_key:
                emqx_fake.state.api_secret = secret


def test_updates_keep_fitting_the_pvc_quota_when_operator_keeps_no_old_statefulsets(driver, spec, cluster):
    driver.apply(spec)
    _roll_out(cluster)
    for nonce in (1, 2, 3):
        driver.apply(dataclasses.replace(spec, restart_nonce=nonce))
        _roll_out(cluster)
    assert cluster.state.operator_events == []
    assert len(cluster.state.statefulsets[NS]) == 1
    assert cluster.state.pvc_count(NS) == spec.replicas


def test_third_update_exceeds_the_pvc_quota_when_operator_keeps_its_default_history(driver, spec, cluster, monkeypatch):
    render = manifests.render_emqx

    def operator_default(spec):
        emqx = render(spec)
        del emqx["spec"]["revisionHistoryLimit"]  # the CRD's default: 3 old StatefulSets with their PVCs
        return emqx

    monkeypatch.setattr(manifests, "render_emqx", operator_default)
    driver.apply(spec)
    _roll_out(cluster)
    driver.apply(dataclasses.replace(spec, restart_nonce=1))
    _roll_out(cluster)
    assert cluster.state.operator_events == []
    driver.apply(dataclasses.replace(spec, restart_nonce=2))
    _roll_out(cluster)
    assert "exceeded quota" in cluster.state.operator_events[0]


def test_changed_bootstrap_key_reaches_emqx_through_new_nodes_when_secret_rotates(driver, spec, cluster, broker_api):
    driver.apply(spec)
    _roll_out(cluster, broker_api)
    cluster.state.set_listeners_service(NS, ip="203.0.113.7")
    assert driver.apply(spec).phase == "running"
    operator_line = [line for line in cluster.state.bootstrap_lines(NS) if line.startswith("emqx-operator")]

    rotated = dataclasses.replace(spec, api_secret="rotated-secret")
    observed = driver.apply(rotated)
    # Not pushed yet: the running nodes still hold the old key; the operator's Secret now holds the new one.
    assert observed.phase == "starting"
    assert cluster.state.bootstrap_lines(NS) == ["controlplane:rotated-secret", *operator_line]
    assert broker_api.state.api_secret == "bootstrap-secret"

    _roll_out(cluster, broker_api)  # new nodes start and import the file
    assert broker_api.state.api_secret == "rotated-secret"
    observed = driver.apply(dataclasses.replace(rotated, users=(_credential("bob", "pw"),)))
    assert observed.phase == "running"
    assert list(broker_api.users()) == ["bob"]


def test_rejected_key_is_a_permanent_error_with_a_reason_when_nodes_are_ready(driver, spec, cluster, broker_api):
    driver.apply(spec)
    _make_ready(cluster)
    broker_api.state.api_secret = "what-the-nodes-know"
    with pytest.raises(PermanentDriverError, match="started with another key"):
        driver.apply(spec)


def test_nothing_is_pushed_while_the_operator_replaces_nodes(driver, spec, cluster, broker_api):
    driver.apply(spec)
    _make_ready(cluster)
    with cluster.state.lock:
        status = cluster.state.objects[EMQX_KEY]["status"]["coreNodesStatus"]
        status.update(currentRevision="old", updateRevision="new")
    assert driver.apply(spec).phase == "starting"
    assert broker_api.state.seen == []


def _with_quarantined(spec):
    """alice, and a user whose only rule denies it everything."""
    return dataclasses.replace(
        spec,
        users=(*spec.users, _credential("quarantined", "pw")),
        acl=(*spec.acl, AclEntry(permission="deny", action="all", topic="#", username="quarantined")),
    )


def _quarantined_may_publish(broker_api) -> bool:
    # EMQX's authorization no_match is allow: a user with no rule at all may publish anywhere.
    return broker_api.authorize(client_id="q-1", username="quarantined", action="publish", topic="valves/open") in (
        "allow",
        None,
    )


def test_new_user_is_never_left_without_its_acl_when_the_acl_push_fails(driver, spec, cluster, broker_api):
    quarantined = _with_quarantined(spec)
    driver.apply(quarantined)
    _make_ready(cluster)
    # EMQX's authorization source answers 503 (restarting); authentication calls go through.
    broker_api.state.fail_status, broker_api.state.fail_path_prefix = 503, "/api/v5/authorization/"

    with pytest.raises(TemporaryDriverError):
        driver.apply(quarantined)

    assert "quarantined" not in broker_api.users()
    broker_api.state.fail_status = None
    assert driver.apply(quarantined).phase == "running"
    assert "quarantined" in broker_api.users() and not _quarantined_may_publish(broker_api)


def test_removed_user_keeps_its_acl_until_it_is_gone_when_the_user_removal_fails(driver, spec, cluster, broker_api):
    quarantined = _with_quarantined(spec)
    driver.apply(quarantined)
    _make_ready(cluster)
    driver.apply(quarantined)
    broker_api.connect(client_id="q-1", username="quarantined")
    broker_api.state.fail_status, broker_api.state.fail_path_prefix = 503, f"{AUTHN}/users/"
    broker_api.state.fail_method = "DELETE"

    with pytest.raises(TemporaryDriverError):
        driver.apply(spec)  # quarantined and its rule removed together

    assert "quarantined" in broker_api.users() and not _quarantined_may_publish(broker_api)
    broker_api.state.fail_status = None
    driver.apply(spec)
    assert "quarantined" not in broker_api.users() and "quarantined" not in broker_api.rules()["users"]
    # Its connection went with it: EMQX checks a password at CONNECT only, and its rules are gone.
    assert "q-1" not in broker_api.connected()


def test_removed_limit_is_lifted_in_running_config_when_operator_merges(driver, spec, cluster):
    limited = dataclasses.replace(spec, rate_limits=(RateLimit(level="connection", messages_rate=10),))
    driver.apply(limited)
    _roll_out(cluster)
    assert cluster.state.running_config[NS]["listeners"]["tcp"]["default"]["messages_rate"] == "10/s"
    driver.apply(spec)
    _roll_out(cluster)
    assert cluster.state.running_config[NS]["listeners"]["tcp"]["default"]["messages_rate"] == "infinity"


def test_apply_fails_permanently_naming_the_reason_when_version_is_below_5_1_1(driver, spec, cluster):
    with pytest.raises(PermanentDriverError, match="5.1.1 or later"):
        driver.apply(dataclasses.replace(spec, version="5.0.26"))
    assert cluster.state.requests_for("PATCH") == []


def test_tls_ports_are_published_when_the_spec_carries_a_certificate(driver, spec, cluster):
    with_tls = dataclasses.replace(spec, tls=TlsMaterial(secret_name="dep-tls"))
    driver.apply(with_tls)
    _make_ready(cluster)
    observed = driver.apply(with_tls)
    assert observed.ports == {"mqtt": 1883, "mqtts": 8883, "ws": 8083, "wss": 8084}
    volumes = cluster.state.get(*EMQX_KEY)["spec"]["coreTemplate"]["spec"]["extraVolumes"]
    assert volumes == [{"name": "deployment-tls", "secret": {"secretName": "dep-tls"}}]
