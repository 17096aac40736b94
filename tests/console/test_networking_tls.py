"""The TLS tab through Django's test client: the CA download, the certificates with their facts and expiry, uploads
(pasted or as files) with each check's message beside its field and nothing stored when refused, the private key
never sent back, remove with confirmation, the issued certificate kept, and what each role may do."""

import re

import pytest
from cryptography.x509.oid import ExtensionOID
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import AuditEvent
from deployments import tls_services
from deployments.models import CertificateAuthority, TlsCertificate
from tests.console.helpers import console_path, deployment, settle
from tests.deployments.tls_helpers import (
    DAY,
    NOW,
    key_pem,
    make_ca,
    make_leaf,
    make_with_malformed_extension,
    new_key,
    pem,
    signed_with_sha1,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def plant(owner_org):
    return settle(deployment(owner_org.default_project))


@pytest.fixture
def owner(client, owner_org):
    client.force_login(owner_org.owner)
    return client


def _tab(plant, page=""):
    return console_path(plant, f"tls/{page}" if page else "tls")


def _server(sans=("mqtt.acme.example",), **kwargs):
    root = make_ca("Acme Root CA")
    intermediate = make_ca("Acme Issuing CA", issuer=root)
    leaf, key = make_leaf(intermediate, sans[0], sans=sans, **kwargs)
    return pem(leaf), key_pem(key), pem(intermediate[0], root[0])


def _server_post(certificate, key, chain, **extra):
    return {
        "kind": "server",
        "server-certificate": certificate,
        "server-private_key": key,
        "server-chain": chain,
        **extra,
    }


def _errors_beside(html: str, field: str) -> list[str]:
    found = re.search(rf'<ul class="errorlist" id="id_{field}_error">(.*?)</ul>', html, re.S)
    assert found, f"no errors beside {field}"
    element = re.search(rf'<(?:textarea|input)\b[^>]*\bid="id_{field}"[^>]*>', html)
    assert element and 'aria-invalid="true"' in element.group(0), field
    return re.findall(r"<li>(.*?)</li>", found.group(1))


def test_tab_shows_the_ca_and_the_issued_certificate_with_its_facts_when_visited(owner, plant):
    tls_services.server_certificate_ensure(deployment=plant)
    issued = TlsCertificate.objects.get(deployment=plant)
    authority = CertificateAuthority.objects.get()
    html = owner.get(_tab(plant)).content.decode()
    assert 'aria-current="page">TLS</a>' in html
    assert authority.subject in html and authority.fingerprint_sha256 in html
    assert "Download ca.pem" in html
    assert "Server certificate: issued by the control plane" in html and "in use" in html
    for fact in (issued.subject, issued.issuer, issued.fingerprint_sha256, issued.key_type, "<code>127.0.0.1</code>"):
        assert fact in html, fact
    assert issued.not_after.strftime("%Y-%m-%d %H:%M") in html and issued.not_before.strftime("%Y-%m-%d %H:%M") in html
    assert f"tls/{issued.public_id}/delete" not in html  # the issued one cannot be removed
    assert "Upload server certificate" in html and "Upload client CA" in html


def test_ca_downloads_as_a_pem_file_when_asked(owner, plant):
    response = owner.get(_tab(plant, "ca.pem"))
    assert response.status_code == 200 and response["Content-Type"] == "application/x-pem-file"
    assert response["Content-Disposition"] == f'attachment; filename="{plant.public_id}-ca.pem"'
    assert response.content.decode() == CertificateAuthority.objects.get().certificate_pem
    assert response.content.startswith(b"-----BEGIN CERTIFICATE-----")


def test_key_that_does_not_match_is_refused_beside_the_key_and_never_echoed_when_uploaded(owner, plant):
    certificate, _key, chain = _server()
    other_key = key_pem(new_key())
    response = owner.post(_tab(plant), _server_post(certificate, other_key, chain))
    html = response.content.decode()
    assert response.status_code == 400
    assert _errors_beside(html, "server-private_key") == [
        "This private key does not match the certificate&#x27;s public key."
    ]
    assert "PRIVATE KEY" not in html  # the key typed is not sent back
    assert "BEGIN CERTIFICATE" in html  # the certificate is, ready to try again
    assert not TlsCertificate.objects.filter(source="customer").exists()
    assert not AuditEvent.objects.filter(action__startswith="deployment.tls_certificate").exists()


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"server-certificate": ""}, "server-certificate", "This field is required."),
        ({"server-certificate": "hello"}, "server-certificate", "Not PEM"),
        ({"server-private_key": ""}, "server-private_key", "Required for a server certificate"),
        (
            {"server-chain": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            "server-chain",
            "Not a valid PEM certificate",
        ),
        ({"server-host_names": "other.example"}, "server-host_names", "other.example"),
        ({"server-certificate": "-----BEGIN CERTIFICATE-----\x07"}, "server-certificate", "no other control character"),
    ],
)
def test_each_refused_check_is_shown_beside_its_field_when_uploaded(owner, plant, change, field, message):
    certificate, key, chain = _server()
    html = owner.post(_tab(plant), {**_server_post(certificate, key, chain), **change}).content.decode()
    messages = _errors_beside(html, field)
    assert any(message in m for m in messages), messages
    assert not TlsCertificate.objects.filter(source="customer").exists()


