"""Codec rules under load (Premium): Protobuf messages of 200 bytes decoded per second by the platform agent, and the
latency a decode adds over a plain republish measured in the same run on the same broker.

Runs the real path: a Premium deployment reconciled by a real Celery worker into a real mosquitto, a Protobuf schema
and a decode rule made through the services, a real platform agent process. The floor is a paho republisher in its
own process (as the agent is) on the same broker that forwards the same messages without decoding them. One paho
publisher paces messages at the offered rate; one paho subscriber takes both outputs and times each message from
its publish. It also prints the CPU time the agent spends per decoded message (its idle CPU taken out) beside the
floor's per republished message: on a machine shared with other work, the one figure that load does not swamp.
Without DATABASE_URL it starts a throwaway PostgreSQL and Redis and re-runs itself inside them. It
prints figures; it never gates the suite. Usage: .venv/bin/python bench/codec.py [rate] [seconds]
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import paho.mqtt.client as mqtt

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROTO = """syntax = "proto3";
package bench;
message Reading {
  double sent = 1;
  int64 seq = 2;
  string device = 3;
  double temperature = 4;
  bytes pad = 5;
}
"""
PAYLOAD_BYTES = 200


def _reexec_with_services() -> None:
    script = (
        "source scripts/services.sh && services_start && export CONTROLPLANE_ENV=test "
        'CONTROLPLANE_VAR_DIR="$SERVICES_DIR/var" && mkdir -p "$CONTROLPLANE_VAR_DIR" && '
        'chmod 755 "$CONTROLPLANE_VAR_DIR" && .venv/bin/python bench/codec.py "$@"'
    )
    sys.exit(subprocess.call(["bash", "-c", script, "codec", *sys.argv[1:]], cwd=REPO))


REPUBLISHER = textwrap.dedent(
    """
    import sys
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    port, username, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    # As the agent connects: MQTT 5 with a Receive Maximum of 400, so the broker is not what limits it.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain-republisher", protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.max_inflight_messages_set(200)
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = 400
    def on_connect(c, u, f, rc, p):
        c.subscribe("plain/+/in", qos=1)
        print("ready", flush=True)
    def on_message(c, u, msg):
        c.publish(msg.topic[:-2] + "out", msg.payload, qos=1)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port, properties=properties)
    client.loop_forever()
    """
)


class Probe:
    """Publishes paced messages and times their arrival on the output topics (one process: one clock)."""

    def __init__(self, port: int, username: str, password: str, codec) -> None:
        self.codec = codec
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {"codec": [], "plain": []}
        self.arrived: dict[str, list[float]] = {"codec": [], "plain": []}
        self.subscriber = self._client("bench-subscriber", username, password, port)
        self.subscriber.on_message = self._on_message
        done = threading.Event()
        self.subscriber.on_subscribe = lambda c, u, mid, codes, props: done.set()
        # QoS 0 on the way out to the probe: mosquitto sends an MQTT 3.1.1 client at most 20 QoS 1 messages
        # unacknowledged (max_inflight_messages), which would cap both paths at the probe, not at the agent.
        self.subscriber.subscribe([("codec/+/out", 0), ("plain/+/out", 0)])
        assert done.wait(10)
        self.publisher = self._client("bench-publisher", username, password, port)
        self._template: bytes | None = None

    @staticmethod
    def _client(client_id: str, username: str, password: str, port: int) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        client.username_pw_set(username, password)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", port)
        client.loop_start()
        return client

    def _on_message(self, client, userdata, message) -> None:
        now = time.perf_counter()
        if message.topic.startswith("codec/"):
            sent = json.loads(message.payload)["sent"]
            kind = "codec"
        else:
            sent = self.codec.decode(bytes(message.payload))["sent"]
            kind = "plain"
        with self.lock:
            self.latencies[kind].append(now - sent)
            self.arrived[kind].append(now)

    def reset(self) -> None:
        with self.lock:
            for kind in self.latencies:
                self.latencies[kind].clear()
                self.arrived[kind].clear()

    def payload(self, seq: int) -> bytes:
        """A 200-byte Reading stamped now. Encoded once, then only `sent` is patched: field 1, a double, always at
        bytes 1..8, so the probe spends its time publishing, not encoding."""
        if self._template is None:
            body = {"sent": 1.0, "seq": 123456, "device": "dev-0000", "temperature": 20.5}
            pad = max(0, PAYLOAD_BYTES - len(self.codec.encode(body)) - 2)  # a tag byte and a length byte
            if pad >= 128:
                pad -= 1  # the length takes two bytes
            self._template = self.codec.encode({**body, "pad": base64.b64encode(b"\x01" * pad).decode("ascii")})
            assert self._template[0] == 0x09  # field 1, wire type fixed64
        return self._template[:1] + struct.pack("<d", time.perf_counter()) + self._template[9:]

    def run(self, *, rate: float, seconds: float, prefixes: tuple[str, ...]) -> tuple[int, float]:
        """Publish `rate` messages a second for `seconds`, alternating the prefixes; wait for the stragglers."""
        sent = 0
        started = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) + 1
            while sent < due:
                prefix = prefixes[sent % len(prefixes)]
                self.publisher.publish(f"{prefix}/dev-{sent % 100:04d}/in", self.payload(sent), qos=1)
                sent += 1
            time.sleep(0.0005)
        deadline = time.perf_counter() + 10
        expected = {p: sum(1 for i in range(sent) if prefixes[i % len(prefixes)] == p) for p in prefixes}
        while time.perf_counter() < deadline:
            with self.lock:
                if all(len(self.latencies[p]) >= expected[p] for p in prefixes):
                    break
            time.sleep(0.05)
        return sent, time.perf_counter() - started

    def close(self) -> None:
        for client in (self.publisher, self.subscriber):
            client.disconnect()
            client.loop_stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used: a cost per message that other load on the
    machine does not inflate the way it inflates wall-clock rates."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] if ordered else float("nan")


def _line(label: str, offered: int, samples: list[float], arrived: list[float], started: float) -> str:
    if not samples:
        return f"{label}: none arrived of {offered}"
    span = max(arrived) - started
    return (
        f"{label}: {len(samples)}/{offered} arrived ({len(samples) / span:.0f}/s); publish -> out "
        f"p50 {_percentile(samples, 0.5) * 1000:.1f} ms, p99 {_percentile(samples, 0.99) * 1000:.1f} ms, "
        f"max {max(samples) * 1000:.1f} ms"
    )


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
    from iot import codecs
    from iot.models import CodecCounter
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
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-codec-"))
    worker = CeleryWorker(env, log_dir)
    worker.start()
    agent = republisher = probe = None
    try:
        # Tier 10k: 20,000 msg/s, so the broker's own limit is not what is measured.
        deployment, _ = deployment_services.deployment_create(  # type: ignore[misc]
            project=project, actor=None, name="bench", plan="premium", tier="10k", region="local"
        )
        deployment_services.mqtt_user_create(
            deployment=deployment, actor=None, username="bench", password="bench-password-1"
        )
        deadline = time.monotonic() + 120
        while True:
            deployment.refresh_from_db()
            if deployment.status == "running" and deployment.observed_generation >= deployment.generation:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the deployment never converged: {deployment.status} {deployment.last_error}")
            time.sleep(0.1)
        port = deployment.endpoints["ports"]["mqtt"]
        schema = codecs.schema_create(
            deployment=deployment, actor=None, name="reading", type="protobuf", source=PROTO, message_type="Reading"
        )
        rule = codecs.codec_rule_create(
            deployment=deployment,
            actor=None,
            topic_filter="codec/+/in",
            direction="decode",
            schema=schema.name,
            topic_template="codec/{topic[1]}/out",
        )
        codec = codecs.codec_of(schema.versions.get(version=1))
        agent = AgentProcess(env, log_dir / "agent.log", agent_id="bench-agent", heartbeat=2.0, lease=10.0).start()
        republisher = subprocess.Popen(
            [sys.executable, "-c", REPUBLISHER, str(port), "bench", "bench-password-1"],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert republisher.stdout is not None and republisher.stdout.readline().strip() == b"ready"
        probe = Probe(port, "bench", "bench-password-1", codec)
        print(f"payload: {len(probe.payload(0))} bytes of Protobuf (bench.Reading)")
        warm = time.monotonic() + 60
        while not probe.latencies["codec"]:
            if time.monotonic() > warm:
                raise TimeoutError(f"the agent never decoded:\n{agent.logs()}")
            probe.run(rate=50, seconds=0.3, prefixes=("codec",))
        probe.reset()

        # The agent's CPU while idle (heartbeats, timers, its log tail), taken out of its CPU per message below.
        assert agent.proc is not None
        idle_start = _cpu_seconds(agent.proc.pid)
        time.sleep(3.0)
        idle_rate = (_cpu_seconds(agent.proc.pid) - idle_start) / 3.0
        # (a) Both paths at once, each at half the rate: the added latency, measured under the same load.
        cpu_before = _cpu_seconds(agent.proc.pid), _cpu_seconds(republisher.pid)
        started = time.perf_counter()
        sent, span = probe.run(rate=rate, seconds=seconds, prefixes=("codec", "plain"))
        cpu_after = _cpu_seconds(agent.proc.pid), _cpu_seconds(republisher.pid)
        with probe.lock:
            agent_cpu = cpu_after[0] - cpu_before[0] - idle_rate * span
            agent_us = agent_cpu / max(1, len(probe.latencies["codec"])) * 1e6
            plain_us = (cpu_after[1] - cpu_before[1]) / max(1, len(probe.latencies["plain"])) * 1e6
            codec_line = _line("agent decode", sent // 2, probe.latencies["codec"], probe.arrived["codec"], started)
            plain_line = _line("plain republish", sent // 2, probe.latencies["plain"], probe.arrived["plain"], started)
            added50 = _percentile(probe.latencies["codec"], 0.5) - _percentile(probe.latencies["plain"], 0.5)
            added99 = _percentile(probe.latencies["codec"], 0.99) - _percentile(probe.latencies["plain"], 0.99)
        probe.reset()
        # (b) The agent alone at the full rate, then at twice it: messages decoded per second.
        results = []
        for offered in (rate, rate * 2):
            cpu_start = _cpu_seconds(agent.proc.pid)
            started = time.perf_counter()
            sent, span = probe.run(rate=offered, seconds=seconds / 2, prefixes=("codec",))
            cpu_used = _cpu_seconds(agent.proc.pid) - cpu_start - idle_rate * span
            with probe.lock:
                decoded = len(probe.latencies["codec"])
                results.append(
                    _line(
                        f"agent decode at {offered:.0f}/s offered",
                        sent,
                        probe.latencies["codec"],
                        probe.arrived["codec"],
                        started,
                    )
                    + f"; agent CPU {cpu_used / max(1, decoded) * 1e6:.0f} us/message"
                )
            probe.reset()
        time.sleep(1.5)  # the agent adds its counts once a second
        counter = CodecCounter.objects.get(rule=rule)
    finally:
        if probe is not None:
            probe.close()
        if republisher is not None:
            republisher.kill()
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
    print(f"(a) both paths at {rate:.0f}/s in total, {os.cpu_count()} cores:")
    print(f"    {codec_line}")
    print(f"    floor, same run: {plain_line}")
    print(f"    added by decoding: p50 {added50 * 1000:+.1f} ms, p99 {added99 * 1000:+.1f} ms   (target p99 < 20 ms)")
    print(
        f"    CPU per message: agent {agent_us:.0f} us (receive, decode, republish, acknowledge; its idle "
        f"{idle_rate * 100:.1f}% of a core taken out), floor republisher {plain_us:.0f} us (receive, republish)"
    )
    print("(b) " + "\n    ".join(results) + "   (target 5,000/s)")
    print(f"    the agent counted {counter.processed} processed, {counter.failures} failures")


if __name__ == "__main__":
    if not os.environ.get("DATABASE_URL"):
        _reexec_with_services()
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 5000.0, float(sys.argv[2]) if len(sys.argv) > 2 else 10.0)
