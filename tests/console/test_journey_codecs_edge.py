"""Browser journey on a Premium deployment's Schemas, Codec rules and Edge nodes tabs, against a real mosquitto run by
a real Celery worker and a real platform agent process: the customer registers a Protobuf schema, sees an
incompatible version refused beside its source, adds a codec rule, tries it on a payload, then a paho client's binary
message reaches another paho client as JSON while a corrupt one lands on the rule's error topic and in its failure
count; finally an edge node is registered and its credentials and bridge file are shown once."""

import json
import re
import time

import paho.mqtt.client as mqtt
import pytest
from playwright.sync_api import expect

from tests.console.helpers import console_path, make_organization
from tests.iot.agent_process import agents  # noqa: F401
from tests.iot.test_agent_e2e import wait_until
from tests.iot.test_codec_e2e import App

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LOGIN = {"username": "app", "password": "app-secret-pw"}
PROTO = """syntax = "proto3";
package sensors;
message Reading {
  string device = 1;
  double temperature = 2;
}
"""
PROTO_BROKEN = PROTO.replace("double temperature = 2;", "string temperature = 2;")
INCOMPATIBLE = (
    "Not backward compatible with the previous version: field sensors.Reading.temperature (number 2): type "
    "double became string"
)


def _running_premium(org):
    """A Premium deployment the worker brought up on a real mosquitto, with an MQTT user for the application."""
    from deployments import services
    from organizations.models import Organization

    Organization.objects.filter(pk=org.organization.pk).update(premium_trial_deployments=2)
    plant, _operation = services.deployment_create(
        project=org.default_project, actor=None, name="plant", plan="premium", tier="1k", region="local"
    )
    services.mqtt_user_create(deployment=plant, actor=None, **LOGIN)
    deadline = time.monotonic() + 90
    while True:
        plant.refresh_from_db()
        if plant.is_converged and plant.status == "running":
            return plant
        assert plant.status != "failed", plant.last_error
        assert time.monotonic() < deadline, f"never running: {plant.status}"
        time.sleep(0.2)


def _refused_beside(page, label, message):
    """`message` is in the error list Django renders beside the field labelled `label`, which is marked invalid and
    described by it."""
    field = page.get_by_label(label, exact=True)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator(f"#{field.get_attribute('id')}_error")).to_contain_text(message)
    expect(field).to_have_accessible_description(re.compile(re.escape(message)))


def _converged(plant, timeout=90.0):
    deadline = time.monotonic() + timeout
    while True:
        plant.refresh_from_db()
        if plant.is_converged and plant.status == "running":
            return plant
        assert plant.status != "failed", plant.last_error
        assert time.monotonic() < deadline, f"never converged: {plant.status}"
        time.sleep(0.2)


class _EdgeClient:
    """What an edge node's bridge does on the deployment, with the node's credentials: reads its configuration."""

    def __init__(self, name, port, username, password):
        from iot import edge

        self.configs: list[bytes] = []
        self.connack = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=edge.client_id(name))
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(30, 60)  # a refused CONNECT is retried by the caller, not behind its back
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.configs.append(bytes(m.payload))
        self.topic = edge.config_topic(name)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        if not reason_code.is_failure:
            client.subscribe(self.topic, 1)

    def wait_config(self):
        return wait_until(lambda: self.configs and self.configs[-1], 20, "the retained configuration")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def _edge_client(name, port, username, password, timeout=30.0):
    """Connected once the broker took the node's new user up (a reload after the configure operation)."""
    deadline = time.monotonic() + timeout
    while True:
        node = _EdgeClient(name, port, username, password)
        wait_until(lambda node=node: node.connack is not None, 10, "a CONNACK")
        if not node.connack.is_failure:
            return node
        node.close()
        assert time.monotonic() < deadline, f"the node's credentials were refused: {node.connack}"
        time.sleep(0.5)


def _tab(page, name):
    page.get_by_role("navigation", name="Deployment sections").get_by_role("link", name=name, exact=True).click()


def _publisher(port):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sensor-{time.monotonic_ns()}")
    client.username_pw_set(LOGIN["username"], LOGIN["password"])
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


