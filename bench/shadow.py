"""Device shadows under load (Premium): updates accepted per second and the update -> accepted latency with 1,000
devices publishing on one local deployment, beside a bare mosquitto echo round trip measured in the same run.

Runs the real path: a Premium deployment reconciled by a real Celery worker into a real mosquitto, 1,000 devices
imported through the service, a real platform agent process, and 1,000 MQTT connections driven from one thread (a
hand-written MQTT 3.1.1 client over non-blocking sockets, so the load generator is not what is measured). The floor
is the same swarm against a bare mosquitto whose echo client (paho, in its own process, as the agent is) answers
each request: the broker and client round trip without the database. Without DATABASE_URL it starts a throwaway
PostgreSQL and Redis (scripts/services.sh) and re-runs itself inside them. It prints figures; it never gates the
suite. Usage: .venv/bin/python bench/shadow.py [paced_rate] [seconds]
"""

from __future__ import annotations

import json
import os
import pathlib
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEVICES = 1000


def _reexec_with_services() -> None:
    script = (
        "source scripts/services.sh && services_start && export CONTROLPLANE_ENV=test "
        'CONTROLPLANE_VAR_DIR="$SERVICES_DIR/var" && mkdir -p "$CONTROLPLANE_VAR_DIR" && '
        'chmod 755 "$CONTROLPLANE_VAR_DIR" && .venv/bin/python bench/shadow.py "$@"'
    )
    sys.exit(subprocess.call(["bash", "-c", script, "shadow", *sys.argv[1:]], cwd=REPO))


