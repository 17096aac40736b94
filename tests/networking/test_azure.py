"""Azure peering through azure-identity and azure-mgmt-network against the HTTPS fake in tests/fakes/azure_arm.py
(MSAL discovery and client-credentials tokens, ARM peerings with Azure-AsyncOperation polling, role assignments
checked per action): both sides created by our application with the role the customer granted, the refusals when
they granted none or too little, a refusal from Azure, the customer deleting their side, and delete."""

import http.client
import json
import ssl
import time
from urllib.parse import urlsplit

import pytest

from networking import services
from networking.api import VpcPeeringSerializer
from networking.models import VpcPeering
from tests.networking.conftest import (
    AZURE_APPLICATION,
    AZURE_CUSTOMER_SUBSCRIPTION,
    AZURE_CUSTOMER_TENANT,
    body_then_unknown_route,
    make_deployment,
    poll,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(owner_org, azure_region):
    return make_deployment(owner_org.default_project, azure_region)


def _create(deployment, azure, tag=True, **overrides):
    if tag:  # the customer's VNet says it is theirs to peer with this organization
        azure.customer_tags_vnet(deployment.project.organization.public_id)
    values = {
        "provider": "azure",
        "cidr": "10.1.0.0/16",
        "tenant_id": AZURE_CUSTOMER_TENANT,
        "subscription_id": AZURE_CUSTOMER_SUBSCRIPTION,
        "resource_group": azure.customer_resource_group,
        "vnet_name": azure.customer_vnet_name,
        **overrides,
    }
    return services.vpc_peering_create(deployment=deployment, actor=None, **values)


def _reload(peering):
    return VpcPeering.objects.get(pk=peering.pk)


def _sides(azure, peering):
    return (
        azure.fake.peering(azure.platform_vnet, peering.public_id),
        azure.fake.peering(azure.customer_vnet, peering.public_id),
    )


@pytest.mark.parametrize("role", ["Network Contributor", "Virtual Network Peering Operator"])
def test_both_sides_are_created_and_connected_when_customer_granted_the_role(deployment, azure, role):
    azure.customer_grants_access(role)
    peering = _create(deployment, azure)

    assert poll(peering) == "active"
    peering = _reload(peering)
    assert peering.provider_state == "Connected" and peering.activated_at is not None
    assert peering.customer_action == {} and peering.last_error == ""
    ours, theirs = _sides(azure, peering)
    assert ours["properties"]["peeringState"] == "Connected"
    assert ours["properties"]["remoteVirtualNetwork"]["id"] == azure.customer_vnet
    assert theirs["properties"]["peeringState"] == "Connected"
    assert theirs["properties"]["remoteVirtualNetwork"]["id"] == azure.platform_vnet
    assert (
        peering.provider_ids["customer_peering_id"]
        == f"{azure.customer_vnet}/virtualNetworkPeerings/{peering.public_id}"
    )
    data = VpcPeeringSerializer(peering).data
    assert data["provider_peering_id"] == f"{azure.platform_vnet}/virtualNetworkPeerings/{peering.public_id}"
    # Each write carried a token of the other VNet's tenant for ARM's peer/action check on it.
    puts = azure.fake.requests("PUT", "/virtualNetworkPeerings/")
    assert {put[1].split("/")[2] for put in puts} == {
        azure.platform_vnet.split("/")[2],
        AZURE_CUSTOMER_SUBSCRIPTION,
    }
    assert all(put[2].get("x-ms-authorization-auxiliary", "").startswith("Bearer ") for put in puts)


def test_peering_fails_naming_the_role_when_the_customer_granted_none(deployment, azure):
    azure.fake.register_application(AZURE_CUSTOMER_TENANT, AZURE_APPLICATION)  # registered, but no role
    peering = _create(deployment, azure)

    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert "AuthorizationFailed" in peering.last_error
    assert (
        f'Grant our application {AZURE_APPLICATION} the "Network Contributor" role on your virtual network '
        f"{azure.customer_vnet}" in peering.last_error
    )
    assert "Microsoft.Network/virtualNetworks/peer/action" in peering.last_error
    assert "create the peering again" in peering.last_error
    assert _sides(azure, peering) == (None, None)
    assert peering.next_poll_at is None and peering.poll_token == ""  # settled: nothing polls it again


def test_peering_fails_naming_the_role_when_the_customer_granted_only_reader(deployment, azure):
    azure.customer_grants_access("Reader")
    peering = _create(deployment, azure)

    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert '"Network Contributor" role' in peering.last_error
    assert _sides(azure, peering) == (None, None)


def test_customer_side_write_is_refused_by_azure_when_role_lacks_peering_write(deployment, azure):
    # The platform side may link to theirs (peer/action there) but not write a peering on their VNet: ARM answers
    # 403 AuthorizationFailed to the second write, and our side, already made, is removed before the peering fails.
    azure.fake.register_application(AZURE_CUSTOMER_TENANT, AZURE_APPLICATION)
    azure.fake.assign_role(AZURE_APPLICATION, azure.customer_vnet, "Peer Only")
    peering = _create(deployment, azure)

    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.last_error.startswith(
        f"Azure refused to create your side of peering {peering.public_id}: AuthorizationFailed"
    )
    assert '"Network Contributor" role' in peering.last_error
    assert azure.fake.requests("DELETE", azure.platform_vnet.split("/virtualNetworks/")[1])
    assert _sides(azure, peering) == (None, None)


@pytest.mark.parametrize("tag", [None, "org_someoneelse00000000"])
def test_peering_fails_and_creates_nothing_when_the_vnet_is_not_tagged_for_this_organization(
    deployment, azure, owner_org, tag
):
    # Our application holds the role on this VNet (its owner granted it), but the VNet is not tagged as theirs to
    # peer with this organization: another organization naming it gets nothing peered.
    azure.customer_grants_access()
    if tag is not None:
        azure.customer_tags_vnet(tag)
    peering = _create(deployment, azure, tag=False)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    organization = owner_org.organization.public_id
    assert f"does not carry the tag mqtt-cloud-organization={organization}" in peering.last_error
    assert f"--tags mqtt-cloud-organization={organization}`" in peering.last_error
    assert _sides(azure, peering) == (None, None)
    assert not azure.fake.requests("PUT", "/virtualNetworkPeerings/")


def test_peering_fails_naming_the_registration_when_application_is_unknown_to_their_tenant(deployment, azure):
    peering = _create(deployment, azure)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert f"Run `az ad sp create --id {AZURE_APPLICATION}`" in peering.last_error
    assert "AADSTS700016" in peering.last_error
    assert '"Network Contributor" role' in peering.last_error
    assert _sides(azure, peering) == (None, None)


def test_customer_side_is_created_by_a_later_poll_when_azure_answered_5xx(deployment, azure):
    azure.customer_grants_access()
    for _ in range(3):  # the SDK's own two retries see it too
        azure.fake.fail_next("PUT", azure.customer_vnet, 503, "ServiceUnavailable", "Try again later.")
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "ServiceUnavailable" in peering.last_error or "503" in peering.last_error
    ours, theirs = _sides(azure, peering)
    assert ours is not None and theirs is None
    assert poll(peering) == "active"
    assert _sides(azure, peering)[1]["properties"]["peeringState"] == "Connected"


def test_peering_fails_with_azure_reason_when_address_spaces_overlap(deployment, azure):
    # The customer declared 10.1.0.0/16, but their VNet really holds the platform's range too: ARM refuses.
    azure.fake.vnets[azure.customer_vnet.lower()]["address_space"] = ["10.1.0.0/16", "10.0.128.0/20"]
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.last_error.startswith(
        f"Azure refused to create peering {peering.public_id}: VnetAddressSpacesOverlap"
    )
    assert azure.fake.peering(azure.platform_vnet, peering.public_id) is None


def test_peering_fails_and_is_abnormal_when_customer_deletes_their_side(deployment, azure):
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"

    azure.fake.delete_peering(azure.customer_vnet, peering.public_id)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.provider_state == "Disconnected" and peering.is_abnormal
    assert "delete this peering and create a new one" in peering.last_error
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 1.0}

    services.vpc_peering_delete(peering=peering, actor=None)
    assert poll(peering) == "deleted"
    assert _sides(azure, peering) == (None, None)
    assert azure.fake.requests("DELETE", "/virtualNetworkPeerings/")
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 0.0}


