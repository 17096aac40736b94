"""Two real agents on one deployment: exactly one serves it, and when that one is SIGKILLed while devices publish,
the other takes the deployment over within 30 s and no accepted update is lost."""

import threading
import time

import pytest

from tests.iot.agent_process import agents  # noqa: F401
from tests.iot.devices import Device
from tests.iot.test_agent_e2e import premium_api, register, wait_until  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def holder(deployment_public_id):
    from iot.models import AgentLease

    lease = AgentLease.objects.filter(deployment__public_id=deployment_public_id).first()
    return lease


def test_second_agent_takes_over_within_30s_and_no_accepted_update_is_lost_when_the_first_is_killed(
    premium_api, agents
):
    from django.utils import timezone

    from iot.models import ShadowChange

    client, url, port = premium_api
    dep_id = url.rsplit("/", 1)[1]
    names = [f"pump-{i}" for i in range(8)]
    credentials = {name: register(client, url, name) for name in names}
    # The production timings: a 10 s lease renewed every 2 s.
    first = agents("agent-a", heartbeat=2.0, lease=10.0)
    second = agents("agent-b", heartbeat=2.0, lease=10.0)
    devices = [Device(port, name, **credentials[name], clean=False) for name in names]
    for device in devices:
        assert not device.connect().is_failure
    devices[0].wait_served()
    lease = holder(dep_id)
    assert lease.holder in ("agent-a", "agent-b") and lease.expires_at > timezone.now()
    serving, standby = (first, second) if lease.holder == "agent-a" else (second, first)

    stop = threading.Event()
    sent: dict[str, list[str]] = {name: [] for name in names}

    def publish(device):
        n = 0
        while not stop.is_set():
            n += 1
            token = f"{device.device_id}-{n}"
            device.update({"state": {"reported": {"n": n}}, "clientToken": token})
            sent[device.device_id].append(token)
            time.sleep(0.25)

    threads = [threading.Thread(target=publish, args=(d,), daemon=True) for d in devices]
    for thread in threads:
        thread.start()
    time.sleep(3)
    before_kill = sum(len(d.messages("update/accepted")) for d in devices)
    assert before_kill > 0
    serving.kill()
    killed_at = time.monotonic()

    def served_again():
        current = holder(dep_id)
        return current is not None and current.holder == standby.agent_id

    wait_until(served_again, 30, "the standby agent holding the lease")
    # Accepted answers resume, from the standby, for updates sent after the kill.
    wait_until(
        lambda: sum(len(d.messages("update/accepted")) for d in devices) > before_kill + len(devices),
        30,
        "answers after the takeover",
    )
    took_over = time.monotonic() - killed_at
    assert took_over < 30, f"takeover took {took_over:.1f}s"
    time.sleep(2)
    stop.set()
    for thread in threads:
        thread.join(5)
    time.sleep(3)  # the last answers arrive

    # Every update a device saw accepted is in the shadow's history, with its version and token.
    accepted_total = 0
    for device in devices:
        accepted = [(m["version"], m["clientToken"]) for m in device.messages("update/accepted")]
        history = set(
            ShadowChange.objects.filter(device__device_id=device.device_id).values_list("version", "client_token")
        )
        missing = [a for a in accepted if a not in history]
        assert missing == [], (device.device_id, missing[:5])
        versions = [v for v, _ in accepted]
        assert len(set(versions)) == len(versions)  # one version per accepted update
        accepted_total += len(accepted)
    # Updates published while nobody served waited in the agents' persistent session and were answered after.
    after_kill_tokens = {t for name in names for t in sent[name][-3:]}
    assert accepted_total > before_kill
    assert any(m["clientToken"] in after_kill_tokens for d in devices for m in d.messages("update/accepted"))
    print(f"takeover {took_over:.1f}s, {accepted_total} accepted, {sum(len(v) for v in sent.values())} sent")
    for device in devices:
        device.close()
