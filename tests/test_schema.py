"""The OpenAPI document: valid with no warnings, and the running API conforms to it (schemathesis, bounded)."""

import collections
import types

import pytest
import schemathesis
from django.core.management import call_command
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api_walk import api_operations, sample_values
from tests.conftest import SUMMARY_LINES


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "/api/v1/organizations/{org}/api-keys/{key}/rotate" in text
    assert "application/problem+json" in text and "Idempotency-Key" in text


@pytest.mark.django_db
def test_docs_pages_render(client):
    # Swagger UI's start-up script is a file of its own (the CSP allows no inline script); it names the schema.
    for url in ("/api/docs/?script=", "/api/redoc/"):
        response = client.get(url)
        assert response.status_code == 200
        assert b"/api/schema/" in response.content
    docs = client.get("/api/docs/").content
    assert b"sidecar" in docs  # assets served locally, not from a CDN
    assert b"<script>" not in docs and b"<script>" not in client.get("/api/redoc/").content


@pytest.mark.django_db
def test_document_is_built_once_and_served_alike_in_every_format_whatever_the_query_when_asked_again(
    client, monkeypatch
):
    import gzip

    import yaml
    from drf_spectacular.generators import SchemaGenerator

    from controlplane.api.schema_view import OpenApiDocumentView

    monkeypatch.setattr(OpenApiDocumentView, "_rendered", {})
    monkeypatch.setattr(OpenApiDocumentView, "_document", None)
    builds = []
    real = SchemaGenerator.get_schema

    def counted(self, *args, **kwargs):
        builds.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SchemaGenerator, "get_schema", counted)
    as_yaml = client.get("/api/schema/")
    as_json = client.get("/api/schema/?format=json&lang=fr&version=9&anything=1")
    again = client.get("/api/schema/?format=json", HTTP_ACCEPT_ENCODING="gzip")
    assert builds == [1]
    assert as_yaml.status_code == as_json.status_code == again.status_code == 200
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    assert as_json["Content-Type"].startswith("application/vnd.oai.openapi+json")
    # libyaml's parser (PyYAML's pure-Python one takes seconds over this document); the same safe constructors.
    document = yaml.load(as_yaml.content, Loader=yaml.CSafeLoader)
    assert document == as_json.json() and "/api/v1/organizations/{org}/projects" in document["paths"]
    assert again["Content-Encoding"] == "gzip" and len(again.content) < len(as_json.content) / 4
    assert gzip.decompress(again.content) == as_json.content


@pytest.fixture
def api_schema(transactional_db, redis_clean, settings):
    # Transactional: Django's WSGI handler closes the connection after each request, which would end a test
    # transaction; here every request commits, as in production, and the tables are flushed once afterwards (the run
    # is one test, a subtest per operation). Kept so on purpose: in a test transaction rolled back at the end, code
    # that needs a transaction and forgot to open one (select_for_update, controlplane.db.xact_lock) would pass here
    # and answer 500 in production, and on_commit work would never run. The flush costs well under 1% of the run.
    from controlplane.wsgi import application

    settings.RATE_LIMITS_ENABLED = False
    # The JSON rendering: the same document as the YAML one, key for key and in the same order (so the same generated
    # cases), without seconds of YAML parsing.
    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


schema = schemathesis.pytest.from_fixture("api_schema")


# Every documented operation, by its name in the document ("GET /api/v1/organizations/{org}"), with the URL route
# that serves it: its path parameters get real objects of the caller's organization from tests/api_walk.py.
ROUTED = {str(op): op for op in api_operations()}
# Operation -> statuses it answered across its examples; read by fuzz_world's teardown and the run's summary.
ANSWERS: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)


# Found once the run reached the handlers with real ids, not yet fixed (their apps' owners: alerts, deployments, iot).
# For these only, the document is not checked against the answer (no 5xx is still checked); an entry whose operation
# is gone fails, so the list only shrinks.
KNOWN_NONCONFORMING: dict[str, str] = {}


def test_known_nonconforming_operations_still_exist():
    assert set(KNOWN_NONCONFORMING) - set(ROUTED) == set()


