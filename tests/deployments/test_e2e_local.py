"""End to end on real parts: the REST API, a real Celery worker, real mosquitto brokers and real paho-mqtt clients."""

import socket
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.celery_worker import broker_pids
from tests.deployments.test_local_driver import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def wait_for_status(client, url, wanted, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url).json()
        if body["status"] == wanted and body["observed_generation"] >= body["generation"]:
            return body
        if body["status"] == "failed" and wanted != "failed":
            raise AssertionError(f"deployment failed: {body['last_error']}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {wanted}: {body}")
        time.sleep(0.1)


def wait_operation(client, url, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(url).json()
        if body["status"] in ("succeeded", "failed"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"operation never finished: {body}")
        time.sleep(0.1)


def port_free(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def setup(celery_worker, owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    return client, base, celery_worker


def _create_running(client, base, name="plant"):
    response = client.post(base, {"name": name, "plan": "dedicated", "tier": "1k", "region": "local"}, format="json")
    assert response.status_code == 202, response.content
    url = f"{base}/{response.json()['deployment']['id']}"
    body = wait_for_status(client, url, "running")
    return url, body


def test_broker_serves_users_and_acl_through_its_whole_life_when_driven_by_the_api(setup, brokers_dir):
    client, base, worker = setup
    url, body = _create_running(client, base)
    port = body["connection"]["ports"]["mqtt"]
    assert body["connection"]["host"] == "127.0.0.1"
    assert len(broker_pids(brokers_dir)) == 1

    user = client.post(f"{url}/mqtt-users", {"username": "sensor", "password": "sensor-secret"}, format="json")
    assert user.status_code == 201, user.content
    assert "password" not in user.json()
    rule = client.post(
        f"{url}/acl-rules",
        {"permission": "deny", "action": "publish", "topic": "secret/#", "username": "sensor"},
        format="json",
    )
    assert rule.status_code == 201, rule.content
    wait_operation(client, f"{url}/operations/{rule.json()['operation']}")

    sensor = Client(port, "sensor", "sensor-secret")
    assert not sensor.connect().is_failure
    sensor.subscribe("#")
    sensor.publish("secret/plans", b"denied")
    sensor.publish("public/news", b"hello")
    assert sensor.received(1) == [("public/news", b"hello")]  # QoS 1 from one publisher arrives in order
    assert sensor.messages.empty()
    sensor.close()
    assert Client(port, "sensor", "wrong-password").connect().is_failure

    stop = client.post(f"{url}/stop", {}, format="json")
    assert stop.status_code == 202, stop.content
    wait_for_status(client, url, "stopped")
    assert broker_pids(brokers_dir) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    assert client.post(f"{url}/start", {}, format="json").status_code == 202
    body = wait_for_status(client, url, "running")
    assert body["connection"]["ports"]["mqtt"] == port
    again = Client(port, "sensor", "sensor-secret")
    assert not again.connect().is_failure
    again.close()

    deleted = client.delete(url)
    assert deleted.status_code == 202, deleted.content
    wait_for_status(client, url, "deleted")
    assert broker_pids(brokers_dir) == []
    assert port_free(port)
    assert not (brokers_dir / url.rsplit("/", 1)[1]).exists()  # config, data and ports file all gone
    kinds = [e["kind"] for e in client.get(f"{url}/events?page_size=200").json()["results"]]
    assert "status.changed" in kinds


def test_queued_qos1_messages_survive_restart_when_session_is_persistent(setup, brokers_dir):
    client, base, _worker = setup
    url, body = _create_running(client, base, name="durable")
    port = body["connection"]["ports"]["mqtt"]
    for username in ("subscriber", "publisher"):
        assert (
            client.post(
                f"{url}/mqtt-users", {"username": username, "password": f"{username}-pw"}, format="json"
            ).status_code
            == 201
        )
    wait_for_status(client, url, "running")
    expiry = Properties(PacketTypes.CONNECT)
    expiry.SessionExpiryInterval = 3600
    subscriber = Client(port, "subscriber", "subscriber-pw", client_id="durable-1", protocol=mqtt.MQTTv5)
    assert not subscriber.connect(clean_start=False, properties=expiry).is_failure
    subscriber.subscribe("telemetry/#")
    subscriber.close()
    publisher = Client(port, "publisher", "publisher-pw")
    assert not publisher.connect().is_failure
    for n in range(100):
        publisher.publish(f"telemetry/{n}", str(n).encode())
    publisher.close()
    pid_before = broker_pids(brokers_dir)

    restart = client.post(f"{url}/restart", {}, format="json")
    assert restart.status_code == 202, restart.content
    operation = wait_operation(client, f"{url}/operations/{restart.json()['operation']['id']}")
    assert operation["status"] == "succeeded"
    assert broker_pids(brokers_dir) != pid_before

    back = Client(port, "subscriber", "subscriber-pw", client_id="durable-1", protocol=mqtt.MQTTv5)
    assert not back.connect(clean_start=False, properties=expiry).is_failure
    assert sorted(int(payload) for _, payload in back.received(100)) == list(range(100))
    back.close()
