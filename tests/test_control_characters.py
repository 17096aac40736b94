"""No control character reaches a broker: every free-text field whose value ends up in a broker's files or a broker's
management API refuses them with a 400 naming the field.

Which fields those are is read from the code, twice over: (1) every DRF serializer of the project is walked and each
field marked `reaches_broker` (controlplane.validators.broker_text) is fed control characters through the endpoints
that take it; (2) the model fields whose values reach a BrokerSpec (what every driver is given, the EMQX API
included) are found by tainting every text column the spec builder reads and looking for the taint in the spec. Each
of those must refuse control characters, and every API field that writes one must carry the marker: a new field
cannot reach a broker unmarked without this test failing.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import connection, models
from django.test.utils import CaptureQueriesContext
from rest_framework import serializers

from controlplane.validators import CONTROL_CHARACTER_CODE, reaches_broker
from tests.api_walk import api_operations, sample_values

# A line feed, NEL (C1), the Unicode line separator and DEL: each breaks some parser on the way to a broker.
BAD_VALUES = ["ok\nok", "ok\x85ok", "ok\u2028ok", "ok\x7fok"]
PROJECT_APPS = (
    "accounts",
    "organizations",
    "projects",
    "audit",
    "notifications",
    "deployments",
    "billing",
    "alerts",
    "networking",
    "iot",
    "console",
    "controlplane",
    "idempotency",
)


# -- the walk over serializers ------------------------------------------------------------------------------------


def _project_serializer_classes() -> list[type[serializers.BaseSerializer]]:
    for app in apps.get_app_configs():
        if app.name in PROJECT_APPS:
            try:
                importlib.import_module(f"{app.name}.api")
            except ModuleNotFoundError:
                pass
    found, queue = [], [serializers.BaseSerializer]
    while queue:
        cls = queue.pop()
        queue.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in PROJECT_APPS and not issubclass(cls, serializers.ListSerializer):
            found.append(cls)
    return sorted(set(found), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _fields(serializer, prefix: str = ""):
    """(dotted path, field) of every writable field, nested serializers and lists of them included."""
    for name, field in serializer.fields.items():
        if field.read_only:
            continue
        path = f"{prefix}{name}"
        if isinstance(field, serializers.ListSerializer):
            yield from _fields(field.child, f"{path}.0.")
        elif isinstance(field, serializers.BaseSerializer):
            yield from _fields(field, f"{path}.")
        else:
            yield path, field


def _body(path: str, value) -> dict:
    """The request body that puts `value` at the dotted `path` (`policies.0.level` -> {"policies": [{"level": …}]})."""
    head, _, rest = path.partition(".")
    if not rest:
        return {head: value}
    index, _, tail = rest.partition(".")
    assert index == "0", path
    return {head: [_body(tail, value)]}


def _request_serializers() -> dict[str, object]:
    """ "METHOD /api/v1/…/{param}" -> the request serializer the OpenAPI document shows for it (drf-spectacular's own
    reading of the views), for every operation with a body."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.settings import spectacular_settings

    generator = SchemaGenerator()
    generator._initialise_endpoints()
    found = {}
    for path, path_regex, method, view in generator._get_paths_and_endpoints():
        if method.lower() not in ("post", "put", "patch"):
            continue
        view.request = spectacular_settings.GET_MOCK_REQUEST(method, path, view, None)
        schema = view.schema
        schema.path, schema.path_regex, schema.path_prefix, schema.method = path, path_regex, "", method.upper()
        serializer = schema.get_request_serializer()
        if isinstance(serializer, type):
            serializer = serializer()
        if isinstance(serializer, serializers.BaseSerializer):
            found[f"{method.upper()} {path}"] = serializer
    return found


def _broker_fields_by_operation() -> dict[str, list[str]]:
    operations = {}
    for key, serializer in _request_serializers().items():
        marked = [path for path, field in _fields(serializer) if reaches_broker(field)]
        if marked:
            operations[key] = marked
    return operations


def test_every_marked_input_field_is_taken_by_some_endpoint():
    """A broker-bound input field no endpoint takes could not be checked by behaviour below: it must not exist.
    (Output serializers built from models carry the models' markers too; they take no input.)"""
    from controlplane.api.serializers import StrictFieldsMixin

    taken = {
        (type(serializer).__qualname__, path)
        for serializer in _request_serializers().values()
        for path, field in _fields(serializer)
        if reaches_broker(field)
    }
    marked = {
        (cls.__qualname__, path)
        for cls in _project_serializer_classes()
        if issubclass(cls, StrictFieldsMixin)
        for path, field in _fields(cls())
        if reaches_broker(field)
    }
    assert marked, "no serializer field is marked as reaching a broker: the marker was lost"
    assert marked <= taken, f"marked but taken by no endpoint: {sorted(marked - taken)}"