def test_delete_removes_both_sides_when_the_customer_still_grants_access(deployment, azure):
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    services.vpc_peering_delete(peering=_reload(peering), actor=None)
    assert poll(peering) == "deleted"
    assert _sides(azure, peering) == (None, None)


def test_delete_needs_no_access_to_customer_tenant_when_they_revoked_it(deployment, azure):
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    azure.fake.registered[AZURE_CUSTOMER_TENANT].discard(AZURE_APPLICATION)  # they removed our application
    services.vpc_peering_delete(peering=_reload(peering), actor=None)
    assert poll(peering) == "deleted"
    ours, theirs = _sides(azure, peering)
    assert ours is None
    assert theirs["properties"]["peeringState"] == "Disconnected"  # theirs to delete now: we may not any more


def test_delete_is_not_taken_for_done_when_the_customers_token_fetch_is_interrupted(deployment, azure, monkeypatch):
    # A token the customer's tenant refuses means their side is theirs to delete (above). An interrupted fetch says
    # nothing about it: azure-identity raises the interruption wrapped in the same ClientAuthenticationError (the
    # token test above sees it do so for real), and the deletion must not go on as if their side were gone.
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import ClientSecretCredential
    from celery.exceptions import SoftTimeLimitExceeded

    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    services.vpc_peering_delete(peering=_reload(peering), actor=None)

    def interrupted_for_the_customer(real):
        def fetch(self, *scopes, **kwargs):
            if self._tenant_id == AZURE_CUSTOMER_TENANT:  # as azure-identity's wrap_exceptions raises it
                raise ClientAuthenticationError(message="Authentication failed: SoftTimeLimitExceeded()") from (
                    SoftTimeLimitExceeded()
                )
            return real(self, *scopes, **kwargs)

        return fetch

    for method in ("get_token", "get_token_info"):
        monkeypatch.setattr(
            ClientSecretCredential, method, interrupted_for_the_customer(getattr(ClientSecretCredential, method))
        )
    assert poll(peering) != "deleted"
    assert "ran out of time" in _reload(peering).last_error
    assert _sides(azure, peering)[1] is not None  # their side is still there, and still ours to delete

    monkeypatch.undo()
    assert poll(peering) == "deleted"
    assert _sides(azure, peering) == (None, None)


