"""Nothing a customer types breaks a broker's files, and a file the broker refuses never leaves it running without it.

On real mosquitto brokers (through the local driver, and through the reconciler and the API where the flow is theirs),
with real paho-mqtt clients checking that the ACL in force is still the one that was accepted.
"""

import dataclasses
import os
import pathlib
import signal
import socket
import threading

import pytest

from bench.mosquitto_floor import ConnackRefused, connect_packet, raw_connack
from deployments import reconcile as reconcile_module
from deployments import services
from deployments.drivers import local as local_module
from deployments.drivers.base import (
    AclEntry,
    ConfigRejectedError,
    MqttCredential,
    PermanentDriverError,
    RegionTarget,
)
from deployments.drivers.local import LocalDriver
from deployments.models import AclRule, Deployment, DeploymentEvent, MqttUser, Operation
from deployments.passwords import make_mqtt_credential
from tests.celery_worker import broker_pids
from tests.deployments.test_local_driver import ALICE, OPS, Client, _spec, driver, root  # noqa: F401

CONTROL_CHARACTERS = ["\n", "\r", "\x85", "\u2028", "\u2029", "\x7f", "\x00", "\t", "\x1b"]
BOB = make_mqtt_credential(username="bob", password="bob-pw")


def _log(observed) -> pathlib.Path:
    return pathlib.Path(observed.details["log_path"])


def _reloads(observed) -> int:
    return _log(observed).read_text().count(": Reloading config.")


def assert_alice_is_still_denied(port: int) -> None:
    """The accepted ACL is in force: alice's publish on secret/# never reaches a subscriber (no ACL would let it)."""
    watcher = Client(port, "ops", "ops-pw")
    assert not watcher.connect().is_failure
    watcher.subscribe("#")
    alice = Client(port, "alice", "alice-pw")
    assert not alice.connect().is_failure
    alice.publish("secret/plans", b"must stay denied")
    alice.publish("public/news", b"allowed")
    # One publisher's QoS 1 messages arrive in order: once the later one is here, the earlier one was dropped.
    assert watcher.received(1) == [("public/news", b"allowed")]
    assert watcher.messages.empty()
    alice.close()
    watcher.close()


# -- the driver's allow-list: refused before anything is written --------------------------------------------------


@pytest.mark.parametrize("char", CONTROL_CHARACTERS)
def test_acl_topic_with_control_character_is_refused_and_files_untouched_when_applied(driver, root, char):
    spec = _spec()
    observed = driver.apply(spec)
    files = {name: (root / spec.name / name).read_bytes() for name in ("acl", "passwd", "mosquitto.conf")}
    injected = AclEntry(permission="allow", action="all", topic=f"public{char}user alice{char}topic readwrite #")

    with pytest.raises(PermanentDriverError, match="control character|NUL"):
        driver.apply(dataclasses.replace(spec, acl=(injected, *spec.acl)))

    assert {name: (root / spec.name / name).read_bytes() for name in files} == files
    assert broker_pids(root) == [int(observed.details["pid"])]
    assert_alice_is_still_denied(observed.ports["mqtt"])


@pytest.mark.parametrize(
    "username",
    [
        "eve\ntopic readwrite #",
        "eve\u2028x",
        "eve\x85x",
        "eve\x7f",
        "alice:$7$101$c2FsdA==$aGFzaA==",  # would give alice a password of the attacker's choosing
        "#eve",  # a comment line in the password file
        " eve",
        "eve x",
        "e" * 70_000,
    ],
)
def test_username_the_files_cannot_hold_is_refused_when_applied(driver, root, username):
    spec = _spec()
    driver.apply(spec)
    before = (root / spec.name / "passwd").read_bytes()
    intruder = MqttCredential(username=username, salt_b64=ALICE.salt_b64, hash_b64=ALICE.hash_b64)

    with pytest.raises(PermanentDriverError):
        driver.apply(dataclasses.replace(spec, users=(ALICE, OPS, intruder)))

    assert (root / spec.name / "passwd").read_bytes() == before


@pytest.mark.parametrize("topic", [" secret/#", "secret/# ", "secret/\u3000", "a/b#", "x" * 70_000])
def test_topic_mosquitto_would_read_differently_is_refused_when_applied(driver, topic):
    with pytest.raises(PermanentDriverError):
        driver.apply(_spec(acl=(AclEntry(permission="allow", action="all", topic=topic),)))


