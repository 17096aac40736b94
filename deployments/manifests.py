"""Kubernetes manifests for one deployment's EMQX cluster, rendered from its BrokerSpec.

Pure functions: no I/O, no clock, no randomness, so the same spec always renders the same objects and server-side
apply of an unchanged spec changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re

from deployments import emqx_versions
from deployments.drivers.base import BrokerSpec
from deployments.emqx_config import (
    DASHBOARD_PORT,
    DEVICE_CA_KEY,
    LISTENERS,
    TLS_MOUNT_PATH,
    X509_PORT,
    has_x509_listener,
    render_hocon,
)

FIELD_MANAGER = "controlplane"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
DEPLOYMENT_LABEL = "controlplane.io/deployment"
RESTART_NONCE_ANNOTATION = "controlplane.io/restart-nonce"
# A digest of the bootstrap API key: EMQX reads its bootstrap key file only when a core node starts
# (emqx/emqx v5.8.6 apps/emqx_management/src/emqx_mgmt_auth.erl try_init_bootstrap_file/0, called from
# emqx_mgmt_app:start/2), so a changed key must bring up new nodes; putting its digest in the pod template does.
API_KEY_DIGEST_ANNOTATION = "controlplane.io/api-key-digest"
# Namespaces whose pods may reach the management API: the control plane's own (it carries this label) and the
# operator's, which calls EMQX's API on every core pod while reconciling.
CONTROL_PLANE_NAMESPACE_LABEL = ("controlplane.io/role", "control-plane")
OPERATOR_NAMESPACE = "emqx-operator-system"

EMQX_GROUP = "apps.emqx.io"
EMQX_VERSION = "v2beta1"
EMQX_PLURAL = "emqxes"
EMQX_NAME = "emqx"
API_KEY_SECRET = "emqx-api-key"
LICENSE_SECRET = "emqx-license"
# The Secret the operator assembles once from bootstrapAPIKeys and mounts into every core pod as EMQX's bootstrap
# file; it never updates it (emqx-operator 2.2.29 controllers/apps/v2beta1/add_bootstrap_resource.go: Create,
# AlreadyExists ignored; named `<EMQX name>-bootstrap-api-key` in emqx_controller.go getBootstrapAPIKey).
OPERATOR_BOOTSTRAP_SECRET = f"{EMQX_NAME}-bootstrap-api-key"
OPERATOR_BOOTSTRAP_KEY = "bootstrap_api_key"
# Old StatefulSets (and their PVCs) the operator keeps after an update: none. With its default of 3 a namespace
# holds up to four generations of volumes, and the third update no longer fits the PVC quota (the operator
# deletes an old set and its PVCs only beyond this limit: controllers/apps/v2beta1/sync_sets.go).
REVISION_HISTORY_LIMIT = 0
# Blue-green update with evacuation: before an old node goes, the operator moves its clients and sessions to the new
# nodes (POST /api/v5/load_rebalance/<node>/evacuation/start with these rates and wait_takeover), which EMQX
# Enterprise does (controllers/apps/v2beta1/sync_pods.go startEvacuationByAPI; apps.emqx.io_emqxes.yaml defaults).
UPDATE_STRATEGY = {
    "type": "Recreate",
    "initialDelaySeconds": 10,
    "evacuationStrategy": {"waitTakeover": 10, "connEvictRate": 1000, "sessEvictRate": 1000},
}
TLS_VOLUME = "deployment-tls"
DATA_VOLUME_SIZE = "1Gi"
# Inter-node ports the operator's headless Service exposes (emqx-operator controllers/apps/v2beta1/add_svc.go).
ERLANG_DIST_PORT = 4370
GEN_RPC_PORT = 5369

_DNS1123 = re.compile(r"[^a-z0-9-]+")


def namespace_name(deployment_id: str) -> str:
    """`mqtt-<id>` as a DNS-1123 label: lower case, [a-z0-9-], at most 63 characters, no leading/trailing dash."""
    slug = _DNS1123.sub("-", deployment_id.lower()).strip("-")
    name = f"mqtt-{slug}" if slug else "mqtt"
    if len(name) > 63:
        # Keep names unique when truncating: a short digest of the full id stands in for the tail.
        digest = hashlib.sha256(deployment_id.encode()).hexdigest()[:8]
        name = f"{name[:54].rstrip('-')}-{digest}"
    return name


def listeners_service_name() -> str:
    """The operator names the listeners Service `<EMQX name>-listeners` (apis/apps/v2beta1/names.go)."""
    return f"{EMQX_NAME}-listeners"


def dashboard_service_name() -> str:
    return f"{EMQX_NAME}-dashboard"


def _labels(spec: BrokerSpec) -> dict[str, str]:
    return {MANAGED_BY_LABEL: FIELD_MANAGER, DEPLOYMENT_LABEL: _label_value(spec.name)}


def _label_value(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    return cleaned[:63].rstrip("-_.")


def pod_resources(spec: BrokerSpec) -> dict[str, dict[str, str]]:
    """Requests and limits of one EMQX pod, sized from the connections each node carries."""
    per_node = math.ceil(spec.max_connections / max(spec.replicas, 1))
    # About 100 MiB per 10k idle connections on EMQX 5, on top of a 512 MiB floor for the VM and its tables.
    memory_mi = 512 + 128 * math.ceil(per_node / 10_000)
    cpu_milli = 500 + 250 * math.ceil(per_node / 10_000)
    return {
        "requests": {"cpu": f"{cpu_milli // 2}m", "memory": f"{memory_mi // 2}Mi"},
        "limits": {"cpu": f"{cpu_milli}m", "memory": f"{memory_mi}Mi"},
    }


def render_namespace(spec: BrokerSpec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace_name(spec.name), "labels": _labels(spec)},
    }


def render_resource_quota(spec: BrokerSpec) -> dict:
    resources = pod_resources(spec)
    # The operator updates by blue-green: a new StatefulSet (with its own PVCs) comes up before the old one is
    # drained, so the namespace must hold two generations of pods and volumes at once; with REVISION_HISTORY_LIMIT
    # 0 the old generation's PVCs go once the update is done, so two is also enough for every later update.
    pods = 2 * max(spec.replicas, 1)

    def times(quantity: str, suffix: str) -> str:
        return f"{int(quantity.removesuffix(suffix)) * pods}{suffix}"

    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "broker-quota", "namespace": namespace_name(spec.name), "labels": _labels(spec)},
        "spec": {
            "hard": {
                "pods": str(pods),
                "requests.cpu": times(resources["requests"]["cpu"], "m"),
                "requests.memory": times(resources["requests"]["memory"], "Mi"),
                "limits.cpu": times(resources["limits"]["cpu"], "m"),
                "limits.memory": times(resources["limits"]["memory"], "Mi"),
                "persistentvolumeclaims": str(pods),
                "services.loadbalancers": "1",
            }
        },
    }


def render_network_policy(spec: BrokerSpec) -> dict:
    key, value = CONTROL_PLANE_NAMESPACE_LABEL
    pods = {"matchLabels": {"apps.emqx.io/instance": EMQX_NAME}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "broker-ingress", "namespace": namespace_name(spec.name), "labels": _labels(spec)},
        "spec": {
            "podSelector": pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                # MQTT clients arrive from anywhere, through the load balancer.
                {
                    "ports": [
                        *({"protocol": "TCP", "port": port} for _type, port in LISTENERS.values()),
                        {"protocol": "TCP", "port": X509_PORT},
                    ]
                },
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {key: value}}},
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}},
                    ],
                    "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
                },
                # Clustering between the deployment's own nodes.
                {
                    "from": [{"podSelector": pods}],
                    "ports": [
                        {"protocol": "TCP", "port": ERLANG_DIST_PORT},
                        {"protocol": "TCP", "port": GEN_RPC_PORT},
                    ],
                },
            ],
        },
    }


def render_api_key_secret(spec: BrokerSpec) -> dict:
    # bootstrapAPIKeys[].secretRef points at two keys of a Secret, one for the key and one for the secret; the
    # operator joins them as `<key>:<secret>` into EMQX's api_key bootstrap file
    # (controllers/apps/v2beta1/add_bootstrap_resource.go generateBootstrapAPIKeySecret).
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": API_KEY_SECRET, "namespace": namespace_name(spec.name), "labels": _labels(spec)},
        "type": "Opaque",
        "stringData": {"key": spec.api_key, "secret": spec.api_secret},
    }


def render_license_secret(spec: BrokerSpec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": LICENSE_SECRET, "namespace": namespace_name(spec.name), "labels": _labels(spec)},
        "type": "Opaque",
        "stringData": {"key": spec.license_key},
    }


def render_tls_secret(spec: BrokerSpec) -> dict | None:
    """The certificate Secret the TLS listeners mount (a kubernetes.io/tls Secret: `tls.crt` holds the server
    certificate and its chain, `tls.key` its key, `ca.crt` the client CA for two-way TLS, `devices-ca.crt` the
    device CA of the device-certificate listener), or None when the spec
    names a Secret without carrying its material (one that exists already). Replacing its content changes no file
    path and no pod template, so no node is replaced: the kubelet updates the mounted files in place."""
    tls = spec.tls
    if tls is None or not tls.certificate_pem:
        return None
    if not tls.private_key_pem:
        raise ValueError("the TLS material has a certificate but no private key")
    if tls.has_client_ca and not tls.client_ca_pem:
        raise ValueError("two-way TLS needs the client CA's certificate")
    files = {"tls.crt": tls.certificate_pem, "tls.key": tls.private_key_pem}
    if tls.has_client_ca:
        files["ca.crt"] = tls.client_ca_pem
    if has_x509_listener(spec) and spec.device_ca is not None:
        if not spec.device_ca.ca_pem:
            raise ValueError("the device-certificate listener needs the device CA's certificate")
        files[DEVICE_CA_KEY] = spec.device_ca.ca_pem
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": tls.secret_name, "namespace": namespace_name(spec.name), "labels": _labels(spec)},
        "type": "kubernetes.io/tls",
        # `data`, not `stringData`: server-side apply tracks `data` keys by field manager, so a key this manager
        # stops sending (the client CA, when two-way TLS is turned off) is removed; stringData is folded into data
        # before the merge and leaves such a key behind (kubernetes/kubernetes#108008).
        "data": {name: base64.b64encode(text.encode("ascii")).decode("ascii") for name, text in files.items()},
    }


def api_key_digest(spec: BrokerSpec) -> str:
    return hashlib.sha256(f"{spec.api_key}:{spec.api_secret}".encode()).hexdigest()[:16]


def bootstrap_line(spec: BrokerSpec) -> str:
    return f"{spec.api_key}:{spec.api_secret}"


def render_operator_bootstrap_secret(spec: BrokerSpec, current: dict | None) -> dict | None:
    """The operator's bootstrap Secret with our key line replaced, or None when it is absent or already right.

    The operator writes `<key>:<secret>` lines for bootstrapAPIKeys plus its own `emqx-operator-controller:<pw>`
    line, which it keeps using to call EMQX; every line but ours is kept as it is.
    """
    if current is None:
        return None
    raw = (current.get("data") or {}).get(OPERATOR_BOOTSTRAP_KEY, "")
    try:
        content = base64.b64decode(raw).decode()
    except (ValueError, UnicodeDecodeError):
        content = ""
    lines = [line for line in content.split("\n") if line]
    ours = bootstrap_line(spec)
    if ours in lines:
        return None
    others = [line for line in lines if line.partition(":")[0] != spec.api_key]
    content = "\n".join([ours, *others])
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": OPERATOR_BOOTSTRAP_SECRET, "namespace": namespace_name(spec.name)},
        "data": {OPERATOR_BOOTSTRAP_KEY: base64.b64encode(content.encode()).decode()},
    }


def render_emqx(spec: BrokerSpec) -> dict:
    image = emqx_versions.image(spec.version)
    annotations = {
        RESTART_NONCE_ANNOTATION: str(spec.restart_nonce),
        API_KEY_DIGEST_ANNOTATION: api_key_digest(spec),
    }
    core_spec: dict = {"replicas": spec.replicas, "resources": pod_resources(spec)}
    # EMQX's data directory (sessions' state, retained messages, the built-in databases) on a volume of its own.
    claim: dict = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": DATA_VOLUME_SIZE}}}
    if spec.region.storage_class:
        claim["storageClassName"] = spec.region.storage_class
    core_spec["volumeClaimTemplates"] = claim
    if spec.license_key:  # render_manifests refuses a spec without one
        # Without a licence EMQX Enterprise runs on its built-in one: 25 sessions, evaluation only, up to 5.8
        # (emqx/emqx e5.8.8 apps/emqx_license/src/emqx_license_schema.erl default_license/0); from 5.9 a
        # single-node community licence that refuses to form a cluster (e5.9.0 apps/emqx_license/include/
        # emqx_license.hrl, emqx_license_checker:ensure_cluster_mode/1).
        core_spec["env"] = [
            {"name": "EMQX_LICENSE__KEY", "valueFrom": {"secretKeyRef": {"name": LICENSE_SECRET, "key": "key"}}}
        ]
    if spec.tls is not None:
        core_spec["extraVolumes"] = [{"name": TLS_VOLUME, "secret": {"secretName": spec.tls.secret_name}}]
        core_spec["extraVolumeMounts"] = [{"name": TLS_VOLUME, "mountPath": TLS_MOUNT_PATH, "readOnly": True}]
    return {
        "apiVersion": f"{EMQX_GROUP}/{EMQX_VERSION}",
        "kind": "EMQX",
        "metadata": {"name": EMQX_NAME, "namespace": namespace_name(spec.name), "labels": _labels(spec)},
        "spec": {
            "image": image,
            # Merge: the operator PUTs the text to /api/v5/configs?mode=merge (controllers/apps/v2beta1/
            # sync_emqx_config.go), so a key rendered once stays until rendered again with another value.
            "config": {"mode": "Merge", "data": render_hocon(spec)},
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "updateStrategy": UPDATE_STRATEGY,
            # The pod template's annotations are part of the operator's pod-template hash: a new nonce (or key)
            # makes it bring up a new set of nodes and evacuate the old ones (sessions migrate), one at a time.
            "coreTemplate": {"metadata": {"annotations": annotations}, "spec": core_spec},
            "listenersServiceTemplate": {"enabled": True, "spec": {"type": spec.region.service_type}},
            "bootstrapAPIKeys": [
                {
                    "secretRef": {
                        "key": {"secretName": API_KEY_SECRET, "secretKey": "key"},
                        "secret": {"secretName": API_KEY_SECRET, "secretKey": "secret"},
                    }
                }
            ],
        },
    }


def render_manifests(spec: BrokerSpec) -> list[dict]:
    """Every object of a running deployment, in apply order (the namespace first, the EMQX resource last).

    A stopped deployment (`running=False`) renders the same list without the EMQX resource. Scaling the core to
    0 replicas is not rejected by the CRD (no minimum on coreTemplate.spec.replicas; the webhooks that demanded
    more than one core were removed in operator 2.2.1) but the operator's status machine only leaves
    CoreNodesProgressing once ReadyReplicas != 0 (controllers/apps/v2beta1/status_machine.go), so a 0-replica
    resource never converges while the operator keeps calling an API no pod serves. Deleting the resource stops
    every pod; the namespace, its Secret, quota, policy and retained PVCs stay, and users/ACL are pushed again
    on start.
    """
    if not spec.api_key or not spec.api_secret:
        raise ValueError("the kubernetes driver needs the bootstrap api_key and api_secret")
    if not re.fullmatch(r"[a-zA-Z\d_-]+", spec.api_key):
        # The CRD's pattern for bootstrap keys (apps.emqx.io_emqxes.yaml, bootstrapAPIKeys.items.key).
        raise ValueError("api_key may only hold letters, digits, '-' and '_'")
    if not 3 <= len(spec.api_secret) <= 128:
        raise ValueError("api_secret must be 3 to 128 characters")
    emqx_versions.check(spec.version)
    if not spec.license_key:
        raise ValueError(
            "no EMQX Enterprise licence is configured (EMQX_LICENSE_KEY): without one EMQX Enterprise serves 25 "
            "sessions (5.8) or refuses to form a cluster (5.9 and later), so no tier could be honoured"
        )
    manifests = [
        render_namespace(spec),
        render_resource_quota(spec),
        render_network_policy(spec),
        render_api_key_secret(spec),
    ]
    manifests.append(render_license_secret(spec))
    tls_secret = render_tls_secret(spec)
    if tls_secret is not None:
        manifests.append(tls_secret)
    if spec.running:
        manifests.append(render_emqx(spec))
    return manifests
