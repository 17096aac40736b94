"""HTTP fake of Google's OAuth token endpoint and of Compute Engine's networks and global operations, for the calls
networking.providers.gcp makes through google-auth and google-cloud-compute (REST transport).

Served on 127.0.0.1:
- `POST /token`: the service-account JWT-bearer grant; the assertion's RS256 signature is checked against the
  account's registered public key (a self-signed JWT sent straight as a bearer token is accepted the same way);
- `GET /compute/v1/projects/{p}/global/networks/{n}` with `peerings` whose `state` is ACTIVE only while the peer
  network peers back, INACTIVE (with `stateDetails`) otherwise;
- `POST …/networks/{n}/addPeering` and `POST …/networks/{n}/removePeering`: 403 without a role on the project, 404
  for a missing network, else a global Operation (RUNNING, then DONE) whose `error` carries the refusal (a peer network
  that does not exist, a name already taken, a peering that is not there);
- `GET /compute/v1/projects/{p}/global/operations/{op}` and `POST …/operations/{op}/wait`.
Errors are Google's JSON error body. The helpers at the bottom play the customer's side.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from google.auth import jwt as google_jwt

_NETWORK = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/networks/(?P<network>[^/:]+)(?P<verb>/\w+)?$")
_OPERATION = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/global/operations/(?P<op>[^/]+?)(?P<wait>/wait)?$")
_PEER = re.compile(r"projects/(?P<project>[^/]+)/global/networks/(?P<network>[^/]+)$")
SELF_LINK = "https://www.googleapis.com/compute/v1/"


def network_url(project: str, network: str) -> str:
    return f"{SELF_LINK}projects/{project}/global/networks/{network}"


@dataclass
class FakeGcp:
    accounts: dict[str, str] = field(default_factory=dict)  # service account email -> public key PEM
    members: set[tuple[str, str]] = field(default_factory=set)  # (email, project) with compute.networkAdmin
    networks: dict[tuple[str, str], dict] = field(default_factory=dict)
    operations: dict[tuple[str, str], dict] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # issued token -> email
    seen: list[tuple[str, str]] = field(default_factory=list)
    operation_polls: int = 1  # how many reads an operation stays RUNNING
    lock: threading.RLock = field(default_factory=threading.RLock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1000))

    # -- setup and the customer's own actions -------------------------------------------------------------------
    def add_service_account(self, email: str, public_key_pem: str, projects: list[str]) -> None:
        with self.lock:
            self.accounts[email] = public_key_pem
            for project in projects:
                self.members.add((email, project))

    def add_network(self, project: str, name: str, subnet_ranges: list[str]) -> None:
        with self.lock:
            self.networks[(project, name)] = {"id": str(next(self._ids)), "ranges": list(subnet_ranges), "peerings": {}}

    def peer(self, project: str, network: str, name: str, peer_project: str, peer_network: str) -> None:
        """The customer's `gcloud compute networks peerings create` on their side."""
        with self.lock:
            self.networks[(project, network)]["peerings"][name] = {
                "name": name,
                "network": network_url(peer_project, peer_network),
            }

    def unpeer(self, project: str, network: str, name: str) -> None:
        with self.lock:
            self.networks[(project, network)]["peerings"].pop(name, None)

    def start_peering_operation(self, project: str, network: str) -> str:
        """Another peering operation on `network` (another deployment's, or the customer's) that runs until
        finish_operation: meanwhile GCP refuses peering changes on it (see _network)."""
        with self.lock:
            name = f"operation-{secrets.token_hex(8)}"
            self.operations[(project, name)] = {
                "name": name,
                "status": "RUNNING",
                "_polls_left": 10**9,
                "_error": None,
                "_apply": None,
                "_networks": {(project, network)},
            }
            return name

    def finish_operation(self, project: str, name: str) -> None:
        with self.lock:
            self.operations[(project, name)]["status"] = "DONE"

    def peering_operation_running(self, networks: set[tuple[str, str]]) -> bool:
        with self.lock:
            return any(
                op["status"] != "DONE" and op.get("_networks", set()) & networks for op in self.operations.values()
            )

    def rendered(self, project: str, network: str) -> dict | None:
        with self.lock:
            return copy.deepcopy(self._render(project, network)) if (project, network) in self.networks else None

    def requests(self, method: str, path_contains: str = "") -> list[tuple[str, str]]:
        with self.lock:
            return [r for r in self.seen if r[0] == method and path_contains in r[1]]

    # -- state -------------------------------------------------------------------------------------------------
    def _peering_state(self, project: str, network: str, peering: dict) -> tuple[str, str]:
        match = _PEER.search(peering["network"])
        other = self.networks.get((match["project"], match["network"])) if match else None
        if other is None:
            return "INACTIVE", "Peer network does not exist."
        back = any(
            p["network"].endswith(f"projects/{project}/global/networks/{network}") for p in other["peerings"].values()
        )
        if back:
            return "ACTIVE", "[2026-11-02T10:00:00.000-00:00]: Connected."
        return "INACTIVE", "[2026-11-02T10:00:00.000-00:00]: Waiting for peer network to connect."

    def _render(self, project: str, network: str) -> dict:
        stored = self.networks[(project, network)]
        peerings = []
        for peering in stored["peerings"].values():
            state, details = self._peering_state(project, network, peering)
            peerings.append(
                {
                    "name": peering["name"],
                    "network": peering["network"],
                    "state": state,
                    "stateDetails": details,
                    "autoCreateRoutes": True,
                    "exchangeSubnetRoutes": True,
                    "stackType": "IPV4_ONLY",
                }
            )
        return {
            "kind": "compute#network",
            "id": stored["id"],
            "name": network,
            "selfLink": network_url(project, network),
            "autoCreateSubnetworks": False,
            "routingConfig": {"routingMode": "REGIONAL"},
            "peerings": peerings,
        }