def test_expired_certificate_is_refused_beside_the_certificate_when_uploaded(owner, plant):
    certificate, key, chain = _server(not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    html = owner.post(_tab(plant), _server_post(certificate, key, chain)).content.decode()
    assert any("has expired" in m for m in _errors_beside(html, "server-certificate"))


def test_chain_whose_intermediate_is_signed_with_sha1_is_refused_beside_the_chain_saying_so_when_uploaded(owner, plant):
    root_key = new_key("rsa2048")
    root = make_ca("Acme Root CA", key=root_key)
    intermediate = make_ca("Acme Issuing CA", issuer=root)
    leaf, key = make_leaf(intermediate, "mqtt.acme.example", sans=("mqtt.acme.example",))
    chain = pem(signed_with_sha1(intermediate[0], root_key), root[0])
    response = owner.post(_tab(plant), _server_post(pem(leaf), key_pem(key), chain))
    assert response.status_code == 400
    messages = _errors_beside(response.content.decode(), "server-chain")
    assert len(messages) == 1 and "signed with SHA-1" in messages[0] and "too weak" in messages[0], messages
    assert "self-signed" not in messages[0], messages
    assert not TlsCertificate.objects.filter(source="customer").exists()


def test_valid_certificate_is_listed_with_its_dates_and_replaces_the_issued_one_when_uploaded(owner, owner_org, plant):
    tls_services.server_certificate_ensure(deployment=plant)
    certificate, key, chain = _server(not_after=NOW + 10 * DAY)
    response = owner.post(
        _tab(plant), _server_post(certificate, key, chain, **{"server-host_names": "mqtt.acme.example"})
    )
    assert response.status_code == 302 and response["Location"] == _tab(plant)
    mine = TlsCertificate.objects.get(source="customer")
    html = owner.get(response["Location"]).content.decode()
    assert f"Server certificate {mine.public_id} added: the brokers take it up with operation op_" in html
    assert "127.0.0.1" in html  # the warning: it does not cover the deployment's own address
    assert "Server certificate: yours" in html and "CN=mqtt.acme.example,O=Acme" in html
    assert "CN=Acme Issuing CA,O=Acme" in html and mine.fingerprint_sha256 in html
    assert mine.not_after.strftime("%Y-%m-%d %H:%M") in html
    assert re.search(r'id="not-after-' + mine.public_id + r'">.*?expires in (9|10) days</span>', html)
    assert "expires soon" in html and "not in use" in html  # the issued one gave way
    assert "PRIVATE KEY" not in html
    audit = AuditEvent.objects.get(action="deployment.tls_certificate.create")
    assert audit.actor_id == owner_org.owner.pk and audit.summary["certificate"] == mine.public_id


def test_files_are_read_in_place_of_the_text_boxes_when_chosen(owner, plant):
    certificate, key, chain = _server()
    body = {
        "kind": "server",
        "server-certificate_file": SimpleUploadedFile("cert.pem", certificate.encode()),
        "server-private_key_file": SimpleUploadedFile("key.pem", key.encode()),
        "server-chain_file": SimpleUploadedFile("chain.pem", chain.encode()),
    }
    assert owner.post(_tab(plant), body).status_code == 302
    assert TlsCertificate.objects.get(source="customer").subject == "CN=mqtt.acme.example,O=Acme"


def test_resubmitted_form_with_another_file_is_refused_not_replayed_when_the_form_key_repeats(owner, plant):
    # Back to the page (same form key), another file chosen, submit: replaying the first answer would say "done"
    # while the second certificate was never looked at.
    first, first_key, first_chain = _server(sans=("first.acme.example",))
    second, second_key, second_chain = _server(sans=("second.acme.example",))

    def body(certificate, key, chain):
        return {
            "kind": "server",
            "form_key": "b" * 32,
            "server-certificate_file": SimpleUploadedFile("cert.pem", certificate.encode()),
            "server-private_key_file": SimpleUploadedFile("key.pem", key.encode()),
            "server-chain_file": SimpleUploadedFile("chain.pem", chain.encode()),
        }

    assert owner.post(_tab(plant), body(first, first_key, first_chain)).status_code == 302
    again = owner.post(_tab(plant), body(second, second_key, second_chain))
    assert again.status_code == 422, again.status_code
    assert "already submitted with other values" in again.content.decode()
    assert TlsCertificate.objects.get(source="customer").subject == "CN=first.acme.example,O=Acme"
    replayed = owner.post(_tab(plant), body(first, first_key, first_chain))
    assert replayed.status_code == 302 and TlsCertificate.objects.filter(source="customer").count() == 1


def test_binary_or_oversized_files_are_refused_beside_their_field_when_chosen(owner, plant):
    certificate, key, chain = _server()
    der = b"\x30\x82\x01\x0a\xff\xfe"
    html = owner.post(
        _tab(plant),
        {
            "kind": "server",
            "server-certificate_file": SimpleUploadedFile("cert.der", der),
            "server-private_key": key,
            "server-chain_file": SimpleUploadedFile("chain.pem", b"A" * 70000),
        },
    ).content.decode()
    assert _errors_beside(html, "server-certificate") == [
        "This file is not PEM text (PEM is plain ASCII): export it as PEM, not DER."
    ]
    assert _errors_beside(html, "server-chain") == ["This file is 70,000 bytes; PEM text of at most 65,536."]
    assert not TlsCertificate.objects.exists()


def test_client_ca_is_added_and_its_choices_checked_when_uploaded(owner, plant):
    ca, _ = make_ca("Acme Devices CA")
    refused = owner.post(_tab(plant), {"kind": "client_ca", "client-ca-certificate": pem(ca)})
    assert refused.status_code == 400
    assert "requires a client certificate or never asks for one" in "".join(
        _errors_beside(refused.content.decode(), "client-ca-require_client_certificate")
    )
    body = {
        "kind": "client_ca",
        "client-ca-certificate": pem(ca),
        "client-ca-require_client_certificate": "on",
        "client-ca-use_identity_as_username": "on",
    }
    assert owner.post(_tab(plant), body).status_code == 302
    row = TlsCertificate.objects.get(kind="client_ca")
    assert row.require_client_certificate and row.use_identity_as_username
    html = owner.get(_tab(plant)).content.decode()
    assert "Client CA (two-way TLS)" in html and "CN=Acme Devices CA,O=Acme" in html
    assert "the client certificate&#x27;s common name" in html or "the client certificate's common name" in html


def test_client_ca_with_an_extension_that_cannot_be_parsed_is_refused_beside_the_certificate_when_uploaded(
    owner, plant
):
    broken, _ = make_with_malformed_extension(ExtensionOID.BASIC_CONSTRAINTS)
    body = {"kind": "client_ca", "client-ca-certificate": pem(broken), "client-ca-require_client_certificate": "on"}
    response = owner.post(_tab(plant), body)
    assert response.status_code == 400
    messages = _errors_beside(response.content.decode(), "client-ca-certificate")
    assert any("The certificate has an extension that cannot be parsed" in m for m in messages), messages
    assert not TlsCertificate.objects.filter(kind="client_ca").exists()


def test_remove_asks_for_confirmation_and_the_issued_one_stays_when_confirmed(owner, plant):
    tls_services.server_certificate_ensure(deployment=plant)
    certificate, key, chain = _server()
    owner.post(_tab(plant), _server_post(certificate, key, chain))
    mine = TlsCertificate.objects.get(source="customer")
    issued = TlsCertificate.objects.get(source="control_plane")
    confirm = owner.get(_tab(plant, f"{mine.public_id}/delete")).content.decode()
    assert (
        f"Remove {mine.public_id}</button>" in confirm and "serve the certificate the control plane issued" in confirm
    )
    assert TlsCertificate.objects.filter(pk=mine.pk).exists()
    response = owner.post(_tab(plant, f"{mine.public_id}/delete"), follow=True)
    assert f"Server certificate {mine.public_id} removed" in response.content.decode()
    assert list(TlsCertificate.objects.values_list("public_id", flat=True)) == [issued.public_id]
    assert AuditEvent.objects.filter(action="deployment.tls_certificate.delete").count() == 1
    # The issued one: the confirmation says why not, and a crafted POST is refused with the service's reason.
    assert "cannot be removed" in owner.get(_tab(plant, f"{issued.public_id}/delete")).content.decode()
    refused = owner.post(_tab(plant, f"{issued.public_id}/delete"), follow=True).content.decode()
    assert "issued and renewed by the control plane" in refused
    assert TlsCertificate.objects.filter(pk=issued.pk).exists()


@pytest.mark.parametrize("role", ["auditor", "accountant"])
def test_read_only_role_sees_certificates_and_downloads_the_ca_but_is_refused_changes(client, owner_org, plant, role):
    tls_services.server_certificate_ensure(deployment=plant)
    certificate, key, chain = _server()
    user, _ = owner_org.add_member(roles=[role])
    client.force_login(user)
    html = client.get(_tab(plant)).content.decode()
    assert "Server certificate: issued by the control plane" in html and "Upload server certificate" not in html
    assert "Your role can look at this deployment's certificates but not change them." in html
    assert client.get(_tab(plant, "ca.pem")).status_code == 200
    assert client.post(_tab(plant), _server_post(certificate, key, chain)).status_code == 403
    issued = TlsCertificate.objects.get()
    assert client.post(_tab(plant, f"{issued.public_id}/delete")).status_code == 403
    assert client.get(_tab(plant, f"{issued.public_id}/delete")).status_code == 403
    assert TlsCertificate.objects.count() == 1


def test_project_user_uploads_a_certificate_when_granted_the_project(client, owner_org, plant):
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    client.force_login(user)
    certificate, key, chain = _server()
    assert client.post(_tab(plant), _server_post(certificate, key, chain)).status_code == 302
    assert TlsCertificate.objects.get(source="customer").created_by == user


def test_another_organizations_tab_and_certificates_are_not_found(client, owner_org, org_factory):
    other = org_factory()
    theirs = settle(deployment(other.default_project, name="theirs"))
    tls_services.server_certificate_ensure(deployment=theirs)
    cert = TlsCertificate.objects.get(deployment=theirs)
    mine = settle(deployment(owner_org.default_project, name="mine"))
    client.force_login(owner_org.owner)
    for path in (_tab(theirs), _tab(theirs, "ca.pem"), _tab(mine, f"{cert.public_id}/delete")):
        assert client.get(path).status_code == 404, path
    certificate, key, chain = _server()
    assert client.post(_tab(theirs), _server_post(certificate, key, chain)).status_code == 404
    assert client.post(_tab(mine, f"{cert.public_id}/delete")).status_code == 404
    assert TlsCertificate.objects.filter(deployment=theirs).count() == 1


def test_unknown_kind_is_not_found_when_crafted(owner, plant):
    assert owner.post(_tab(plant), {"kind": "root"}).status_code == 404
    assert not TlsCertificate.objects.exists()


def test_tls_addresses_and_command_follow_the_certificates_when_the_deployment_serves(owner, plant):
    from html import unescape

    from deployments.models import Deployment

    assert (
        "The mqtts and wss addresses appear once the deployment is running." in owner.get(_tab(plant)).content.decode()
    )
    Deployment.objects.filter(pk=plant.pk).update(
        endpoints={"host": "127.0.0.1", "ports": {"mqtt": 21883, "ws": 21884, "mqtts": 21885, "wss": 21886}}
    )

    def shown():
        html = unescape(owner.get(_tab(plant)).content.decode())
        urls = re.findall(r'<code id="tls-url-(\w+)">([^<]*)</code>', html)
        return dict(urls), re.search(r'<pre id="tls-cmd-sub">([^<]*)</pre>', html).group(1)

    urls, command = shown()
    assert urls == {"mqtts": "mqtts://127.0.0.1:21885", "wss": "wss://127.0.0.1:21886/mqtt"}
    assert command == (
        f'mosquitto_sub --cafile {plant.public_id}-ca.pem -h 127.0.0.1 -p 21885 -u "$MQTT_USERNAME" '
        '-P "$MQTT_PASSWORD" -t console/test -v'
    )
    certificate, key, chain = _server(sans=("mqtt.acme.example", "127.0.0.1"))
    assert owner.post(_tab(plant), _server_post(certificate, key, chain)).status_code == 302
    ca, _ = make_ca("Acme Devices CA")
    body = {
        "kind": "client_ca",
        "client-ca-certificate": pem(ca),
        "client-ca-require_client_certificate": "on",
        "client-ca-use_identity_as_username": "on",
    }
    assert owner.post(_tab(plant), body).status_code == 302
    _urls, command = shown()
    assert command == (
        "mosquitto_sub --cafile your-ca.pem -h 127.0.0.1 -p 21885 --cert client.crt --key client.key -t console/test -v"
    )


def test_deleted_deployment_refuses_uploads_and_removes_with_the_services_reason_when_crafted(owner, plant):
    from deployments import services

    certificate, key, chain = _server()
    assert owner.post(_tab(plant), _server_post(certificate, key, chain)).status_code == 302
    mine = TlsCertificate.objects.get(source="customer")
    services.deployment_delete(deployment=plant, actor=None)
    html = owner.get(_tab(plant)).content.decode()
    assert "Nothing can be changed on a deleted deployment." in html and "Remove…" not in html
    refused = owner.post(_tab(plant), _server_post(certificate, key, chain))
    assert refused.status_code == 409 and "deleted" in refused.content.decode()
    removed = owner.post(_tab(plant, f"{mine.public_id}/delete"), follow=True)
    assert "deleted" in removed.content.decode()
    assert list(TlsCertificate.objects.filter(source="customer")) == [mine]


def test_issue_form_rotates_the_issued_certificate_with_extra_names_and_says_so_when_submitted(owner, plant):
    tls_services.server_certificate_ensure(deployment=plant)
    before = TlsCertificate.objects.get()
    html = owner.get(_tab(plant)).content.decode()
    assert "Issue from our CA" in html and 'id="id_issue-extra_sans"' in html

    response = owner.post(
        _tab(plant), {"kind": "issue", "issue-extra_sans": "mqtt.plant.example,\n10.20.0.5"}, follow=True
    )
    assert response.status_code == 200
    row = TlsCertificate.objects.get()
    assert row.pk == before.pk and row.fingerprint_sha256 != before.fingerprint_sha256
    assert row.host_names == ["mqtt.plant.example", "10.20.0.5"]
    assert {"mqtt.plant.example", "10.20.0.5"} <= set(row.sans)
    html = response.content.decode()
    assert f"fingerprint {row.fingerprint_sha256}" in html
    assert f"valid until {row.not_after:%Y-%m-%d %H:%M} UTC" in html
    assert AuditEvent.objects.filter(action="deployment.tls_certificate.issue").count() == 1


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("*.plant.example", "Name 1 (&#x27;*.plant.example&#x27;): wildcard names are not issued"),
        ("ok.example bad_name", "Name 2 (&#x27;bad_name&#x27;): not a DNS name"),
        ("ok.example\x1b[2J", "Control characters are not allowed in names."),
        (" ".join(f"n{i}.example" for i in range(21)), "no more than 20"),
    ],
)
def test_issue_form_shows_refused_names_beside_the_field_and_issues_nothing(owner, plant, typed, message):
    tls_services.server_certificate_ensure(deployment=plant)
    before = TlsCertificate.objects.get().fingerprint_sha256
    response = owner.post(_tab(plant), {"kind": "issue", "issue-extra_sans": typed})
    assert response.status_code == 400
    errors = " ".join(_errors_beside(response.content.decode(), "issue-extra_sans"))
    assert message in errors, errors
    assert TlsCertificate.objects.get().fingerprint_sha256 == before
    assert not AuditEvent.objects.filter(action="deployment.tls_certificate.issue").exists()


def test_read_only_role_gets_no_issue_form_and_is_refused_when_crafting_it(client, owner_org, plant):
    tls_services.server_certificate_ensure(deployment=plant)
    before = TlsCertificate.objects.get().fingerprint_sha256
    auditor, _ = owner_org.add_member(roles=["auditor"])
    client.force_login(auditor)
    assert "Issue from our CA" not in client.get(_tab(plant)).content.decode()
    assert client.post(_tab(plant), {"kind": "issue", "issue-extra_sans": ""}).status_code == 403
    assert TlsCertificate.objects.get().fingerprint_sha256 == before
