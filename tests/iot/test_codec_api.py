"""Schemas, versions, try-it calls and codec rules through the REST API: contracts, bad input (nothing half-made),
compatibility, the EMQX rendering against the EMQX API fake, the codec_failures metric and its default alert rule."""

import base64
import json

import pytest

from tests.iot.conftest import premium_deployment

pytestmark = pytest.mark.django_db

PROBLEM = "application/problem+json"
PROTO = """syntax = "proto3";
package sensors;
message Reading {
  string device = 1;
  double temperature = 2;
  int32 humidity = 3;
}
"""
AVRO = {
    "type": "record",
    "name": "Reading",
    "fields": [{"name": "device", "type": "string"}, {"name": "temperature", "type": "float"}],
}
JSON_SCHEMA = {"type": "object", "required": ["t"], "properties": {"t": {"type": "number"}}}


def fields(response):
    assert response["Content-Type"] == PROBLEM, response.content[:300]
    return {e["field"]: e["message"] for e in response.json()["errors"]}


def make_schema(client, base, name="reading", type_="protobuf", source=PROTO, **extra):
    body = {"name": name, "type": type_, "source": source if isinstance(source, str) else json.dumps(source), **extra}
    if type_ == "protobuf":
        body.setdefault("message_type", "Reading")
    response = client.post(f"{base}/schemas", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_protobuf_schema_is_compiled_and_tried_when_registered(client, base):
    body = make_schema(client, base)
    assert body["type"] == "protobuf" and body["latest_version"] == 1
    assert body["latest"]["message_type"] == "sensors.Reading"
    encoded = client.post(
        f"{base}/schemas/reading/encode", {"payload": {"device": "d-1", "temperature": 21.5}}, format="json"
    )
    assert encoded.status_code == 200, encoded.content
    payload = encoded.json()["payload_base64"]
    decoded = client.post(f"{base}/schemas/reading/decode", {"payload_base64": payload}, format="json")
    assert decoded.status_code == 200, decoded.content
    assert decoded.json() == {"result": {"device": "d-1", "temperature": 21.5}}


def test_try_it_answers_the_exact_error_when_the_payload_does_not_decode(client, base):
    make_schema(client, base)
    response = client.post(
        f"{base}/schemas/reading/decode",
        {"payload_base64": base64.b64encode(b"\xff\xff\xff").decode()},
        format="json",
    )
    assert response.status_code == 400
    assert "not a sensors.Reading message" in fields(response)["payload_base64"]
    assert response.json()["errors"][0]["code"] == "decode-failed"
    bad = client.post(f"{base}/schemas/reading/decode", {"payload_base64": "%%%"}, format="json")
    assert "base64" in fields(bad)["payload_base64"]
    wrong = client.post(f"{base}/schemas/reading/encode", {"payload": {"temperature": "hot"}}, format="json")
    assert wrong.status_code == 400 and "sensors.Reading" in fields(wrong)["payload"]


def test_a_proto_that_does_not_compile_answers_protocs_message_and_creates_nothing(client, base):
    from iot.models import Schema

    response = client.post(
        f"{base}/schemas",
        {
            "name": "broken",
            "type": "protobuf",
            "source": "syntax = 'proto3';\nmessage A { strng x = 1; }",
            "message_type": "A",
        },
        format="json",
    )
    assert response.status_code == 400
    assert "strng" in fields(response)["source"]
    assert not Schema.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"name": "r", "type": "protobuf", "source": PROTO, "message_type": "Nope"}, "message_type", "sensors.Reading"),
        ({"name": "r", "type": "protobuf", "source": PROTO}, "message_type", "message type"),
        ({"name": "r", "type": "avro", "source": '{"type": "record", "name": "R"}'}, "source", "Avro"),
        ({"name": "r", "type": "avro", "source": "{not json"}, "source", "Not JSON"),
        ({"name": "r", "type": "json_schema", "source": '{"type": 5}'}, "source", "JSON Schema"),
        ({"name": "r x", "type": "json_schema", "source": "{}"}, "name", "A-Z"),
        ({"name": "r", "type": "xml", "source": "{}"}, "type", ""),
        ({"name": "r", "type": "avro", "source": json.dumps(AVRO), "message_type": "X"}, "message_type", "Protobuf"),
        ({"name": "r\x07", "type": "json_schema", "source": "{}"}, "name", ""),
        (
            {"name": "r", "type": "json_schema", "source": '{"$ref": "#/definitions/missing"}'},
            "source",
            "$ref '#/definitions/missing' at / points to nothing in the schema.",
        ),
        (
            {
                "name": "r",
                "type": "json_schema",
                "source": '{"properties": {"t": {"$ref": "https://x.example/r.json"}}}',
            },
            "source",
            "$ref 'https://x.example/r.json' at /properties/t: only references inside the schema",
        ),
        ({"name": "r", "type": "json_schema", "source": '{"$ref": "#"}'}, "source", "A reference leads back to itself"),
        (
            {
                "name": "r",
                "type": "json_schema",
                "source": '{"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, '
                '"b": {"not": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"}',
            },
            "source",
            "A reference leads back to itself",
        ),
    ],
)
def test_a_bad_schema_answers_a_field_problem_and_creates_nothing_when_posted(client, base, body, field, needle):
    from iot.models import Schema

    response = client.post(f"{base}/schemas", body, format="json")
    assert response.status_code == 400, response.content
    assert needle in fields(response)[field]
    assert not Schema.objects.exists()