def test_customer_decodes_device_payloads_with_a_schema_and_rule_made_in_the_console_when_following_it(
    site, celery_worker, agents
):
    from alerts.collection import deployment_collect

    org = make_organization(name="Sensors")
    plant = _running_premium(org)
    port = plant.endpoints["ports"]["mqtt"]
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant))

    # 1. A Protobuf schema, registered in the page.
    _tab(page, "Schemas")
    expect(page.get_by_role("heading", name="Schemas", exact=True)).to_be_visible()
    page.check("schemas-empty")
    page.get_by_label("Schema name").fill("reading")
    page.get_by_label("Format").select_option(label="Protobuf")
    page.get_by_label("Message type").fill("Reading")
    page.get_by_label("Source", exact=True).fill(PROTO)
    page.get_by_role("button", name="Register schema").click()
    expect(page.get_by_role("status")).to_contain_text("Schema reading registered (version 1).")
    expect(page.get_by_role("heading", name="Schema reading")).to_be_visible()
    expect(page.get_by_role("link", name="Source of version 1")).to_be_visible()

    # 2. An incompatible second version: refused beside the source, naming the field.
    page.get_by_label("Source of the new version").fill(PROTO_BROKEN)
    page.get_by_role("button", name="Add version").click()
    _refused_beside(page, "Source of the new version", INCOMPATIBLE)
    expect(page.locator("#latest-version")).to_have_text("1")
    page.check("incompatible-version")

    # 3. Try it on the schema: encode a reading to get the bytes a device would send (inline, no page load).
    loads = page.navigations
    page.get_by_label("Try", exact=True).select_option(label="Encode: JSON to binary")
    page.get_by_label("Payload", exact=True).fill('{"device": "sensor-1", "temperature": 21.5}')
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#try-hex")).to_be_visible()
    hex_payload = page.locator("#try-hex").inner_text()
    payload = bytes.fromhex(hex_payload.replace(" ", ""))
    assert page.navigations == loads
    page.check("try-encode")
    page.get_by_role("link", name="Source of version 1").click()
    expect(page.locator("#version-source")).to_contain_text("double temperature = 2;")
    page.check("version-source")

    # 4. A codec rule from factory/+/raw to app/{line}/reading.
    _tab(page, "Codec rules")
    page.get_by_label("Topic filter").fill("factory/+/raw")
    page.get_by_label("Direction").select_option(label="binary to JSON")
    page.get_by_label("Schema", exact=True).select_option("reading")
    page.get_by_label("Output topic").fill("app/{topic[1]}/reading")
    page.get_by_role("button", name="Add codec rule").click()
    expect(page.get_by_role("status")).to_contain_text(re.compile(r"Codec rule cdr_\w+ added"))
    rule_id = re.search(r"cdr_\w+", page.get_by_role("status").inner_text()).group(0)
    expect(page.locator("#error-topic")).to_have_text(f"codec-errors/{rule_id}")
    page.check("rule")

    # 5. Try it on the rule: the device's bytes decode to the reading's fields, inline; a bad payload says why.
    loads = page.navigations
    page.get_by_label("Payload written as").select_option("hex")
    page.get_by_label("Payload", exact=True).fill(hex_payload)
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#try-json")).to_contain_text('"device": "sensor-1"')
    expect(page.locator("#try-json")).to_contain_text('"temperature": 21.5')
    page.check("try-decode")
    page.get_by_label("Payload", exact=True).fill("ff ff ff ff")
    page.get_by_role("button", name="Run").click()
    _refused_beside(page, "Payload", "not a sensors.Reading message")
    assert page.navigations == loads
    page.check("try-decode-refused")

    # 6. Real traffic: the agent applies the rule; one paho client publishes bytes, another receives JSON.
    agents()
    app = App(port, LOGIN["username"], LOGIN["password"])
    sensor = _publisher(port)

    def decoded():
        sensor.publish("factory/line-1/raw", payload, qos=1)
        try:
            return app.wait("app/line-1/reading", timeout=1.0)
        except AssertionError:
            return None

    first = wait_until(decoded, 30, "the first decoded reading")
    assert json.loads(first) == {"device": "sensor-1", "temperature": 21.5}

    # 7. A corrupt payload: on the rule's error topic, and counted on the rule's page.
    sensor.publish("factory/line-1/raw", b"\xff\xff\xff\xff", qos=1)
    error = json.loads(app.wait(f"codec-errors/{rule_id}"))
    assert error["rule"] == rule_id and "not a sensors.Reading message" in error["reason"]

    def counted():
        # Each codec worker adds its own counts once a second: the reading and the corrupt payload may have gone to
        # different workers, whose counts then arrive apart.
        page.reload()
        return (
            page.locator("#rule-failures").inner_text() == "1"
            and int(page.locator("#rule-processed").inner_text()) >= 2
        )

    wait_until(counted, 20, "the reading and the failure counted on the rule's page")
    expect(page.locator("#rule-last-failure")).to_contain_text("not a sensors.Reading message")
    page.check("rule-failure-counted")
    # The metric collector turns the failure into a codec_failures sample, which the rules tab sums.
    deployment_collect(deployment_id=plant.pk)
    _tab(page, "Codec rules")
    expect(page.locator("#recent-failures")).to_have_text("1")
    row = page.get_by_role("row", name=re.compile(rule_id))
    expect(row).to_contain_text(f"codec-errors/{rule_id}")
    expect(row.get_by_role("cell").nth(3)).to_have_text(re.compile(r"^1 of \d+$"))
    page.check("rules-list")
    sensor.loop_stop()
    sensor.disconnect()
    app.close()

    # 8. An edge node: its credentials and bridge file are shown once, then never again.
    _tab(page, "Edge nodes")
    page.get_by_label("Node name").fill("gw-1")
    page.get_by_label("Broker at the edge").select_option(label="mosquitto")
    page.get_by_label("Topics sent up").fill("sensors/#")
    page.get_by_role("button", name="Register edge node").click()
    shown = page.get_by_role("region", name="Edge node gw-1: its credentials, shown this once")
    expect(shown).to_be_visible()
    password = page.locator("#shown-password").inner_text()
    username = page.locator("#shown-username").inner_text()
    assert username.startswith("$edge-") and len(password) >= 24
    bridge = page.locator("#shown-bridge").inner_text()
    endpoints = plant.endpoints
    assert f"address {endpoints['host']}:{endpoints['ports']['mqtts']}" in bridge  # the deployment serves TLS
    assert f"remote_username {username}" in bridge and f"remote_password {password}" in bridge
    expect(page.get_by_role("row", name=re.compile("gw-1"))).to_contain_text("offline")
    page.check("edge-node-shown-once")
    page.reload()
    expect(shown).to_have_count(0)
    assert password not in page.content()
    page.get_by_role("link", name="gw-1").click()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the bridge file").click()
    text = open(download.value.path()).read()
    assert f"remote_username {username}" in text and password not in text
    page.check("edge-node")

    # 9. A configuration pushed from the page reaches the node, whose acknowledgement the page then shows.
    page.get_by_label("Settings (JSON object)").fill('{"sample_rate": 5}')
    page.get_by_role("button", name="Push configuration").click()
    expect(page.get_by_role("status")).to_contain_text("Configuration version 1 pushed to gw-1")
    expect(page.locator("#config-ack")).to_contain_text("waiting for the node")
    _converged(plant)  # the broker knows the node's user
    node = _edge_client("gw-1", port, username, password)
    document = json.loads(node.wait_config())
    assert document["version"] == 1 and document["settings"] == {"sample_rate": 5}
    node.client.publish("edge/gw-1/status", b"1", qos=1, retain=True)  # what the bridge's notification says
    node.client.publish("edge/gw-1/config/ack", json.dumps({"version": 1}), qos=1)
    expect(page.locator("#config-ack")).to_contain_text("acknowledged version 1", timeout=20_000)
    page.reload()
    expect(page.get_by_role("heading", name=re.compile("^Edge node gw-1"))).to_contain_text("online")
    page.check("edge-node-acknowledged")
    node.close()


