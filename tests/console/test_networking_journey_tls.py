"""Browser journeys on the TLS tab against a real mosquitto deployment run by a real Celery worker: the customer
downloads ca.pem and connects a real paho client over mqtts and wss with what the tab shows, uploads a certificate
of their own and connects verifying against their CA, removes it and is back on the issued one; bad inputs are shown
beside their fields; the owner issues the server certificate again from our CA with extra names, refused names shown
beside the field, and a real TLS client sees the new serial from the same broker process; a read-only role sees no
remove or upload; another organization's tab is a 404."""

import pathlib
import re
import socket
import ssl
import time
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from playwright.sync_api import expect

from tests.console.helpers import console_path, deployment, make_organization, settle
from tests.deployments.tls_helpers import (
    DAY,
    NOW,
    client_context,
    key_pem,
    make_ca,
    make_leaf,
    new_key,
    pem,
    tls_connect,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LOGIN = {"username": "plant", "password": "plant-secret"}
CERTIFICATE_LABEL = "Server certificate (PEM)"
KEY_LABEL = "Private key (PEM)"
CHAIN_LABEL = "Chain (PEM)"
NAMES_LABEL = "Host names your clients connect to"


def _running(org):
    """A deployment the worker brought up on a real mosquitto, with an MQTT user."""
    from deployments import services

    plant = deployment(org.default_project)
    services.mqtt_user_create(deployment=plant, actor=None, **LOGIN)
    deadline = time.monotonic() + 90
    while True:
        plant.refresh_from_db()
        if plant.is_converged and plant.status == "running":
            return plant
        assert plant.status != "failed", plant.last_error
        assert time.monotonic() < deadline, f"never running: {plant.status}"
        time.sleep(0.2)


def _verdict(port, context, transport="tcp"):
    verdict, client = tls_connect(port, context, transport=transport, **LOGIN)
    if client is not None:
        client.loop_stop()
        client.disconnect()
    return verdict


def _eventually(port, context, wanted, transport="tcp", timeout=45.0):
    """The verdict once it is `wanted` (a certificate change reaches the broker asynchronously), or the last one."""
    deadline = time.monotonic() + timeout
    while True:
        verdict = _verdict(port, context, transport)
        if verdict.startswith(wanted) or time.monotonic() > deadline:
            return verdict
        time.sleep(0.3)


def _address(page, name):
    url = page.locator(f"#tls-url-{name}").inner_text()
    found = re.fullmatch(rf"{name}://([^:/]+):(\d+)(/mqtt)?", url)
    assert found, url
    return found.group(1), int(found.group(2))


class ServerCertificate(NamedTuple):
    """A customer's server certificate as they would upload it, each part PEM."""

    certificate: str
    key: str
    chain: str  # the root CA that signed it


def _server(sans=("mqtt.acme.example", "127.0.0.1"), **kwargs) -> ServerCertificate:
    root = make_ca("Acme Root CA")
    leaf, key = make_leaf(root, sans[0], sans=sans, **kwargs)
    return ServerCertificate(certificate=pem(leaf), key=key_pem(key), chain=pem(root[0]))


def test_customer_connects_over_mqtts_and_wss_with_what_the_tab_gives_when_following_it(site, celery_worker):
    org = make_organization(name="Secure")
    plant = _running(org)
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant))
    page.get_by_role("link", name="TLS").click()
    expect(page.get_by_role("heading", name="The control plane's CA")).to_be_visible()
    issued = page.get_by_role("region", name=re.compile("^Server certificate: issued by the control plane"))
    expect(issued).to_contain_text("in use")
    expect(issued).to_contain_text("127.0.0.1")
    expect(page.locator("#tls-cmd-sub")).to_contain_text(f"--cafile {plant.public_id}-ca.pem")
    page.check("issued")

    # 1. The downloaded CA verifies the issued certificate on both TLS addresses the tab shows.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download ca.pem").click()
    assert download.value.suggested_filename == f"{plant.public_id}-ca.pem"
    ca = pathlib.Path(download.value.path()).read_text()
    assert ca.startswith("-----BEGIN CERTIFICATE-----")
    host, mqtts = _address(page, "mqtts")
    wss_host, wss = _address(page, "wss")
    assert host == wss_host == "127.0.0.1"
    ours = client_context(ca)
    assert _verdict(mqtts, ours) == "accepted"
    assert _verdict(wss, ours, "websockets") == "accepted"
    stranger = client_context(pem(make_ca("Someone Else's CA")[0]))
    assert _verdict(mqtts, stranger).startswith("refused")

    # 2. Their own certificate: the certificate pasted, the key and the chain chosen as files.
    own = _server()
    page.get_by_label(CERTIFICATE_LABEL).fill(own.certificate)
    page.get_by_label("…or the private key file").set_input_files(
        files=[{"name": "server.key", "mimeType": "application/x-pem-file", "buffer": own.key.encode()}]
    )
    page.get_by_label("…or the chain file").set_input_files(
        files=[{"name": "chain.pem", "mimeType": "application/x-pem-file", "buffer": own.chain.encode()}]
    )
    page.get_by_label(NAMES_LABEL).fill("mqtt.acme.example")
    page.get_by_role("button", name="Upload server certificate").click()
    expect(page.get_by_role("status")).to_contain_text(re.compile(r"Server certificate crt_\w+ added: the brokers"))
    mine = page.get_by_role("region", name=re.compile("^Server certificate: yours"))
    expect(mine).to_contain_text("CN=mqtt.acme.example,O=Acme")
    expect(mine).to_contain_text("CN=Acme Root CA,O=Acme")
    expect(page.get_by_role("region", name=re.compile("^Server certificate: issued"))).to_contain_text("not in use")
    expect(page.locator("#tls-cmd-sub")).to_contain_text("--cafile your-ca.pem")
    assert own.key not in page.content()
    page.check("own-certificate")
    theirs = client_context(own.chain)
    assert _eventually(mqtts, theirs, "accepted") == "accepted"
    assert _eventually(wss, theirs, "accepted", "websockets") == "accepted"
    assert _verdict(mqtts, ours).startswith("refused")

    # 3. Removed after a confirmation: the issued certificate is served again.
    page.get_by_role("link", name=re.compile("^Remove server certificate crt_")).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Remove server certificate crt_\w+\?"))).to_be_visible()
    expect(page.get_by_text("serve the certificate the control plane issued again")).to_be_visible()
    page.check("confirm-remove")
    page.get_by_role("button", name=re.compile(r"^Remove crt_")).click()
    expect(page.get_by_role("status")).to_contain_text(re.compile(r"Server certificate crt_\w+ removed"))
    expect(page.get_by_role("region", name=re.compile("^Server certificate: yours"))).to_have_count(0)
    expect(page.get_by_role("link", name=re.compile("^Remove"))).to_have_count(0)
    assert _eventually(mqtts, ours, "accepted") == "accepted"
    assert _verdict(mqtts, theirs).startswith("refused")
    page.check("removed")


