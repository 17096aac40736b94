"""Codec rules on EMQX: every body iot.codecs_emqx renders holds only fields, types and enum values EMQX's own schemas
accept (tests.fakes.emqx_codecs.EMQX_FACTS, copied from emqx/emqx v5.8.6), and a Protobuf or Avro payload that does
not decode reaches codec-errors/{rule} through a schema validation and a rule on its failure event."""

import base64
import json
import re

import pytest

from iot import codec_topics, codecs_emqx, schemas
from tests.fakes.emqx_codecs import (
    EMQX_FACTS,
    FakeEmqxCodecServer,
    rule_problem,
    schema_problem,
    validation_problem,
)

PROTO = 'syntax = "proto3";\npackage sensors;\nmessage Reading {\n  string device = 1;\n  double temperature = 2;\n}\n'
AVRO = {"type": "record", "name": "Reading", "fields": [{"name": "device", "type": "string"}]}
JSON_SCHEMA = {"type": "object", "required": ["t"]}
SOURCES = {"protobuf": PROTO, "avro": json.dumps(AVRO), "json_schema": json.dumps(JSON_SCHEMA)}
LOCAL_ERROR_KEYS = {"rule", "topic", "direction", "reason", "payload_base64", "timestamp"}


def _registry(type_: str) -> dict:
    body = codecs_emqx.render_schema(name="cp_reading_v1", type_=type_, source=SOURCES[type_])
    return {body["name"]: {k: v for k, v in body.items() if k != "name"}}


def _rules(type_: str, direction: str, *, validations: bool = True) -> list[dict]:
    return codecs_emqx.render_rules(
        public_id="cdr_abc123",
        topic_filter="devices/+/telemetry",
        direction=direction,
        type_=type_,
        emqx_schema="cp_reading_v1",
        message_type="Reading" if type_ == "protobuf" else "",
        topic_template="app/{device_id}/reading",
        enabled=True,
        validations=validations,
    )


def _render_like_emqx(template: str, columns: dict) -> str:
    """EMQX's `${var}` substitution of the republish payload (emqx_template: a binary column is spliced as is)."""
    return re.sub(r"\$\{([a-z_0-9]+)\}", lambda m: str(columns[m[1]]), template)


@pytest.mark.parametrize("type_", ["protobuf", "avro", "json_schema"])
@pytest.mark.parametrize("direction", ["decode", "encode"])
def test_rendered_bodies_hold_only_what_emqx_accepts_when_rendered_for_each_type_and_direction(type_, direction):
    registry = _registry(type_)
    (name, schema_body), *_ = registry.items()
    assert schema_problem({"name": name, **schema_body}) is None
    assert schema_problem(schema_body, put=True) is None
    for body in _rules(type_, direction):
        assert rule_problem(body, registry) is None, body
        for action in body["actions"]:
            assert set(action["args"]) <= EMQX_FACTS["republish_args"]
    if direction == "decode" and type_ != "json_schema":
        validation = codecs_emqx.render_validation(
            public_id="cdr_abc123",
            topic_filter="devices/+/telemetry",
            type_=type_,
            emqx_schema=name,
            message_type="Reading" if type_ == "protobuf" else "",
            enabled=True,
        )
        assert validation_problem(validation, registry) is None
        assert validation["failure_action"] == "ignore"  # the message goes on unchanged: the local semantics