# -- a minimal MQTT 3.1.1 client for many connections in one thread ---------------------------------------------


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining(len(body)) + body


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags, payload = 0x02, _field(client_id.encode())
    if username is not None:
        flags |= 0xC0
        payload += _field(username.encode()) + _field((password or "").encode())
    return _packet(0x10, _field(b"MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + payload)


def subscribe_packet(packet_id: int, topic: str, qos: int = 1) -> bytes:
    return _packet(0x82, packet_id.to_bytes(2, "big") + _field(topic.encode()) + bytes([qos]))


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return _packet(0x32, _field(topic.encode()) + packet_id.to_bytes(2, "big") + payload)


class Connection:
    __slots__ = ("sock", "inbox", "outbox", "ready", "next_id", "name")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock, self.name = sock, name
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.ready = False
        self.next_id = 1

    def packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id


class Swarm:
    """Many MQTT connections driven by one selector: paced publishing, answers timed by their clientToken."""

    def __init__(self, port: int, clients: list[tuple[str, str | None, str | None, str, str]]) -> None:
        # clients: (client id, username, password, topic to publish to, topic filter of its answers)
        self.port = port
        self.clients = clients
        self.selector = selectors.DefaultSelector()
        self.connections: list[Connection] = []
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.answered_at: list[float] = []

    def connect(self, timeout: float = 60.0) -> None:
        for client_id, username, password, _topic, answers in self.clients:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            conn = Connection(sock, client_id)
            conn.outbox += connect_packet(client_id, username, password)
            conn.outbox += subscribe_packet(conn.packet_id(), answers)
            self.connections.append(conn)
            self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        deadline = time.monotonic() + timeout
        while not all(c.ready for c in self.connections):
            if time.monotonic() > deadline:
                missing = sum(not c.ready for c in self.connections)
                raise TimeoutError(f"{missing} connections got no SUBACK")
            self.pump(0.05)

    def pump(self, timeout: float) -> None:
        for key, events in self.selector.select(timeout):
            conn = key.data
            if events & selectors.EVENT_READ:
                try:
                    data = conn.sock.recv(65536)
                except BlockingIOError:
                    data = None
                if data == b"":
                    raise ConnectionError(f"{conn.name}: the broker closed the connection")
                if data:
                    conn.inbox += data
                    self._read(conn)
            if events & selectors.EVENT_WRITE and conn.outbox:
                try:
                    sent = conn.sock.send(conn.outbox)
                    del conn.outbox[:sent]
                except BlockingIOError:
                    pass
            if not conn.outbox:
                self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _send(self, conn: Connection, data: bytes) -> None:
        if not conn.outbox:
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        conn.outbox += data

    def _read(self, conn: Connection) -> None:
        buf = conn.inbox
        while len(buf) >= 2:
            multiplier, length, index = 1, 0, 1
            while True:
                if index >= len(buf):
                    return
                byte = buf[index]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                index += 1
                if not byte & 0x80:
                    break
            if len(buf) < index + length:
                return
            kind, body = buf[0], bytes(buf[index : index + length])
            del buf[: index + length]
            if kind >> 4 == 9:  # SUBACK
                conn.ready = True
            elif kind >> 4 == 3:  # PUBLISH
                qos = (kind >> 1) & 3
                topic_len = int.from_bytes(body[:2], "big")
                offset = 2 + topic_len
                if qos:
                    self._send(conn, _packet(0x40, body[offset : offset + 2]))
                    offset += 2
                self._answer(body[2 : 2 + topic_len].decode(), body[offset:])

    def _answer(self, topic: str, payload: bytes) -> None:
        if not topic.endswith("/accepted") and not topic.endswith("/resp"):
            return
        try:
            token = json.loads(payload).get("clientToken")
        except ValueError:
            return
        started = self.sent.pop(token, None)
        if started is not None:
            now = time.perf_counter()
            self.latencies.append(now - started)
            self.answered_at.append(now)

    def run(self, *, rate: float, seconds: float, payload) -> tuple[int, float]:
        """Publish `rate` requests a second, round robin over the connections, for `seconds`; then wait for the last
        answers. Returns (requests sent, seconds from the first request to the last answer)."""
        count = 0
        started = time.perf_counter()
        while True:
            now = time.perf_counter()
            elapsed = now - started
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) + 1
            while count < due:
                conn = self.connections[count % len(self.connections)]
                _cid, _u, _p, topic, _a = self.clients[count % len(self.clients)]
                token = f"{conn.name}.{count}"
                self.sent[token] = time.perf_counter()
                self._send(conn, publish_packet(topic, payload(count, token), conn.packet_id()))
                count += 1
            self.pump(min(0.002, max(0.0, (count / rate) - elapsed)))
        deadline = time.perf_counter() + 15
        while self.sent and time.perf_counter() < deadline:
            self.pump(0.01)
        finish = max(self.answered_at) if self.answered_at else time.perf_counter()
        return count, finish - started

    def reset(self) -> None:
        self.sent.clear()
        self.latencies.clear()
        self.answered_at.clear()

    def close(self) -> None:
        for conn in self.connections:
            try:
                conn.sock.close()
            except OSError:
                pass


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _summary(label: str, sent: int, swarm: Swarm, span: float) -> str:
    answered = len(swarm.latencies)
    if not answered:
        return f"{label}: {sent} sent, none answered"
    return (
        f"{label}: {sent} sent, {answered} answered ({answered / span:.0f}/s); update -> answer "
        f"p50 {_percentile(swarm.latencies, 0.5) * 1000:.1f} ms, p99 {_percentile(swarm.latencies, 0.99) * 1000:.1f} ms, "
        f"max {max(swarm.latencies) * 1000:.1f} ms"
    )


ECHO = textwrap.dedent(
    """
    import sys
    import paho.mqtt.client as mqtt
    port = int(sys.argv[1])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="echo")
    def on_connect(c, u, f, rc, p):
        c.subscribe("echo/+/req", qos=1)
        print("ready", flush=True)
    def on_message(c, u, msg):
        c.publish(msg.topic[:-3] + "resp", msg.payload, qos=1)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_forever()
    """
)


def bare_echo(rate: float, seconds: float) -> str:
    """The floor: the same swarm, rate and payload against a bare mosquitto and a paho echo in its own process."""
    with tempfile.TemporaryDirectory(prefix="bench-echo-") as tmp:
        os.chmod(tmp, 0o755)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        conf = pathlib.Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000\n")
        conf.chmod(0o644)
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        echo = None
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.02)
            echo = subprocess.Popen([sys.executable, "-c", ECHO, str(port)], stdout=subprocess.PIPE, cwd=REPO)
            assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
            clients: list[tuple[str, str | None, str | None, str, str]] = [
                (f"e{i}", None, None, f"echo/e{i}/req", f"echo/e{i}/resp") for i in range(DEVICES)
            ]
            swarm = Swarm(port, clients)
            swarm.connect()
            sent, span = swarm.run(rate=rate, seconds=seconds, payload=_update)
            swarm.close()
            return _summary(f"bare mosquitto echo at {rate:.0f}/s", sent, swarm, span)
        finally:
            if echo is not None:
                echo.kill()
            broker.terminate()
            broker.wait()


