"""A dead broker is noticed: kill -9 a real mosquitto and the crash is an event within seconds, the deployment is
degraded (and not billed) until it serves again, and the status walks running -> degraded -> running.

In process (the watcher and the reconciler called directly, real brokers), then end to end: the REST API, a real
Celery worker with beat embedded (the watcher is a beat task), real brokers, a raw MQTT CONNECT, and billing's own
metering over the hour.
"""

import datetime as dt
import fcntl
import os
import pwd
import shutil
import signal
import socket
import time

import pytest
from django.utils import timezone

from bench.mosquitto_floor import ConnackRefused, connect_packet, raw_connack
from deployments import selectors, services
from deployments.drivers.local import LocalDriver, _flock, _Paths
from deployments.models import Deployment, DeploymentEvent, StatusInterval
from deployments.reconcile import reconcile_deployment, watch_local_brokers
from tests.celery_worker import CeleryWorker, broker_pids, kill_and_wait, worker_env
from tests.deployments.test_local_driver import Client, _spec, root  # noqa: F401

pytestmark = [pytest.mark.usefixtures("deployments_catalog")]


def fresh(deployment):
    return Deployment.objects.get(pk=deployment.pk)


def kinds(deployment):
    return list(DeploymentEvent.objects.filter(deployment=deployment).order_by("id").values_list("kind", flat=True))


def status_walk(deployment):
    return list(
        DeploymentEvent.objects.filter(deployment=deployment, kind="status.changed")
        .order_by("id")
        .values_list("message", flat=True)
    )


def running_intervals(deployment):
    return list(StatusInterval.objects.filter(deployment=deployment, status="running").order_by("started_at"))


@pytest.fixture
def deployment(owner_org, brokers_dir):
    created, _operation = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    assert reconcile_deployment(created.pk).state == "converged"
    return fresh(created)


# -- in process ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_watcher_records_the_crash_with_its_exit_and_stops_billing_when_broker_is_killed(deployment, brokers_dir):
    [pid] = broker_pids(brokers_dir)
    before_kill = timezone.now()
    kill_and_wait(pid)

    counts = watch_local_brokers()

    assert counts["recorded"] == 1
    d = fresh(deployment)
    assert d.status == "degraded"
    conditions = {c["type"]: c for c in d.conditions}
    assert (conditions["BrokerAvailable"]["status"], conditions["BrokerAvailable"]["reason"]) == (
        "False",
        "BrokerCrashed",
    )
    assert f"mosquitto (pid {pid}) killed by SIGKILL" in conditions["BrokerAvailable"]["message"]
    assert kinds(d)[-2:] == ["broker.crashed", "status.changed"]
    [closed] = running_intervals(d)
    # Closed when the broker was last seen alive (its start here), never after the kill was noticed.
    assert closed.ended_at is not None and closed.started_at <= closed.ended_at <= timezone.now()
    assert closed.ended_at <= before_kill
    assert not StatusInterval.objects.filter(deployment=d, ended_at__isnull=True).exists()
    assert watch_local_brokers()["recorded"] == 0  # recorded once, not on every look

    assert reconcile_deployment(d.pk).state == "converged"

    d = fresh(d)
    assert d.status == "running"
    assert kinds(d)[-2:] == ["broker.recovered", "status.changed"]
    assert status_walk(d)[-2].startswith(f"running → degraded: mosquitto (pid {pid}) killed by SIGKILL")
    assert status_walk(d)[-1] == "degraded → running"
    assert {c["type"]: c["status"] for c in d.conditions} == {"Ready": "True", "BrokerAvailable": "True"}
    old, new = running_intervals(d)
    assert new.started_at > old.ended_at and new.ended_at is None
    raw_connack("127.0.0.1", d.endpoints["ports"]["mqtt"], *selectors.monitor_credentials(d))