def test_deletions_are_confirmed_and_a_read_only_role_sees_no_form_when_browsing_the_tabs(site):
    from iot import codecs, edge_services
    from tests.iot.conftest import premium_deployment

    org = make_organization(name="Tidy")
    plant = premium_deployment(org)
    codecs.schema_create(
        deployment=plant, actor=None, name="reading", type="protobuf", source=PROTO, message_type="Reading"
    )
    rule = codecs.codec_rule_create(
        deployment=plant,
        actor=None,
        topic_filter="factory/+/raw",
        direction="decode",
        schema="reading",
        topic_template="app/{topic[1]}/reading",
    )
    edge_services.edge_node_create(deployment=plant, actor=None, name="gw-1", kind="nanomq")

    # An auditor reads every tab; nothing offers a change.
    auditor, _ = org.add_member(roles=["auditor"])
    reader = site.page(auditor, name="auditor")
    reader.goto(console_path(plant, f"codec-rules/{rule.public_id}"))
    expect(reader.get_by_text("factory/+/raw").first).to_be_visible()
    for name in ("Save rule", "Disable rule", "Register schema", "Add version"):
        expect(reader.get_by_role("button", name=name)).to_have_count(0)
    expect(reader.get_by_role("link", name=re.compile("^Delete"))).to_have_count(0)
    reader.check("auditor-rule")
    _tab(reader, "Edge nodes")
    expect(
        reader.get_by_text("Your role can look at this deployment's edge nodes but not change them.")
    ).to_be_visible()
    reader.check("auditor-edge-nodes")

    # The owner deletes the rule, then the schema it used, then the node, each after a confirmation.
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant, f"codec-rules/{rule.public_id}"))
    page.get_by_role("link", name="Delete rule…").click()
    expect(page.get_by_role("heading", name=f"Delete codec rule {rule.public_id}?")).to_be_visible()
    page.check("confirm-rule-delete")
    page.get_by_role("button", name=f"Delete {rule.public_id}").click()
    expect(page.get_by_role("status")).to_contain_text(f"Codec rule {rule.public_id} deleted.")
    expect(page.get_by_text("No codec rule yet.")).to_be_visible()
    _tab(page, "Schemas")
    page.get_by_role("link", name="reading").click()
    page.get_by_role("link", name="Delete schema reading…").click()
    page.check("confirm-schema-delete")
    page.get_by_role("button", name="Delete reading").click()
    expect(page.get_by_role("status")).to_contain_text("Schema reading and its versions deleted.")
    expect(page.get_by_text("No schema yet.")).to_be_visible()
    _tab(page, "Edge nodes")
    page.get_by_role("link", name="gw-1").click()
    page.get_by_role("link", name="Delete edge node gw-1…").click()
    page.check("confirm-node-delete")
    page.get_by_role("button", name="Delete gw-1").click()
    expect(page.get_by_role("status")).to_contain_text("Edge node gw-1 deleted")
    expect(page.get_by_text("No edge node yet.")).to_be_visible()
    page.check("all-deleted")