def test_delete_leaves_a_customer_peering_alone_when_it_points_elsewhere(deployment, azure):
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    other = azure.fake.add_vnet(AZURE_CUSTOMER_SUBSCRIPTION, "acme-rg", "other-vnet", ["10.9.0.0/16"], "westeurope")
    # The customer reused the name for a peering of their own to another VNet: not ours to delete.
    azure.fake.create_peering(azure.customer_vnet, peering.public_id, other)
    services.vpc_peering_delete(peering=_reload(peering), actor=None)
    assert poll(peering) == "deleted"
    ours, theirs = _sides(azure, peering)
    assert ours is None and theirs["properties"]["remoteVirtualNetwork"]["id"] == other


def test_poll_retries_when_platform_secret_is_wrong(deployment, azure):
    azure.fake.applications[AZURE_APPLICATION] = "rotated-secret"
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "AADSTS7000215" in peering.last_error and peering.next_poll_at is not None


def test_peering_fails_and_our_failed_side_is_removed_when_the_async_operation_fails(deployment, azure):
    azure.customer_grants_access()
    message = (
        f"Cannot create or update peering because remote virtual network {azure.customer_vnet} address space "
        "overlaps with address space of a virtual network already peered with it."
    )
    azure.fake.fail_next_operation("VnetAddressSpaceOverlapsWithAlreadyPeeredVnet", message)
    peering = _create(deployment, azure)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.last_error == (
        f"Azure failed to create peering {peering.public_id}: VnetAddressSpaceOverlapsWithAlreadyPeeredVnet: {message}"
    )
    assert azure.fake.requests("DELETE", "/virtualNetworkPeerings/")  # the side left in Failed was taken down
    assert azure.fake.peering(azure.platform_vnet, peering.public_id) is None


