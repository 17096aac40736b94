"""Agent leases in PostgreSQL (taken only when free or expired, renewed by the holder, fencing a loser's writes) and
presence: connection events turned into online state."""

import datetime
import time

import pytest
from django.utils import timezone

from iot import services
from iot.agent import leases
from iot.agent.presence import PresenceEvent
from iot.models import AgentLease, Device
from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2026, 11, 2, 10, 0, tzinfo=datetime.UTC)


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


@pytest.fixture
def deployment(owner_org):
    return premium_deployment(owner_org)


def test_lease_is_taken_by_one_agent_and_refused_to_another_while_it_lives(deployment):
    assert leases.acquire(deployment_id=deployment.pk, holder="a", ttl=10) == 1
    assert leases.acquire(deployment_id=deployment.pk, holder="b", ttl=10) is None
    assert leases.renew(holder="a", tokens={deployment.pk: 1}, ttl=10, lags={deployment.pk: 0.25}) == {deployment.pk}
    assert leases.renew(holder="b", tokens={deployment.pk: 1}, ttl=10) == set()
    lease = AgentLease.objects.get()
    assert lease.holder == "a" and lease.lag_seconds == 0.25


def test_expired_lease_goes_to_the_next_agent_with_a_new_token_and_is_not_renewed_by_the_old_one(deployment):
    assert leases.acquire(deployment_id=deployment.pk, holder="a", ttl=0.2) == 1
    time.sleep(0.3)
    assert leases.renew(holder="a", tokens={deployment.pk: 1}, ttl=10) == set()  # too late: not revived
    assert leases.acquire(deployment_id=deployment.pk, holder="b", ttl=10) == 2
    assert leases.renew(holder="a", tokens={deployment.pk: 1}, ttl=10) == set()


def test_released_lease_is_free_at_once_when_the_agent_stops(deployment):
    leases.acquire(deployment_id=deployment.pk, holder="a", ttl=60)
    leases.release(holder="a", tokens={deployment.pk: 1})
    assert leases.acquire(deployment_id=deployment.pk, holder="b", ttl=60) == 2


def test_an_agent_that_lost_its_lease_commits_no_shadow_change_when_it_writes(deployment):
    device, _credentials, _operation = services.device_create(deployment=deployment, actor=None, device_id="d1")
    leases.acquire(deployment_id=deployment.pk, holder="a", ttl=0.2)
    request = services.ShadowRequest("d1", "update", b'{"state": {"reported": {"a": 1}}}')
    answers = services.shadow_process_batch(deployment_id=deployment.pk, holder="a", token=1, requests=[request])
    assert answers[0][0] == "devices/d1/shadow/update/accepted"
    time.sleep(0.3)
    leases.acquire(deployment_id=deployment.pk, holder="b", ttl=10)
    with pytest.raises(services.LeaseLost):
        services.shadow_process_batch(deployment_id=deployment.pk, holder="a", token=1, requests=[request])
    with pytest.raises(services.LeaseLost):
        services.presence_apply(deployment_id=deployment.pk, holder="a", token=1, events=[])
    assert device.shadow_history.count() == 1
    answers = services.shadow_process_batch(deployment_id=deployment.pk, holder="b", token=2, requests=[request])
    assert answers[0][1]["version"] == 2


def test_batch_answers_each_request_in_order_and_rejects_unknown_devices_when_processed(deployment):
    services.device_create(deployment=deployment, actor=None, device_id="d1")
    leases.acquire(deployment_id=deployment.pk, holder="a", ttl=10)
    requests = [
        services.ShadowRequest("d1", "get", b'{"clientToken": "g0"}'),
        services.ShadowRequest("d1", "update", b'{"state": {"desired": {"x": 1}}, "clientToken": "u1"}'),
        services.ShadowRequest("d1", "update", b'{"state": {"reported": {"x": 1}}, "version": 1, "clientToken": "u2"}'),
        services.ShadowRequest("d1", "update", b'{"state": {"reported": {"x": 2}}, "version": 1, "clientToken": "u3"}'),
        services.ShadowRequest("ghost", "update", b'{"state": {"reported": {}}, "clientToken": "u4"}'),
        services.ShadowRequest("d1", "get", b""),
    ]
    answers = services.shadow_process_batch(deployment_id=deployment.pk, holder="a", token=1, requests=requests)
    topics = [
        (topic.split("/shadow/")[1], body.get("clientToken"), body.get("code"), body.get("version"))
        for topic, body in answers
    ]
    assert topics == [
        ("get/rejected", "g0", 404, None),
        ("update/accepted", "u1", None, 1),
        ("update/documents", "u1", None, None),
        ("update/delta", "u1", None, 1),
        ("update/accepted", "u2", None, 2),
        ("update/documents", "u2", None, None),
        ("update/rejected", "u3", 409, None),
        ("update/rejected", "u4", 404, None),
        ("get/accepted", None, None, 2),
    ]
    assert answers[-1][1]["state"] == {"desired": {"x": 1}, "reported": {"x": 1}}  # no delta left