def test_a_json_schema_whose_references_descend_into_the_value_is_registered_and_tried(client, base):
    tree = {
        "$defs": {
            "node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
        },
        "$ref": "#/$defs/node",
    }
    make_schema(client, base, name="tree", type_="json_schema", source=tree)
    payload = base64.b64encode(b'{"children": [{"children": []}, {"children": 1}]}').decode()
    response = client.post(f"{base}/schemas/tree/decode", {"payload_base64": payload}, format="json")
    assert response.status_code == 400
    assert "children/1/children" in fields(response)["payload_base64"]


@pytest.mark.parametrize(
    "stored",
    [{"$ref": "#/definitions/missing"}, {"$ref": "https://x.example/r.json"}, {"$ref": "#"}],
    ids=["dangling", "remote", "self"],
)
def test_try_it_answers_400_naming_the_payload_when_a_stored_schema_cannot_be_applied(client, base, stored):
    """A version stored before references were checked at registration: try-it says why, never a 500."""
    from iot.codec_models import SchemaVersion

    make_schema(client, base, type_="json_schema", source=JSON_SCHEMA)
    SchemaVersion.objects.filter(schema__name="reading").update(source=json.dumps(stored))
    payload = base64.b64encode(b'{"t": 21.5}').decode()
    decoded = client.post(f"{base}/schemas/reading/decode", {"payload_base64": payload}, format="json")
    encoded = client.post(f"{base}/schemas/reading/encode", {"payload": {"t": 1}}, format="json")
    assert (decoded.status_code, encoded.status_code) == (400, 400)
    assert "the JSON Schema cannot be applied" in fields(decoded)["payload_base64"]
    assert "the JSON Schema cannot be applied" in fields(encoded)["payload"]


def test_try_it_answers_400_naming_the_payload_when_its_json_holds_a_lone_surrogate(client, base):
    make_schema(client, base, name="text", type_="json_schema", source={"type": "string"})
    decoded = client.post(
        f"{base}/schemas/text/decode", {"payload_base64": base64.b64encode(b'"\\ud800"').decode()}, format="json"
    )
    encoded = client.post(f"{base}/schemas/text/encode", data='{"payload": "\\ud800"}', content_type="application/json")
    assert (decoded.status_code, encoded.status_code) == (400, 400)
    assert "not valid Unicode (a lone surrogate)" in fields(decoded)["payload_base64"]
    assert "not valid Unicode (a lone surrogate)" in fields(encoded)["payload"]
    pair = base64.b64encode(b'"\\ud83d\\ude00"').decode()  # a pair of escapes is one character: fine
    assert client.post(f"{base}/schemas/text/decode", {"payload_base64": pair}, format="json").json() == {
        "result": "\U0001f600"
    }