def test_fake_refuses_what_emqx_refuses_when_a_body_strays_from_emqx_schema():
    registry = _registry("protobuf")
    validation = codecs_emqx.render_validation(
        public_id="cdr_abc123",
        topic_filter="t/#",
        type_="protobuf",
        emqx_schema="cp_reading_v1",
        message_type="Reading",
        enabled=True,
    )
    assert "no message type" in validation_problem(
        {**validation, "checks": [{**validation["checks"][0], "message_type": "sensors.Reading"}]}, registry
    )
    assert "unknown fields" in validation_problem({**validation, "failure": "ignore"}, registry)
    assert "failure_action" in validation_problem({**validation, "failure_action": "republish"}, registry)
    assert "strategy" in validation_problem({**validation, "strategy": "first_pass"}, registry)
    assert "message_type" in validation_problem({**validation, "checks": [{"type": "protobuf", "schema": "x"}]}, {})
    assert "not found" in validation_problem(validation, {})
    assert "log_failure" in validation_problem({**validation, "log_failure": {"level": "silent"}}, registry)
    assert "invalid name" in validation_problem({**validation, "name": "_codec"}, registry)
    rule = _rules("protobuf", "decode")[1]
    assert "no columns" in rule_problem({**rule, "sql": rule["sql"].replace("topic)", "message_topic)")}, registry)
    assert "unknown event" in rule_problem({**rule, "sql": rule["sql"].replace("schema_validation", "validation")}, {})
    bad_args = {**rule, "actions": [{"function": "republish", "args": {"topic": "t", "qos": 1, "headers": ""}}]}
    assert "unknown republish args" in rule_problem(bad_args, registry)
    assert "unknown fields" in schema_problem({"name": "cp_x", "type": "avro", "source": "{}", "version": 1})
    assert "type" in schema_problem({"name": "cp_x", "type": "json_schema", "source": "{}"})


@pytest.mark.parametrize("type_", ["protobuf", "avro"])
def test_error_report_has_the_local_drivers_shape_when_emqx_fires_the_validation_failed_event(type_):
    ok, errors = _rules(type_, "decode")
    assert errors["id"] == "codec_cdr_abc123_errors"
    assert 'FROM "$events/schema_validation_failed"' in errors["sql"]
    assert errors["sql"].endswith("WHERE validation = 'codec_cdr_abc123'")
    action = errors["actions"][0]["args"]
    assert action["topic"] == codec_topics.error_topic("cdr_abc123")
    # What EMQX computes for the SELECT items from the event (a topic may hold quotes and backslashes).
    topic, payload = 'devices/a"b\\c/telemetry', b"\xff\x00not protobuf"
    columns = {
        "topic_json": json.dumps(topic),
        "payload_b64": base64.b64encode(payload).decode(),
        "ts": 1_764_500_000,
    }
    report = json.loads(_render_like_emqx(action["payload"], columns))
    assert set(report) == LOCAL_ERROR_KEYS
    assert report["topic"] == topic and base64.b64decode(report["payload_base64"]) == payload
    assert report["rule"] == "cdr_abc123" and report["direction"] == "decode" and report["timestamp"] == 1_764_500_000
    assert "schema_decode('cp_reading_v1', payload" in ok["sql"]


def test_protobuf_message_types_are_named_as_emqx_knows_them_when_the_schema_has_a_package():
    from tests.fakes.emqx_codecs import gpb_message_names

    nested = PROTO.replace("message Reading {", "message Reading {\n  message Part { int32 n = 1; }")
    compiled = schemas.compile_source("protobuf", nested, "Part")
    assert compiled.message_type == "sensors.Reading.Part"
    assert codecs_emqx.gpb_message_type(compiled.message_type, compiled.descriptor_set) == "Reading.Part"
    assert gpb_message_names(nested) == {"Reading", "Reading.Part"}
    bare = schemas.compile_source("protobuf", PROTO.replace("package sensors;\n", ""), "Reading")
    assert codecs_emqx.gpb_message_type(bare.message_type, bare.descriptor_set) == "Reading"


def test_no_error_rule_is_rendered_when_emqx_has_no_schema_validation():
    assert not codecs_emqx.validations_supported("5.1.1")
    assert codecs_emqx.validations_supported("5.8.6") and codecs_emqx.validations_supported("5.10.2")
    assert codecs_emqx.validations_supported("")  # not known yet: the driver's default release
    assert [r["id"] for r in _rules("protobuf", "decode", validations=False)] == ["codec_cdr_abc123"]


