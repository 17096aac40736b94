"""Azure virtual network peering with azure-mgmt-network and azure-identity: our side of the peering on the region's
platform VNet, created once the customer registered our application in their tenant and let it peer with their VNet;
then read back, with the customer's side, until both are Connected.

The only module that imports the Azure SDK. Creating a peering to a VNet in another tenant needs a token from that
tenant too: ARM reads it from `x-ms-authorization-auxiliary`, which AuxiliaryAuthenticationPolicy adds.
"""

from __future__ import annotations

from collections.abc import Mapping

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.polling.base_polling import OperationFailed
from azure.identity import ClientSecretCredential
from azure.mgmt.core.policies import AuxiliaryAuthenticationPolicy
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import SubResource, VirtualNetworkPeering

from networking.providers.base import Customer, CustomerStep, Observation, Platform, ProviderError

ARM_SCOPE = "https://management.azure.com/.default"
LRO_TIMEOUT_SECONDS = 90.0
# Refusals that only the customer's role assignment lifts: the peering waits for them rather than failing.
AUTHORIZATION_CODES = frozenset({"LinkedAuthorizationFailed", "AuthorizationFailed", "LinkedInvalidPropertyId"})


def vnet_id(subscription: str, resource_group: str, vnet: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Network/virtualNetworks/{vnet}"


def _code(exc: HttpResponseError) -> str:
    return (exc.error.code if exc.error is not None else "") or ""


def _message(exc: HttpResponseError) -> str:
    return (exc.error.message if exc.error is not None else "") or exc.reason or str(exc)


def _error(exc: Exception, doing: str) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, HttpResponseError) and isinstance(exc.__cause__, OperationFailed):
        # The request was accepted, then its long-running operation ended Failed: that is ARM's answer to it.
        return ProviderError(
            f"Azure failed to {doing}: {_code(exc) or 'OperationFailed'}: {_message(exc)}", permanent=True
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None and 400 <= exc.status_code < 500:
        if exc.status_code not in (401, 408, 429):
            return ProviderError(f"Azure refused to {doing}: {_code(exc)}: {_message(exc)}", permanent=True)
    return ProviderError(f"Azure could not be reached to {doing}: {exc}", permanent=False)


class _Azure:
    def __init__(self, platform: Platform, customer: Customer) -> None:
        net, secret = platform.network, platform.credentials
        transport = {"connection_verify": platform.ca_bundle} if platform.ca_bundle else {}
        identity = dict(transport)
        if net.get("authority"):
            # A private or sovereign authority is not in MSAL's list of known hosts: trust the configured one.
            identity.update(authority=net["authority"], disable_instance_discovery=True)
        self.application_id = secret["client_id"]
        self.ours = ClientSecretCredential(net["tenant_id"], secret["client_id"], secret["client_secret"], **identity)
        self.theirs = ClientSecretCredential(
            customer.tenant_id, secret["client_id"], secret["client_secret"], **identity
        )
        client = dict(
            transport, base_url=platform.endpoint, credential_scopes=[ARM_SCOPE], polling_interval=1, retry_total=2
        )
        self.our_vnet = vnet_id(net["subscription_id"], net["resource_group"], net["vnet_name"])
        self.their_vnet = vnet_id(customer.subscription_id, customer.resource_group, customer.vnet_name)
        self.resource_group, self.vnet = net["resource_group"], net["vnet_name"]
        self.platform_client = NetworkManagementClient(self.ours, net["subscription_id"], **client)
        self.linking_client = NetworkManagementClient(
            self.ours,
            net["subscription_id"],
            custom_hook_policy=AuxiliaryAuthenticationPolicy([self.theirs], ARM_SCOPE),
            **client,
        )
        self.customer_client = NetworkManagementClient(self.theirs, customer.subscription_id, **client)


def _ids(azure: _Azure, customer: Customer, created: bool) -> dict:
    return {
        "peering_name": customer.public_id,
        "peering_id": f"{azure.our_vnet}/virtualNetworkPeerings/{customer.public_id}",
        "created": created,
    }


class AzureAdapter:
    def request(self, platform: Platform, customer: Customer) -> Observation:
        azure = _Azure(platform, customer)
        try:
            azure.ours.get_token(ARM_SCOPE)
        except ClientAuthenticationError as exc:
            message = f"Azure did not authenticate the platform's application: {exc.message}"
            raise ProviderError(message, permanent=False) from exc
        try:
            azure.theirs.get_token(ARM_SCOPE)
        except ClientAuthenticationError as exc:
            return Observation(
                "waiting",
                "ApplicationNotRegistered",
                f"Our application {azure.application_id} is not registered in tenant {customer.tenant_id} yet "
                f"({exc.message.splitlines()[0] if exc.message else 'no token'}).",
                ids=_ids(azure, customer, created=False),
            )
        peering = VirtualNetworkPeering(
            remote_virtual_network=SubResource(id=azure.their_vnet),
            allow_virtual_network_access=True,
            allow_forwarded_traffic=False,
            allow_gateway_transit=False,
            use_remote_gateways=False,
        )
        try:
            poller = azure.linking_client.virtual_network_peerings.begin_create_or_update(
                azure.resource_group, azure.vnet, customer.public_id, peering
            )
            result = poller.result(timeout=LRO_TIMEOUT_SECONDS)
            if not poller.done():
                raise ProviderError(
                    f"Azure did not finish creating peering {customer.public_id} in time", permanent=False
                )
        except HttpResponseError as exc:
            if _code(exc) in AUTHORIZATION_CODES:
                return Observation(
                    "waiting",
                    _code(exc),
                    f"Waiting for the role assignment on {azure.their_vnet}: {_message(exc)}",
                    ids=_ids(azure, customer, created=False),
                )
            raise _error(exc, f"create peering {customer.public_id}") from exc
        except Exception as exc:  # noqa: BLE001 - transport failures and timeouts retry
            raise _error(exc, f"create peering {customer.public_id}") from exc
        observation = self._observe(azure, customer, result)
        return Observation(
            observation.status, observation.provider_state, observation.detail, ids=_ids(azure, customer, True)
        )

    def refresh(self, platform: Platform, customer: Customer, ids: Mapping) -> Observation:
        if not ids.get("created"):
            return self.request(platform, customer)
        azure = _Azure(platform, customer)
        try:
            ours = azure.platform_client.virtual_network_peerings.get(
                azure.resource_group, azure.vnet, customer.public_id
            )
        except ResourceNotFoundError:
            return Observation(
                "broken", "NotFound", f"The platform's side of the peering ({customer.public_id}) no longer exists."
            )
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, f"read peering {customer.public_id}") from exc
        return self._observe(azure, customer, ours)

    def _observe(self, azure: _Azure, customer: Customer, ours: VirtualNetworkPeering) -> Observation:
        state = ours.peering_state or ""
        if ours.provisioning_state == "Failed":
            return Observation("broken", "Failed", "Azure could not provision the platform's side of the peering.")
        if state == "Connected":
            return Observation("active", state)
        if state == "Disconnected":
            return Observation(
                "broken",
                state,
                "The peering is Disconnected: the customer's side was deleted. Azure cannot reconnect it; delete "
                "this peering and create a new one.",
            )
        return Observation("waiting", state or "Initiated", self._their_side(azure, customer))

    def _their_side(self, azure: _Azure, customer: Customer) -> str:
        """What the customer's side looks like, read with the access their role assignment gives us."""
        try:
            theirs = azure.customer_client.virtual_network_peerings.get(
                customer.resource_group, customer.vnet_name, customer.public_id
            )
        except ResourceNotFoundError:
            return f"The peering {customer.public_id} does not exist on {customer.vnet_name} yet."
        except HttpResponseError as exc:
            return f"Your side cannot be read ({_code(exc) or exc.status_code}): check the role assignment."
        except Exception:  # noqa: BLE001 - only a hint for the customer; the platform side decides the state
            return "Your side could not be read."
        return f"Your side of the peering is {theirs.peering_state or 'not ready'}."

    def remove(self, platform: Platform, customer: Customer, ids: Mapping) -> None:
        azure = _Azure(platform, customer)
        try:
            poller = azure.platform_client.virtual_network_peerings.begin_delete(
                azure.resource_group, azure.vnet, customer.public_id
            )
            poller.result(timeout=LRO_TIMEOUT_SECONDS)
            if not poller.done():
                raise ProviderError(
                    f"Azure did not finish deleting peering {customer.public_id} in time", permanent=False
                )
        except ResourceNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, f"delete peering {customer.public_id}") from exc

    def customer_step(self, platform: Platform, customer: Customer, ids: Mapping) -> CustomerStep:
        net = platform.network
        application = platform.credentials.get("client_id") or net.get("application_id", "")
        theirs = vnet_id(customer.subscription_id, customer.resource_group, customer.vnet_name)
        ours = vnet_id(net["subscription_id"], net["resource_group"], net["vnet_name"])
        return CustomerStep(
            summary=(
                f"Register our application {application} in your tenant {customer.tenant_id}, let it peer with your "
                f"virtual network {customer.vnet_name} (Network Contributor on that VNet), then create your side of "
                f"the peering to the platform's VNet ({platform.cidr})."
            ),
            commands=(
                f"az ad sp create --id {application}",
                f'az role assignment create --assignee {application} --role "Network Contributor" --scope {theirs}',
                f"az network vnet peering create --name {customer.public_id} --subscription {customer.subscription_id} "
                f"--resource-group {customer.resource_group} --vnet-name {customer.vnet_name} --remote-vnet {ours} "
                f"--allow-vnet-access",
            ),
        )


ADAPTER = AzureAdapter()
