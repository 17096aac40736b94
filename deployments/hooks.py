"""What apps above deployments (alerts) ask to happen inside a deployment's own creating transaction, registered in
their AppConfig.ready(), so deployments never imports them.

A hook runs inside deployment_create's transaction: what it writes commits or rolls back with the deployment. It never
calls the network or commits; it raises only to refuse the whole creation.
"""

from __future__ import annotations

from collections.abc import Callable

_created: list[Callable[..., None]] = []


def on_deployment_created(hook: Callable[..., None]) -> Callable[..., None]:
    """Register `hook(deployment=...)`; registering the same function twice keeps one."""
    if hook not in _created:
        _created.append(hook)
    return hook


def deployment_created(deployment) -> None:
    """Called by deployments.services.deployment_create, in its transaction, once the deployment row exists."""
    for hook in list(_created):
        hook(deployment=deployment)
