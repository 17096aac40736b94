"""`POST …/deployments/{dep}/certificates/issue`: the server certificate issued (or re-issued, rotating its key and
serial) from the control plane's CA for the deployment's names plus extra SANs, which renewals keep; every bad name a
400 naming `extra_sans` with nothing written; scopes, another tenant, audit, the schema. No worker here: the broker
part is tests/console/test_networking_journey_tls.py's."""

import datetime

import pytest
from cryptography import x509

from audit.models import AuditEvent
from deployments import tls_services
from deployments.models import Deployment, Operation, TlsCertificate
from tests.deployments.test_api import base, client, create, deployment, settle  # noqa: F401
from tests.deployments.tls_helpers import key_pem, make_ca, make_leaf, pem

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("deployments_catalog")]


@pytest.fixture
def url(base, deployment):  # noqa: F811
    return f"{base}/{deployment}/certificates"


def _state(public_id):
    row = Deployment.objects.get(public_id=public_id)
    issued = TlsCertificate.objects.filter(deployment=row, source="control_plane").values_list(
        "fingerprint_sha256", flat=True
    )
    return row.generation, list(issued), Operation.objects.filter(deployment=row).count(), AuditEvent.objects.count()


def _field_errors(response):
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def _sans(body) -> set[str]:
    parsed = x509.load_pem_x509_certificate(body["certificate"].encode())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in names}


def test_issue_creates_then_rotates_the_issued_certificate_with_extra_sans_when_asked(client, url, deployment):  # noqa: F811
    first = client.post(f"{url}/issue", {}, format="json")
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["source"] == "control_plane" and body["kind"] == "server" and body["active"] is True
    assert body["operation"].startswith("op_") and "127.0.0.1" in body["sans"]
    assert body["issuer"] == tls_services.certificate_authority().subject

    generation = Deployment.objects.get(public_id=deployment).generation
    second = client.post(
        f"{url}/issue", {"extra_sans": ["MQTT.plant.example.", "10.20.0.5", "2001:db8::7"]}, format="json"
    )
    assert second.status_code == 201, second.content
    rotated = second.json()
    assert rotated["id"] == body["id"]  # the same issued certificate, rotated
    assert rotated["fingerprint_sha256"] != body["fingerprint_sha256"]
    assert {"mqtt.plant.example", "10.20.0.5", "2001:db8::7", "127.0.0.1"} <= set(rotated["sans"])
    assert {"mqtt.plant.example", "10.20.0.5", "2001:db8::7"} <= _sans(rotated)
    assert rotated["host_names"] == ["mqtt.plant.example", "10.20.0.5", "2001:db8::7"]
    assert x509.load_pem_x509_certificate(rotated["certificate"].encode()).serial_number != (
        x509.load_pem_x509_certificate(body["certificate"].encode()).serial_number
    )
    assert Deployment.objects.get(public_id=deployment).generation == generation + 1  # the reload path runs
    operation = Operation.objects.get(public_id=rotated["operation"])
    assert operation.kind == "configure"
    audit = AuditEvent.objects.filter(action="deployment.tls_certificate.issue").order_by("-id").first()
    assert audit.summary["extra_sans"] == ["mqtt.plant.example", "10.20.0.5", "2001:db8::7"]
    assert audit.summary["fingerprint_sha256"] == rotated["fingerprint_sha256"]
    assert "PRIVATE KEY" not in second.content.decode()

    # The reconciler's renewal keeps the names asked for.
    row = TlsCertificate.objects.get(public_id=rotated["id"])
    later = row.not_after - datetime.timedelta(days=30)
    assert tls_services.server_certificate_ensure(deployment=row.deployment, now=later) is True
    row.refresh_from_db()
    assert row.fingerprint_sha256 != rotated["fingerprint_sha256"]
    assert {"mqtt.plant.example", "10.20.0.5", "2001:db8::7"} <= set(row.sans)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["*.plant.example"], "wildcard names are not issued by the control plane's CA"),
        (["plant_example.com"], "not a DNS name"),
        (["-bad.example"], "not a DNS name"),
        (["a" * 64 + ".example"], "not a DNS name"),
        (["0.0.0.0"], "unspecified or multicast"),
        (["ok.example", "bad name"], "Name 2 ('bad name')"),
        ([f"n{i}.example" for i in range(21)], "no more than 20"),
        (["ok.example\x07"], "control"),
        (["ok.example\nevil.example"], "control"),
        ([""], "blank"),
        ("mqtt.example", "list"),
    ],
)
def test_bad_extra_sans_are_a_400_naming_the_field_when_issued(names, message, client, url, deployment):  # noqa: F811
    before = _state(deployment)
    response = client.post(f"{url}/issue", {"extra_sans": names}, format="json")
    assert response.status_code == 400, response.content
    errors = _field_errors(response)
    field = next(f for f in errors if f.startswith("extra_sans"))
    assert message.lower() in errors[field].lower(), errors
    assert _state(deployment) == before


@pytest.mark.parametrize("name", ["fe80::1%eth0", "2001:db8::7%1"])
def test_an_ipv6_address_with_a_zone_is_a_400_naming_extra_sans_when_issued(name, client, url, deployment):  # noqa: F811
    """A zone (`%eth0`) names an interface of one machine; a certificate carries the address alone. Kept as asked,
    the name was never covered by what was issued, so every reconcile issued the certificate again."""
    before = _state(deployment)
    response = client.post(f"{url}/issue", {"extra_sans": [name]}, format="json")
    assert response.status_code == 400, response.content
    assert "extra_sans" in _field_errors(response)
    assert _state(deployment) == before


