"""TLS on real mosquitto brokers (Debian's 2.0.11) through the local driver, reached with real paho-mqtt clients
over mqtts and wss: the CA-issued certificate, a replacement reloaded while plain clients stay connected, two-way
TLS with the customer's client CA, the broker's own verdict on a certificate it cannot load."""

import dataclasses
import datetime
import os
import pwd
import stat

import pytest

from deployments import tls
from deployments.drivers.base import ConfigRejectedError, TlsMaterial
from deployments.drivers.local import served_certificate_sha256
from tests.deployments.test_local_driver import ALICE, Client, _spec, _wait_for, driver, root  # noqa: F401
from tests.deployments.tls_helpers import client_context, key_pem, make_ca, make_leaf, pem, tls_connect

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def authority():
    return tls.generate_certificate_authority(common_name="Test Control Plane CA", now=NOW)


def _server_material(authority, **changes) -> TlsMaterial:
    ca_pem, ca_key = authority
    certificate, key = tls.issue_server_certificate(
        ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, host_names=["127.0.0.1", "localhost"], now=NOW
    )
    return TlsMaterial(certificate_pem=certificate, private_key_pem=key, **changes)


def _sha256(certificate_pem: str) -> str:
    return tls.certificate_facts(certificate_pem).fingerprint_sha256.replace(":", "").lower()


def _close(client):
    client.loop_stop()
    client.disconnect()


def test_client_verifying_against_the_ca_connects_on_mqtts_and_wss_when_tls_is_on(driver, authority):
    observed = driver.apply(_spec(tls=_server_material(authority)))
    assert {"mqtt", "ws", "mqtts", "wss"} <= set(observed.ports)
    assert observed.details["tls"] == "one-way"
    context = client_context(authority[0])
    for protocol, transport in (("mqtts", "tcp"), ("wss", "websockets")):
        verdict, client = tls_connect(
            observed.ports[protocol], context, username="alice", password="alice-pw", transport=transport
        )
        assert verdict == "accepted", protocol
        _close(client)
    # A wrong password over TLS is still refused: TLS adds to the password check, it does not replace it.
    verdict, _ = tls_connect(observed.ports["mqtts"], context, username="alice", password="nope")
    assert verdict.startswith("refused")


def test_client_trusting_another_ca_is_refused_when_it_verifies_the_broker(driver, authority):
    observed = driver.apply(_spec(tls=_server_material(authority)))
    stranger, _ = make_ca("Some Other Root CA")
    for protocol, transport in (("mqtts", "tcp"), ("wss", "websockets")):
        verdict, _client = tls_connect(
            observed.ports[protocol],
            client_context(pem(stranger)),
            username="alice",
            password="alice-pw",
            transport=transport,
        )
        assert verdict.startswith("refused: SSLCertVerificationError"), (protocol, verdict)


def test_key_file_is_readable_only_by_the_broker_user_when_tls_is_on(driver, root, authority):
    spec = _spec(tls=_server_material(authority))
    driver.apply(spec)
    key = root / spec.name / "tls-server.key"
    info = key.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    expected = pwd.getpwnam("mosquitto").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert info.st_uid == expected
    assert key.read_text() == spec.tls.private_key_pem


