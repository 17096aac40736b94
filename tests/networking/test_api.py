"""The VPC peering API: create (202, pending, audited, idempotent), the pre-flight on its own, bad input field by
field, a local region's 409, deletion protection, roles and tenancy."""

import pytest

from audit.models import AuditEvent
from networking.models import VpcPeering
from tests.networking.conftest import (
    AZURE_CUSTOMER_SUBSCRIPTION,
    AZURE_CUSTOMER_TENANT,
    CUSTOMER_ACCOUNT,
    REGION_AWS,
    make_deployment,
    make_region,
    peering_url,
)

pytestmark = pytest.mark.django_db

AWS_BODY = {
    "provider": "aws",
    "cidr": "10.1.0.0/16",
    "account_id": CUSTOMER_ACCOUNT,
    "vpc_id": "vpc-0a1b2c3d4e5f60718",
    "region": REGION_AWS,
}
NETWORK = {"account_id": "123456789012", "vpc_id": "vpc-0aaaaaaa", "cidr": "10.0.0.0/16"}


@pytest.fixture
def region(deployments_catalog):
    return make_region(
        code="aws-frankfurt",
        provider="aws",
        cloud_region=REGION_AWS,
        network={**NETWORK, "reserved_cidrs": ["10.96.0.0/12"]},
        credentials={"access_key_id": "x", "secret_access_key": "y"},
    )


@pytest.fixture
def deployment(owner_org, region):
    return make_deployment(owner_org.default_project, region)


@pytest.fixture
def owner(owner_org, key_client):
    return key_client(owner_org.owner_secret)


