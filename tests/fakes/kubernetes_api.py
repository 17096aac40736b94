"""HTTP-level fake of the Kubernetes API server, for the calls the Kubernetes broker driver makes.

It serves namespaces, secrets, resource quotas, network policies, services and `emqxes.apps.emqx.io/v2beta1` on
127.0.0.1 to the real `kubernetes` client: 404/409/415 Status bodies, server-side apply, generation/resourceVersion.
It never reaches a real cluster; the helpers of FakeKubernetes play the EMQX Operator's part as emqx-operator 2.2.29
does it (controllers/apps/v2beta1/): the bootstrap Secret created once, config edits merged, blue-green updates with
volumes counted against the ResourceQuota, old StatefulSets and their PVCs kept up to revisionHistoryLimit.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

_CORE = re.compile(r"^/api/v1/namespaces(?:/(?P<ns>[^/]+)(?:/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?)?)?$")
_GROUPED = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
_KINDS = {
    ("v1", "secrets"): "Secret",
    ("v1", "resourcequotas"): "ResourceQuota",
    ("v1", "services"): "Service",
    ("networking.k8s.io/v1", "networkpolicies"): "NetworkPolicy",
    ("apps.emqx.io/v2beta1", "emqxes"): "EMQX",
}
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "namespace", "name")


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: object


@dataclass
class _Failure:
    method: str
    path_contains: str
    status: int
    reason: str
    message: str


@dataclass
class FakeKubernetes:
    """The cluster's state. Keys: (apiVersion, plural, namespace, name); namespaces use ("v1", "namespaces", "", name)."""

    objects: dict[tuple[str, str, str, str], dict] = field(default_factory=dict)
    seen: list[SeenRequest] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _version: int = 0
    # What the operator keeps per namespace: EMQX's running configuration (merged), its StatefulSets in creation
    # order ({name, hash, replicas, bootstrap}), and the objects it created (applies by others merge into them).
    running_config: dict[str, dict] = field(default_factory=dict)
    statefulsets: dict[str, list[dict]] = field(default_factory=dict)
    operator_owned: set = field(default_factory=set)
    operator_events: list[str] = field(default_factory=list)

    # -- server side -------------------------------------------------------------------------------------------
    def next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def take_failure(self, method: str, path: str) -> _Failure | None:
        for failure in self.failures:
            if failure.method == method and failure.path_contains in path:
                self.failures.remove(failure)
                return failure
        return None

    # -- test helpers (what the operator and cloud controllers would do) ----------------------------------------
    def fail_next(self, method: str, path_contains: str, status: int, reason: str = "", message: str = "") -> None:
        """The next `method` request whose path contains `path_contains` answers `status` with a Status body."""
        with self.lock:
            self.failures.append(_Failure(method, path_contains, status, reason, message or reason))

    def get(self, api_version: str, plural: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.get((api_version, plural, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def delete_object(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        with self.lock:
            del self.objects[(api_version, plural, namespace, name)]

    def mark_emqx_ready(
        self,
        namespace: str,
        name: str = "emqx",
        *,
        ready: bool = True,
        replicas: int = 1,
        observed_generation: int | None = None,
    ) -> None:
        """Set the EMQX resource's status as the operator's status machine does once every core node is ready."""
        with self.lock:
            obj = self.objects[("apps.emqx.io/v2beta1", "emqxes", namespace, name)]
            condition = {
                "type": "Ready" if ready else "CoreNodesProgressing",
                "status": "True",
                "reason": "Ready" if ready else "CoreNodesProgressing",
                "message": "Cluster is ready" if ready else "Core nodes progressing",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
            if observed_generation is not None:
                condition["observedGeneration"] = observed_generation
            obj["status"] = {
                "conditions": [condition],
                "coreNodesStatus": {"replicas": replicas, "readyReplicas": replicas if ready else 0},
            }
            obj["metadata"]["resourceVersion"] = self.next_version()

    def set_listeners_service(
        self,
        namespace: str,
        *,
        ip: str = "",
        hostname: str = "",
        name: str = "emqx-listeners",
        service_type: str = "LoadBalancer",
    ) -> None:
        """Create the operator's listeners Service and the load balancer's ingress. Its ports are the enabled
        listeners of the EMQX resource's config, as the operator derives them (apis/apps/v2beta1/util.go
        GetListenersServicePorts skips `enable = false`), or the four defaults when there is no resource."""
        with self.lock:
            ports = self._listener_ports(namespace)
            ingress = [{k: v for k, v in (("ip", ip), ("hostname", hostname)) if v}] if (ip or hostname) else []
            self.objects[("v1", "services", namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self.next_version(),
                },
                "spec": {
                    "type": service_type,
                    "ports": ports,
                },
                "status": {"loadBalancer": {"ingress": ingress}},
            }

    # -- the EMQX Operator (2.2.29) ----------------------------------------------------------------------------
    OPERATOR_KEY = "emqx-operator-controller"

    def operator_reconcile(self, namespace: str, name: str = "emqx") -> None:
        """One pass of the operator's reconcile over the EMQX resource, then Ready as its status machine says."""
        with self.lock:
            emqx = self.objects.get(("apps.emqx.io/v2beta1", "emqxes", namespace, name))
            if emqx is None:
                return
            self._operator_bootstrap_secret(namespace, name, emqx)
            self._operator_sync_config(namespace, emqx)
            rolled = self._operator_blue_green(namespace, name, emqx)
            if rolled:
                sets = self.statefulsets[namespace]
                self.mark_emqx_ready(namespace, name, replicas=sets[-1]["replicas"])
                status = self.objects[("apps.emqx.io/v2beta1", "emqxes", namespace, name)]["status"]
                status["coreNodesStatus"].update(currentRevision=sets[-1]["hash"], updateRevision=sets[-1]["hash"])

    def _operator_bootstrap_secret(self, namespace: str, name: str, emqx: dict) -> None:
        # add_bootstrap_resource.go: `<key>:<secret>` per bootstrapAPIKeys entry plus the operator's own line;
        # Create, AlreadyExists ignored: never updated afterwards.
        key = ("v1", "secrets", namespace, f"{name}-bootstrap-api-key")
        if key in self.objects:
            return
        lines = []
        for entry in emqx["spec"].get("bootstrapAPIKeys") or []:
            ref = entry["secretRef"]
            values = []
            for part in ("key", "secret"):
                secret = self.objects.get(("v1", "secrets", namespace, ref[part]["secretName"]))
                values.append(base64.b64decode(secret["data"][ref[part]["secretKey"]]).decode())
            lines.append(":".join(values))
        lines.append(f"{self.OPERATOR_KEY}:{secrets.token_urlsafe(16)}")
        self.objects[key] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": key[3],
                "namespace": namespace,
                "labels": {"apps.emqx.io/instance": name, "apps.emqx.io/managed-by": "emqx-operator"},
                "ownerReferences": [
                    {
                        "apiVersion": "apps.emqx.io/v2beta1",
                        "kind": "EMQX",
                        "name": name,
                        "uid": emqx["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "uid": str(uuid.uuid4()),
                "resourceVersion": self.next_version(),
            },
            "type": "Opaque",
            "data": {"bootstrap_api_key": base64.b64encode("\n".join(lines).encode()).decode()},
        }
        self.operator_owned.add(key)

    def bootstrap_lines(self, namespace: str, name: str = "emqx") -> list[str]:
        secret = self.objects.get(("v1", "secrets", namespace, f"{name}-bootstrap-api-key"))
        if secret is None:
            return []
        return [line for line in base64.b64decode(secret["data"]["bootstrap_api_key"]).decode().split("\n") if line]

    def _operator_sync_config(self, namespace: str, emqx: dict) -> None:
        # sync_emqx_config.go: PUT /api/v5/configs?mode=merge — keys absent from the new text keep their values.
        from pyhocon import ConfigFactory

        parsed = ConfigFactory.parse_string(emqx["spec"]["config"]["data"]).as_plain_ordered_dict()
        self.running_config[namespace] = _deep_merge(
            self.running_config.get(namespace, {}), json.loads(json.dumps(parsed))
        )

    def _operator_blue_green(self, namespace: str, name: str, emqx: dict) -> bool:
        """Bring up a StatefulSet for a new pod template, scale the old one to 0 (its PVCs stay), delete old sets
        and their PVCs beyond revisionHistoryLimit (sync_sets.go). False when the quota refused the new volumes."""
        core = emqx["spec"].get("coreTemplate") or {}
        template = {"image": emqx["spec"].get("image"), "core": core}
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        sets = self.statefulsets.setdefault(namespace, [])
        replicas = int((core.get("spec") or {}).get("replicas", 2))
        if not sets or sets[-1]["hash"] != digest:
            sts_name = f"{name}-core-{digest}"
            wanted = [f"{name}-data-{sts_name}-{index}" for index in range(replicas)]
            claims = [
                k for k in self.objects if k[0] == "v1" and k[1] == "persistentvolumeclaims" and k[2] == namespace
            ]
            quota = self.objects.get(("v1", "resourcequotas", namespace, "broker-quota"))
            hard = int(((quota or {}).get("spec") or {}).get("hard", {}).get("persistentvolumeclaims", 10**9))
            if len(claims) + len(wanted) > hard:
                self.operator_events.append(
                    f"{namespace}: persistentvolumeclaims is forbidden: exceeded quota: broker-quota, requested: "
                    f"persistentvolumeclaims={len(wanted)}, used: persistentvolumeclaims={len(claims)}, "
                    f"limited: persistentvolumeclaims={hard}"
                )
                return False
            for claim in wanted:
                self.objects[("v1", "persistentvolumeclaims", namespace, claim)] = {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": namespace, "labels": {"statefulset": sts_name}},
                }
            # New nodes read the bootstrap file as it is now (EMQX imports it when a core node starts).
            sets.append(
                {
                    "name": sts_name,
                    "hash": digest,
                    "replicas": replicas,
                    "bootstrap": self.bootstrap_lines(namespace, name),
                }
            )
            for old in sets[:-1]:
                old["replicas"] = 0  # evacuated and scaled down; StatefulSet PVCs are retained
        limit = emqx["spec"].get("revisionHistoryLimit", 3)
        old_sets = sets[:-1]
        for old in old_sets[: max(0, len(old_sets) - limit)]:
            sets.remove(old)
            for claim in [k for k in self.objects if k[1] == "persistentvolumeclaims" and k[2] == namespace]:
                if self.objects[claim]["metadata"]["labels"].get("statefulset") == old["name"]:
                    del self.objects[claim]
        return True

    def nodes_bootstrap_lines(self, namespace: str) -> list[str]:
        """The bootstrap file the running (newest) nodes read when they started."""
        sets = self.statefulsets.get(namespace) or []
        return sets[-1]["bootstrap"] if sets else []

    def pvc_count(self, namespace: str) -> int:
        return sum(1 for k in self.objects if k[1] == "persistentvolumeclaims" and k[2] == namespace)

    def _listener_ports(self, namespace: str, name: str = "emqx") -> list[dict]:
        defaults = {"tcp": 1883, "ssl": 8883, "ws": 8083, "wss": 8084}
        emqx = self.objects.get(("apps.emqx.io/v2beta1", "emqxes", namespace, name))
        listeners: dict = {}
        if emqx is not None:
            from pyhocon import ConfigFactory

            listeners = ConfigFactory.parse_string(emqx["spec"]["config"]["data"]).get("listeners", {})
        ports = []
        # Every named listener of every type whose `enable` is not false, named `<type>-<name>`
        # (emqx-operator apis/apps/v2beta1/util.go GetListenersServicePorts); EMQX's default listeners are there
        # unless the config turns them off.
        named = [(t, "default", (listeners.get(t) or {}).get("default") or {}, port) for t, port in defaults.items()]
        for listener_type, by_name in listeners.items():
            for listener_name, settings in (by_name or {}).items():
                if listener_name != "default":
                    named.append((listener_type, listener_name, settings or {}, None))
        for listener_type, listener_name, settings, port in named:
            if settings.get("enable", True) is False:
                continue
            bind = str(settings.get("bind", port))
            number = int(bind.rsplit(":", 1)[-1])
            ports.append(
                {"name": f"{listener_type}-{listener_name}", "port": number, "protocol": "TCP", "targetPort": number}
            )
        return ports

    def requests_for(self, method: str, path_contains: str = "") -> list[SeenRequest]:
        with self.lock:
            return [r for r in self.seen if r.method == method and path_contains in r.path]


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def _deep_merge(base: dict, update: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeKubernetes

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        return

    def _send(self, code: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        # apply-patch+yaml bodies are YAML (JSON is YAML too); the others are JSON.
        return yaml.load(raw, Loader=yaml.CSafeLoader)

    def _route(self, path: str):
        if match := _CORE.match(path):
            ns, plural, name = match["ns"], match["plural"], match["name"]
            if plural is None:
                return ("v1", "namespaces", "", ns)
            return ("v1", plural, ns, name)
        if match := _GROUPED.match(path):
            return (f"{match['group']}/{match['version']}", match["plural"], match["ns"], match["name"])
        return None

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        body = self._body() if method in ("POST", "PATCH", "PUT", "DELETE") else None
        state = self.state
        with state.lock:
            state.seen.append(SeenRequest(method, path, query, self.headers.get("Content-Type", ""), body))
            if failure := state.take_failure(method, path):
                self._send(failure.status, _status(failure.status, failure.reason, failure.message))
                return
            if path in ("/api", "/apis", "/apis/apps.emqx.io/v2beta1"):
                self._discovery(path)
                return
            key = self._route(path)
            if key is None or (key[0], key[1]) not in _KINDS and key[1] != "namespaces":
                self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
                return
            getattr(self, f"_{method.lower()}")(key, query, body)

    def _discovery(self, path: str) -> None:
        if path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif path == "/apis":
            self._send(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": "apps.emqx.io",
                            "versions": [{"groupVersion": "apps.emqx.io/v2beta1", "version": "v2beta1"}],
                            "preferredVersion": {"groupVersion": "apps.emqx.io/v2beta1", "version": "v2beta1"},
                        },
                    ],
                },
            )
        else:
            self._send(
                200,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": "apps.emqx.io/v2beta1",
                    "resources": [
                        {
                            "name": "emqxes",
                            "singularName": "emqx",
                            "namespaced": True,
                            "kind": "EMQX",
                            "verbs": ["get", "patch", "delete", "create"],
                        }
                    ],
                },
            )

    def _kind(self, key) -> str:
        return "Namespace" if key[1] == "namespaces" else _KINDS[(key[0], key[1])]

    def _not_found(self, key) -> None:
        self._send(404, _status(404, "NotFound", f'{key[1]} "{key[3]}" not found', {"name": key[3], "kind": key[1]}))

    def _namespace_missing(self, key) -> bool:
        if key[1] != "namespaces" and ("v1", "namespaces", "", key[2]) not in self.state.objects:
            self._send(
                404,
                _status(404, "NotFound", f'namespaces "{key[2]}" not found', {"name": key[2], "kind": "namespaces"}),
            )
            return True
        return False

    def _get_one(self, key, query, body) -> None:
        obj = self.state.objects.get(key)
        if obj is None:
            self._not_found(key)
        else:
            self._send(200, obj)

    def _get(self, key, query, body) -> None:
        if key[3] is None:
            self._send(405, _status(405, "MethodNotAllowed", "lists are not served by this fake"))
            return
        self._get_one(key, query, body)

    def _post(self, key, query, body) -> None:
        if not isinstance(body, dict) or "metadata" not in body:
            self._send(400, _status(400, "BadRequest", "body must be an object with metadata"))
            return
        name = body["metadata"].get("name")
        full = (key[0], key[1], key[2] if key[1] != "namespaces" else "", name)
        if key[1] == "namespaces":
            full = ("v1", "namespaces", "", name)
        elif self._namespace_missing(full):
            return
        if full in self.state.objects:
            self._send(
                409, _status(409, "AlreadyExists", f'{key[1]} "{name}" already exists', {"name": name, "kind": key[1]})
            )
            return
        self._send(201, self._store(full, body, existing=None))

    def _patch(self, key, query, body) -> None:
        content_type = self.headers.get("Content-Type", "")
        if content_type != "application/apply-patch+yaml":
            self._send(
                415, _status(415, "UnsupportedMediaType", f"the fake serves only apply patches, got {content_type}")
            )
            return
        if not query.get("fieldManager"):
            self._send(422, _status(422, "Invalid", "fieldManager is required for apply patch"))
            return
        if not isinstance(body, dict) or body.get("kind") != self._kind(key):
            self._send(400, _status(400, "BadRequest", "apply patch body must be the whole object of this kind"))
            return
        if self._namespace_missing(key):
            return
        existing = self.state.objects.get(key)
        obj = self._store(key, body, existing=existing)
        self._send(200 if existing else 201, obj)

    def _store(self, key, applied: dict, *, existing: dict | None) -> dict:
        state = self.state
        applied = copy.deepcopy(applied)
        if applied.get("kind") == "Secret" and "stringData" in applied:
            data = applied.setdefault("data", {})
            for k, v in applied.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        meta = {k: v for k, v in (applied.get("metadata") or {}).items() if k not in _SERVER_METADATA}
        if existing is None:
            new = {
                **applied,
                "metadata": {
                    **meta,
                    "name": key[3],
                    "uid": str(uuid.uuid4()),
                    "generation": 1,
                    "creationTimestamp": "2025-01-01T00:00:00Z",
                    "resourceVersion": state.next_version(),
                },
            }
            if key[1] != "namespaces":
                new["metadata"]["namespace"] = key[2]
            else:
                new["status"] = {"phase": "Active"}
            state.objects[key] = new
            return copy.deepcopy(new)
        if key in state.operator_owned:
            # Another manager (the operator) created it: an apply adds and overwrites only the fields it names.
            new = _deep_merge(existing, {k: v for k, v in applied.items() if k != "metadata"})
            new["metadata"]["resourceVersion"] = state.next_version()
            state.objects[key] = new
            return copy.deepcopy(new)
        # One field manager owns everything it applies: its new intent replaces its previous one; status and
        # server-set metadata stay.
        new = {
            **applied,
            "metadata": {**meta, **{k: v for k, v in existing["metadata"].items() if k in _SERVER_METADATA}},
        }
        if "status" in existing:
            new["status"] = existing["status"]
        if _spec_part(new) != _spec_part(existing):
            new["metadata"]["generation"] = existing["metadata"]["generation"] + 1
        if new != existing:
            new["metadata"]["resourceVersion"] = state.next_version()
        state.objects[key] = new
        return copy.deepcopy(new)

    def _delete(self, key, query, body) -> None:
        obj = self.state.objects.get(key)
        if obj is None:
            self._not_found(key)
            return
        if key[1] == "namespaces":
            # Namespace deletion removes everything in it (the fake finishes finalization at once).
            for other in [k for k in self.state.objects if k[1] != "namespaces" and k[2] == key[3]]:
                del self.state.objects[other]
            self.state.statefulsets.pop(key[3], None)
            self.state.running_config.pop(key[3], None)
        if key[1] == "emqxes":
            # Garbage collection of what the resource owns: the operator's Secret and StatefulSets (not PVCs).
            for owned in [k for k in self.state.operator_owned if k[2] == key[2]]:
                self.state.objects.pop(owned, None)
                self.state.operator_owned.discard(owned)
            self.state.statefulsets.pop(key[2], None)
        del self.state.objects[key]
        self._send(200, _status(200, "", "") | {"status": "Success", "details": {"name": key[3], "kind": key[1]}})

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class FakeKubernetesServer:
    """Runs the fake on 127.0.0.1:<random port> in a thread; `kubeconfig` points the real client at it."""

    def __init__(self) -> None:
        self.state = FakeKubernetes()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig_dict(self) -> dict:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }

    def kubeconfig(self) -> str:
        return yaml.safe_dump(self.kubeconfig_dict())

    def start(self) -> FakeKubernetesServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