def _update(n: int, token: str) -> bytes:
    return json.dumps({"state": {"reported": {"n": n, "temperature": 20 + n % 7}}, "clientToken": token}).encode()


def main(rate: float, seconds: float) -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    var_dir = pathlib.Path(os.environ.get("CONTROLPLANE_VAR_DIR", tempfile.mkdtemp()))
    brokers = pathlib.Path(tempfile.mkdtemp(prefix="bench-brokers-", dir=var_dir))
    brokers.chmod(0o755)
    os.environ["LOCAL_BROKERS_DIR"] = str(brokers)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from deployments import services as deployment_services
    from iot import services as iot_services
    from iot.models import ShadowChange
    from organizations import services as org_services
    from organizations.models import Organization
    from tests.celery_worker import CeleryWorker, broker_pids
    from tests.factories import UserFactory
    from tests.iot.agent_process import AgentProcess

    owner = UserFactory.create()
    organization = org_services.organization_create(name="Bench", owner=owner)
    Organization.objects.filter(pk=organization.pk).update(premium_trial_deployments=2)
    organization.refresh_from_db()
    project = organization.projects.get(is_default=True)

    env = dict(os.environ, LOCAL_BROKERS_DIR=str(brokers), CONN_MAX_AGE="0", PYTHONPATH=str(REPO))
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    worker = CeleryWorker(env, log_dir)
    worker.start()
    agent = None
    try:
        # Tier 2k: a 1k broker takes 1,000 connections, and the agent needs one more.
        deployment, _ = deployment_services.deployment_create(
            project=project, actor=None, name="bench", plan="premium", tier="2k", region="local"
        )
        rows = "device_id\n" + "".join(f"dev-{i:04d}\n" for i in range(DEVICES))
        imported, _operation = iot_services.devices_import(deployment=deployment, actor=None, data=rows.encode())
        deadline = time.monotonic() + 120
        while True:
            deployment.refresh_from_db()
            if deployment.status == "running" and deployment.observed_generation >= deployment.generation:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the deployment never converged: {deployment.status} {deployment.last_error}")
            time.sleep(0.1)
        port = deployment.endpoints["ports"]["mqtt"]
        agent = AgentProcess(env, log_dir / "agent.log", agent_id="bench-agent", heartbeat=2.0, lease=10.0).start()

        clients: list[tuple[str, str | None, str | None, str, str]] = [
            (
                device.device_id,
                credentials.username,
                credentials.password,
                f"devices/{device.device_id}/shadow/update",
                f"devices/{device.device_id}/shadow/update/accepted",
            )
            for device, credentials in imported
        ]
        swarm = Swarm(port, clients)
        connect_started = time.perf_counter()
        swarm.connect()
        print(f"{DEVICES} devices connected and subscribed in {time.perf_counter() - connect_started:.1f} s")
        # Until the agent answers: it subscribes once it holds the lease.
        warm_deadline = time.monotonic() + 60
        while not swarm.latencies:
            if time.monotonic() > warm_deadline:
                raise TimeoutError(f"the agent never answered:\n{agent.logs()}")
            swarm.reset()
            swarm.run(rate=20, seconds=0.5, payload=_update)
        swarm.reset()

        sent, span = swarm.run(rate=rate, seconds=seconds, payload=_update)
        paced = _summary(f"agent at {rate:.0f}/s offered", sent, swarm, span)
        swarm.reset()
        burst_rate = rate * 4
        sent, span = swarm.run(rate=burst_rate, seconds=seconds / 2, payload=_update)
        saturated = _summary(f"agent at {burst_rate:.0f}/s offered (saturation)", sent, swarm, span)
        swarm.close()
        history = ShadowChange.objects.filter(device__deployment=deployment).count()
    finally:
        if agent is not None:
            agent.stop()
        worker.stop()
        for pid in broker_pids(brokers):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(brokers, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    floor = bare_echo(rate, seconds)
    print(f"(a) {paced}   (target: p99 < 50 ms at 500/s on 2 cores, {os.cpu_count()} here)")
    print(f"(b) {saturated}")
    print(f"    floor, same run: {floor}")
    print(f"    every accepted update is in the shadow history: {history} rows")


if __name__ == "__main__":
    if not os.environ.get("DATABASE_URL"):
        _reexec_with_services()
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 500.0, float(sys.argv[2]) if len(sys.argv) > 2 else 20.0)
