"""Real platform agent processes (`manage.py platform_agent`) for the end-to-end tests, on the test database.

`AgentProcess` starts one in its own process group, waits until it runs, and stops it with SIGTERM or kills it with
SIGKILL (as a crash would). `agents` (needs the `celery_worker` fixture, which brings the database URL, Redis and the
brokers' directory) makes as many as a test asks for and stops them all afterwards.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.celery_worker import REPO, running_pids


class AgentProcess:
    def __init__(
        self,
        env: dict[str, str],
        log_path: pathlib.Path,
        *,
        agent_id: str,
        heartbeat: float,
        lease: float,
        codec_workers: int | None = None,
    ):
        self.env, self.log_path, self.agent_id = env, log_path, agent_id
        self.heartbeat, self.lease, self.codec_workers = heartbeat, lease, codec_workers
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> AgentProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "platform_agent",
                "--agent-id",
                self.agent_id,
                "--heartbeat",
                str(self.heartbeat),
                "--lease",
                str(self.lease),
                *(["--codec-workers", str(self.codec_workers)] if self.codec_workers else []),
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while b"running" not in self.log_path.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the agent exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start:\n{self.logs()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would: no lease is released, no connection closed cleanly."""
        if self.proc is not None:
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
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
        self.proc = None

    def codec_workers_running(self, pid: int | None = None) -> list[int]:
        """Pids of the codec worker processes whose parent is the agent (`pid`: an agent already killed)."""
        parent = pid if pid is not None else (self.proc.pid if self.proc is not None else None)
        return [p for p in codec_worker_pids() if parent is None or _parent_of(p) == parent]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def codec_worker_pids() -> list[int]:
    """Every codec worker process on this machine (`python -m iot.agent.codec_workers`), whoever started it."""
    return running_pids(b"iot.agent.codec_workers")


def _parent_of(pid: int) -> int | None:
    try:
        return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture
def agents(celery_worker, tmp_path):
    made: list[AgentProcess] = []

    def make(
        agent_id: str | None = None, *, heartbeat: float = 0.5, lease: float = 3.0, codec_workers: int | None = None
    ) -> AgentProcess:
        agent_id = agent_id or f"agent-{len(made) + 1}"
        agent = AgentProcess(
            dict(celery_worker.env),
            tmp_path / f"{agent_id}.log",
            agent_id=agent_id,
            heartbeat=heartbeat,
            lease=lease,
            codec_workers=codec_workers,
        )
        made.append(agent)
        return agent.start()

    yield make
    for agent in made:
        agent.stop()
        print(f"--- {agent.agent_id} ---\n{agent.logs()}")  # shown by pytest when the test failed
