"""A real Celery worker subprocess on the test database and the test Redis, for tests whose flow crosses a task.

`celery_worker` (needs `transactional_db`: the worker must see committed rows) starts
`celery -A controlplane worker` on every queue, waits until it is ready, and stops it afterwards. The crash test
SIGKILLs it (the whole process group, pool children included) and starts it again. `brokers_dir` gives each test its
own LOCAL_BROKERS_DIR (0755, outside pytest's 0700 tmp_path) and kills any broker left under it;
`deployments_catalog` makes sure the seeded catalog is there.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
QUEUES = "provisioning,default,billing,monitoring,notifications"


def _database_url() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise RuntimeError("the Celery worker fixture needs PostgreSQL (run through scripts/test.sh)")
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def _live_processes():
    """(pid, argv) of every process on this machine, zombies aside."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            yield int(entry), argv


def running_pids(marker: bytes) -> list[int]:
    """Every live process with `marker` in one of its command-line arguments."""
    return [pid for pid, argv in _live_processes() if any(marker in arg for arg in argv)]


def broker_pids(root: pathlib.Path) -> list[int]:
    """Every mosquitto process whose config lives under `root`."""
    under = str(root).encode()
    return [
        pid for pid, argv in _live_processes() if argv[0].endswith(b"mosquitto") and any(under in arg for arg in argv)
    ]


def kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL `pid` and return once it has died (a zombie or gone): the signal is delivered asynchronously, and a
    loaded machine can still show the process running to whoever looks at /proc right after the kill."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(found == pid for found, _argv in _live_processes()):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still runs {timeout} s after SIGKILL")
        time.sleep(0.01)


class CeleryWorker:
    """`beat=True` embeds beat (`-B`, the database scheduler of the settings): the periodic tasks run as in
    production, the broker watcher every BROKER_WATCH_SECONDS among them."""

    def __init__(self, env: dict[str, str], log_dir: pathlib.Path, *, beat: bool = False) -> None:
        self.env = env
        self.log_dir = log_dir
        self.beat = beat
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> pathlib.Path:
        return self.log_dir / f"worker-{self.starts}.log"

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(pathlib.Path(sys.executable).parent / "celery"),
                "-A",
                "controlplane",
                "worker",
                "-Q",
                QUEUES,
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                f"test-worker-{os.getpid()}-{self.starts}@%h",
                *(["--beat"] if self.beat else []),
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a SIGKILL reaches the pool children too
        )
        log.close()
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not become ready:\n{self.logs()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as a crash would."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
        self.proc = None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(self.log_dir.glob("worker-*.log")))


@pytest.fixture
def deployments_catalog(db):
    """The seeded catalog (plans, tiers, prices, the `local` region). Every test starts with it: the migrations seed
    the template database, a flush seeds it again (tests/conftest.py, on post_migrate), and a transactional test's
    reset flushes whenever a catalog table changed (tests/db_reset.py). So this only seeds when it finds none (two
    short queries): seeding unconditionally ran some sixty get_or_create queries per test that asked for it."""
    import importlib

    from django.apps import apps

    regions, prices = apps.get_model("deployments", "Region").objects, apps.get_model("deployments", "Price").objects
    if not (regions.filter(code="local").exists() and prices.exists()):
        importlib.import_module("deployments.migrations.0002_seed_catalog").seed(apps, None)


@pytest.fixture
def brokers_dir(settings):
    base = pathlib.Path(settings.VAR_DIR)
    base.mkdir(parents=True, exist_ok=True)
    path = pathlib.Path(tempfile.mkdtemp(prefix="brokers-", dir=base))
    path.chmod(0o755)
    settings.LOCAL_BROKERS_DIR = path
    yield path
    for pid in broker_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def worker_env(brokers_dir: pathlib.Path) -> dict[str, str]:
    """The environment of a worker on the test database, the test Redis and this test's brokers directory."""
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "CONTROLPLANE_VAR_DIR": str(settings.VAR_DIR),
            "CONTROLPLANE_ENV": "test",
            "LOCAL_BROKERS_DIR": str(brokers_dir),
            "CONN_MAX_AGE": "0",
            "PYTHONPATH": str(REPO),
            # A task hung for this long writes every thread's stack into the worker's log, which a failed test shows.
            "TASK_STACK_DUMP_SECONDS": os.environ.get("TASK_STACK_DUMP_SECONDS", "30"),
        }
    )
    return env


@pytest.fixture
def celery_worker(transactional_db, deployments_catalog, brokers_dir, redis_clean, tmp_path):
    worker = CeleryWorker(worker_env(brokers_dir), tmp_path)
    worker.start()
    yield worker
    worker.stop()
    print(f"--- Celery worker ---\n{worker.logs()}")  # shown by pytest when the test failed