def _legacy(deployment, azure, **ids):
    """A peering from before we created both sides: our side made, the customer's left to them."""
    peering = _create(deployment, azure, tag=False)
    azure.fake.create_peering(azure.platform_vnet, peering.public_id, azure.customer_vnet)
    VpcPeering.objects.filter(pk=peering.pk).update(
        state="awaiting_customer_action", provider_ids={"peering_name": peering.public_id, "created": True, **ids}
    )
    return peering


def test_earlier_peering_turns_active_without_the_tag_when_the_customer_made_their_side(deployment, azure):
    azure.customer_grants_access()
    peering = _legacy(deployment, azure)
    azure.fake.create_peering(azure.customer_vnet, peering.public_id, azure.platform_vnet)
    assert poll(peering) == "active"
    assert not azure.fake.requests("PUT", "/virtualNetworkPeerings/")  # nothing made: it was all there


def test_earlier_peering_gets_its_customer_side_only_when_the_vnet_is_tagged(deployment, azure, owner_org):
    azure.customer_grants_access()
    untagged = _legacy(deployment, azure)
    assert poll(untagged) == "failed"
    assert "does not carry the tag mqtt-cloud-organization" in _reload(untagged).last_error
    assert _sides(azure, untagged) == (None, None)  # our half-made side is removed with it

    azure.customer_tags_vnet(owner_org.organization.public_id)
    tagged = _legacy(deployment, azure)
    assert poll(tagged) == "active"
    assert _sides(azure, tagged)[1]["properties"]["peeringState"] == "Connected"


def test_poll_waits_for_our_earlier_operation_when_its_poller_outlived_the_task(deployment, azure, monkeypatch):
    # A PUT whose operation outlives LRO_TIMEOUT_SECONDS leaves it running at ARM; the next poll's PUT of the same
    # peering is 409 AnotherOperationInProgress until it ends. That is "not yet", not a refusal: nothing is torn down.
    from networking.providers import azure as provider

    monkeypatch.setattr(provider, "LRO_TIMEOUT_SECONDS", 0.5)
    azure.customer_grants_access()
    azure.fake.hold_operations = True
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    assert "did not finish" in _reload(peering).last_error

    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "AnotherOperationInProgress" in peering.last_error and "Cleaning up" not in peering.last_error
    assert not azure.fake.requests("DELETE", "/virtualNetworkPeerings/")
    assert peering.next_poll_at is not None

    monkeypatch.undo()  # operations take their usual second again
    azure.fake.release_operations()
    assert poll(peering) == "active"
    assert [side["properties"]["peeringState"] for side in _sides(azure, peering)] == ["Connected", "Connected"]


def test_peering_is_created_by_a_later_poll_when_another_peering_of_the_platform_vnet_is_in_progress(deployment, azure):
    # Every deployment of the region peers the same platform VNet: while another peering's operation updates it,
    # ARM answers 400 ReferencedResourceNotProvisioned to ours.
    azure.customer_grants_access()
    other = azure.fake.add_vnet(AZURE_CUSTOMER_SUBSCRIPTION, "other-rg", "other-vnet", ["10.7.0.0/16"], "westeurope")
    azure.fake.assign_role(AZURE_APPLICATION, other, "Network Contributor")
    azure.fake.hold_operations = True
    client = _platform_client(deployment)
    client.virtual_network_peerings.begin_create_or_update(
        azure.resource_group, azure.vnet_name, "someone-else", {"properties": {"remoteVirtualNetwork": {"id": other}}}
    )
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "ReferencedResourceNotProvisioned" in peering.last_error
    assert azure.fake.peering(azure.platform_vnet, peering.public_id) is None

    azure.fake.release_operations()
    assert poll(peering) == "active"


@pytest.mark.parametrize("code", ["AnotherOperationInProgress", "ReferencedResourceNotProvisioned"])
def test_peering_is_retried_not_failed_when_the_async_operation_ends_failed_because_azure_was_busy(
    deployment, azure, code
):
    # ARM also reports these inside a failed operation ({"status": "Failed", "error": {"code": ...}}): still "not now".
    azure.customer_grants_access()
    azure.fake.fail_next_operation(code, "Another operation on this or dependent resource is in progress.")
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    assert code in _reload(peering).last_error
    assert poll(peering) == "active"


