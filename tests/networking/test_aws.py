"""AWS peering through boto3 against moto's EC2, run as an HTTP server: the full state walk, routes and the MQTT
security-group rule once accepted, the customer deleting their side, failures from AWS, rollback, and delete."""

import time

import pytest

from networking import services
from networking.models import VpcPeering
from tests.networking.conftest import CUSTOMER_ACCOUNT, REGION_AWS, make_deployment, poll
from tests.outage import soft_time_limit_on_connect

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(owner_org, aws_region):
    return make_deployment(owner_org.default_project, aws_region)


def _create(deployment, aws, **overrides):
    values = {
        "provider": "aws",
        "cidr": "10.1.0.0/16",
        "account_id": CUSTOMER_ACCOUNT,
        "vpc_id": aws.customer_vpc_id,
        "region": REGION_AWS,
        **overrides,
    }
    return services.vpc_peering_create(deployment=deployment, actor=None, **values)


def _reload(peering):
    return VpcPeering.objects.get(pk=peering.pk)


def test_peering_walks_to_active_with_routes_and_mqtt_rule_when_customer_accepts(deployment, aws):
    peering = _create(deployment, aws)
    assert peering.state == "pending" and aws.live_connections() == []

    assert poll(peering) == "awaiting_customer_action"
    peering = _reload(peering)
    pcx_id = peering.provider_ids["vpc_peering_connection_id"]
    assert aws.pcx(pcx_id)["Status"]["Code"] == "pending-acceptance"
    assert peering.provider_state == "initiating-request"  # what CreateVpcPeeringConnection answers first
    commands = peering.customer_action["commands"]
    assert commands[0] == (
        f"aws ec2 accept-vpc-peering-connection --region {REGION_AWS} --vpc-peering-connection-id {pcx_id}"
    )
    assert "--destination-cidr-block 10.0.0.0/16" in commands[1]
    assert {"Key": "mqtt-cloud:peering", "Value": peering.public_id} in aws.pcx(pcx_id)["Tags"]

    # Still waiting: another poll reads the request's progress and creates no second request.
    assert poll(peering) == "awaiting_customer_action"
    assert _reload(peering).provider_state == "pending-acceptance"
    assert len(aws.live_connections()) == 1

    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    assert poll(peering) == "active"
    peering = _reload(peering)
    assert peering.activated_at is not None and peering.customer_action == {}
    assert [(r["DestinationCidrBlock"], r["VpcPeeringConnectionId"]) for r in aws.routes()] == [("10.1.0.0/16", pcx_id)]
    opened = sorted(
        (p["FromPort"], r["CidrIp"]) for p in aws.ingress() for r in p["IpRanges"] if r["CidrIp"] == "10.1.0.0/16"
    )
    assert opened == [(1883, "10.1.0.0/16"), (8883, "10.1.0.0/16")]
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 0.0}

    # An active peering is re-checked (the resync) and stays active without adding anything twice.
    assert poll(peering) == "active"
    assert len(aws.routes()) == 1


def test_peering_fails_and_is_abnormal_when_customer_deletes_their_side(deployment, aws):
    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    assert poll(peering) == "active"

    aws.customer.delete_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.last_error == f"The peering connection was deleted (Deleted by {CUSTOMER_ACCOUNT})."
    assert peering.is_abnormal
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 1.0}
    assert peering.next_poll_at is None  # AWS never revives a deleted connection: nothing left to watch
    kinds = list(deployment.events.values_list("kind", flat=True))
    assert "vpc_peering.active" in kinds and "vpc_peering.failed" in kinds


def test_delete_removes_routes_rule_and_connection_when_active(deployment, aws):
    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    poll(peering)
    assert aws.routes()

    services.vpc_peering_delete(peering=_reload(peering), actor=None)
    assert _reload(peering).state == "deleting"
    assert poll(peering) == "deleted"
    assert aws.routes() == []
    assert not any(r["CidrIp"] == "10.1.0.0/16" for p in aws.ingress() for r in p["IpRanges"])
    assert aws.pcx(pcx_id)["Status"]["Code"] == "deleted"
    peering = _reload(peering)
    assert peering.deleted_at is not None and peering.next_poll_at is None


def test_peering_fails_with_aws_reason_and_nothing_created_when_customer_vpc_does_not_exist(deployment, aws):
    peering = _create(deployment, aws, vpc_id="vpc-0123456789abcdef0")
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert "InvalidVpcID.NotFound" in peering.last_error and "vpc-0123456789abcdef0" in peering.last_error
    assert aws.live_connections() == []
    assert peering.activated_at is None and not peering.is_abnormal


def test_peering_fails_and_request_is_cleaned_up_when_customer_rejects(deployment, aws):
    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    aws.customer.reject_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    assert poll(peering) == "failed"
    assert _reload(peering).last_error == "The peer account rejected the peering request."
    assert aws.live_connections() == []