@pytest.mark.django_db
def test_heartbeat_bounds_the_unbilled_gap_when_broker_died_between_two_looks(deployment, brokers_dir):
    assert watch_local_brokers()["alive"] == 1
    seen_alive = timezone.now()
    time.sleep(1.5)
    [pid] = broker_pids(brokers_dir)
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)

    watch_local_brokers()

    [closed] = running_intervals(fresh(deployment))
    assert seen_alive - dt.timedelta(seconds=0.5) <= closed.ended_at <= seen_alive + dt.timedelta(seconds=0.5)


@pytest.mark.django_db
def test_reconcile_records_the_crash_itself_when_it_finds_the_broker_dead_first(deployment, brokers_dir):
    [pid] = broker_pids(brokers_dir)
    kill_and_wait(pid)

    assert reconcile_deployment(deployment.pk).state == "converged"

    d = fresh(deployment)
    assert d.status == "running"
    assert kinds(d)[-4:] == ["broker.crashed", "status.changed", "broker.recovered", "status.changed"]
    assert [m.split(":")[0] for m in status_walk(d)[-2:]] == ["running → degraded", "degraded → running"]
    assert len(running_intervals(d)) == 2
    assert len(broker_pids(brokers_dir)) == 1


@pytest.mark.django_db
def test_nothing_is_recorded_when_broker_is_alive_stopped_on_purpose_or_being_changed(deployment, brokers_dir):
    driver = LocalDriver(root=brokers_dir)
    assert driver.probe(deployment.public_id).state == "alive"
    with _flock(_Paths(brokers_dir / deployment.public_id).lock):
        assert driver.probe(deployment.public_id).state == "busy"  # an apply in progress is not a crash
    services.deployment_stop(deployment=deployment, actor=None)
    reconcile_deployment(deployment.pk)
    assert driver.probe(deployment.public_id).state == "idle"
    assert driver.probe("dep_never_applied").state == "missing"  # nothing of it here: the rows must say why
    assert watch_local_brokers()["recorded"] == 0
    assert "broker.crashed" not in kinds(deployment)


@pytest.mark.django_db
def test_probe_tells_a_dead_broker_from_a_stale_pid_file_when_the_broker_runs_on(deployment, brokers_dir):
    driver = LocalDriver(root=brokers_dir)
    paths = _Paths(brokers_dir / deployment.public_id)
    [pid] = broker_pids(brokers_dir)
    paths.pid.write_text("999999\n")  # a pid file that lies: the broker itself still runs
    assert driver.probe(deployment.public_id).state == "alive"
    kill_and_wait(pid)  # a SIGKILL is delivered, not awaited: probing at once could still find it alive
    dead = driver.probe(deployment.public_id)
    assert dead.state == "dead" and dead.last_seen_alive is not None


def _answers(port: int) -> bool:
    try:
        raw_connack("127.0.0.1", port, timeout=1.0)
    except ConnackRefused:
        return True  # it answered (refusing an anonymous client is an answer)
    except OSError:
        return False
    return True


def _running_interval_open(deployment) -> bool:
    return StatusInterval.objects.filter(deployment=deployment, status="running", ended_at__isnull=True).exists()


@pytest.mark.django_db
def test_watcher_records_a_crash_and_reconcile_replaces_the_broker_when_it_is_sigstopped(deployment, brokers_dir):
    """A stopped process keeps its listening socket and the kernel still completes handshakes into its backlog, but
    it answers nothing: it is no more serving than a dead one, and is billed no more."""
    [pid] = broker_pids(brokers_dir)
    port = deployment.endpoints["ports"]["mqtt"]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not _answers(port)

        assert watch_local_brokers()["recorded"] == 1

        d = fresh(deployment)
        assert d.status == "degraded", f"{d.status}: {d.conditions}"
        assert f"mosquitto (pid {pid}) was stopped by a signal" in d.last_error
        assert not _running_interval_open(d)
        assert reconcile_deployment(d.pk).state == "converged"
        assert _answers(port), "the reconcile left a broker that answers nothing"
        assert pid not in broker_pids(brokers_dir) and len(broker_pids(brokers_dir)) == 1
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    d = fresh(deployment)
    assert d.status == "running" and kinds(d)[-2:] == ["broker.recovered", "status.changed"]
    raw_connack("127.0.0.1", port, *selectors.monitor_credentials(d))