@pytest.mark.django_db
def test_decode_failures_are_wired_to_the_error_topic_when_synced_to_emqx(premium):
    from deployments.emqx_api import EmqxApi
    from iot import codecs
    from iot.models import CodecRule

    proto = codecs.schema_create(
        deployment=premium, actor=None, name="reading", type="protobuf", source=PROTO, message_type="Reading"
    )
    avro = codecs.schema_create(deployment=premium, actor=None, name="rec", type="avro", source=json.dumps(AVRO))
    decode = codecs.codec_rule_create(
        deployment=premium,
        actor=None,
        topic_filter="devices/+/telemetry",
        direction="decode",
        schema=proto.name,
        topic_template="app/{device_id}/reading",
    )
    avro_rule = codecs.codec_rule_create(
        deployment=premium,
        actor=None,
        topic_filter="avro/#",
        direction="decode",
        schema=avro.name,
        topic_template="json/{topic}",
    )
    codecs.codec_rule_create(
        deployment=premium,
        actor=None,
        topic_filter="cmd/+",
        direction="encode",
        schema=proto.name,
        topic_template="bin/{topic[1]}",
    )
    server = FakeEmqxCodecServer(api_key="cp", api_secret="s3cret").start()
    try:
        api = EmqxApi(server.url, "cp", "s3cret")
        server.state.validations["theirs"] = {"name": "theirs", "topics": ["x/#"], "checks": []}

        def rows():
            return list(CodecRule.objects.select_related("schema_version__schema").order_by("id"))

        counts = codecs_emqx.codecs_sync(api, rows(), version="5.8.6")
        assert counts["validations_written"] == 2 and counts["rules_written"] == 5
        validations = server.schema_validations()
        name = f"codec_{decode.public_id}"
        assert validations[name]["topics"] == ["devices/+/telemetry"]
        assert validations[name]["checks"] == [
            {"type": "protobuf", "schema": "cp_reading_v1", "message_type": "Reading"}
        ]
        assert validations[f"codec_{avro_rule.public_id}"]["checks"] == [{"type": "avro", "schema": "cp_rec_v1"}]
        engine = server.engine()
        assert engine[f"codec_{decode.public_id}_errors"]["sql"].endswith(f"WHERE validation = '{name}'")
        assert engine[f"codec_{decode.public_id}_errors"]["actions"][0]["args"]["topic"] == (
            f"codec-errors/{decode.public_id}"
        )
        # Idempotent, and a disabled rule disables its validation too.
        assert codecs_emqx.codecs_sync(api, rows(), version="5.8.6")["validations_written"] == 0
        codecs.codec_rule_update(rule=decode, actor=None, enabled=False)
        assert codecs_emqx.codecs_sync(api, rows(), version="5.8.6")["validations_written"] == 1
        assert server.schema_validations()[name]["enable"] is False
        # Deleting the rules removes our validations (before their schemas, which EMQX requires); theirs stays.
        for rule in rows():
            codecs.codec_rule_delete(rule=rule, actor=None)
        counts = codecs_emqx.codecs_sync(api, rows(), version="5.8.6")
        assert counts["validations_deleted"] == 2 and counts["schemas_deleted"] == 2
        assert set(server.schema_validations()) == {"theirs"} and server.registry() == {}
        assert server.state.left_dangling == []
    finally:
        server.stop()


@pytest.mark.django_db
def test_no_validation_is_pushed_when_the_cluster_runs_emqx_older_than_5_7(premium):
    from deployments.emqx_api import EmqxApi
    from iot import codecs
    from iot.models import CodecRule

    proto = codecs.schema_create(
        deployment=premium, actor=None, name="reading", type="protobuf", source=PROTO, message_type="Reading"
    )
    codecs.codec_rule_create(
        deployment=premium,
        actor=None,
        topic_filter="devices/+/telemetry",
        direction="decode",
        schema=proto.name,
        topic_template="app/{device_id}/reading",
    )
    server = FakeEmqxCodecServer(api_key="cp", api_secret="s3cret").start()
    try:
        api = EmqxApi(server.url, "cp", "s3cret")
        rows = list(CodecRule.objects.select_related("schema_version__schema"))
        counts = codecs_emqx.codecs_sync(api, rows, version="5.1.1")
        assert counts == {"schemas_written": 1, "rules_written": 1, "schemas_deleted": 0, "rules_deleted": 0}
        assert server.schema_validations() == {} and len(server.engine()) == 1
    finally:
        server.stop()
