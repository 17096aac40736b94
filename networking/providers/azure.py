"""Azure virtual network peering with azure-mgmt-network and azure-identity: both sides of the peering, ours on the
region's platform VNet and the customer's on their VNet, created by our application with the role the customer granted
it on their VNet (Network Contributor, or a custom role with peer/action and virtualNetworkPeerings/write|read|delete);
then read back until both are Connected.

The only module that imports the Azure SDK. ARM checks `peer/action` on the *remote* VNet of every peering write, with
a token of the remote VNet's tenant: `x-ms-authorization-auxiliary` carries it (AuxiliaryAuthenticationPolicy), a
token of the customer's tenant when we write our side, one of ours when we write theirs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.core.polling import LROPoller
from azure.core.polling.base_polling import OperationFailed
from azure.identity import ClientSecretCredential
from azure.mgmt.core.policies import AuxiliaryAuthenticationPolicy
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import SubResource, SyncRemoteAddressSpace, VirtualNetworkPeering
from celery.exceptions import SoftTimeLimitExceeded

from networking.checks import AZURE_OWNER_TAG, AZURE_PEERING_ACTIONS, AZURE_PEERING_ROLE
from networking.providers.base import Customer, CustomerStep, Observation, Platform, ProviderError, raise_if_interrupted

ARM_SCOPE = "https://management.azure.com/.default"
LRO_TIMEOUT_SECONDS = 90.0
# The SDK's wait between two reads of a long-running operation's status when ARM's answer names no Retry-After (or
# names 0, as its answers for quick operations do).
LRO_POLL_SECONDS = 1.0
# All the waits for long-running operations of one adapter call together: a poll may write several (our side, theirs,
# a sync of both, a repair) and, after a refusal, remove what it made in a second call. Two calls' budgets stay under
# the task's soft time limit (CELERY_TASK_SOFT_TIME_LIMIT, 240 s), with room for the reads between them. An operation
# still running when the budget is spent goes on at ARM, and the next poll finds it.
CALL_BUDGET_SECONDS = 100.0
# One HTTP request to ARM or to the identity endpoint: the SDK's default waits 300 s for each.
CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS = 10, 30
# The longest one Retry-After is slept inside a poll. ARM's answers carry one (a 429's, a long-running operation's status
# answers) and the SDK sleeps it whole: in the task's thread for a retried request, in the poller's while the task
# waits for it. Longer, and the call stops with a temporary error: the peering keeps its state and a later poll asks.
RETRY_AFTER_MAX_SECONDS = 10.0
# Refusals that only the customer's role assignment lifts: the peering fails with the role to grant, and is
# created again once they granted it.
AUTHORIZATION_CODES = frozenset({"LinkedAuthorizationFailed", "AuthorizationFailed", "LinkedInvalidPropertyId"})
ROLE, PEERING_ACTIONS = AZURE_PEERING_ROLE, AZURE_PEERING_ACTIONS
# A side of ours left in provisioningState Failed (an update of it failed inside ARM) is written again: Microsoft.Network's
# remedy for a failed provisioning state is another PUT of the resource. This many times in a row, then the peering
# fails with the last answer: a write that keeps failing is not retried for ever.
REPAIR_ATTEMPTS = 3
# peeringSyncLevel: whether each side's copy of the other VNet's address space is current. LocalNotInSync: this side's
# copy of the remote VNet is stale (the remote's space changed; Sync-AzVirtualNetworkPeering on this side fixes it);
# RemoteNotInSync: the other side's copy of this VNet is stale.
IN_SYNC, LOCAL_BEHIND, REMOTE_BEHIND, BOTH_BEHIND = (
    "FullyInSync",
    "LocalNotInSync",
    "RemoteNotInSync",
    "LocalAndRemoteNotInSync",
)
# ARM's "not now": an operation on this peering or on a VNet it links is still running (our own earlier attempt whose
# poller outlived LRO_TIMEOUT_SECONDS, or another peering of the region's shared platform VNet). Answered at once (409,
# 400) or as a failed operation's error; it ends by itself, so the poll retries. terraform-provider-azurerm retries
# the 400 the same way (virtual_network_peering_resource.go: "another peering was just initiated").
BUSY_CODES = frozenset({"AnotherOperationInProgress", "ReferencedResourceNotProvisioned", "RetryableError"})


def vnet_id(subscription: str, resource_group: str, vnet: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Network/virtualNetworks/{vnet}"


def _code(exc: HttpResponseError) -> str:
    return (exc.error.code if exc.error is not None else "") or ""


def _message(exc: HttpResponseError) -> str:
    return (exc.error.message if exc.error is not None else "") or exc.reason or str(exc)


class RetryAfterTooLong(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"Retry-After {seconds:g} s")
        self.seconds = seconds


class _BoundedSleepTransport(RequestsTransport):
    """The SDK's every sleep (a retry's Retry-After or backoff, a poll of a long-running operation) asks the
    transport; one longer than RETRY_AFTER_MAX_SECONDS raises instead of holding the task."""

    def sleep(self, duration: float) -> None:
        if duration > RETRY_AFTER_MAX_SECONDS:
            raise RetryAfterTooLong(duration)
        super().sleep(duration)


def _error(exc: Exception, doing: str) -> ProviderError:
    raise_if_interrupted(exc)
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, RetryAfterTooLong):
        return ProviderError(
            f"Azure asked to wait {exc.seconds:g} s (Retry-After) to {doing}, longer than a poll waits "
            f"({RETRY_AFTER_MAX_SECONDS:g} s): a later poll asks again.",
            permanent=False,
        )
    if isinstance(exc, HttpResponseError) and _code(exc) in BUSY_CODES:
        return ProviderError(f"Azure is busy and could not {doing} yet: {_code(exc)}: {_message(exc)}", permanent=False)
    if isinstance(exc, HttpResponseError) and isinstance(exc.__cause__, OperationFailed):
        # The request was accepted, then its long-running operation ended Failed: that is ARM's answer to it.
        return ProviderError(
            f"Azure failed to {doing}: {_code(exc) or 'OperationFailed'}: {_message(exc)}", permanent=True
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None and 400 <= exc.status_code < 500:
        if exc.status_code not in (401, 408, 429):
            return ProviderError(f"Azure refused to {doing}: {_code(exc)}: {_message(exc)}", permanent=True)
    return ProviderError(f"Azure could not be reached to {doing}: {exc}", permanent=False)


_T = TypeVar("_T")


class _Credential(ClientSecretCredential):
    """azure-identity raises whatever interrupts a token fetch as ClientAuthenticationError("Authentication failed:
    ...") from it (its wrap_exceptions), Celery's soft time limit included: a poll would then say Azure did not
    authenticate us, and a deletion take the customer's tenant for one that shut us out and leave their side behind.
    The interruption is raised again as itself here, where the library wraps it, for the token fetches we make and
    those ARM's clients make through us alike; every handler then sees what it sees anywhere else."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return _unwrapped(super().get_token, *scopes, **kwargs)

    def get_token_info(self, *scopes: str, **kwargs: Any) -> AccessTokenInfo:
        return _unwrapped(super().get_token_info, *scopes, **kwargs)


def _unwrapped(fetch: Callable[..., _T], *scopes: str, **kwargs: Any) -> _T:
    try:
        return fetch(*scopes, **kwargs)
    except ClientAuthenticationError as exc:
        if isinstance(exc.__cause__, SoftTimeLimitExceeded):
            raise exc.__cause__ from None  # the interruption itself, not azure-identity's wrapping of it
        raise


class _Azure:
    def __init__(self, platform: Platform, customer: Customer) -> None:
        net, secret = platform.network, platform.credentials
        self.deadline = time.monotonic() + CALL_BUDGET_SECONDS
        transport: dict = {"connection_timeout": CONNECT_TIMEOUT_SECONDS, "read_timeout": READ_TIMEOUT_SECONDS}
        if platform.ca_bundle:
            transport["connection_verify"] = platform.ca_bundle
        identity = dict(transport)
        if net.get("authority"):
            # A private or sovereign authority is not in MSAL's list of known hosts: trust the configured one.
            identity.update(authority=net["authority"], disable_instance_discovery=True)
        self.application_id = secret["client_id"]
        self.ours = _Credential(net["tenant_id"], secret["client_id"], secret["client_secret"], **identity)
        self.theirs = _Credential(customer.tenant_id, secret["client_id"], secret["client_secret"], **identity)

        def client(credential, subscription: str, **hook) -> NetworkManagementClient:
            return NetworkManagementClient(
                credential,
                subscription,
                transport=_BoundedSleepTransport(**transport),
                base_url=platform.endpoint,
                credential_scopes=[ARM_SCOPE],
                polling_interval=LRO_POLL_SECONDS,
                retry_total=2,
                **hook,
            )

        self.our_vnet = vnet_id(net["subscription_id"], net["resource_group"], net["vnet_name"])
        self.their_vnet = vnet_id(customer.subscription_id, customer.resource_group, customer.vnet_name)
        self.resource_group, self.vnet = net["resource_group"], net["vnet_name"]
        self.platform_client = client(self.ours, net["subscription_id"])
        self.linking_client = client(
            self.ours,
            net["subscription_id"],
            custom_hook_policy=AuxiliaryAuthenticationPolicy([self.theirs], ARM_SCOPE),
        )
        self.customer_client = client(self.theirs, customer.subscription_id)
        # Writes the customer's side: their tenant's token, plus ours for peer/action on the platform VNet.
        self.customer_linking_client = client(
            self.theirs,
            customer.subscription_id,
            custom_hook_policy=AuxiliaryAuthenticationPolicy([self.ours], ARM_SCOPE),
        )


def _ids(azure: _Azure, customer: Customer, created: bool, theirs_created: bool = False) -> dict:
    return {
        "peering_name": customer.public_id,
        "peering_id": f"{azure.our_vnet}/virtualNetworkPeerings/{customer.public_id}",
        "created": created,
        "customer_peering_id": f"{azure.their_vnet}/virtualNetworkPeerings/{customer.public_id}",
        "customer_side_created": theirs_created,
    }


def _grant_text(application: str, their_vnet: str) -> str:
    return (
        f'Grant our application {application} the "{ROLE}" role on your virtual network {their_vnet} (or a custom '
        f"role with {', '.join(PEERING_ACTIONS)}), then create the peering again."
    )


def _refused(exc: HttpResponseError, azure: _Azure, customer: Customer, side: str) -> ProviderError:
    """ARM's authorization refusal, in the customer's words: what to grant, and where."""
    return ProviderError(
        f"Azure refused to create {side} of peering {customer.public_id}: {_code(exc)}: our application lacks a "
        f"permission on your virtual network. {_grant_text(azure.application_id, azure.their_vnet)}",
        permanent=True,
    )


def _peering_to(remote: str) -> VirtualNetworkPeering:
    return VirtualNetworkPeering(
        remote_virtual_network=SubResource(id=remote),
        allow_virtual_network_access=True,
        allow_forwarded_traffic=False,
        allow_gateway_transit=False,
        use_remote_gateways=False,
    )


def _wait(azure: _Azure, doing: str, begin: Callable[[], LROPoller]) -> VirtualNetworkPeering:
    """Start a long-running operation and wait for it, within LRO_TIMEOUT_SECONDS and what is left of the call's
    CALL_BUDGET_SECONDS. None is started once the budget is spent."""
    left = azure.deadline - time.monotonic()
    if left <= 0:
        raise ProviderError(f"This poll had no time left to {doing}: a later poll goes on.", permanent=False)
    poller = begin()
    try:
        result = poller.result(timeout=min(LRO_TIMEOUT_SECONDS, left))
    except HttpResponseError as exc:
        # The SDK raises the same OperationFailed for an operation that ended Canceled as for a Failed one. ARM
        # cancels an operation that another write of the same resource superseded (CanceledAndSupersededDueTo-
        # AnotherOperation): no refusal of ours, so the next poll writes it again.
        if isinstance(exc.__cause__, OperationFailed) and str(poller.status()).lower() == "canceled":
            raise ProviderError(
                f"Azure canceled the operation to {doing} (another operation superseded it): {_code(exc) or 'Canceled'}"
                f": {_message(exc)}",
                permanent=False,
            ) from exc
        raise
    if not poller.done():
        raise ProviderError(f"Azure did not finish to {doing} in time: a later poll goes on.", permanent=False)
    return result


def _write(azure: _Azure, customer: Customer, doing: str, *, theirs: bool = False, sync: bool = False) -> None:
    """Create or write again our side on the platform VNet (or `theirs`, on the customer's VNet), and wait for ARM
    to finish it. `sync`: the side learns the other VNet's address space as it is now (syncRemoteAddressSpace=true)."""
    if theirs:
        client, where, remote = (
            azure.customer_linking_client,
            (customer.resource_group, customer.vnet_name),
            azure.our_vnet,
        )
    else:
        client, where, remote = azure.linking_client, (azure.resource_group, azure.vnet), azure.their_vnet
    _wait(
        azure,
        doing,
        lambda: client.virtual_network_peerings.begin_create_or_update(
            *where,
            customer.public_id,
            _peering_to(remote),
            sync_remote_address_space=SyncRemoteAddressSpace.TRUE if sync else None,
        ),
    )


def _sync_level(peering: VirtualNetworkPeering) -> str:
    """peeringSyncLevel as Azure's word (the SDK gives an enum member, or the string of a level it does not know)."""
    level = peering.peering_sync_level
    return str(getattr(level, "value", level) or IN_SYNC)


def _within(prefix: str, cidr: str) -> bool:
    try:
        inner, outer = ipaddress.ip_network(prefix, strict=False), ipaddress.ip_network(cidr)
    except ValueError:
        return False
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


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
            # The customer's tenant does not know our application: nothing can be created. Their step comes first.
            first = exc.message.splitlines()[0] if exc.message else "no token"
            raise ProviderError(
                f"Our application {azure.application_id} is not registered in your tenant {customer.tenant_id} "
                f"({first}). Run `az ad sp create --id {azure.application_id}` in that tenant. "
                f"{_grant_text(azure.application_id, azure.their_vnet)}",
                permanent=True,
            ) from exc
        self._check_owner(azure, customer)
        doing = f"create peering {customer.public_id}"
        try:
            _write(azure, customer, doing)
        except HttpResponseError as exc:
            if _code(exc) in AUTHORIZATION_CODES:
                raise _refused(exc, azure, customer, "the platform's side") from exc
            raise _error(exc, doing) from exc
        except Exception as exc:  # noqa: BLE001 - transport failures and timeouts retry
            raise _error(exc, doing) from exc
        return self._customer_side(azure, customer)

    def _check_owner(self, azure: _Azure, customer: Customer) -> None:
        """Refuse (permanently) unless the customer's VNet carries the asking organization's owner tag: our role on
        it may have been granted by its owner for their own peerings, and must not serve anyone who names it."""
        doing = f"read your virtual network {customer.vnet_name}"
        try:
            vnet = azure.customer_client.virtual_networks.get(customer.resource_group, customer.vnet_name)
        except ResourceNotFoundError as exc:
            raise ProviderError(f"Your virtual network {azure.their_vnet} does not exist.", permanent=True) from exc
        except HttpResponseError as exc:
            if _code(exc) in AUTHORIZATION_CODES:
                raise ProviderError(
                    f"Azure refused to {doing}: {_code(exc)}. {_grant_text(azure.application_id, azure.their_vnet)}",
                    permanent=True,
                ) from exc
            raise _error(exc, doing) from exc
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, doing) from exc
        tags = {str(k).lower(): v for k, v in (vnet.tags or {}).items()}  # ARM's tag names ignore case
        if not customer.organization or tags.get(AZURE_OWNER_TAG) != customer.organization:
            raise ProviderError(
                f"Your virtual network {azure.their_vnet} does not carry the tag "
                f"{AZURE_OWNER_TAG}={customer.organization}, which shows it is yours to peer with this organization. "
                f"Run `az tag update --operation merge --resource-id {azure.their_vnet} --tags "
                f"{AZURE_OWNER_TAG}={customer.organization}`, then create the peering again.",
                permanent=True,
            )

    def _customer_side(self, azure: _Azure, customer: Customer) -> Observation:
        """Create the customer's side (ours exists), then read ours: Connected once both are there. A refusal is
        the customer's to fix; the caller removes our side before failing the peering."""
        doing = f"create your side of peering {customer.public_id}"
        try:
            _write(azure, customer, doing, theirs=True)
        except HttpResponseError as exc:
            if _code(exc) in AUTHORIZATION_CODES:
                raise _refused(exc, azure, customer, "your side") from exc
            raise _error(exc, doing) from exc
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, doing) from exc
        observation = self._read(azure, customer)
        return Observation(
            observation.status,
            observation.provider_state,
            observation.detail,
            ids=_ids(azure, customer, created=True, theirs_created=True),
        )

    def refresh(self, platform: Platform, customer: Customer, ids: Mapping) -> Observation:
        if not ids.get("created"):
            return self.request(platform, customer)
        azure = _Azure(platform, customer)
        ours = self._fetch(azure, customer)
        observation = self._observe(azure, customer, ours)
        if ours is not None and observation.status == "active" and _sync_level(ours) != IN_SYNC:
            observation = self._sync(azure, customer, ours)
        if observation.status == "broken" and observation.provider_state == "Failed":
            return self._repair(azure, customer, int(ids.get("repairs") or 0) + 1)
        if observation.status == "waiting" and not ids.get("customer_side_created"):
            # A poll that stopped between the two sides, or a peering from before we made both: the customer's side
            # is still missing (one they made themselves connects it, and then there is nothing to make).
            self._check_owner(azure, customer)
            return self._customer_side(azure, customer)
        if ids.get("repairs"):
            observation = dataclasses.replace(observation, ids={**observation.ids, "repairs": 0})
        return observation

    def _repair(self, azure: _Azure, customer: Customer, attempt: int) -> Observation:
        """Write our side, left in provisioningState Failed, again (attempt `attempt` of REPAIR_ATTEMPTS). A temporary
        error is not an attempt: it raises, and the next poll tries again."""
        doing = f"write peering {customer.public_id} again"
        try:
            _write(azure, customer, doing)
        except Exception as exc:  # noqa: BLE001 - classified by _error: only a refusal counts as an attempt
            error = _error(exc, doing)
            if not error.permanent:
                raise error from exc
            reason = error.message
        else:
            observation = self._read(azure, customer)
            if observation.provider_state != "Failed":
                return dataclasses.replace(observation, ids={**observation.ids, "repairs": 0})
            reason = "Azure accepted the write, and the peering is still Failed."
        if attempt >= REPAIR_ATTEMPTS:
            return Observation(
                "broken",
                "Failed",
                f"Azure could not provision the platform's side of the peering, and {attempt} attempts to write it "
                f"again failed; the last: {reason} Azure cannot restore it: delete this peering and create a new one.",
                ids={"repairs": attempt},
            )
        return Observation(
            "waiting",
            "Failed",
            f"Azure could not provision the platform's side of the peering; writing it again failed (attempt "
            f"{attempt} of {REPAIR_ATTEMPTS}): {reason} The next poll writes it again.",
            ids={"repairs": attempt},
        )

    def _sync(self, azure: _Azure, customer: Customer, ours: VirtualNetworkPeering) -> Observation:
        """Connected, with a side whose copy of the other VNet's address space is stale (peeringSyncLevel): traffic
        to the ranges added since does not flow. Our side learns the customer's new space only while it all lies in
        the peering's CIDR (the range the pre-flight checked for overlaps); their side always learns ours. Otherwise
        the peering stays active and says what is not peered."""
        level = _sync_level(ours)
        notes = []
        if level in (LOCAL_BEHIND, BOTH_BEHIND):
            remote = ours.remote_virtual_network_address_space
            space = list((remote.address_prefixes if remote else None) or [])
            outside = [prefix for prefix in space if not _within(prefix, customer.cidr)]
            if outside:
                notes.append(
                    f"Your virtual network's address space is now {', '.join(space)}: {', '.join(outside)} lies "
                    f"outside this peering's range {customer.cidr}, so the platform does not learn it and traffic to "
                    f"it is not peered. Remove it from your virtual network, or peer it with a new peering."
                )
            else:
                self._sync_side(notes, lambda doing: _write(azure, customer, doing, sync=True), customer, "our")
        if level in (REMOTE_BEHIND, BOTH_BEHIND):
            self._sync_side(
                notes, lambda doing: _write(azure, customer, doing, theirs=True, sync=True), customer, "your"
            )
        ours_now = self._fetch(azure, customer)
        observation = self._observe(azure, customer, ours_now)
        if observation.status != "active" or ours_now is None or _sync_level(ours_now) == IN_SYNC:
            return observation
        level = _sync_level(ours_now)
        return Observation(
            "active",
            f"Connected ({level})",
            " ".join(notes) or f"Azure reports the address spaces {level}; the next poll syncs them again.",
        )

    @staticmethod
    def _sync_side(notes: list[str], write, customer: Customer, whose: str) -> None:
        doing = f"sync {whose} side of peering {customer.public_id} with the other network's address space"
        try:
            write(doing)
        except Exception as exc:  # noqa: BLE001 - a temporary error retries the poll; a refusal is told
            error = _error(exc, doing)
            if not error.permanent:
                raise error from exc
            notes.append(error.message)

    def _fetch(self, azure: _Azure, customer: Customer) -> VirtualNetworkPeering | None:
        """Our side of the peering, or None when it does not exist."""
        try:
            return azure.platform_client.virtual_network_peerings.get(
                azure.resource_group, azure.vnet, customer.public_id
            )
        except ResourceNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, f"read peering {customer.public_id}") from exc

    def _read(self, azure: _Azure, customer: Customer) -> Observation:
        return self._observe(azure, customer, self._fetch(azure, customer))

    def _observe(self, azure: _Azure, customer: Customer, ours: VirtualNetworkPeering | None) -> Observation:
        if ours is None:
            return Observation(
                "broken", "NotFound", f"The platform's side of the peering ({customer.public_id}) no longer exists."
            )
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
        except Exception as exc:  # noqa: BLE001 - only a hint for the customer; the platform side decides the state
            raise_if_interrupted(exc)
            return "Your side could not be read."
        return f"Your side of the peering is {theirs.peering_state or 'not ready'}."

    def remove(self, platform: Platform, customer: Customer, ids: Mapping) -> None:
        azure = _Azure(platform, customer)
        try:
            _wait(
                azure,
                f"delete peering {customer.public_id}",
                lambda: azure.platform_client.virtual_network_peerings.begin_delete(
                    azure.resource_group, azure.vnet, customer.public_id
                ),
            )
        except ResourceNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, f"delete peering {customer.public_id}") from exc
        self._remove_customer_side(azure, customer)

    def _remove_customer_side(self, azure: _Azure, customer: Customer) -> None:
        """Delete the customer's side we made, when we still may. Only a peering named after ours that points at the
        platform VNet is ours to delete; without access (they removed our application or its role) it stays theirs:
        Azure shows it Disconnected, and it holds no address space of ours."""
        doing = f"delete your side of peering {customer.public_id}"
        try:
            theirs = azure.customer_client.virtual_network_peerings.get(
                customer.resource_group, customer.vnet_name, customer.public_id
            )
            remote = theirs.remote_virtual_network.id if theirs.remote_virtual_network else ""
            if (remote or "").lower() != azure.our_vnet.lower():
                return
            _wait(
                azure,
                doing,
                lambda: azure.customer_client.virtual_network_peerings.begin_delete(
                    customer.resource_group, customer.vnet_name, customer.public_id
                ),
            )
        except (ResourceNotFoundError, ClientAuthenticationError):
            return
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                return
            raise _error(exc, doing) from exc
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, doing) from exc

    def customer_step(self, platform: Platform, customer: Customer, ids: Mapping) -> CustomerStep:
        net = platform.network
        application = platform.credentials.get("client_id") or net.get("application_id", "")
        theirs = vnet_id(customer.subscription_id, customer.resource_group, customer.vnet_name)
        return CustomerStep(
            summary=(
                f"Register our application {application} in your tenant {customer.tenant_id} and grant it the "
                f'"{ROLE}" role on your virtual network {customer.vnet_name} (or a custom role with '
                f"{', '.join(PEERING_ACTIONS)}). We create both sides of the peering."
            ),
            commands=(
                f"az ad sp create --id {application}",
                f'az role assignment create --assignee {application} --role "{ROLE}" --scope {theirs}',
                f"az tag update --operation merge --resource-id {theirs} --tags "
                f"{AZURE_OWNER_TAG}={customer.organization}",
            ),
        )


ADAPTER = AzureAdapter()
