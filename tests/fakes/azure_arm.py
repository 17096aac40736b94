"""HTTPS fake of Microsoft Entra ID's token endpoint and Azure Resource Manager's virtual network peerings, for the
calls networking.providers.azure makes through azure-identity and azure-mgmt-network.

Served on 127.0.0.1 over TLS (a throwaway CA: the SDK sends bearer tokens only over HTTPS):
- `GET /{tenant}/v2.0/.well-known/openid-configuration` (MSAL's tenant discovery) and
  `POST /{tenant}/oauth2/v2.0/token` (client credentials): a token only for an application registered in that tenant,
  with its secret (AADSTS700016 / AADSTS7000215 otherwise);
- `GET /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{v}` (with its tags: 403
  AuthorizationFailed without `virtualNetworks/read` there);
- `GET|PUT|DELETE /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/{v}/
  virtualNetworkPeerings/{name}`: 401 for a token of another tenant, 403 AuthorizationFailed without a role on the
  VNet whose actions include the call's (`virtualNetworkPeerings/read|write|delete`), 403 LinkedAuthorizationFailed
  when the remote VNet is not covered by a token of its tenant (the main one or an `x-ms-authorization-auxiliary` one)
  whose principal holds `Microsoft.Network/virtualNetworks/peer/action` there, 400 VnetAddressSpacesOverlap, 404 ResourceNotFound/NotFound; PUT answers 201 and DELETE 202 with
  `Azure-AsyncOperation` (and `Location`), polled at
  `GET /subscriptions/{s}/providers/Microsoft.Network/locations/{l}/operations/{id}` (InProgress, then Succeeded,
  Failed, or Canceled: ARM's end of an operation another one on the same resource superseded, `{"status": "Canceled",
  "error": {"code": "Canceled", "details": [{"code": "CanceledAndSupersededDueToAnotherOperation"}]}}`, which leaves
  the resource's provisioningState Canceled);
- one operation at a time, as the network resource provider runs them: a PUT of a peering whose own operation is still
  in progress is 409 AnotherOperationInProgress, one that links a VNet another peering operation is updating is 400
  ReferencedResourceNotProvisioned (the remedy in both is to retry once it ended: terraform-provider-azurerm's
  internal/services/network/virtual_network_peering_resource.go retries the latter, "the Vnet was just created or
  another peering was just initiated"); `hold_operations` keeps operations InProgress, as a slow one outliving a
  poller's timeout;
- `Retry-After` on a started operation and on its status answers (`operation_retry_after`), and on an error answer
  (`fail_next(..., retry_after=)`, as ARM's 429 throttling carries it): the SDK sleeps what it says;
- peering states as Azure computes them: Initiated until the remote VNet peers back, then Connected on both sides,
  Disconnected for good once the other side is deleted; each side keeps the remote address space it learnt
  (`remoteAddressSpace`, beside the remote VNet's current `remoteVirtualNetworkAddressSpace`) until a PUT with
  `?syncRemoteAddressSpace=true` syncs it, and `peeringSyncLevel` says which side is behind (`set_address_space`).
The helpers at the bottom play the customer (registering our application, granting a role, creating their side).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.fakes.tls import TestPki

_PEERING = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Network/virtualNetworks/"
    r"(?P<vnet>[^/]+)/virtualNetworkPeerings/(?P<name>[^/]+)$",
    re.IGNORECASE,
)
_VNET = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Network/virtualNetworks/"
    r"(?P<vnet>[^/]+)$",
    re.IGNORECASE,
)
_OPERATION = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Network/locations/(?P<loc>[^/]+)/operations/(?P<id>[^/]+)$",
    re.IGNORECASE,
)
_DISCOVERY = re.compile(r"^/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration$")
_TOKEN = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/token$")


# Role definitions by name: their `Actions`, as Azure's built-in roles define them (wildcards included).
ROLE_ACTIONS: dict[str, tuple[str, ...]] = {
    "Network Contributor": ("Microsoft.Authorization/*/read", "Microsoft.Network/*", "Microsoft.Resources/*/read"),
    "Reader": ("*/read",),
    # The narrower custom role Azure's peering documentation lists.
    "Virtual Network Peering Operator": (
        "Microsoft.Network/virtualNetworks/read",
        "Microsoft.Network/virtualNetworks/peer/action",
        "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/write",
        "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/read",
        "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/delete",
    ),
    # Too narrow on purpose (tests): may read and be linked to, may not write a peering.
    "Peer Only": ("Microsoft.Network/virtualNetworks/peer/action", "Microsoft.Network/virtualNetworks/read"),
}
PEER_ACTION = "Microsoft.Network/virtualNetworks/peer/action"


def vnet_id(subscription: str, resource_group: str, vnet: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Network/virtualNetworks/{vnet}"


def _overlaps(a: list[str], b: list[str]) -> bool:
    import ipaddress

    return any(ipaddress.ip_network(x).overlaps(ipaddress.ip_network(y)) for x in a for y in b)


@dataclass
class _Operation:
    subscription: str
    polls_left: int
    status: str = "InProgress"
    final: str = "Succeeded"
    error: dict | None = None
    on_done: object = None
    on_failed: object = None
    resource: str = ""  # lowercase id of the peering the operation writes
    vnets: frozenset[str] = frozenset()  # lowercase ids of the VNets it updates (the peering's and the remote one)


@dataclass
class FakeAzure:
    subscriptions: dict[str, str] = field(default_factory=dict)  # subscription -> tenant
    applications: dict[str, str] = field(default_factory=dict)  # client id -> secret
    registered: dict[str, set[str]] = field(default_factory=dict)  # tenant -> application ids with a principal
    roles: set[tuple[str, str, str]] = field(default_factory=set)  # (application id, scope lowercase, role name)
    vnets: dict[str, dict] = field(default_factory=dict)  # lowercase vnet id -> {id, location, address_space, peerings}
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (tenant, application id)
    operations: dict[str, _Operation] = field(default_factory=dict)
    seen: list[tuple[str, str, dict]] = field(default_factory=list)  # (method, path, headers)
    failures: list[tuple[str, str, int, str, str, str | None]] = field(default_factory=list)
    operation_polls: int = 1  # how many times an async operation answers InProgress before it ends
    # The Retry-After (seconds) that a started operation and its status answer carry, as ARM's do.
    operation_retry_after: str = "0"
    next_operation_error: dict | None = None
    next_operation_status: str = "Failed"
    hold_operations: bool = False  # operations stay InProgress (Retry-After 1) until release_operations()
    lock: threading.RLock = field(default_factory=threading.RLock)
    base_url: str = ""

    # -- setup and the customer's own actions -------------------------------------------------------------------
    def add_tenant(self, tenant: str, subscriptions: list[str]) -> None:
        with self.lock:
            self.registered.setdefault(tenant, set())
            for subscription in subscriptions:
                self.subscriptions[subscription.lower()] = tenant

    def add_application(self, tenant: str, application_id: str, secret: str) -> None:
        """An application registered in its home tenant."""
        with self.lock:
            self.applications[application_id] = secret
            self.registered.setdefault(tenant, set()).add(application_id)

    def register_application(self, tenant: str, application_id: str) -> None:
        """`az ad sp create --id <application>` in `tenant`."""
        with self.lock:
            self.registered.setdefault(tenant, set()).add(application_id)

    def assign_role(self, application_id: str, scope: str, role: str = "Network Contributor") -> None:
        """`az role assignment create --assignee <application> --role <role> --scope <scope>`."""
        if role not in ROLE_ACTIONS:
            raise ValueError(f"unknown role {role!r}")
        with self.lock:
            self.roles.add((application_id, scope.lower(), role))

    def remove_role(self, application_id: str, scope: str) -> None:
        """`az role assignment delete --assignee <application> --scope <scope>`: every role there."""
        with self.lock:
            self.roles = {r for r in self.roles if not (r[0] == application_id and r[1] == scope.lower())}

    def allowed(self, application: str, action: str, scope: str) -> bool:
        """Whether a role assigned to `application` at `scope` or above grants `action` (ARM's wildcard match)."""
        scope = scope.lower()
        with self.lock:
            return any(
                a == application
                and (scope == s or scope.startswith(s.rstrip("/") + "/"))
                and any(fnmatchcase(action.lower(), pattern.lower()) for pattern in ROLE_ACTIONS[role])
                for a, s, role in self.roles
            )

    def add_vnet(self, subscription: str, resource_group: str, name: str, address_space: list[str], location: str):
        with self.lock:
            resource_id = vnet_id(subscription, resource_group, name)
            self.vnets[resource_id.lower()] = {
                "id": resource_id,
                "location": location,
                "address_space": list(address_space),
                "peerings": {},
                "tags": {},
            }
            return resource_id

    def tag_vnet(self, vnet: str, name: str, value: str) -> None:
        """`az tag update --operation merge --resource-id <vnet> --tags <name>=<value>`."""
        with self.lock:
            self.vnets[vnet.lower()]["tags"][name] = value

    def create_peering(self, vnet: str, name: str, remote_vnet: str) -> None:
        """The customer creates their side directly (`az network vnet peering create`)."""
        with self.lock:
            self._put_peering(self.vnets[vnet.lower()], name, remote_vnet, provisioning="Succeeded")

    def fail_provisioning(self, vnet: str, name: str) -> None:
        """An update of the peering failed inside ARM: its provisioningState is Failed, its peering stays as it was
        (Microsoft.Network's "failed provisioning state": another PUT of the resource restores it)."""
        with self.lock:
            self.vnets[vnet.lower()]["peerings"][name.lower()]["provisioning"] = "Failed"

    def set_address_space(self, vnet: str, address_space: list[str]) -> None:
        """`az network vnet update --address-prefixes ...` on a peered VNet: its peerings keep the space they learnt
        until synced, and Azure reports the difference in peeringSyncLevel."""
        with self.lock:
            self.vnets[vnet.lower()]["address_space"] = list(address_space)

    def delete_peering(self, vnet: str, name: str) -> None:
        with self.lock:
            self.vnets[vnet.lower()]["peerings"].pop(name.lower(), None)

    def fail_next_operation(self, code: str, message: str, status: str = "Failed", details: list | None = None) -> None:
        """The next long-running operation started ends `status` (Failed, or Canceled as ARM ends one that another
        operation on the resource superseded) with this error, after its InProgress polls."""
        with self.lock:
            self.next_operation_error = {"code": code, "message": message, **({"details": details} if details else {})}
            self.next_operation_status = status

    def release_operations(self) -> None:
        """Held operations end now (Succeeded, or Failed as set), as if their time had come."""
        with self.lock:
            self.hold_operations = False
            for operation in self.operations.values():
                if operation.status == "InProgress":
                    operation.polls_left = 0
                    _finish(operation)

    def busy(self, resource: str, vnets: set[str]) -> tuple[_Operation, str] | None:
        """An operation in progress on `resource` itself ("resource") or on one of `vnets` ("vnet")."""
        with self.lock:
            for operation in self.operations.values():
                if operation.status != "InProgress":
                    continue
                if operation.resource == resource.lower():
                    return operation, "resource"
                if operation.vnets & {v.lower() for v in vnets}:
                    return operation, "vnet"
            return None

    def fail_next(
        self, method: str, path_contains: str, status: int, code: str, message: str, retry_after: str | None = None
    ) -> None:
        """The next matching request answers this error (with a Retry-After header when given, as ARM's
        throttling answers carry)."""
        with self.lock:
            self.failures.append((method, path_contains, status, code, message, retry_after))

    def peering(self, vnet: str, name: str) -> dict | None:
        with self.lock:
            stored = self.vnets.get(vnet.lower(), {}).get("peerings", {}).get(name.lower())
            return self._render(self.vnets[vnet.lower()], stored) if stored else None

    def requests(self, method: str, path_contains: str = "") -> list[tuple[str, str, dict]]:
        with self.lock:
            return [r for r in self.seen if r[0] == method and path_contains.lower() in r[1].lower()]

    # -- state -------------------------------------------------------------------------------------------------
    def _put_peering(self, vnet: dict, name: str, remote: str, provisioning: str, sync: bool = False) -> dict:
        existing = vnet["peerings"].get(name.lower())
        peering = existing or {"name": name, "etag": f'W/"{uuid.uuid4()}"', "was_connected": False}
        relinked = existing is None or existing["remote"].lower() != remote.lower()
        peering.update({"remote": remote, "provisioning": provisioning, "disconnected": False})
        if existing is None:
            peering["guid"] = str(uuid.uuid4())
        if relinked or sync:
            # The remote VNet's address space as this peering learnt it: at creation, and again only when a PUT
            # asks with syncRemoteAddressSpace=true (a plain PUT of an existing peering keeps what it had).
            remote_vnet = self.vnets.get(remote.lower())
            peering["learned"] = list(remote_vnet["address_space"]) if remote_vnet else []
        vnet["peerings"][name.lower()] = peering
        return peering

    def _back(self, vnet: dict, peering: dict) -> dict | None:
        """The remote VNet's peering back to `vnet`, once it is linked."""
        remote = self.vnets.get(peering["remote"].lower())
        if remote is None:
            return None
        return next(
            (p for p in remote["peerings"].values() if p["remote"].lower() == vnet["id"].lower() and _linked(p)),
            None,
        )

    def _state(self, vnet: dict, peering: dict) -> str:
        if peering["disconnected"]:
            return "Disconnected"
        back = self._back(vnet, peering)
        if back is not None and _linked(peering):
            peering["was_connected"] = True
            return "Connected"
        if peering["was_connected"]:
            peering["disconnected"] = True  # Azure does not reconnect a peering whose other side went away
            return "Disconnected"
        return "Initiated"

    def _render(self, vnet: dict, peering: dict) -> dict:
        state = self._state(vnet, peering)
        remote = self.vnets.get(peering["remote"].lower())
        sync_level = "RemoteNotInSync"
        back = self._back(vnet, peering)
        if state == "Connected" and remote is not None and back is not None:
            # Local: what this side learnt of the remote VNet is its address space now; remote: what the other
            # side learnt of this VNet is this one's now. Sync-AzVirtualNetworkPeering fixes the LocalNotInSync side.
            local_ok = sorted(peering.get("learned", [])) == sorted(remote["address_space"])
            remote_ok = sorted(back.get("learned", [])) == sorted(vnet["address_space"])
            sync_level = {
                (True, True): "FullyInSync",
                (False, True): "LocalNotInSync",
                (True, False): "RemoteNotInSync",
                (False, False): "LocalAndRemoteNotInSync",
            }[(local_ok, remote_ok)]
        return {
            "id": f"{vnet['id']}/virtualNetworkPeerings/{peering['name']}",
            "name": peering["name"],
            "etag": peering["etag"],
            "type": "Microsoft.Network/virtualNetworks/virtualNetworkPeerings",
            "properties": {
                "provisioningState": peering["provisioning"],
                "resourceGuid": peering["guid"],
                "peeringState": state,
                "peeringSyncLevel": sync_level,
                "remoteVirtualNetwork": {"id": peering["remote"]},
                "allowVirtualNetworkAccess": True,
                "allowForwardedTraffic": False,
                "allowGatewayTransit": False,
                "useRemoteGateways": False,
                "remoteAddressSpace": {"addressPrefixes": list(peering.get("learned", []))},
                "remoteVirtualNetworkAddressSpace": {"addressPrefixes": remote["address_space"] if remote else []},
            },
        }


def _linked(peering: dict) -> bool:
    """A side counts once it was provisioned: an update of a connected peering (in progress or failed) leaves the
    link up; a new one links only when its creation succeeded."""
    return peering["provisioning"] == "Succeeded" or peering["was_connected"]


def _finish(operation: _Operation) -> None:
    operation.status = operation.final
    if operation.status == "Succeeded" and operation.on_done:
        operation.on_done()
    elif operation.status in ("Failed", "Canceled") and operation.on_failed:
        operation.on_failed(operation.status)


def _arm_error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeAzure
    _body: bytes = b""  # the request's body, read by _handle before anything answers

    def log_message(self, format, *args):  # noqa: A002
        return

    def _send(self, status: int, body: dict | None, headers: dict | None = None) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- identity ------------------------------------------------------------------------------------------------
    def _discovery(self, tenant: str) -> None:
        state = self.state
        if tenant not in state.registered:
            self._send(
                400, {"error": "invalid_tenant", "error_description": f"AADSTS90002: Tenant '{tenant}' not found."}
            )
            return
        base = f"{state.base_url}/{tenant}"
        self._send(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "issuer": f"{base}/v2.0",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            },
        )

    def _token(self, tenant: str) -> None:
        state = self.state
        form = {k: v[0] for k, v in parse_qs(self._body.decode()).items()}
        client, secret = form.get("client_id", ""), form.get("client_secret", "")
        if form.get("grant_type") != "client_credentials":
            self._send(400, {"error": "unsupported_grant_type", "error_description": "AADSTS70003"})
            return
        if client not in state.registered.get(tenant, set()):
            self._send(
                400,
                {
                    "error": "unauthorized_client",
                    "error_description": f"AADSTS700016: Application with identifier '{client}' was not found in the "
                    f"directory '{tenant}'.",
                    "error_codes": [700016],
                },
            )
            return
        if state.applications.get(client) != secret:
            self._send(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                },
            )
            return
        token = secrets.token_urlsafe(24)
        state.tokens[token] = (tenant, client)
        self._send(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    # -- resource manager ----------------------------------------------------------------------------------------
    def _principal(self, subscription: str) -> tuple[str, str] | None:
        """The (tenant, application) of the bearer token, if it is valid for this subscription's tenant."""
        header = self.headers.get("Authorization", "")
        principal = self.state.tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if principal is None:
            self._send(
                401,
                _arm_error("InvalidAuthenticationToken", "The access token is invalid."),
                {"WWW-Authenticate": 'Bearer authorization_uri="https://login.example", error="invalid_token"'},
            )
            return None
        if self.state.subscriptions.get(subscription.lower()) != principal[0]:
            self._send(
                401,
                _arm_error(
                    "InvalidAuthenticationTokenTenant",
                    f"The access token is from the wrong issuer. It must match the tenant associated with "
                    f"subscription '{subscription}'.",
                ),
            )
            return None
        return principal

    def _denied(self, application: str, action: str, scope: str) -> None:
        self._send(
            403,
            _arm_error(
                "AuthorizationFailed",
                f"The client '{application}' with object id '{application}' does not have authorization to perform "
                f"action '{action}' over scope '{scope}' or the scope is invalid.",
            ),
        )

    def _linked(self, application: str, remote: str) -> bool:
        """Whether the request may reference `remote`: a role there for a token of its tenant (the main token when
        the remote VNet is in the same tenant, else an x-ms-authorization-auxiliary token)."""
        state = self.state
        remote_tenant = state.subscriptions.get(remote.split("/")[2].lower())
        tokens = [self.headers.get("Authorization", "")[7:]]
        for part in (self.headers.get("x-ms-authorization-auxiliary") or "").split(","):
            part = part.strip()
            if part.startswith("Bearer "):
                tokens.append(part[7:])
        for token in tokens:
            principal = state.tokens.get(token)
            if principal and principal[0] == remote_tenant and principal[1] == application:
                if state.allowed(application, PEER_ACTION, remote):
                    return True
        return False

    def _async(self, subscription: str, location: str, on_done, resource: str = "", vnets=()) -> dict:
        op_id = str(uuid.uuid4())
        operation = _Operation(
            subscription,
            self.state.operation_polls,
            on_done=on_done,
            resource=resource.lower(),
            vnets=frozenset(v.lower() for v in vnets),
        )
        if self.state.next_operation_error is not None:
            operation.final, operation.error = self.state.next_operation_status, self.state.next_operation_error
            self.state.next_operation_error, self.state.next_operation_status = None, "Failed"
        self.state.operations[op_id] = operation
        url = (
            f"{self.state.base_url}/subscriptions/{subscription}/providers/Microsoft.Network/locations/{location}/"
            f"operations/{op_id}?api-version=2024-05-01"
        )
        return {"Azure-AsyncOperation": url, "Retry-After": self.state.operation_retry_after}

    def _take_failure(self, method: str, path: str) -> tuple[int, str, str, str | None] | None:
        for failure in self.state.failures:
            if failure[0] == method and failure[1].lower() in path.lower():
                self.state.failures.remove(failure)
                return failure[2], failure[3], failure[4], failure[5]
        return None

    def _vnet(self, match: re.Match) -> None:
        subscription = match["sub"]
        key = vnet_id(subscription, match["rg"], match["vnet"]).lower()
        principal = self._principal(subscription)
        if principal is None:
            return
        if not self.state.allowed(principal[1], "Microsoft.Network/virtualNetworks/read", key):
            self._denied(principal[1], "Microsoft.Network/virtualNetworks/read", key)
            return
        vnet = self.state.vnets.get(key)
        if vnet is None:
            self._send(
                404,
                _arm_error(
                    "ResourceNotFound",
                    f"The Resource 'Microsoft.Network/virtualNetworks/{match['vnet']}' under resource group "
                    f"'{match['rg']}' was not found.",
                ),
            )
            return
        self._send(
            200,
            {
                "id": vnet["id"],
                "name": vnet["id"].rsplit("/", 1)[1],
                "type": "Microsoft.Network/virtualNetworks",
                "location": vnet["location"],
                "tags": dict(vnet.get("tags") or {}),
                "properties": {
                    "provisioningState": "Succeeded",
                    "addressSpace": {"addressPrefixes": vnet["address_space"]},
                },
            },
        )

    def _peering(self, method: str, match: re.Match) -> None:
        state = self.state
        subscription, name = match["sub"], match["name"]
        vnet_key = vnet_id(subscription, match["rg"], match["vnet"]).lower()
        principal = self._principal(subscription)
        if principal is None:
            return
        application = principal[1]
        action = {
            "GET": "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/read",
            "PUT": "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/write",
            "DELETE": "Microsoft.Network/virtualNetworks/virtualNetworkPeerings/delete",
        }[method]
        if not state.allowed(application, action, vnet_key):
            self._denied(application, action, vnet_key)
            return
        vnet = state.vnets.get(vnet_key)
        if vnet is None:
            self._send(
                404,
                _arm_error(
                    "ResourceNotFound",
                    f"The Resource 'Microsoft.Network/virtualNetworks/{match['vnet']}' under resource group "
                    f"'{match['rg']}' was not found.",
                ),
            )
            return
        stored = vnet["peerings"].get(name.lower())
        if method == "GET":
            if stored is None:
                self._send(
                    404, _arm_error("NotFound", f"Resource {vnet['id']}/virtualNetworkPeerings/{name} not found.")
                )
            else:
                self._send(200, state._render(vnet, stored))
            return
        if method == "DELETE":
            if stored is None:
                self._send(204, None)
                return
            stored["provisioning"] = "Deleting"

            def finish():
                vnet["peerings"].pop(name.lower(), None)

            resource = f"{vnet['id']}/virtualNetworkPeerings/{name}"
            headers = self._async(subscription, vnet["location"], finish, resource, (vnet["id"], stored["remote"]))
            headers["Location"] = headers["Azure-AsyncOperation"].replace("/operations/", "/operationResults/")
            self._send(202, None, headers)
            return
        body = json.loads(self._body or b"{}")
        remote = ((body.get("properties") or {}).get("remoteVirtualNetwork") or {}).get("id", "")
        if not remote:
            self._send(400, _arm_error("InvalidRequestFormat", "remoteVirtualNetwork.id is required."))
            return
        if not self._linked(application, remote):
            self._send(
                403,
                _arm_error(
                    "LinkedAuthorizationFailed",
                    f"The client '{application}' with object id '{application}' has permission to perform action "
                    f"'{action}' on scope '{vnet['id']}'; however, it does not have permission to perform action "
                    f"'Microsoft.Network/virtualNetworks/peer/action' on the linked scope(s) '{remote}' or the linked "
                    f"scope(s) are invalid.",
                ),
            )
            return
        remote_vnet = state.vnets.get(remote.lower())
        if remote_vnet is None:
            self._send(404, _arm_error("ResourceNotFound", f"The Resource '{remote}' was not found."))
            return
        if _overlaps(vnet["address_space"], remote_vnet["address_space"]):
            self._send(
                400,
                _arm_error(
                    "VnetAddressSpacesOverlap",
                    f"Cannot create or update peering {vnet['id']}/virtualNetworkPeerings/{name}. Virtual networks "
                    f"{vnet['id']} and {remote} cannot be peered because their address spaces overlap. Overlapping "
                    f"address prefixes: {', '.join(remote_vnet['address_space'])}",
                ),
            )
            return
        resource = f"{vnet['id']}/virtualNetworkPeerings/{name}"
        busy = state.busy(resource, {vnet["id"], remote})
        if busy is not None:
            operation, what = busy
            if what == "resource":
                self._send(
                    409,
                    _arm_error(
                        "AnotherOperationInProgress",
                        "Another operation on this or dependent resource is in progress. To retrieve status of the "
                        "operation use uri: <operation>.",
                    ),
                )
            else:
                referenced = sorted(operation.vnets & {vnet["id"].lower(), remote.lower()})[0]
                self._send(
                    400,
                    _arm_error(
                        "ReferencedResourceNotProvisioned",
                        f"Cannot proceed with operation because resource {referenced} used by resource {resource} is "
                        f"not in Succeeded state. Resource is in Updating state and the last operation that "
                        f"updated/is updating the resource is PutVirtualNetworkPeeringOperation.",
                    ),
                )
            return
        created = stored is None
        query = parse_qs(urlsplit(self.path).query)
        sync = (query.get("syncRemoteAddressSpace") or [""])[0].lower() == "true"
        peering = state._put_peering(vnet, name, remote, provisioning="Updating", sync=sync)

        def finish():
            peering["provisioning"] = "Succeeded"

        headers = self._async(subscription, vnet["location"], finish, resource, (vnet["id"], remote))
        self.state.operations[headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]].on_failed = (
            lambda status: peering.update(provisioning=status)
        )
        self._send(201 if created else 200, state._render(vnet, peering), headers)

    def _operation(self, match: re.Match) -> None:
        principal = self._principal(match["sub"])
        if principal is None:
            return
        operation = self.state.operations.get(match["id"])
        if operation is None:
            self._send(404, _arm_error("NotFound", "Operation not found."))
            return
        if operation.status == "InProgress" and not self.state.hold_operations:
            if operation.polls_left > 0:
                operation.polls_left -= 1
            else:
                _finish(operation)
        body = {"status": operation.status}
        if operation.status in ("Failed", "Canceled"):
            body["error"] = operation.error
        self._send(200, body, {"Retry-After": "1" if self.state.hold_operations else self.state.operation_retry_after})

    def _handle(self, method: str) -> None:
        # Read whatever the answer: on a kept-alive connection, an unread body would be taken for the next request.
        self._body = self._read_body()
        path = urlsplit(self.path).path
        with self.state.lock:
            self.state.seen.append((method, path, dict(self.headers)))
            failure = self._take_failure(method, path)
            if failure is not None:
                self._send(
                    failure[0], _arm_error(failure[1], failure[2]), {"Retry-After": failure[3]} if failure[3] else None
                )
                return
            if method == "GET" and (m := _DISCOVERY.match(path)):
                self._discovery(m["tenant"])
            elif method == "POST" and (m := _TOKEN.match(path)):
                self._token(m["tenant"])
            elif method == "GET" and (m := _VNET.match(path)):
                self._vnet(m)
            elif method in ("GET", "PUT", "DELETE") and (m := _PEERING.match(path)):
                self._peering(method, m)
            elif method == "GET" and (m := _OPERATION.match(path)):
                self._operation(m)
            else:
                self._send(404, _arm_error("NoRegisteredProviderFound", f"No route for {method} {path}"))

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class FakeAzureServer:
    """Runs the fake on https://127.0.0.1:<random port> in a thread, with the certificate of `pki`."""

    def __init__(self, pki: TestPki) -> None:
        self.state = FakeAzure()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.socket = pki.server_context().wrap_socket(self._server.socket, server_side=True)
        self.state.base_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"https://{host}:{port}"

    def start(self) -> FakeAzureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def snapshot(self) -> dict:
        with self.state.lock:
            return copy.deepcopy(self.state.vnets)