def test_config_values_outside_their_allow_list_are_refused_before_any_file_is_written(root):
    bad_root = root / "with\nnewline"
    with pytest.raises(PermanentDriverError, match="control character"):
        LocalDriver(root=bad_root).apply(_spec())
    region = RegionTarget(code="l", driver="local", bind_address="127.0.0.1\nlistener 1883 0.0.0.0")
    with pytest.raises(PermanentDriverError, match="bind address"):
        LocalDriver(root=root).apply(dataclasses.replace(_spec(), region=region))
    with pytest.raises(PermanentDriverError, match="max_connections"):
        LocalDriver(root=root).apply(_spec(max_connections=True))
    assert broker_pids(root) == []


def test_topic_with_inner_spaces_is_written_whole_and_enforced_when_applied(driver):
    spec = _spec(
        acl=(
            AclEntry(permission="deny", action="publish", topic="secret area/#", username="alice"),
            AclEntry(permission="allow", action="all", topic="#"),
        )
    )
    observed = driver.apply(spec)
    port = observed.ports["mqtt"]
    watcher = Client(port, "ops", "ops-pw")
    assert not watcher.connect().is_failure
    watcher.subscribe("#")
    alice = Client(port, "alice", "alice-pw")
    assert not alice.connect().is_failure
    alice.publish("secret area/x", b"denied")
    alice.publish("secret/x", b"allowed")
    assert watcher.received(1) == [("secret/x", b"allowed")]
    alice.close()
    watcher.close()


# -- the broker's own verdict after a reload or a restart ---------------------------------------------------------


def _broken_acl(spec):
    text, note = _real_render_acl(spec)
    return text + "bogus line the broker cannot parse\n", note


_real_render_acl = local_module.render_acl


def test_broker_keeps_the_accepted_acl_and_the_change_fails_when_it_refuses_the_new_file(driver, monkeypatch):
    spec = _spec()
    observed = driver.apply(spec)
    port, pid = observed.ports["mqtt"], observed.details["pid"]
    acl_before = (pathlib.Path(observed.details["config_path"]).parent / "acl").read_text()
    monkeypatch.setattr(local_module, "render_acl", _broken_acl)  # a renderer bug the allow-list did not catch

    with pytest.raises(ConfigRejectedError, match="Invalid line in acl_file") as refused:
        driver.apply(dataclasses.replace(spec, users=(ALICE, OPS, BOB)))

    assert refused.value.observed.phase == "running"
    assert refused.value.observed.details["pid"] == pid  # reloaded twice, never restarted: clients stay connected
    assert (pathlib.Path(observed.details["config_path"]).parent / "acl").read_text() == acl_before
    assert _reloads(observed) == 2  # the refused file, then the accepted one again
    assert_alice_is_still_denied(port)

    # The same refused files are not tried again (the broker is not made to run without its ACL once more).
    with pytest.raises(ConfigRejectedError, match="Invalid line in acl_file"):
        driver.apply(dataclasses.replace(spec, users=(ALICE, OPS, BOB)))
    assert _reloads(observed) == 2

    monkeypatch.setattr(local_module, "render_acl", _real_render_acl)
    fixed = driver.apply(dataclasses.replace(spec, users=(ALICE, OPS, BOB)))
    assert fixed.details["pid"] == pid
    bob = Client(port, "bob", "bob-pw")
    assert not bob.connect().is_failure
    bob.close()
    assert_alice_is_still_denied(port)


def test_broker_keeps_the_accepted_users_when_it_refuses_a_password_line(driver, monkeypatch):
    spec = _spec()
    observed = driver.apply(spec)
    real_render_passwd = LocalDriver._render_passwd
    monkeypatch.setattr(
        LocalDriver, "_render_passwd", lambda self, spec: real_render_passwd(self, spec) + "carol:$7$101$@@$@@\n"
    )

    with pytest.raises(ConfigRejectedError, match="password salt for user carol"):
        driver.apply(dataclasses.replace(spec, users=(ALICE, OPS, BOB)))

    assert observed.details["pid"] == driver.observe(spec).details["pid"]
    assert Client(observed.ports["mqtt"], "bob", "bob-pw").connect().is_failure  # the accepted users, bob not yet
    raw_connack("127.0.0.1", observed.ports["mqtt"], "alice", "alice-pw")