def test_route_step_rolls_back_what_it_added_when_a_later_part_fails(deployment, aws, aws_region):
    # A second route table the platform VPC does not have: the first route is added, the second fails.
    aws_region.network = aws.network(route_table_ids=[aws.route_table_id, "rtb-0123456789abcdef0"])
    aws_region.save()
    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)

    assert poll(peering) == "failed"
    assert "InvalidRouteTableID.NotFound" in _reload(peering).last_error
    assert aws.routes() == []
    assert not any(r["CidrIp"] == "10.1.0.0/16" for p in aws.ingress() for r in p["IpRanges"])
    assert aws.pcx(pcx_id)["Status"]["Code"] == "deleted"  # the never-active peering is taken down too


def test_request_is_found_again_not_duplicated_when_a_poll_died_before_saving(deployment, aws):
    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    # As if the worker died after AWS created the request and before our row learnt its id.
    VpcPeering.objects.filter(pk=peering.pk).update(state="pending", provider_ids={})
    assert poll(peering) == "awaiting_customer_action"
    assert _reload(peering).provider_ids["vpc_peering_connection_id"] == pcx_id
    assert len(aws.live_connections()) == 1


def test_poll_keeps_state_and_retries_when_aws_is_unreachable(deployment, aws, aws_region):
    aws_region.network = aws.network(endpoint="http://127.0.0.1:9")  # nothing listens on the discard port
    aws_region.save()
    peering = _create(deployment, aws)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "could not be reached" in peering.last_error
    assert peering.next_poll_at is not None and peering.poll_attempt == 1


def test_poll_says_it_ran_out_of_time_when_the_soft_time_limit_interrupts_it(deployment, aws, aws_region):
    # The worker's soft time limit strikes while boto3 waits for EC2's answer. botocore takes any failure of its HTTP
    # send for a connection error and retries it: the poll must stop at once and say it ran out of time, not retry
    # into the hard limit or say that AWS could not be reached.
    peering = _create(deployment, aws)
    with soft_time_limit_on_connect() as port:
        aws_region.network = aws.network(endpoint=f"http://127.0.0.1:{port}")
        aws_region.save()
        started = time.monotonic()
        assert poll(peering) == "pending"
    took = time.monotonic() - started
    peering = _reload(peering)
    assert "ran out of time" in peering.last_error and "could not be reached" not in peering.last_error
    assert took < 10  # not one more try, each waiting up to 30 s for an answer
    assert peering.next_poll_at is not None and peering.poll_attempt == 1

    aws_region.network = aws.network()
    aws_region.save()
    assert poll(peering) == "awaiting_customer_action"  # the next poll goes on


def test_abnormal_peering_fires_the_vpc_alert_and_resolves_when_deleted(
    deployment, aws, django_capture_on_commit_callbacks
):
    from alerts.models import Alert, MetricSample

    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert poll(peering) == "active"
    assert not Alert.objects.filter(deployment=deployment, rule__default_key="vpc_peering_abnormal").exists()

    aws.customer.delete_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert poll(peering) == "failed"
    alert = Alert.objects.get(deployment=deployment, rule__default_key="vpc_peering_abnormal")
    assert alert.status == "firing" and alert.rule.severity == "critical"
    assert MetricSample.objects.filter(deployment=deployment, name="vpc_peering_abnormal").latest("ts").value == 1.0

    with django_capture_on_commit_callbacks(execute=True):
        services.vpc_peering_delete(peering=_reload(peering), actor=None)
    alert.refresh_from_db()
    assert alert.status == "resolved"


def test_sweep_feeds_the_metric_every_minute_for_deployments_with_peerings_that_were_active(deployment, aws):
    from alerts.models import MetricSample

    peering = _create(deployment, aws)
    poll(peering)
    assert services.peerings_sweep() == 0
    assert not MetricSample.objects.filter(name="vpc_peering_abnormal").exists()  # never active: nothing to watch
    aws.customer.accept_vpc_peering_connection(
        VpcPeeringConnectionId=_reload(peering).provider_ids["vpc_peering_connection_id"]
    )
    poll(peering)
    services.peerings_sweep()
    assert list(MetricSample.objects.filter(name="vpc_peering_abnormal").values_list("deployment_id", "value")) == [
        (deployment.pk, 0.0)
    ]


def test_deleting_a_failed_peering_keeps_the_mqtt_rule_of_a_live_peering_with_the_same_cidr(deployment, aws):
    # A failed before it ever worked: it holds no range, so B may take the same CIDR and become active.
    first = _create(deployment, aws)
    poll(first)
    aws.customer.reject_vpc_peering_connection(
        VpcPeeringConnectionId=_reload(first).provider_ids["vpc_peering_connection_id"]
    )
    assert poll(first) == "failed"
    second = _create(deployment, aws)
    poll(second)
    aws.customer.accept_vpc_peering_connection(
        VpcPeeringConnectionId=_reload(second).provider_ids["vpc_peering_connection_id"]
    )
    assert poll(second) == "active"

    def opened():
        return sorted(p["FromPort"] for p in aws.ingress() for r in p["IpRanges"] if r["CidrIp"] == "10.1.0.0/16")

    assert opened() == [1883, 8883]

    # Tidying up the failed one must not close the MQTT ports the active one opened for the same range.
    services.vpc_peering_delete(peering=_reload(first), actor=None)
    assert poll(first) == "deleted"
    assert opened() == [1883, 8883]
    assert len(aws.routes()) == 1


