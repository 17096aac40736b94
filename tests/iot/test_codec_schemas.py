"""The codec core on its own: protoc in its sandbox, Avro and JSON Schema checks, backward compatibility, decoding
and encoding, and the topic templates. No database, no broker."""

import json
import time

import pytest

from iot import codec_topics, schemas

PROTO = """
syntax = "proto3";
package sensors;
import "google/protobuf/timestamp.proto";
message Reading {
  string device = 1;
  double temperature = 2;
  int32 humidity = 3;
  google.protobuf.Timestamp at = 4;
  message Inner { string note = 1; }
  Inner inner = 5;
}
"""
AVRO = {
    "type": "record",
    "name": "Reading",
    "namespace": "sensors",
    "fields": [{"name": "device", "type": "string"}, {"name": "temperature", "type": "float"}],
}


def test_a_proto_compiles_and_round_trips_when_it_is_valid():
    compiled = schemas.compile_source(schemas.PROTOBUF, PROTO, "Reading")
    assert compiled.message_type == "sensors.Reading"
    codec = schemas.codec_for(compiled)
    value = {"device": "d-1", "temperature": 21.5, "humidity": 40, "inner": {"note": "ok"}}
    assert codec.decode(codec.encode(value)) == value


def test_protoc_message_is_returned_when_a_proto_does_not_compile():
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.compile_source(schemas.PROTOBUF, 'syntax = "proto3";\nmessage A { strng x = 1; }\n', "A")
    assert caught.value.field == "source"
    assert "protoc:" in caught.value.message and "strng" in caught.value.message
    assert "/tmp" not in caught.value.message  # the sandbox's path is not shown


@pytest.mark.parametrize(
    "imported", ["/etc/passwd", "../../../../etc/passwd", "other.proto", "google/protobuf/../../etc/x.proto"]
)
def test_a_proto_cannot_import_files_when_they_are_not_well_known_types(imported):
    source = f'syntax = "proto3";\nimport "{imported}";\nmessage A {{ string x = 1; }}\n'
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.compile_source(schemas.PROTOBUF, source, "A")
    assert "well-known" in caught.value.message


def test_a_message_name_not_in_the_proto_is_refused_when_named():
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.compile_source(schemas.PROTOBUF, PROTO, "Missing")
    assert caught.value.field == "message_type"
    assert "sensors.Reading" in caught.value.message


def test_an_invalid_avro_schema_is_refused_when_its_type_is_unknown():
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.compile_source(
            schemas.AVRO, json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]})
        )
    assert "Avro" in caught.value.message


def test_an_invalid_json_schema_is_refused_when_a_keyword_has_the_wrong_type():
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.compile_source(schemas.JSON_SCHEMA, json.dumps({"type": "object", "required": "device"}))
    assert "JSON Schema" in caught.value.message


def test_a_json_schema_pattern_that_can_backtrack_for_ever_is_refused_when_quantifiers_nest():
    document = {"type": "string", "pattern": "^(a+)+$"}
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.compile_source(schemas.JSON_SCHEMA, json.dumps(document))
    assert "nested quantifiers" in caught.value.message


@pytest.mark.parametrize(
    "document",
    [
        {"type": "object", "patternProperties": {"^(a|a)*$": {"type": "number"}}},
        {"type": "object", "patternProperties": {"^(a|a)*$": {}}, "additionalProperties": False},
        # unevaluatedProperties matches patternProperties itself, with `re` (unbounded). Written first here, it still
        # fails within the bound: the validator gets the document with its keys sorted, and jsonschema applies the
        # keywords in that order, so the bounded patternProperties (reached through allOf or $ref too) runs first.
        {"type": "object", "unevaluatedProperties": False, "patternProperties": {"^(a|a)*$": {}}},
        {"unevaluatedProperties": {"type": "string"}, "allOf": [{"patternProperties": {"^(a|a)*$": {}}}]},
        {
            "unevaluatedProperties": False,
            "$defs": {"keys": {"patternProperties": {"^(a|a)*$": {}}}},
            "$ref": "#/$defs/keys",
        },
    ],
    ids=["patternProperties", "additionalProperties", "unevaluatedProperties", "through-allOf", "through-ref"],
)
def test_a_pattern_that_backtracks_without_end_fails_the_payload_within_the_bound_when_keys_are_matched(document):
    codec = schemas.codec_for(schemas.compile_source(schemas.JSON_SCHEMA, json.dumps(document)))
    started = time.monotonic()
    with pytest.raises(schemas.CodecFailed) as caught:
        codec.decode(json.dumps({"a" * 40 + "b": 1}).encode())
    assert time.monotonic() - started < 2
    assert "took more than" in str(caught.value)
    assert codec.decode(b'{"aa": 1}') == {"aa": 1}


def test_avro_decodes_and_refuses_garbage_when_bytes_are_left_or_missing():
    codec = schemas.codec_for(schemas.compile_source(schemas.AVRO, json.dumps(AVRO)))
    payload = codec.encode({"device": "d-1", "temperature": 1.5})
    assert codec.decode(payload) == {"device": "d-1", "temperature": 1.5}
    with pytest.raises(schemas.CodecFailed):
        codec.decode(payload + b"\x00\x01")
    with pytest.raises(schemas.CodecFailed):
        codec.decode(payload[:3])


