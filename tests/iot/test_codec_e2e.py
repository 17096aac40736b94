"""Codec rules end to end on real parts: the REST API, a real Celery worker reconciling a real mosquitto, a real
platform agent process applying the rules, a paho device publishing binary payloads and a paho application
subscriber receiving JSON on the rules' output topics, failures on the error topic and in the metric."""

import base64
import collections
import io
import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.iot.agent_process import agents  # noqa: F401
from tests.iot.devices import Device
from tests.iot.test_agent_e2e import premium_api, register, settle, wait_until  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PROTO = """syntax = "proto3";
package sensors;
message Reading {
  string device = 1;
  double temperature = 2;
  int32 humidity = 3;
}
"""
AVRO = {
    "type": "record",
    "name": "Reading",
    "fields": [{"name": "device", "type": "string"}, {"name": "temperature", "type": "double"}],
}
SHAPE = {"type": "object", "required": ["t"], "properties": {"t": {"type": "number"}}}
SHAPE_RULE = {
    "topic_filter": "devices/+/json",
    "direction": "decode",
    "schema": "shape",
    "topic_template": "checked/{topic[1]}",
}


class App:
    """The customer's application: a paho client with the deployment's MQTT user, collecting per topic."""

    def __init__(self, port, username, password):
        self.lock = threading.Condition()
        self.inbox = collections.defaultdict(list)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"app-{time.monotonic_ns()}")
        self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe([("app/#", 1), ("codec-errors/#", 1), ("checked/#", 1)])
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.inbox[message.topic].append(bytes(message.payload))
            self.lock.notify_all()

    def wait(self, topic, timeout=15.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while not self.inbox[topic]:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"nothing on {topic} within {timeout}s; got {dict(self.inbox)}")
                self.lock.wait(remaining)
            return self.inbox[topic].pop(0)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _user(client, url):
    made = client.post(f"{url}/mqtt-users", {"username": "app", "password": "app-secret-pw"}, format="json")
    assert made.status_code == 201, made.content
    if made.json().get("operation"):
        settle(client, url, made.json()["operation"])


def _schema(client, url, **body):
    response = client.post(f"{url}/schemas", body, format="json")
    assert response.status_code == 201, response.content


