"""The TLS API: certificates under a deployment (list, create, detail, delete), the CA download, every bad input
answered 4xx naming its field with nothing half-created, scopes, audit, idempotency, keys encrypted at rest.

No worker here: the reconciler's part (issuing the default server certificate) is called directly.
"""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from audit.models import AuditEvent
from controlplane import crypto
from deployments import tls_services
from deployments.models import CertificateAuthority, Deployment, Operation, TlsCertificate
from tests.deployments.test_api import base, client, create, deployment, settle  # noqa: F401
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
    with_unreadable_name,
    with_unreadable_public_key,
)
from tests.test_admin import staff, staff_client  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]


@pytest.fixture
def url(base, deployment):  # noqa: F811
    return f"{base}/{deployment}/certificates"


def _server(sans=("mqtt.acme.example",), **kwargs):
    """A customer's server certificate under an intermediate and a root: (certificate PEM, key PEM, chain PEM)."""
    root = make_ca("Acme Root CA")
    intermediate = make_ca("Acme Issuing CA", issuer=root)
    leaf, key = make_leaf(intermediate, sans[0] if sans else "no-names", sans=sans, **kwargs)
    return pem(leaf), key_pem(key), pem(intermediate[0], root[0])


def _state(public_id):
    """What a refused request must leave untouched."""
    deployment = Deployment.objects.get(public_id=public_id)
    return (
        deployment.generation,
        TlsCertificate.objects.filter(deployment=deployment).count(),
        Operation.objects.filter(deployment=deployment).count(),
        AuditEvent.objects.count(),
    )


