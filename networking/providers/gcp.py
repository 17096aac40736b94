"""GCP VPC Network Peering with google-cloud-compute: our side of the peering on the region's platform network, read
back until the customer's side makes it ACTIVE.

The only module that imports the Google Cloud SDK. Operations are waited for through GlobalOperationsClient built on
the same endpoint as the networks client (the SDK's own extended-operation polling ignores a custom endpoint).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from google.api_core import exceptions as google_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import compute_v1
from google.oauth2 import service_account

from networking.providers.base import Customer, CustomerStep, Observation, Platform, ProviderError, raise_if_interrupted

SCOPES = ["https://www.googleapis.com/auth/compute"]
OPERATION_DEADLINE_SECONDS = 90.0
TEMPORARY = (
    google_exceptions.ServerError,
    google_exceptions.TooManyRequests,
    google_exceptions.Unauthorized,  # our own credentials (401, 403): the operator fixes them, the peering waits
    google_exceptions.Forbidden,
    auth_exceptions.TransportError,
    auth_exceptions.RefreshError,
)

# GCP runs one peering operation at a time on a network and its peer; a change meanwhile is a 400 with this message
# (terraform-provider-google retries it: IsPeeringOperationInProgress). The region's platform network is shared by
# every deployment's peerings, so it is "not now", not a refusal.
IN_PROGRESS = "peering operation in progress on the local or peer network"


def peering_name(customer: Customer) -> str:
    """GCP names are lowercase letters, digits and hyphens: our id with its underscore as a hyphen."""
    return customer.public_id.replace("_", "-")


def network_path(project: str, network: str) -> str:
    return f"projects/{project}/global/networks/{network}"


def _same_network(url: str, project: str, network: str) -> bool:
    return url.rstrip("/").endswith(network_path(project, network))


class _Clients:
    def __init__(self, platform: Platform) -> None:
        credentials = service_account.Credentials.from_service_account_info(dict(platform.credentials), scopes=SCOPES)
        options = {"api_endpoint": platform.endpoint} if platform.endpoint else None
        self.networks = compute_v1.NetworksClient(credentials=credentials, client_options=options)
        self.operations = compute_v1.GlobalOperationsClient(credentials=credentials, client_options=options)
        self.project = platform.network["project_id"]
        self.network = platform.network["network"]

    def ours(self) -> compute_v1.Network:
        return self.networks.get(project=self.project, network=self.network, timeout=30)

    def wait(self, operation: compute_v1.Operation, doing: str) -> None:
        """Until the global operation is DONE; its error, if any, is the provider's permanent answer."""
        deadline = time.monotonic() + OPERATION_DEADLINE_SECONDS
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise ProviderError(f"GCP did not finish to {doing} in time ({operation.name})", permanent=False)
            operation = self.operations.wait(project=self.project, operation=operation.name, timeout=60)
        if operation.error and operation.error.errors:
            first = operation.error.errors[0]
            raise ProviderError(f"GCP refused to {doing}: {first.code}: {first.message}", permanent=True)


def _error(exc: Exception, doing: str) -> ProviderError:
    raise_if_interrupted(exc)
    if isinstance(exc, ProviderError):
        return exc
    if not isinstance(exc, google_exceptions.GoogleAPICallError):
        return ProviderError(f"GCP could not be reached to {doing}: {exc}", permanent=False)
    if isinstance(exc, TEMPORARY) or IN_PROGRESS in (exc.message or ""):
        return ProviderError(f"GCP answered {exc.code} to {doing}, retrying: {exc.message}", permanent=False)
    return ProviderError(f"GCP refused to {doing}: {exc.code}: {exc.message}", permanent=True)


def _find(network: compute_v1.Network, name: str) -> compute_v1.NetworkPeering | None:
    return next((p for p in network.peerings if p.name == name), None)


class GcpAdapter:
    def request(self, platform: Platform, customer: Customer) -> Observation:
        name = peering_name(customer)
        ids = {
            "peering_name": name,
            "network": network_path(platform.network["project_id"], platform.network["network"]),
        }
        try:
            clients = _Clients(platform)
            if _find(clients.ours(), name) is None:
                operation = clients.networks.add_peering_unary(
                    project=clients.project,
                    network=clients.network,
                    networks_add_peering_request_resource=compute_v1.NetworksAddPeeringRequest(
                        network_peering=compute_v1.NetworkPeering(
                            name=name,
                            network=network_path(customer.project_id, customer.network),
                            exchange_subnet_routes=True,
                        )
                    ),
                    timeout=30,
                )
                clients.wait(operation, f"add peering {name}")
            peering = _find(clients.ours(), name)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a ProviderError; an interruption propagates (_error)
            raise _error(exc, f"add peering {name}") from exc
        if peering is None:
            raise ProviderError(f"GCP accepted peering {name} but does not list it", permanent=False)
        observation = _observe(peering)
        return Observation(observation.status, observation.provider_state, observation.detail, ids=ids)

    def refresh(self, platform: Platform, customer: Customer, ids: Mapping) -> Observation:
        name = ids.get("peering_name") or peering_name(customer)
        try:
            peering = _find(_Clients(platform).ours(), name)
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, f"read peering {name}") from exc
        if peering is None:
            if not ids.get("peering_name"):
                return self.request(platform, customer)
            return Observation("broken", "not-found", f"The platform's side of the peering ({name}) no longer exists.")
        return _observe(peering)

    def remove(self, platform: Platform, customer: Customer, ids: Mapping) -> None:
        name = ids.get("peering_name") or peering_name(customer)
        try:
            clients = _Clients(platform)
            if _find(clients.ours(), name) is None:
                return
            operation = clients.networks.remove_peering_unary(
                project=clients.project,
                network=clients.network,
                networks_remove_peering_request_resource=compute_v1.NetworksRemovePeeringRequest(name=name),
                timeout=30,
            )
            clients.wait(operation, f"remove peering {name}")
        except google_exceptions.NotFound:
            return
        except Exception as exc:  # noqa: BLE001
            raise _error(exc, f"remove peering {name}") from exc

    def customer_step(self, platform: Platform, customer: Customer, ids: Mapping) -> CustomerStep:
        name = ids.get("peering_name") or peering_name(customer)
        ours = platform.network
        return CustomerStep(
            summary=(
                f"Create the matching peering from your network {customer.network} in project {customer.project_id} "
                f"to the platform's network {ours['network']} in project {ours['project_id']} "
                f"({platform.cidr}); it becomes ACTIVE once both sides exist."
            ),
            commands=(
                f"gcloud compute networks peerings create {name} --project={customer.project_id} "
                f"--network={customer.network} --peer-project={ours['project_id']} --peer-network={ours['network']}",
            ),
        )


def _observe(peering: compute_v1.NetworkPeering) -> Observation:
    if peering.state == "ACTIVE":
        return Observation("active", "ACTIVE")
    detail = peering.state_details or "The customer's side of the peering does not exist yet."
    return Observation("waiting", peering.state or "INACTIVE", detail)


ADAPTER = GcpAdapter()
