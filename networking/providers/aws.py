"""AWS VPC peering with boto3: a peering request from the region's platform VPC to the customer's VPC, then, once the
customer accepted it, a route to their CIDR in each platform route table and a security-group rule for the MQTT ports.

The only module that imports boto3. Everything it creates is tagged or described with our peering id, so a retry
after a crash finds it again, and `remove` deletes it whatever stage it reached.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

from networking.providers.base import Customer, CustomerStep, Observation, Platform, ProviderError, raise_if_interrupted

TAG_KEY = "mqtt-cloud:peering"
DEFAULT_MQTT_PORTS = (1883, 8883, 8083, 8084)
# Codes that mean "try again later"; every other refusal is the answer to this request and will not change.
TEMPORARY_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestExpired",
        "AuthFailure",  # our own credentials: the operator fixes them, the peering waits
        "UnauthorizedOperation",
    }
)
WAITING_STATES = {"initiating-request", "pending-acceptance", "provisioning"}
BROKEN_REASONS = {
    "rejected": "The peer account rejected the peering request.",
    "expired": "The peering request was not accepted within 7 days and expired.",
    "deleted": "The peering connection was deleted",
    "deleting": "The peering connection is being deleted",
    "failed": "AWS could not establish the peering connection",
}
GONE_STATES = {"deleted", "deleting", "rejected", "failed", "expired"}
# EC2 is eventually consistent: a connection created moments ago may not be listed yet, and describing it by id
# answers InvalidVpcPeeringConnectionID.NotFound (botocore's VpcPeeringConnectionExists waiter retries on it). One we
# requested this recently is looked for again, not taken for gone; later, AWS goes on listing a connection that ended
# (deleted, rejected, expired) for a while, so one still missing is gone.
LISTING_GRACE_SECONDS = 600


def _error(exc: Exception, doing: str) -> ProviderError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Unknown"), error.get("Message", str(exc))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
        temporary = code in TEMPORARY_CODES or status >= 500
        return ProviderError(f"AWS refused to {doing}: {code}: {message}", permanent=not temporary)
    return ProviderError(f"AWS could not be reached to {doing}: {exc}", permanent=False)


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


# One session per process: it caches EC2's service model, which takes a second to load for every new session.
# Client creation from a shared session is not thread-safe, hence the lock; the clients themselves are.
_SESSION = boto3.session.Session()
_SESSION_LOCK = threading.Lock()


def _interrupted(caught_exception=None, **kwargs) -> None:
    """First of a client's needs-retry handlers. botocore wraps any failure of its HTTP send in HTTPClientError, which
    its standard mode retries: the task's soft time limit striking while boto3 waits for EC2 would be retried (a
    stalled endpoint then holds the task up to the hard limit) and end as "could not be reached". It rises at once,
    as itself."""
    if isinstance(caught_exception, HTTPClientError):
        raise_if_interrupted(caught_exception.kwargs.get("error"))


def _ec2(platform: Platform):
    credentials = platform.credentials
    with _SESSION_LOCK:
        client = _SESSION.client(
            "ec2",
            region_name=platform.region,
            aws_access_key_id=credentials.get("access_key_id"),
            aws_secret_access_key=credentials.get("secret_access_key"),
            aws_session_token=credentials.get("session_token") or None,
            endpoint_url=platform.endpoint,
            verify=platform.ca_bundle if platform.ca_bundle else None,
            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}),
        )
    client.meta.events.register_first("needs-retry.ec2", _interrupted)
    return client


def _ports(platform: Platform) -> list[int]:
    return [int(p) for p in platform.network.get("mqtt_ports", DEFAULT_MQTT_PORTS)]


def _permissions(platform: Platform, customer: Customer) -> list[dict]:
    return [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": customer.cidr, "Description": f"MQTT from VPC peering {customer.public_id}"}],
        }
        for port in _ports(platform)
    ]


def _tagged(ec2, customer: Customer) -> list[dict]:
    """Our peering connections for this peering id that are not gone. The filter narrows on AWS; the tag check is
    what decides (an endpoint that ignores filters must not make us adopt someone else's connection). EC2 may page
    the answer (NextToken) even when filtered: every page is read, through boto3's paginator."""
    pages = ec2.get_paginator("describe_vpc_peering_connections").paginate(
        Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [customer.public_id]}]
    )
    return [
        pcx
        for page in pages
        for pcx in page.get("VpcPeeringConnections", [])
        if {"Key": TAG_KEY, "Value": customer.public_id} in pcx.get("Tags", [])
        and pcx["Status"]["Code"] not in GONE_STATES
    ]


def _route_tables(ec2, platform: Platform) -> list[dict]:
    """The platform's route tables that exist (one that does not holds no route of ours to remove)."""
    tables = []
    for table_id in platform.network.get("route_table_ids", []):
        try:
            tables.extend(ec2.describe_route_tables(RouteTableIds=[table_id])["RouteTables"])
        except ClientError as exc:
            if _code(exc) != "InvalidRouteTableID.NotFound":
                raise
    return tables


