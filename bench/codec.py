"""Codec rules under load (Premium): Protobuf messages of 200 bytes decoded per second by the platform agent, and the
latency a decode adds over a plain republish measured in the same run on the same broker.

Runs the real path: a Premium deployment reconciled by a real Celery worker into a real mosquitto, a Protobuf schema
and a decode rule made through the services, a real platform agent process with its codec workers (IOT_CODEC_WORKERS,
by default 2, printed; their CPU counted with the agent's). The floor is a paho republisher in its
own process (as the agent is) on the same broker that forwards the same messages without decoding them. The load
generator and the measuring subscriber are raw-socket MQTT clients in processes of their own (bench/codec_load.py),
a few µs of CPU a message, so they no longer take the cores the agent is measured on (mosquitto_pub cannot: it
sends one fixed payload, or newline-separated lines, never a per-message stamp in binary Protobuf); both paths go
through the same two. It prints the CPU per message of the agent (its idle CPU taken out), the floor, the publisher,
the subscriber and mosquitto, and checks every message was counted once against the agent's own counter.
Without DATABASE_URL it starts a throwaway PostgreSQL and Redis and re-runs itself inside them. It prints figures;
it never gates the suite. Usage: .venv/bin/python bench/codec.py [rate] [seconds] [latency-rate]
(defaults 5000, 10, 1000: throughput at rate and twice it, added latency with both paths at latency-rate in total)
"""

from __future__ import annotations

import base64
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import codec_load  # noqa: E402 - after the path is set

PROTO = """syntax = "proto3";
package bench;
message Reading {
  double sent = 1;
  fixed64 seq = 2;
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


def _template(codec) -> bytes:
    """A 200-byte Reading in codec_load's fixed layout (`sent` then `seq`, both fixed 8 bytes, first), encoded by the
    schema's own codec so it is exactly what a device would send."""
    body = {"sent": 1.0, "seq": 1, "device": "dev-0000", "temperature": 20.5}
    pad = max(0, PAYLOAD_BYTES - len(codec.encode(body)) - 2)  # a tag byte and a length byte
    if pad >= 128:
        pad -= 1  # the length takes two bytes
    template = codec.encode({**body, "pad": base64.b64encode(b"\x01" * pad).decode("ascii")})
    assert template[0] == codec_load.SENT_TAG and template[9] == codec_load.SEQ_TAG, template[:18].hex()
    return template


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used: a cost per message that other load on the
    machine does not inflate the way it inflates wall-clock rates."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_of(pids: list[int]) -> float:
    return sum(_cpu_seconds(pid) for pid in pids)


