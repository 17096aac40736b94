"""What a Premium deployment's broker must hold for the IoT platform, given to the reconciler through the
deployments.extensions spec contributor: the agent's user (full access, this deployment only) and one user per
enabled device, confined to `devices/{device_id}/#` whatever the deployment's ACL rules say.

It reads devices and makes the agent's credential once; it never changes a device or talks to a broker.
"""

from __future__ import annotations

from deployments.drivers.base import MqttCredential
from deployments.models import Deployment, Plan
from iot.models import Device


def device_topics(device_id: str) -> tuple[str, ...]:
    return (f"devices/{device_id}/#",)


def spec_users(deployment: Deployment) -> list[MqttCredential]:
    if deployment.plan.code != Plan.Code.PREMIUM:
        return []
    from iot.services import agent_credential_ensure

    agent = agent_credential_ensure(deployment)
    users = [
        MqttCredential(username=agent.username, salt_b64=agent.salt_b64, hash_b64=agent.hash_b64, is_superuser=True)
    ]
    rows = (
        Device.objects.filter(deployment=deployment, enabled=True)
        .order_by("username")
        .values_list("username", "salt_b64", "hash_b64", "iterations", "device_id")
    )
    users += [
        MqttCredential(
            username=username,
            salt_b64=salt_b64,
            hash_b64=hash_b64,
            iterations=iterations,
            confined_to=device_topics(device_id),
        )
        for username, salt_b64, hash_b64, iterations, device_id in rows
    ]
    return users
