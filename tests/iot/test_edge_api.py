"""Edge nodes through the REST API without brokers: contracts, credentials shown once, the broker user confined to
edge/{node}/#, configuration versions, bad input (nothing half-created), tenancy and audit."""

import json

import pytest
from pyhocon import ConfigFactory

from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"


def fields(response):
    assert response["Content-Type"] == PROBLEM, response.content[:300]
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def _with_address(deployment, *, mqtts=True):
    from deployments import tls_services
    from deployments.models import Deployment

    ports = {"mqtt": 18830, "ws": 18831} | ({"mqtts": 18832, "wss": 18833} if mqtts else {})
    Deployment.objects.filter(pk=deployment.pk).update(endpoints={"host": "127.0.0.1", "ports": ports})
    deployment.refresh_from_db()
    if mqtts:
        tls_services.server_certificate_ensure(deployment=deployment)


def _create(client, base, **extra):
    body = {"name": "gw-1", "kind": "mosquitto", "up_topics": ["sensors/#"], "down_topics": ["commands/#"], **extra}
    response = client.post(f"{base}/edge-nodes", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_created_node_answers_201_with_credentials_once_and_a_confined_broker_user_when_posted(client, base, premium):
    from deployments.extensions import contributed_users
    from deployments.models import Operation
    from deployments.passwords import verify_mqtt_password
    from iot.edge_models import EdgeNode

    body = _create(client, base)
    assert body["id"].startswith("edg_") and body["name"] == "gw-1" and body["kind"] == "mosquitto"
    assert body["online"] is False and body["config"] == {
        "desired_version": 0,
        "applied_version": 0,
        "applied_at": None,
        "behind": False,
    }
    assert body["topics"]["status"] == "edge/gw-1/status" and body["topics"]["config"] == "edge/gw-1/config"
    credentials = body["credentials"]
    assert credentials["username"].startswith("$edge-") and len(credentials["password"]) >= 24
    node = EdgeNode.objects.get(name="gw-1")
    from deployments.drivers.base import MqttCredential

    assert verify_mqtt_password(credentials["password"], MqttCredential(node.username, node.salt_b64, node.hash_b64))
    assert credentials["password"] not in json.dumps(list(EdgeNode.objects.values()), default=str)
    operation = Operation.objects.get(public_id=body["operation"])
    assert operation.kind == "configure" and operation.params["change"] == "edge_node.create"
    users = {u.username: u for u in contributed_users(premium)}
    assert users[node.username].confined_to == ("edge/gw-1/#",) and not users[node.username].is_superuser
    shown = client.get(f"{base}/edge-nodes/gw-1").json()
    assert "credentials" not in shown and credentials["password"] not in json.dumps(shown)


def test_create_answer_carries_the_bridge_file_with_the_password_and_the_download_a_placeholder(client, base, premium):
    _with_address(premium)
    body = _create(client, base, kind="nanomq")
    password = body["credentials"]["password"]
    node = ConfigFactory.parse_string(body["bridge_config"])["bridges"]["mqtt"][f"{premium.public_id}_gw_1"]
    assert node["password"] == password and node["server"] == "tls+mqtt-tcp://127.0.0.1:18832"
    download = client.get(f"{base}/edge-nodes/gw-1/config")
    assert download.status_code == 200 and download["Content-Type"].startswith("text/plain")
    assert 'filename="nanomq-bridge-gw-1.conf"' in download["Content-Disposition"]
    text = download.content.decode()
    assert password not in text and "REPLACE-WITH-THE-NODE-PASSWORD" in text
    assert f"/etc/nanomq/certs/{premium.public_id}-ca.pem" in text


def test_download_is_plain_mqtt_when_the_deployment_serves_no_tls(client, base, premium):
    _with_address(premium, mqtts=False)
    _create(client, base)
    text = client.get(f"{base}/edge-nodes/gw-1/config").content.decode()
    assert "address 127.0.0.1:18830" in text.splitlines() and "bridge_cafile" not in text


def test_download_takes_a_ca_path_and_refuses_a_bad_one_when_asked(client, base, premium):
    _with_address(premium)
    _create(client, base)
    ok = client.get(f"{base}/edge-nodes/gw-1/config?ca_file=/opt/edge/ca.pem")
    assert "bridge_cafile /opt/edge/ca.pem" in ok.content.decode().splitlines()
    for bad in ("relative/ca.pem", "/etc/../ca.pem", "/etc/ca.pem\nconnection x", "/etc/c a.pem", "/etc/ca.pem\n"):
        response = client.get(f"{base}/edge-nodes/gw-1/config", {"ca_file": bad})
        assert response.status_code == 400 and "ca_file" in fields(response), bad


def test_download_answers_409_when_the_deployment_has_no_address_yet(client, base, premium):
    _create(client, base)
    response = client.get(f"{base}/edge-nodes/gw-1/config")
    assert response.status_code == 409 and response["Content-Type"] == PROBLEM


def test_second_node_with_the_same_name_is_a_409_and_nothing_changes_when_posted(client, base, premium):
    from deployments.models import Operation
    from iot.edge_models import EdgeNode

    _create(client, base)
    operations = Operation.objects.count()
    response = client.post(f"{base}/edge-nodes", {"name": "gw-1", "kind": "nanomq"}, format="json")
    assert response.status_code == 409 and response["Content-Type"] == PROBLEM
    assert EdgeNode.objects.count() == 1 and Operation.objects.count() == operations


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"name": "gw 1"}, "name"),
        ({"name": "gw\n1"}, "name"),
        ({"name": "gw/1"}, "name"),
        ({"name": "+"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"kind": "emqx"}, "kind"),
        ({"up_topics": ["sensors/#\ntopic # both 2"]}, "up_topics"),
        ({"up_topics": ["a/#/b"]}, "up_topics"),
        ({"up_topics": ["with space/#"]}, "up_topics"),
        ({"up_topics": ['quote"d']}, "up_topics"),
        ({"up_topics": ["#"]}, "up_topics"),
        ({"down_topics": ["+"]}, "down_topics"),
        ({"down_topics": ["config/#"]}, "down_topics"),
        ({"down_topics": "commands/#"}, "down_topics"),
        ({"up_topics": ["sensors/#"], "down_topics": ["sensors/cmd"]}, "down_topics"),
        ({"up_topics": [f"t{i}" for i in range(33)]}, "up_topics"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_node_is_a_400_naming_the_field_and_nothing_is_created_when_posted(client, base, premium, payload, field):
    from audit.models import AuditEvent
    from deployments.models import Operation
    from iot.edge_models import EdgeNode

    operations = Operation.objects.count()
    body = {"name": "gw-1", "kind": "mosquitto", **payload}
    response = client.post(f"{base}/edge-nodes", body, format="json")
    assert response.status_code == 400, response.content
    assert any(key == field or key.startswith(f"{field}.") for key in fields(response)), fields(response)
    assert not EdgeNode.objects.exists() and Operation.objects.count() == operations
    assert not AuditEvent.objects.filter(action__startswith="edge_node").exists()


def test_configuration_versions_count_up_and_the_node_is_behind_until_acknowledged_when_set(client, base, premium):
    from audit.models import AuditEvent
    from iot import edge_services
    from iot.agent import leases

    _create(client, base)
    first = client.post(
        f"{base}/edge-nodes/gw-1/configurations", {"settings": {"sample_rate": 10}}, format="json"
    ).json()
    assert first["version"] == 1 and first["up_topics"] == ["sensors/#"] and first["published_at"] is None
    assert first["document"]["topics"]["up"] == [{"local": "sensors/#", "cloud": "edge/gw-1/sensors/#"}]
    assert first["document"]["ack"] == {"topic": "edge/config/ack", "payload": {"version": 1}}
    second = client.post(
        f"{base}/edge-nodes/gw-1/configurations", {"up_topics": ["plant/#"], "settings": {"x": 1}}, format="json"
    )
    assert second.status_code == 201 and second.json()["version"] == 2
    listed = client.get(f"{base}/edge-nodes/gw-1/configurations").json()["results"]
    assert [c["version"] for c in listed] == [2, 1]
    node = client.get(f"{base}/edge-nodes/gw-1").json()
    assert node["up_topics"] == ["plant/#"] and node["config"]["desired_version"] == 2 and node["config"]["behind"]
    assert [n["name"] for n in client.get(f"{base}/edge-nodes?behind=true").json()["results"]] == ["gw-1"]
    assert AuditEvent.objects.filter(action="edge_node.config.create").count() == 2

    # Only the agent holding the lease records acknowledgements; an ack past the desired version changes nothing.
    token = leases.acquire(deployment_id=premium.pk, holder="a", ttl=30)
    from django.utils import timezone

    now = timezone.now()
    events = [
        edge_services.EdgeEvent(node="gw-1", kind="ack", at=now, version=7),
        edge_services.EdgeEvent(node="gw-1", kind="ack", at=now, version=2),
        edge_services.EdgeEvent(node="gw-1", kind="ack", at=now, version=1),  # late, older: ignored
    ]
    edge_services.edge_events_apply(deployment_id=premium.pk, holder="a", token=token, events=events)
    node = client.get(f"{base}/edge-nodes/gw-1").json()
    assert node["config"]["applied_version"] == 2 and not node["config"]["behind"] and node["config"]["applied_at"]
    assert node["online"] is True and node["last_seen"]  # an acknowledgement came over the node's bridge
    assert client.get(f"{base}/edge-nodes?behind=true").json()["results"] == []
    from iot.services import LeaseLost

    with pytest.raises(LeaseLost):
        edge_services.edge_events_apply(deployment_id=premium.pk, holder="b", token=token, events=events)


def test_configuration_over_64_kb_is_a_400_and_no_version_is_made_when_posted(client, base, premium):
    from iot.edge_models import EdgeConfig, EdgeNode

    _create(client, base)
    response = client.post(f"{base}/edge-nodes/gw-1/configurations", {"settings": {"blob": "x" * 70000}}, format="json")
    assert response.status_code == 400 and "settings" in fields(response)
    assert response.json()["errors"][0]["code"] == "too-large"
    bad_mapping = client.post(f"{base}/edge-nodes/gw-1/configurations", {"down_topics": ["a\nb"]}, format="json")
    assert bad_mapping.status_code == 400
    not_object = client.post(f"{base}/edge-nodes/gw-1/configurations", {"settings": [1]}, format="json")
    assert not_object.status_code == 400 and "settings" in fields(not_object)
    assert not EdgeConfig.objects.exists() and EdgeNode.objects.get().desired_version == 0


def test_deleting_a_node_removes_its_user_and_queues_its_retained_topics_to_clear(client, base, premium):
    from deployments.extensions import contributed_users
    from iot.edge_models import EdgeNode, EdgeRetainedClear

    body = _create(client, base)
    assert client.delete(f"{base}/edge-nodes/gw-1").status_code == 204
    assert not EdgeNode.objects.exists()
    assert body["credentials"]["username"] not in {u.username for u in contributed_users(premium)}
    assert sorted(EdgeRetainedClear.objects.values_list("topic", flat=True)) == ["edge/gw-1/config", "edge/gw-1/status"]
    assert client.get(f"{base}/edge-nodes/gw-1").status_code == 404


def test_rotating_credentials_issues_a_new_username_and_password_once_when_posted(client, base, premium):
    body = _create(client, base)
    rotated = client.post(f"{base}/edge-nodes/gw-1/credentials")
    assert rotated.status_code == 201
    new = rotated.json()["credentials"]
    assert new["username"] != body["credentials"]["username"] and new["password"] != body["credentials"]["password"]


def test_nodes_of_another_organization_are_invisible_when_addressed(client, base, premium, org_factory, key_client):
    _create(client, base)
    other = org_factory()
    theirs = premium_deployment(other, name="theirs")
    other_client = key_client(other.owner_secret)
    their_base = f"/api/v1/organizations/{other.id}/projects/{other.default_project.public_id}/deployments"
    assert other_client.get(f"{their_base}/{theirs.public_id}/edge-nodes").json()["results"] == []
    # Our deployment under their organization's URL: 404, never our node.
    wrong = f"{their_base}/{premium.public_id}/edge-nodes/gw-1"
    assert other_client.get(wrong).status_code == 404
    assert other_client.get(f"{wrong}/config").status_code == 404
    assert other_client.delete(wrong).status_code == 404


def test_edge_nodes_answer_409_on_a_deployment_of_another_plan(client, owner_org):
    from deployments import services

    dedicated, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="ded", plan="dedicated", tier="1k", region="local"
    )
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    response = client.post(f"{base}/{dedicated.public_id}/edge-nodes", {"name": "gw", "kind": "nanomq"}, format="json")
    assert response.status_code == 409