def test_an_extra_name_stored_with_a_zone_is_renewed_as_the_address_alone_and_only_once(deployment):  # noqa: F811
    row = Deployment.objects.get(public_id=deployment)
    issued, _ = tls_services.tls_certificate_issue(deployment=row, actor=None, extra_sans=["fe80::1"])
    TlsCertificate.objects.filter(pk=issued.pk).update(host_names=["fe80::1%eth0"])  # as stored before the check
    assert [tls_services.server_certificate_ensure(deployment=row) for _ in range(2)] == [False, False]
    issued.refresh_from_db()
    assert "fe80::1" in issued.sans


def test_service_refuses_control_characters_and_wildcards_naming_extra_sans(deployment):  # noqa: F811
    from controlplane.errors import ValidationFailed

    row = Deployment.objects.get(public_id=deployment)
    for bad in (["plant.example\x1b[31m"], ["*.plant.example"], [f"n{i}.example" for i in range(21)]):
        with pytest.raises(ValidationFailed) as refused:
            tls_services.tls_certificate_issue(deployment=row, actor=None, extra_sans=bad)
        assert [e.field for e in refused.value.errors] == ["extra_sans"]
    assert not TlsCertificate.objects.filter(deployment=row).exists()


def test_a_name_served_for_another_organization_or_the_platform_is_never_issued_here(
    client,  # noqa: F811
    base,  # noqa: F811
    url,
    deployment,  # noqa: F811
    org_factory,
    key_client,
    settings,
):
    """Every customer's devices trust the one CA: a certificate it signs for another organization's broker name,
    served by this deployment, would pass for that broker."""
    settings.PUBLIC_URL = "https://console.cloud.example"
    other = org_factory()
    other_base = f"/api/v1/organizations/{other.id}/projects/{other.default_project.public_id}/deployments"
    theirs = create(key_client(other.owner_secret), other_base, name="theirs").json()["deployment"]["id"]
    settle(theirs)
    Deployment.objects.filter(public_id=theirs).update(endpoints={"host": "mqtt-b.lb.example.net", "ports": {}})
    claimed = tls_services.tls_certificate_issue(
        deployment=Deployment.objects.get(public_id=theirs), actor=None, extra_sans=["mqtt.bcorp.example"]
    )[0]
    assert "mqtt.bcorp.example" in claimed.sans
    for name in (
        "mqtt-b.lb.example.net",  # their load balancer
        "MQTT.bcorp.example",  # a name on their certificate
        "listeners.dep-abc.svc.cluster.local",  # a broker's in-cluster name
        "console.cloud.example",  # the control plane itself
    ):
        before = _state(deployment)
        response = client.post(f"{url}/issue", {"extra_sans": ["ok.plant.example", name]}, format="json")
        assert response.status_code == 400, (name, response.content)
        message = _field_errors(response)["extra_sans"]
        assert message.startswith("Name 2") and "upload a certificate of your own" in message, message
        assert _state(deployment) == before
    # The same names within one organization are its own business: a second deployment behind the same name.
    mine = create(client, base, name="mine").json()["deployment"]["id"]
    Deployment.objects.filter(public_id=mine).update(endpoints={"host": "mqtt-a.lb.example.net", "ports": {}})
    allowed = client.post(f"{url}/issue", {"extra_sans": ["mqtt-a.lb.example.net"]}, format="json")
    assert allowed.status_code == 201, allowed.content


def test_issue_warns_that_the_customers_own_certificate_is_still_served(client, url, deployment):  # noqa: F811
    root = make_ca("Acme Root CA")
    leaf, key = make_leaf(root, "mqtt.acme.example", sans=("mqtt.acme.example", "127.0.0.1"))
    own = client.post(
        url,
        {"kind": "server", "certificate": pem(leaf), "private_key": key_pem(key), "chain": pem(root[0])},
        format="json",
    )
    assert own.status_code == 201, own.content
    issued = client.post(f"{url}/issue", {}, format="json").json()
    assert issued["active"] is False
    assert issued["warnings"] == ["A server certificate of your own is served instead of this one until you remove it."]


def test_auditor_may_not_issue_and_another_organization_gets_a_404(owner_org, org_factory, key_client, url, deployment):  # noqa: F811
    auditor, _ = owner_org.add_member(roles=["auditor"])
    _, auditor_secret = owner_org.key_for(auditor, role="auditor")
    project = owner_org.default_project
    user, _ = owner_org.add_member(project_grants=[(project, "project_user")])
    _, user_secret = owner_org.key_for(user, role="project_user", projects=[project])
    outsider = key_client(org_factory().owner_secret)
    before = _state(deployment)
    assert key_client(auditor_secret).post(f"{url}/issue", {}, format="json").status_code == 403
    assert outsider.post(f"{url}/issue", {}, format="json").status_code == 404
    assert _state(deployment) == before
    # a Project User may edit TLS
    assert key_client(user_secret).post(f"{url}/issue", {}, format="json").status_code == 201


def test_issue_is_refused_with_409_when_the_deployment_is_deleted(client, base, url, deployment):  # noqa: F811
    assert client.delete(f"{base}/{deployment}").status_code in (202, 204)
    response = client.post(f"{url}/issue", {}, format="json")
    assert response.status_code == 409, response.content


def test_schema_documents_the_issue_call(api):
    schema = api.get("/api/schema/?format=json").json()
    path = next(p for p in schema["paths"] if p.endswith("/certificates/issue"))
    operation = schema["paths"][path]["post"]
    assert "control plane's CA" in operation["summary"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "extra_sans" in schema["components"]["schemas"][request]["properties"]
    assert "201" in operation["responses"]
