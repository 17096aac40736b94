"""The Kubernetes broker driver: EMQX clusters through the EMQX Operator, users and ACL through EMQX's API.

It server-side applies the pure manifests of deployments.manifests with one field manager and reads back what the
operator reports. It never reads or writes the database and never holds state between calls: every call recomputes
the gap from the spec and the cluster, so it can run any number of times from any worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from deployments import emqx_acl
from deployments import manifests as m
from deployments.drivers.base import BrokerSpec, Observed, PermanentDriverError, TemporaryDriverError
from deployments.emqx_api import EmqxApi
from deployments.emqx_config import DASHBOARD_PORT, LISTENERS, X509_LISTENER, X509_PROTOCOL

APPLY_PATCH = "application/apply-patch+yaml"
# Service port names the operator gives the listeners (`<type>-<name>`, see emqx_config.LISTENERS): the default
# ones and the device-certificate listener (`ssl-x509`, shown as `mqtts_x509` as on the local driver).
_PORT_NAMES = {
    **{f"{listener_type}-default": protocol for protocol, (listener_type, _port) in LISTENERS.items()},
    "-".join(X509_LISTENER): X509_PROTOCOL,
}

ApiClientFactory = Callable[[BrokerSpec], k8s.ApiClient]
EmqxApiFactory = Callable[..., EmqxApi]
# A Kubernetes object as JSON (the custom EMQX resource is only ever a dict; typed objects are sanitized to one).
Resource = dict[str, Any]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _default_api_client(spec: BrokerSpec) -> k8s.ApiClient:
    if spec.region.kubeconfig.strip():
        try:
            config_dict = yaml.safe_load(spec.region.kubeconfig)
        except yaml.YAMLError as exc:
            raise PermanentDriverError(f"region {spec.region.code}: its kubeconfig is not valid YAML") from exc
        try:
            api_client: k8s.ApiClient = k8s_config.new_client_from_config_dict(config_dict)
            return api_client
        except k8s_config.ConfigException as exc:
            raise PermanentDriverError(f"region {spec.region.code}: unusable kubeconfig ({exc})") from exc
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException as exc:
        raise PermanentDriverError(
            f"region {spec.region.code} has no kubeconfig and the control plane is not running in a cluster"
        ) from exc
    return k8s.ApiClient(configuration)


def _default_emqx_api(*, base_url: str, api_key: str, api_secret: str) -> EmqxApi:
    return EmqxApi(base_url, api_key, api_secret)


def _describe(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return (exc.body or exc.reason or "").strip()[:300]
    return str(body.get("message") or body.get("reason") or exc.reason)


def _translate(exc: Exception, what: str) -> Exception:
    """Map a client error to the driver's two kinds, with a message the user (or the operator on call) can act on."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        message = _describe(exc)
        if status == 0 or status == 409 or status == 429 or status >= 500:
            return TemporaryDriverError(f"{what}: Kubernetes answered {status}: {message}")
        if status == 403 and "quota" in message.lower():
            return PermanentDriverError(
                f"{what}: the region's quota is exhausted ({message}); choose a smaller "
                "tier or another region, or ask us to raise the quota"
            )
        if status == 403:
            return PermanentDriverError(
                f"{what}: the control plane is not allowed to do this in the region's "
                f"cluster ({message}); its service account needs the permission"
            )
        if status == 422:
            return PermanentDriverError(f"{what}: the cluster rejected the deployment's configuration: {message}")
        if status == 404:
            return PermanentDriverError(
                f"{what}: not served by the cluster ({message}); is the EMQX Operator installed in this region?"
            )
        return PermanentDriverError(f"{what}: Kubernetes refused with {status}: {message}")
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return TemporaryDriverError(f"{what}: the region's Kubernetes API is unreachable: {exc}")
    return exc