def _not_listed_yet(ids: Mapping, pcx_id: str) -> ProviderError | None:
    """The temporary error for a connection we requested within LISTING_GRACE_SECONDS that EC2 does not list yet."""
    requested = ids.get("requested_at")
    if pcx_id != ids.get("vpc_peering_connection_id") or not isinstance(requested, (int, float)):
        return None
    if time.time() - requested >= LISTING_GRACE_SECONDS:
        return None
    return ProviderError(
        f"AWS does not list the peering connection {pcx_id} yet (it was requested moments ago); looking again.",
        permanent=False,
    )


def _create_route(ec2, table_id: str, cidr: str, pcx_id: str) -> bool:
    """Route `cidr` through `pcx_id` in `table_id`; False when the route was there already. CreateRoute takes no
    client token: a retry of one whose answer was lost (botocore retries read timeouts), or a route a describe did not
    show yet, answers RouteAlreadyExists. That route is ours when it goes through this peering; one to another target
    is someone else's, and a refusal."""
    try:
        ec2.create_route(RouteTableId=table_id, DestinationCidrBlock=cidr, VpcPeeringConnectionId=pcx_id)
        return True
    except ClientError as exc:
        if _code(exc) != "RouteAlreadyExists":
            raise
        tables = ec2.describe_route_tables(RouteTableIds=[table_id])["RouteTables"]
        routes = [r for t in tables for r in t.get("Routes", []) if r.get("DestinationCidrBlock") == cidr]
        if any(r.get("VpcPeeringConnectionId") == pcx_id for r in routes):
            return False
        if not routes:
            raise ProviderError(
                f"AWS says a route to {cidr} exists in {table_id} but does not list it yet; looking again.",
                permanent=False,
            ) from exc
        raise


def _describe(ec2, pcx_id: str) -> dict | None:
    try:
        found = ec2.describe_vpc_peering_connections(VpcPeeringConnectionIds=[pcx_id])
    except ClientError as exc:
        if _code(exc).startswith("InvalidVpcPeeringConnectionID"):
            return None
        raise
    connections = found.get("VpcPeeringConnections", [])
    return connections[0] if connections else None


