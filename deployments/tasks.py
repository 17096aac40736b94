"""Celery tasks of the deployments app: the reconcile loop and its sweep, the local brokers' watcher, and the
maintenance windows' clock. Ids in, one call, re-enqueue on the way out."""

import time

from celery import shared_task
from django.db import InterfaceError, OperationalError

from controlplane import context, metrics
from deployments import services
from deployments.models import Operation
from deployments.reconcile import reconcile_deployment, watch_local_brokers

MAX_BACKOFF_SECONDS = 30.0
BUSY_RETRIES = 5


def backoff(attempt: int) -> float:
    return min(0.25 * (2**attempt), MAX_BACKOFF_SECONDS)


@shared_task(
    name="deployments.reconcile",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,
)
def reconcile(deployment_id: int, attempt: int = 0) -> str:
    started = time.monotonic()
    # Log lines of this run carry the deployment's latest operation id, as request logs carry the request id.
    operation = (
        Operation.objects.filter(deployment_id=deployment_id)
        .order_by("-created_at")
        .values_list("public_id", flat=True)
        .first()
    )
    token = context.bind(operation_id=operation or "", via="task")
    try:
        outcome = reconcile_deployment(deployment_id)
    finally:
        context.reset(token)
    metrics.RECONCILE_DURATION.labels(outcome.state).observe(time.monotonic() - started)
    if outcome.state == "busy":
        # Another worker holds the deployment. It re-checks convergence before letting go, but a change that commits
        # in the instant between that check and its unlock would wait for the sweep: look again shortly.
        if attempt < BUSY_RETRIES:
            reconcile.apply_async((deployment_id, attempt + 1), countdown=1.0)
    elif outcome.retry:
        countdown = outcome.retry_after if outcome.retry_after is not None else backoff(attempt)
        reconcile.apply_async((deployment_id, attempt + 1), countdown=countdown)
    return outcome.state


@shared_task(name="deployments.sweep_reconcile", ignore_result=True)
def sweep_reconcile() -> int:
    """Re-drive whatever is not converged: a lost task, a killed worker or a flushed Redis never strands anything."""
    return services.reconcile_sweep()


@shared_task(name="deployments.watch_brokers", ignore_result=True)
def watch_brokers() -> dict[str, int]:
    """Every BROKER_WATCH_SECONDS: a local broker that died is recorded as a crash and restored, not left for the
    resync to find minutes later."""
    return watch_local_brokers()


@shared_task(name="deployments.start_due_maintenance", ignore_result=True)
def start_due_maintenance() -> int:
    """Every minute: start the maintenance windows whose time has come (one restart each), complete ended ones."""
    started, _completed = services.maintenance_start_due()
    return started