def _platform_client(deployment):
    """The adapter's own client for the platform VNet, linking the customer's tenant: another peering's writer."""
    from networking.providers.azure import _Azure
    from networking.providers.base import Customer

    platform = services.platform_of(deployment.region)
    customer = Customer(
        public_id="x",
        cidr="10.7.0.0/16",
        fields={
            "tenant_id": AZURE_CUSTOMER_TENANT,
            "subscription_id": AZURE_CUSTOMER_SUBSCRIPTION,
            "resource_group": "other-rg",
            "vnet_name": "other-vnet",
        },
    )
    return _Azure(platform, customer).linking_client


def test_peering_is_retried_not_failed_when_the_async_operation_is_canceled(deployment, azure):
    # ARM ends an operation Canceled when another update of the resource (the shared platform VNet's peering being
    # written again) superseded it: nothing was refused, so nothing is torn down and the next poll writes it again.
    azure.customer_grants_access()
    azure.fake.fail_next_operation(
        "Canceled",
        "Operation was canceled.",
        status="Canceled",
        details=[
            {
                "code": "CanceledAndSupersededDueToAnotherOperation",
                "message": "Operation PutVirtualNetworkPeeringOperation was canceled and superseded by operation "
                "PutVirtualNetworkPeeringOperation.",
            }
        ],
    )
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "Canceled" in peering.last_error and peering.next_poll_at is not None
    assert azure.fake.peering(azure.platform_vnet, peering.public_id)["properties"]["provisioningState"] == "Canceled"
    assert not azure.fake.requests("DELETE", "/virtualNetworkPeerings/")

    assert poll(peering) == "active"
    assert [side["properties"]["peeringState"] for side in _sides(azure, peering)] == ["Connected", "Connected"]


def test_poll_does_not_sleep_out_a_long_retry_after_when_azure_throttles(deployment, azure):
    # ARM's 429 carries a Retry-After the SDK's retry policy sleeps in the worker's own thread: a long one must not hold
    # the task (its soft time limit is 240 s); the next poll asks again.
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    for _ in range(3):  # the SDK's own two retries see it too
        azure.fake.fail_next(
            "GET", "/virtualNetworkPeerings/", 429, "TooManyRequests", "Too many requests.", retry_after="25"
        )
    started = time.monotonic()
    assert poll(peering) == "active"
    assert time.monotonic() - started < 15
    peering = _reload(peering)
    assert "25" in peering.last_error and "Retry-After" in peering.last_error
    assert peering.next_poll_at is not None

    azure.fake.failures.clear()
    assert poll(peering) == "active"
    assert _reload(peering).last_error == ""


def test_poll_checks_again_later_when_the_operation_asks_for_a_long_retry_after(deployment, azure):
    # The poller sleeps each status answer's Retry-After: one of an hour would keep the task waiting until its
    # timeout. It stops waiting at once; the operation goes on at ARM and a later poll finds it done.
    azure.customer_grants_access()
    azure.fake.operation_retry_after = "3600"
    peering = _create(deployment, azure)
    started = time.monotonic()
    assert poll(peering) == "pending"
    assert time.monotonic() - started < 15
    peering = _reload(peering)
    assert "3600" in peering.last_error and "Retry-After" in peering.last_error
    assert not azure.fake.requests("DELETE", "/virtualNetworkPeerings/")

    azure.fake.operation_retry_after = "0"
    azure.fake.release_operations()  # its time came
    assert poll(peering) == "active"


def test_poll_stops_waiting_when_its_writes_together_would_outlast_the_task(deployment, azure, monkeypatch):
    # Each long-running operation may take LRO_TIMEOUT_SECONDS, and a poll may write several (our side, theirs, a
    # sync, a repair): together they must end before the task's soft time limit interrupts the poll. Here every
    # operation takes about three seconds (status answers with Retry-After 1) and the poll has five in all: our side
    # is written, and it stops waiting for the customer's side instead of holding on for it.
    from networking.providers import azure as provider

    monkeypatch.setattr(provider, "CALL_BUDGET_SECONDS", 5.0)
    azure.customer_grants_access()
    azure.fake.operation_retry_after, azure.fake.operation_polls = "1", 3
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "did not finish" in peering.last_error and "time" in peering.last_error
    assert not azure.fake.requests("DELETE", "/virtualNetworkPeerings/")

    assert azure.fake.peering(azure.platform_vnet, peering.public_id)["properties"]["provisioningState"] == "Succeeded"

    monkeypatch.undo()
    azure.fake.operation_retry_after, azure.fake.operation_polls = "0", 1
    azure.fake.release_operations()  # the customer's side finished at ARM meanwhile
    assert poll(peering, times=2) == "active"


