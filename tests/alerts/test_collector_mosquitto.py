"""mosquitto collector against a real mosquitto 2.0 started per test, with real paho clients."""

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts import metrics as m
from alerts.collectors.mosquitto import _read_log, collect_mosquitto

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
MONITOR_USER, MONITOR_PASSWORD = "cp-monitor", "monitor-pw"
DEVICE_USER, DEVICE_PASSWORD = "device", "device-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp_path, *, debug_log: bool):
        self.port = _free_port()
        self.log_path = str(tmp_path / "mosquitto.log")
        passwd = tmp_path / "passwd"
        acl = tmp_path / "acl"
        subprocess.run([PASSWD, "-c", "-b", str(passwd), MONITOR_USER, MONITOR_PASSWORD], check=True)
        subprocess.run([PASSWD, "-b", str(passwd), DEVICE_USER, DEVICE_PASSWORD], check=True)
        acl.write_text(f"user {MONITOR_USER}\ntopic read $SYS/#\n\nuser {DEVICE_USER}\ntopic readwrite dev/#\n")
        log_types = ["all"] if debug_log else ["error", "warning", "notice", "information"]
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {acl}",
            "sys_interval 1",
            f"log_dest file {self.log_path}",
            *[f"log_type {t}" for t in log_types],
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to the "mosquitto" user, which cannot read files in pytest's tmp dir.
            lines.append("user root")
        conf = tmp_path / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        for f in (passwd, acl):
            f.chmod(0o600)
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        else:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.proc.stdout.read()!r}")

    def collect(self, *, previous=None, log_offset=0, password=MONITOR_PASSWORD, timeout=5.0):
        return collect_mosquitto(
            host="127.0.0.1",
            port=self.port,
            username=MONITOR_USER,
            password=password,
            log_path=self.log_path,
            log_offset=log_offset,
            previous=previous,
            timeout=timeout,
        )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path, debug_log=True)
    yield b
    b.stop()


@pytest.fixture
def quiet_broker(tmp_path):
    b = Broker(tmp_path, debug_log=False)
    yield b
    b.stop()


def device_client(port: int) -> tuple[mqtt.Client, threading.Event, list]:
    connected, outcome = threading.Event(), []

    def on_connect(client, userdata, flags, reason_code, properties):
        outcome.append(reason_code)
        connected.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(DEVICE_USER, DEVICE_PASSWORD)
    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    assert connected.wait(10), "no CONNACK"
    return client, connected, outcome


def refused_connect(port: int) -> None:
    """One CONNECT with a wrong password, driven by hand: loop_start's thread would sleep 1 s before stopping."""
    outcome = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bad-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(DEVICE_USER, "wrong")
    client.on_connect = lambda c, u, f, rc, p: outcome.append(rc)
    client.connect("127.0.0.1", port, keepalive=30)
    for _ in range(200):
        client.loop(timeout=0.05)
        if outcome:
            break
    client.disconnect()
    assert outcome and outcome[0].is_failure


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_connections_exclude_monitor_when_three_devices_connected(broker):
    clients = []
    try:
        for _ in range(3):
            client, _, outcome = device_client(broker.port)
            assert not outcome[0].is_failure
            client.subscribe("dev/#", qos=0)
            clients.append(client)
        time.sleep(0.2)  # let the SUBSCRIBEs land before the broker's next $SYS batch
        result = broker.collect()
    finally:
        for c in clients:
            close(c)
    assert result.available and result.error == ""
    # A fresh $SYS batch was seen, so mosquitto's figures include our monitor connection and subscription: the
    # collector subtracted them, leaving exactly the devices.
    assert result.state["fresh"] is True
    assert result.values["connections"] == 3
    assert result.values["sessions"] == 3
    assert result.values["subscriptions"] == 3


def test_retained_counts_only_user_messages_when_broker_has_sys_tree(broker):
    client, _, _ = device_client(broker.port)
    try:
        for i in range(2):
            client.publish(f"dev/state/{i}", b"on", qos=1, retain=True).wait_for_publish(5)
    finally:
        close(client)
    time.sleep(2.5)  # two sys intervals: the retained count is recomputed after the publishes
    result = broker.collect()
    assert result.values["retained"] == 2


def test_message_rates_count_device_traffic_when_previous_state_given(broker):
    subscriber, _, _ = device_client(broker.port)
    publisher, _, _ = device_client(broker.port)
    received = []
    subscriber.on_message = lambda c, u, m: received.append(m.topic)
    subscriber.subscribe("dev/#", qos=0)
    time.sleep(0.2)
    try:
        first = broker.collect()
        for _ in range(20):
            publisher.publish("dev/telemetry", b"x" * 10, qos=1).wait_for_publish(5)
        for _ in range(100):
            if len(received) >= 20:
                break
            time.sleep(0.02)
        time.sleep(2.5)  # the counters are republished on the next $SYS batch
        second = broker.collect(previous=first.state, log_offset=first.log_offset)
    finally:
        close(subscriber)
        close(publisher)
    assert len(received) == 20
    elapsed = second.state["ts"] - first.state["ts"]
    assert second.values["messages_received_rate"] * elapsed == pytest.approx(20)
    # $SYS messages delivered to the monitor are taken off the broker's sent counter.
    assert second.values["messages_sent_rate"] * elapsed == pytest.approx(20)
    assert second.values["messages_dropped_rate"] == 0
    assert second.values["traffic_bytes"] > 20 * 10 * 2