def test_broker_serves_the_accepted_config_again_when_a_restart_with_the_new_one_fails(driver, root, monkeypatch):
    spec = _spec()
    observed = driver.apply(spec)
    port = observed.ports["mqtt"]
    conf_before = pathlib.Path(observed.details["config_path"]).read_text()
    real_render_conf = LocalDriver._render_conf
    monkeypatch.setattr(
        LocalDriver, "_render_conf", lambda self, *args: real_render_conf(self, *args) + "bogus_option 1\n"
    )

    with pytest.raises(ConfigRejectedError, match="bogus_option"):
        driver.apply(dataclasses.replace(spec, restart_nonce=1))

    assert pathlib.Path(observed.details["config_path"]).read_text() == conf_before
    assert len(broker_pids(root)) == 1
    raw_connack("127.0.0.1", port, "alice", "alice-pw")
    assert_alice_is_still_denied(port)


def test_first_start_with_a_refused_config_fails_and_leaves_nothing_running(driver, root, monkeypatch):
    real_render_conf = LocalDriver._render_conf
    monkeypatch.setattr(
        LocalDriver, "_render_conf", lambda self, *args: real_render_conf(self, *args) + "bogus_option 1\n"
    )
    with pytest.raises(PermanentDriverError, match="no earlier one"):
        driver.apply(_spec())
    assert broker_pids(root) == []


def test_failure_message_quotes_only_the_broker_own_lines_when_the_log_tail_starts_mid_line(tmp_path):
    """A failure message reads the log's last bytes: the line they cut into may be a client's words that look like
    the start of one of the broker's, and the lines a client id breaks with U+2028 are not lines."""
    log = tmp_path / "mosquitto.log"
    log.write_bytes(
        b"1700000000: Client x 12: Error: the broker is on fire. disconnected.\n"
        + "1700000001: Client y\u2028Error: forged disconnected.\n".encode()
        + b"1700000002: Error: Address already in use\n"
        + b"1700000003: mosquitto version 2.0.11 terminating\n"
        + b"1700000004: Error: half writ"
    )
    tail = len(log.read_bytes()) - log.read_bytes().index(b"12: Error")

    lines = local_module._log_lines(log, tail=tail)

    assert not any("on fire" in line for line in lines)
    assert local_module._last_error(lines) == "Error: Address already in use"
    assert local_module._last_error(local_module._log_lines(log)) == "Error: Address already in use"


def test_reload_check_is_not_fooled_when_a_client_calls_itself_error(driver):
    """Only lines the broker itself starts with "Error" count: a client id in the log cannot fake a refusal."""
    spec = _spec()
    observed = driver.apply(spec)
    client = Client(observed.ports["mqtt"], "alice", "alice-pw", client_id="Error: Invalid line in acl_file")
    assert not client.connect().is_failure
    assert driver.apply(dataclasses.replace(spec, users=(ALICE, OPS, BOB))).details["pid"] == observed.details["pid"]
    client.close()


def _forge_log_lines_until(stop: threading.Event, port: int) -> None:
    """An anonymous client's CONNECTs whose protocol name is the 6 raw bytes "\\nError": mosquitto logs it unchecked
    (`Invalid protocol "<name>" in CONNECT from <address>.`), so each starts a log line `Error" in CONNECT from …`."""
    body = b"\x00\x06\nError" + bytes([4, 2]) + (60).to_bytes(2, "big") + b"\x00\x01x"
    packet = bytes([0x10, len(body)]) + body
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                sock.sendall(packet)
                sock.recv(4)
        except OSError:
            pass


def test_reload_check_is_not_fooled_when_an_anonymous_connect_starts_a_log_line(driver):
    """Only whole lines of mosquitto's own ("<seconds>: <message>", the message naming our file) prove a refusal:
    a line a client started, with no timestamp, proves nothing."""
    spec = _spec()
    observed = driver.apply(spec)
    stop = threading.Event()
    flood = threading.Thread(target=_forge_log_lines_until, args=(stop, observed.ports["mqtt"]), daemon=True)
    flood.start()
    try:
        for users in [(ALICE, OPS, BOB), (ALICE, OPS)] * 3:
            assert driver.apply(dataclasses.replace(spec, users=users)).details["pid"] == observed.details["pid"]
    finally:
        stop.set()
        flood.join()

    log = _log(observed).read_bytes()
    after_reloads = log[log.index(b": Reloading config.") :]
    assert b'\nError" in CONNECT from 127.0.0.1.\n' in after_reloads  # the forged lines were there to be misread
    bob = Client(observed.ports["mqtt"], "bob", "bob-pw")
    assert bob.connect().is_failure  # the last change (bob removed) is in force


# -- through the reconciler and the API ---------------------------------------------------------------------------


