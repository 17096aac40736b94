"""TLS end to end on real parts: the REST API, a real Celery worker, a real mosquitto broker, real paho clients.

A deployment serves mqtts and wss with the certificate the control plane's CA issued; a client verifying against
the downloaded ca.pem connects, one trusting another CA is refused; the customer's certificate replaces it while a
plain MQTT client stays connected; a client CA turns two-way TLS on; deleting both goes back to the start.
"""

import pytest

from tests.deployments.test_e2e_local import _create_running, setup, wait_for_status, wait_operation  # noqa: F401
from tests.deployments.test_local_driver import Client
from tests.deployments.tls_helpers import client_context, key_pem, make_ca, make_leaf, pem, tls_connect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _served(port):
    from deployments.drivers.local import served_certificate_sha256

    return served_certificate_sha256("127.0.0.1", port)


def _sha256(certificate_pem):
    from deployments import tls

    return tls.certificate_facts(certificate_pem).fingerprint_sha256.replace(":", "").lower()


def _close(client):
    client.loop_stop()
    client.disconnect()


def _accepted(port, context, transport="tcp", **credentials):
    verdict, client = tls_connect(port, context, transport=transport, **credentials)
    if client is not None:
        _close(client)
    return verdict


def test_tls_lifecycle_on_a_real_broker_when_driven_by_the_api(setup, brokers_dir):  # noqa: F811
    client, base, _worker = setup
    url, body = _create_running(client, base, name="secure")
    ports = body["connection"]["ports"]
    assert {"mqtt", "ws", "mqtts", "wss"} <= set(ports)
    assert (
        client.post(f"{url}/mqtt-users", {"username": "plant", "password": "plant-secret"}, format="json").status_code
        == 201
    )
    wait_for_status(client, url, "running")
    login = {"username": "plant", "password": "plant-secret"}

    # 1. The issued certificate, verified against the downloaded CA, on mqtts and wss; another CA is refused.
    ca = client.get(f"{url}/ca.pem")
    assert ca.status_code == 200 and ca["Content-Type"] == "application/x-pem-file"
    ours = client_context(ca.content.decode())
    assert _accepted(ports["mqtts"], ours, **login) == "accepted"
    assert _accepted(ports["wss"], ours, transport="websockets", **login) == "accepted"
    stranger = client_context(pem(make_ca("Someone Else's CA")[0]))
    assert _accepted(ports["mqtts"], stranger, **login).startswith("refused: SSLCertVerificationError")
    assert _accepted(ports["wss"], stranger, transport="websockets", **login).startswith("refused")
    issued = [c for c in client.get(f"{url}/certificates").json()["results"] if c["source"] == "control_plane"]
    assert len(issued) == 1 and issued[0]["active"]
    assert _served(ports["mqtts"]) == _sha256(issued[0]["certificate"])

    # 2. The customer's certificate replaces it: reloaded, while a plain MQTT client stays connected.
    plain = Client(ports["mqtt"], "plant", "plant-secret")
    assert not plain.connect().is_failure
    plain.subscribe("line/#")
    root = make_ca("Acme Root CA")
    leaf, key = make_leaf(root, "mqtt.acme.example", sans=("mqtt.acme.example", "127.0.0.1"))
    uploaded = client.post(
        f"{url}/certificates",
        {
            "kind": "server",
            "certificate": pem(leaf),
            "private_key": key_pem(key),
            "chain": pem(root[0]),
            "host_names": ["mqtt.acme.example"],
        },
        format="json",
    )
    assert uploaded.status_code == 201, uploaded.content
    assert uploaded.json()["warnings"] == []  # it covers 127.0.0.1 too
    operation = wait_operation(client, f"{url}/operations/{uploaded.json()['operation']}")
    assert operation["status"] == "succeeded", operation
    assert _served(ports["mqtts"]) == _sha256(pem(leaf))
    assert _served(ports["wss"]) == _sha256(pem(leaf))
    theirs = client_context(pem(root[0]))
    assert _accepted(ports["mqtts"], theirs, **login) == "accepted"
    assert _accepted(ports["wss"], theirs, transport="websockets", **login) == "accepted"
    assert _accepted(ports["mqtts"], ours, **login).startswith("refused")
    publisher = Client(ports["mqtt"], "plant", "plant-secret")
    assert not publisher.connect().is_failure
    publisher.publish("line/1", b"still here")
    assert plain.received(1) == [("line/1", b"still here")]
    assert not plain.disconnected.is_set()
    publisher.close()
    plain.close()

    # 3. Two-way TLS: without a certificate refused, with one the client CA signed accepted.
    devices = make_ca("Acme Devices CA")
    client_ca = client.post(f"{url}/certificates", {"kind": "client_ca", "certificate": pem(devices[0])}, format="json")
    assert client_ca.status_code == 201, client_ca.content
    assert wait_operation(client, f"{url}/operations/{client_ca.json()['operation']}")["status"] == "succeeded"
    device = make_leaf(devices, "sensor-17", client=True)
    for protocol, transport in (("mqtts", "tcp"), ("wss", "websockets")):
        assert _accepted(ports[protocol], theirs, transport=transport, **login).startswith("refused"), protocol
        with_cert = client_context(pem(root[0]), certificate=device)
        assert _accepted(ports[protocol], with_cert, transport=transport, **login) == "accepted", protocol

    # 4. Removing both: one-way TLS with the issued certificate again.
    assert client.delete(f"{url}/certificates/{client_ca.json()['id']}").status_code == 204
    assert client.delete(f"{url}/certificates/{uploaded.json()['id']}").status_code == 204
    wait_for_status(client, url, "running")
    assert _served(ports["mqtts"]) == _sha256(issued[0]["certificate"])
    assert _accepted(ports["mqtts"], ours, **login) == "accepted"
    assert _accepted(ports["wss"], ours, transport="websockets", **login) == "accepted"
    events = [e["kind"] for e in client.get(f"{url}/events?page_size=200").json()["results"]]
    assert "tls.certificate.issued" in events

    # 5. A deleted deployment keeps no key.
    from deployments.models import TlsCertificate

    assert client.delete(url).status_code == 202
    wait_for_status(client, url, "deleted")
    assert not TlsCertificate.objects.filter(deployment__public_id=url.rsplit("/", 1)[1]).exists()
