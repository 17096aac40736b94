"""Every integer a client can send is bounded to fit where it is stored, and bodies are bounded before parsing.

The serializers are found from the code, not listed: the OpenAPI generator walks every route, and each serializer it
resolves as a request body is walked field by field (nested serializers and list children included). A new input
field without bounds fails here without anyone adding it to a list.
"""

from __future__ import annotations

import json
from unittest import mock

import pytest
from django.apps import apps
from django.db import connection, models
from rest_framework import serializers

from controlplane.api.problems import _flatten

INT64 = (-(2**63), 2**63 - 1)


def _request_serializers() -> dict[str, serializers.BaseSerializer]:
    """Every serializer the API reads a request body with, by class path."""
    from drf_spectacular import openapi
    from drf_spectacular.generators import SchemaGenerator

    found: dict[str, serializers.BaseSerializer] = {}
    original = openapi.AutoSchema._get_request_for_media_type

    def recording(self, serializer, direction="request"):
        for candidate in serializer.values() if isinstance(serializer, dict) else [serializer]:
            if isinstance(candidate, type) and issubclass(candidate, serializers.BaseSerializer):
                candidate = candidate()
            if isinstance(candidate, serializers.ListSerializer):
                candidate = candidate.child
            if isinstance(candidate, serializers.Serializer):
                found[f"{type(candidate).__module__}.{type(candidate).__qualname__}"] = candidate
        return original(self, serializer, direction)

    with mock.patch.object(openapi.AutoSchema, "_get_request_for_media_type", recording):
        SchemaGenerator().get_schema(request=None, public=True)
    return found


def _column_ranges() -> dict[str, tuple[int, int]]:
    """The narrowest integer column of each field name across the project's models."""
    ranges: dict[str, tuple[int, int]] = {}
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, models.IntegerField) and not field.primary_key:
                low, high = connection.ops.integer_field_range(field.get_internal_type())
                low = INT64[0] if low is None else low
                high = INT64[1] if high is None else high
                old = ranges.get(field.name, INT64)
                ranges[field.name] = (max(old[0], low), min(old[1], high))
    return ranges


def _integer_fields(serializer: serializers.Serializer, prefix: str = ""):
    """(dotted path, field, the data that puts a value there) for every writable integer field, nested ones too."""
    for name, field in serializer.fields.items():
        if field.read_only:
            continue
        path = f"{prefix}{name}"
        many = isinstance(field, (serializers.ListSerializer, serializers.ListField))
        inner = getattr(field, "child", None) if many else field
        if isinstance(inner, serializers.Serializer):
            for sub_path, sub_field, wrap in _integer_fields(inner, f"{path}.0." if many else f"{path}."):
                yield sub_path, sub_field, (lambda v, n=name, m=many, w=wrap: {n: [w(v)] if m else w(v)})
        elif isinstance(inner, serializers.IntegerField):
            yield (f"{path}.0" if many else path), inner, (lambda v, n=name, m=many: {n: [v] if m else v})


def _model_column(serializer: serializers.Serializer, path: str) -> tuple[int, int] | None:
    """The exact column behind a ModelSerializer's own field, when it maps to one."""
    meta = getattr(serializer, "Meta", None)
    if "." in path or meta is None or not hasattr(meta, "model"):
        return None
    source = serializer.fields[path].source
    try:
        field = meta.model._meta.get_field(source)
    except Exception:  # noqa: BLE001 - a computed or renamed field has no column of its own
        return None
    if not isinstance(field, models.IntegerField):
        return None
    low, high = connection.ops.integer_field_range(field.get_internal_type())
    return (INT64[0] if low is None else low, INT64[1] if high is None else high)


@pytest.fixture(scope="module")
def request_serializers(django_db_blocker):
    with django_db_blocker.unblock():
        return _request_serializers()


def test_request_serializers_are_found_when_walking_the_routes(request_serializers):
    # The walk must reach serializers of every app that takes input, or it proves nothing.
    modules = {name.split(".")[0] for name in request_serializers}
    assert {"organizations", "projects", "deployments", "alerts", "billing"} <= modules, sorted(request_serializers)
    assert "deployments.api.DeploymentRateLimitsUpdateSerializer" in request_serializers