def main(rate: float, seconds: float, latency_rate: float) -> None:
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
    agent = republisher = load = None
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
        from django.conf import settings

        workers = settings.IOT_CODEC_WORKERS  # IOT_CODEC_WORKERS, else 2 (1 on a single CPU)
        agent = AgentProcess(
            env, log_dir / "agent.log", agent_id="bench-agent", heartbeat=2.0, lease=10.0, codec_workers=workers
        ).start()
        republisher = subprocess.Popen(
            [sys.executable, "-c", REPUBLISHER, str(port), "bench", "bench-password-1"],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert republisher.stdout is not None and republisher.stdout.readline().strip() == b"ready"
        template = _template(codec)
        load = codec_load.Load(port, "bench", "bench-password-1", template)
        print(f"payload: {len(template)} bytes of Protobuf (bench.Reading)")
        warm = time.monotonic() + 60
        while not load.run(rate=50, seconds=0.3, prefixes=("codec",), wait=1.0)["received"]["kinds"]["codec"]["count"]:
            if time.monotonic() > warm:
                raise TimeoutError(f"the agent never decoded:\n{agent.logs()}")
        (mosquitto_pid,) = broker_pids(brokers)
        assert agent.proc is not None
        # The agent is its own process and, with more than one worker, its codec workers (each subscribed by now:
        # the warm-up loop above ran until one decoded, and they all start together).
        worker_pids: list[int] = []
        if workers > 1:
            deadline = time.monotonic() + 60
            while len(worker_pids := agent.codec_workers_running()) < workers:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(worker_pids)} of {workers} codec workers running:\n{agent.logs()}")
                time.sleep(0.1)
            time.sleep(2.0)  # their SUBACKs
        pids = {
            "agent": [agent.proc.pid, *worker_pids],
            "floor": [republisher.pid],
            "publisher": [load.pids()[0]],
            "subscriber": [load.pids()[1]],
            "mosquitto": [mosquitto_pid],
        }
        agent_shape = f"1 agent process + {len(worker_pids)} codec workers" if worker_pids else "1 agent process"
        print(f"agent: {agent_shape} (IOT_CODEC_WORKERS={workers}), {os.cpu_count()} cores")

        # The agent's CPU while idle (heartbeats, timers, its log tail, its workers' lease checks), taken out of its
        # CPU per message below.
        idle_start = _cpu_of(pids["agent"])
        time.sleep(3.0)
        idle_rate = (_cpu_of(pids["agent"]) - idle_start) / 3.0
        # Counts from here on are checked against the agent's counter at the end (it adds to it once a second, so
        # every warm-up message is in it by now).
        counted_before = _counter(rule)
        published_before, received_before = load.totals()

        def measured(offered: float, span: float, prefixes: tuple[str, ...]) -> tuple[dict, dict[str, float]]:
            before = {name: _cpu_of(group) for name, group in pids.items()}
            started = time.monotonic()
            result = load.run(rate=offered, seconds=span, prefixes=prefixes)
            cpu = {name: _cpu_of(group) - before[name] for name, group in pids.items()}
            cpu["agent"] -= idle_rate * (time.monotonic() - started)  # the whole window, its waiting tail too
            result["loadavg"] = _loadavg()
            return result, cpu

        # (a) Both paths at once, each at half the moderate rate: the added latency, measured under the same load.
        both, both_cpu = measured(latency_rate, seconds, ("codec", "plain"))
        # (b) The agent alone at the full rate, then at twice it: messages decoded per second; then the floor alone
        # at the full rate: what a republish without decoding achieves on this machine in the same run.
        alone = [(offered, *measured(offered, seconds / 2, ("codec",))) for offered in (rate, rate * 2)]
        floor, floor_cpu = measured(rate, seconds / 2, ("plain",))
        time.sleep(2.5)  # the agent adds its counts once a second
        counted_after = _counter(rule)
        published_after, received_after = load.totals()
    finally:
        if load is not None:
            load.close()
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

    codec_kind, plain_kind = both["received"]["kinds"]["codec"], both["received"]["kinds"]["plain"]
    per_path = both["published"]["per_prefix"]
    print(f"(a) both paths at {latency_rate:.0f}/s in total, {os.cpu_count()} cores, load average {both['loadavg']}:")
    print(f"    {_line('agent decode', per_path['codec'], codec_kind, both['published'])}")
    print(f"    floor, same run: {_line('plain republish', per_path['plain'], plain_kind, both['published'])}")
    if codec_kind["count"] and plain_kind["count"]:
        added50 = (codec_kind["p50"] - plain_kind["p50"]) * 1000
        added99 = (codec_kind["p99"] - plain_kind["p99"]) * 1000
        print(f"    added by decoding: p50 {added50:+.1f} ms, p99 {added99:+.1f} ms   (target p99 < 20 ms)")
    print(
        f"    CPU per message: agent and its workers {_us(both_cpu['agent'], codec_kind['count'])} us (receive, "
        "decode, republish, "
        f"acknowledge; its idle {idle_rate * 100:.1f}% of a core taken out), floor republisher "
        f"{_us(both_cpu['floor'], plain_kind['count'])} us (receive, republish)"
    )
    print(f"    {_load_line(both, both_cpu)}")
    print(
        f"(b) alone, at the full rate and at twice it, {agent_shape}   (target 5,000/s decoded and delivered at "
        "5,000/s offered)"
    )
    for offered, result, cpu in alone:
        kind = result["received"]["kinds"]["codec"]
        label = f"agent decode at {offered:.0f}/s offered"
        print(
            f"    {_line(label, result['published']['sent'], kind, result['published'])}; agent CPU "
            f"{_us(cpu['agent'], kind['count'])} us/message; load average {result['loadavg']}"
        )
        print(f"      {_load_line(result, cpu)}")
    kind = floor["received"]["kinds"]["plain"]
    label = f"floor, plain republish at {rate:.0f}/s offered"
    print(
        f"    {_line(label, floor['published']['sent'], kind, floor['published'])}; floor CPU "
        f"{_us(floor_cpu['floor'], kind['count'])} us/message; load average {floor['loadavg']}"
    )
    print(f"      {_load_line(floor, floor_cpu)}")
    print(
        "    "
        + _check(counted_before, counted_after, published_before, published_after, received_before, received_after)
    )