def test_replaced_certificate_is_served_after_reload_while_plain_client_stays_connected(driver, authority):
    spec = _spec(tls=_server_material(authority))
    observed = driver.apply(spec)
    ports = observed.ports
    plain = Client(ports["mqtt"], "alice", "alice-pw")
    assert not plain.connect().is_failure
    plain.subscribe("plant/#")
    # A wss client connected before the change (so mosquitto knows the wss listener's TLS context) is not needed:
    # the driver primes it itself. None connects here.
    before = served_certificate_sha256("127.0.0.1", ports["mqtts"])
    assert before == _sha256(spec.tls.certificate_pem)

    customer_root = make_ca("Acme Root CA")
    leaf, leaf_key = make_leaf(customer_root, "mqtt.acme.example", sans=("mqtt.acme.example", "127.0.0.1"))
    replaced = dataclasses.replace(
        spec, tls=TlsMaterial(certificate_pem=pem(leaf, customer_root[0]), private_key_pem=key_pem(leaf_key))
    )
    again = driver.apply(replaced)

    assert again.details["pid"] == observed.details["pid"]  # reloaded with SIGHUP, not restarted
    wanted = _sha256(pem(leaf))
    assert served_certificate_sha256("127.0.0.1", ports["mqtts"]) == wanted
    assert served_certificate_sha256("127.0.0.1", ports["wss"]) == wanted
    context = client_context(pem(customer_root[0]))
    for protocol, transport in (("mqtts", "tcp"), ("wss", "websockets")):
        verdict, client = tls_connect(
            ports[protocol], context, username="alice", password="alice-pw", transport=transport
        )
        assert verdict == "accepted", protocol
        client.publish(f"plant/{protocol}", b"over tls").wait_for_publish(10)
        _close(client)
    # The plain client never noticed: still connected, still receiving.
    assert sorted(plain.received(2)) == [("plant/mqtts", b"over tls"), ("plant/wss", b"over tls")]
    assert not plain.disconnected.is_set()
    plain.close()
    # And a client that only trusts the control plane's CA now refuses the broker.
    verdict, _ = tls_connect(ports["mqtts"], client_context(authority[0]), username="alice", password="alice-pw")
    assert verdict.startswith("refused")


def test_two_way_tls_refuses_clients_without_certificate_and_admits_those_the_client_ca_signed(driver, authority):
    client_root = make_ca("Acme Devices CA")
    spec = _spec(
        tls=_server_material(authority, has_client_ca=True, verify_peer=True, client_ca_pem=pem(client_root[0]))
    )
    observed = driver.apply(spec)
    assert observed.details["tls"] == "two-way: client certificates required"
    device = make_leaf(client_root, "device-17", client=True)
    impostor = make_leaf(make_ca("Impostor CA"), "device-17", client=True)
    for protocol, transport in (("mqtts", "tcp"), ("wss", "websockets")):
        port = observed.ports[protocol]
        verdict, _ = tls_connect(
            port, client_context(authority[0]), username="alice", password="alice-pw", transport=transport
        )
        assert verdict.startswith("refused"), (protocol, "no certificate", verdict)
        verdict, _ = tls_connect(
            port,
            client_context(authority[0], certificate=impostor),
            username="alice",
            password="alice-pw",
            transport=transport,
        )
        assert verdict.startswith("refused"), (protocol, "another CA's certificate", verdict)
        verdict, client = tls_connect(
            port,
            client_context(authority[0], certificate=device),
            username="alice",
            password="alice-pw",
            transport=transport,
        )
        assert verdict == "accepted", (protocol, verdict)
        _close(client)
    # Two-way TLS is for mqtts and wss: the plain listener still takes a password alone.
    plain = Client(observed.ports["mqtt"], "alice", "alice-pw")
    assert not plain.connect().is_failure
    plain.close()


def test_certificate_common_name_is_the_username_when_identity_as_username_is_asked(driver, authority):
    client_root = make_ca("Acme Devices CA")
    material = _server_material(
        authority,
        has_client_ca=True,
        verify_peer=True,
        client_ca_pem=pem(client_root[0]),
        use_identity_as_username=True,
    )
    observed = driver.apply(_spec(tls=material))
    port = observed.ports["mqtts"]
    watcher = Client(observed.ports["mqtt"], "ops", "ops-pw")
    assert not watcher.connect().is_failure
    watcher.subscribe("#")
    # No password: the certificate is the authentication, and its CN "alice" gets alice's ACL (secret/# denied).
    verdict, alice = tls_connect(
        port, client_context(authority[0], certificate=make_leaf(client_root, "alice", client=True))
    )
    assert verdict == "accepted", verdict
    alice.publish("secret/plans", b"denied").wait_for_publish(10)
    alice.publish("public/news", b"allowed").wait_for_publish(10)
    assert watcher.received(1) == [("public/news", b"allowed")]
    assert watcher.messages.empty()
    _close(alice)
    # A common name that is no MQTT user connects (the certificate is valid) but gets no rules: nothing it
    # publishes goes anywhere.
    verdict, stranger = tls_connect(
        port, client_context(authority[0], certificate=make_leaf(client_root, "stranger", client=True))
    )
    assert verdict == "accepted", verdict
    stranger.publish("public/news", b"from a stranger").wait_for_publish(10)
    _close(stranger)
    alice_again = Client(observed.ports["mqtt"], "alice", "alice-pw")
    assert not alice_again.connect().is_failure
    alice_again.publish("public/news", b"marker")
    assert watcher.received(1) == [("public/news", b"marker")]  # the stranger's message never arrived before it
    alice_again.close()
    watcher.close()