def test_every_input_integer_has_bounds_that_fit_its_column_when_declared(request_serializers):
    columns = _column_ranges()
    problems, walked = [], 0
    for name, serializer in sorted(request_serializers.items()):
        for path, field, _ in _integer_fields(serializer):
            walked += 1
            where = f"{name}.{path}"
            if field.min_value is None or field.max_value is None:
                problems.append(f"{where}: no min_value/max_value")
                continue
            low, high = _model_column(serializer, path) or columns.get(path.rsplit(".", 1)[-1], INT64)
            if field.min_value < low or field.max_value > high:
                problems.append(f"{where}: [{field.min_value}, {field.max_value}] exceeds its column [{low}, {high}]")
    assert walked >= 10, f"only {walked} integer fields found: the walk is broken"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("value", [10**30, -(10**30)])
def test_every_input_integer_refuses_a_huge_value_naming_the_field_when_sent(request_serializers, value):
    unnamed = []
    for name, serializer in sorted(request_serializers.items()):
        for path, _field, wrap in _integer_fields(serializer):
            candidate = type(serializer)(data=wrap(value), partial=True, context={"request": None})
            valid = candidate.is_valid()
            fields = {e["field"] for e in _flatten(candidate.errors)} if not valid else set()
            if path not in fields:
                unnamed.append(f"{name}.{path}: {'accepted' if valid else dict(candidate.errors)}")
    assert not unnamed, "\n".join(unnamed)


# --- through the API ------------------------------------------------------------------------------------------------


def _problem(response, status):
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


@pytest.fixture
def rate_limits_url(owner_org, deployment):
    return (
        f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}"
        f"/deployments/{deployment.public_id}/rate-limits"
    )


@pytest.fixture
def deployment(owner_org, deployments_catalog):
    from deployments import services

    created, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="bounded", plan="dedicated", tier="1k", region="local"
    )
    return created


@pytest.mark.django_db
@pytest.mark.parametrize("value", [10**30, -(10**30), 2**31, 2**63])
def test_rate_limit_out_of_column_range_answers_400_naming_the_field_when_put(
    value, owner_org, key_client, rate_limits_url
):
    from deployments.models import RateLimitPolicy

    body = {"policies": [{"level": "listener", "max_conn_rate": value}]}
    response = key_client(owner_org.owner_secret).put(rate_limits_url, body, format="json")
    problem = _problem(response, 400)
    assert any(e["field"] and e["field"].endswith("max_conn_rate") for e in problem["errors"]), problem
    assert not RateLimitPolicy.objects.exists()


@pytest.mark.django_db
def test_json_nested_100000_deep_answers_400_when_posted(owner_org, key_client):
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    for body in ("[" * 100_000, '{"a":' * 100_000, "[" * 33 + "]" * 33):
        problem = _problem(
            key_client(owner_org.owner_secret).post(url, data=body, content_type="application/json"), 400
        )
        assert "nest deeper than 32" in problem["detail"]


@pytest.mark.django_db
def test_json_nested_32_deep_is_parsed_when_posted(owner_org, key_client):
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    body = json.dumps({"name": "deep", "description": "[[[{{" * 50, "x": json.loads("[" * 31 + "]" * 31)})
    response = key_client(owner_org.owner_secret).post(url, data=body, content_type="application/json")
    problem = _problem(response, 400)  # parsed, then refused by the field check: the unknown field `x`
    assert [e["field"] for e in problem["errors"]] == ["x"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "literal,words",
    [("1" * 41, "more than 40 digits"), ("-" + "9" * 5000, "more than 40 digits"), ("1e400", "too large"),
     ("NaN", "not a JSON number"), ("-Infinity", "not a JSON number")],
)  # fmt: skip
def test_json_number_no_column_could_hold_answers_400_when_posted(literal, words, owner_org, key_client):
    url = f"/api/v1/organizations/{owner_org.id}/projects"
    body = '{"name": "n", "description": ' + literal + "}"
    problem = _problem(key_client(owner_org.owner_secret).post(url, data=body, content_type="application/json"), 400)
    assert words in problem["detail"] and problem["detail"].startswith("JSON parse error")


def test_nesting_scan_ignores_brackets_inside_strings_when_counting():
    from controlplane.api.parsers import nesting_depth_exceeds

    assert not nesting_depth_exceeds(json.dumps({"s": "[" * 1000, "t": '\\"[{' * 100}), 32)
    assert nesting_depth_exceeds("[" * 33 + "]" * 33, 32)
    assert not nesting_depth_exceeds("[" * 32 + "]" * 32, 32)
    assert nesting_depth_exceeds('{"a": "]]]]", "b": ' + "[" * 33, 32)
