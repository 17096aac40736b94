"""Reads about edge nodes: a deployment's nodes, the bridge file a node runs (where the deployment listens, whether
over TLS), and the nodes' broker users for the reconciler (the `iot-edge` spec contributor). Nothing here writes.
"""

from __future__ import annotations

from django.db.models import QuerySet

from deployments.drivers.base import MqttCredential
from deployments.models import Deployment, Plan
from iot import edge
from iot.edge_models import EdgeNode


def edge_node_queryset() -> QuerySet[EdgeNode]:
    return EdgeNode.objects.select_related("deployment")


def spec_users(deployment: Deployment) -> list[MqttCredential]:
    """One broker user per edge node, confined to edge/{node}/# whatever the deployment's ACL rules say."""
    if deployment.plan.code != Plan.Code.PREMIUM:
        return []
    rows = (
        EdgeNode.objects.filter(deployment=deployment)
        .order_by("username")
        .values_list("username", "salt_b64", "hash_b64", "iterations", "name")
    )
    return [
        MqttCredential(
            username=username,
            salt_b64=salt_b64,
            hash_b64=hash_b64,
            iterations=iterations,
            confined_to=edge.node_topics(name),
        )
        for username, salt_b64, hash_b64, iterations, name in rows
    ]


def default_ca_file(deployment: Deployment, kind: str) -> str:
    directory = "/etc/mosquitto/certs" if kind == "mosquitto" else "/etc/nanomq/certs"
    return f"{directory}/{deployment.public_id}-ca.pem"


def edge_bridge(*, node: EdgeNode, ca_file: str | None = None, password: str | None = None) -> edge.Bridge | None:
    """The bridge a node runs to reach its deployment: over mqtts when the deployment serves TLS (a server
    certificate exists and the listener has a port), plain mqtt otherwise. None while the deployment has no address
    yet (before its first start)."""
    from deployments.models import TlsCertificate

    deployment = node.deployment
    endpoints = deployment.endpoints or {}
    host = endpoints.get("host") or ""
    ports = endpoints.get("ports") or {}
    has_certificate = TlsCertificate.objects.filter(deployment=deployment, kind=TlsCertificate.Kind.SERVER).exists()
    tls = bool(ports.get("mqtts")) and has_certificate
    port = ports.get("mqtts") if tls else ports.get("mqtt")
    if not host or not port:
        return None
    client_ca = TlsCertificate.objects.filter(deployment=deployment, kind=TlsCertificate.Kind.CLIENT_CA).first()
    return edge.Bridge(
        deployment=deployment.public_id,
        node=node.name,
        kind=node.kind,
        host=host,
        port=int(port),
        tls=tls,
        ca_file=ca_file or default_ca_file(deployment, node.kind),
        client_certificate_required=tls and client_ca is not None and client_ca.require_client_certificate,
        username=node.username,
        password=password,
        up=tuple(node.up_topics),
        down=tuple(node.down_topics),
    )
