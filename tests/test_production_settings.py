"""Production settings: `check --deploy` is clean, and unsafe starts are refused."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCTION_ENV = {
    "CONTROLPLANE_ENV": "production",
    "SECRET_KEY": "x" * 30 + "production-grade-secret-key-0123456789abcdef",
    "ALLOWED_HOSTS": "cloud.example.com",
    "DATABASE_URL": "postgres://cp:cp@db.internal:5432/controlplane",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "PUBLIC_URL": "https://cloud.example.com",
    "METRICS_TOKEN": "scrape-token",
}


def _manage(*args, env):
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_passes_with_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "change,message",
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY is required"),
        ({"DEBUG": "true"}, "DEBUG must be off"),
    ],
)
def test_production_refuses_to_start_when_unsafe(change, message):
    result = _manage("check", env={**PRODUCTION_ENV, **change})
    assert result.returncode != 0
    assert message in result.stderr