def _google_error(code: int, message: str, reason: str) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeGcp
    _body: bytes = b""  # the request's body, read by _handle before anything answers

    def log_message(self, format, *args):  # noqa: A002
        return

    def _send(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _verify_jwt(self, assertion: str) -> str | None:
        try:
            claims = google_jwt.decode(assertion, verify=False)
            key = self.state.accounts.get(claims.get("iss", ""))
            if key is None:
                return None
            google_jwt.decode(assertion, certs=key, verify=True)
        except ValueError:
            return None
        return claims["iss"]

    def _token(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self._body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            self._send(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."})
            return
        email = self._verify_jwt(form.get("assertion", ""))
        if email is None:
            self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
            return
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.state.tokens[token] = email
        self._send(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _caller(self) -> str | None:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        email = self.state.tokens.get(token) or (self._verify_jwt(token) if token.count(".") == 2 else None)
        if email is None:
            self._send(
                401,
                _google_error(
                    401,
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                    "other valid authentication credential.",
                    "authError",
                ),
            )
        return email

    def _operation(
        self, project: str, kind: str, target: str, user: str, error: dict | None, apply, networks=frozenset()
    ) -> dict:
        name = f"operation-{secrets.token_hex(8)}"
        op = {
            "kind": "compute#operation",
            "id": str(next(self.state._ids)),
            "name": name,
            "operationType": kind,
            "targetLink": target,
            "status": "RUNNING",
            "user": user,
            "progress": 0,
            "insertTime": "2026-11-02T10:00:00.000-00:00",
            "startTime": "2026-11-02T10:00:00.000-00:00",
            "selfLink": f"{SELF_LINK}projects/{project}/global/operations/{name}",
            "_polls_left": self.state.operation_polls,
            "_error": error,
            "_apply": apply,
            "_networks": set(networks),
        }
        self.state.operations[(project, name)] = op
        return self._op_view(op)

    def _advance(self, op: dict) -> None:
        if op["status"] == "DONE":
            return
        if op["_polls_left"] > 0:
            op["_polls_left"] -= 1
            return
        op["status"] = "DONE"
        op["progress"] = 100
        op["endTime"] = "2026-11-02T10:00:01.000-00:00"
        if op["_error"] is not None:
            op["error"] = {"errors": [op["_error"]]}
            op["httpErrorStatusCode"] = 400
            op["httpErrorMessage"] = "BAD REQUEST"
        elif op["_apply"] is not None:
            op["_apply"]()

    @staticmethod
    def _op_view(op: dict) -> dict:
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def _network(self, method: str, match: re.Match, email: str) -> None:
        state = self.state
        project, network, verb = match["project"], match["network"], match["verb"]
        key = (project, network)
        if (email, project) not in state.members:
            permission = "compute.networks.get" if method == "GET" else f"compute.networks.{verb.strip('/')}"
            self._send(
                403,
                _google_error(
                    403,
                    f"Required '{permission}' permission for 'projects/{project}/global/networks/{network}'",
                    "forbidden",
                ),
            )
            return
        if key not in state.networks:
            self._send(
                404,
                _google_error(
                    404, f"The resource 'projects/{project}/global/networks/{network}' was not found", "notFound"
                ),
            )
            return
        if method == "GET" and verb is None:
            self._send(200, state._render(project, network))
            return
        body = json.loads(self._body or b"{}")
        target = network_url(project, network)
        peerings = state.networks[key]["peerings"]
        # GCP runs one peering operation at a time on a network and its peer: a change while one runs is refused
        # with this 400 (terraform-provider-google retries it: IsPeeringOperationInProgress, "Waiting peering
        # operation to complete").
        wanted = body.get("networkPeering") or {}
        peer_match = _PEER.search(wanted.get("network", ""))
        touched = {key} | ({(peer_match["project"], peer_match["network"])} if peer_match else set())
        if method == "POST" and state.peering_operation_running(touched):
            message = "There is a peering operation in progress on the local or peer network. Try again later."
            self._send(400, _google_error(400, message, "badRequest"))
            return
        if method == "POST" and verb == "/addPeering":
            name, peer = wanted.get("name", ""), wanted.get("network", "")
            error = None
            if name in peerings:
                error = {"code": "RESOURCE_ALREADY_EXISTS", "message": f"There is already a peering '{name}'."}
            elif peer_match is None or (peer_match["project"], peer_match["network"]) not in state.networks:
                error = {
                    "code": "RESOURCE_NOT_FOUND",
                    "message": f"The resource '{peer.split(SELF_LINK)[-1]}' was not found",
                }

            def apply():
                peerings[name] = {"name": name, "network": network_url(peer_match["project"], peer_match["network"])}

            self._send(200, self._operation(project, "addPeering", target, email, error, apply, touched))
            return
        if method == "POST" and verb == "/removePeering":
            name = body.get("name", "")
            error = None
            if name not in peerings:
                error = {
                    "code": "RESOURCE_NOT_FOUND",
                    "message": f"There is no peering '{name}' in network '{network}'.",
                }
            remove = self._operation(
                project, "removePeering", target, email, error, lambda: peerings.pop(name, None), touched
            )
            self._send(200, remove)
            return
        self._send(400, _google_error(400, f"Invalid request {method} {verb}", "invalid"))

    def _operations(self, method: str, match: re.Match, email: str) -> None:
        op = self.state.operations.get((match["project"], match["op"]))
        if op is None:
            self._send(
                404,
                _google_error(
                    404,
                    f"The resource 'projects/{match['project']}/global/operations/{match['op']}' was not found",
                    "notFound",
                ),
            )
            return
        self._advance(op)
        if match["wait"]:
            self._advance(op)  # wait returns once done (or after a while): here, at the next step
        self._send(200, self._op_view(op))

    def _handle(self, method: str) -> None:
        # Read whatever the answer: on a kept-alive connection, an unread body would be taken for the next request.
        self._body = self._read_body()
        path = urlsplit(self.path).path
        with self.state.lock:
            self.state.seen.append((method, path))
            if method == "POST" and path == "/token":
                self._token()
                return
            network = _NETWORK.match(path)
            operation = _OPERATION.match(path)
            if network is None and operation is None:
                self._send(404, _google_error(404, f"No route for {method} {path}", "notFound"))
                return
            email = self._caller()
            if email is None:
                return
            if network is not None:
                self._network(method, network, email)
            else:
                self._operations(method, operation, email)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")


class FakeGcpServer:
    def __init__(self) -> None:
        self.state = FakeGcp()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGcpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
