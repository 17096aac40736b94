"""Celery tasks of monitoring and alerting: ids in, one service call each, retries declared here.

`alerts.collect_*` and `alerts.evaluate_*` run on the monitoring queue, the rest on notifications (CELERY_TASK_ROUTES).
A task never holds a broker connection or an HTTP request open past the timeouts its service sets.
"""

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from alerts import channels, services


@shared_task(name="alerts.collect_metrics", ignore_result=True)
def collect_metrics() -> int:
    """Fan out: one collection task per running deployment, so one slow broker never delays the rest."""
    ids = services.running_deployment_ids()
    for deployment_id in ids:
        collect_deployment.delay(deployment_id)
    return len(ids)


# The collector bounds itself (COLLECT_TIMEOUT_SECONDS); the time limits only catch a collector bug.
@shared_task(name="alerts.collect_deployment", ignore_result=True, soft_time_limit=60, time_limit=90)
def collect_deployment(deployment_id: int) -> None:
    try:
        state = services.deployment_collect(deployment_id=deployment_id)
    except SoftTimeLimitExceeded:
        return
    if state is not None:
        evaluate_deployment.delay(deployment_id)


@shared_task(name="alerts.evaluate_deployment", ignore_result=True)
def evaluate_deployment(deployment_id: int) -> None:
    services.rules_evaluate(deployment_ids=[deployment_id])


@shared_task(name="alerts.evaluate_rules", ignore_result=True)
def evaluate_rules() -> None:
    services.rules_evaluate()


@shared_task(name="alerts.evaluate_budget_rules", ignore_result=True)
def evaluate_budget_rules() -> None:
    """Beat, every 15 minutes: spend moves with metered hours, so a minute's cadence would only recompute it."""
    services.budget_rules_evaluate()


@shared_task(
    name="alerts.deliver_notification", bind=True, ignore_result=True, max_retries=len(channels.retry_delays())
)
def deliver_notification(self, delivery_id: int, expected_attempts: int | None = None) -> None:
    delivery, delay = services.delivery_attempt(delivery_id=delivery_id, expected_attempts=expected_attempts)
    if delay is not None:
        raise self.retry(countdown=delay, args=(delivery_id, delivery.attempts))


@shared_task(name="alerts.rollup_metrics", ignore_result=True)
def rollup_metrics() -> None:
    services.rollups_compute()


@shared_task(name="alerts.prune_metrics", ignore_result=True)
def prune_metrics() -> None:
    services.metrics_prune()


@shared_task(name="alerts.check_failing_channels", ignore_result=True)
def check_failing_channels() -> None:
    services.failing_channels_check()


@shared_task(name="alerts.notify_failed_deployments", ignore_result=True)
def notify_failed_deployments() -> None:
    services.failed_deployments_notify()


@shared_task(name="alerts.resume_deliveries", ignore_result=True)
def resume_deliveries() -> int:
    """Every 5 minutes: re-send deliveries whose retry message was lost with a worker or with Redis."""
    return services.deliveries_resume()
