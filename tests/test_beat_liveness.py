"""A real `celery beat` with the settings' scheduler touches its liveness file on every tick, which the chart's liveness
probe reads: a beat whose loop hangs stops touching it and is restarted. And it stops when told to, even when a second
signal meets its shutdown's write of the schedule."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection, transaction

from tests.celery_worker import REPO, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _wait_for(condition, timeout: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s:\n{logs()}")
        time.sleep(0.1)


def _start_beat(env: dict[str, str], tmp_path: pathlib.Path):
    log_path = tmp_path / "beat.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(pathlib.Path(sys.executable).parent / "celery"),
                "-A",
                "controlplane",
                "beat",
                "--pidfile",
                str(tmp_path / "beat.pid"),
                "--loglevel",
                "INFO",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def logs() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    return proc, logs


def _stop(proc) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_beat_touches_its_liveness_file_on_every_tick_when_running(brokers_dir, redis_clean, tmp_path):
    alive = tmp_path / "beat.alive"
    proc, logs = _start_beat({**worker_env(brokers_dir), "BEAT_LIVENESS_FILE": str(alive)}, tmp_path)
    try:
        _wait_for(alive.exists, 60, "beat wrote no liveness file", logs)
        first = alive.stat().st_mtime
        # The database scheduler ticks at least every 5 s (django-celery-beat's DEFAULT_MAX_INTERVAL).
        _wait_for(lambda: alive.stat().st_mtime > first, 15, "beat did not touch its liveness file again", logs)
        assert proc.poll() is None, logs()
    finally:
        _stop(proc)


def test_beat_exits_when_a_second_signal_arrives_while_its_shutdown_writes_the_schedule(
    brokers_dir, redis_clean, tmp_path
):
    # Ctrl-C reaches `make run`'s whole process group and its stop then sends SIGTERM; Kubernetes may repeat a signal.
    # Each signal makes beat write its schedule to the database (celery's handler: sync, then exit). The second one
    # arrived while the first write waited on PostgreSQL, re-entered it on the same psycopg connection, and waited for
    # that connection's lock, held by the write it interrupted: beat never exited.
    # Two tasks due every second: the shutdown has two entries to write, and the second signal meets the first write.
    env = {**worker_env(brokers_dir), "BEAT_LIVENESS_FILE": str(tmp_path / "alive")}
    # CONN_MAX_AGE as deployed (the workers' fixture sets 0): the sync the second signal starts would otherwise close
    # the interrupted write's connection and open its own.
    env.update(RECONCILE_SWEEP_SECONDS="1", BROKER_WATCH_SECONDS="1", CONN_MAX_AGE="60")
    proc, logs = _start_beat(env, tmp_path)
    try:
        sent = (b"Sending due task deployments.sweep_reconcile", b"Sending due task deployments.watch_brokers")
        _wait_for(lambda: all(s in (tmp_path / "beat.log").read_bytes() for s in sent), 60, "beat sent both", logs)
        with transaction.atomic():
            with connection.cursor() as cursor:  # the shutdown's write of last_run_at waits for these rows
                cursor.execute("SELECT id FROM django_celery_beat_periodictask FOR UPDATE")
            os.kill(proc.pid, signal.SIGINT)
            _wait_for(lambda: _waits_for_a_lock(proc.pid), 20, "beat's shutdown write did not wait for the rows", logs)
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(1)  # the second handler runs inside the waiting write
        # The rows are free again: what waited for them goes on, and beat exits.
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"beat still runs 15 s after its second signal:\n{logs()}") from None
    finally:
        _stop(proc)


def _waits_for_a_lock(pid: int) -> bool:
    """Whether a session of beat's (its application_name is not set: found by the client's pid) waits for a lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
            "WHERE a.client_port IS NOT NULL AND a.pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0] > 0