def _rule(client, url, **body):
    response = client.post(f"{url}/codec-rules", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_device_payloads_reach_the_app_as_json_and_failures_the_error_topic_when_rules_apply(premium_api, agents):
    import fastavro
    from google.protobuf import descriptor_pb2  # noqa: F401 - the runtime the agent uses too

    from alerts.collection import deployment_collect
    from alerts.models import MetricSample
    from deployments.models import Deployment

    client, url, port = premium_api
    credentials = register(client, url, "sensor-1")
    _user(client, url)
    _schema(client, url, name="reading", type="protobuf", source=PROTO, message_type="Reading")
    _schema(client, url, name="reading_avro", type="avro", source=json.dumps(AVRO))
    _schema(client, url, name="shape", type="json_schema", source=json.dumps(SHAPE))
    proto_rule = _rule(
        client,
        url,
        topic_filter="devices/+/telemetry",
        direction="decode",
        schema="reading",
        topic_template="app/{device_id}/reading",
    )
    _rule(
        client,
        url,
        topic_filter="devices/+/avro",
        direction="decode",
        schema="reading_avro",
        topic_template="app/{device_id}/avro",
    )
    shape_rule = _rule(client, url, **SHAPE_RULE)
    encode_rule = _rule(
        client,
        url,
        topic_filter="devices/+/commands/json",
        direction="encode",
        schema="reading",
        topic_template="devices/{device_id}/commands/bin",
    )
    agents()
    app = App(port, "app", "app-secret-pw")
    device = Device(port, "sensor-1", **credentials)
    assert not device.connect(subscribe=False).is_failure
    device.mqtt.subscribe("devices/sensor-1/commands/bin", 1)

    # The agent subscribes once it has loaded the rules: publish until the first decoded reading arrives.
    encoded = client.post(
        f"{url}/schemas/reading/encode",
        {"payload": {"device": "sensor-1", "temperature": 21.5, "humidity": 40}},
        format="json",
    ).json()["payload_base64"]
    payload = base64.b64decode(encoded)
    assert len(payload) > 0

    def decoded():
        device.publish("devices/sensor-1/telemetry", payload)
        try:
            return app.wait("app/sensor-1/reading", timeout=1.0)
        except AssertionError:
            return None

    first = wait_until(decoded, 30, "the first decoded reading")
    assert json.loads(first) == {"device": "sensor-1", "temperature": 21.5, "humidity": 40}

    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(AVRO), {"device": "sensor-1", "temperature": 19.25})
    device.publish("devices/sensor-1/avro", out.getvalue())
    assert json.loads(app.wait("app/sensor-1/avro")) == {"device": "sensor-1", "temperature": 19.25}

    device.publish("devices/sensor-1/json", {"t": 3})
    assert json.loads(app.wait("checked/sensor-1")) == {"t": 3}
    device.publish("devices/sensor-1/json", {"t": "three"})
    shape_error = json.loads(app.wait(f"codec-errors/{shape_rule['id']}"))
    assert "does not match the JSON Schema at t" in shape_error["reason"]

    # JSON to binary: the device receives the Protobuf encoding of what the backend sent.
    received = []
    device.mqtt.on_message = lambda c, u, m: received.append(bytes(m.payload))
    app.client.publish("devices/sensor-1/commands/json", json.dumps({"device": "x", "temperature": 5}), qos=1)
    wait_until(lambda: received, 15, "the encoded command")
    from google.protobuf import json_format  # noqa: F401

    decoded_back = client.post(
        f"{url}/schemas/reading/decode", {"payload_base64": base64.b64encode(received[0]).decode()}, format="json"
    ).json()
    assert decoded_back == {"result": {"device": "x", "temperature": 5.0}}
    assert encode_rule["error_topic"].startswith("codec-errors/")

    # A corrupt payload: the error topic says why, and the metric counts it.
    device.publish("devices/sensor-1/telemetry", b"\xff\xff\xff\xff")
    error = json.loads(app.wait(f"codec-errors/{proto_rule['id']}"))
    assert error["rule"] == proto_rule["id"] and error["topic"] == "devices/sensor-1/telemetry"
    assert "not a sensors.Reading message" in error["reason"]
    assert base64.b64decode(error["payload_base64"]) == b"\xff\xff\xff\xff"

    def counted():
        # Each codec worker adds its own counts once a second: the decoded reading and the corrupt payload may have
        # gone to different workers, whose counts then arrive apart.
        body = client.get(f"{url}/codec-rules/{proto_rule['id']}").json()
        return body["failures"] == 1 and body["processed"] >= 2 and body

    body = wait_until(counted, 10, "the reading and the failure counted")
    assert "sensors.Reading" in body["last_failure"]
    deployment = Deployment.objects.get(public_id=url.rsplit("/", 1)[-1])
    deployment_collect(deployment_id=deployment.pk)
    samples = list(MetricSample.objects.filter(deployment_id=deployment.pk, name="codec_failures"))
    # Two failures: the corrupt Protobuf payload and the JSON that did not match its schema.
    assert [s.value for s in samples] == [2.0]

    # Disabling a rule stops it: the agent unsubscribes, nothing more is decoded.
    client.patch(f"{url}/codec-rules/{proto_rule['id']}", {"enabled": False}, format="json")
    time.sleep(1.5)
    device.publish("devices/sensor-1/telemetry", payload)
    device.publish("devices/sensor-1/json", {"t": 4})  # a message after it, so we know the agent got this far
    assert json.loads(app.wait("checked/sensor-1")) == {"t": 4}
    time.sleep(0.3)
    assert app.inbox["app/sensor-1/reading"] == []
    app.close()
    device.close()


def test_a_json_payload_with_a_number_json_cannot_carry_fails_on_the_error_topic_when_a_rule_decodes_it(
    premium_api, agents
):
    client, url, port = premium_api
    credentials = register(client, url, "sensor-1")
    _user(client, url)
    _schema(client, url, name="shape", type="json_schema", source=json.dumps(SHAPE))
    rule = _rule(client, url, **SHAPE_RULE)
    agents()
    app = App(port, "app", "app-secret-pw")
    device = Device(port, "sensor-1", **credentials)
    assert not device.connect(subscribe=False).is_failure

    def decoded():  # the agent subscribes once it has loaded the rules
        device.publish("devices/sensor-1/json", {"t": 1})
        try:
            return app.wait("checked/sensor-1", timeout=1.0)
        except AssertionError:
            return None

    wait_until(decoded, 30, "the first decoded payload")
    app.inbox["checked/sensor-1"].clear()
    device.publish("devices/sensor-1/json", b'{"t": NaN}')
    error = json.loads(app.wait(f"codec-errors/{rule['id']}"))
    assert "not JSON: a number is NaN or infinite" in error["reason"], error
    assert base64.b64decode(error["payload_base64"]) == b'{"t": NaN}'
    device.publish("devices/sensor-1/json", {"t": 2})  # a message after it: the agent got this far
    assert json.loads(app.wait("checked/sensor-1")) == {"t": 2}  # and {"t": null} never came before it
    app.close()
    device.close()
