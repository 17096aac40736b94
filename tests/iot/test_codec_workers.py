"""Codec worker processes on real parts: a real Celery worker reconciling a real mosquitto, real platform agent
processes with their codec workers in an MQTT 5 shared subscription, and paho clients publishing and receiving.
Workers are frozen (SIGSTOP) to hold messages in flight, and killed (SIGKILL) as a crash would."""

import datetime
import json
import os
import re
import signal
import time

import paho.mqtt.client as mqtt
import pytest

from tests.iot.agent_process import agents, codec_worker_pids  # noqa: F401
from tests.iot.test_agent_e2e import premium_api, wait_until  # noqa: F401
from tests.iot.test_codec_e2e import App, _rule, _schema, _user

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.longest]  # 5 minutes loaded

SHAPE = {"type": "object", "required": ["seq"], "properties": {"seq": {"type": "integer"}}}


class Publisher:
    def __init__(self, port):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
        self.client.username_pw_set("app", "app-secret-pw")
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def send(self, seqs, topic="plant/{}/in"):
        infos = [self.client.publish(topic.format(seq % 5), json.dumps({"seq": seq}), qos=1) for seq in seqs]
        for info in infos:
            info.wait_for_publish(10)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _setup(premium_api, agents, workers, template="app/{topic[1]}/out", lease=3.0):
    client, url, port = premium_api
    _user(client, url)
    _schema(client, url, name="shape", type="json_schema", source=json.dumps(SHAPE))
    rule = _rule(client, url, topic_filter="plant/+/in", direction="decode", schema="shape", topic_template=template)
    agent = agents(codec_workers=workers, lease=lease)
    _wait_subscribed(agent, workers)
    return client, url, port, rule, agent


def _wait_subscribed(agent, workers):
    """Until `workers` distinct slots logged a SUBACK: the broker then hands each of them its turn of the shared
    subscription."""

    def subscribed():
        slots = set(re.findall(r"codec worker (\d+) of \S+ subscribed", agent.full_log()))
        return len(slots) >= workers and len(agent.codec_workers_running()) == workers

    wait_until(subscribed, 60, f"{workers} codec workers subscribed")


def _seqs(app, prefix="app/"):
    with app.lock:
        return [
            json.loads(payload)["seq"]
            for topic, payloads in app.inbox.items()
            if topic.startswith(prefix)
            for payload in payloads
        ]


def _processed(client, url, rule):
    return client.get(f"{url}/codec-rules/{rule['id']}").json()["processed"]


def test_each_message_is_decoded_once_and_every_worker_takes_a_share_when_three_workers_run(premium_api, agents):
    client, url, port, rule, agent = _setup(premium_api, agents, 3)
    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)

    publisher.send(range(600))
    wait_until(lambda: len(_seqs(app)) >= 600, 30, "600 decoded messages")
    time.sleep(0.5)
    assert sorted(_seqs(app)) == list(range(600))  # every one, each once
    wait_until(lambda: _processed(client, url, rule) == 600, 10, "the workers' counts added up to 600")

    # Each worker in turn frozen: its turn of the messages waits until it runs again, the others' arrive.
    next_seq = 600
    for pid in agent.codec_workers_running():
        batch = list(range(next_seq, next_seq + 30))
        next_seq += 30
        os.kill(pid, signal.SIGSTOP)
        try:
            publisher.send(batch)
            time.sleep(2.0)
            arrived = set(_seqs(app)) & set(batch)
            assert 0 < len(arrived) < len(batch), f"worker {pid}: {len(arrived)} of {len(batch)} arrived while frozen"
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda b=batch: set(b) <= set(_seqs(app)), 15, f"worker {pid}'s turn decoded once it ran again")
    time.sleep(0.5)
    assert sorted(_seqs(app)) == list(range(next_seq))
    wait_until(lambda: _processed(client, url, rule) == next_seq, 10, "every message counted once")
    publisher.close()
    app.close()


def test_a_killed_worker_is_started_again_and_its_messages_redelivered_when_it_dies_holding_them(premium_api, agents):
    client, url, port, rule, agent = _setup(premium_api, agents, 2)
    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)
    victim, survivor = agent.codec_workers_running()
    os.kill(victim, signal.SIGSTOP)  # it receives its turn (in flight to it, unacknowledged) and cannot act on it
    publisher.send(range(40))
    wait_until(lambda: len(_seqs(app)) >= 20, 15, "the survivor's half")
    time.sleep(1.0)
    assert len(_seqs(app)) == 20
    os.kill(victim, signal.SIGKILL)

    def restarted():
        running = agent.codec_workers_running()
        return len(running) == 2 and victim not in running and survivor in running

    wait_until(restarted, 30, "the killed worker started again")
    wait_until(lambda: len(_seqs(app)) >= 40, 30, "the killed worker's messages redelivered")
    time.sleep(0.5)
    assert sorted(_seqs(app)) == list(range(40))
    # The killed worker never counted what it held: the new one counts each of them once.
    wait_until(lambda: _processed(client, url, rule) == 40, 10, "40 counted")
    publisher.close()
    app.close()