def test_a_corrupt_protobuf_payload_fails_with_a_reason_when_decoded():
    codec = schemas.codec_for(schemas.compile_source(schemas.PROTOBUF, PROTO, "Reading"))
    with pytest.raises(schemas.CodecFailed) as caught:
        codec.decode(b"\xff\xff\xff\xff\xff")
    assert "sensors.Reading" in str(caught.value)


def test_avro_versions_are_refused_when_a_field_is_added_without_a_default():
    old = schemas.compile_source(schemas.AVRO, json.dumps(AVRO))
    bad = {**AVRO, "fields": [*AVRO["fields"], {"name": "battery", "type": "int"}]}
    good = {**AVRO, "fields": [*AVRO["fields"], {"name": "battery", "type": "int", "default": 0}]}
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.check_compatible(old, schemas.compile_source(schemas.AVRO, json.dumps(bad)))
    assert "field battery" in caught.value.message
    schemas.check_compatible(old, schemas.compile_source(schemas.AVRO, json.dumps(good)))
    promoted = {**AVRO, "fields": [AVRO["fields"][0], {"name": "temperature", "type": "double"}]}
    schemas.check_compatible(old, schemas.compile_source(schemas.AVRO, json.dumps(promoted)))
    narrowed = {**AVRO, "fields": [{"name": "device", "type": "int"}, AVRO["fields"][1]]}
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.check_compatible(old, schemas.compile_source(schemas.AVRO, json.dumps(narrowed)))
    assert "field device" in caught.value.message and "string became int" in caught.value.message


def test_protobuf_versions_are_refused_when_a_field_changes_its_wire_type():
    old = schemas.compile_source(schemas.PROTOBUF, PROTO, "Reading")
    changed = PROTO.replace("double temperature = 2;", "string temperature = 2;")
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.check_compatible(old, schemas.compile_source(schemas.PROTOBUF, changed, "Reading"))
    assert "sensors.Reading.temperature (number 2)" in caught.value.message
    added = PROTO.replace("Inner inner = 5;", "Inner inner = 5;\n  int64 battery = 6;")
    schemas.check_compatible(old, schemas.compile_source(schemas.PROTOBUF, added, "Reading"))
    widened = PROTO.replace("int32 humidity = 3;", "int64 humidity = 3;")
    schemas.check_compatible(old, schemas.compile_source(schemas.PROTOBUF, widened, "Reading"))


def test_templates_render_levels_and_the_device_id_when_the_filter_guarantees_them():
    template = codec_topics.parse_template("app/{device_id}/{topic[2]}/json", topic_filter="devices/+/telemetry")
    assert template.render("devices/d-7/telemetry") == "app/d-7/telemetry/json"
    whole = codec_topics.parse_template("decoded/{topic}", topic_filter="plant/#")
    assert whole.render("plant/a/b") == "decoded/plant/a/b"


@pytest.mark.parametrize(
    ("template", "topic_filter", "needle"),
    [
        ("app/{topic[3]}", "devices/+/telemetry", "levels 0 to 2"),
        ("app/{topic[1]}", "plant/#", "levels 0 to 0"),
        ("app/{device_id}", "plant/+/x", "{device_id}"),
        ("app/{devices}", "devices/+/x", "Unknown placeholder"),
        ("app/+/x", "devices/+/x", "wildcards"),
        ("$SYS/x", "devices/+/x", "cannot start with $"),
        ("codec-errors/x", "devices/+/x", "codec-errors"),
    ],
)
def test_a_template_is_refused_when_it_is_not_renderable(template, topic_filter, needle):
    with pytest.raises(ValueError) as caught:
        codec_topics.parse_template(template, topic_filter=topic_filter)
    assert needle in str(caught.value)


@pytest.mark.parametrize("topic_filter", ["a/#/b", "a+/b", "$SYS/#", "#", "codec-errors/#", "a/\x01"])
def test_a_filter_is_refused_when_it_is_not_a_readable_topic_filter(topic_filter):
    with pytest.raises(ValueError):
        codec_topics.check_filter(topic_filter)


def test_an_avro_array_of_empty_items_is_refused_when_a_payload_could_claim_billions():
    document = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "xs", "type": {"type": "array", "items": {"type": "record", "name": "E", "fields": []}}}],
    }
    with pytest.raises(schemas.SchemaInvalid) as caught:
        schemas.compile_source(schemas.AVRO, json.dumps(document))
    assert "billions" in caught.value.message
    ints = {"type": "record", "name": "R", "fields": [{"name": "xs", "type": {"type": "array", "items": "int"}}]}
    codec = schemas.codec_for(schemas.compile_source(schemas.AVRO, json.dumps(ints)))
    with pytest.raises(schemas.CodecFailed):
        codec.decode(b"\xfe\xff\xff\xff\x0f")  # claims 2^31 ints, carries none


@pytest.mark.parametrize("payload", [b'{"t": NaN}', b'{"t": Infinity}', b'{"t": 1e400}'], ids=["nan", "inf", "1e400"])
def test_a_json_schema_encode_fails_instead_of_writing_what_is_not_json_when_a_number_is_not_finite(payload):
    # A device's payload on an encode rule: NaN, Infinity and 1e400 read as Python floats, which the JSON written
    # out cannot carry. The encoded result must be JSON, or the message fails with a reason.
    codec = schemas.Codec(schemas.compile_source("json_schema", json.dumps({"type": "object"})))
    try:
        out = codec.encode(schemas._json_payload(payload))
    except schemas.CodecFailed as exc:
        assert "not JSON" in str(exc) or "finite" in str(exc)
    else:
        json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} written into the encoded JSON"))
