"""Red team: the local driver's broker safety (the broker's verdict read from its log, the crash watcher) attacked
from outside with real mosquitto brokers, real MQTT connections and signals. Each test fails while the weakness it
names is there and passes once it is fixed."""

import os
import shutil
import signal
import socket
import time

import pytest

from bench.mosquitto_floor import ConnackRefused, connect_packet, raw_connack
from deployments import selectors, services
from deployments.models import Deployment, DeploymentEvent, MqttUser
from deployments.reconcile import reconcile_deployment, watch_local_brokers
from tests.celery_worker import broker_pids

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]

DEVICE_PASSWORD = "device-password-1"


def fresh(deployment):
    return Deployment.objects.get(pk=deployment.pk)


def kinds(deployment):
    return list(DeploymentEvent.objects.filter(deployment=deployment).order_by("id").values_list("kind", flat=True))


@pytest.fixture
def deployment(owner_org, brokers_dir):
    created, _operation = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    assert reconcile_deployment(created.pk).state == "converged"
    return fresh(created)


def _connect_and_hold(port: int, *, client_id: str, username: str, password: str) -> socket.socket:
    """A device connected with this client id, its connection kept open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(connect_packet(client_id=client_id, username=username, password=password))
    connack = sock.recv(4)
    assert connack[:1] == b"\x20" and connack[3:4] == b"\x00", connack
    return sock


# -- the broker's verdict is read from a log its clients can write into ---------------------------------------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_revoked_device_is_locked_out_when_its_client_id_forges_a_refusal_in_the_broker_log(deployment, separator):
    """mosquitto accepts U+2028/U+2029 in a client id (they are not control characters to it) and logs the id raw;
    the driver splits the log with str.splitlines(), which breaks lines at U+2028/U+2029, so a client id
    "x\\u2028Error: ..." reads as a log line "Error: ...". On a reload mosquitto disconnects clients whose user is
    gone and logs "Client <id> disconnected." after "Reloading config.": the driver takes the forged line for the
    broker refusing the new files, puts back the previous ones (the deleted user included), and records the digest
    so no resync, restart or crash recovery tries the revocation again. The device revokes its own revocation."""
    device, _op = services.mqtt_user_create(
        deployment=deployment, actor=None, username="device-17", password=DEVICE_PASSWORD
    )
    assert reconcile_deployment(deployment.pk).state == "converged"
    port = fresh(deployment).endpoints["ports"]["mqtt"]
    held = _connect_and_hold(
        port,
        client_id=f"device-17{separator}Error: Invalid line in acl_file",
        username="device-17",
        password=DEVICE_PASSWORD,
    )
    try:
        services.mqtt_user_delete(user=MqttUser.objects.get(pk=device.pk), actor=None)
        reconcile_deployment(deployment.pk)
    finally:
        held.close()

    d = fresh(deployment)
    conditions = {c["type"]: c for c in d.conditions}
    with pytest.raises(ConnackRefused):  # today: CONNACK 0, the deleted user still signs in
        raw_connack("127.0.0.1", port, "device-17", DEVICE_PASSWORD, timeout=2)
    assert "config.rejected" not in kinds(d), conditions.get("ConfigAccepted")
    # A later restart must not bring the deleted user back either.
    services.deployment_restart(deployment=d, actor=None)
    reconcile_deployment(d.pk)
    with pytest.raises(ConnackRefused):
        raw_connack("127.0.0.1", port, "device-17", DEVICE_PASSWORD, timeout=2)


# -- the crash watcher -----------------------------------------------------------------------------------------------


def _answers(port: int) -> bool:
    try:
        raw_connack("127.0.0.1", port, timeout=1.0)
    except ConnackRefused:
        return True  # it answered (refusing an anonymous client is an answer)
    except OSError:
        return False
    return True


def test_watcher_notices_a_broker_that_serves_nothing_when_it_is_sigstopped(deployment, brokers_dir):
    """probe() counts any process state but Z/X as alive: a SIGSTOPped broker (state T) keeps its listening socket,
    accepts TCP connections into the backlog and answers nothing, yet the watcher touches its heartbeat, the
    deployment stays `running` with Ready True, it is billed as running, and the reconcile sees nothing to do."""
    [pid] = broker_pids(brokers_dir)
    port = deployment.endpoints["ports"]["mqtt"]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not _answers(port)  # it serves nothing
        for _ in range(3):
            watch_local_brokers()
            time.sleep(1)
        d = fresh(deployment)
        assert d.status == "degraded", f"{d.status}: {d.conditions}"

        reconcile_deployment(d.pk)
        assert _answers(port), "the reconcile left a broker that answers nothing"
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    raw_connack("127.0.0.1", port, *selectors.monitor_credentials(fresh(deployment)))


def test_watcher_notices_a_dead_broker_whose_directory_is_gone(deployment, brokers_dir):
    """probe() answers `idle` when the deployment's directory does not exist, and the watcher only acts on `dead`.
    A host that reboots with LOCAL_BROKERS_DIR on a tmpfs, or a clean-up that removes the directory, leaves every
    broker dead and every deployment `running`, Ready True and billed as running, with no crash event and no
    restart (the sweep re-drives only deployments that are not converged)."""
    [pid] = broker_pids(brokers_dir)
    os.kill(pid, signal.SIGKILL)
    shutil.rmtree(brokers_dir / deployment.public_id)

    watch_local_brokers()

    d = fresh(deployment)
    assert d.status == "degraded", f"{d.status}: {d.conditions}"
    assert "broker.crashed" in kinds(d)


def test_broker_that_dies_after_every_restart_is_not_restarted_without_end(deployment, brokers_dir):
    """A broker that dies right after each start (a poisoned persistence file, a host killing it) is restarted at
    once every time: running -> degraded -> running for ever, four events and a new billing interval per round,
    the status showing `running` half the time. After a few crashes in a row the restarts should back off and the
    deployment say it is crash-looping."""
    rounds = 6
    for _ in range(rounds):
        [pid] = broker_pids(brokers_dir)
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        watch_local_brokers()
        reconcile_deployment(deployment.pk)

    d = fresh(deployment)
    crashes = kinds(d).count("broker.crashed")
    assert crashes == rounds
    restarts = kinds(d).count("broker.recovered")
    assert restarts < rounds, f"{rounds} crashes within seconds, {restarts} immediate restarts, status {d.status}"
