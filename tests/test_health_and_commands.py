import io
import json
import logging

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from organizations.models import Organization


@pytest.mark.django_db
def test_probes_answer_when_database_and_redis_are_up(client, redis_clean):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "rate_limits": "shared (Redis)"},
    }


@pytest.mark.django_db
def test_readiness_is_degraded_but_ready_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded" and ready.json()["checks"]["redis"].startswith("error")


def test_readiness_fails_when_the_database_is_unreachable():
    """In a process of its own whose DATABASE_URL names a port nothing listens on."""
    import os
    import subprocess
    import sys

    probe = (
        "from django.test import Client; r = Client().get('/readyz');"
        "print('answer', r.status_code, r.json()['status'], r.json()['checks']['database'])"
    )
    env = {**os.environ, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", "CONTROLPLANE_ENV": "test"}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    answers = [line for line in result.stdout.splitlines() if line.startswith("answer ")]
    assert answers == ["answer 503 unavailable error: OperationalError"], result.stdout + result.stderr


@pytest.mark.django_db
def test_create_organization_prints_id_and_owner_key():
    out = io.StringIO()
    call_command(
        "create_organization",
        "--name",
        "Acme",
        "--owner-email",
        "boss@acme.example",
        "--password",
        "a fine long passphrase",
        "--api-key",
        stdout=out,
        stderr=io.StringIO(),
    )
    lines = out.getvalue().strip().splitlines()
    org = Organization.objects.get(public_id=lines[0])
    assert org.name == "Acme" and lines[-1].startswith("cpk_")
    assert User.objects.get(email="boss@acme.example").check_password("a fine long passphrase")
    from organizations.services import api_key_authenticate

    assert api_key_authenticate(lines[-1]).key.role == "owner"


@pytest.mark.django_db
def test_create_organization_refuses_bad_input():
    # Each refusal names what is at fault: the service's field message, the password validators' message.
    with pytest.raises(CommandError, match=r"^name: Ensure this value has at most 100 characters"):
        call_command("create_organization", "--name", "x" * 101, "--owner-email", "a@b.example", stdout=io.StringIO())
    with pytest.raises(CommandError, match="This password is too short"):
        call_command(
            "create_organization",
            "--name",
            "Acme",
            "--owner-email",
            "a@b.example",
            "--password",
            "123",
            stdout=io.StringIO(),
        )
    assert not Organization.objects.exists()


def test_json_log_lines_carry_the_request_id():
    from pythonjsonlogger.json import JsonFormatter

    from controlplane import context
    from controlplane.logging import RequestContextFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter("%(levelname)s %(message)s %(request_id)s %(operation_id)s"))
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    token = context.bind(request_id="req-123456", operation_id="op_abc")
    try:
        logger.warning("hello")
    finally:
        context.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["request_id"] == "req-123456" and line["operation_id"] == "op_abc" and line["message"] == "hello"


@pytest.mark.django_db
def test_json_log_carries_no_query_string_when_a_refused_request_is_logged(client, settings):
    """Django logs every 4xx and 5xx answer with the request; the production JSON formatter writes each extra
    attribute of a record, so the request went into the log with its query string: here a still-valid invitation
    token, which lets whoever reads the log join the organization."""
    import logging.config

    from organizations import services
    from organizations.roles import Role
    from tests.factories import UserFactory, make_organization

    org = make_organization()
    invitee = UserFactory()  # has an account already: accepting while signed out is refused, the token stays valid
    _invitation, token = services.invitation_create(
        organization=org.organization, actor=None, email=invitee.email, roles=[Role.AUDITOR]
    )
    config = settings.LOGGING
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logging.config.DictConfigurator(config).configure_filter(config["filters"]["request_context"]))
    handler.setFormatter(logging.config.DictConfigurator(config).configure_formatter(config["formatters"]["json"]))
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        response = client.post(f"/console/invitations/accept?token={token}", {"full_name": "", "password": ""})
    finally:
        logger.removeHandler(handler)
    assert response.status_code >= 400
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and lines[0]["logger"] == "django.request"
    assert token not in stream.getvalue()
