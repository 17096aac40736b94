"""The extension point through which the IoT app adds devices to a broker (deployments.extensions), rendered by both
drivers: a device stays confined to devices/{its id}/# even when the customer's ACL allows everyone everything."""

import dataclasses
import os
import pathlib
import shutil
import signal
import tempfile
import types
import uuid

import pytest

from deployments import extensions
from deployments.drivers.base import AclEntry, BrokerSpec, MqttCredential, PermanentDriverError, RegionTarget
from deployments.drivers.local import LocalDriver, render_acl
from deployments.emqx_api import EmqxApi
from deployments.passwords import make_mqtt_credential
from tests.celery_worker import broker_pids
from tests.deployments.test_local_driver import Client, _wait_for
from tests.fakes.emqx_api import FakeEmqxServer

OPS = make_mqtt_credential(username="ops", password="ops-pw")
DEVICE = dataclasses.replace(
    make_mqtt_credential(username="$device-aaaa", password="device-pw"), confined_to=("devices/d1/#",)
)
ALLOW_EVERYTHING = (AclEntry(permission="allow", action="all", topic="#"),)
NOT_PREMIUM = types.SimpleNamespace(plan=types.SimpleNamespace(code="dedicated"))


@pytest.fixture
def driver():
    root = pathlib.Path(tempfile.mkdtemp(prefix="iot-ext-"))
    root.chmod(0o755)
    yield LocalDriver(root=root, sys_interval=1)
    for pid in broker_pids(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def spec(**changes) -> BrokerSpec:
    base = BrokerSpec(
        name="dep_" + uuid.uuid4().hex[:10],
        region=RegionTarget(code="local", driver="local"),
        running=True,
        max_connections=50,
        messages_per_second=1000,
        users=(OPS, DEVICE),
        acl=ALLOW_EVERYTHING,
    )
    return dataclasses.replace(base, **changes)


def test_acl_file_gives_a_confined_user_only_its_topics_when_rules_allow_everyone_everything():
    text, _note = render_acl(spec())
    block = text.split("user $device-aaaa\n", 1)[1].split("user ", 1)[0]
    assert block.strip().splitlines() == ["topic readwrite devices/d1/#"]
    assert "user ops\ntopic readwrite #" in text


def test_device_publishes_and_receives_only_under_its_own_topics_when_customer_allows_all(driver):
    port = driver.apply(spec()).ports["mqtt"]
    ops = Client(port, "ops", "ops-pw")
    assert not ops.connect().is_failure
    ops.subscribe("#")
    device = Client(port, "$device-aaaa", "device-pw", client_id="d1")
    assert not device.connect().is_failure
    device.subscribe("#")  # granted by mosquitto, but only its own topics are ever delivered

    device.publish("devices/d2/shadow/update", b"not mine")
    device.publish("factory/line-1", b"not mine either")
    device.publish("devices/d1/telemetry", b"mine")
    # QoS 1 from one publisher arrives in order: the first message ops sees is the device's own topic.
    assert ops.received(1) == [("devices/d1/telemetry", b"mine")]
    assert ops.messages.empty()

    ops.publish("devices/d2/shadow/update/delta", b"for d2")
    ops.publish("factory/line-1", b"for the factory")
    ops.publish("devices/d1/shadow/update/delta", b"for d1")
    # Its own telemetry comes back (it subscribed to #), then only the message under its topics.
    assert device.received(2) == [("devices/d1/telemetry", b"mine"), ("devices/d1/shadow/update/delta", b"for d1")]
    assert device.messages.empty()
    device.close()
    ops.close()


def test_removed_device_is_disconnected_at_once_and_refused_when_spec_is_reapplied(driver):
    first = spec()
    observed = driver.apply(first)
    port = observed.ports["mqtt"]
    device = Client(port, "$device-aaaa", "device-pw", client_id="d1")
    assert not device.connect().is_failure
    device.mqtt.reconnect_delay_set(60, 60)  # no automatic reconnect hiding the disconnection

    again = driver.apply(dataclasses.replace(first, users=(OPS,)))

    assert again.details["pid"] == observed.details["pid"]  # a reload, not a restart: others stay connected
    assert device.disconnected.wait(5), "mosquitto keeps a client whose user was removed on reload"
    device.close()
    refused = Client(port, "$device-aaaa", "device-pw", client_id="d1")
    assert refused.connect().is_failure
    refused.close()
    log = pathlib.Path(observed.details["log_path"])
    _wait_for(lambda: "Client d1 disconnected." in log.read_text(), what="the disconnection in the log")


def test_local_driver_refuses_a_confined_superuser_or_a_bad_topic_when_validating(driver):
    with pytest.raises(PermanentDriverError, match="confined and a superuser"):
        driver.apply(spec(users=(dataclasses.replace(DEVICE, is_superuser=True),)))
    with pytest.raises(PermanentDriverError, match="confined to"):
        driver.apply(spec(users=(dataclasses.replace(DEVICE, confined_to=("devices/#/x",)),)))


def test_emqx_denies_a_confined_user_everything_but_its_topics_when_rules_allow_everyone_everything():
    fake = FakeEmqxServer(api_key="cp", api_secret="s3cret").start()
    try:
        api = EmqxApi(fake.url, "cp", "s3cret")
        api.sync_acl(list(ALLOW_EVERYTHING), [OPS, DEVICE])

        def decide(username, action, topic):
            return fake.authorize(client_id="d1", username=username, action=action, topic=topic)

        assert decide("$device-aaaa", "publish", "devices/d1/shadow/update") == "allow"
        assert decide("$device-aaaa", "subscribe", "devices/d1/shadow/update/delta") == "allow"
        assert decide("$device-aaaa", "publish", "devices/d2/shadow/update") == "deny"
        assert decide("$device-aaaa", "subscribe", "#") == "deny"
        assert decide("ops", "publish", "devices/d2/shadow/update") == "allow"
        api.sync_acl(list(ALLOW_EVERYTHING), [OPS])  # the device is gone: its list goes too
        assert "$device-aaaa" not in fake.rules()["users"]
    finally:
        fake.stop()


def test_contribution_outside_the_reserved_space_is_refused_when_the_spec_is_built():
    extensions.register_spec_contributor(
        "zz-test", lambda deployment: [MqttCredential("alice", "c2FsdA==", "aGFzaA==")]
    )
    try:
        with pytest.raises(PermanentDriverError, match="reserved"):
            extensions.contributed_users(NOT_PREMIUM)
    finally:
        extensions.unregister_spec_contributor("zz-test")
    extensions.register_spec_contributor("zz-test", lambda deployment: [DEVICE, DEVICE])
    try:
        with pytest.raises(PermanentDriverError, match="twice"):
            extensions.contributed_users(NOT_PREMIUM)
    finally:
        extensions.unregister_spec_contributor("zz-test")
