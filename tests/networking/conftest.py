"""Clouds for the VPC peering tests: moto's EC2 as a real HTTP server for boto3, the Azure (HTTPS) and GCP fakes from
tests/fakes, and regions whose network and encrypted credentials point at them, as load_regions would store them."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import pytest

# moto loads its catalogue of default machine images into each region's EC2 backend, again after every reset, for
# images that peering never reads (about 0.1 s of CPU per AWS test); it reads this switch at each backend's creation.
# Set when the tests are collected, for the whole process, not only while moto's server runs: the processes a test
# starts inherit the environment, and the shared Celery worker is handed on only to a test asking for the environment
# it was started with (tests/celery_worker.py), so a switch that appeared mid-run made it stop and start again.
os.environ["MOTO_EC2_LOAD_DEFAULT_AMIS"] = "false"

REGION_AWS = "eu-central-1"
PLATFORM_ACCOUNT = "123456789012"  # moto's default account: the platform's
CUSTOMER_ACCOUNT = "222233334444"
AZURE_PLATFORM_TENANT = "11111111-1111-4111-8111-111111111111"
AZURE_PLATFORM_SUBSCRIPTION = "22222222-2222-4222-8222-222222222222"
AZURE_CUSTOMER_TENANT = "33333333-3333-4333-8333-333333333333"
AZURE_CUSTOMER_SUBSCRIPTION = "44444444-4444-4444-8444-444444444444"
AZURE_APPLICATION = "55555555-5555-4555-8555-555555555555"
AZURE_SECRET = "platform-application-secret"


def make_region(*, code: str, provider: str, cloud_region: str, network: dict, credentials: dict | None):
    from controlplane import crypto
    from deployments.models import Region, Tier

    region = Region.objects.create(
        code=code,
        display_name=code,
        provider=provider,
        cloud_region=cloud_region,
        driver=Region.Driver.KUBERNETES,
        in_cluster=True,
        network=network,
        cloud_credentials_encrypted=crypto.encrypt_str(json.dumps(credentials)) if credentials else "",
    )
    region.tiers.set(Tier.objects.filter(plan__code__in=["dedicated", "premium"]))
    return region


def make_deployment(project, region, *, name: str = "factory", plan: str = "dedicated"):
    """A deployment already running in `region` (made directly: no reconcile is wanted in these tests)."""
    from deployments.models import Deployment, Plan, Tier

    plan_row = Plan.objects.get(code=plan)
    return Deployment.objects.create(
        project=project,
        name=name,
        plan=plan_row,
        # Serverless has no tiers in the catalog; any tier stands in, the plan is what is checked.
        tier=Tier.objects.filter(plan=plan_row).first() or Tier.objects.first(),
        region=region,
        status="running",
        generation=1,
        observed_generation=1,
    )


def poll(peering, times: int = 1) -> str:
    """Run the poll the scheduled task would run, in this process; returns the state it left."""
    from networking import services
    from networking.models import VpcPeering

    outcome = ""
    for _ in range(times):
        token = VpcPeering.objects.get(pk=peering.pk).poll_token
        outcome = services.peering_poll(peering_id=peering.pk, token=token)
    return outcome


def peering_url(org, deployment) -> str:
    return f"/api/v1/organizations/{org.id}/projects/{deployment.project.public_id}/deployments/{deployment.public_id}/vpc-peerings"


def body_then_unknown_route(connection, method: str, path: str, body: bytes) -> tuple[int, int, bytes]:
    """On one kept-alive connection to a fake: `method path` with a JSON `body`, then a GET of a route no fake has.
    Returns both statuses and the second answer's body (the test of each fake reading every body)."""
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        first = connection.getresponse()
        first.read()
        connection.request("GET", "/no/such/route")
        second = connection.getresponse()
        return first.status, second.status, second.read()
    finally:
        connection.close()


