"""Celery tasks of the IoT platform: ids in, one service call, retries declared here."""

from celery import shared_task

from deployments.drivers.base import TemporaryDriverError


@shared_task(
    name="iot.sync_codecs_emqx",
    ignore_result=True,
    autoretry_for=(TemporaryDriverError,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=20,
    soft_time_limit=60,
    time_limit=90,
)
def sync_codecs_emqx(deployment_id: int) -> None:
    from iot import codecs

    codecs.codecs_push_emqx(deployment_id=deployment_id)


@shared_task(name="iot.sweep_codecs_emqx", ignore_result=True)
def sweep_codecs_emqx() -> int:
    """Push every EMQX-hosted Premium deployment's codec rules again (a push does nothing when EMQX agrees)."""
    from iot import codecs

    ids = codecs.emqx_deployments_with_codecs()
    for deployment_id in ids:
        sync_codecs_emqx.delay(deployment_id)
    return len(ids)