def _events(deployment, events):
    leases.acquire(deployment_id=deployment.pk, holder="a", ttl=10)
    return services.presence_apply(deployment_id=deployment.pk, holder="a", token=1, events=events)


def test_device_is_online_only_while_its_own_username_holds_its_client_id(deployment):
    device, credentials, _ = services.device_create(deployment=deployment, actor=None, device_id="d1")
    _events(
        deployment,
        [PresenceEvent("connected", at(0), "d1", credentials.username, "10.0.0.7:5000")],
    )
    device.refresh_from_db()
    assert device.online and device.connected_at == at(0) and device.client_address == "10.0.0.7:5000"
    # Someone else (the agent taking the id over, a customer's user) connects as d1: the device's connection is gone.
    services.presence_apply(
        deployment_id=deployment.pk,
        holder="a",
        token=1,
        events=[
            PresenceEvent("connected", at(5), "d1", "$controlplane-agent", "127.0.0.1:1"),
            PresenceEvent("disconnected", at(6), "d1"),
        ],
    )
    device.refresh_from_db()
    assert not device.online and device.disconnected_at == at(5)


def test_late_disconnect_of_an_older_connection_leaves_the_newer_one_online_when_emqx_reports_out_of_order(deployment):
    device, credentials, _ = services.device_create(deployment=deployment, actor=None, device_id="d1")
    _events(
        deployment,
        [
            PresenceEvent("connected", at(0), "d1", credentials.username, "1.2.3.4", connection_started_at=at(0)),
            PresenceEvent("connected", at(10), "d1", credentials.username, "1.2.3.5", connection_started_at=at(10)),
            PresenceEvent("disconnected", at(11), "d1", credentials.username, connection_started_at=at(0)),
        ],
    )
    device.refresh_from_db()
    assert device.online and device.client_address == "1.2.3.5"
    services.presence_apply(
        deployment_id=deployment.pk,
        holder="a",
        token=1,
        events=[PresenceEvent("disconnected", at(20), "d1", credentials.username, connection_started_at=at(10))],
    )
    device.refresh_from_db()
    assert not device.online and device.disconnected_at == at(20) and device.last_seen == at(20)


def test_broker_reset_takes_every_device_offline_and_the_cursor_is_kept_when_applied(deployment):
    names = ["d1", "d2", "d3"]
    made = {n: services.device_create(deployment=deployment, actor=None, device_id=n)[1] for n in names}
    _events(deployment, [PresenceEvent("connected", at(i), n, made[n].username, "x") for i, n in enumerate(names)])
    assert Device.objects.filter(online=True).count() == 3
    changed = services.presence_apply(
        deployment_id=deployment.pk,
        holder="a",
        token=1,
        events=[PresenceEvent("broker_reset", at(30))],
        cursor={"inode": 7, "offset": 1234},
    )
    assert changed == 3 and not Device.objects.filter(online=True).exists()
    assert AgentLease.objects.get().presence_cursor == {"inode": 7, "offset": 1234}
    assert leases.presence_cursor(deployment.pk) == {"inode": 7, "offset": 1234}


def test_metrics_gauges_report_heartbeats_lag_and_unserved_time_when_scraped(deployment, owner_org):
    from iot import selectors

    leases.heartbeat(agent_id="a", hostname="h", pid=1, started_at=timezone.now(), deployments=1)
    assert selectors.agent_heartbeat_ages()[("a",)] < 5
    assert selectors.agent_deployment_counts()[("a",)] == 1
    lags = selectors.deployment_lags()
    assert lags[(deployment.public_id,)] > 0  # running and never served: unserved since it was created
    leases.acquire(deployment_id=deployment.pk, holder="a", ttl=10)
    leases.renew(
        holder="a",
        tokens={deployment.pk: 1},
        ttl=10,
        lags={deployment.pk: 0.5},
        last_events={deployment.pk: timezone.now()},
    )
    assert selectors.deployment_lags()[(deployment.public_id,)] == 0.5
    assert selectors.deployment_idle_seconds()[(deployment.public_id,)] < 5