class AwsAdapter:
    def request(self, platform: Platform, customer: Customer) -> Observation:
        try:
            ec2 = _ec2(platform)
            existing = _tagged(ec2, customer)
            ids: dict = {}
            if existing:
                pcx = existing[0]
            else:
                ids["requested_at"] = time.time()
                pcx = ec2.create_vpc_peering_connection(
                    VpcId=platform.network["vpc_id"],
                    PeerVpcId=customer.vpc_id,
                    PeerOwnerId=customer.account_id,
                    PeerRegion=customer.region,
                    TagSpecifications=[
                        {
                            "ResourceType": "vpc-peering-connection",
                            "Tags": [
                                {"Key": "Name", "Value": customer.public_id},
                                {"Key": TAG_KEY, "Value": customer.public_id},
                            ],
                        }
                    ],
                )["VpcPeeringConnection"]
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, "create the VPC peering request") from exc
        status = pcx["Status"]
        observation = _observe(status)
        return Observation(
            observation.status,
            status["Code"],
            observation.detail,
            ids={**ids, "vpc_peering_connection_id": pcx["VpcPeeringConnectionId"]},
        )

    def refresh(self, platform: Platform, customer: Customer, ids: Mapping) -> Observation:
        pcx_id = ids.get("vpc_peering_connection_id")
        if not pcx_id:
            return self.request(platform, customer)
        try:
            ec2 = _ec2(platform)
            pcx = _describe(ec2, pcx_id)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, f"describe {pcx_id}") from exc
        if pcx is None:
            if error := _not_listed_yet(ids, pcx_id):
                raise error
            return Observation("broken", "not-found", f"The peering connection {pcx_id} no longer exists.")
        status = pcx["Status"]
        observation = _observe(status)
        if observation.status != "active":
            return observation
        routes = self._connect(ec2, platform, customer, pcx_id)
        return Observation("active", status["Code"], "", ids={"routes": routes, "security_group_rule": True})

    def _connect(self, ec2, platform: Platform, customer: Customer, pcx_id: str) -> list[dict]:
        """Routes to the customer's CIDR through the peering, and the MQTT ports open to it. Idempotent; a failure
        takes back what this call added."""
        added: list[dict] = []
        authorized: list[dict] = []
        try:
            tables = list(platform.network.get("route_table_ids", []))
            current = ec2.describe_route_tables(RouteTableIds=tables)["RouteTables"] if tables else []
            for table in current:
                mine = [
                    r
                    for r in table.get("Routes", [])
                    if r.get("DestinationCidrBlock") == customer.cidr and r.get("VpcPeeringConnectionId") == pcx_id
                ]
                if not mine and _create_route(ec2, table["RouteTableId"], customer.cidr, pcx_id):
                    added.append({"route_table_id": table["RouteTableId"], "cidr": customer.cidr})
            group = platform.network.get("security_group_id")
            # One call per port: EC2 refuses a whole call with InvalidPermission.Duplicate when one of its rules
            # exists (an operator's, or one from before a port was added to the region) and adds none of the others.
            for permission in _permissions(platform, customer) if group else []:
                try:
                    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[permission])
                    authorized.append(permission)
                except ClientError as exc:
                    if _code(exc) != "InvalidPermission.Duplicate":
                        raise
        except (ClientError, BotoCoreError, ProviderError) as exc:
            for route in added:
                try:
                    ec2.delete_route(RouteTableId=route["route_table_id"], DestinationCidrBlock=route["cidr"])
                except (ClientError, BotoCoreError):
                    pass  # remove() looks for routes through this peering again
            if authorized:
                try:
                    ec2.revoke_security_group_ingress(
                        GroupId=platform.network["security_group_id"], IpPermissions=authorized
                    )
                except (ClientError, BotoCoreError):
                    pass
            if isinstance(exc, ProviderError):
                raise
            raise _error(exc, f"route {customer.cidr} through {pcx_id}") from exc
        return [{"route_table_id": t["RouteTableId"], "cidr": customer.cidr} for t in current]

    def remove(self, platform: Platform, customer: Customer, ids: Mapping) -> None:
        try:
            ec2 = _ec2(platform)
            pcx_ids = {ids["vpc_peering_connection_id"]} if ids.get("vpc_peering_connection_id") else set()
            pcx_ids |= {pcx["VpcPeeringConnectionId"] for pcx in _tagged(ec2, customer)}
            for table in _route_tables(ec2, platform):
                for route in table.get("Routes", []):
                    if route.get("VpcPeeringConnectionId") in pcx_ids and route.get("DestinationCidrBlock"):
                        try:
                            ec2.delete_route(
                                RouteTableId=table["RouteTableId"],
                                DestinationCidrBlock=route["DestinationCidrBlock"],
                            )
                        except ClientError as exc:
                            if _code(exc) != "InvalidRoute.NotFound":
                                raise
            group = platform.network.get("security_group_id")
            # AWS matches a rule on protocol, ports and CIDR alone: with another peering holding the CIDR, the rule
            # is that peering's (its authorize found ours a duplicate, or ours never existed).
            # One call per port, as in _connect: each rule goes whether or not the others are still there.
            for permission in _permissions(platform, customer) if group and not customer.cidr_in_use else []:
                try:
                    ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=[permission])
                except ClientError as exc:
                    if _code(exc) != "InvalidPermission.NotFound":
                        raise
            for pcx_id in sorted(pcx_ids):
                pcx = _describe(ec2, pcx_id)
                if pcx is None and (error := _not_listed_yet(ids, pcx_id)):
                    raise error  # deleted once EC2 lists it: a request left behind could still be accepted
                if pcx is None or pcx["Status"]["Code"] in GONE_STATES:
                    continue
                try:
                    ec2.delete_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
                except ClientError as exc:
                    if not _code(exc).startswith("InvalidVpcPeeringConnectionID"):
                        raise
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, "delete the VPC peering") from exc

    def customer_step(self, platform: Platform, customer: Customer, ids: Mapping) -> CustomerStep:
        pcx_id = ids.get("vpc_peering_connection_id", "<pending>")
        return CustomerStep(
            summary=(
                f"Accept peering connection {pcx_id} in AWS account {customer.account_id} ({customer.region}), then "
                f"route the platform's network {platform.cidr} through it from your VPC {customer.vpc_id}'s route "
                f"tables and allow it in your security groups."
            ),
            commands=(
                f"aws ec2 accept-vpc-peering-connection --region {customer.region} "
                f"--vpc-peering-connection-id {pcx_id}",
                f"aws ec2 create-route --region {customer.region} --route-table-id <your-route-table-id> "
                f"--destination-cidr-block {platform.cidr} --vpc-peering-connection-id {pcx_id}",
            ),
        )


def _observe(status: Mapping) -> Observation:
    code, message = status.get("Code", ""), status.get("Message", "")
    if code == "active":
        return Observation("active", code)
    if code in WAITING_STATES:
        return Observation("waiting", code, message)
    reason = BROKEN_REASONS.get(code, f"AWS reports the peering connection as {code}")
    if code not in ("rejected", "expired") and message:
        reason = f"{reason} ({message})."
    elif not reason.endswith("."):
        reason += "."
    return Observation("broken", code, reason)


ADAPTER = AwsAdapter()
