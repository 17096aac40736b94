"""End to end on real parts: the REST API, a real Celery worker reconciling a real mosquitto, a real platform agent
process, and paho devices connecting with the credentials the API issued."""

import threading
import time

import paho.mqtt.client as mqtt
import pytest

from tests.deployments.test_e2e_local import wait_for_status, wait_operation
from tests.iot.agent_process import agents  # noqa: F401
from tests.iot.devices import Device

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def premium_api(celery_worker, owner_org, key_client):
    """(client, deployment URL, MQTT port) of a running Premium deployment created through the API."""
    from organizations.models import Organization

    Organization.objects.filter(pk=owner_org.organization.pk).update(premium_trial_deployments=2)
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    created = client.post(base, {"name": "plant", "plan": "premium", "tier": "1k", "region": "local"}, format="json")
    assert created.status_code == 202, created.content
    url = f"{base}/{created.json()['deployment']['id']}"
    body = wait_for_status(client, url, "running")
    return client, url, body["connection"]["ports"]["mqtt"]


def settle(client, url, operation):
    """Wait until the broker runs the change `operation` made (its reconcile succeeded)."""
    done = wait_operation(client, f"{url}/operations/{operation}")
    assert done["status"] == "succeeded", done
    wait_for_status(client, url, "running")


def register(client, url, device_id, **extra):
    response = client.post(f"{url}/devices", {"device_id": device_id, **extra}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    settle(client, url, body["operation"])
    return body["credentials"]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_imported_devices_come_online_stay_confined_and_a_disabled_one_is_dropped_when_connected(premium_api, agents):
    client, url, port = premium_api
    rows = "device_id,tags\n" + "".join(f"dev-{i:04d},{'even' if i % 2 == 0 else 'odd'}\n" for i in range(1000))
    imported = client.post(f"{url}/device-imports", rows, content_type="text/csv")
    assert imported.status_code == 201, imported.content[:500]
    result = imported.json()
    assert result["imported"] == 1000
    settle(client, url, result["operation"])
    credentials = {d["device_id"]: d["credentials"] for d in result["devices"]}
    agents()

    devices = [Device(port, f"dev-{i:04d}", **credentials[f"dev-{i:04d}"]) for i in range(100)]
    for device in devices:
        device.mqtt.connect_async("127.0.0.1", port, keepalive=30)
        device.mqtt.loop_start()
    wait_until(lambda: all(d.connected.is_set() for d in devices), 30, "100 CONNACKs")
    connected_at = time.monotonic()

    def online_count():
        return client.get(f"{url}/devices?online=true&page_size=200").json()["results"]

    online = wait_until(lambda: len(online_count()) == 100 and online_count(), 10, "100 devices online within 10 s")
    assert time.monotonic() - connected_at < 10
    assert {d["device_id"] for d in online} == {f"dev-{i:04d}" for i in range(100)}
    one = client.get(f"{url}/devices/dev-0007").json()
    assert one["online"] and one["client_address"].startswith("127.0.0.1:") and one["connected_at"]
    assert len(client.get(f"{url}/devices?online=true&tag=even&page_size=200").json()["results"]) == 50

    # A device cannot publish outside devices/{its id}/#: MQTT 5 answers "not authorized" and nothing arrives.
    watcher = Device(port, "dev-0500", **credentials["dev-0500"])
    assert not watcher.connect().is_failure
    watcher.wait_served()
    v5 = Device(port, "dev-0501", protocol=mqtt.MQTTv5, **credentials["dev-0501"])
    acks = []
    v5.mqtt.on_publish = lambda c, u, mid, reason, props: acks.append((mid, reason))
    assert not v5.connect().is_failure
    foreign = v5.update({"state": {"reported": {"hijacked": True}}}, qos=1)  # its own update works…
    other = v5.publish("devices/dev-0500/shadow/update", {"state": {"reported": {"hijacked": True}}})
    elsewhere = v5.publish("factory/line-1", b"x")
    wait_until(lambda: len(acks) >= 3, 10, "three PUBACKs")
    reasons = dict(acks)
    assert reasons[foreign.mid].value == 0
    assert reasons[other.mid].value == 135 and reasons[elsewhere.mid].value == 135  # 0x87 Not authorized
    v5.wait_for("update/accepted")
    watcher.get("peek")
    rejected, _ = watcher.wait_for("get/rejected", lambda b: b.get("clientToken") == "peek")
    assert rejected["code"] == 404  # dev-0500's shadow was never written by anyone
    assert client.get(f"{url}/devices/dev-0500/shadow/history").json()["results"] == []

    # A device that leaves goes offline.
    devices[1].close()
    wait_until(lambda: not client.get(f"{url}/devices/dev-0001").json()["online"], 10, "dev-0001 offline")
    assert client.get(f"{url}/devices/dev-0001").json()["disconnected_at"]

    # Disabling a connected device disconnects it and refuses it from then on.
    target = devices[2]
    disabled = client.patch(f"{url}/devices/dev-0002", {"enabled": False}, format="json")
    assert disabled.status_code == 200, disabled.content
    assert target.disconnected.wait(30), "the disabled device is still connected"
    settle(client, url, disabled.json()["operation"])
    target.mqtt.loop_stop()
    again = Device(port, "dev-0002", **credentials["dev-0002"])
    assert again.connect(subscribe=False).is_failure
    again.close()
    wait_until(lambda: not client.get(f"{url}/devices/dev-0002").json()["online"], 10, "dev-0002 offline")
    assert devices[3].connected.is_set()  # the others stay connected through the reload

    for device in devices + [watcher, v5]:
        device.close()


# Serial: it asserts a delta arrives within a second, which the other workers' CPU load must not decide.
@pytest.mark.serial
def test_shadow_round_trips_over_mqtt_and_rest_when_the_agent_serves_the_deployment(premium_api, agents, settings):
    client, url, port = premium_api
    alpha = register(client, url, "alpha")
    beta = register(client, url, "beta")
    agents()
    device = Device(port, "alpha", **alpha, clean=False)
    assert not device.connect().is_failure
    device.wait_served()

    # reported update -> accepted and documents, committed to the history before the answer.
    device.update({"state": {"reported": {"temp": 20.5, "mode": "eco"}}, "clientToken": "r-1"})
    accepted, _ = device.wait_for("update/accepted", lambda b: b.get("clientToken") == "r-1")
    assert accepted["version"] == 1 and accepted["state"] == {"reported": {"temp": 20.5, "mode": "eco"}}
    assert isinstance(accepted["timestamp"], int)
    documents, _ = device.wait_for("update/documents", lambda b: b.get("clientToken") == "r-1")
    assert documents["previous"] is None and documents["current"]["version"] == 1
    history = client.get(f"{url}/devices/alpha/shadow/history").json()["results"]
    assert [(h["version"], h["source"], h["client_token"]) for h in history] == [(1, "mqtt", "r-1")]

    # REST desired change -> delta on the connected device within a second.
    sent = time.monotonic()
    patched = client.patch(f"{url}/devices/alpha/shadow", {"state": {"desired": {"mode": "boost"}}}, format="json")
    assert patched.status_code == 200, patched.content
    delta, arrived = device.wait_for("update/delta", lambda b: b["version"] == 2, timeout=5)
    assert delta["state"] == {"mode": "boost"}
    assert arrived - sent < 1.0, f"delta took {arrived - sent:.3f}s"

    # version conflict over MQTT -> rejected with its code, nothing changed.
    device.update({"state": {"reported": {"mode": "x"}}, "version": 1, "clientToken": "stale"})
    rejected, _ = device.wait_for("update/rejected", lambda b: b.get("clientToken") == "stale")
    assert rejected["code"] == 409 and "Version conflict" in rejected["message"]
    device.update({"state": {"reported": {"mode": "boost"}}, "version": 2, "clientToken": "fresh"})
    assert device.wait_for("update/accepted", lambda b: b.get("clientToken") == "fresh")[0]["version"] == 3

    # limits and bad documents over MQTT, each with its code; nothing partially applied.
    cases = {
        "big": ({"state": {"reported": {"blob": "x" * 9000}}, "clientToken": "big"}, 413),
        "deep": (
            {"state": {"reported": {"1": {"2": {"3": {"4": {"5": {"6": {"7": 1}}}}}}}}, "clientToken": "deep"},
            400,
        ),
        "array": ([1, 2, 3], 400),
        "nostate": ({"clientToken": "nostate"}, 400),
    }
    for body, _code in cases.values():
        device.update(body)
    device.update(b"{not json")
    for token, (_body, code) in cases.items():
        if token == "array":
            continue
        answer, _ = device.wait_for("update/rejected", lambda b, t=token: b.get("clientToken") == t)
        assert answer["code"] == code, (token, answer)
    # deep, nostate, the array and the text that is not JSON; the last two carry no token to wait for, and the text
    # (sent last) may be answered in the batch after nostate's.
    wait_until(
        lambda: [m["code"] for m in device.messages("update/rejected")].count(400) >= 4, 5, "four 400 rejections"
    )
    shadow = client.get(f"{url}/devices/alpha/shadow").json()
    assert shadow["version"] == 3 and shadow["state"]["reported"] == {"temp": 20.5, "mode": "boost"}

    # An offline device: its persistent session keeps the QoS 1 delta, and get answers the delta too.
    device.close()
    wait_until(lambda: not client.get(f"{url}/devices/alpha").json()["online"], 10, "alpha offline")
    client.patch(f"{url}/devices/alpha/shadow", {"state": {"desired": {"setpoint": 22}}}, format="json")
    time.sleep(1.5)  # the agent has published the delta by now; the broker holds it for the session
    back = Device(port, "alpha", **alpha, clean=False)
    back.mqtt.on_message = back._on_message
    back.mqtt.connect("127.0.0.1", port, keepalive=30)
    back.mqtt.loop_start()
    queued, _ = back.wait_for("update/delta", lambda b: b["version"] == 4, timeout=10)
    assert queued["state"] == {"setpoint": 22}
    back.get("catch-up")
    got, _ = back.wait_for("get/accepted", lambda b: b.get("clientToken") == "catch-up")
    assert got["state"]["delta"] == {"setpoint": 22} and got["version"] == 4

    # Another device's topics are not its own: the broker drops the publish, beta's shadow is untouched.
    back.publish("devices/beta/shadow/update", {"state": {"reported": {"spoofed": True}}})
    back.update({"state": {"reported": {"setpoint": 22}}, "clientToken": "mine"})
    back.wait_for("update/accepted", lambda b: b.get("clientToken") == "mine")
    assert client.get(f"{url}/devices/beta/shadow").status_code == 404

    # /metrics carries the agent's heartbeat and this deployment's lag.
    settings.METRICS_TOKEN = "scrape"
    from django.test import Client as PlainClient

    metrics = PlainClient().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape").content.decode()
    dep_id = url.rsplit("/", 1)[1]
    heartbeat = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith('controlplane_iot_agent_heartbeat_age_seconds{agent="agent-1"}')
    ]
    assert heartbeat and float(heartbeat[0].split()[-1]) < 5
    lag = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith(f'controlplane_iot_deployment_lag_seconds{{deployment="{dep_id}"}}')
    ]
    assert lag and float(lag[0].split()[-1]) < 5

    # The broker restarts (maintenance): the agent reconnects by itself and serves again.
    restarted = client.post(f"{url}/restart", {}, format="json")
    assert restarted.status_code == 202
    settle(client, url, restarted.json()["operation"]["id"])
    back.mqtt.loop_stop()
    again = Device(port, "alpha", **alpha, clean=False)
    assert not again.connect().is_failure
    again.update({"state": {"reported": {"after": "restart"}}, "clientToken": "after"})
    assert again.wait_for("update/accepted", lambda b: b.get("clientToken") == "after", timeout=20)[0]["version"] == 6
    wait_until(lambda: client.get(f"{url}/devices/alpha").json()["online"], 10, "alpha online after the restart")
    again.close()
    beta_device = Device(port, "beta", **beta)
    assert not beta_device.connect().is_failure
    beta_device.close()


