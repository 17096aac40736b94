"""The Celery app. JSON only, explicit time limits, one queue per kind of work so each scales on its own."""

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _start_worker_metrics(**_: Any) -> None:
    """Workers record reconcile and notification figures; they serve them on WORKER_METRICS_PORT when set."""
    port = os.environ.get("WORKER_METRICS_PORT")
    if port:
        from django.conf import settings

        from controlplane import metrics

        metrics.reset_multiprocess_dir()
        metrics.start_worker_metrics_server(port=int(port), token=settings.METRICS_TOKEN)


@worker_process_shutdown.connect
def _forget_dead_worker(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from controlplane import metrics

        metrics.mark_process_dead(pid or os.getpid())
