"""Every write about edge nodes (Premium): nodes and their credentials, desired configuration versions (API), and
what the platform agent learns and does (status, acknowledgements, publications).

API writes run in one transaction with their audit row; creating, deleting a node or rotating its credentials
changes the broker's users, so they also start a configure Operation (deployments.services
.deployment_configuration_changed). Agent writes are fenced by its lease (iot.services._fence). A new configuration
version wakes the agent with NOTIFY on commit. Nothing here talks to a broker.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.services import audit_record
from controlplane.errors import Conflict, FieldError, ValidationFailed
from deployments.models import Deployment, Operation
from deployments.services import deployment_configuration_changed
from iot import edge
from iot.agent.presence import PresenceEvent
from iot.edge_models import EdgeConfig, EdgeNode, EdgeRetainedClear
from iot.services import IssuedCredentials, _fence, _fields, _locked_deployment, _notify, new_credentials
from organizations.access import Principal

_UNSET = object()


def _mapping_checks(up: object, down: object) -> tuple[list[str], list[str]]:
    values = _fields({"up_topics": lambda: edge.topic_filters(up), "down_topics": lambda: edge.topic_filters(down)})
    try:
        edge.mappings(values["up_topics"], values["down_topics"])
    except ValueError as exc:
        raise ValidationFailed({"down_topics": str(exc)}) from None
    return values["up_topics"], values["down_topics"]


def _audit(node: EdgeNode, deployment: Deployment, actor: Principal | None, action: str, **summary: object) -> None:
    audit_record(
        actor=actor,
        organization=deployment.project.organization,
        action=action,
        target=node,
        summary={"deployment": deployment.public_id, "node": node.name, **summary},
    )


# -- nodes --------------------------------------------------------------------------------------------------------------


@transaction.atomic
def edge_node_create(
    *,
    deployment: Deployment,
    actor: Principal | None,
    name: str,
    kind: str,
    up_topics: list[str] | None = None,
    down_topics: list[str] | None = None,
) -> tuple[EdgeNode, IssuedCredentials, Operation]:
    """Register an edge node; answers (node, its credentials shown this once, the configure Operation)."""
    deployment = _locked_deployment(deployment)
    values = _fields({"name": lambda: edge.node_name(name), "kind": lambda: edge.kind(kind)})
    up, down = _mapping_checks(
        up_topics if up_topics is not None else [], down_topics if down_topics is not None else []
    )
    if EdgeNode.objects.filter(deployment=deployment, name=values["name"]).exists():
        raise Conflict(f"An edge node {values['name']!r} already exists on this deployment.")
    new = new_credentials(edge.NODE_USERNAME_PREFIX)
    try:
        with transaction.atomic():
            node = EdgeNode.objects.create(
                deployment=deployment,
                name=values["name"],
                kind=values["kind"],
                up_topics=up,
                down_topics=down,
                username=new.shown.username,
                salt_b64=new.salt_b64,
                hash_b64=new.hash_b64,
            )
    except IntegrityError:
        raise Conflict(f"An edge node {values['name']!r} already exists on this deployment.") from None
    operation = _broker_changed(deployment, actor, "edge_node.create", node)
    _audit(node, deployment, actor, "edge_node.create", kind=node.kind, operation=operation.public_id)
    return node, new.shown, operation


def _broker_changed(deployment: Deployment, actor: Principal | None, change: str, node: EdgeNode) -> Operation:
    return deployment_configuration_changed(
        deployment=deployment, actor=actor, change=change, summary={"edge_node": node.name}
    )


@transaction.atomic
def edge_node_delete(*, node: EdgeNode, actor: Principal | None) -> Operation:
    """Remove a node: its broker user goes (the broker drops its bridge on reload), its configuration history too,
    and the agent clears its retained status and configuration."""
    deployment = _locked_deployment(node.deployment)
    name, public_id = node.name, node.public_id
    EdgeNode.objects.filter(pk=node.pk).delete()
    EdgeRetainedClear.objects.bulk_create(
        [
            EdgeRetainedClear(deployment=deployment, topic=edge.status_topic(name)),
            EdgeRetainedClear(deployment=deployment, topic=edge.config_topic(name)),
        ]
    )
    _notify(deployment.pk)
    operation = _broker_changed(deployment, actor, "edge_node.delete", node)
    _audit(node, deployment, actor, "edge_node.delete", edge_node=public_id, operation=operation.public_id)
    return operation


@transaction.atomic
def edge_node_credentials_rotate(
    *, node: EdgeNode, actor: Principal | None
) -> tuple[EdgeNode, IssuedCredentials, Operation]:
    """A new username and password (shown this once); the old ones stop working when the broker reloads."""
    deployment = _locked_deployment(node.deployment)
    node = EdgeNode.objects.select_for_update().get(pk=node.pk)
    new = new_credentials(edge.NODE_USERNAME_PREFIX)
    node.username, node.salt_b64, node.hash_b64 = new.shown.username, new.salt_b64, new.hash_b64
    node.credentials_issued_at = timezone.now()
    node.save()
    operation = _broker_changed(deployment, actor, "edge_node.credentials", node)
    _audit(node, deployment, actor, "edge_node.credentials.rotate", operation=operation.public_id)
    return node, new.shown, operation


# -- desired configuration ----------------------------------------------------------------------------------------------


@transaction.atomic
def edge_config_create(
    *,
    node: EdgeNode,
    actor: Principal | None,
    up_topics: Any = _UNSET,
    down_topics: Any = _UNSET,
    settings: Any = _UNSET,
) -> EdgeConfig:
    """A new version of the node's desired configuration: its topic mappings (the current ones unless given) and
    settings (a JSON object). The agent publishes it retained to edge/{node}/config; the downloaded bridge file
    follows the new mappings at once."""
    deployment = _locked_deployment(node.deployment)
    node = EdgeNode.objects.select_for_update().get(pk=node.pk)
    up, down = _mapping_checks(
        node.up_topics if up_topics is _UNSET else up_topics, node.down_topics if down_topics is _UNSET else down_topics
    )
    values = _fields({"settings": lambda: edge.settings({} if settings is _UNSET else settings)})
    version = node.desired_version + 1
    document = edge.document(
        node=node.name, node_kind=node.kind, version=version, up=up, down=down, settings=values["settings"]
    )
    try:
        size = edge.document_size_check(document)
    except ValueError as exc:
        raise ValidationFailed([FieldError("settings", str(exc), "too-large")]) from None
    config = EdgeConfig.objects.create(
        node=node,
        version=version,
        up_topics=up,
        down_topics=down,
        settings=values["settings"],
        document=document,
        size=size,
    )
    node.desired_version = version
    node.up_topics, node.down_topics = up, down
    node.save(update_fields=["desired_version", "up_topics", "down_topics", "updated_at"])
    _notify(deployment.pk)
    _audit(node, deployment, actor, "edge_node.config.create", version=version, size=size)
    return config


# -- the agent --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EdgeEvent:
    """What a node said: `status` (online True/False) or `ack` (the version it applied). `retained`: a retained
    status delivered on (re)subscribing, which tells the current state but not when it began."""

    node: str
    kind: str  # status | ack
    at: datetime.datetime
    online: bool | None = None
    version: int | None = None
    retained: bool = False


def edge_events_apply(*, deployment_id: int, holder: str, token: int, events: list[EdgeEvent]) -> int:
    """Apply the nodes' status and acknowledgements in order, in one transaction; answers how many nodes changed.
    Raises iot.services.LeaseLost (nothing committed)."""
    with transaction.atomic():
        _fence(deployment_id, holder, token)
        nodes = {
            n.name: n
            for n in EdgeNode.objects.select_for_update()
            .filter(deployment_id=deployment_id, name__in={e.node for e in events})
            .order_by("pk")
        }
        changed: set[str] = set()
        for event in events:
            node = nodes.get(event.node)
            if node is None:
                continue
            if event.kind == "status":
                if event.retained:
                    if node.kind == EdgeNode.Kind.NANOMQ:
                        # Its retained status is the last will's 0 until something publishes 1, even while its
                        # bridge is connected: the broker's connection events tell its state instead.
                        continue
                    if node.online != event.online:  # missed while no agent listened
                        node.online = bool(event.online)
                        changed.add(node.name)
                    continue
                node.online = bool(event.online)
                node.last_seen = event.at
                if event.online:
                    node.connected_at = event.at
                else:
                    node.disconnected_at = event.at
                changed.add(node.name)
            elif event.kind == "ack" and event.version is not None:
                # It came over the node's bridge: the node is connected (NanoMQ's bridge announces nothing else).
                node.online = True
                node.last_seen = event.at
                # Never past what was asked, never backwards (a redelivered older ack changes nothing).
                if node.applied_version < event.version <= node.desired_version:
                    node.applied_version = event.version
                    node.applied_at = event.at
                changed.add(node.name)
        for name in changed:
            nodes[name].save(
                update_fields=[
                    "online",
                    "connected_at",
                    "disconnected_at",
                    "last_seen",
                    "applied_version",
                    "applied_at",
                    "updated_at",
                ]
            )
    return len(changed)


# mosquitto's log stamps whole seconds: a log event is older than a status message only by more than that.
LOG_PRECISION = datetime.timedelta(seconds=1)


def edge_connections_apply(*, deployment_id: int, events: list[PresenceEvent]) -> int:
    """The broker's own connection events for the nodes' bridges (client id `$edge-{node}`), applied inside the
    agent's fenced presence transaction (iot.services.presence_apply). A bridge connected with its node's username
    is the node online, whatever its kind: NanoMQ's bridge announces nothing itself. Its disconnection, another
    client taking its id, or the broker restarting is the node offline. The log is read a moment late: an event older
    than the state the node's own status messages already set is skipped. Answers how many nodes changed."""
    prefix = edge.client_id("")
    names = {e.client_id.removeprefix(prefix) for e in events if e.client_id.startswith(prefix)}
    reset = any(e.kind == "broker_reset" for e in events)
    if not names and not reset:
        return 0
    query = Q(name__in=names)
    if reset:
        query |= Q(online=True)
    nodes = {
        n.name: n
        for n in EdgeNode.objects.select_for_update().filter(query, deployment_id=deployment_id).order_by("pk")
    }
    changed: set[str] = set()
    for event in events:
        if event.kind == "broker_reset":
            for each in nodes.values():
                if each.connected_at is not None and event.at + LOG_PRECISION <= each.connected_at:
                    continue  # read from the log after the bridge's birth message announced a newer connection
                if each.online:
                    each.online, each.disconnected_at = False, event.at
                    changed.add(each.name)
            continue
        node = nodes.get(event.client_id.removeprefix(prefix)) if event.client_id.startswith(prefix) else None
        if node is None:
            continue
        if event.kind == "connected":
            if node.disconnected_at is not None and event.at + LOG_PRECISION <= node.disconnected_at:
                continue  # read from the log after the bridge's last will already said it ended
            if event.username == node.username:
                node.online = True
                node.connected_at = node.last_seen = event.at
            elif node.online:  # another client took the bridge's id over: the broker closed the bridge
                node.online, node.disconnected_at = False, event.at
            else:
                continue
            changed.add(node.name)
        elif event.kind == "disconnected" and node.online:
            started = event.connection_started_at
            if started is not None and node.connected_at is not None and started < node.connected_at:
                continue  # the end of an older connection, reported after the newer one began
            if node.connected_at is not None and event.at + LOG_PRECISION <= node.connected_at:
                continue  # read from the log after the bridge's birth message announced a newer connection
            node.online = False
            node.disconnected_at = node.last_seen = event.at
            changed.add(node.name)
    for name in changed:
        nodes[name].save(update_fields=["online", "connected_at", "disconnected_at", "last_seen", "updated_at"])
    return len(changed)


def edge_publications_due(*, deployment_id: int) -> tuple[list[EdgeRetainedClear], list[EdgeConfig]]:
    """What the agent must publish, oldest first: retained topics to clear, then each node's latest configuration
    not yet published (an older unpublished version is superseded and never published)."""
    clears = list(EdgeRetainedClear.objects.filter(deployment_id=deployment_id).order_by("id")[:500])
    configs = list(
        EdgeConfig.objects.filter(
            node__deployment_id=deployment_id, published_at__isnull=True, version=F("node__desired_version")
        )
        .select_related("node")
        .order_by("id")[:500]
    )
    return clears, configs


def edge_published(*, deployment_id: int, holder: str, token: int, config_ids: list[int], clear_ids: list[int]) -> None:
    """The broker took these retained messages: record them (fenced, like every agent write)."""
    if not config_ids and not clear_ids:
        return
    with transaction.atomic():
        _fence(deployment_id, holder, token)
        now = timezone.now()
        if config_ids:
            EdgeConfig.objects.filter(
                pk__in=config_ids, node__deployment_id=deployment_id, published_at__isnull=True
            ).update(published_at=now)
        if clear_ids:
            EdgeRetainedClear.objects.filter(pk__in=clear_ids, deployment_id=deployment_id).delete()