@pytest.fixture
def deployment(owner_org, brokers_dir, deployments_catalog):
    created, _operation = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    assert reconcile_module.reconcile_deployment(created.pk).state == "converged"
    return Deployment.objects.get(pk=created.pk)


def _connect_and_hold(port: int, *, client_id: str, username: str, password: str) -> socket.socket:
    """A device connected with this client id, its connection kept open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(connect_packet(client_id=client_id, username=username, password=password))
    connack = sock.recv(4)
    assert connack[:1] == b"\x20" and connack[3:4] == b"\x00", connack
    return sock


@pytest.mark.django_db
@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_revoked_device_is_locked_out_when_its_client_id_forges_a_refusal_in_the_broker_log(deployment, separator):
    """mosquitto accepts U+2028/U+2029 in a client id and logs it raw when a reload disconnects the client of a
    deleted user ("Client <id> disconnected."): read with str.splitlines(), "x\\u2028Error: ..." was a log line
    "Error: ...", the revocation was taken for a refused file and undone, and its digest recorded so that no restart
    tried it again. The log is split at b"\\n" only, and only mosquitto's own timestamped lines count."""
    password = "device-password-1"
    device, _op = services.mqtt_user_create(deployment=deployment, actor=None, username="device-17", password=password)
    assert reconcile_module.reconcile_deployment(deployment.pk).state == "converged"
    port = Deployment.objects.get(pk=deployment.pk).endpoints["ports"]["mqtt"]
    acl_path = pathlib.Path(Deployment.objects.get(pk=deployment.pk).observed_details["config_path"]).parent / "acl"
    held = _connect_and_hold(
        port,
        client_id=f'device-17{separator}Error: Invalid line in acl_file "{acl_path}": user.',
        username="device-17",
        password=password,
    )
    try:
        services.mqtt_user_delete(user=MqttUser.objects.get(pk=device.pk), actor=None)
        reconcile_module.reconcile_deployment(deployment.pk)
    finally:
        held.close()

    d = Deployment.objects.get(pk=deployment.pk)
    with pytest.raises(ConnackRefused):
        raw_connack("127.0.0.1", port, "device-17", password, timeout=2)
    assert not DeploymentEvent.objects.filter(deployment=d, kind="config.rejected").exists(), d.conditions
    # A later restart does not bring the deleted user back either.
    services.deployment_restart(deployment=d, actor=None)
    reconcile_module.reconcile_deployment(d.pk)
    with pytest.raises(ConnackRefused):
        raw_connack("127.0.0.1", port, "device-17", password, timeout=2)


@pytest.mark.django_db
@pytest.mark.usefixtures("deployments_catalog")
def test_operation_fails_with_the_reason_and_deployment_keeps_running_when_broker_refuses_change(
    owner_org, brokers_dir, monkeypatch
):
    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plant", plan="dedicated", tier="1k", region="local"
    )
    assert reconcile_module.reconcile_deployment(deployment.pk).state == "converged"
    monkeypatch.setattr(local_module, "render_acl", _broken_acl)
    _user, operation = services.mqtt_user_create(deployment=deployment, actor=None, username="bob", password="bob-pw")

    reconcile_module.reconcile_deployment(deployment.pk)

    d = Deployment.objects.get(pk=deployment.pk)
    operation.refresh_from_db()
    assert operation.status == "failed" and "Invalid line in acl_file" in operation.error
    assert d.status == "running" and d.observed_generation == d.generation
    assert {c["type"]: (c["status"], c["reason"]) for c in d.conditions} == {
        "Ready": ("True", "BrokerRunning"),
        "ConfigAccepted": ("False", "ConfigRejected"),
    }
    assert DeploymentEvent.objects.filter(deployment=d, kind="config.rejected").count() == 1
    # A resync tries nothing new and records nothing new.
    reconcile_module.reconcile_deployment(deployment.pk)
    assert DeploymentEvent.objects.filter(deployment=d, kind="config.rejected").count() == 1
    assert Deployment.objects.get(pk=d.pk).status == "running"


@pytest.fixture
def api_deployment(owner_org, key_client, brokers_dir, deployments_catalog):
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments"
    response = client.post(base, {"name": "plant", "plan": "dedicated", "tier": "1k", "region": "local"}, format="json")
    assert response.status_code == 202, response.content
    public_id = response.json()["deployment"]["id"]
    deployment = Deployment.objects.get(public_id=public_id)
    assert reconcile_module.reconcile_deployment(deployment.pk).state == "converged"
    return client, f"{base}/{public_id}", deployment