def _ready_condition(emqx: Resource) -> dict[str, Any] | None:
    condition: dict[str, Any]
    for condition in (emqx.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition
    return None


def _is_ready(emqx: Resource) -> bool:
    """Ready True, and not left over from before the latest spec change where the operator says so.

    The operator (2.2) sets conditions without observedGeneration; when a condition carries one we hold it to the
    resource's generation.
    """
    condition = _ready_condition(emqx)
    if not condition or condition.get("status") != "True":
        return False
    observed = condition.get("observedGeneration")
    generation = (emqx.get("metadata") or {}).get("generation")
    return observed is None or generation is None or observed >= generation


def _template_annotations(emqx: Resource | None) -> dict[str, str]:
    if not emqx:
        return {}
    return ((emqx.get("spec") or {}).get("coreTemplate") or {}).get("metadata", {}).get("annotations") or {}


def _nonce(emqx: Resource | None) -> int:
    try:
        return int(_template_annotations(emqx).get(m.RESTART_NONCE_ANNOTATION, 0))
    except (TypeError, ValueError):
        return 0


def _rolling(emqx: Resource) -> bool:
    """The operator is replacing the core nodes (a blue-green update is under way)."""
    core = (emqx.get("status") or {}).get("coreNodesStatus") or {}
    current, update = core.get("currentRevision"), core.get("updateRevision")
    return bool(current and update and current != update)


class KubernetesDriver:
    def __init__(
        self, *, api_client_factory: ApiClientFactory | None = None, emqx_api_factory: EmqxApiFactory | None = None
    ) -> None:
        self._api_client_factory = api_client_factory or _default_api_client
        self._emqx_api_factory = emqx_api_factory or _default_emqx_api

    # -- Kubernetes calls --------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure is mapped to the driver's two kinds
            translated = _translate(exc, what)
            if translated is exc:
                raise
            raise translated from exc

    def _get(self, what: str, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
        """A read (or a delete) that answers None for 404 instead of raising."""
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _translate(exc, what) from exc
        except Exception as exc:  # noqa: BLE001
            translated = _translate(exc, what)
            if translated is exc:
                raise
            raise translated from exc

    def _apply(self, api: k8s.ApiClient, manifest: Resource) -> None:
        kind = manifest["kind"]
        name = manifest["metadata"]["name"]
        namespace = manifest["metadata"].get("namespace")
        what = f"applying {kind} {namespace + '/' if namespace else ''}{name}"
        # Keyword arguments of every generated patch_* method.
        options: dict[str, Any] = {"field_manager": m.FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        core = k8s.CoreV1Api(api)
        if kind == "Namespace":
            self._call(what, core.patch_namespace, name, manifest, **options)
        elif kind == "ResourceQuota":
            self._call(what, core.patch_namespaced_resource_quota, name, namespace, manifest, **options)
        elif kind == "Secret":
            self._call(what, core.patch_namespaced_secret, name, namespace, manifest, **options)
        elif kind == "NetworkPolicy":
            self._call(
                what, k8s.NetworkingV1Api(api).patch_namespaced_network_policy, name, namespace, manifest, **options
            )
        elif kind == "EMQX":
            self._call(
                what,
                k8s.CustomObjectsApi(api).patch_namespaced_custom_object,
                m.EMQX_GROUP,
                m.EMQX_VERSION,
                namespace,
                m.EMQX_PLURAL,
                name,
                manifest,
                **options,
            )
        else:
            raise PermanentDriverError(f"no way to apply a {kind}")

    def _read_emqx(self, api: k8s.ApiClient, namespace: str) -> Resource | None:
        # The generated client types a custom object as `object`; it is the resource's JSON, a dict.
        emqx = cast(
            "Resource | None",
            self._get(
                f"reading EMQX {namespace}/{m.EMQX_NAME}",
                k8s.CustomObjectsApi(api).get_namespaced_custom_object,
                m.EMQX_GROUP,
                m.EMQX_VERSION,
                namespace,
                m.EMQX_PLURAL,
                m.EMQX_NAME,
            ),
        )
        return emqx

    def _read_namespace(self, api: k8s.ApiClient, namespace: str) -> k8s.V1Namespace | None:
        return self._get(f"reading Namespace {namespace}", k8s.CoreV1Api(api).read_namespace, namespace)

    def _endpoints(self, api: k8s.ApiClient, spec: BrokerSpec, namespace: str) -> tuple[str, dict[str, int]]:
        name = m.listeners_service_name()
        service = self._get(
            f"reading Service {namespace}/{name}", k8s.CoreV1Api(api).read_namespaced_service, name, namespace
        )
        if service is None:
            return "", {}
        data = api.sanitize_for_serialization(service)
        ports = {}
        for port in (data.get("spec") or {}).get("ports") or []:
            protocol = _PORT_NAMES.get(port.get("name", ""))
            if protocol:
                ports[protocol] = int(port["port"])
        if (data.get("spec") or {}).get("type", spec.region.service_type) == "LoadBalancer":
            ingress = (((data.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
            host = next(
                (item.get("ip") or item.get("hostname") for item in ingress if item.get("ip") or item.get("hostname")),
                "",
            )
            return host, ports
        return f"{name}.{namespace}.svc", ports

    def _management_url(self, namespace: str) -> str:
        return f"http://{m.dashboard_service_name()}.{namespace}.svc:{DASHBOARD_PORT}"

    # -- Driver protocol ---------------------------------------------------------------------------------------
    def apply(self, spec: BrokerSpec) -> Observed:
        try:
            manifests = m.render_manifests(spec)
        except ValueError as exc:
            raise PermanentDriverError(f"invalid broker configuration: {exc}") from exc
        namespace = m.namespace_name(spec.name)
        api = self._api_client_factory(spec)
        try:
            previous = self._read_emqx(api, namespace) if self._read_namespace(api, namespace) else None
            for manifest in manifests:
                self._apply(api, manifest)
            if not spec.running:
                return self._stop(api, spec, namespace)
            self._sync_bootstrap_key(api, spec, namespace)
            # Read back rather than trust the PATCH answer: a create answers 201, which the generated client
            # does not deserialize (its response map only types 200).
            emqx = self._read_emqx(api, namespace)
            if emqx is None:
                raise TemporaryDriverError(f"EMQX {namespace}/{m.EMQX_NAME} vanished right after it was applied")
            return self._observe_running(api, spec, namespace, emqx, previous=previous, push=True)
        finally:
            api.close()

    def observe(self, spec: BrokerSpec) -> Observed:
        namespace = m.namespace_name(spec.name)
        api = self._api_client_factory(spec)
        try:
            if self._read_namespace(api, namespace) is None:
                return Observed(phase="absent")
            emqx = self._read_emqx(api, namespace)
            if emqx is None:
                return Observed(phase="stopped", details={"namespace": namespace})
            return self._observe_running(api, spec, namespace, emqx, previous=emqx, push=False)
        finally:
            api.close()

    def delete(self, spec: BrokerSpec) -> Observed:
        namespace = m.namespace_name(spec.name)
        api = self._api_client_factory(spec)
        core = k8s.CoreV1Api(api)
        try:
            self._get(
                f"deleting Namespace {namespace}", core.delete_namespace, namespace, propagation_policy="Foreground"
            )
            if self._read_namespace(api, namespace) is None:
                return Observed(phase="absent")
            # The namespace is terminating: its objects (and the brokers) are still going away.
            return Observed(
                phase="stopped", message=f"namespace {namespace} is terminating", details={"namespace": namespace}
            )
        finally:
            api.close()

    # -- helpers -----------------------------------------------------------------------------------------------
    def _sync_bootstrap_key(self, api: k8s.ApiClient, spec: BrokerSpec, namespace: str) -> None:
        """Put our current key into the operator's bootstrap Secret, which the operator itself writes only once.

        New core nodes read it (the key digest in the pod template brings them up); the operator's own line is
        kept, so it can still reach the old nodes while it replaces them.
        """
        current = self._get(
            f"reading Secret {namespace}/{m.OPERATOR_BOOTSTRAP_SECRET}",
            k8s.CoreV1Api(api).read_namespaced_secret,
            m.OPERATOR_BOOTSTRAP_SECRET,
            namespace,
        )
        if current is None:
            return  # the operator has not created it yet: it will, from our Secret
        manifest = m.render_operator_bootstrap_secret(spec, api.sanitize_for_serialization(current))
        if manifest is not None:
            self._apply(api, manifest)

    def _stop(self, api: k8s.ApiClient, spec: BrokerSpec, namespace: str) -> Observed:
        custom = k8s.CustomObjectsApi(api)
        self._get(
            f"deleting EMQX {namespace}/{m.EMQX_NAME}",
            custom.delete_namespaced_custom_object,
            m.EMQX_GROUP,
            m.EMQX_VERSION,
            namespace,
            m.EMQX_PLURAL,
            m.EMQX_NAME,
            propagation_policy="Foreground",
        )
        if self._read_emqx(api, namespace) is None:
            return Observed(phase="stopped", restart_nonce=spec.restart_nonce, details={"namespace": namespace})
        # Foreground deletion: the resource stays until the operator's StatefulSets and pods are gone.
        return Observed(
            phase="running",
            message="stopping: waiting for the EMQX nodes to terminate",
            details={"namespace": namespace},
        )

    def _observe_running(
        self,
        api: k8s.ApiClient,
        spec: BrokerSpec,
        namespace: str,
        emqx: Resource,
        *,
        previous: Resource | None,
        push: bool,
    ) -> Observed:
        status = emqx.get("status") or {}
        core_status = status.get("coreNodesStatus") or {}
        ready_replicas = int(core_status.get("readyReplicas") or 0)
        details = {"namespace": namespace, "management_url": self._management_url(namespace)}
        # As the local driver says of its ACL file: whether every rule reached EMQX as written.
        _literal, acl_notes = emqx_acl.as_written(spec.acl)
        details["acl"] = "exact" if not acl_notes else "approximated on the strict side: " + "; ".join(acl_notes)
        # A nonce or key that changed in this very call cannot be rolled out yet, whatever the (older) status says.
        template_changed = push and (
            _nonce(previous) != spec.restart_nonce
            or _template_annotations(previous).get(m.API_KEY_DIGEST_ANNOTATION) != m.api_key_digest(spec)
        )
        previously_done = _nonce(previous) if previous is not None and _is_ready(previous) else 0
        if not _is_ready(emqx) or template_changed or _rolling(emqx):
            condition = next((c for c in status.get("conditions") or [] if c.get("status") == "True"), None)
            reason = (
                f"{condition.get('type')}: {condition.get('message', '')}" if condition else "waiting for the operator"
            )
            return Observed(
                phase="starting",
                message=reason,
                ready_replicas=ready_replicas,
                restart_nonce=previously_done,
                details=details,
            )
        host, ports = self._endpoints(api, spec, namespace)
        if push:
            emqx_api = self._emqx_api_factory(
                base_url=details["management_url"], api_key=spec.api_key, api_secret=spec.api_secret
            )
            # A user never reaches EMQX before its rules, nor outlives them: authorization's no_match is allow, so
            # a user whose rules deny it everything would otherwise be free to do anything in between.
            # A revoked device certificate may still pass the TLS handshake until EMQX refreshes its cached CRL: its
            # username is banned first, so that once push_acl has kicked its clients, CONNECT refuses them at once.
            emqx_api.sync_bans(u.username for u in spec.users if u.revoked_identity)
            emqx_api.push_acl(spec.acl, spec.users)
            emqx_api.sync_users(spec.users)
            emqx_api.prune_acl(spec.acl, spec.users)
        if not host:
            return Observed(
                phase="starting",
                message="waiting for the load balancer's address",
                ports=ports,
                ready_replicas=ready_replicas,
                restart_nonce=_nonce(emqx),
                details=details,
            )
        return Observed(
            phase="running",
            host=host,
            ports=ports,
            ready_replicas=ready_replicas,
            restart_nonce=_nonce(emqx),
            details=details,
        )