@pytest.mark.parametrize("text", [b'{"t": NaN}', b'{"t": -Infinity}', b'{"t": 1e400}'], ids=["nan", "-inf", "1e400"])
def test_try_it_answers_400_naming_the_payload_when_its_json_holds_a_number_that_is_not_finite(client, base, text):
    # Python's json reads NaN, Infinity and 1e400 (as inf), which JSON cannot carry: the decoded result would say null
    # where the device sent something else. A decode failure, as for any payload that is not JSON.
    make_schema(client, base, name="shape", type_="json_schema", source=JSON_SCHEMA)
    decoded = client.post(
        f"{base}/schemas/shape/decode", {"payload_base64": base64.b64encode(text).decode()}, format="json"
    )
    assert decoded.status_code == 400, decoded.content
    assert "not JSON: a number is NaN or infinite" in fields(decoded)["payload_base64"]


def test_try_it_fails_the_payload_within_the_bound_when_a_pattern_backtracks_without_end(client, base):
    """(a|a)* passes the static check (no quantifier inside the group) but doubles its time with each 'a': the
    match runs under schemas.PATTERN_TIMEOUT instead of holding the request (and the agent) for minutes."""
    import time

    make_schema(client, base, name="serial", type_="json_schema", source={"type": "string", "pattern": "^(a|a)*$"})
    payload = base64.b64encode(b'"' + b"a" * 40 + b'b"').decode()
    started = time.monotonic()
    response = client.post(f"{base}/schemas/serial/decode", {"payload_base64": payload}, format="json")
    assert time.monotonic() - started < 5
    assert response.status_code == 400
    assert "matching pattern '^(a|a)*$' took more than 0.1 s" in fields(response)["payload_base64"]
    fine = client.post(
        f"{base}/schemas/serial/decode", {"payload_base64": base64.b64encode(b'"aaa"').decode()}, format="json"
    )
    assert fine.status_code == 200 and fine.json()["result"] == "aaa"


def test_an_incompatible_version_is_refused_with_the_field_named_when_added(client, base):
    from iot.models import SchemaVersion

    make_schema(client, base, name="avro1", type_="avro", source=AVRO)
    broken = {**AVRO, "fields": [*AVRO["fields"], {"name": "battery", "type": "int"}]}
    response = client.post(f"{base}/schemas/avro1/versions", {"source": json.dumps(broken)}, format="json")
    assert response.status_code == 400
    assert "field battery: added without a default" in fields(response)["source"]
    fine = {**AVRO, "fields": [*AVRO["fields"], {"name": "battery", "type": "int", "default": 100}]}
    added = client.post(f"{base}/schemas/avro1/versions", {"source": json.dumps(fine)}, format="json")
    assert added.status_code == 201 and added.json()["version"] == 2
    assert SchemaVersion.objects.filter(schema__name="avro1").count() == 2

    make_schema(client, base)
    changed = PROTO.replace("double temperature = 2;", "string temperature = 2;")
    response = client.post(f"{base}/schemas/reading/versions", {"source": changed}, format="json")
    assert response.status_code == 400
    assert "sensors.Reading.temperature (number 2): type double became string" in fields(response)["source"]
    assert client.get(f"{base}/schemas/reading").json()["latest_version"] == 1
    versions = client.get(f"{base}/schemas/avro1/versions").json()
    assert [v["version"] for v in versions] == [1, 2]
    assert client.get(f"{base}/schemas/avro1/versions/1").json()["source"] == json.dumps(AVRO)


def rule_body(**extra):
    return {
        "topic_filter": "devices/+/telemetry",
        "direction": "decode",
        "schema": "reading",
        "topic_template": "app/{device_id}/reading",
        **extra,
    }


