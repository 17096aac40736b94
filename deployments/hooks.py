"""What apps above deployments (alerts, iot, billing) ask to happen inside a deployment's own creating, starting or
moving transaction, or when its billable time is corrected, registered in their AppConfig.ready(), so deployments never
imports them.

A hook runs inside deployment_create's (deployment_start's, deployment_move's) transaction: what it writes commits or rolls back with
the deployment. It never calls the network or commits; it raises a domain error only to refuse the whole change.
"""

from __future__ import annotations

from collections.abc import Callable

_created: list[Callable[..., None]] = []
_starting: list[Callable[..., None]] = []
_moved: list[Callable[..., None]] = []
_corrected: list[Callable[..., None]] = []


def on_deployment_created(hook: Callable[..., None]) -> Callable[..., None]:
    """Register `hook(deployment=...)`; registering the same function twice keeps one."""
    if hook not in _created:
        _created.append(hook)
    return hook


def deployment_created(deployment) -> None:
    """Called by deployments.services.deployment_create, in its transaction, once the deployment row exists."""
    for hook in list(_created):
        hook(deployment=deployment)


def on_deployment_start(guard: Callable[..., None]) -> Callable[..., None]:
    """Register `guard(deployment=...)`, which raises a domain error to refuse starting a stopped deployment."""
    if guard not in _starting:
        _starting.append(guard)
    return guard


def deployment_starting(deployment) -> None:
    """Called by deployments.services.deployment_start, in its transaction, before it changes anything."""
    for guard in list(_starting):
        guard(deployment=deployment)


def on_deployment_moved(hook: Callable[..., None]) -> Callable[..., None]:
    """Register `hook(deployment=..., source=...)`: what an app keeps per project about a deployment follows it."""
    if hook not in _moved:
        _moved.append(hook)
    return hook


def deployment_moved(deployment, source) -> None:
    """Called by deployments.services.deployment_move, in its transaction, once the deployment is in its new project
    (`source` is the project it left)."""
    for hook in list(_moved):
        hook(deployment=deployment, source=source)


def on_billable_time_corrected(hook: Callable[..., None]) -> Callable[..., None]:
    """Register `hook(deployment=..., since=...)`: the deployment's billable time from `since` on was recorded
    afresh, after the fact (a broker crash noticed late ends its running interval when it was last seen alive)."""
    if hook not in _corrected:
        _corrected.append(hook)
    return hook


def billable_time_corrected(deployment, since) -> None:
    """Called by deployments.reconcile when it ends a billable interval at a moment already past, in its
    transaction."""
    for hook in list(_corrected):
        hook(deployment=deployment, since=since)