def test_auth_failures_counted_from_log_when_ten_wrong_passwords(broker):
    first = broker.collect()
    for _ in range(10):
        refused_connect(broker.port)
    second = broker.collect(previous=first.state, log_offset=first.log_offset)
    assert second.available
    assert second.state["log"]["auth_failures"] == 10
    elapsed = second.state["ts"] - first.state["ts"]
    assert second.values["auth_failure_rate"] == pytest.approx(10 / elapsed)
    with open(broker.log_path, "rb") as fh:
        assert fh.read().count(b"disconnected, not authorised.") == 10


def test_nothing_is_counted_when_a_client_id_repeats_the_broker_words(broker):
    """A client id may hold spaces and any printable text: logged mid-line, it is not the broker's own line."""
    first = broker.collect()
    for client_id in ("x Client y disconnected, not authorised.", "Denied PUBLISH from x"):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        client.username_pw_set(DEVICE_USER, DEVICE_PASSWORD)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish("dev/ok", b"x", qos=1).wait_for_publish(5)
        close(client)
    second = broker.collect(previous=first.state, log_offset=first.log_offset)
    with open(broker.log_path, "rb") as fh:
        assert b"as x Client y disconnected, not authorised." in fh.read()  # it was there to be miscounted
    assert (second.state["log"]["auth_failures"], second.state["log"]["acl_denied"]) == (0, 0)


def test_counters_start_again_and_never_go_negative_when_the_broker_restarted_as_long_ago(tmp_path):
    """A broker killed and started again is read with the old one's state: its uptime may equal the old reading's
    (both read a second or two after their start), and subtracting the old broker's share of our own traffic would
    leave negative counters, which billing refuses (the whole collection then failed)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Broker(tmp_path / "a", debug_log=False)
    try:
        before = first.collect()
    finally:
        first.stop()
    assert before.state["fresh"] and before.state["own_messages_total"] > 10
    second = Broker(tmp_path / "b", debug_log=False)
    try:
        time.sleep(max(before.state["uptime"] + 1.0, 1.0))
        after = second.collect(previous=before.state)
    finally:
        second.stop()

    assert after.state["uptime"] >= before.state["uptime"]  # the uptime alone does not tell
    assert all(v is None or v >= 0 for v in after.state["counters"].values()), after.state["counters"]
    assert after.state["own_messages_total"] < 1.5 * before.state["own_messages_total"]  # the old share is gone
    assert m.TRAFFIC_BYTES not in after.values  # no step is computed across two brokers


def test_log_is_not_counted_twice_when_offset_passed_back(broker):
    first = broker.collect()
    refused_connect(broker.port)
    second = broker.collect(previous=first.state, log_offset=first.log_offset)
    third = broker.collect(previous=second.state, log_offset=second.log_offset)
    assert second.state["log"]["auth_failures"] == 1
    assert third.state["log"]["auth_failures"] == 0 and third.values["auth_failure_rate"] == 0
    assert third.log_offset > second.log_offset > first.log_offset


def test_acl_denials_counted_when_broker_logs_at_debug_level(broker):
    first = broker.collect()
    client, _, _ = device_client(broker.port)
    try:
        for _ in range(3):
            client.publish("other/secret", b"x", qos=0)
        client.publish("dev/ok", b"x", qos=1).wait_for_publish(5)
    finally:
        close(client)
    second = broker.collect(previous=first.state, log_offset=first.log_offset)
    assert second.state["log"]["debug_logging"] is True
    assert second.state["log"]["acl_denied"] == 3
    assert second.values["acl_denied_rate"] > 0


def test_acl_rate_absent_and_auth_failures_still_counted_when_broker_logs_without_debug(quiet_broker):
    first = quiet_broker.collect()
    client, _, _ = device_client(quiet_broker.port)
    client.publish("other/secret", b"x", qos=1).wait_for_publish(5)
    close(client)
    refused_connect(quiet_broker.port)
    second = quiet_broker.collect(previous=first.state, log_offset=first.log_offset)
    assert "acl_denied_rate" not in second.values
    assert second.state["log"] == {"auth_failures": 1, "acl_denied": 0, "debug_logging": False}


def test_unavailable_when_broker_stopped(broker):
    first = broker.collect()
    broker.stop()
    result = broker.collect(previous=first.state, log_offset=first.log_offset, timeout=2)
    assert result.available is False and "connect" in result.error
    assert result.state == first.state and result.log_offset == first.log_offset


def test_unavailable_within_timeout_when_listener_never_answers():
    """A socket that accepts but never speaks MQTT: only the collector's own deadline ends the wait."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        result = collect_mosquitto(
            host="127.0.0.1",
            port=server.getsockname()[1],
            username="u",
            password="p",
            log_path=None,
            log_offset=0,
            previous=None,
            timeout=1.0,
        )
    finally:
        server.close()
    assert result.available is False and "no CONNACK" in result.error


def test_unavailable_with_reason_when_monitor_password_wrong(broker):
    result = broker.collect(password="nope")
    assert result.available is False and "refused" in result.error


def test_log_reading_restarts_from_zero_when_file_was_rotated(tmp_path):
    log = tmp_path / "m.log"
    log.write_bytes(b"1: Client <unknown> disconnected, not authorised.\n2: partial line without newline")
    scan = _read_log(path=str(log), offset=10_000, monitor_client_id="cp-monitor-x")
    assert scan.auth_failures == 1 and scan.acl_denials == 0 and not scan.debug_seen
    # The unfinished last line is left for the next run.
    assert scan.offset == len(b"1: Client <unknown> disconnected, not authorised.\n")