@pytest.mark.django_db
@pytest.mark.usefixtures("deployments_catalog")
def test_every_broker_bound_field_answers_400_naming_it_when_given_control_characters(owner_org, key_client):
    client = key_client(owner_org.owner_secret)
    by_operation = _broker_fields_by_operation()
    walked = {str(op): op for op in api_operations()}
    assert by_operation, "no endpoint takes a broker-bound field: the walk found nothing to check"
    checked = []
    for key, paths in sorted(by_operation.items()):
        operation = walked[key]
        for path in paths:
            for value in BAD_VALUES:
                values = sample_values(owner_org, operation.kwargs, route=operation.route)
                response = client.generic(
                    operation.method.upper(),
                    operation.url(values),
                    json.dumps(_body(path, value)),
                    content_type="application/json",
                )
                assert response.status_code == 400, f"{key} {path}={value!r}: {response.status_code}"
                errors = [e for e in response.json()["errors"] if e["field"] == path]
                assert errors and errors[0]["code"] == CONTROL_CHARACTER_CODE, f"{key} {path}={value!r}: {errors}"
                assert "control character" in errors[0]["message"]
            checked.append(f"{key} {path}")
    # The fields of today, as a floor: the walk must at least find these (it finds any new one by itself).
    assert {
        "POST /api/v1/organizations/{org}/projects/{project}/deployments/{dep}/mqtt-users username",
        "POST /api/v1/organizations/{org}/projects/{project}/deployments/{dep}/acl-rules topic",
        "POST /api/v1/organizations/{org}/projects/{project}/deployments/{dep}/acl-rules username",
        "POST /api/v1/organizations/{org}/projects/{project}/deployments/{dep}/acl-rules client_id",
        "PATCH /api/v1/organizations/{org}/projects/{project}/deployments/{dep}/acl-rules/{rule} topic",
    } <= set(checked)


# -- what reaches a broker, found by tainting what the spec builder reads -------------------------------------------


def _models_read_by(function, *args) -> tuple[set[type[models.Model]], object]:
    tables = {model._meta.db_table: model for model in apps.get_models()}
    with CaptureQueriesContext(connection) as queries:
        result = function(*args)
    read = set()
    for query in queries.captured_queries:
        for table in re.findall(r'(?:FROM|JOIN) "(\w+)"', query["sql"]):
            if table in tables:
                read.add(tables[table])
    return read, result


def _text_fields(model) -> list[models.Field]:
    return [
        f
        for f in model._meta.concrete_fields
        if isinstance(f, (models.CharField, models.TextField, models.GenericIPAddressField))
        and f.editable
        and not f.primary_key
        and not f.choices
    ]


def _strings(value):
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.django_db
@pytest.mark.usefixtures("deployments_catalog")
def test_every_field_whose_value_reaches_a_broker_refuses_control_characters_at_every_entry(owner_org):
    from deployments import services
    from deployments.models import AclRule, Deployment
    from deployments.reconcile import build_spec

    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="taint", plan="dedicated", tier="1k", region="local"
    )
    services.mqtt_user_create(deployment=deployment, actor=None, username="taint-user", password="taint password")
    services.acl_rule_create(
        deployment=deployment, actor=None, permission="allow", action="all", topic="taint/#", username="taint-user"
    )
    services.rate_limits_replace(deployment=deployment, actor=None, policies=[{"level": "global", "messages_rate": 9}])
    # A rule for a client id, which the API refuses in a local region but the spec carries for any region.
    AclRule.objects.create(
        deployment=deployment, position=1, permission="allow", action="all", topic="taint/c/#", client_id="taint-c"
    )
    read, _ = _models_read_by(build_spec, Deployment.objects.get(pk=deployment.pk))

    # Every text column of every row the builder reads gets its own recognisable value.
    sentinels: dict[str, tuple[type[models.Model], str]] = {}
    for model in read:
        if model is Deployment:
            rows = model.objects.filter(pk=deployment.pk)
        elif any(f.related_model is Deployment for f in model._meta.concrete_fields if f.is_relation):
            rows = model.objects.filter(deployment=deployment)
        else:
            related = [f.name for f in Deployment._meta.concrete_fields if f.is_relation and f.related_model is model]
            rows = model.objects.filter(pk__in=[getattr(deployment, f"{name}_id") for name in related])
        for row in rows:
            for field in _text_fields(model):
                if getattr(row, field.attname) is None:
                    continue  # left empty, as the row's constraints may require
                n = len(sentinels) + 1
                value = f"10.99.{n}.1" if isinstance(field, models.GenericIPAddressField) else f"zq{n}zq"
                sentinels[value] = (model, field.name)
                model.objects.filter(pk=row.pk).update(**{field.name: value})
    spec = build_spec(Deployment.objects.get(pk=deployment.pk))
    seen = " ".join(_strings(spec))
    reaching = {sentinels[value] for value in sentinels if value in seen}
    assert reaching, "no column reaches the spec: the taint was lost"

    # (a) The model field refuses control characters (admin forms, full_clean).
    for model, name in sorted(reaching, key=str):
        field = model._meta.get_field(name)
        for value in BAD_VALUES:
            with pytest.raises(ValidationError):
                field.clean(value, None)

    # (b) Every API field that writes one is marked, so the walk above feeds it control characters.
    unmarked = []
    for key, serializer in _request_serializers().items():
        operation = next(op for op in api_operations() if str(op) == key)
        queryset = getattr(operation.view_class, "queryset", None)
        model = queryset.model if queryset is not None else None
        for path, field in _fields(serializer):
            if (model, field.source) in reaching and not reaches_broker(field):
                unmarked.append(f"{key} {path}")
    assert unmarked == []
