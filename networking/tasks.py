"""Celery tasks of the networking app: the poll that walks a VPC peering through its states, and the sweep that
restarts polls a lost task left behind. Ids in, one service call; the service schedules the next poll."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from networking import services


@shared_task(
    name="networking.poll_peering",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=None,
)
def poll_peering(peering_id: int, token: str) -> str:
    return services.peering_poll(peering_id=peering_id, token=token)


@shared_task(name="networking.sweep_peerings", ignore_result=True)
def sweep_peerings() -> int:
    """Every minute: a killed worker, a flushed Redis or a lost enqueue never strands a peering."""
    return services.peerings_sweep()