# -- AWS: moto -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclasses.dataclass
class AwsWorld:
    url: str
    platform: object  # boto3 EC2 client of the platform's account
    customer: object  # boto3 EC2 client of the customer's account
    vpc_id: str
    route_table_id: str
    security_group_id: str
    customer_vpc_id: str

    def network(self, **extra) -> dict:
        return {
            "account_id": PLATFORM_ACCOUNT,
            "vpc_id": self.vpc_id,
            "cidr": "10.0.0.0/16",
            "route_table_ids": [self.route_table_id],
            "security_group_id": self.security_group_id,
            "mqtt_ports": [1883, 8883],
            "endpoint": self.url,
            **extra,
        }

    def pcx(self, pcx_id: str) -> dict | None:
        found = self.platform.describe_vpc_peering_connections(VpcPeeringConnectionIds=[pcx_id])
        return (found["VpcPeeringConnections"] or [None])[0]

    def routes(self) -> list[dict]:
        table = self.platform.describe_route_tables(RouteTableIds=[self.route_table_id])["RouteTables"][0]
        return [r for r in table["Routes"] if r.get("VpcPeeringConnectionId")]

    def ingress(self) -> list[dict]:
        group = self.platform.describe_security_groups(GroupIds=[self.security_group_id])["SecurityGroups"][0]
        return group["IpPermissions"]

    def live_connections(self) -> list[dict]:
        found = self.platform.describe_vpc_peering_connections()["VpcPeeringConnections"]
        return [p for p in found if p["Status"]["Code"] not in ("deleted", "rejected", "failed", "expired")]


@pytest.fixture
def aws(moto_url):
    import boto3
    import requests

    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    common = {"region_name": REGION_AWS, "endpoint_url": moto_url}
    platform = boto3.client("ec2", aws_access_key_id="testing", aws_secret_access_key="testing", **common)
    sts = boto3.client("sts", aws_access_key_id="testing", aws_secret_access_key="testing", **common)
    assumed = sts.assume_role(RoleArn=f"arn:aws:iam::{CUSTOMER_ACCOUNT}:role/customer", RoleSessionName="customer")
    credentials = assumed["Credentials"]
    customer = boto3.client(
        "ec2",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        **common,
    )
    vpc_id = platform.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    route_table_id = platform.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
    group_id = platform.create_security_group(GroupName="brokers", Description="MQTT brokers", VpcId=vpc_id)["GroupId"]
    customer_vpc = customer.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]
    assert customer_vpc["OwnerId"] == CUSTOMER_ACCOUNT
    return AwsWorld(moto_url, platform, customer, vpc_id, route_table_id, group_id, customer_vpc["VpcId"])


def _ec2_answer(request, status: int, xml: str):
    from botocore.awsrequest import AWSResponse

    return AWSResponse(request.url, status, {"Content-Type": "text/xml;charset=UTF-8"}, _Raw(xml))


def _no_connections(request, next_token: str = ""):
    """A DescribeVpcPeeringConnections page holding no connection (`next_token`: more may follow)."""
    token = f"<nextToken>{next_token}</nextToken>" if next_token else ""
    return _ec2_answer(
        request,
        200,
        '<?xml version="1.0" encoding="UTF-8"?><DescribeVpcPeeringConnectionsResponse '
        'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>00000000-0000-0000-0000-000000000000'
        f"</requestId><vpcPeeringConnectionSet/>{token}</DescribeVpcPeeringConnectionsResponse>",
    )


@contextlib.contextmanager
def _describe_answered_by(answer):
    """`answer(request, body)` answers the adapter's DescribeVpcPeeringConnections (None: moto does)."""
    from networking.providers.aws import _SESSION

    def hook(request, **kwargs):
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
        return answer(request, body)

    event = "before-send.ec2.DescribeVpcPeeringConnections"
    _SESSION.events.register(event, hook)
    try:
        yield
    finally:
        _SESSION.events.unregister(event, hook)