def test_no_worker_outlives_the_agent_and_the_next_holders_workers_serve_when_the_agent_is_killed(premium_api, agents):
    # A lease of 10 s: the workers must be gone well before it expires, through their pipe from the agent.
    client, url, port, rule, first = _setup(premium_api, agents, 2, lease=10.0)
    workers = first.codec_workers_running()
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGKILL)  # the agent alone, not its process group: its workers must notice
    first.proc.wait()
    first.proc = None
    wait_until(lambda: not set(workers) & set(codec_worker_pids()), 5, "the killed agent's workers gone")

    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)
    second = agents("agent-2", codec_workers=2)
    _wait_subscribed(second, 2)
    publisher.send(range(50))
    wait_until(lambda: len(_seqs(app)) >= 50, 30, "the next holder's workers decoding")
    assert sorted(set(_seqs(app))) == list(range(50))
    publisher.close()
    app.close()


def test_workers_stop_when_their_agent_is_frozen_past_its_lease(premium_api, agents):
    client, url, port, rule, agent = _setup(premium_api, agents, 2)
    workers = agent.codec_workers_running()
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGSTOP)  # it can neither renew its lease nor stop its workers
    try:
        wait_until(lambda: not set(workers) & set(codec_worker_pids()), 15, "the workers of a frozen agent gone")
        app = App(port, "app", "app-secret-pw")
        publisher = Publisher(port)
        publisher.send([1, 2, 3])
        time.sleep(1.5)
        assert _seqs(app) == []  # nobody decodes for an agent that lost its lease
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    # Thawed, the agent finds its lease gone, takes it again with a new token, and its new workers serve.
    wait_until(lambda: _seqs(app), 30, "decoding again once the agent took the lease again")
    publisher.close()
    app.close()


def test_workers_stop_when_another_agent_holds_the_lease(premium_api, agents):
    from deployments.models import Deployment
    from iot.models import AgentLease

    client, url, port, rule, agent = _setup(premium_api, agents, 2)
    workers = agent.codec_workers_running()
    deployment = Deployment.objects.get(public_id=url.rsplit("/", 1)[-1])
    lease = AgentLease.objects.get(deployment=deployment)
    before = len(agent.full_log())
    # Another agent took it (as after an expiry), for long enough that this one cannot take it back.
    AgentLease.objects.filter(pk=lease.pk).update(
        holder="someone-else", token=lease.token + 1, expires_at=lease.expires_at + datetime.timedelta(hours=1)
    )
    # The agent learns it from its renewal or from a fenced write; either way its runner then drops the lease.
    wait_until(lambda: "dropped (released: False)" in agent.full_log()[before:], 15, "the agent dropping the lease")
    wait_until(lambda: not set(workers) & set(codec_worker_pids()), 15, "the workers gone with the lease")
    wait_until(lambda: agent.codec_workers_running() == [], 10, "no worker of the agent left")
    # A worker checks the lease each second and may see it gone before the agent does: the agent, told by its exit
    # code, checks too, and starts no other worker for a deployment it no longer serves.
    after = agent.full_log()[before:]
    assert "started (pid" not in after, after
    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)
    publisher.send([1, 2, 3])
    time.sleep(1.5)
    assert _seqs(app) == []
    publisher.close()
    app.close()


def test_every_worker_applies_a_rule_change_when_a_rule_is_edited_disabled_or_created(premium_api, agents):
    client, url, port, rule, agent = _setup(premium_api, agents, 2, template="app/{topic[1]}/one")
    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)
    publisher.send(range(10))
    wait_until(lambda: len(_seqs(app, "app/")) >= 10, 15, "decoded before the change")

    # A new output topic: every worker takes turns on the filter, so one that missed the change would publish some
    # of these on the old topic.
    changed = client.patch(f"{url}/codec-rules/{rule['id']}", {"topic_template": "app/{topic[1]}/two"}, format="json")
    assert changed.status_code == 200, changed.content
    time.sleep(1.5)
    publisher.send(range(100, 120))
    wait_until(lambda: len([s for s in _seqs(app) if s >= 100]) >= 20, 15, "decoded after the change")
    time.sleep(0.5)
    with app.lock:
        one = [json.loads(p)["seq"] for t, ps in app.inbox.items() if t.endswith("/one") for p in ps]
        two = [json.loads(p)["seq"] for t, ps in app.inbox.items() if t.endswith("/two") for p in ps]
    assert sorted(one) == list(range(10)) and sorted(two) == list(range(100, 120))

    # A new rule on another filter reaches them too.
    created = _rule(
        client, url, topic_filter="line/+/in", direction="decode", schema="shape", topic_template="app/{topic[1]}/line"
    )
    wait_until(lambda: publisher.send([500], topic="line/{}/in") or 500 in _seqs(app), 20, "the new rule applied")
    publisher.send(range(600, 620), topic="line/{}/in")
    wait_until(lambda: set(range(600, 620)) <= set(_seqs(app)), 15, "every message of the new rule")

    # Disabled: no worker applies it any more.
    off = client.patch(f"{url}/codec-rules/{created['id']}", {"enabled": False}, format="json")
    assert off.status_code == 200, off.content
    time.sleep(1.5)
    before = len(_seqs(app))
    publisher.send(range(700, 720), topic="line/{}/in")
    publisher.send([800])  # the first rule still runs: once it is through, the others would have been too
    wait_until(lambda: 800 in _seqs(app), 15, "the rule still enabled")
    time.sleep(0.5)
    assert not set(range(700, 720)) & set(_seqs(app)) and len(_seqs(app)) == before + 1
    publisher.close()
    app.close()