def _problem(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


def test_create_answers_202_pending_and_is_audited_when_input_is_valid(owner, owner_org, deployment):
    response = owner.post(peering_url(owner_org, deployment), AWS_BODY, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["id"].startswith("pcx_") and body["state"] == "pending"
    assert body["provider"] == "aws" and body["cidr"] == "10.1.0.0/16" and body["platform_cidr"] == "10.0.0.0/16"
    assert body["project_id"] is None and body["customer_action"] is None
    event = AuditEvent.objects.get(action="vpc_peering.create")
    assert event.target_id == body["id"] and event.organization_id == owner_org.organization.pk
    assert event.summary["vpc_id"] == AWS_BODY["vpc_id"]
    detail = owner.get(f"{peering_url(owner_org, deployment)}/{body['id']}")
    assert detail.status_code == 200 and detail.json()["id"] == body["id"]
    listed = owner.get(peering_url(owner_org, deployment)).json()["results"]
    assert [p["id"] for p in listed] == [body["id"]]


def test_retry_with_same_idempotency_key_replays_first_answer_when_create_is_repeated(owner, owner_org, deployment):
    url = peering_url(owner_org, deployment)
    first = owner.post(url, AWS_BODY, format="json", HTTP_IDEMPOTENCY_KEY="peer-1")
    again = owner.post(url, AWS_BODY, format="json", HTTP_IDEMPOTENCY_KEY="peer-1")
    assert first.status_code == again.status_code == 202
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert VpcPeering.objects.count() == 1


def test_validate_lists_checks_and_creates_nothing_when_input_is_valid(owner, owner_org, deployment):
    response = owner.post(peering_url(owner_org, deployment) + "/validate", AWS_BODY, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is True and body["platform_cidr"] == "10.0.0.0/16"
    assert "10.1.0.0/16 is private (RFC 1918)" in body["checks"]
    assert VpcPeering.objects.count() == 0 and not AuditEvent.objects.filter(action__startswith="vpc_peering").exists()


BAD_INPUT = [
    ({"cidr": "10.0.0.0/33"}, "cidr", "the prefix length must be 0 to 32"),
    ({"cidr": "8.8.8.0/24"}, "cidr", "8.8.8.0/24 is not a private range"),
    ({"cidr": "10.0.128.0/20"}, "cidr", "overlaps the platform's network 10.0.0.0/16"),
    ({"cidr": "172.17.4.0/24"}, "cidr", "overlaps the reserved range 172.17.0.0/16: used by some AWS services"),
    ({"cidr": "10.100.0.0/16"}, "cidr", "overlaps the reserved range 10.96.0.0/12: reserved by the platform"),
    ({"cidr": "10.1.0.1/16"}, "cidr", "has host bits set; did you mean 10.1.0.0/16?"),
    ({"cidr": "10.1.0.0/1\x1b6"}, "cidr", "Must not contain control characters"),
    ({"vpc_id": "vpc-0a1b\u20282c3d"}, "vpc_id", "Must not contain control characters"),
    ({"cidr": "10.1.0.0/16\x00"}, "cidr", "Null characters are not allowed."),
    ({"cidr": "fd00::/64"}, "cidr", "'fd00::' is not an IPv4 address"),
    ({"account_id": "12345"}, "account_id", "An AWS account id is 12 digits."),
    ({"account_id": "12345678901a"}, "account_id", "An AWS account id is 12 digits."),
    # Arabic-Indic digits are digits to a Unicode \d, not to AWS (nor in the command we show).
    (
        {"account_id": "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662"},
        "account_id",
        "An AWS account id is 12 digits.",
    ),
    ({"vpc_id": "vpc-0a1b; rm -rf /"}, "vpc_id", "An AWS VPC id is vpc- followed by"),
    ({"region": "us-east-1"}, "region", "this deployment runs in eu-central-1, not us-east-1"),
    ({"account_id": None}, "account_id", "Required for a aws peering."),
    ({"project_id": "acme-factory-42"}, "project_id", "Not a field of a aws peering"),
    ({"provider": "gcp"}, "provider", "runs on aws; a gcp network cannot be peered with it"),
    ({"provider": "ibm"}, "provider", '"ibm" is not a valid choice.'),
    ({"cidr": 10}, "cidr", "Not a valid string."),
    ({"surprise": 1}, "surprise", "Unknown field."),
]


@pytest.mark.parametrize("path", ["", "/validate"])
@pytest.mark.parametrize(("change", "field", "message"), BAD_INPUT, ids=[f"{c}" for c, _, _ in BAD_INPUT])
def test_bad_input_is_a_400_naming_the_field_and_creates_nothing(
    owner, owner_org, deployment, path, change, field, message
):
    body = {k: v for k, v in {**AWS_BODY, **change}.items() if v is not None}
    problem = _problem(owner.post(peering_url(owner_org, deployment) + path, body, format="json"), 400)
    errors: dict[str, str] = {}
    for error in problem["errors"]:
        errors[error["field"]] = errors.get(error["field"], "") + error["message"]
    assert field in errors, problem
    assert message in errors[field], errors
    assert VpcPeering.objects.count() == 0


def test_overlap_with_another_peering_names_it_when_cidr_is_taken(owner, owner_org, deployment):
    url = peering_url(owner_org, deployment)
    first = owner.post(url, AWS_BODY, format="json").json()
    problem = _problem(
        owner.post(url, {**AWS_BODY, "cidr": "10.1.128.0/17", "vpc_id": "vpc-0b1b2c3d"}, format="json"), 400
    )
    assert problem["errors"] == [
        {
            "field": "cidr",
            "message": f"10.1.128.0/17 overlaps peering {first['id']} (10.1.0.0/16) of this deployment.",
            "code": "invalid",
        }
    ]
    same_vpc = _problem(owner.post(url, {**AWS_BODY, "cidr": "10.2.0.0/16"}, format="json"), 400)
    assert same_vpc["errors"][0]["field"] == "vpc_id" and first["id"] in same_vpc["errors"][0]["message"]


def test_overlap_with_another_organization_does_not_name_its_peering(owner, owner_org, org_factory, region):
    other = org_factory()
    theirs = make_deployment(other.default_project, region, name="theirs")
    from networking import services

    their_peering = services.vpc_peering_create(deployment=theirs, actor=None, **AWS_BODY)
    mine = make_deployment(owner_org.default_project, region)
    problem = _problem(owner.post(peering_url(owner_org, mine), AWS_BODY, format="json"), 400)
    message = problem["errors"][0]["message"]
    assert "already peered with region aws-frankfurt's network" in message
    assert their_peering.public_id not in message and theirs.public_id not in message


def test_overlap_with_a_project_the_caller_cannot_read_does_not_name_its_peering(owner, owner_org, key_client, region):
    from networking import services
    from projects.services import project_create

    finance = project_create(organization=owner_org.organization, actor=None, name="finance")
    ledger = make_deployment(finance, region, name="ledger")
    hidden = services.vpc_peering_create(deployment=ledger, actor=None, **AWS_BODY)
    mine = make_deployment(owner_org.default_project, region, name="mine")
    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    _key, secret = owner_org.key_for(user, role="project_user", projects=[owner_org.default_project])
    body = {**AWS_BODY, "vpc_id": "vpc-0fffffff"}

    for path in ("/validate", ""):
        problem = _problem(key_client(secret).post(peering_url(owner_org, mine) + path, body, format="json"), 400)
        message = problem["errors"][0]["message"]
        assert "already peered with region aws-frankfurt's network" in message
        assert hidden.public_id not in message and ledger.public_id not in message
    # The Owner, who reads both projects, is told which peering is in the way.
    named = _problem(owner.post(peering_url(owner_org, mine) + "/validate", body, format="json"), 400)
    assert hidden.public_id in named["errors"][0]["message"] and ledger.public_id in named["errors"][0]["message"]
    assert VpcPeering.objects.count() == 1


def test_gcp_and_azure_identifiers_are_checked_when_malformed(owner, owner_org, deployments_catalog):
    gcp = make_region(
        code="gcp-belgium",
        provider="gcp",
        cloud_region="europe-west1",
        network={"project_id": "mqtt-platform", "network": "brokers", "cidr": "10.0.0.0/16"},
        credentials=None,
    )
    azure = make_region(
        code="azure-we",
        provider="azure",
        cloud_region="westeurope",
        network={
            "tenant_id": AZURE_CUSTOMER_TENANT,
            "subscription_id": AZURE_CUSTOMER_SUBSCRIPTION,
            "resource_group": "rg",
            "vnet_name": "vnet",
            "cidr": "10.0.0.0/16",
        },
        credentials=None,
    )
    on_gcp = make_deployment(owner_org.default_project, gcp, name="on-gcp")
    on_azure = make_deployment(owner_org.default_project, azure, name="on-azure")
    gcp_body = {"provider": "gcp", "cidr": "10.1.0.0/16", "project_id": "Acme_Prod", "network": "-net"}
    problem = _problem(owner.post(peering_url(owner_org, on_gcp) + "/validate", gcp_body, format="json"), 400)
    errors = {e["field"]: e["message"] for e in problem["errors"]}
    assert errors["project_id"].startswith("A GCP project id is 6 to 30 lowercase letters")
    assert errors["network"].startswith("A GCP network name is 1 to 63 lowercase letters")
    azure_body = {
        "provider": "azure",
        "cidr": "10.1.0.0/16",
        "tenant_id": "not-a-guid",
        "subscription_id": "44444444-4444-4444-8444-44444444444",
        "resource_group": "acme-rg.",
        "vnet_name": "a",
    }
    problem = _problem(owner.post(peering_url(owner_org, on_azure), azure_body, format="json"), 400)
    errors = {e["field"]: e["message"] for e in problem["errors"]}
    assert errors["tenant_id"].startswith("An Azure tenant id is a GUID")
    assert errors["subscription_id"].startswith("An Azure subscription id is a GUID")
    assert "not ending with '.'" in errors["resource_group"]
    assert errors["vnet_name"].startswith("An Azure virtual network name is 2 to 64")
    assert VpcPeering.objects.count() == 0


@pytest.mark.parametrize("path", ["", "/validate"])
def test_local_region_answers_409_with_its_reason(owner, owner_org, deployments_catalog, path):
    from deployments.models import Region

    local = make_deployment(owner_org.default_project, Region.objects.get(code="local"))
    problem = _problem(owner.post(peering_url(owner_org, local) + path, AWS_BODY, format="json"), 409)
    assert problem["detail"].startswith("Region 'local' has no VPC")
    assert VpcPeering.objects.count() == 0


def test_serverless_deployment_cannot_be_peered(owner, owner_org, region):
    serverless = make_deployment(owner_org.default_project, region, name="tiny", plan="serverless")
    problem = _problem(owner.post(peering_url(owner_org, serverless), AWS_BODY, format="json"), 409)
    assert "Dedicated and Premium" in problem["detail"]


def test_deletion_protection_refuses_delete_until_lifted_by_a_writer(owner, owner_org, deployment, key_client):
    url = peering_url(owner_org, deployment)
    peering = owner.post(url, {**AWS_BODY, "deletion_protection": True}, format="json").json()
    one = f"{url}/{peering['id']}"
    problem = _problem(owner.delete(one), 409)
    assert "Deletion protection is on" in problem["detail"]

    user, _ = owner_org.add_member(project_grants=[(owner_org.default_project, "project_user")])
    _key, secret = owner_org.key_for(user, role="project_user", projects=[owner_org.default_project])
    project_user = key_client(secret)
    denied = _problem(project_user.patch(one, {"deletion_protection": False}, format="json"), 403)
    assert "deployment:write" in denied["detail"]
    # The rule is the service's, whoever calls it.
    from controlplane.errors import PermissionDenied
    from networking import services
    from organizations.access import Principal

    with pytest.raises(PermissionDenied):
        services.vpc_peering_update(
            peering=VpcPeering.objects.get(public_id=peering["id"]),
            actor=Principal(user=user),
            deletion_protection=False,
        )
    assert VpcPeering.objects.get(public_id=peering["id"]).deletion_protection is True

    lifted = owner.patch(one, {"deletion_protection": False}, format="json")
    assert lifted.status_code == 200 and lifted.json()["deletion_protection"] is False
    assert AuditEvent.objects.filter(action="vpc_peering.protection.lift", target_id=peering["id"]).exists()
    deleting = project_user.delete(one)  # a Project User may edit VPC peering (deployment:configure)
    assert deleting.status_code == 202 and deleting.json()["state"] == "deleting"
    assert AuditEvent.objects.filter(action="vpc_peering.delete", target_id=peering["id"]).exists()
    assert _problem(owner.delete(one), 409)["detail"].startswith("The peering is already being deleted")


def test_list_hides_deleted_peerings_unless_asked(owner, owner_org, deployment):
    url = peering_url(owner_org, deployment)
    peering = owner.post(url, AWS_BODY, format="json").json()
    VpcPeering.objects.filter(public_id=peering["id"]).update(state="deleted")
    assert owner.get(url).json()["results"] == []
    assert [p["id"] for p in owner.get(url + "?include_deleted=true").json()["results"]] == [peering["id"]]


def test_another_organization_gets_404_for_a_peering_and_its_deployment(owner_org, org_factory, deployment, key_client):
    from networking import services

    peering = services.vpc_peering_create(deployment=deployment, actor=None, **AWS_BODY)
    outsider = key_client(org_factory().owner_secret)
    url = peering_url(owner_org, deployment)
    for response in (
        outsider.get(f"{url}/{peering.public_id}"),
        outsider.delete(f"{url}/{peering.public_id}"),
        outsider.get(url),
        outsider.post(url, AWS_BODY, format="json"),
        outsider.post(url + "/validate", AWS_BODY, format="json"),
    ):
        _problem(response, 404)
    assert VpcPeering.objects.get(pk=peering.pk).state == "pending"


def test_auditor_reads_but_cannot_create_peerings(owner_org, deployment, key_client):
    user, _ = owner_org.add_member(roles=["auditor"])
    _key, secret = owner_org.key_for(user, role="auditor")
    auditor = key_client(secret)
    url = peering_url(owner_org, deployment)
    assert auditor.get(url).status_code == 200
    assert _problem(auditor.post(url, AWS_BODY, format="json"), 403)["detail"].startswith("This needs the ")


def test_list_query_count_does_not_grow_with_page_size(owner, owner_org, deployment):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from networking import services

    for n in range(12):
        services.vpc_peering_create(
            deployment=deployment, actor=None, **{**AWS_BODY, "cidr": f"10.{n + 1}.0.0/16", "vpc_id": f"vpc-{n:08x}"}
        )
    url = peering_url(owner_org, deployment)
    counts = {}
    for size in (2, 10):
        owner.get(f"{url}?page_size={size}")
        with CaptureQueriesContext(connection) as ctx:
            response = owner.get(f"{url}?page_size={size}")
        assert len(response.json()["results"]) == size
        counts[size] = len(ctx.captured_queries)
    assert counts[2] == counts[10] <= 8, counts