@pytest.fixture
def aws_lagging():
    """EC2's eventual consistency, for the adapter's boto3 client: while `hidden` holds a peering connection id,
    DescribeVpcPeeringConnections answers for it as EC2 does for one it does not list yet: 400
    InvalidVpcPeeringConnectionID.NotFound when asked by id, an empty set when filtered. ("If you run a command to
    describe a resource immediately after creating it, its ID might not have propagated throughout the system": AWS's
    EC2 API reference, "Eventual consistency"; botocore's VpcPeeringConnectionExists waiter retries on that code,
    botocore/data/ec2/2016-11-15/waiters-2.json.)"""
    hidden: set[str] = set()

    def answer(request, body):
        pcx = next((p for p in hidden if p in body), None)
        if pcx is None and not (hidden and "Filter." in body):
            return None
        if pcx is not None and "VpcPeeringConnectionId." in body:
            return _ec2_answer(
                request,
                400,
                '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
                "<Code>InvalidVpcPeeringConnectionID.NotFound</Code>"
                f"<Message>The vpcPeeringConnection ID '{pcx}' does not exist</Message></Error></Errors>"
                "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
            )
        return _no_connections(request)

    with _describe_answered_by(answer):
        yield hidden


@pytest.fixture
def aws_paging():
    """EC2 paging a filtered DescribeVpcPeeringConnections, for the adapter's boto3 client: the first page holds no
    connection and a NextToken, and the request for that token gets moto's whole answer. An EC2 page ends with a
    NextToken while more may follow, and may hold none of the results: a client reads on until no token comes.
    Yields a one-item list counting the first pages answered so."""
    pages = [0]

    def answer(request, body):
        if "Filter." not in body or "NextToken=" in body:
            return None
        pages[0] += 1
        return _no_connections(request, next_token="page-2")

    with _describe_answered_by(answer):
        yield pages


class _Raw:
    """The raw body botocore reads from a response."""

    def __init__(self, text: str) -> None:
        self._data = text.encode()

    def stream(self, **kwargs):
        yield self._data


@pytest.fixture
def aws_region(aws, deployments_catalog):
    return make_region(
        code="aws-frankfurt",
        provider="aws",
        cloud_region=REGION_AWS,
        network=aws.network(),
        credentials={"access_key_id": "testing", "secret_access_key": "testing"},
    )


# -- GCP -------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GcpWorld:
    fake: object
    url: str
    credentials: dict
    project: str = "mqtt-platform-eu"
    network_name: str = "brokers"
    customer_project: str = "acme-factory-42"
    customer_network: str = "plant-net"


