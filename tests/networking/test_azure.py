"""Azure peering through azure-identity and azure-mgmt-network against the HTTPS fake in tests/fakes/azure_arm.py
(MSAL discovery and client-credentials tokens, ARM peerings with Azure-AsyncOperation polling): the full state walk
including the customer's role assignment, a refusal from Azure, the customer deleting their side, and delete."""

import pytest

from networking import services
from networking.api import VpcPeeringSerializer
from networking.models import VpcPeering
from tests.networking.conftest import (
    AZURE_APPLICATION,
    AZURE_CUSTOMER_SUBSCRIPTION,
    AZURE_CUSTOMER_TENANT,
    make_deployment,
    poll,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(owner_org, azure_region):
    return make_deployment(owner_org.default_project, azure_region)


def _create(deployment, azure, **overrides):
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


def test_peering_walks_to_active_after_role_assignment_and_customer_side(deployment, azure):
    peering = _create(deployment, azure)

    # Our application is not registered in the customer's tenant yet: nothing can be created, the customer acts.
    assert poll(peering) == "awaiting_customer_action"
    peering = _reload(peering)
    assert peering.provider_state == "ApplicationNotRegistered"
    assert azure.fake.peering(azure.platform_vnet, peering.public_id) is None
    assert VpcPeeringSerializer(peering).data["provider_peering_id"] is None  # nothing of ours exists yet
    commands = peering.customer_action["commands"]
    assert commands[0] == f"az ad sp create --id {AZURE_APPLICATION}"
    assert commands[1] == (
        f'az role assignment create --assignee {AZURE_APPLICATION} --role "Network Contributor" '
        f"--scope {azure.customer_vnet}"
    )
    assert commands[2] == (
        f"az network vnet peering create --name {peering.public_id} --subscription {AZURE_CUSTOMER_SUBSCRIPTION} "
        f"--resource-group {azure.customer_resource_group} --vnet-name {azure.customer_vnet_name} "
        f"--remote-vnet {azure.platform_vnet} --allow-vnet-access"
    )

    # Registered but no role on their VNet: ARM refuses the link (LinkedAuthorizationFailed), still waiting.
    azure.fake.register_application(AZURE_CUSTOMER_TENANT, AZURE_APPLICATION)
    assert poll(peering) == "awaiting_customer_action"
    peering = _reload(peering)
    assert peering.provider_state == "LinkedAuthorizationFailed"
    assert peering.customer_action["status"].startswith(f"Waiting for the role assignment on {azure.customer_vnet}")

    # With the role, our side is created (201 + Azure-AsyncOperation, polled to Succeeded): Initiated.
    azure.fake.assign_role(AZURE_APPLICATION, azure.customer_vnet)
    assert poll(peering) == "awaiting_customer_action"
    peering = _reload(peering)
    assert peering.provider_state == "Initiated"
    assert peering.provider_ids["created"] is True
    peering_id = f"{azure.platform_vnet}/virtualNetworkPeerings/{peering.public_id}"
    assert VpcPeeringSerializer(peering).data["provider_peering_id"] == peering_id
    ours = azure.fake.peering(azure.platform_vnet, peering.public_id)
    assert ours["properties"]["provisioningState"] == "Succeeded"
    assert ours["properties"]["remoteVirtualNetwork"]["id"] == azure.customer_vnet
    assert azure.fake.requests("GET", "/operations/")
    put = azure.fake.requests("PUT", "/virtualNetworkPeerings/")[-1]
    assert put[2].get("x-ms-authorization-auxiliary", "").startswith("Bearer ")
    assert peering.customer_action["status"] == f"The peering {peering.public_id} does not exist on plant-vnet yet."

    azure.fake.create_peering(azure.customer_vnet, peering.public_id, azure.platform_vnet)
    assert poll(peering) == "active"
    peering = _reload(peering)
    assert peering.provider_state == "Connected" and peering.activated_at is not None


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
    poll(peering)
    azure.fake.create_peering(azure.customer_vnet, peering.public_id, azure.platform_vnet)
    assert poll(peering) == "active"

    azure.fake.delete_peering(azure.customer_vnet, peering.public_id)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.provider_state == "Disconnected" and peering.is_abnormal
    assert "delete this peering and create a new one" in peering.last_error
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 1.0}

    services.vpc_peering_delete(peering=peering, actor=None)
    assert poll(peering) == "deleted"
    assert azure.fake.peering(azure.platform_vnet, peering.public_id) is None
    assert azure.fake.requests("DELETE", "/virtualNetworkPeerings/")
    assert services.abnormal_values(deployment_ids=[deployment.pk]) == {deployment.pk: 0.0}


def test_delete_needs_no_access_to_customer_tenant_when_they_revoked_it(deployment, azure):
    azure.customer_grants_access()
    peering = _create(deployment, azure)
    poll(peering)
    azure.fake.registered[AZURE_CUSTOMER_TENANT].discard(AZURE_APPLICATION)  # they removed our application
    services.vpc_peering_delete(peering=_reload(peering), actor=None)
    assert poll(peering) == "deleted"
    assert azure.fake.peering(azure.platform_vnet, peering.public_id) is None


def test_poll_retries_when_platform_secret_is_wrong(deployment, azure):
    azure.fake.applications[AZURE_APPLICATION] = "rotated-secret"
    peering = _create(deployment, azure)
    assert poll(peering) == "pending"
    peering = _reload(peering)
    assert "AADSTS7000215" in peering.last_error and peering.next_poll_at is not None


def test_peering_fails_and_our_failed_side_is_removed_when_the_async_operation_fails(deployment, azure):
    azure.customer_grants_access()
    message = (
        f"Cannot proceed with operation because resource {azure.customer_vnet} is not in Succeeded state. "
        "Resource is in Updating state."
    )
    azure.fake.fail_next_operation("ReferencedResourceNotProvisioned", message)
    peering = _create(deployment, azure)
    assert poll(peering) == "failed"
    peering = _reload(peering)
    assert peering.last_error == (
        f"Azure failed to create peering {peering.public_id}: ReferencedResourceNotProvisioned: {message}"
    )
    assert azure.fake.requests("DELETE", "/virtualNetworkPeerings/")  # the side left in Failed was taken down
    assert azure.fake.peering(azure.platform_vnet, peering.public_id) is None