def _served(port: int, ca_pem: str, server_hostname: str) -> x509.Certificate:
    """The certificate the broker presents now, to a client that verifies it against `ca_pem` for `server_hostname`
    (the name checked against its SANs) while connecting to 127.0.0.1."""
    context = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as sock:
            der = sock.getpeercert(binary_form=True)
    assert der is not None, "the broker presented no certificate"
    return x509.load_der_x509_certificate(der)


def _eventually_serial(port: int, ca_pem: str, server_hostname: str, serial: int, timeout: float = 45.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = _served(port, ca_pem, server_hostname).serial_number
        except (OSError, ssl.SSLError):
            seen = -1  # not (yet) a certificate for that name
        if seen == serial or time.monotonic() > deadline:
            return seen
        time.sleep(0.3)


def test_owner_issues_a_certificate_with_extra_names_and_the_same_broker_serves_it(site, celery_worker, brokers_dir):
    from cryptography.x509 import load_pem_x509_certificate

    from deployments import tls_services
    from deployments.models import TlsCertificate
    from tests.celery_worker import broker_pids

    org = make_organization(name="Rotate")
    plant = _running(org)
    pids = broker_pids(brokers_dir)
    assert len(pids) == 1
    ca = tls_services.certificate_authority().certificate_pem
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant, "tls"))
    _host, mqtts = _address(page, "mqtts")
    before = _served(mqtts, ca, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        _served(mqtts, ca, "mqtt.plant.example")  # not a name of the issued certificate yet
    expect(page.get_by_role("heading", name="Issue from our CA")).to_be_visible()
    page.check("issue-form")

    # Refused names are shown beside the field; nothing is issued.
    names = page.get_by_label("Extra names (SANs)")
    names.fill("mqtt.plant.example *.plant.example")
    page.get_by_role("button", name="Issue certificate").click()
    _refused_beside(page, "Extra names (SANs)", "Name 2 ('*.plant.example'): wildcard names are not issued")
    expect(names).to_have_value("mqtt.plant.example *.plant.example")
    names.fill("mqtt.plant.example\x07")
    page.get_by_role("button", name="Issue certificate").click()
    _refused_beside(page, "Extra names (SANs)", "Control characters are not allowed in names.")
    page.check("issue-refused")
    row = TlsCertificate.objects.get(deployment=plant, source="control_plane")
    assert row.fingerprint_sha256.replace(":", "").lower() == before.fingerprint(hashes.SHA256()).hex()

    # Issued: the page shows the new fingerprint and expiry, and the new names on the issued certificate.
    names.fill("mqtt.plant.example, 10.20.0.5")
    page.get_by_role("button", name="Issue certificate").click()
    row.refresh_from_db()
    status = page.get_by_role("status")
    expect(status).to_contain_text(f"Server certificate {row.public_id} issued by the control plane's CA")
    expect(status).to_contain_text(f"fingerprint {row.fingerprint_sha256}")
    expect(status).to_contain_text(f"valid until {row.not_after:%Y-%m-%d %H:%M} UTC")
    issued = page.get_by_role("region", name=re.compile("^Server certificate: issued by the control plane"))
    expect(issued).to_contain_text("mqtt.plant.example")
    expect(issued).to_contain_text("10.20.0.5")
    expect(page.locator(f"#fp-{row.public_id}")).to_have_text(row.fingerprint_sha256)
    page.check("issued-again")

    # A real TLS client, verifying against our CA for the new name, sees the new serial from the same process.
    serial = load_pem_x509_certificate(row.certificate_pem.encode()).serial_number
    assert serial != before.serial_number
    assert _eventually_serial(mqtts, ca, "mqtt.plant.example", serial) == serial
    assert _served(mqtts, ca, "10.20.0.5").serial_number == serial
    assert broker_pids(brokers_dir) == pids, "the broker restarted instead of reloading"
    assert _verdict(mqtts, client_context(ca)) == "accepted"


def _submit(page):
    page.get_by_role("button", name="Upload server certificate").click()


def _refused_beside(page, label, message):
    """`message` is in the list Django renders beside the field labelled `label` (its `<id>_error`), which a screen
    reader also reads as the field's description, and the field is marked invalid."""
    field = page.get_by_label(label, exact=True)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator(f"#{field.get_attribute('id')}_error")).to_contain_text(message)
    expect(field).to_have_accessible_description(re.compile(re.escape(message)))