def test_poll_says_it_ran_out_of_time_when_the_soft_time_limit_strikes_while_a_token_is_fetched(
    deployment, azure, azure_region
):
    # The real signal, inside azure-identity: the authority accepts the connection and never answers, and Celery's
    # soft time limit strikes while the token request waits. azure-identity logs and raises it again, azure-core's
    # transport and retry policy let it through (they catch their own errors only): the poll says it ran out of time,
    # at once, not that Azure could not be reached or did not authenticate us.
    from tests.outage import soft_time_limit_on_connect

    azure.customer_grants_access()
    peering = _create(deployment, azure)
    authority = azure_region.network["authority"]
    with soft_time_limit_on_connect() as port:
        azure_region.network = {**azure_region.network, "authority": f"https://127.0.0.1:{port}"}
        azure_region.save()
        started = time.monotonic()
        assert poll(peering) == "pending"
    took = time.monotonic() - started
    error = _reload(peering).last_error
    assert "ran out of time" in error and "could not be reached" not in error and "authenticate" not in error
    assert took < 10

    azure_region.network = {**azure_region.network, "authority": authority}
    azure_region.save()
    assert poll(peering, times=2) == "active"


def test_poll_says_it_ran_out_of_time_when_the_soft_time_limit_interrupts_it(deployment, azure, monkeypatch):
    # Should the task's soft time limit still strike inside a call to ARM, the peering says so: not that Azure
    # could not be reached.
    from celery.exceptions import SoftTimeLimitExceeded

    from networking.providers import azure as provider

    def interrupted(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    azure.customer_grants_access()
    peering = _create(deployment, azure)
    monkeypatch.setattr(provider, "_wait", interrupted)
    assert poll(peering) == "pending"
    error = _reload(peering).last_error
    assert "ran out of time" in error and "could not be reached" not in error

    monkeypatch.undo()
    azure.fake.release_operations()  # the write it stopped waiting for finished at ARM meanwhile
    assert poll(peering, times=2) == "active"


def test_active_peering_is_repaired_when_its_provisioning_failed(deployment, azure):
    # Microsoft.Network leaves a resource whose update failed in provisioningState Failed; another PUT of it restores
    # it. The peering is written again instead of being failed for good.
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    puts = len(azure.fake.requests("PUT", "/virtualNetworkPeerings/"))

    azure.fake.fail_provisioning(azure.platform_vnet, peering.public_id)
    assert poll(peering) == "active"
    peering = _reload(peering)
    assert peering.last_error == "" and peering.next_poll_at is not None
    assert len(azure.fake.requests("PUT", azure.platform_vnet.split("/virtualNetworks/")[1])) > 0
    assert len(azure.fake.requests("PUT", "/virtualNetworkPeerings/")) == puts + 1
    ours, theirs = _sides(azure, peering)
    assert ours["properties"]["provisioningState"] == "Succeeded"
    assert [ours["properties"]["peeringState"], theirs["properties"]["peeringState"]] == ["Connected", "Connected"]


def test_active_peering_fails_for_good_naming_the_attempts_when_its_repair_keeps_failing(deployment, azure):
    # Written again up to three times (docs/networking.md), then failed with the reason: not retried for ever.
    REPAIR_ATTEMPTS = 3  # noqa: N806
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    azure.fake.fail_provisioning(azure.platform_vnet, peering.public_id)
    message = "An error occurred."
    for attempt in range(1, REPAIR_ATTEMPTS):
        azure.fake.fail_next_operation("InternalServerError", message)
        assert poll(peering) == "failed"
        peering = _reload(peering)
        assert f"attempt {attempt} of {REPAIR_ATTEMPTS}" in peering.last_error
        assert peering.next_poll_at is not None  # it is written again on the next poll
    azure.fake.fail_next_operation("InternalServerError", message)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.next_poll_at is None and peering.is_abnormal
    assert f"{REPAIR_ATTEMPTS} attempts" in peering.last_error and "InternalServerError" in peering.last_error
    assert "delete this peering and create a new one" in peering.last_error


def _active(deployment, azure):
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    assert poll(peering) == "active"
    return peering


def _sync_levels(azure, peering):
    return [side["properties"]["peeringSyncLevel"] for side in _sides(azure, peering)]


def test_active_peering_is_synced_when_the_customer_adds_a_range_within_its_cidr(deployment, azure):
    azure.fake.vnets[azure.customer_vnet.lower()]["address_space"] = ["10.1.0.0/24"]
    peering = _active(deployment, azure)
    azure.fake.set_address_space(azure.customer_vnet, ["10.1.0.0/24", "10.1.1.0/24"])  # within 10.1.0.0/16
    assert _sync_levels(azure, peering) == ["LocalNotInSync", "RemoteNotInSync"]
    assert poll(peering) == "active"
    peering = _reload(peering)
    assert _sync_levels(azure, peering) == ["FullyInSync", "FullyInSync"]
    ours = _sides(azure, peering)[0]
    assert ours["properties"]["remoteAddressSpace"]["addressPrefixes"] == ["10.1.0.0/24", "10.1.1.0/24"]
    assert peering.provider_state == "Connected" and peering.last_error == ""


def test_active_peering_says_so_and_is_not_synced_when_the_customer_adds_a_range_outside_its_cidr(deployment, azure):
    # The range outside the peering's CIDR never passed the pre-flight (overlaps, reserved ranges): the platform does
    # not learn it, and the peering says what is not peered instead of claiming all is well.
    peering = _active(deployment, azure)
    azure.fake.set_address_space(azure.customer_vnet, ["10.1.0.0/16", "10.9.0.0/16"])
    assert poll(peering) == "active"
    peering = _reload(peering)
    assert "LocalNotInSync" in peering.provider_state
    assert "10.9.0.0/16" in peering.last_error and "outside" in peering.last_error
    assert "10.1.0.0/16" in peering.last_error
    ours = _sides(azure, peering)[0]
    assert ours["properties"]["remoteAddressSpace"]["addressPrefixes"] == ["10.1.0.0/16"]  # not learnt
    assert _sync_levels(azure, peering)[0] == "LocalNotInSync"

    azure.fake.set_address_space(azure.customer_vnet, ["10.1.0.0/16"])  # they removed it again
    assert poll(peering) == "active"
    peering = _reload(peering)
    assert peering.provider_state == "Connected" and peering.last_error == ""


def test_customer_side_is_synced_when_the_platform_network_grows(deployment, azure):
    peering = _active(deployment, azure)
    azure.fake.set_address_space(azure.platform_vnet, ["10.0.0.0/16", "10.2.0.0/16"])
    assert _sync_levels(azure, peering) == ["RemoteNotInSync", "LocalNotInSync"]
    assert poll(peering) == "active"
    assert _sync_levels(azure, peering) == ["FullyInSync", "FullyInSync"]
    theirs = _sides(azure, peering)[1]
    assert theirs["properties"]["remoteAddressSpace"]["addressPrefixes"] == ["10.0.0.0/16", "10.2.0.0/16"]
    assert _reload(peering).last_error == ""


def test_fake_reads_each_request_body_so_the_next_request_on_the_connection_is_understood(azure):
    """The fake speaks HTTP/1.1, so azure-core's session sends its next request on the same connection. An answer
    given without reading the body (an unknown route, an injected failure, a refusal before the body is parsed) must
    still consume it, or its bytes are read as the next request's first line and that request is refused."""
    where = urlsplit(azure.url)
    context = ssl.create_default_context(cafile=azure.ca_path)
    connection = http.client.HTTPSConnection(where.hostname, where.port, context=context, timeout=10)

    first, second, answer = body_then_unknown_route(connection, "PUT", "/no/such/route", b'{"properties": {}}')

    assert (first, second) == (404, 404), answer[:200]
    assert json.loads(answer)["error"]["code"] == "NoRegisteredProviderFound"
