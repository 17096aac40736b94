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
    "FIELD_ENCRYPTION_KEYS": "mE5cCDQiC0yVn8uQ9lT2kqvZ6zYhXg1Rb3pJwN4aA7s=",
}


def _manage(*args, env):
    # The browser tests set DJANGO_ALLOW_ASYNC_UNSAFE for the whole pytest
    # process (Playwright runs an event loop); a deployment never has it.
    dropped = (
        "DATABASE_URL",
        "REDIS_URL",
        "DEBUG",
        "SECRET_KEY",
        "CONTROLPLANE_ENV",
        "DJANGO_ALLOW_ASYNC_UNSAFE",
    )
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
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
        # The development default is in every checkout: a key anyone can read signs sessions and reset links.
        (
            {"SECRET_KEY": "insecure-development-key-never-use-in-production-0123456789"},
            "SECRET_KEY must not be the development default",
        ),
        ({"DEBUG": "true"}, "DEBUG must be off"),
        # Sign-up, stored API answers and every credential read back need it: refused at start, not at first use.
        ({"FIELD_ENCRYPTION_KEYS": ""}, "FIELD_ENCRYPTION_KEYS is required"),
        (
            {"FIELD_ENCRYPTION_KEYS": "mE5cCDQiC0yVn8uQ9lT2kqvZ6zYhXg1Rb3pJwN4aA7s=,not-a-key"},
            "FIELD_ENCRYPTION_KEYS: key 2 is not a Fernet key",
        ),
        ({"NOTIFICATION_HISTORY_DAYS": "0"}, "NOTIFICATION_HISTORY_DAYS must be from 1 to 3650"),
        ({"NOTIFICATION_HISTORY_DAYS": "1000000000"}, "NOTIFICATION_HISTORY_DAYS must be from 1 to 3650"),
    ],
)
def test_production_refuses_to_start_when_unsafe(change, message):
    result = _manage("check", env={**PRODUCTION_ENV, **change})
    assert result.returncode != 0
    assert message in result.stderr


def _settings_probe(env, *names):
    expression = ", ".join(f"settings.{name}" for name in names)
    probe = f"from django.conf import settings; print('answer', repr(({expression},)))"
    return _manage("shell", "-c", probe, env=env)


def test_settings_refuse_to_start_when_no_database_url_is_given():
    result = _manage("check", env={**PRODUCTION_ENV, "DATABASE_URL": "", "CONTROLPLANE_ENV_FILE": ""})
    assert result.returncode != 0 and "DATABASE_URL is required" in result.stderr


def test_settings_refuse_sqlite_when_a_database_url_names_it(tmp_path):
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    result = _manage("check", env={**PRODUCTION_ENV, "DATABASE_URL": url, "CONTROLPLANE_ENV_FILE": ""})
    assert result.returncode != 0 and "must name a PostgreSQL database" in result.stderr


def test_env_file_is_read_and_the_environment_wins_when_both_set_a_value(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# as make run writes it\n"
        "CONTROLPLANE_ENV=development\n"
        "DATABASE_URL=postgres://from:file@127.0.0.1:5999/from_file\n"
        "REDIS_URL=redis://127.0.0.1:6999/3\n"
        "SECRET_KEY=from-the-file-0123456789-abcdefghijklmnopqrstuvwxyz\n"
    )
    result = _settings_probe(
        {"CONTROLPLANE_ENV_FILE": str(env_file), "DATABASE_URL": "postgres://from:env@127.0.0.1:5998/from_env"},
        "ENVIRONMENT",
        "SECRET_KEY",
        "REDIS_URL",
        "DATABASES['default']['NAME']",
    )
    answers = [line for line in result.stdout.splitlines() if line.startswith("answer ")]
    assert answers == [
        "answer ('development', 'from-the-file-0123456789-abcdefghijklmnopqrstuvwxyz', "
        "'redis://127.0.0.1:6999/3', 'from_env')"
    ], result.stdout + result.stderr