def test_bad_inputs_are_shown_beside_their_fields_and_nothing_is_added_when_uploaded(site):
    from deployments.models import TlsCertificate

    org = make_organization(name="Careful")
    plant = settle(deployment(org.default_project))
    page = site.page(org.owner, name="owner")
    page.goto(console_path(plant, "tls"))
    own = _server()

    # Not PEM at all.
    page.get_by_label(CERTIFICATE_LABEL).fill("hello, I am a certificate")
    page.get_by_label(KEY_LABEL).fill(own.key)
    _submit(page)
    _refused_beside(page, CERTIFICATE_LABEL, "Not PEM")
    page.check("not-pem")

    # A key that is not the certificate's: the key is not sent back, the certificate is.
    page.get_by_label(CERTIFICATE_LABEL).fill(own.certificate)
    page.get_by_label(KEY_LABEL).fill(key_pem(new_key()))
    page.get_by_label(CHAIN_LABEL).fill(own.chain)
    _submit(page)
    _refused_beside(page, KEY_LABEL, "does not match the certificate's public key")
    expect(page.get_by_label(KEY_LABEL)).to_have_value("")
    expect(page.get_by_label(CERTIFICATE_LABEL)).to_have_value(own.certificate)
    page.check("key-mismatch")

    # Expired.
    expired = _server(not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    page.get_by_label(CERTIFICATE_LABEL).fill(expired.certificate)
    page.get_by_label(KEY_LABEL).fill(expired.key)
    page.get_by_label(CHAIN_LABEL).fill(expired.chain)
    _submit(page)
    _refused_beside(page, CERTIFICATE_LABEL, "has expired")

    # Names the certificate does not cover.
    page.get_by_label(CERTIFICATE_LABEL).fill(own.certificate)
    page.get_by_label(KEY_LABEL).fill(own.key)
    page.get_by_label(CHAIN_LABEL).fill(own.chain)
    page.get_by_label(NAMES_LABEL).fill("mqtt.other.example")
    _submit(page)
    _refused_beside(page, NAMES_LABEL, "mqtt.other.example")
    page.check("wrong-names")

    # Control characters, in a PEM box and in a host name.
    page.get_by_label(CERTIFICATE_LABEL).fill(own.certificate.replace("\n", "\x07\n", 1))
    page.get_by_label(KEY_LABEL).fill(own.key)
    page.get_by_label(NAMES_LABEL).fill("mqtt.acme.example\x1b[2J")
    _submit(page)
    _refused_beside(page, CERTIFICATE_LABEL, "no other control character; found U+0007")
    _refused_beside(page, NAMES_LABEL, "Must not contain control characters")
    page.check("control-characters")

    # A client CA that is no CA.
    leaf, _ = make_leaf(None, "not-a-ca")
    page.get_by_label("Client CA certificates (PEM)").fill(pem(leaf))
    page.get_by_role("button", name="Upload client CA").click()
    _refused_beside(page, "Client CA certificates (PEM)", "not a CA")
    page.check("client-ca-not-ca")
    assert not TlsCertificate.objects.filter(deployment=plant).exists()


def test_read_only_role_sees_no_remove_or_upload_and_another_organizations_tab_is_not_found(site):
    from deployments import tls_services

    org = make_organization(name="Watched")
    plant = settle(deployment(org.default_project))
    tls_services.server_certificate_ensure(deployment=plant)
    own = _server()
    tls_services.tls_certificate_create(
        deployment=plant, actor=None, kind="server", certificate=own.certificate, private_key=own.key, chain=own.chain
    )
    auditor, _ = org.add_member(roles=["auditor"], email="audrey@example.com")
    page = site.page(auditor, name="auditor")
    page.goto(console_path(plant, "tls"))
    expect(page.get_by_role("region", name=re.compile("^Server certificate: yours"))).to_be_visible()
    expect(
        page.get_by_text("Your role can look at this deployment's certificates but not change them.")
    ).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("^Remove"))).to_have_count(0)
    expect(page.get_by_role("button", name="Upload server certificate")).to_have_count(0)
    expect(page.get_by_role("link", name="Download ca.pem")).to_be_visible()
    page.check("auditor")

    other = make_organization(name="Elsewhere")
    theirs = settle(deployment(other.default_project, name="theirs"))
    owner = site.page(org.owner, name="owner")
    for path in (console_path(theirs, "tls"), console_path(theirs, "tls/ca.pem")):
        assert owner.goto(path).status == 404, path
    owner.goto(console_path(theirs, "tls"))
    owner.check("not-found")