def _state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _hang_on_its_log(paths: _Paths, pid: int, port: int) -> int:
    """Make a real broker hang: its log becomes a pipe nobody reads (one page of buffer), it reopens it on SIGHUP,
    and connections with long client ids fill the page until mosquitto blocks writing its log, its event loop with
    it. Returns the pipe's read end, to be closed once the broker is gone (closing it would set the broker free)."""
    paths.log.unlink()
    os.mkfifo(paths.log, 0o600)
    if os.geteuid() == 0:
        user = pwd.getpwnam("mosquitto")
        os.chown(paths.log, user.pw_uid, user.pw_gid)
    reader = os.open(paths.log, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    os.kill(pid, signal.SIGHUP)
    for attempt in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(connect_packet(client_id=f"{attempt:03d}" + "x" * 900))
                if not sock.recv(4):
                    continue
        except TimeoutError:
            return reader  # no answer within a second: it is stuck
        except OSError:
            continue
    os.close(reader)
    raise AssertionError("the broker never blocked on its log")


@pytest.mark.django_db
def test_watcher_records_a_crash_and_reconcile_replaces_the_broker_when_it_is_hung(deployment, brokers_dir, settings):
    settings.BROKER_ANSWER_CHECK_SECONDS = 0
    settings.BROKER_HUNG_SECONDS = 1.0
    paths = _Paths(brokers_dir / deployment.public_id)
    [pid] = broker_pids(brokers_dir)
    port = deployment.endpoints["ports"]["mqtt"]
    reader = _hang_on_its_log(paths, pid, port)
    try:
        assert _state_of(pid) not in ("T", "t", "Z")  # a live process, by every /proc measure
        assert watch_local_brokers()["recorded"] == 0  # one unanswered CONNECT is not yet a hung broker
        time.sleep(1.2)
        assert watch_local_brokers()["recorded"] == 1

        d = fresh(deployment)
        assert d.status == "degraded" and "it is hung" in d.last_error, d.last_error
        assert not _running_interval_open(d)
        paths.log.unlink()  # the disk is repaired: the next broker logs to a file again
        assert reconcile_deployment(d.pk).state == "converged"
        assert pid not in broker_pids(brokers_dir) and len(broker_pids(brokers_dir)) == 1
    finally:
        os.close(reader)
    d = fresh(deployment)
    assert d.status == "running"
    raw_connack("127.0.0.1", port, *selectors.monitor_credentials(d))


def test_probe_counts_a_full_listener_as_serving_when_it_refuses_new_connections(root):  # noqa: F811
    """At max_connections mosquitto accepts and closes at once: an answer, not a hang (a customer filling their
    tier must not get their broker killed)."""
    driver = LocalDriver(root=root, answer_check_seconds=0, hung_seconds=0)
    spec = _spec(max_connections=1)
    observed = driver.apply(spec)
    held = Client(observed.ports["mqtt"], "alice", "alice-pw")
    assert not held.connect().is_failure
    try:
        assert [driver.probe(spec.name).state for _ in range(3)] == ["alive", "alive", "alive"]
    finally:
        held.close()


@pytest.mark.django_db
def test_watcher_records_the_crash_and_reconcile_restores_the_port_when_the_directory_is_gone(deployment, brokers_dir):
    """A reboot onto an empty LOCAL_BROKERS_DIR (a tmpfs), or a clean-up: nothing of the broker is left, and the
    rows still say it serves. It is a crash, and the restored broker listens where its clients connect."""
    [pid] = broker_pids(brokers_dir)
    port = deployment.endpoints["ports"]["mqtt"]
    kill_and_wait(pid)
    shutil.rmtree(brokers_dir)

    assert watch_local_brokers()["recorded"] == 1

    d = fresh(deployment)
    assert d.status == "degraded", f"{d.status}: {d.conditions}"
    assert kinds(d)[-2:] == ["broker.crashed", "status.changed"] and "directory" in d.last_error
    assert not _running_interval_open(d)
    assert reconcile_deployment(d.pk).state == "converged"
    d = fresh(d)
    assert d.status == "running" and d.endpoints["ports"]["mqtt"] == port
    raw_connack("127.0.0.1", port, *selectors.monitor_credentials(d))


@pytest.mark.django_db
def test_broker_left_running_from_a_removed_directory_is_replaced_not_doubled(deployment, brokers_dir):
    [pid] = broker_pids(brokers_dir)
    port = deployment.endpoints["ports"]["mqtt"]
    shutil.rmtree(brokers_dir / deployment.public_id)  # the broker runs on, its files gone

    assert watch_local_brokers()["recorded"] == 1
    assert reconcile_deployment(deployment.pk).state == "converged"

    [replacement] = broker_pids(brokers_dir)
    assert replacement != pid
    d = fresh(deployment)
    assert d.status == "running" and d.endpoints["ports"]["mqtt"] == port
    raw_connack("127.0.0.1", port, *selectors.monitor_credentials(d))


@pytest.mark.django_db
def test_watcher_records_the_crash_when_the_state_file_is_gone_and_no_broker_runs(deployment, brokers_dir):
    paths = _Paths(brokers_dir / deployment.public_id)
    [pid] = broker_pids(brokers_dir)
    port = deployment.endpoints["ports"]["mqtt"]
    kill_and_wait(pid)
    paths.state.unlink()

    assert watch_local_brokers()["recorded"] == 1

    d = fresh(deployment)
    assert d.status == "degraded" and "state file" in d.last_error, d.last_error
    assert not _running_interval_open(d)
    assert reconcile_deployment(d.pk).state == "converged"
    d = fresh(d)
    assert d.status == "running" and d.endpoints["ports"]["mqtt"] == port
    raw_connack("127.0.0.1", port, *selectors.monitor_credentials(d))


@pytest.mark.django_db
def test_broker_is_kept_not_restarted_when_only_its_state_file_is_gone(deployment, brokers_dir):
    """A broker still serving from its directory serves, state file or not: the next apply adopts it."""
    paths = _Paths(brokers_dir / deployment.public_id)
    [pid] = broker_pids(brokers_dir)
    paths.state.unlink()

    assert LocalDriver(root=brokers_dir).probe(deployment.public_id).state == "alive"
    assert watch_local_brokers()["recorded"] == 0
    assert reconcile_deployment(deployment.pk).state == "converged"  # a resync: the rows did not change

    assert broker_pids(brokers_dir) == [pid] and paths.state.exists()
    assert "broker.crashed" not in kinds(deployment)


@pytest.mark.django_db
def test_watcher_records_the_crash_when_the_broker_files_say_stopped_while_the_deployment_serves(
    deployment, brokers_dir
):
    """Only an apply under the deployment's lock stops a broker, and its reconcile then records the stop: files that
    say "stopped" under a row that says "running" (a restored backup, a hand edit) mean a broker nobody serves."""
    paths = _Paths(brokers_dir / deployment.public_id)
    [pid] = broker_pids(brokers_dir)
    kill_and_wait(pid)
    paths.state.write_text('{"running": false, "restart_nonce": 0}\n')

    assert watch_local_brokers()["recorded"] == 1

    d = fresh(deployment)
    assert d.status == "degraded" and "say the broker was stopped" in d.last_error, d.last_error
    assert reconcile_deployment(d.pk).state == "converged"
    assert fresh(d).status == "running" and len(broker_pids(brokers_dir)) == 1
    raw_connack("127.0.0.1", d.endpoints["ports"]["mqtt"], *selectors.monitor_credentials(fresh(d)))


def _crash(brokers_dir) -> None:
    [pid] = broker_pids(brokers_dir)
    kill_and_wait(pid)
    assert watch_local_brokers()["recorded"] == 1


@pytest.mark.django_db
def test_restarts_back_off_and_the_deployment_says_crash_loop_when_its_broker_dies_after_every_start(
    deployment, brokers_dir, settings
):
    settings.BROKER_CRASH_LOOP_CRASHES = 3
    settings.BROKER_CRASH_BACKOFF_SECONDS = 2.0
    for _ in range(2):
        _crash(brokers_dir)
        assert reconcile_deployment(deployment.pk).state == "converged"  # restarted at once

    _crash(brokers_dir)  # the third within the window
    held = reconcile_deployment(deployment.pk)

    assert held.state == "held" and held.retry and 1.0 < held.retry_after <= 2.0, held
    assert broker_pids(brokers_dir) == []
    d = fresh(deployment)
    assert d.status == "degraded"
    assert {c["type"]: (c["status"], c["reason"]) for c in d.conditions} == {
        "Ready": ("False", "CrashLoop"),
        "BrokerAvailable": ("False", "CrashLoop"),
    }
    assert "crashed 3 times in 600 s: the next restart waits 2 s" in d.conditions[0]["message"]
    assert kinds(d).count("broker.crash_loop") == 1
    assert not _running_interval_open(d)  # not billed while it waits

    time.sleep(held.retry_after)
    assert reconcile_deployment(d.pk).state == "converged"
    assert fresh(d).status == "running" and len(broker_pids(brokers_dir)) == 1

    _crash(brokers_dir)  # the fourth: the wait doubles
    again = reconcile_deployment(d.pk)
    assert again.state == "held" and 3.0 < again.retry_after <= 4.0, again
    assert kinds(d).count("broker.crashed") == 4 and kinds(d).count("broker.recovered") == 3


@pytest.mark.django_db
def test_stop_is_carried_out_at_once_when_the_broker_is_crash_looping(deployment, brokers_dir, settings):
    settings.BROKER_CRASH_LOOP_CRASHES = 1
    settings.BROKER_CRASH_BACKOFF_SECONDS = 300.0
    _crash(brokers_dir)
    held = reconcile_deployment(deployment.pk)
    # Longer than the sweep's period: the sweep re-drives it, no task of its own is scheduled to pile up.
    assert held.state == "held" and not held.retry and held.retry_after > 290

    services.deployment_stop(deployment=fresh(deployment), actor=None)

    assert reconcile_deployment(deployment.pk).state == "converged"
    assert fresh(deployment).status == "stopped" and broker_pids(brokers_dir) == []


# -- end to end: API, a real worker with beat, billing --------------------------------------------------------------


def _events(client, url):
    return client.get(f"{url}/events?page_size=200").json()["results"]


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def worker_with_beat(transactional_db, deployments_catalog, brokers_dir, redis_clean, tmp_path):
    """A real worker with beat embedded: the broker watcher runs as it does in production, every 5 s."""
    worker = CeleryWorker(worker_env(brokers_dir), tmp_path, beat=True)
    worker.start()
    yield worker
    worker.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_killed_broker_is_recorded_within_30_s_degraded_until_restored_and_its_downtime_unbilled(
    worker_with_beat, owner_org, key_client, brokers_dir, settings
):
    from billing.metering import HOUR, floor_hour, usage_meter
    from billing.models import UsageRecord

    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    created = client.post(base, {"name": "plant", "plan": "dedicated", "tier": "1k", "region": "local"}, format="json")
    assert created.status_code == 202, created.content
    url = f"{base}/{created.json()['deployment']['id']}"
    body = _wait(lambda: (b := client.get(url).json())["status"] == "running" and b, 60, "running")
    port = body["connection"]["ports"]["mqtt"]
    deployment = Deployment.objects.get(public_id=body["id"])
    credentials = selectors.monitor_credentials(deployment)
    [pid] = broker_pids(brokers_dir)

    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # Hold the broker's port so the restore cannot succeed yet: the deployment must show degraded, with the reason.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _wait(lambda: _bound(squatter, port), 5, "the port to be free")
    squatter.listen()
    try:
        crashed = _wait(
            lambda: next((e for e in _events(client, url) if e["kind"] == "broker.crashed"), None),
            30,
            "the crash event",
        )
        detected_after = time.monotonic() - killed_at
        degraded = client.get(url).json()
        assert degraded["status"] == "degraded"
        conditions = {c["type"]: c for c in degraded["conditions"]}
        assert conditions["BrokerAvailable"]["status"] == "False"
        assert conditions["BrokerAvailable"]["reason"] == "BrokerCrashed"
        assert f"pid {pid}" in crashed["message"]
        time.sleep(2.0)  # degraded, and unbilled, for a while
        assert client.get(url).json()["status"] == "degraded"
    finally:
        squatter.close()
    recovered = _wait(lambda: client.get(url).json()["status"] == "running", 60, "running again")
    assert recovered
    _wait(lambda: _connack(port, credentials), 10, "a CONNACK")
    served_after = time.monotonic() - killed_at
    print(
        f"\nkill -9 -> crash event {detected_after:.2f} s; -> serving again {served_after:.2f} s (squatter held 2 s+)"
    )
    assert detected_after < 30

    walk = [e["message"].split(":")[0] for e in reversed(_events(client, url)) if e["kind"] == "status.changed"]
    assert walk[-2:] == ["running → degraded", "degraded → running"]
    assert [e["kind"] for e in _events(client, url)].count("broker.recovered") == 1

    # Billing: the running intervals leave a gap of at least the time the port was held, and metering bills
    # exactly the intervals: the down seconds are in no usage record.
    rows = list(StatusInterval.objects.filter(deployment=deployment).order_by("started_at"))
    assert [r.status for r in rows] == ["running", "running"]
    gap = (rows[1].started_at - rows[0].ended_at).total_seconds()
    assert gap >= 2.0
    first_hour, last_hour = floor_hour(rows[0].started_at), floor_hour(rows[1].started_at)
    usage_meter(since=first_hour, now=last_hour + HOUR)
    hour = first_hour
    while hour <= last_hour:
        end = hour + HOUR
        expected = sum(max(0.0, (min(r.ended_at or end, end) - max(r.started_at, hour)).total_seconds()) for r in rows)
        # Metering rounds each interval's ends to whole seconds and writes no record for a zero-second hour, so an
        # interval that began in an hour's last half second has no record there: it reads as 0.
        billed = sum(
            UsageRecord.objects.filter(deployment=deployment, hour=hour, product="running").values_list(
                "seconds", flat=True
            )
        )
        assert abs(billed - expected) <= 0.5
        hour = end
    total_span = ((last_hour + HOUR) - rows[0].started_at).total_seconds()
    billed_total = sum(
        UsageRecord.objects.filter(deployment=deployment, product="running").values_list("seconds", flat=True)
    )
    assert billed_total <= round(total_span - gap) + 1
    assert not UsageRecord.objects.filter(deployment=deployment).exclude(product="running").exists()


def _bound(sock, port) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def _connack(port, credentials) -> bool:
    try:
        raw_connack("127.0.0.1", port, *credentials, timeout=1.0)
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_crash_is_still_noticed_when_the_worker_was_killed_and_restarted(worker_with_beat, owner_org, brokers_dir):
    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    _wait(lambda: fresh(deployment).status == "running", 60, "running")
    worker_with_beat.kill()  # the broker's parent dies: its exit status will not be known to anyone
    worker_with_beat.start()
    [pid] = broker_pids(brokers_dir)
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()

    _wait(lambda: "broker.crashed" in kinds(deployment), 30, "the crash event")
    _wait(lambda: fresh(deployment).status == "running" and len(broker_pids(brokers_dir)) == 1, 30, "running again")
    assert time.monotonic() - started < 60
