"""The local driver against real mosquitto processes and real paho-mqtt 2.x clients."""

import dataclasses
import json
import os
import pathlib
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from deployments.drivers.base import AclEntry, BrokerSpec, RegionTarget, TemporaryDriverError
from deployments.drivers.local import HONOURED_LEVELS, LocalDriver, honoured_rate_limits, render_acl
from deployments.passwords import make_mqtt_credential
from tests.celery_worker import broker_pids, running_pids

REPO = pathlib.Path(__file__).resolve().parents[2]
ALICE = make_mqtt_credential(username="alice", password="alice-pw")
OPS = make_mqtt_credential(username="ops", password="ops-pw", is_superuser=True)
BOB = make_mqtt_credential(username="bob", password="bob-pw")
REGION = RegionTarget(code="local-1", driver="local", bind_address="127.0.0.1")


def _wait_for(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def root():
    # Not tmp_path: pytest's base dir is 0700, and a root-started mosquitto reads its files as the `mosquitto` user.
    path = pathlib.Path(tempfile.mkdtemp(prefix="localdriver-"))
    path.chmod(0o755)
    yield path
    for pid in broker_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def driver(root):
    return LocalDriver(root=root, sys_interval=1)


def _spec(**changes) -> BrokerSpec:
    base = BrokerSpec(
        name="dep_" + uuid.uuid4().hex[:10],
        region=REGION,
        running=True,
        max_connections=50,
        messages_per_second=1000,
        users=(ALICE, OPS),
        acl=(
            AclEntry(permission="deny", action="publish", topic="secret/#", username="alice"),
            AclEntry(permission="allow", action="all", topic="#"),
        ),
    )
    return dataclasses.replace(base, **changes)


class Client:
    """A paho 2.x client whose callbacks are set before it connects: queued messages arrive right after CONNACK."""

    def __init__(self, port, username, password, *, client_id=None, protocol=mqtt.MQTTv311, transport="tcp"):
        self.port = port
        self.protocol = protocol
        self.messages: queue.Queue = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or uuid.uuid4().hex,
            protocol=protocol,
            transport=transport,
        )
        self.mqtt.username_pw_set(username, password)
        self.mqtt.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc)
        self.mqtt.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))
        self.mqtt.on_disconnect = lambda c, u, flags, rc, props: self.disconnected.set()

    def connect(self, **kwargs):
        self.disconnected.clear()
        self.mqtt.connect("127.0.0.1", self.port, **kwargs)
        self.mqtt.loop_start()
        return self.connack.get(timeout=10)

    def subscribe(self, topic, qos=1):
        done = threading.Event()
        self.mqtt.on_subscribe = lambda c, u, mid, codes, props: done.set()
        self.mqtt.subscribe(topic, qos=qos)
        assert done.wait(10)

    def publish(self, topic, payload, qos=1):
        info = self.mqtt.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)

    def received(self, count, timeout=15.0):
        return [self.messages.get(timeout=timeout) for _ in range(count)]

    def close(self):
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def _raw_connect_answer(port, username, password) -> bytes:
    """Send a hand-built MQTT 3.1.1 CONNECT; return the first bytes answered (b'' if the broker just closed)."""

    def field(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    body = field(b"MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body += field(uuid.uuid4().hex.encode()) + field(username.encode()) + field(password.encode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        try:
            return sock.recv(4)
        except ConnectionResetError:
            return b""


def test_client_round_trips_a_message_when_deployment_is_applied(driver):
    observed = driver.apply(_spec())
    assert observed.phase == "running"
    assert observed.host == "127.0.0.1"
    assert pathlib.Path(observed.details["log_path"]).exists()
    client = Client(observed.ports["mqtt"], "alice", "alice-pw")
    assert not client.connect().is_failure
    client.subscribe("room/1")
    client.publish("room/1", b"hello")
    assert client.received(1) == [("room/1", b"hello")]
    client.close()


def test_websocket_client_talks_to_tcp_client_when_deployment_is_applied(driver):
    observed = driver.apply(_spec())
    assert set(observed.ports) == {"mqtt", "ws"}
    subscriber = Client(observed.ports["ws"], "alice", "alice-pw", transport="websockets")
    assert not subscriber.connect().is_failure
    subscriber.subscribe("room/ws")
    publisher = Client(observed.ports["mqtt"], "alice", "alice-pw")
    assert not publisher.connect().is_failure
    publisher.publish("room/ws", b"over websockets")
    assert subscriber.received(1) == [("room/ws", b"over websockets")]
    subscriber.close()
    publisher.close()


def test_connect_is_refused_and_logged_when_password_is_wrong(driver):
    observed = driver.apply(_spec())
    client = Client(observed.ports["mqtt"], "alice", "not-her-password")
    assert client.connect().is_failure
    client.close()
    log = pathlib.Path(observed.details["log_path"])
    _wait_for(lambda: "not authorised" in log.read_text(), what="the auth failure in the log")


def test_denied_publish_never_reaches_subscriber_when_acl_denies_topic(driver):
    observed = driver.apply(_spec())
    port = observed.ports["mqtt"]
    watcher = Client(port, "ops", "ops-pw")
    assert not watcher.connect().is_failure
    watcher.subscribe("#")
    alice = Client(port, "alice", "alice-pw")
    assert not alice.connect().is_failure
    alice.publish("secret/plans", b"denied")
    alice.publish("public/news", b"allowed")
    # One publisher's QoS 1 messages are delivered in order: once the later one is here, the earlier was dropped.
    assert watcher.received(1) == [("public/news", b"allowed")]
    assert watcher.messages.empty()
    alice.close()
    watcher.close()


def test_acl_topics_with_placeholders_are_literal_when_mosquitto_applies_them(driver):
    """mosquitto substitutes %u and %c only in `pattern` lines, which are never written: a rule's topic is its own
    text, the same for every client (EMQX is given that reading too, see deployments.emqx_acl)."""
    spec = _spec(
        acl=(
            AclEntry(permission="allow", action="publish", topic="devices/${username}/state"),
            AclEntry(permission="allow", action="publish", topic="devices/%u/state"),
            AclEntry(permission="allow", action="publish", topic="eq a/b"),
            AclEntry(permission="deny", action="all", topic="#"),
        )
    )
    assert not any(line.startswith("pattern") for line in render_acl(spec)[0].splitlines())
    port = driver.apply(spec).ports["mqtt"]
    watcher = Client(port, "ops", "ops-pw")
    assert not watcher.connect().is_failure
    watcher.subscribe("#")
    alice = Client(port, "alice", "alice-pw", client_id="c1")
    assert not alice.connect().is_failure
    for topic in ("devices/alice/state", "devices/c1/state", "a/b", "devices/${username}/state"):
        alice.publish(topic, b"x")
    alice.publish("devices/%u/state", b"x")
    alice.publish("eq a/b", b"last")
    # One publisher's QoS 1 messages are delivered in order: once the last is here, the denied ones were dropped.
    assert watcher.received(3) == [
        ("devices/${username}/state", b"x"),
        ("devices/%u/state", b"x"),
        ("eq a/b", b"last"),
    ]
    assert watcher.messages.empty()
    alice.close()
    watcher.close()


def test_new_user_gets_in_without_disconnecting_others_when_added_while_running(driver):
    spec = _spec()
    observed = driver.apply(spec)
    port = observed.ports["mqtt"]
    alice = Client(port, "alice", "alice-pw")
    assert not alice.connect().is_failure
    assert Client(port, "bob", "bob-pw").connect().is_failure

    again = driver.apply(dataclasses.replace(spec, users=(ALICE, OPS, BOB)))

    assert again.details["pid"] == observed.details["pid"]  # reloaded with SIGHUP, not restarted
    bob = Client(port, "bob", "bob-pw")
    _wait_for(lambda: not bob.connect().is_failure or bob.close(), what="bob accepted after the reload")
    alice.subscribe("chat")
    bob.publish("chat", b"hi alice")
    assert alice.received(1) == [("chat", b"hi alice")]
    assert not alice.disconnected.is_set()
    bob.close()
    alice.close()


def test_broker_refuses_then_serves_on_same_port_when_stopped_then_started(driver):
    spec = _spec()
    port = driver.apply(spec).ports["mqtt"]

    stopped = driver.apply(dataclasses.replace(spec, running=False))
    assert stopped.phase == "stopped"
    assert stopped.ports["mqtt"] == port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

    started = driver.apply(spec)
    assert started.phase == "running"
    assert started.ports["mqtt"] == port
    client = Client(port, "alice", "alice-pw")
    assert not client.connect().is_failure
    client.close()


def _two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            low = probe.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", low))
                b.bind(("127.0.0.1", low + 1))
            return low
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


def test_everything_is_gone_when_deployment_is_deleted(root):
    low = _two_free_ports()
    # A range of exactly two ports (mqtt and ws): a second deployment can only get them once the first freed them.
    driver = LocalDriver(root=root, port_range=(low, low + 2))
    first, second = _spec(), _spec()
    observed = driver.apply(first)
    pid = int(observed.details["pid"])
    assert set(observed.ports.values()) == {low, low + 1}
    with pytest.raises(TemporaryDriverError):
        driver.apply(second)

    gone = driver.delete(first)

    assert gone.phase == "absent"
    assert not pathlib.Path(f"/proc/{pid}").exists()
    assert not (root / first.name).exists()
    assert first.name not in driver.allocated_ports()
    assert driver.delete(first).phase == "absent"
    assert set(driver.apply(second).ports.values()) == {low, low + 1}


def test_persistent_session_keeps_100_queued_messages_when_restart_nonce_bumps(driver, root):
    spec = _spec()
    observed = driver.apply(spec)
    port = observed.ports["mqtt"]
    expiry = Properties(PacketTypes.CONNECT)
    expiry.SessionExpiryInterval = 3600
    subscriber = Client(port, "alice", "alice-pw", client_id="durable-1", protocol=mqtt.MQTTv5)
    assert not subscriber.connect(clean_start=False, properties=expiry).is_failure
    subscriber.subscribe("telemetry/#")
    subscriber.close()
    publisher = Client(port, "ops", "ops-pw")
    assert not publisher.connect().is_failure
    for n in range(100):
        publisher.publish(f"telemetry/{n}", str(n).encode())
    publisher.close()

    restarted = driver.apply(dataclasses.replace(spec, restart_nonce=1))

    assert restarted.restart_nonce == 1
    assert restarted.details["pid"] != observed.details["pid"]
    assert restarted.ports == observed.ports
    assert (root / spec.name / "data" / "mosquitto.db").exists()
    back = Client(port, "alice", "alice-pw", client_id="durable-1", protocol=mqtt.MQTTv5)
    assert not back.connect(clean_start=False, properties=expiry).is_failure
    payloads = sorted(int(payload) for _, payload in back.received(100))
    assert payloads == list(range(100))
    back.close()
    assert driver.apply(dataclasses.replace(spec, restart_nonce=1)).details["pid"] == restarted.details["pid"]


def test_one_broker_runs_when_two_threads_apply_at_once(driver, root):
    spec = _spec()
    results, errors = [], []

    def apply():
        try:
            results.append(LocalDriver(root=root).apply(spec))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=apply) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {r.details["pid"] for r in results} == {str(p) for p in broker_pids(root)}
    assert len(broker_pids(root)) == 1


def test_one_broker_runs_when_two_processes_apply_at_once(root):
    spec = _spec()
    script = (
        "import json, pathlib, sys\n"
        "from deployments.drivers.base import *\n"
        "from deployments.drivers.local import LocalDriver\n"
        "from deployments.passwords import make_mqtt_credential\n"
        "cred = make_mqtt_credential(username='alice', password='alice-pw')\n"
        f"spec = BrokerSpec(name={spec.name!r}, region=RegionTarget(code='l', driver='local'), running=True,\n"
        "                  max_connections=10, messages_per_second=10, users=(cred,))\n"
        f"print(LocalDriver(root=pathlib.Path({str(root)!r})).apply(spec).details['pid'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=60) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    pids = {out.decode().strip() for out, _ in outputs}
    # Both workers have exited: the broker outlived the process that started it.
    assert pids == {str(p) for p in broker_pids(root)}
    assert len(pids) == 1


def test_fresh_driver_adopts_running_broker_when_control_plane_restarts(root):
    spec = _spec()
    first = LocalDriver(root=root).apply(spec)

    fresh = LocalDriver(root=root)

    assert fresh.adopt_all() == {spec.name: int(first.details["pid"])}
    seen = fresh.observe(spec)
    assert seen.phase == "running"
    assert seen.ports == first.ports
    assert fresh.apply(spec).details["pid"] == first.details["pid"]
    assert len(broker_pids(root)) == 1


def test_stale_pid_file_is_not_trusted_when_pid_belongs_to_another_process(driver, root):
    spec = _spec()
    first = driver.apply(dataclasses.replace(spec, running=False))
    assert first.phase == "stopped"
    # After a reboot the recorded pid may belong to anything, here to this very test process.
    (root / spec.name / "mosquitto.pid").write_text(f"{os.getpid()}\n")
    assert driver.observe(spec).phase == "stopped"
    started = driver.apply(spec)
    assert started.phase == "running"
    assert started.details["pid"] != str(os.getpid())


def test_extra_client_is_refused_when_max_connections_is_reached(driver):
    observed = driver.apply(_spec(max_connections=2))
    port = observed.ports["mqtt"]
    clients = [Client(port, "alice", "alice-pw") for _ in range(2)]
    for client in clients:
        assert not client.connect().is_failure
    assert _raw_connect_answer(port, "alice", "alice-pw") == b""
    clients[0].close()
    _wait_for(lambda: _raw_connect_answer(port, "alice", "alice-pw")[:1] == b"\x20", what="a free slot")
    clients[1].close()


def test_observe_reports_failed_when_broker_dies_unexpectedly(driver):
    spec = _spec()
    observed = driver.apply(spec)
    pid = int(observed.details["pid"])
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: driver.observe(spec).phase == "failed", what="failed phase")
    assert driver.apply(spec).phase == "running"


def test_observe_reports_absent_when_nothing_was_applied(driver):
    assert driver.observe(_spec()).phase == "absent"


def test_no_rate_limit_level_is_claimed_when_asking_what_mosquitto_honours():
    assert HONOURED_LEVELS == frozenset()
    assert all(fields == () for fields in honoured_rate_limits().values())


def test_acl_renders_whitelist_exactly_when_rules_end_with_catch_all_deny():
    spec = _spec(
        users=(ALICE,),
        acl=(
            AclEntry(permission="allow", action="publish", topic="devices/alice/#", username="alice"),
            AclEntry(permission="allow", action="subscribe", topic="commands/#"),
            AclEntry(permission="deny", action="all", topic="#"),
        ),
    )
    text, note = render_acl(spec)
    assert note == "exact"
    assert text.splitlines()[1:] == ["user alice", "topic write devices/alice/#", "topic read commands/#"]


def test_acl_file_is_rewritten_atomically_when_applied(driver, root):
    spec = _spec()
    driver.apply(spec)
    leftovers = [p.name for p in (root / spec.name).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    ports = json.loads((root / spec.name / "ports.json").read_text())
    assert ports == driver.observe(spec).ports


# A stand-in for mosquitto 2.0 in the moment after its listeners open: it serves the ports of the config it is given
# and a SIGTERM is lost on it (src/mosquitto.c installs its handlers, then sets `run = 1`, overwriting what the
# handler set), so only SIGKILL ends it.
_DEAF_BROKER = """#!{python}
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
words = open(sys.argv[2]).read().split()
listening = []
for i, word in enumerate(words):
    if word == "listener":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(words[i + 1])))
        sock.listen()
        listening.append(sock)
time.sleep(600)
"""


def test_websocket_probe_ends_and_leaves_no_broker_when_the_broker_loses_its_sigterm(tmp_path):
    from deployments.drivers.local import _probe_websockets

    deaf = tmp_path / "mosquitto"
    deaf.write_text(_DEAF_BROKER.format(python=sys.executable))
    deaf.chmod(0o755)
    result: dict[str, bool] = {}
    probe = threading.Thread(target=lambda: result.setdefault("served", _probe_websockets(str(deaf))), daemon=True)
    try:
        probe.start()
        probe.join(20)
        assert not probe.is_alive(), "the probe still waits for a broker that lost its SIGTERM"
        assert result["served"] is True
        assert running_pids(str(deaf).encode()) == []
    finally:
        for pid in running_pids(str(deaf).encode()):
            os.kill(pid, signal.SIGKILL)


# A stand-in for mosquitto 2.0 started a moment ago: the first SIGTERM is lost (as above), a later one ends it the way
# mosquitto ends, having saved what it had to save (here: a file saying so).
_LATE_HANDLER_BROKER = """#!{python}
import signal, sys, time
lost = []
def on_term(signum, frame):
    if not lost:
        lost.append(signum)
        return
    open(sys.argv[1], "w").write("saved")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(600)
"""


def test_broker_is_stopped_by_sigterm_within_seconds_when_it_lost_the_first_one(driver, tmp_path):
    script, saved = tmp_path / "mosquitto", tmp_path / "saved"
    script.write_text(_LATE_HANDLER_BROKER.format(python=sys.executable))
    script.chmod(0o755)
    broker = subprocess.Popen([str(script), str(saved)], stdout=subprocess.PIPE)
    try:
        assert broker.stdout.readline() == b"ready\n"
        started = time.monotonic()
        driver._stop(broker.pid)
        took = time.monotonic() - started
        assert saved.read_text() == "saved"  # ended by a SIGTERM it acted on, not by the SIGKILL past the timeout
        assert took < driver.stop_timeout / 3, f"stopping took {took:.1f} s"
    finally:
        broker.kill()
        broker.wait()
