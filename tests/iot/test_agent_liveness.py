"""A real platform agent touches its liveness file on every pass of its loop, which the chart's liveness probe reads:
an agent whose loop hangs stops touching it and is restarted."""

import time

import pytest

from tests.celery_worker import worker_env
from tests.iot.agent_process import AgentProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_agent_touches_its_liveness_file_on_every_loop_when_running(brokers_dir, tmp_path):
    alive = tmp_path / "agent.alive"
    env = {**worker_env(brokers_dir), "IOT_AGENT_LIVENESS_FILE": str(alive)}
    agent = AgentProcess(env, tmp_path / "agent.log", agent_id="agent-liveness", heartbeat=0.5, lease=3.0).start()
    try:
        deadline = time.monotonic() + 30
        while not alive.exists():
            assert time.monotonic() < deadline, f"the agent wrote no liveness file:\n{agent.logs()}"
            time.sleep(0.05)
        first = alive.stat().st_mtime_ns
        deadline = time.monotonic() + 10
        while alive.stat().st_mtime_ns <= first:
            assert time.monotonic() < deadline, f"the agent did not touch its liveness file again:\n{agent.logs()}"
            time.sleep(0.05)
    finally:
        agent.stop()
