"""The platform agent's part for edge nodes, called by a DeploymentServer on its worker thread: which topics it
subscribes to (each node's bridge status and configuration acknowledgements), turning those messages into state
(iot.edge_services.edge_events_apply, in the batch, before the batch is acknowledged), and publishing each node's
latest desired configuration retained (and clearing a deleted node's retained topics). It decides nothing itself.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from iot import edge, edge_services

logger = logging.getLogger("iot.agent")

TOPICS = ("edge/+/" + edge.STATUS, "edge/+/" + edge.CONFIG_ACK)


def events_of(messages) -> list[edge_services.EdgeEvent]:
    """The edge events among a batch of paho messages, in order; anything malformed is dropped."""
    now = timezone.now()
    events = []
    for message in messages:
        parts = message.topic.split("/")
        if len(parts) < 3 or parts[0] != "edge" or not edge.NODE_NAME_RE.match(parts[1]):
            continue
        rest = "/".join(parts[2:])
        payload = bytes(message.payload)
        if rest == edge.STATUS:
            online = edge.parse_status(payload)
            if online is not None:
                events.append(
                    edge_services.EdgeEvent(
                        node=parts[1], kind="status", at=now, online=online, retained=bool(message.retain)
                    )
                )
        elif rest == edge.CONFIG_ACK:
            version = edge.parse_ack(payload)
            if version is not None:
                events.append(edge_services.EdgeEvent(node=parts[1], kind="ack", at=now, version=version))
    return events


def process(server, messages) -> None:
    events = events_of(messages)
    if events:
        edge_services.edge_events_apply(
            deployment_id=server.target.deployment_id, holder=server.holder, token=server.token, events=events
        )


def publish_due(server) -> None:
    """Publish (retained, QoS 1) what is due, then record it, fenced: at least once, a retained message twice is
    harmless."""
    if not server.connected.is_set():
        return
    clears, configs = edge_services.edge_publications_due(deployment_id=server.target.deployment_id)
    if not clears and not configs:
        return
    pending = [("clear", row.pk, server.client.publish(row.topic, b"", qos=1, retain=True)) for row in clears]
    pending += [
        (
            "config",
            row.pk,
            server.client.publish(
                edge.config_topic(row.node.name), edge.compact(row.document).encode("utf-8"), qos=1, retain=True
            ),
        )
        for row in configs
    ]
    done: dict[str, list[int]] = {"clear": [], "config": []}
    for what, pk, info in pending:
        try:
            info.wait_for_publish(timeout=2.0)
        except (RuntimeError, ValueError):
            continue
        if info.is_published():
            done[what].append(pk)
    edge_services.edge_published(
        deployment_id=server.target.deployment_id,
        holder=server.holder,
        token=server.token,
        config_ids=done["config"],
        clear_ids=done["clear"],
    )