def test_a_result_never_feeds_another_rule_when_workers_share_the_subscription(premium_api, agents):
    # The first rule's results land on the second rule's filter: No Local cannot keep them from a shared
    # subscription, the agent's origin property must.
    client, url, port, first, agent = _setup(premium_api, agents, 2, template="plant/{topic[1]}/mid")
    _rule(
        client, url, topic_filter="plant/+/mid", direction="decode", schema="shape", topic_template="app/{topic[1]}/b"
    )
    _wait_subscribed_filters(agent, 2)
    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)
    publisher.send(range(20))
    wait_until(lambda: _processed(client, url, first) == 20, 15, "the first rule's 20")
    publisher.send([99], topic="plant/{}/mid")  # a customer's own message on the second rule's filter is decoded
    wait_until(lambda: _seqs(app), 15, "the customer's message decoded")
    time.sleep(1.0)
    assert _seqs(app) == [99]


def _wait_subscribed_filters(agent, workers):
    """Until each of `workers` slots logged a SUBACK for a second filter (the rule made after it started)."""

    def subscribed():
        counts = {}
        for slot in re.findall(r"codec worker (\d+) of \S+ subscribed", agent.full_log()):
            counts[slot] = counts.get(slot, 0) + 1
        return len([c for c in counts.values() if c >= 2]) >= workers

    wait_until(subscribed, 30, "every worker subscribed to the new rule's filter")


@pytest.mark.parametrize("workers", [1, 2])
def test_messages_sent_while_the_agent_is_stopped_are_decoded_once_when_it_serves_again(premium_api, agents, workers):
    # Its persistent sessions (the agent's own with one worker, the workers' with two) hold what arrives meanwhile;
    # the broker hands it over right after the CONNACK, possibly before anything else happened in the new process.
    client, url, port = premium_api
    _user(client, url)
    _schema(client, url, name="shape", type="json_schema", source=json.dumps(SHAPE))
    _rule(
        client, url, topic_filter="plant/+/in", direction="decode", schema="shape", topic_template="app/{topic[1]}/out"
    )
    agent = agents(codec_workers=workers)
    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)
    wait_until(lambda: publisher.send([0]) or 0 in _seqs(app), 60, "a first message decoded")
    if workers > 1:
        _wait_subscribed(agent, workers)  # every slot's session holds the subscription, not only the first's
    workers_before = agent.codec_workers_running()
    agent.stop()
    wait_until(lambda: not set(workers_before) & set(codec_worker_pids()), 15, "its workers stopped with it")

    publisher.send(range(100, 140))
    time.sleep(1.0)
    assert not [seq for seq in _seqs(app) if seq >= 100]  # nobody serves the deployment
    agent.start()
    wait_until(lambda: set(range(100, 140)) <= set(_seqs(app)), 60, "what was sent meanwhile decoded")
    time.sleep(0.5)
    assert sorted(seq for seq in _seqs(app) if seq >= 100) == list(range(100, 140))  # each once
    publisher.close()
    app.close()


def test_messages_held_for_the_agent_are_decoded_when_it_starts_again_with_more_workers(premium_api, agents):
    # With one worker the agent applies the rules itself, on its own session's plain subscriptions. Started again
    # with two, the workers take the rules in a shared subscription: what the agent's own session held meanwhile must
    # still be decoded, not acknowledged undecoded.
    client, url, port = premium_api
    _user(client, url)
    _schema(client, url, name="shape", type="json_schema", source=json.dumps(SHAPE))
    _rule(
        client, url, topic_filter="plant/+/in", direction="decode", schema="shape", topic_template="app/{topic[1]}/out"
    )
    agent = agents(codec_workers=1)
    app = App(port, "app", "app-secret-pw")
    publisher = Publisher(port)
    wait_until(lambda: publisher.send([0]) or 0 in _seqs(app), 60, "a first message decoded by the agent")
    agent.stop()

    publisher.send(range(100, 140))
    time.sleep(1.0)
    assert not [seq for seq in _seqs(app) if seq >= 100]  # nobody serves the deployment
    agent.codec_workers = 2
    agent.start()
    wait_until(lambda: set(range(100, 140)) <= set(_seqs(app)), 60, "what the agent's session held decoded")
    _wait_subscribed(agent, 2)
    publisher.send(range(200, 220))  # what comes next, the workers decode
    wait_until(lambda: set(range(200, 220)) <= set(_seqs(app)), 30, "the workers decoding")
    time.sleep(0.5)
    assert sorted(seq for seq in _seqs(app) if seq >= 100) == [*range(100, 140), *range(200, 220)]  # each once
    publisher.close()
    app.close()
