"""gunicorn hooks for the web pods, mounted from the chart's ConfigMap; bind, workers and threads come from the CLI.

It owns the Prometheus multiprocess directory's lifecycle and must never import the Django app (the master stays lean).
"""
import os
import shutil

_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

# gunicorn's default line writes the raw request line and the Referer: invitation and sign-up links hold their token
# in the query string, and every page fetched after one names it as Referer. The path without the query, and no Referer.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
# A password-reset link holds its token in the path itself: this logger writes it as [token].
logger_class = "controlplane.gunicorn_logging.AccessLogger"


def on_starting(server):
    # The emptyDir outlives a container restart: stale files from dead pids would be summed into every scrape.
    if _multiproc_dir:
        shutil.rmtree(_multiproc_dir, ignore_errors=True)
        os.makedirs(_multiproc_dir, exist_ok=True)


def child_exit(server, worker):
    if _multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