def _field_errors(response) -> dict:
    return {e["field"]: e for e in response.json()["errors"]}


@pytest.mark.django_db
@pytest.mark.parametrize("char", ["\n", "\x85", "\u2028", "\x7f"])
def test_acl_rule_with_control_character_answers_400_and_reaches_no_broker_when_posted(api_deployment, char):
    client, url, deployment = api_deployment
    deployment.refresh_from_db()
    acl_file = pathlib.Path(deployment.observed_details["config_path"]).parent / "acl"
    acl_before, operations = acl_file.read_bytes(), Operation.objects.count()

    for body in (
        {"permission": "allow", "action": "all", "topic": f"a{char}topic readwrite #"},
        {"permission": "allow", "action": "all", "topic": "a/#", "username": f"bob{char}x"},
        {"permission": "allow", "action": "all", "topic": "a/#", "client_id": f"c{char}x"},
    ):
        response = client.post(f"{url}/acl-rules", body, format="json")
        assert response.status_code == 400, response.content
        assert response["Content-Type"] == "application/problem+json"
        field = next(name for name in ("topic", "username", "client_id") if char in body.get(name, ""))
        assert _field_errors(response)[field]["code"] == "control_character"

    user = client.post(f"{url}/mqtt-users", {"username": f"bob{char}x", "password": "bob-password"}, format="json")
    assert user.status_code == 400 and _field_errors(user)["username"]["code"] == "control_character"
    assert AclRule.objects.count() == 0 and Operation.objects.count() == operations
    reconcile_module.reconcile_deployment(deployment.pk)
    assert acl_file.read_bytes() == acl_before


@pytest.mark.django_db
def test_values_mosquitto_would_misread_answer_400_in_a_local_region(api_deployment):
    client, url, _deployment = api_deployment
    leading = client.post(
        f"{url}/acl-rules", {"permission": "allow", "action": "all", "topic": " admin/#"}, format="json"
    )
    assert leading.status_code == 400 and "whitespace" in _field_errors(leading)["topic"]["message"]
    hashed = client.post(f"{url}/mqtt-users", {"username": "#ops", "password": "ops-password"}, format="json")
    assert hashed.status_code == 400 and "comments" in _field_errors(hashed)["username"]["message"]
    colon = client.post(f"{url}/mqtt-users", {"username": "alice:x", "password": "ops-password"}, format="json")
    assert colon.status_code == 400 and "username" in _field_errors(colon)
    assert AclRule.objects.count() == 0


@pytest.mark.django_db
def test_broker_killed_after_a_refused_change_comes_back_with_the_accepted_acl(api_deployment, monkeypatch):
    """kill -9 after a refusal: the restart serves the accepted files, not the refused ones the rows still hold."""
    client, url, deployment = api_deployment
    user = client.post(f"{url}/mqtt-users", {"username": "alice", "password": "alice-pw-1"}, format="json")
    rule = client.post(
        f"{url}/acl-rules", {"permission": "deny", "action": "publish", "topic": "secret/#"}, format="json"
    )
    assert (user.status_code, rule.status_code) == (201, 201)
    reconcile_module.reconcile_deployment(deployment.pk)
    monkeypatch.setattr(local_module, "render_acl", _broken_acl)
    other = client.post(f"{url}/acl-rules", {"permission": "allow", "action": "all", "topic": "other/#"}, format="json")
    assert other.status_code == 201
    reconcile_module.reconcile_deployment(deployment.pk)
    directory = pathlib.Path(Deployment.objects.get(pk=deployment.pk).observed_details["config_path"]).parent
    [pid] = broker_pids(directory)

    os.kill(pid, signal.SIGKILL)
    reconcile_module.reconcile_deployment(deployment.pk)

    d = Deployment.objects.get(pk=deployment.pk)
    acl = (directory / "acl").read_text()
    assert "bogus" not in acl and "topic deny secret/#" in acl
    assert broker_pids(directory) != [pid] and len(broker_pids(directory)) == 1
    raw_connack("127.0.0.1", d.endpoints["ports"]["mqtt"], "alice", "alice-pw-1")
    kinds = list(DeploymentEvent.objects.filter(deployment=d).order_by("id").values_list("kind", flat=True))
    assert kinds[-5:] == ["broker.crashed", "status.changed", "config.rejected", "broker.recovered", "status.changed"]
    assert d.status == "running"
    assert {c["type"]: c["status"] for c in d.conditions}["ConfigAccepted"] == "False"