def _counter(rule) -> tuple[int, int]:
    from iot.models import CodecCounter

    counter = CodecCounter.objects.filter(rule=rule).first()
    return (counter.processed, counter.failures) if counter is not None else (0, 0)


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _us(cpu: float, count: int) -> str:
    return f"{cpu / count * 1e6:.0f}" if count else "-"


def _line(label: str, offered: int, kind: dict, published: dict) -> str:
    if not kind["count"]:
        return f"{label}: none arrived of {offered}"
    span = kind["last_arrival"] - published["started"]
    return (
        f"{label}: {kind['count']}/{offered} arrived ({kind['count'] / span:.0f}/s); publish -> out "
        f"p50 {kind['p50'] * 1000:.1f} ms, p99 {kind['p99'] * 1000:.1f} ms, max {kind['max'] * 1000:.1f} ms"
    )


def _load_line(result: dict, cpu: dict[str, float]) -> str:
    """What the load generator, the measuring subscriber and the broker cost per message, so a reader sees whose
    CPU the figures above are bounded by."""
    published, received = result["published"], result["received"]
    arrived = sum(kind["count"] for kind in received["kinds"].values())
    return (
        f"load: publisher {_us(cpu['publisher'], published['sent'])} us/message sent "
        f"(at most {published['max_lag'] * 1000:.1f} ms behind its schedule, held by the in-flight window "
        f"{published['held']} times), subscriber {_us(cpu['subscriber'], arrived)} us/message received, "
        f"mosquitto {_us(cpu['mosquitto'], published['sent'])} us/message published (in, out and back)"
    )


def _check(counted_before, counted_after, published_before, published_after, received_before, received_after) -> str:
    """Every message counted once: what the publisher had acknowledged, the agent counted, and the subscriber
    received (each seq once) since the warm-up must agree."""
    processed = counted_after[0] - counted_before[0]
    failures = counted_after[1] - counted_before[1]
    published = published_after["published"].get("codec", 0) - published_before["published"].get("codec", 0)
    unacked = published_after["sent"] - published_after["acked"]
    delivered = received_after["unique"]["codec"] - received_before["unique"]["codec"]
    duplicates = sum(received_after["duplicates"].values()) - sum(received_before["duplicates"].values())
    errors = received_after["errors"] - received_before["errors"]
    malformed = received_after["malformed"] - received_before["malformed"]
    line = (
        f"check: {published} published to the agent ({unacked} unacknowledged), the agent counted {processed} "
        f"processed and {failures} failures, the subscriber received {delivered} decoded (each seq once; "
        f"{duplicates} duplicates, {errors} on the error topic, {malformed} malformed)"
    )
    problems = []
    if processed - failures != delivered:
        problems.append(f"processed - failures = {processed - failures} != {delivered} received")
    if failures != errors:
        problems.append(f"{failures} failures counted != {errors} on the error topic")
    if duplicates or malformed or unacked:
        problems.append("duplicates, malformed or unacknowledged messages")
    plain_published = published_after["published"].get("plain", 0) - published_before["published"].get("plain", 0)
    plain_received = received_after["unique"]["plain"] - received_before["unique"]["plain"]
    line += f"; floor: {plain_published} published, {plain_received} received"
    if processed < published:
        line += f"; {published - processed} never reached the agent (the broker's queue to it overflowed)"
    return line + ("; MISMATCH: " + "; ".join(problems) if problems else "; counts agree")


if __name__ == "__main__":
    if not os.environ.get("DATABASE_URL"):
        _reexec_with_services()
    arguments = [float(a) for a in sys.argv[1:4]]
    defaults = [5000.0, 10.0, 1000.0]
    main(*(arguments + defaults[len(arguments) :]))
