"""The Celery app. JSON only, explicit time limits, one queue per kind of work so each scales on its own."""

import faulthandler
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_shutdown

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


@task_prerun.connect
def _dump_stacks_if_hung(**_: Any) -> None:
    """Every thread's stack to the worker's stderr if this task still runs after TASK_STACK_DUMP_SECONDS: the one
    place a task blocked in a system call (a lock, a socket) says where. The original stderr, since Celery replaces
    sys.stderr in its processes with a logger that has no file descriptor."""
    from django.conf import settings

    seconds = settings.TASK_STACK_DUMP_SECONDS
    if seconds > 0 and sys.__stderr__ is not None:
        faulthandler.dump_traceback_later(seconds, repeat=False, file=sys.__stderr__)


@task_postrun.connect
def _task_finished(**_: Any) -> None:
    faulthandler.cancel_dump_traceback_later()