@pytest.fixture
def fuzz_world(deployments_catalog, owner_org):
    """The caller's organization (its Owner's API key makes every call), shared by every operation's examples (one
    test, with a subtest per operation); `values` holds each operation's real path parameters, `names` the operations
    that ran. After they ran, an operation with path parameters must have reached its handler (an answer other than
    404) at least once, or the real ids did not reach it and the run proved nothing for it."""
    world = types.SimpleNamespace(org=owner_org, names=set(), values={})
    yield world
    unreached = {
        name: dict(ANSWERS[name]) for name in world.names if ROUTED[name].kwargs and set(ANSWERS[name]) == {404}
    }
    assert unreached == {}, "every example answered 404 with real path parameters"


def _summary_line() -> str:
    calls = sum(sum(answers.values()) for answers in ANSWERS.values())
    statuses: collections.Counter[int] = collections.Counter()
    for answers in ANSWERS.values():
        statuses.update(answers)
    return (
        f"schemathesis: {len(ANSWERS)} of {len(ROUTED)} operations ran, {calls} calls, "
        f"statuses {dict(sorted(statuses.items()))}"
    )


@pytest.fixture(scope="module", autouse=True)
def _report_operations_run():
    yield
    if ANSWERS:
        SUMMARY_LINES.append(_summary_line())


@pytest.mark.slow  # a few minutes: every operation, four generated cases each
@pytest.mark.longest  # the suite's longest module: started first, so it does not end the run alone
@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@hypothesis_settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_never_errors_and_conforms_to_schema(case, fuzz_world):
    name = f"{case.operation.method.upper()} {case.operation.path}"
    route = ROUTED[name]
    fuzz_world.names.add(name)
    if route.kwargs:
        # Real objects, made at the operation's first example and kept for the rest (objects are what the run costs);
        # the generated values are dropped whole: made-up ids would only ever meet a 404. After a DELETE the later
        # examples meet a 404, which fuzz_world accepts once an example reached the handler.
        if name not in fuzz_world.values:
            fuzz_world.values[name] = sample_values(fuzz_world.org, route.kwargs, route=route.route)
        case.path_parameters = dict(fuzz_world.values[name])
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {fuzz_world.org.owner_secret}"}
    response = case.call()
    if case.method.upper() == case.operation.method.upper():  # not the 405 probes of methods the path lacks
        ANSWERS[name][response.status_code] += 1
    # Left out: positive_data_acceptance (business rules rightly refuse some schema-valid bodies — a duplicate name,
    # a role above the caller's — with a documented 4xx), negative_data_rejection (list filters ignore a value they
    # cannot parse, as django-filter does; bodies are strict and tested in test_bad_input), and ignored_auth (this
    # test replaces the generated credentials with a valid key on purpose; authentication has its own tests). What
    # stays includes not_a_server_error (no 5xx) and the response's conformance to the document.
    excluded = [positive_data_acceptance, negative_data_rejection, ignored_auth]
    if name in KNOWN_NONCONFORMING:
        excluded += [response_schema_conformance, status_code_conformance]
    case.validate_response(response, excluded_checks=excluded)


def test_every_operation_documents_an_example_and_its_errors(tmp_path):
    import json

    out = tmp_path / "schema.json"
    call_command("spectacular", "--format", "openapi-json", "--file", str(out))
    document = json.loads(out.read_text())
    missing_example, missing_errors = [], []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            success = [responses[code] for code in responses if code.startswith("2")]
            bodies = [body for response in success for body in (response.get("content") or {}).values()]
            if bodies and not any("example" in body or "examples" in body for body in bodies):
                missing_example.append(f"{method.upper()} {path}")
            if not {"400", "429"} <= set(responses):
                missing_errors.append(f"{method.upper()} {path}")
            for code in {"429", "503"} & set(responses):
                assert "Retry-After" in responses[code].get("headers", {}), (method, path, code)
    assert missing_example == []
    assert missing_errors == []
    # The operations that wait on an outside service (Stripe, DNS) say they answer 503 while it is down; no other does.
    unavailable = sorted(
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "503" in operation["responses"]
    )
    assert unavailable == [
        "PATCH /api/v1/organizations/{org}/notification-channels/{channel}",
        "POST /api/v1/organizations/{org}/billing/checkout-session",
        "POST /api/v1/organizations/{org}/billing/setup-intent",
        "POST /api/v1/organizations/{org}/notification-channels",
    ]