def test_a_codec_rule_is_created_listed_changed_and_deleted_with_audit_when_valid(client, base):
    from audit.models import AuditEvent

    make_schema(client, base)
    created = client.post(f"{base}/codec-rules", rule_body(name="to json"), format="json")
    assert created.status_code == 201, created.content
    rule = created.json()
    assert rule["id"].startswith("cdr_") and rule["schema_version"] == 1 and rule["enabled"] is True
    assert rule["error_topic"] == f"codec-errors/{rule['id']}"
    assert [r["id"] for r in client.get(f"{base}/codec-rules").json()["results"]] == [rule["id"]]
    changed = client.patch(f"{base}/codec-rules/{rule['id']}", {"enabled": False}, format="json")
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    assert client.delete(f"{base}/schemas/reading").status_code == 409  # a rule uses it
    assert client.delete(f"{base}/codec-rules/{rule['id']}").status_code == 204
    assert client.delete(f"{base}/schemas/reading").status_code == 204
    actions = list(AuditEvent.objects.filter(action__startswith="codec.").values_list("action", flat=True))
    assert sorted(actions) == sorted(
        ["codec.schema.create", "codec.rule.create", "codec.rule.update", "codec.rule.delete", "codec.schema.delete"]
    )


@pytest.mark.parametrize(
    ("extra", "field", "needle"),
    [
        ({"topic_filter": "devices/#/x"}, "topic_filter", "last level"),
        ({"topic_filter": "$SYS/#"}, "topic_filter", "$"),
        ({"topic_template": "app/{topic[3]}"}, "topic_template", "levels 0 to 2"),
        ({"topic_filter": "plant/+/x"}, "topic_template", "{device_id}"),
        ({"topic_template": "app/{nope}"}, "topic_template", "Unknown placeholder"),
        ({"topic_template": "app/\x01"}, "topic_template", ""),
        ({"schema": "missing"}, "schema", "schema"),
        ({"schema_version": 7}, "schema_version", "versions 1 to 1"),
        ({"direction": "sideways"}, "direction", ""),
    ],
)
def test_a_bad_codec_rule_answers_a_field_problem_and_creates_nothing_when_posted(client, base, extra, field, needle):
    from iot.models import CodecRule

    make_schema(client, base)
    response = client.post(f"{base}/codec-rules", rule_body(**extra), format="json")
    assert response.status_code == 400, response.content
    assert needle in fields(response)[field]
    assert not CodecRule.objects.exists()


def test_codecs_answer_409_when_the_deployment_is_not_premium(client, owner_org):
    from deployments import services

    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plain", plan="dedicated", tier="1k", region="local"
    )
    url = f"/api/v1/organizations/{owner_org.id}/projects/{owner_org.default_project.public_id}/deployments/{deployment.public_id}"
    response = client.post(f"{url}/schemas", {"name": "x", "type": "json_schema", "source": "{}"}, format="json")
    assert response.status_code == 409


def test_another_organizations_schema_is_a_404_when_asked_for(client, base, org_factory, key_client):
    other_org = org_factory()
    other = premium_deployment(other_org)
    from iot import codecs

    codecs.schema_create(deployment=other, actor=None, name="theirs", type="json_schema", source="{}")
    assert client.get(f"{base}/schemas/theirs").status_code == 404
    other_client = key_client(other_org.owner_secret)
    other_url = f"/api/v1/organizations/{other_org.id}/projects/{other_org.default_project.public_id}/deployments/{other.public_id}"
    assert other_client.get(f"{other_url}/schemas/theirs").status_code == 200


def test_codec_failures_feed_the_metric_once_and_the_premium_default_rule_when_collected(premium):
    from alerts import defaults
    from alerts.models import AlertRule
    from iot import codecs
    from iot.models import CodecCounter

    rule_names = set(AlertRule.objects.filter(deployment=premium).values_list("default_key", flat=True))
    assert "codec_failures" in rule_names
    schema = codecs.schema_create(deployment=premium, actor=None, name="j", type="json_schema", source="{}")
    rule = codecs.codec_rule_create(
        deployment=premium,
        actor=None,
        topic_filter="devices/+/t",
        direction="decode",
        schema=schema.name,
        topic_template="app/{topic[1]}",
    )
    from django.utils import timezone

    codecs.codec_counters_add(counts={rule.pk: (10, 3, "not JSON")}, at=timezone.now())
    premium.plan  # noqa: B018 - loaded, as the collector's row is
    assert codecs.codec_failures_sample(premium, timezone.now()) == {"codec_failures": 3.0}
    assert codecs.codec_failures_sample(premium, timezone.now()) == {"codec_failures": 0.0}
    counter = CodecCounter.objects.get(rule=rule)
    assert (counter.processed, counter.failures, counter.last_failure) == (10, 3, "not JSON")
    assert "codec_failures" in defaults.DEFAULT_KEYS


