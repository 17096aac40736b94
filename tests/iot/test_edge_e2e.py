"""Edge nodes end to end on real parts: the REST API, a real Celery worker reconciling the deployment's mosquitto, a
real platform agent process, and a second, real mosquitto started as the edge node with the bridge file the API
gave, reached by paho clients on both sides."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.iot.agent_process import agents  # noqa: F401
from tests.iot.test_agent_e2e import premium_api, settle, wait_until  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Inbox:
    """A paho client that records what arrives, per topic."""

    def __init__(self, port, *, client_id, username=None, password=None):
        self.port = port
        self.lock = threading.Condition()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connected.set() if not rc.is_failure else None

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self.lock.notify_all()

    def start(self, *topics):
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        done = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, codes, props: done.set()
        self.client.subscribe([(topic, 1) for topic in topics])
        assert done.wait(10), "no SUBACK"
        return self

    def wait_for(self, topic, predicate=lambda payload: True, timeout=15.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for seen, payload, retained in self.messages:
                    if seen == topic and predicate(payload):
                        return payload, retained
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"nothing on {topic} within {timeout}s; seen {self.messages[-5:]}")
                self.lock.wait(remaining)

    def publish(self, topic, payload, *, retain=False):
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class EdgeBroker:
    """mosquitto as an edge node: its own listener, and the bridge file the API gave, as a customer would run it."""

    def __init__(self, directory: pathlib.Path, bridge_file: str):
        self.directory = directory
        self.port = free_port()
        self.log = directory / "edge-mosquitto.log"
        self.conf = directory / "edge-mosquitto.conf"
        self.conf.write_text(
            "user root\n"  # the test runs as root; the files are in a directory only root may read
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest file {self.log}\nlog_type all\nlog_timestamp true\n\n" + bridge_file
        )
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"edge mosquitto did not start:\n{self.logs()}") from None
                time.sleep(0.05)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture
def edge_brokers():
    made: list[EdgeBroker] = []
    yield made
    for broker in made:
        broker.kill()
        print(f"--- edge mosquitto ---\n{broker.logs()}")


def test_mosquitto_edge_node_bridges_both_ways_reports_state_and_acknowledges_configuration(
    premium_api,
    agents,
    edge_brokers,
    tmp_path,  # noqa: F811
):
    client, url, port = premium_api
    deployment = client.get(url).json()
    assert deployment["connection"]["ports"].get("mqtts"), deployment["connection"]
    # A backend user of the customer's on the cloud side (no ACL rules: it may use every topic).
    user = client.post(f"{url}/mqtt-users", {"username": "backend", "password": "backend-secret"}, format="json")
    assert user.status_code in (201, 202), user.content
    settle(client, url, user.json()["operation"])

    created = client.post(
        f"{url}/edge-nodes",
        {"name": "gw-1", "kind": "mosquitto", "up_topics": ["sensors/#"], "down_topics": ["commands/#"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    node = created.json()
    settle(client, url, node["operation"])
    agents()

    ca = client.get(f"{url}/ca.pem")
    assert ca.status_code == 200
    (tmp_path / "ca.pem").write_bytes(ca.content)
    download = client.get(f"{url}/edge-nodes/gw-1/config", {"ca_file": str(tmp_path / "ca.pem")})
    assert download.status_code == 200, download.content
    bridge_file = download.content.decode()
    assert f"address 127.0.0.1:{deployment['connection']['ports']['mqtts']}" in bridge_file.splitlines()
    bridge_file = bridge_file.replace("REPLACE-WITH-THE-NODE-PASSWORD", node["credentials"]["password"])

    cloud = Inbox(port, client_id="backend-1", username="backend", password="backend-secret").start("edge/gw-1/#")
    broker = EdgeBroker(tmp_path, bridge_file).start()
    edge_brokers.append(broker)

    # The bridge's birth message ("1", retained) makes the node online.
    cloud.wait_for("edge/gw-1/status", lambda p: p == b"1", timeout=20)
    wait_until(lambda: client.get(f"{url}/edge-nodes/gw-1").json()["online"], 15, "the node online")
    shown = client.get(f"{url}/edge-nodes/gw-1").json()
    assert shown["connected_at"] and shown["last_seen"]
    assert [n["name"] for n in client.get(f"{url}/edge-nodes?online=true").json()["results"]] == ["gw-1"]

    # Up: a message published on the edge broker arrives on the deployment under edge/gw-1/….
    local = Inbox(broker.port, client_id="edge-app").start("commands/#", "edge/config")
    local.publish("sensors/boiler/temperature", b"21.5")
    payload, _ = cloud.wait_for("edge/gw-1/sensors/boiler/temperature")
    assert payload == b"21.5"
    # Down: a cloud message under edge/gw-1/commands/… comes down as commands/….
    time.sleep(0.5)  # the bridge subscribes on the deployment right after its CONNACK
    cloud.publish("edge/gw-1/commands/reboot", b"now")
    payload, _ = local.wait_for("commands/reboot")
    assert payload == b"now"
    # Nothing outside the mappings goes up.
    local.publish("other/topic", b"x")

    # A configuration change is published retained; the node acknowledges it on edge/config/ack.
    configured = client.post(f"{url}/edge-nodes/gw-1/configurations", {"settings": {"sample_rate": 5}}, format="json")
    assert configured.status_code == 201, configured.content
    assert client.get(f"{url}/edge-nodes/gw-1").json()["config"]["behind"] is True
    payload, _ = local.wait_for("edge/config", lambda p: json.loads(p).get("version") == 1)
    document = json.loads(payload)
    assert document["settings"] == {"sample_rate": 5} and document["node"] == "gw-1"
    late = Inbox(broker.port, client_id="edge-late").start("edge/config")
    _, retained = late.wait_for("edge/config", lambda p: json.loads(p).get("version") == 1)
    assert retained, "the configuration is retained for a node software that connects later"
    late.close()
    wait_until(
        lambda: client.get(f"{url}/edge-nodes/gw-1/configurations").json()["results"][0]["published_at"],
        10,
        "the configuration recorded as published",
    )
    local.publish("edge/config/ack", json.dumps({"version": 1}).encode())
    wait_until(
        lambda: client.get(f"{url}/edge-nodes/gw-1").json()["config"]["applied_version"] == 1, 15, "the ack recorded"
    )
    state = client.get(f"{url}/edge-nodes/gw-1").json()["config"]
    assert state["behind"] is False and state["applied_at"]
    assert client.get(f"{url}/edge-nodes?behind=true").json()["results"] == []
    assert not any(topic == "edge/gw-1/other/topic" for topic, _, _ in cloud.messages)
    local.close()

    # SIGKILL: no clean disconnect, so the deployment's broker publishes the bridge's last will ("0").
    broker.kill()
    cloud.wait_for("edge/gw-1/status", lambda p: p == b"0", timeout=60)
    wait_until(lambda: not client.get(f"{url}/edge-nodes/gw-1").json()["online"], 15, "the node offline")
    assert client.get(f"{url}/edge-nodes/gw-1").json()["disconnected_at"]
    cloud.close()

    # Deleting the node clears its retained status and configuration: a node made later under the same name never
    # reads its predecessor's.
    from iot.edge_models import EdgeRetainedClear

    assert client.delete(f"{url}/edge-nodes/gw-1").status_code == 204
    wait_until(lambda: not EdgeRetainedClear.objects.exists(), 15, "the retained topics cleared")
    fresh = Inbox(port, client_id="backend-2", username="backend", password="backend-secret").start("edge/gw-1/#")
    time.sleep(1.0)
    assert [m for m in fresh.messages if m[2]] == [], "a retained message of the deleted node is still served"
    fresh.close()