def test_turning_two_way_tls_on_restarts_the_broker_because_mosquitto_reads_cafile_only_at_start(driver, authority):
    spec = _spec(tls=_server_material(authority))
    before = driver.apply(spec)
    client_root = make_ca("Acme Devices CA")
    two_way = dataclasses.replace(
        spec,
        tls=dataclasses.replace(spec.tls, has_client_ca=True, verify_peer=True, client_ca_pem=pem(client_root[0])),
    )
    after = driver.apply(two_way)
    assert after.details["pid"] != before.details["pid"]
    verdict, _ = tls_connect(after.ports["mqtts"], client_context(authority[0]), username="alice", password="alice-pw")
    assert verdict.startswith("refused")


def test_broker_keeps_serving_the_old_certificate_when_it_refuses_the_new_one(driver, authority):
    spec = _spec(tls=_server_material(authority))
    observed = driver.apply(spec)
    served = served_certificate_sha256("127.0.0.1", observed.ports["mqtts"])
    # Well-formed PEM (the allow-list passes it) that mosquitto cannot use: the key belongs to another certificate.
    other = _server_material(authority)
    broken = dataclasses.replace(spec, tls=dataclasses.replace(spec.tls, private_key_pem=other.private_key_pem))
    with pytest.raises(ConfigRejectedError) as refused:
        driver.apply(broken)
    assert "refused the new configuration" in str(refused.value)
    assert refused.value.observed.details["pid"] == observed.details["pid"]
    assert served_certificate_sha256("127.0.0.1", observed.ports["mqtts"]) == served
    verdict, client = tls_connect(
        observed.ports["mqtts"], client_context(authority[0]), username="alice", password="alice-pw"
    )
    assert verdict == "accepted"
    _close(client)


def test_tls_listeners_and_files_go_when_spec_drops_tls(driver, root, authority):
    spec = _spec(tls=_server_material(authority))
    observed = driver.apply(spec)
    assert "mqtts" in observed.ports
    plain = driver.apply(dataclasses.replace(spec, tls=None))
    assert set(plain.ports) == {"mqtt", "ws"}
    assert not (root / spec.name / "tls-server.key").exists()
    assert ALICE.username == "alice"


def test_certificate_left_on_disk_by_an_apply_that_died_before_the_reload_is_served_at_the_next(
    driver, root, authority
):
    spec = _spec(tls=_server_material(authority))
    observed = driver.apply(spec)
    new = _server_material(authority)
    # What an apply killed between writing the files and signalling the broker leaves behind: new files renamed
    # into place, as the driver writes them (the accepted copies keep linking the old ones).
    for name, text in (("tls-server.crt", new.certificate_pem), ("tls-server.key", new.private_key_pem)):
        target = root / spec.name / name
        info = target.stat()
        tmp = target.with_name(f"{name}.new")
        tmp.write_text(text)
        os.chown(tmp, info.st_uid, info.st_gid)
        tmp.chmod(0o600)
        os.replace(tmp, target)
    assert served_certificate_sha256("127.0.0.1", observed.ports["mqtts"]) == _sha256(spec.tls.certificate_pem)

    again = driver.apply(dataclasses.replace(spec, tls=new))

    assert again.details["pid"] == observed.details["pid"]
    assert served_certificate_sha256("127.0.0.1", observed.ports["mqtts"]) == _sha256(new.certificate_pem)
    assert served_certificate_sha256("127.0.0.1", observed.ports["wss"]) == _sha256(new.certificate_pem)
