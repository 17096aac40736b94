"""A real Celery worker subprocess on the test database and the test Redis, for tests whose flow crosses a task.

`celery_worker` (needs `transactional_db`: the worker must see committed rows) gives a test a running
`celery -A controlplane worker` on every queue. One worker is started per pytest process and handed from one test to
the next, across modules, only when nothing of the earlier test can reach the later one. Between two tests it is
parked: told through Celery's remote control to consume no queue, so a test that does not ask for a worker runs as it
would alone (its tasks stay queued), and nothing published after the earlier test ended can reach the worker. It is
handed on only when, parked, it holds no task (none running, reserved, or waiting for its countdown), still runs, and
was started with the environment the next test asks for (a test that sets EMAIL_URL for its worker gets one of its
own); otherwise it is stopped and the next test starts a fresh one. A worker start costs about 2.5 CPU-seconds and a
few seconds of wall time. The crash test SIGKILLs it (the whole process group, pool children included) and starts it
again. `celery_worker.logs()` is what the worker logged during the current test.

`brokers_dir` gives each pytest process one LOCAL_BROKERS_DIR (0755, outside pytest's 0700 tmp_path; the worker's
environment names it, so it must outlive a test to let the worker be shared), kills any broker left under it and
empties it after every test. `deployments_catalog` makes sure the seeded catalog is there.

A shared worker outlives the flush of the test Redis database between two tests (`redis_clean`): Celery publishes a
task to the anonymous exchange, straight onto the queue's list, so no exchange binding is needed, and remote control
(how `park`, `unpark` and `holds_no_task` ask) goes over Redis pub/sub.
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
from itertools import count

import pytest

# The worker the tests of this pytest process share (parked between two tests), if one runs.
_shared: CeleryWorker | None = None
# Every start of a worker in this process, whichever CeleryWorker: names its node and its log file, so a worker started
# after another in the same log folder neither writes over that one's log nor answers to its name.
_start_numbers = count(1)

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
        self.number = 0  # of this process's worker starts (_start_numbers)
        self._log_marks: dict[pathlib.Path, int] = {}  # log file -> its size when the current test began

    @property
    def node_name(self) -> str:
        from celery.utils.nodenames import gethostname

        return f"test-worker-{os.getpid()}-{self.number}@{gethostname()}"

    @property
    def log_path(self) -> pathlib.Path:
        return self.log_dir / f"worker-{self.number}.log"

    def start(self, timeout: float = 60.0) -> None:
        from django.conf import settings

        assert self.proc is None, "already running"
        if _shared is not None and _shared is not self:  # one worker at a time: a test's own ends the shared one
            stop_shared()
        self.number = next(_start_numbers)
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
                self.node_name,
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
        # The worker logs "ready." just before its event loop first polls, and only then subscribes to remote
        # control's Redis pub/sub channel: a command sent in between is lost (unpark right after a start went
        # unanswered, and the worker was stopped and started again). Answering a ping means it is subscribed.
        # Remote control (park, unpark, holds_no_task, this ping) publishes through the test Redis, so a worker that
        # a test started on a Redis of its own is never asked, and not pinged.
        while self.env.get("CELERY_BROKER_URL") == settings.CELERY_BROKER_URL and not self._answered("ping", {}, 1.0):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not answer remote control:\n{self.logs()}")
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

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _answered(self, command: str, arguments: dict, timeout: float) -> bool:
        """Send `command` to this worker through remote control; True when it answered within `timeout` seconds."""
        from controlplane.celery import app

        try:
            replies = app.control.broadcast(
                command, arguments=arguments, destination=[self.node_name], reply=True, timeout=timeout
            )
        except Exception:  # noqa: BLE001 - a worker that cannot be told has not answered
            return False
        return any(self.node_name in reply for reply in replies or [])

    def _each_queue(self, command: str) -> bool:
        """Send `command` (add_consumer, cancel_consumer) for every queue through remote control; True when the worker
        answered each one (a worker that does not is not handed on)."""
        return all(self._answered(command, {"queue": queue}, 5.0) for queue in QUEUES.split(","))

    def park(self) -> bool:
        """Consume no queue from now on (what it holds already stays, for holds_no_task to see)."""
        return self._each_queue("cancel_consumer")

    def unpark(self) -> bool:
        """Consume every queue again."""
        return self._each_queue("add_consumer")

    def holds_no_task(self) -> bool:
        """Asked of the worker itself (remote control): no task running, reserved or scheduled for later. False when
        it does not answer."""
        from controlplane.celery import app

        inspect = app.control.inspect(destination=[self.node_name], timeout=5.0)
        for question in (inspect.active, inspect.reserved, inspect.scheduled):
            try:
                replies = question()
            except Exception:  # noqa: BLE001 - a worker that cannot be asked is not handed on
                return False
            if not replies or self.node_name not in replies or replies[self.node_name]:
                return False
        return True

    def mark_logs(self) -> None:
        """What logs() shows starts here (a shared worker's log holds the earlier tests' lines too)."""
        self._log_marks = {p: p.stat().st_size for p in self.log_dir.glob("worker-*.log")}

    def logs(self) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            with open(path, "rb") as f:
                f.seek(self._log_marks.get(path, 0))
                parts.append(f.read().decode(errors="replace")[-6000:])
        return "\n".join(parts)


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


@pytest.fixture(scope="session")
def _session_brokers_dir():
    from django.conf import settings

    base = pathlib.Path(settings.VAR_DIR)
    base.mkdir(parents=True, exist_ok=True)
    path = pathlib.Path(tempfile.mkdtemp(prefix="brokers-", dir=base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def brokers_dir(_session_brokers_dir, settings):
    path = _session_brokers_dir
    settings.LOCAL_BROKERS_DIR = path
    yield path
    for pid in broker_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


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


def _comparable(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}  # pytest changes it for every test phase


def stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


def shared_worker(env: dict[str, str], log_dir: pathlib.Path) -> CeleryWorker:
    """The running worker of `env` for a test, consuming every queue: the shared one if it runs with that environment
    (and takes its queues again), else a new one."""
    global _shared
    if _shared is not None and not (_shared.running() and _comparable(_shared.env) == _comparable(env)):
        stop_shared()
    if _shared is not None and not _shared.unpark():
        stop_shared()
    if _shared is None:
        _shared = CeleryWorker(env, log_dir)
    worker = _shared
    worker.mark_logs()
    if not worker.running():
        worker.proc = None
        worker.start()
    return worker


def hand_on(worker: CeleryWorker, client) -> bool:
    """At the end of a test: the worker is parked, then what the test left queued goes (each queue's list, and its
    priority lists, which kombu names after the queue, two separator bytes and the priority); the worker stays for the
    next test only if it runs and, parked, holds no task, else it is stopped. Returns whether it stays."""
    parked = worker is _shared and worker.running() and worker.park()
    for queue in QUEUES.split(","):
        client.delete(queue, *client.scan_iter(match=f"{queue}\x06\x16*"))
    if parked and worker.running() and worker.holds_no_task():
        return True
    if worker is _shared:
        stop_shared()
    else:
        worker.stop()
    return False


@pytest.fixture(scope="session")
def _session_celery_worker(tmp_path_factory):
    """The log folder of this process's workers; ends the shared worker, if one still runs, with the session."""
    yield tmp_path_factory.mktemp("celery-worker")
    stop_shared()


@pytest.fixture
def celery_worker(_session_celery_worker, transactional_db, deployments_catalog, brokers_dir, redis_clean):
    worker = shared_worker(worker_env(brokers_dir), _session_celery_worker)
    yield worker
    print(f"--- Celery worker ---\n{worker.logs()}")  # shown by pytest when the test failed
    hand_on(worker, redis_clean)
