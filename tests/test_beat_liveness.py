"""A real `celery beat` with the settings' scheduler touches its liveness file on every tick, which the chart's liveness
probe reads: a beat whose loop hangs stops touching it and is restarted."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.celery_worker import REPO, worker_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _wait_for(condition, timeout: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s:\n{logs()}")
        time.sleep(0.1)


def test_beat_touches_its_liveness_file_on_every_tick_when_running(brokers_dir, redis_clean, tmp_path):
    alive = tmp_path / "beat.alive"
    log_path = tmp_path / "beat.log"
    env = {**worker_env(brokers_dir), "BEAT_LIVENESS_FILE": str(alive)}
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

    try:
        _wait_for(alive.exists, 60, "beat wrote no liveness file", logs)
        first = alive.stat().st_mtime
        # The database scheduler ticks at least every 5 s (django-celery-beat's DEFAULT_MAX_INTERVAL).
        _wait_for(lambda: alive.stat().st_mtime > first, 15, "beat did not touch its liveness file again", logs)
        assert proc.poll() is None, logs()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