def _service_account(email: str, token_uri: str) -> tuple[dict, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": "k1",
        "private_key": private,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return info, public


@pytest.fixture(scope="session")
def _gcp_server():
    from tests.fakes.gcp_compute import FakeGcpServer

    server = FakeGcpServer().start()
    yield server
    server.stop()


@pytest.fixture
def gcp(_gcp_server):
    from tests.fakes.gcp_compute import FakeGcp

    fresh = FakeGcp()
    state = _gcp_server.state
    with state.lock:
        for name in ("accounts", "members", "networks", "operations", "tokens", "seen"):
            setattr(state, name, getattr(fresh, name))
        state.operation_polls = 1
    world = GcpWorld(fake=state, url=_gcp_server.url, credentials={})
    email = f"controlplane@{world.project}.iam.gserviceaccount.com"
    world.credentials, public = _service_account(email, f"{_gcp_server.url}/token")
    state.add_service_account(email, public, [world.project])
    state.add_network(world.project, world.network_name, ["10.0.0.0/16"])
    state.add_network(world.customer_project, world.customer_network, ["10.1.0.0/16"])
    return world


@pytest.fixture
def gcp_region(gcp, deployments_catalog):
    return make_region(
        code="gcp-belgium",
        provider="gcp",
        cloud_region="europe-west1",
        network={"project_id": gcp.project, "network": gcp.network_name, "cidr": "10.0.0.0/16", "endpoint": gcp.url},
        credentials=gcp.credentials,
    )


# -- Azure -----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AzureWorld:
    fake: object
    url: str
    ca_path: str
    platform_vnet: str
    customer_vnet: str
    resource_group: str = "platform-rg"
    vnet_name: str = "brokers-vnet"
    customer_resource_group: str = "acme-rg"
    customer_vnet_name: str = "plant-vnet"

    def customer_grants_access(self, role: str = "Network Contributor", organization: str | None = None) -> None:
        """What the customer step asks: register our application, give it `role` on their VNet, and (given the
        organization's public id) tag the VNet as theirs to peer with it."""
        self.fake.register_application(AZURE_CUSTOMER_TENANT, AZURE_APPLICATION)
        self.fake.assign_role(AZURE_APPLICATION, self.customer_vnet, role)
        if organization is not None:
            self.customer_tags_vnet(organization)

    def customer_tags_vnet(self, organization: str) -> None:
        from networking.checks import AZURE_OWNER_TAG

        self.fake.tag_vnet(self.customer_vnet, AZURE_OWNER_TAG, organization)


@pytest.fixture(scope="session")
def _azure_server(tmp_path_factory):
    from tests.fakes.azure_arm import FakeAzureServer
    from tests.fakes.tls import make_pki

    pki = make_pki(tmp_path_factory.mktemp("azure-pki"))
    server = FakeAzureServer(pki).start()
    server.ca_path = str(pki.ca_path)
    yield server
    server.stop()


@pytest.fixture
def azure(_azure_server, settings, monkeypatch):
    from networking.providers import azure as provider
    from tests.fakes.azure_arm import FakeAzure

    # The fake's operations end at their first status read (Retry-After 0): the SDK's second between two reads
    # would only be slept. A test that undoes its monkeypatch gets the second back.
    monkeypatch.setattr(provider, "LRO_POLL_SECONDS", 0.05)

    state = _azure_server.state
    fresh = FakeAzure()
    with state.lock:
        for name in ("subscriptions", "applications", "registered", "roles", "vnets", "tokens", "operations", "seen"):
            setattr(state, name, getattr(fresh, name))
        state.failures.clear()
        state.operation_polls = 1
        state.next_operation_error = None
        state.next_operation_status = "Failed"
        state.operation_retry_after = "0"
        state.hold_operations = False
    settings.CLOUD_CA_BUNDLE = _azure_server.ca_path
    state.add_tenant(AZURE_PLATFORM_TENANT, [AZURE_PLATFORM_SUBSCRIPTION])
    state.add_tenant(AZURE_CUSTOMER_TENANT, [AZURE_CUSTOMER_SUBSCRIPTION])
    state.add_application(AZURE_PLATFORM_TENANT, AZURE_APPLICATION, AZURE_SECRET)
    platform_vnet = state.add_vnet(
        AZURE_PLATFORM_SUBSCRIPTION, "platform-rg", "brokers-vnet", ["10.0.0.0/16"], "westeurope"
    )
    state.assign_role(AZURE_APPLICATION, f"/subscriptions/{AZURE_PLATFORM_SUBSCRIPTION}")
    customer_vnet = state.add_vnet(AZURE_CUSTOMER_SUBSCRIPTION, "acme-rg", "plant-vnet", ["10.1.0.0/16"], "westeurope")
    return AzureWorld(state, _azure_server.url, _azure_server.ca_path, platform_vnet, customer_vnet)


@pytest.fixture
def azure_region(azure, deployments_catalog):
    return make_region(
        code="azure-westeurope",
        provider="azure",
        cloud_region="westeurope",
        network={
            "tenant_id": AZURE_PLATFORM_TENANT,
            "subscription_id": AZURE_PLATFORM_SUBSCRIPTION,
            "resource_group": azure.resource_group,
            "vnet_name": azure.vnet_name,
            "cidr": "10.0.0.0/16",
            "endpoint": azure.url,
            "authority": azure.url,
        },
        credentials={"client_id": AZURE_APPLICATION, "client_secret": AZURE_SECRET},
    )
