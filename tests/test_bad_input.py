"""Bad input gets a clear 4xx problem naming the field, never a 500, and changes nothing."""

import base64
from urllib.parse import urlencode

import pytest

from audit.models import AuditEvent
from projects.models import Project
from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db


@pytest.fixture
def projects_url(owner_org):
    return f"/api/v1/organizations/{owner_org.id}/projects"


def _assert_problem(response, status, field=None):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and "type" in body
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "name"),
        ({"name": 12}, "name"),
        ({"name": True}, "name"),
        ({"name": None}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "ok", "description": "d" * 501}, "description"),
        ({"name": "ok", "colour": "blue"}, "colour"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_project_body_is_refused_with_field_error(body, field, owner_org, key_client, projects_url):
    before = (Project.objects.count(), AuditEvent.objects.count())
    _assert_problem(key_client(owner_org.owner_secret).post(projects_url, body, format="json"), 400, field)
    assert (Project.objects.count(), AuditEvent.objects.count()) == before


def test_malformed_json_is_refused(owner_org, key_client, projects_url):
    response = key_client(owner_org.owner_secret).post(
        projects_url, data='{"name": "x"', content_type="application/json"
    )
    _assert_problem(response, 400)
    assert "JSON" in response.json()["detail"]


def test_json_array_body_is_refused(owner_org, key_client, projects_url):
    _assert_problem(key_client(owner_org.owner_secret).post(projects_url, [1, 2], format="json"), 400)


def test_form_encoded_body_is_refused(owner_org, key_client, projects_url):
    response = key_client(owner_org.owner_secret).post(
        projects_url, data="name=x", content_type="application/x-www-form-urlencoded"
    )
    _assert_problem(response, 415)


def test_body_over_one_mebibyte_is_refused(owner_org, key_client, projects_url):
    body = '{"name": "' + "x" * (1024 * 1024) + '"}'
    _assert_problem(
        key_client(owner_org.owner_secret).post(projects_url, data=body, content_type="application/json"), 413
    )
    assert Project.objects.count() == 1


def test_unknown_url_under_api_is_problem_json(api):
    _assert_problem(api.get("/api/v1/no-such-thing"), 404)


def test_missing_credentials_answer_401(api, owner_org):
    response = api.get(f"/api/v1/organizations/{owner_org.id}/projects")
    _assert_problem(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_garbage_bearer_token_answers_401(key_client, owner_org):
    _assert_problem(key_client("cpk_nothing_here").get(f"/api/v1/organizations/{owner_org.id}"), 401)
    _assert_problem(key_client("x" * 5000).get(f"/api/v1/organizations/{owner_org.id}"), 401)


def test_invalid_cursor_is_refused(owner_org, key_client, projects_url):
    _assert_problem(key_client(owner_org.owner_secret).get(projects_url + "?cursor=%%%garbage"), 400, "cursor")


def _cursor(position: str) -> str:
    """A cursor as DRF encodes one (base64 of `p=<position>`): opaque to clients, but anyone can write one."""
    return base64.b64encode(urlencode({"p": position}).encode()).decode()


@pytest.mark.parametrize(
    "path,position",
    [
        ("acl-rules", "abc"),  # ordered by an integer column: int("abc") fails in the query's preparation
        ("devices", "a\x00"),  # ordered by text: PostgreSQL refuses the NUL
    ],
)
def test_cursor_whose_position_the_ordering_cannot_hold_is_refused_when_followed(path, position, owner_org, key_client):
    dep = premium_deployment(owner_org)
    url = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments/{dep.public_id}"
    response = key_client(owner_org.owner_secret).get(f"{url}/{path}", {"cursor": _cursor(position)})
    _assert_problem(response, 400, "cursor")
    assert response.json()["errors"] == [{"field": "cursor", "message": "This cursor is not valid.", "code": "invalid"}]


def test_nul_in_an_id_of_the_path_answers_404_when_requested(owner_org, key_client):
    api = key_client(owner_org.owner_secret)
    project = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}"
    for path in (
        "/api/v1/organizations/org_%00",
        f"/api/v1/organizations/{owner_org.id}/projects/prj_%00/deployments",
        f"{project}/deployments/dep_%00/acl-rules",
    ):
        _assert_problem(api.get(path), 404)


@pytest.mark.parametrize("size", ["0", "201", "ten", "-1", "%C2%B2", "1" * 5000])
def test_invalid_page_size_is_refused(size, owner_org, key_client, projects_url):
    _assert_problem(key_client(owner_org.owner_secret).get(f"{projects_url}?page_size={size}"), 400, "page_size")


def test_invalid_filter_value_is_refused(owner_org, key_client):
    response = key_client(owner_org.owner_secret).get(
        f"/api/v1/organizations/{owner_org.id}/audit-events?since=yesterday"
    )
    _assert_problem(response, 400, "since")


def test_filter_instant_with_an_offset_postgresql_lacks_is_answered_in_utc(owner_org, key_client):
    """Python reads UTC offsets up to 23:59, PostgreSQL only up to 15:59: the bound reaches the database in UTC."""
    client = key_client(owner_org.owner_secret)
    base = f"/api/v1/organizations/{owner_org.id}/audit-events"
    assert client.get(base + "?until=2000-01-01T00:00:00%2B22:05").json()["results"] == []
    assert len(client.get(base + "?since=2000-01-01T00:00:00%2B22:05").json()["results"]) >= 1
    _assert_problem(client.get(base + "?until=0001-01-01T00:00:00%2B22:05"), 400, "until")


@pytest.mark.parametrize("debug", [True, False])
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_unknown_url_under_api_is_problem_json_when_debug_is(debug, method, api, settings):
    settings.DEBUG = debug
    response = getattr(api, method)("/api/v1/organizations/org_x/no-such-collection", format="json")
    _assert_problem(response, 404)


def test_api_docs_without_trailing_slash_still_redirect(api):
    response = api.get("/api/docs")
    assert response.status_code == 301 and response["Location"] == "/api/docs/"


def test_unknown_url_under_api_is_problem_json_when_settings_are_production():
    import os
    import subprocess
    import sys

    from tests.test_production_settings import PRODUCTION_ENV, ROOT

    probe = (
        "from django.test import Client; c = Client(HTTP_HOST='cloud.example.com');"
        "r = c.get('/api/v1/nothing/here', secure=True); print('answer', r.status_code, r['Content-Type']);"
        "r = c.post('/api/v2/anything', data='{}', content_type='application/json', secure=True);"
        "print('answer', r.status_code, r['Content-Type'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY")}
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe],
        cwd=ROOT,
        env={**env, **PRODUCTION_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answers = [line for line in result.stdout.splitlines() if line.startswith("answer ")]
    assert answers == ["answer 404 application/problem+json"] * 2, result.stdout