def _field_errors(response):
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def test_server_certificate_is_stored_with_its_facts_and_never_its_key_when_valid(client, url, deployment):  # noqa: F811
    certificate, key, chain = _server()
    response = client.post(
        url,
        {
            "kind": "server",
            "certificate": certificate,
            "private_key": key,
            "chain": chain,
            "host_names": ["mqtt.acme.example"],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "server" and body["source"] == "customer" and body["active"] is True
    assert body["subject"] == "CN=mqtt.acme.example,O=Acme"
    assert body["issuer"] == "CN=Acme Issuing CA,O=Acme"
    assert body["sans"] == ["mqtt.acme.example"]
    parsed = x509.load_pem_x509_certificate(certificate.encode())
    assert body["not_after"].startswith(parsed.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%S"))
    assert len(body["fingerprint_sha256"]) == 95 and body["fingerprint_sha256"].count(":") == 31
    assert body["key_type"] == "EC P-256"
    assert body["operation"].startswith("op_")
    # Not covering the deployment's own address (127.0.0.1 in the local region) is a warning, not a refusal.
    assert any("127.0.0.1" in warning for warning in body["warnings"])
    assert "private_key" not in body and "PRIVATE KEY" not in response.content.decode()

    detail = client.get(f"{url}/{body['id']}")
    assert detail.status_code == 200
    assert "PRIVATE KEY" not in detail.content.decode()
    assert detail.json()["fingerprint_sha256"] == body["fingerprint_sha256"]

    row = TlsCertificate.objects.get(public_id=body["id"])
    assert "PRIVATE KEY" not in row.private_key_encrypted  # encrypted at rest
    assert crypto.decrypt_str(row.private_key_encrypted).startswith("-----BEGIN PRIVATE KEY-----")
    dep = Deployment.objects.get(public_id=deployment)
    operation = Operation.objects.get(public_id=body["operation"])
    assert operation.kind == "configure" and operation.target_generation == dep.generation
    audit = AuditEvent.objects.get(action="deployment.tls_certificate.create")
    assert audit.summary["certificate"] == body["id"] and "PRIVATE" not in str(audit.summary)


def test_issued_certificate_is_listed_and_gives_way_to_the_customer_one_when_uploaded(client, url, deployment):  # noqa: F811
    dep = Deployment.objects.get(public_id=deployment)
    assert tls_services.server_certificate_ensure(deployment=dep) is True
    assert tls_services.server_certificate_ensure(deployment=dep) is False  # idempotent: nothing to renew
    listed = client.get(url).json()["results"]
    assert [(c["source"], c["active"]) for c in listed] == [("control_plane", True)]
    issued = listed[0]
    assert issued["sans"] == ["127.0.0.1", "localhost"] and issued["key_type"] == "EC P-256"
    assert tls_services.broker_tls_material(dep).certificate_pem == issued["certificate"]

    certificate, key, chain = _server()
    created = client.post(
        url, {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}, format="json"
    )
    assert created.status_code == 201
    listed = {c["source"]: c["active"] for c in client.get(url).json()["results"]}
    assert listed == {"control_plane": False, "customer": True}
    material = tls_services.broker_tls_material(dep)
    assert material.certificate_pem == certificate + chain  # served with its chain

    # The issued one cannot be removed; the customer's can, and the issued one is served again.
    assert client.delete(f"{url}/{issued['id']}").status_code == 409
    assert client.delete(f"{url}/{created.json()['id']}").status_code == 204
    assert tls_services.broker_tls_material(dep).certificate_pem == issued["certificate"]
    assert AuditEvent.objects.filter(action="deployment.tls_certificate.delete").count() == 1


def test_second_server_certificate_replaces_the_first_when_uploaded(client, url):
    first, key, chain = _server()
    one = client.post(url, {"kind": "server", "certificate": first, "private_key": key, "chain": chain}, format="json")
    second, key2, chain2 = _server()
    two = client.post(
        url, {"kind": "server", "certificate": second, "private_key": key2, "chain": chain2}, format="json"
    )
    assert two.status_code == 201
    assert two.json()["replaced"] == one.json()["id"]
    ids = [c["id"] for c in client.get(url).json()["results"] if c["source"] == "customer"]
    assert ids == [two.json()["id"]]
    assert client.get(f"{url}/{one.json()['id']}").status_code == 404


def test_ca_pem_is_served_as_pem_file_and_verifies_the_issued_certificate(client, base, deployment):  # noqa: F811
    dep = Deployment.objects.get(public_id=deployment)
    tls_services.server_certificate_ensure(deployment=dep)
    response = client.get(f"{base}/{deployment}/ca.pem")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-pem-file"
    assert f"{deployment}-ca.pem" in response["Content-Disposition"]
    ca = x509.load_pem_x509_certificate(response.content)
    issued = x509.load_pem_x509_certificate(
        TlsCertificate.objects.get(deployment=dep, source="control_plane").certificate_pem.encode()
    )
    issued.verify_directly_issued_by(ca)
    assert CertificateAuthority.objects.count() == 1
    authority = CertificateAuthority.objects.get()
    assert "PRIVATE KEY" not in authority.private_key_encrypted
    assert crypto.decrypt_str(authority.private_key_encrypted).startswith("-----BEGIN PRIVATE KEY-----")


def test_client_ca_turns_two_way_tls_on_and_is_removable_when_uploaded(client, url, deployment):  # noqa: F811
    root, _ = make_ca("Acme Devices CA")
    response = client.post(url, {"kind": "client_ca", "certificate": pem(root)}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["require_client_certificate"] is True and body["use_identity_as_username"] is False
    dep = Deployment.objects.get(public_id=deployment)
    tls_services.server_certificate_ensure(deployment=dep)
    material = tls_services.broker_tls_material(dep)
    assert material.has_client_ca and material.verify_peer and material.client_ca_pem == pem(root)
    assert client.delete(f"{url}/{body['id']}").status_code == 204
    assert not tls_services.broker_tls_material(dep).has_client_ca


BAD_SERVER_INPUTS = {
    "malformed PEM": (lambda c, k, ch: {"certificate": "-----BEGIN CERTIFICATE-----\nnot base64!\n"}, "certificate"),
    "not PEM at all": (lambda c, k, ch: {"certificate": "hello"}, "certificate"),
    "a key instead of a certificate": (lambda c, k, ch: {"certificate": k}, "certificate"),
    "malformed key": (
        lambda c, k, ch: {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
        "private_key",
    ),
    "a key that does not match": (lambda c, k, ch: {"private_key": key_pem(new_key())}, "private_key"),
    "a passphrase-protected key": (lambda c, k, ch: {"private_key": None}, "private_key"),
    "a chain that does not verify": (lambda c, k, ch: {"chain": pem(make_ca("Acme Root CA")[0])}, "chain"),
    "a chain without its root": (
        lambda c, k, ch: {"chain": ch.split("-----END CERTIFICATE-----\n")[0] + "-----END CERTIFICATE-----\n"},
        "chain",
    ),
    "no chain for a CA-issued certificate": (lambda c, k, ch: {"chain": ""}, "chain"),
    "two certificates in certificate": (lambda c, k, ch: {"certificate": c + ch}, "certificate"),
    "host names not covered": (lambda c, k, ch: {"host_names": ["other.example"]}, "host_names"),
    "a control character": (lambda c, k, ch: {"certificate": c.replace("\n", "\x00", 1)}, "certificate"),
    "an extension that cannot be parsed": (
        lambda c, k, ch: {"certificate": pem(make_with_malformed_extension(ExtensionOID.EXTENDED_KEY_USAGE)[0])},
        "certificate",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SERVER_INPUTS))
def test_bad_server_input_is_a_400_naming_the_field_and_nothing_is_created(case, client, url, deployment):  # noqa: F811
    certificate, key, chain = _server()
    change, field = BAD_SERVER_INPUTS[case]
    body = {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}
    changed = change(certificate, key, chain)
    if changed.get("private_key", "") is None:
        leaf_key = x509.load_pem_x509_certificate(certificate.encode())  # the matching key, encrypted
        assert leaf_key
        from cryptography.hazmat.primitives import serialization

        plain = serialization.load_pem_private_key(key.encode(), password=None)
        changed["private_key"] = key_pem(plain, password=b"secret")
    body.update(changed)
    before = _state(deployment)

    response = client.post(url, body, format="json")

    assert response.status_code == 400, (case, response.content)
    assert response["Content-Type"] == "application/problem+json"
    errors = _field_errors(response)
    assert field in errors, (case, errors)
    assert _state(deployment) == before


@pytest.mark.parametrize(
    ("case", "make", "field", "words"),
    [
        (
            "expired",
            lambda: make_leaf(None, "old", sans=("old",), not_before=NOW - 400 * DAY, not_after=NOW - DAY),
            "certificate",
            "expired",
        ),
        (
            "not yet valid",
            lambda: make_leaf(None, "soon", sans=("soon",), not_before=NOW + DAY, not_after=NOW + 90 * DAY),
            "certificate",
            "not valid yet",
        ),
        (
            "1024-bit RSA",
            lambda: make_leaf(None, "weak", sans=("weak",), key=new_key("rsa1024")),
            "certificate",
            "1024 bits",
        ),
        (
            "a small curve",
            lambda: make_leaf(None, "weak", sans=("weak",), key=new_key("ec224")),
            "certificate",
            "secp224r1",
        ),
        ("client-only usage", lambda: make_leaf(None, "dev", sans=("dev",), client=True), "certificate", "serverAuth"),
    ],
)
def test_bad_certificate_is_a_400_naming_the_field_when_self_signed(case, make, field, words, client, url, deployment):  # noqa: F811
    leaf, key = make()
    before = _state(deployment)
    response = client.post(
        url, {"kind": "server", "certificate": pem(leaf), "private_key": key_pem(key)}, format="json"
    )
    assert response.status_code == 400, (case, response.content)
    errors = _field_errors(response)
    assert field in errors and words in errors[field], (case, errors)
    assert _state(deployment) == before


def test_expired_intermediate_is_refused_naming_the_chain(client, url, deployment):  # noqa: F811
    root = make_ca("Acme Root CA")
    intermediate = make_ca("Acme Issuing CA", issuer=root, not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    leaf, key = make_leaf(intermediate, "mqtt.acme.example", sans=("mqtt.acme.example",))
    response = client.post(
        url,
        {
            "kind": "server",
            "certificate": pem(leaf),
            "private_key": key_pem(key),
            "chain": pem(intermediate[0], root[0]),
        },
        format="json",
    )
    assert response.status_code == 400
    assert "expired" in _field_errors(response)["chain"]


def test_rsa_2048_and_traditional_key_format_are_accepted_when_self_signed(client, url):
    key = new_key("rsa2048")
    leaf, _ = make_leaf(None, "rsa.example", sans=("rsa.example",), key=key)
    response = client.post(
        url, {"kind": "server", "certificate": pem(leaf), "private_key": key_pem(key, traditional=True)}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["key_type"] == "RSA 2048"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "client_ca", "certificate": "PEM"}, "certificate"),
        ({"kind": "client_ca", "chain": "x"}, "chain"),
        ({"kind": "client_ca", "private_key": "x"}, "private_key"),
        ({"kind": "client_ca", "host_names": ["a.example"]}, "host_names"),
        ({"kind": "client_ca", "require_client_certificate": False}, "require_client_certificate"),
        (
            {"kind": "client_ca", "use_identity_as_username": True, "require_client_certificate": False},
            "use_identity_as_username",
        ),
        ({"kind": "server", "require_client_certificate": True}, "require_client_certificate"),
        ({"kind": "server"}, "private_key"),
        ({"kind": "root"}, "kind"),
        ({"kind": "client_ca", "bogus": 1}, "bogus"),
    ],
)
def test_bad_client_ca_or_kind_mismatch_is_a_400_naming_the_field(body, field, client, url, deployment):  # noqa: F811
    root, _ = make_ca("Acme Devices CA")
    before = _state(deployment)
    response = client.post(url, {"certificate": pem(root), **body}, format="json")
    assert response.status_code == 400, response.content
    assert field in _field_errors(response)
    assert _state(deployment) == before


def test_client_ca_that_is_not_a_ca_is_refused_naming_certificate(client, url, deployment):  # noqa: F811
    leaf, _ = make_leaf(None, "device", sans=("device",))
    before = _state(deployment)
    response = client.post(url, {"kind": "client_ca", "certificate": pem(leaf)}, format="json")
    assert response.status_code == 400
    assert "not a CA certificate" in _field_errors(response)["certificate"]
    assert _state(deployment) == before


@pytest.mark.parametrize("oid", [ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.SUBJECT_ALTERNATIVE_NAME])
def test_client_ca_with_an_extension_that_cannot_be_parsed_is_refused_naming_certificate(oid, client, url, deployment):  # noqa: F811
    broken, _ = make_with_malformed_extension(oid)
    before = _state(deployment)
    response = client.post(url, {"kind": "client_ca", "certificate": pem(broken)}, format="json")
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert "The certificate has an extension that cannot be parsed" in _field_errors(response)["certificate"]
    assert _state(deployment) == before


@pytest.mark.parametrize("how", ["algorithm", "point"])
def test_a_public_key_that_cannot_be_read_is_a_400_naming_its_field_when_uploaded(how, client, url, deployment):  # noqa: F811
    root = make_ca("Acme Root CA")
    leaf, key = make_leaf(root, "mqtt.acme.example", sans=("mqtt.acme.example",))
    good = {"kind": "server", "certificate": pem(leaf), "private_key": key_pem(key), "chain": pem(root[0])}
    bad_leaf, leaf_key = make_leaf(None, "mqtt.acme.example", sans=("mqtt.acme.example",))
    before = _state(deployment)
    for body, field in [
        (
            {**good, "certificate": with_unreadable_public_key(bad_leaf, how), "private_key": key_pem(leaf_key)},
            "certificate",
        ),
        ({**good, "chain": with_unreadable_public_key(root[0], how)}, "chain"),
        (
            {"kind": "client_ca", "certificate": with_unreadable_public_key(make_ca("Devices CA")[0], how)},
            "certificate",
        ),
    ]:
        response = client.post(url, body, format="json")
        assert response.status_code == 400, (field, response.status_code, response.content[:300])
        assert response["Content-Type"] == "application/problem+json"
        assert "public key that cannot be read" in _field_errors(response)[field]
    assert _state(deployment) == before


def _sha1_uploads():
    """Uploads with one SHA-1 signature each, and the field that names it (None: accepted). The signatures a client
    checks: the root's on the intermediate, the intermediate's on the server certificate, a client CA's root's on it.
    And the roots' own: a trust anchor's signature on itself, which no client checks."""
    root_key = new_key("rsa2048")
    root = make_ca("Acme Root CA", key=root_key)
    intermediate_key = new_key("rsa2048")
    intermediate = make_ca("Acme Issuing CA", issuer=root, key=intermediate_key)
    leaf, key = make_leaf(intermediate, "mqtt.acme.example", sans=("mqtt.acme.example",))
    good = {"kind": "server", "certificate": pem(leaf), "private_key": key_pem(key)}
    devices_key = new_key("rsa2048")
    devices = make_ca("Acme Devices CA", key=devices_key)
    devices_issuing = make_ca("Acme Devices Issuing CA", issuer=devices)[0]
    return {
        "the intermediate": ({**good, "chain": pem(signed_with_sha1(intermediate[0], root_key), root[0])}, "chain"),
        "the server certificate": (
            {
                **good,
                "certificate": pem(signed_with_sha1(leaf, intermediate_key)),
                "chain": pem(*(c[0] for c in (intermediate, root))),
            },
            "certificate",
        ),
        "a client CA's issuing CA": (
            {"kind": "client_ca", "certificate": pem(signed_with_sha1(devices_issuing, devices_key), devices[0])},
            "certificate",
        ),
        "the root, on itself": ({**good, "chain": pem(intermediate[0], signed_with_sha1(root[0], root_key))}, None),
        "a client CA's root, on itself": (
            {"kind": "client_ca", "certificate": pem(signed_with_sha1(devices[0], devices_key))},
            None,
        ),
    }


@pytest.mark.parametrize("signed", ["the intermediate", "the server certificate", "a client CA's issuing CA"])
def test_a_sha1_signature_is_a_400_saying_so_on_its_field_when_uploaded(signed, client, url, deployment):  # noqa: F811
    body, field = _sha1_uploads()[signed]
    before = _state(deployment)
    response = client.post(url, body, format="json")
    assert response.status_code == 400, (signed, response.content)
    assert response["Content-Type"] == "application/problem+json"
    errors = _field_errors(response)
    assert list(errors) == [field], (signed, errors)
    assert "signed with SHA-1" in errors[field] and "too weak" in errors[field], errors
    assert "self-signed" not in errors[field] and "did not sign" not in errors[field], errors
    assert _state(deployment) == before


@pytest.mark.parametrize("signed", ["the root, on itself", "a client CA's root, on itself"])
def test_a_root_signed_with_sha1_on_itself_is_accepted_as_a_root_when_uploaded(signed, client, url, deployment):  # noqa: F811
    # Roots such as DigiCert Global Root CA sign themselves with SHA-1; a trust anchor's own signature is not checked.
    body, _field = _sha1_uploads()[signed]
    response = client.post(url, body, format="json")
    assert response.status_code == 201, (signed, response.content)
    assert not any("not a root" in warning for warning in response.json().get("warnings", [])), response.json()


def test_a_name_that_cannot_be_parsed_is_a_400_naming_its_field_when_uploaded(client, url, deployment):  # noqa: F811
    root = make_ca("Acme Root CA")
    leaf, key = make_leaf(root, "mqtt.acme.example", sans=("mqtt.acme.example",))
    good = {"kind": "server", "certificate": pem(leaf), "private_key": key_pem(key), "chain": pem(root[0])}
    alone, alone_key = make_leaf(None, "mqtt.acme.example", sans=("mqtt.acme.example",))
    before = _state(deployment)
    for body, field in [
        (
            {
                **good,
                "certificate": with_unreadable_name(alone, "mqtt.acme.example"),
                "private_key": key_pem(alone_key),
            },
            "certificate",
        ),
        ({**good, "chain": with_unreadable_name(root[0], "Acme Root CA")}, "chain"),
        (
            {"kind": "client_ca", "certificate": with_unreadable_name(make_ca("Devices CA")[0], "Devices CA")},
            "certificate",
        ),
    ]:
        response = client.post(url, body, format="json")
        assert response.status_code == 400, (field, response.status_code, response.content[:300])
        assert response["Content-Type"] == "application/problem+json"
        assert "name that cannot be parsed" in _field_errors(response)[field]
    assert _state(deployment) == before


@pytest.mark.django_db(transaction=True)
def test_a_certificate_deleted_while_a_delete_waits_for_the_deployment_is_a_404_when_it_goes_on(
    client,  # noqa: F811
    url,
    deployment,  # noqa: F811
):
    from django.db import transaction

    from tests.races import run_elsewhere_until_blocked

    certificate, key, chain = _server()
    created = client.post(
        url, {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}, format="json"
    )
    assert created.status_code == 201, created.content
    row = TlsCertificate.objects.get(public_id=created.json()["id"])

    with transaction.atomic():  # the other request's delete: it holds the deployment's lock until it commits
        tls_services.tls_certificate_delete(certificate=row, actor=None)
        finish = run_elsewhere_until_blocked(lambda: client.delete(f"{url}/{row.public_id}"))
    response = finish()

    assert response.status_code == 404, response.content
    assert AuditEvent.objects.filter(action="deployment.tls_certificate.delete").count() == 1


def test_another_organizations_certificate_is_a_404_like_a_missing_one(client, url, org_factory, key_client):
    certificate, key, chain = _server()
    created = client.post(
        url, {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}, format="json"
    ).json()
    outsider = key_client(org_factory().owner_secret)
    assert outsider.get(f"{url}/{created['id']}").status_code == 404
    assert outsider.delete(f"{url}/{created['id']}").status_code == 404
    assert TlsCertificate.objects.filter(public_id=created["id"]).exists()


def test_project_user_may_edit_tls_and_auditor_may_only_read(owner_org, key_client, url):
    project = owner_org.default_project
    user, _ = owner_org.add_member(project_grants=[(project, "project_user")])
    _, user_secret = owner_org.key_for(user, role="project_user", projects=[project])
    auditor, _ = owner_org.add_member(roles=["auditor"])
    _, auditor_secret = owner_org.key_for(auditor, role="auditor")
    certificate, key, chain = _server()
    body = {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}

    assert key_client(auditor_secret).post(url, body, format="json").status_code == 403
    assert key_client(auditor_secret).get(url).status_code == 200
    created = key_client(user_secret).post(url, body, format="json")
    assert created.status_code == 201, created.content
    assert key_client(auditor_secret).delete(f"{url}/{created.json()['id']}").status_code == 403
    assert key_client(user_secret).delete(f"{url}/{created.json()['id']}").status_code == 204


def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(client, url, deployment):  # noqa: F811
    certificate, key, chain = _server()
    body = {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}
    first = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="tls-upload-1")
    again = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="tls-upload-1")
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert TlsCertificate.objects.filter(deployment__public_id=deployment, source="customer").count() == 1
    other = client.post(
        url, {**body, "host_names": ["mqtt.acme.example"]}, format="json", HTTP_IDEMPOTENCY_KEY="tls-upload-1"
    )
    assert other.status_code == 422


def test_certificate_of_a_deleted_deployment_cannot_be_added(client, base, url, deployment):  # noqa: F811
    assert client.delete(f"{base}/{deployment}").status_code == 202
    certificate, key, chain = _server()
    response = client.post(
        url, {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}, format="json"
    )
    assert response.status_code == 409


def test_issued_certificate_is_renewed_when_it_nears_expiry_or_the_host_changes(deployment):  # noqa: F811
    dep = Deployment.objects.get(public_id=deployment)
    tls_services.server_certificate_ensure(deployment=dep)
    first = TlsCertificate.objects.get(deployment=dep, source="control_plane")
    later = first.not_after - tls_services.RENEW_BEFORE + datetime.timedelta(hours=1)
    assert tls_services.server_certificate_ensure(deployment=dep, now=later) is True
    renewed = TlsCertificate.objects.get(deployment=dep, source="control_plane")
    assert renewed.fingerprint_sha256 != first.fingerprint_sha256 and renewed.not_after > first.not_after
    Deployment.objects.filter(pk=dep.pk).update(endpoints={"host": "mqtt-7.example.net", "ports": {}})
    dep.refresh_from_db()
    assert tls_services.server_certificate_ensure(deployment=dep) is True
    assert "mqtt-7.example.net" in TlsCertificate.objects.get(deployment=dep, source="control_plane").sans
    kinds = list(dep.events.filter(kind__startswith="tls.").values_list("kind", flat=True))
    assert kinds.count("tls.certificate.issued") == 1 and kinds.count("tls.certificate.renewed") == 2


@pytest.mark.django_db(transaction=True)
def test_ca_is_created_once_when_many_ask_for_it_at_the_same_time():
    import threading

    from django.db import connection

    results, errors = [], []
    start = threading.Barrier(4)

    def ask():
        try:
            start.wait()
            results.append(tls_services.certificate_authority().pk)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1
    assert CertificateAuthority.objects.count() == 1
    assert isinstance(
        x509.load_pem_x509_certificate(CertificateAuthority.objects.get().certificate_pem.encode()).public_key(),
        ec.EllipticCurvePublicKey,
    )


def test_staff_see_certificates_in_the_backoffice_but_never_a_key(staff_client, client, url):  # noqa: F811
    certificate, key, chain = _server()
    created = client.post(
        url, {"kind": "server", "certificate": certificate, "private_key": key, "chain": chain}, format="json"
    ).json()
    row = TlsCertificate.objects.get(public_id=created["id"])
    page = staff_client.get(f"/admin/deployments/tlscertificate/{row.pk}/change/")
    assert page.status_code == 200
    assert created["fingerprint_sha256"].encode() in page.content
    assert b"PRIVATE KEY" not in page.content and row.private_key_encrypted.encode() not in page.content
    assert staff_client.get("/admin/deployments/tlscertificate/add/").status_code == 403
    tls_services.certificate_authority()
    listing = staff_client.get("/admin/deployments/certificateauthority/")
    assert listing.status_code == 200 and b"MQTT Control Plane CA" in listing.content