def test_edge_bridges_connection_events_drive_node_state_whatever_the_kind_when_applied(deployment):
    """NanoMQ's bridge publishes no birth message: its node is online from the broker's own connection event for
    the bridge's client id with the node's username, offline at its disconnection, a takeover or a broker restart;
    its retained last will 0 read by a (re)starting agent does not contradict that."""
    from iot import edge, edge_services
    from iot.edge_models import EdgeNode

    nano, *_ = edge_services.edge_node_create(deployment=deployment, actor=None, name="gw-nano", kind="nanomq")
    mosq, *_ = edge_services.edge_node_create(deployment=deployment, actor=None, name="gw-mosq", kind="mosquitto")
    token = leases.acquire(deployment_id=deployment.pk, holder="a", ttl=60)

    def apply(*events):
        services.presence_apply(deployment_id=deployment.pk, holder="a", token=token, events=list(events))
        return {n.name: n for n in EdgeNode.objects.filter(deployment=deployment)}

    def connected(node, seconds, username):
        return PresenceEvent("connected", at(seconds), edge.client_id(node.name), username, "10.0.0.9:4242")

    nodes = apply(connected(nano, 1, nano.username), connected(mosq, 1, "someone-else"))
    assert nodes["gw-nano"].online and nodes["gw-nano"].connected_at == at(1)
    assert not nodes["gw-mosq"].online  # the id with another username is not the node's bridge
    retained_will = edge_services.EdgeEvent(node="gw-nano", kind="status", at=at(2), online=False, retained=True)
    edge_services.edge_events_apply(deployment_id=deployment.pk, holder="a", token=token, events=[retained_will])
    assert EdgeNode.objects.get(pk=nano.pk).online
    nodes = apply(connected(nano, 3, "intruder"))
    assert not nodes["gw-nano"].online and nodes["gw-nano"].disconnected_at == at(3)  # taken over: bridge closed
    nodes = apply(connected(nano, 4, nano.username), connected(mosq, 4, mosq.username))
    assert nodes["gw-nano"].online and nodes["gw-mosq"].online
    nodes = apply(PresenceEvent("disconnected", at(5), edge.client_id("gw-nano")))
    assert not nodes["gw-nano"].online and nodes["gw-nano"].last_seen == at(5) and nodes["gw-mosq"].online
    nodes = apply(PresenceEvent("broker_reset", at(6)))
    assert not nodes["gw-mosq"].online and nodes["gw-mosq"].disconnected_at == at(6)
    # The log is read late: a connection the bridge's last will (at 20 s) already ended changes nothing when read.
    will = edge_services.EdgeEvent(node="gw-mosq", kind="status", at=at(20), online=False)
    birth = edge_services.EdgeEvent(node="gw-mosq", kind="status", at=at(10), online=True)
    edge_services.edge_events_apply(deployment_id=deployment.pk, holder="a", token=token, events=[birth, will])
    nodes = apply(connected(mosq, 9, mosq.username))
    assert not nodes["gw-mosq"].online and nodes["gw-mosq"].disconnected_at == at(20)
    # Nor does the end of a connection older than the one the bridge's birth message announced (at 40 s).
    reborn = edge_services.EdgeEvent(node="gw-mosq", kind="status", at=at(40), online=True)
    edge_services.edge_events_apply(deployment_id=deployment.pk, holder="a", token=token, events=[reborn])
    nodes = apply(PresenceEvent("disconnected", at(30), edge.client_id("gw-mosq")))
    assert nodes["gw-mosq"].online and nodes["gw-mosq"].connected_at == at(40)
    # Nor does the broker's start (at 35 s) read after that birth message: the bridge connected after it.
    nodes = apply(PresenceEvent("broker_reset", at(35)))
    assert nodes["gw-mosq"].online and nodes["gw-mosq"].connected_at == at(40)
    # A restart the birth message did not follow takes the node offline.
    nodes = apply(PresenceEvent("broker_reset", at(50)))
    assert not nodes["gw-mosq"].online and nodes["gw-mosq"].disconnected_at == at(50)