def test_tls_pages_pass_axe_in_every_state_when_shown_light_and_dark(site):
    """Each state the tab can be in, set through the services (the broker side is the first journey's): no
    certificate yet, the issued one with the TLS addresses, the customer's own with a client CA beside an expiring
    and an expired one, a refused upload, each remove confirmation, a read-only role and a deleted deployment."""
    from deployments import services, tls_services
    from deployments.models import Deployment, TlsCertificate

    org = make_organization(name="Tour")
    fresh = settle(deployment(org.default_project, name="fresh"))
    plant = settle(deployment(org.default_project, name="plant"))
    Deployment.objects.filter(pk=plant.pk).update(
        endpoints={"host": "127.0.0.1", "ports": {"mqtt": 21883, "ws": 21884, "mqtts": 21885, "wss": 21886}}
    )
    tls_services.server_certificate_ensure(deployment=plant)
    issued = TlsCertificate.objects.get(deployment=plant)
    own = _server(not_after=NOW + 12 * DAY)
    mine, _, _ = tls_services.tls_certificate_create(
        deployment=plant, actor=None, kind="server", certificate=own.certificate, private_key=own.key, chain=own.chain
    )
    devices = make_ca("Acme Devices CA")
    client_ca, _, _ = tls_services.tls_certificate_create(
        deployment=plant, actor=None, kind="client_ca", certificate=pem(devices[0]), use_identity_as_username=True
    )
    # Time passes for the issued one (renewal is the reconciler's): the tab marks it expired.
    TlsCertificate.objects.filter(pk=issued.pk).update(not_after=NOW - DAY)
    gone = settle(deployment(org.default_project, name="gone"))
    tls_services.server_certificate_ensure(deployment=gone)
    services.deployment_delete(deployment=gone, actor=None)
    auditor, _ = org.add_member(roles=["auditor"], email="audrey@example.com")
    pages = [
        ("no-certificate", console_path(fresh, "tls")),
        ("all-states", console_path(plant, "tls")),
        ("remove-server", console_path(plant, f"tls/{mine.public_id}/delete")),
        ("remove-client-ca", console_path(plant, f"tls/{client_ca.public_id}/delete")),
        ("remove-issued", console_path(plant, f"tls/{issued.public_id}/delete")),
        ("deleted", console_path(gone, "tls")),
    ]
    for scheme in ("light", "dark"):
        page = site.page(org.owner, name=scheme, color_scheme=scheme)
        for label, path in pages:
            page.goto(path)
            expect(page.locator("main")).to_be_visible()
            page.check(label)
        page.goto(console_path(plant, "tls"))
        page.get_by_label(CERTIFICATE_LABEL).fill(own.certificate)
        page.get_by_label(KEY_LABEL).fill(key_pem(new_key()))
        _submit(page)
        _refused_beside(page, KEY_LABEL, "does not match")
        page.check("refused")
        viewer = site.page(auditor, name=f"auditor-{scheme}", color_scheme=scheme)
        viewer.goto(console_path(plant, "tls"))
        viewer.check("read-only")