def outbox_pending(url):
    """Whether the agent has work left in the deployment's outbox (a publish or a disconnect)."""
    from iot.models import OutboxMessage

    return OutboxMessage.objects.filter(deployment__public_id=url.rsplit("/", 1)[1]).exists()


def answered_while_connected(device, timeout=30.0):
    """Whether an agent answers the device's `get` while the broker keeps its connection (the broker closes it
    when another client takes its id over, as the agent's disconnect does)."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline and device.connected.is_set():
        attempt += 1
        token = f"still-{attempt}"
        device.get(token)
        try:
            device.wait_for("get/rejected", lambda b, t=token: b.get("clientToken") == t, timeout=0.5)
        except AssertionError:
            continue
        return device.connected.is_set()
    return False


def served_after_the_outbox(device, url):
    """Once an agent serves the deployment and has carried out its outbox: whether the device is still served."""
    answered_while_connected(device)
    wait_until(lambda: not outbox_pending(url), 15, "the outbox carried out")
    return answered_while_connected(device)


def test_a_device_enabled_again_keeps_its_connection_when_its_disable_was_not_carried_out_yet(premium_api, agents):
    client, url, port = premium_api
    credentials = register(client, url, "sensor-1")
    # No agent serves the deployment yet (one restarting, a lease changing hands): the disconnect the disable
    # queues waits for it.
    disabled = client.patch(f"{url}/devices/sensor-1", {"enabled": False}, format="json")
    assert disabled.status_code == 200, disabled.content
    enabled = client.patch(f"{url}/devices/sensor-1", {"enabled": True}, format="json")
    assert enabled.status_code == 200, enabled.content
    settle(client, url, enabled.json()["operation"])
    device = Device(port, "sensor-1", **credentials)
    assert not device.connect().is_failure
    agents()
    assert served_after_the_outbox(device, url), "the device enabled again was disconnected"
    device.close()


def test_a_device_registered_again_under_a_deleted_ones_id_gets_none_of_its_session_when_its_disconnect_pends(
    premium_api, agents
):
    client, url, port = premium_api
    old = Device(port, "sensor-1", **register(client, url, "sensor-1"), clean=False)
    assert not old.connect().is_failure
    subscribed = threading.Event()
    old.mqtt.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
    old.mqtt.subscribe("devices/sensor-1/commands", 1)
    assert subscribed.wait(10), "no SUBACK"
    old.close()  # its session stays on the broker, subscriptions and all
    # No agent serves the deployment yet: the disconnect the delete queues (which also ends the old session) waits,
    # and until it is carried out the id is not registered again.
    assert client.delete(f"{url}/devices/sensor-1").status_code == 204
    refused = client.post(f"{url}/devices", {"device_id": "sensor-1"}, format="json")
    assert refused.status_code == 409, refused.content
    agents()

    def registered():
        response = client.post(f"{url}/devices", {"device_id": "sensor-1"}, format="json")
        return response.status_code == 201 and response.json()

    body = wait_until(registered, 30, "sensor-1 registered again once the agent disconnected the deleted one")
    settle(client, url, body["operation"])
    new = Device(port, "sensor-1", **body["credentials"], clean=False)
    assert not new.connect().is_failure
    served = served_after_the_outbox(new, url)
    new.publish("devices/sensor-1/commands", b"for the old device's subscription")
    answered_while_connected(new)  # what it published came back before the answer, if it were subscribed
    assert (new.session_present, new.messages_on("devices/sensor-1/commands"), served) == (False, [], True)
    new.close()


def test_a_delta_queued_before_a_shadow_delete_never_reaches_the_device_when_deleted_over_rest(premium_api, agents):
    client, url, port = premium_api
    device = Device(port, "sensor-1", **register(client, url, "sensor-1"))
    assert not device.connect().is_failure
    # No agent serves the deployment yet: what the desired change queues waits in the outbox.
    patched = client.patch(f"{url}/devices/sensor-1/shadow", {"state": {"desired": {"unlock": True}}}, format="json")
    assert patched.status_code == 200, patched.content
    deleted = client.delete(f"{url}/devices/sensor-1/shadow")
    assert deleted.status_code == 200, deleted.content
    agents()
    assert served_after_the_outbox(device, url)
    # The shadow is gone: nothing queued for the document it had reaches the device.
    assert [device.messages(answer) for answer in ("update/delta", "update/documents", "update/accepted")] == [
        [],
        [],
        [],
    ]
    device.close()