def test_request_adopts_its_earlier_connection_not_a_second_one_when_ec2_pages_the_tagged_listing(
    deployment, aws, aws_paging
):
    # A poll that created the connection and died before recording it: the next one finds it by its tag. EC2 may put
    # it on the listing's second page, behind an empty first one; reading one page made a second connection.
    peering = _create(deployment, aws)
    earlier = aws.platform.create_vpc_peering_connection(
        VpcId=aws.vpc_id,
        PeerVpcId=aws.customer_vpc_id,
        PeerOwnerId=CUSTOMER_ACCOUNT,
        PeerRegion=REGION_AWS,
        TagSpecifications=[
            {
                "ResourceType": "vpc-peering-connection",
                "Tags": [{"Key": "mqtt-cloud:peering", "Value": peering.public_id}],
            }
        ],
    )["VpcPeeringConnection"]["VpcPeeringConnectionId"]

    assert poll(peering) == "awaiting_customer_action"
    assert aws_paging[0] >= 1  # the listing was paged
    assert [p["VpcPeeringConnectionId"] for p in aws.live_connections()] == [earlier]
    assert _reload(peering).provider_ids["vpc_peering_connection_id"] == earlier


def test_request_is_waited_for_not_failed_when_aws_does_not_list_it_yet(deployment, aws, aws_lagging):
    peering = _create(deployment, aws)
    assert poll(peering) == "awaiting_customer_action"
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]

    aws_lagging.add(pcx_id)  # created a moment ago: EC2 does not list it everywhere yet
    assert poll(peering) == "awaiting_customer_action"
    peering = _reload(peering)
    assert pcx_id in peering.last_error and peering.next_poll_at is not None
    assert aws.pcx(pcx_id)["Status"]["Code"] == "pending-acceptance"  # not taken down

    aws_lagging.clear()
    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)
    assert poll(peering) == "active"


def test_delete_retries_until_aws_lists_the_request_it_just_created(deployment, aws, aws_lagging):
    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    services.vpc_peering_delete(peering=_reload(peering), actor=None)

    aws_lagging.add(pcx_id)
    assert poll(peering) == "deleting"  # not "deleted" with the request left behind for the customer to accept
    assert aws.pcx(pcx_id)["Status"]["Code"] == "pending-acceptance"

    aws_lagging.clear()
    assert poll(peering) == "deleted"
    assert aws.pcx(pcx_id)["Status"]["Code"] == "deleted"


def test_every_mqtt_port_is_opened_when_a_rule_for_one_of_them_already_exists(deployment, aws):
    # EC2 refuses a whole AuthorizeSecurityGroupIngress with InvalidPermission.Duplicate when one of its rules exists,
    # and adds none of the others (moto alike, for a rule listed first).
    aws.platform.authorize_security_group_ingress(
        GroupId=aws.security_group_id,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 1883, "ToPort": 1883, "IpRanges": [{"CidrIp": "10.1.0.0/16"}]}
        ],
    )
    peering = _create(deployment, aws)
    poll(peering)
    aws.customer.accept_vpc_peering_connection(
        VpcPeeringConnectionId=_reload(peering).provider_ids["vpc_peering_connection_id"]
    )
    assert poll(peering) == "active"
    opened = sorted(p["FromPort"] for p in aws.ingress() for r in p["IpRanges"] if r["CidrIp"] == "10.1.0.0/16")
    assert opened == [1883, 8883]


@pytest.fixture
def create_route_response_lost():
    """CreateRoute reaches EC2 and adds the route, but its answer is lost (a read timeout): botocore's standard retry
    mode sends it again (botocore/retries/standard.py retries HTTPClientError, ReadTimeoutError among them), and EC2
    answers the retry 400 RouteAlreadyExists, CreateRoute taking no client token."""
    import requests
    from botocore.exceptions import ReadTimeoutError

    from networking.providers.aws import _SESSION

    sent: list[str] = []

    def lose(request, **kwargs):
        if sent:
            return None
        sent.append(request.url)
        requests.post(request.url, data=request.body, headers=dict(request.headers), timeout=10).raise_for_status()
        raise ReadTimeoutError(endpoint_url=request.url)

    event = "before-send.ec2.CreateRoute"
    _SESSION.events.register(event, lose)
    yield sent
    _SESSION.events.unregister(event, lose)


def test_peering_turns_active_when_the_answer_to_create_route_was_lost(deployment, aws, create_route_response_lost):
    peering = _create(deployment, aws)
    poll(peering)
    pcx_id = _reload(peering).provider_ids["vpc_peering_connection_id"]
    aws.customer.accept_vpc_peering_connection(VpcPeeringConnectionId=pcx_id)

    assert poll(peering) == "active"
    assert create_route_response_lost  # the route was sent, and its answer lost
    assert [(r["DestinationCidrBlock"], r["VpcPeeringConnectionId"]) for r in aws.routes()] == [("10.1.0.0/16", pcx_id)]
    assert aws.pcx(pcx_id)["Status"]["Code"] == "active"