def test_the_codec_default_rule_is_not_given_when_the_deployment_is_dedicated(owner_org):
    from alerts.models import AlertRule
    from deployments import services

    deployment, _ = services.deployment_create(
        project=owner_org.default_project, actor=None, name="plain", plan="dedicated", tier="1k", region="local"
    )
    keys = set(AlertRule.objects.filter(deployment=deployment).values_list("default_key", flat=True))
    assert "rule_failures" in keys and "codec_failures" not in keys


def test_codec_rules_are_rendered_into_emqx_schema_registry_and_rules_when_synced(premium):
    from deployments.emqx_api import EmqxApi
    from iot import codecs, codecs_emqx
    from iot.models import CodecRule
    from tests.fakes.emqx_codecs import FakeEmqxCodecServer

    proto = codecs.schema_create(
        deployment=premium, actor=None, name="reading", type="protobuf", source=PROTO, message_type="Reading"
    )
    checked = codecs.schema_create(
        deployment=premium, actor=None, name="shape", type="json_schema", source=json.dumps(JSON_SCHEMA)
    )
    decode = codecs.codec_rule_create(
        deployment=premium,
        actor=None,
        topic_filter="devices/+/telemetry",
        direction="decode",
        schema=proto.name,
        topic_template="app/{device_id}/{topic[2]}",
    )
    codecs.codec_rule_create(
        deployment=premium,
        actor=None,
        topic_filter="plant/#",
        direction="decode",
        schema=checked.name,
        topic_template="checked/{topic}",
    )
    server = FakeEmqxCodecServer(api_key="cp", api_secret="s3cret").start()
    try:
        api = EmqxApi(server.url, "cp", "s3cret")
        server.state.engine_rules["theirs"] = {"id": "theirs", "sql": 'SELECT * FROM "t"', "actions": []}
        rows = lambda: list(CodecRule.objects.select_related("schema_version__schema").order_by("id"))  # noqa: E731
        # The decode rule, the report of its validation's failures, the JSON Schema rule and its error branch.
        assert codecs_emqx.codecs_sync(api, rows())["rules_written"] == 4
        registry = server.registry()
        assert registry["cp_reading_v1"] == {"type": "protobuf", "source": PROTO, "description": ""}
        assert registry["cp_shape_v1"]["type"] == "json"
        engine = server.engine()
        main = engine[f"codec_{decode.public_id}"]
        assert main["sql"] == (
            # EMQX names the message without its package (gpb without use_packages).
            "SELECT schema_decode('cp_reading_v1', payload, 'Reading') as out, topic, "
            "nth(2, split(topic, '/', 'notrim')) as level_1, nth(3, split(topic, '/', 'notrim')) as level_2 "
            'FROM "devices/+/telemetry"'
        )
        action = main["actions"][0]
        assert action["function"] == "republish"
        assert action["args"]["topic"] == "app/${level_1}/${level_2}" and action["args"]["payload"] == "${out}"
        assert any(
            r.endswith("_errors") and "not schema_check('cp_shape_v1'" in r_body["sql"] for r, r_body in engine.items()
        )
        # Idempotent: nothing is rewritten when nothing changed.
        assert codecs_emqx.codecs_sync(api, rows()) == {
            "schemas_written": 0,
            "rules_written": 0,
            "schemas_deleted": 0,
            "rules_deleted": 0,
            "validations_written": 0,
            "validations_deleted": 0,
        }
        # A deleted rule goes, with its schema once no rule uses it; the cluster's own rule stays.
        codecs.codec_rule_delete(rule=decode, actor=None)
        counts = codecs_emqx.codecs_sync(api, rows())
        assert counts["rules_deleted"] == 2 and counts["schemas_deleted"] == 1 and counts["validations_deleted"] == 1
        assert "cp_reading_v1" not in server.registry() and "theirs" in server.engine()
    finally:
        server.stop()
