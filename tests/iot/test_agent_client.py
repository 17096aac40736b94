"""The agent's MQTT client (iot/agent/client.py) against a real mosquitto: what paho delivered before it delivers
still, whole and in order, whatever the reads cut; messages queued behind the in-flight window all go out; what is
published inside deferred_wakeups() leaves when the block ends; and a reconnect never reads the old connection's bytes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iot.agent.client import READ_SIZE, AgentClient

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp_path, port: int | None = None) -> None:
        self.tmp_path = tmp_path
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 0"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to "mosquitto", who cannot read pytest's tmp dir
        conf = self.tmp_path / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    yield b
    b.stop()


def _connected(client: mqtt.Client, port: int, **kwargs) -> mqtt.Client:
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ready.set()
    client.connect("127.0.0.1", port, **kwargs)
    client.loop_start()
    assert ready.wait(10), "no CONNACK"
    return client


def _close(*clients: mqtt.Client) -> None:
    for client in clients:
        client.disconnect()  # without it loop_stop() waits for every unacknowledged message
        client.loop_stop()


def _slow_loop(client: mqtt.Client) -> None:
    """paho's network thread waits in select() up to 60 s instead of 1 s: whatever it would leave unread or unsent
    until its next wake-up then stays so long that a test sees it."""

    def run() -> None:
        client.loop_forever(timeout=60.0, retry_first_connection=True)

    client._thread_main = run  # type: ignore[method-assign]


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _payload(seq: int, size: int) -> bytes:
    stamp = seq.to_bytes(4, "big")
    return (stamp * (size // 4 + 1))[:size]


def test_every_message_arrives_whole_and_in_order_when_packets_straddle_the_client_reads(broker):
    # Sizes across the remaining-length boundaries (127/128, 16383/16384 bytes), larger than one read, and a run of
    # small ones that share a read: every way a packet can be cut by a READ_SIZE chunk.
    sizes = [0, 1, 120, 121, 122, 16376, 16377, READ_SIZE - 20, READ_SIZE + 5, 3 * READ_SIZE + 7, 200_000]
    sizes += [200] * 2000 + [7, READ_SIZE - 1] * 20
    received: list[tuple[str, bytes]] = []
    subscriber = AgentClient(mqtt.CallbackAPIVersion.VERSION2, client_id="agent", protocol=mqtt.MQTTv5)
    subscriber.on_message = lambda c, u, m: received.append((m.topic, bytes(m.payload)))
    # paho reads one packet per wake-up when it has nothing to send: packets left in the client's buffer after the
    # last bytes arrived would wait the whole 60 s unless the client reads its buffer out.
    _slow_loop(subscriber)
    _connected(subscriber, broker.port, keepalive=120)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.subscribe("in/#", qos=1)
    assert subscribed.wait(10)

    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device")
    publisher.max_inflight_messages_set(100)
    _connected(publisher, broker.port)
    sent = [(f"in/{seq % 7}", _payload(seq, size)) for seq, size in enumerate(sizes)]
    for topic, payload in sent:
        publisher.publish(topic, payload, qos=1)
    try:
        assert _wait(lambda: len(received) >= len(sent)), f"{len(received)} of {len(sent)} arrived"
        assert received == sent
    finally:
        _close(publisher, subscriber)


def test_packets_already_read_are_delivered_when_no_more_bytes_come(broker):
    # While the first message's callback runs, the broker's next messages (its in-flight window to us) pile up in the
    # socket and arrive in one read. paho then reads one packet per wake-up; with nothing more coming from the broker,
    # those left in the client's buffer would wait for the 60 s select() unless the client reads its buffer out.
    received: list[bytes] = []

    def on_message(client, userdata, message):
        if not received:
            time.sleep(0.5)
        received.append(bytes(message.payload))

    subscriber = AgentClient(mqtt.CallbackAPIVersion.VERSION2, client_id="agent", protocol=mqtt.MQTTv5)
    subscriber.on_message = on_message
    _slow_loop(subscriber)
    _connected(subscriber, broker.port, keepalive=120)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.subscribe("in", qos=1)
    assert subscribed.wait(10)
    publisher = _connected(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device"), broker.port)
    try:
        for n in range(50):
            publisher.publish("in", b"%d" % n, qos=1)
        assert _wait(lambda: len(received) == 50, timeout=20), f"{len(received)} of 50 delivered"
        assert received == [b"%d" % n for n in range(50)]
    finally:
        _close(publisher, subscriber)


def test_messages_queued_behind_the_in_flight_window_all_go_out_in_order_when_pubacks_return(broker):
    arrived: list[bytes] = []
    subscriber = _connected(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="app"), broker.port)
    subscriber.on_message = lambda c, u, m: arrived.append(bytes(m.payload))
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.subscribe("out", qos=1)
    assert subscribed.wait(10)

    agent = AgentClient(mqtt.CallbackAPIVersion.VERSION2, client_id="agent", protocol=mqtt.MQTTv5)
    agent.max_inflight_messages_set(5)
    agent.max_queued_messages_set(0)
    _connected(agent, broker.port)
    payloads = [b"%d" % n for n in range(3000)]
    infos = [agent.publish("out", payload, qos=1) for payload in payloads]
    try:
        assert _wait(lambda: all(info.is_published() for info in infos)), "not every message was acknowledged"
        assert _wait(lambda: len(arrived) >= len(payloads))
        assert arrived == payloads
        assert not agent._out_messages and agent._inflight_messages == 0
    finally:
        _close(agent, subscriber)


def test_what_is_published_inside_deferred_wakeups_leaves_when_the_block_ends_and_not_before(broker):
    arrived: list[bytes] = []
    subscriber = _connected(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="app"), broker.port)
    subscriber.on_message = lambda c, u, m: arrived.append(bytes(m.payload))
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.subscribe("out", qos=1)
    assert subscribed.wait(10)

    agent = AgentClient(mqtt.CallbackAPIVersion.VERSION2, client_id="agent", protocol=mqtt.MQTTv5)
    _slow_loop(agent)  # only a wake-up makes it write what another thread queued
    _connected(agent, broker.port, keepalive=120)
    try:
        time.sleep(0.5)  # the network thread is back in select()
        with agent.deferred_wakeups():
            agent.publish("out", b"held", qos=1)
            time.sleep(1.0)
            assert arrived == [], "published before the block ended: the wake-up was not deferred"
        assert _wait(lambda: arrived == [b"held"], timeout=10), "not sent when the block ended"

        # The other side of it: a block whose wake-up is dropped leaves its packet queued until something else wakes
        # the thread, which shows the wake-up at the block's end is what sent the first one.
        with agent.deferred_wakeups():
            agent.publish("out", b"stuck", qos=1)
            agent._deferring.wanted = False
        time.sleep(1.5)
        assert arrived == [b"held"]
        agent.publish("out", b"after", qos=1)  # outside a block: paho wakes its thread at once
        assert _wait(lambda: arrived == [b"held", b"stuck", b"after"], timeout=10)
    finally:
        _close(agent, subscriber)


def test_a_reconnect_reads_only_the_new_connection_when_the_broker_restarts_mid_stream(tmp_path):
    broker = Broker(tmp_path)
    clients: list[mqtt.Client] = []
    try:
        received: list[bytes] = []
        connects = []
        agent = AgentClient(mqtt.CallbackAPIVersion.VERSION2, client_id="agent", protocol=mqtt.MQTTv5)
        clients.append(agent)
        agent.reconnect_delay_set(min_delay=1, max_delay=1)
        agent.on_message = lambda c, u, m: received.append(bytes(m.payload))

        def on_connect(client, userdata, flags, reason_code, properties):
            connects.append(reason_code)
            client.subscribe("in", qos=1)

        agent.on_connect = on_connect
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        agent.connect("127.0.0.1", broker.port, properties=properties)
        agent.loop_start()
        assert _wait(lambda: len(connects) == 1)
        time.sleep(0.3)  # its SUBSCRIBE answered
        device = _connected(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device"), broker.port)
        clients.append(device)
        big = _payload(1, 5 * READ_SIZE)
        for _ in range(20):
            device.publish("in", big, qos=0)  # in flight to the agent when the broker dies
        time.sleep(0.05)
        broker.stop()
        broker.start()
        assert _wait(lambda: len(connects) == 2), "the agent did not reconnect"
        time.sleep(0.3)
        before = len(received)
        device2 = _connected(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="device2"), broker.port)
        clients.append(device2)
        device2.publish("in", b"after restart", qos=1)
        assert _wait(lambda: b"after restart" in received, timeout=15)
        assert received[before:] == [b"after restart"]
        assert all(payload == big for payload in received[:before])
    finally:
        _close(*clients)
        broker.stop()
