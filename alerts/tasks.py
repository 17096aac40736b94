"""Celery tasks of monitoring and alerting: ids in, one service call each, retries declared here.

`alerts.collect_*` and `alerts.evaluate_*` run on the monitoring queue, the rest on notifications (CELERY_TASK_ROUTES).
A task never holds a broker connection or an HTTP request open past the timeouts its service sets. Delivering
notifications is the notifications app's (notifications.tasks, still named `alerts.*`).
"""

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from alerts import collection, evaluate, platform


@shared_task(name="alerts.collect_metrics", ignore_result=True)
def collect_metrics() -> int:
    """Fan out: one collection task per running deployment, so one slow broker never delays the rest, and one
    evaluation per deployment that is not running but has rules to decide (a degraded broker is unavailable)."""
    ids = collection.running_deployment_ids()
    for deployment_id in ids:
        collect_deployment.delay(deployment_id)
    for deployment_id in collection.uncollected_deployment_ids_to_evaluate():
        evaluate_deployment.delay(deployment_id)
    return len(ids)


# The collector bounds itself (COLLECT_TIMEOUT_SECONDS); the time limits only catch a collector bug.
@shared_task(name="alerts.collect_deployment", ignore_result=True, soft_time_limit=60, time_limit=90)
def collect_deployment(deployment_id: int) -> None:
    try:
        state = collection.deployment_collect(deployment_id=deployment_id)
    except SoftTimeLimitExceeded:
        return
    if state is not None:
        evaluate_deployment.delay(deployment_id)


@shared_task(name="alerts.evaluate_deployment", ignore_result=True)
def evaluate_deployment(deployment_id: int) -> None:
    evaluate.rules_evaluate(deployment_ids=[deployment_id])


@shared_task(name="alerts.evaluate_rules", ignore_result=True)
def evaluate_rules() -> None:
    evaluate.rules_evaluate()


@shared_task(name="alerts.evaluate_budget_rules", ignore_result=True)
def evaluate_budget_rules() -> None:
    """Beat, every 15 minutes: spend moves with metered hours, so a minute's cadence would only recompute it."""
    evaluate.budget_rules_evaluate()


@shared_task(name="alerts.rollup_metrics", ignore_result=True)
def rollup_metrics() -> None:
    collection.rollups_compute()


@shared_task(name="alerts.prune_metrics", ignore_result=True)
def prune_metrics() -> None:
    collection.metrics_prune()


@shared_task(name="alerts.notify_failed_deployments", ignore_result=True)
def notify_failed_deployments() -> None:
    platform.failed_deployments_notify()
