"""Codec rules on an EMQX region: rendered into EMQX's schema registry (`/api/v5/schema_registry`), rule engine
(`/api/v5/rules`, SQL with `schema_decode`/`schema_encode`/`schema_check` and a `republish` action) and, from EMQX
5.7, schema validations (`/api/v5/schema_validations`), then pushed.

Renderers are pure; `codecs_sync` makes EMQX hold exactly our schemas (named `cp_…`), rules (ids `codec_…`) and
validations (names `codec_…`) and leaves every other schema, rule and validation of the cluster alone. Shapes from
emqx/emqx v5.8.6 (b895cdcd8cbc34c5f8fc5ea8b948cd2c40bba0fc; e5.9.1 and e5.10.2 accept the same bodies):
apps/emqx_schema_registry/src/emqx_schema_registry_schema.erl and _http_api.erl, apps/emqx_rule_engine
(emqx_rule_engine_schema.erl fields("rules") and fields("republish_args"), emqx_rule_funcs.erl split/3, nth/2,
base64_encode/1, emqx_rule_events.erl eventmsg_validation_failed/2), apps/emqx_schema_validation
(emqx_schema_validation_schema.erl fields(validation), emqx_schema_validation.erl run_validations/2).

How a payload that does not decode reaches `codec-errors/{rule}` (as on the local driver): a failed `schema_decode`
only fails the rule (its `failed.exception` metric); EMQX has no error branch in a rule. So a decode rule of a
Protobuf or Avro schema also gets a schema validation on its filter, checking the payload against the same schema
with `failure_action = ignore` (the message goes on unchanged either way), and a rule on the
`$events/schema_validation_failed` event that EMQX fires for each failure republishes the report.
"""

from __future__ import annotations

import json
from typing import NamedTuple
from urllib.parse import quote

from iot import codec_topics, schemas

SCHEMA_PREFIX = "cp_"
RULE_PREFIX = "codec_"
VALIDATION_PREFIX = "codec_"
_EMQX_TYPES = {schemas.PROTOBUF: "protobuf", schemas.AVRO: "avro", schemas.JSON_SCHEMA: "json"}
# Schema validation (and its `$events/schema_validation_failed` event) exists from EMQX 5.7.0 (the app first ships in
# the v5.7.0 tag); older clusters count a payload that does not decode only in the rule's `failed` metrics.
VALIDATIONS_FROM = (5, 7, 0)
VALIDATION_FAILED_EVENT = "$events/schema_validation_failed"


def schema_name(schema: str, version: int) -> str:
    """Our schema names are [A-Za-z0-9_-]; EMQX's must start with a letter or digit, hence the prefix."""
    return f"{SCHEMA_PREFIX}{schema}_v{version}"


def rule_id(public_id: str) -> str:
    return f"{RULE_PREFIX}{public_id}"


def gpb_message_type(message_type: str, descriptor_set: bytes) -> str:
    """The name EMQX knows a Protobuf message by. EMQX compiles a schema with gpb without `use_packages`
    (emqx_schema_registry_serde.erl generate_protobuf_code/2), so its messages are named without the package
    (`Reading`, a nested one `Outer.Inner`); `binary_to_existing_atom` of any other name fails every decode, and a
    validation naming it is refused (has_inner_type/3)."""
    package = next((f.package for f in schemas._file_set(descriptor_set).file if f.name == schemas.PROTO_FILE), "")
    if package and message_type.startswith(package + "."):
        return message_type[len(package) + 1 :]
    return message_type


def validation_name(public_id: str) -> str:
    """A validation's name follows emqx_resource:validate_name/1 ([0-9A-Za-z][-0-9A-Za-z_]*, under 255): public ids
    are [a-z0-9_]."""
    return f"{VALIDATION_PREFIX}{public_id}"


def _error_payload(public_id: str, direction: str, reason: str) -> str:
    """The error report in EMQX's `${var}` syntax, with the local driver's fields (codec-errors/{rule})."""
    fields = {"rule": public_id, "direction": direction, "reason": reason, "payload_base64": "${payload_b64}"}
    # Spliced in after JSON-encoding the rest: the topic as the JSON string json_encode(topic) made in the SQL (a
    # topic may hold quotes), the timestamp as the digits of `timestamp div 1000`.
    return json.dumps(fields, separators=(",", ":"))[:-1] + ',"topic":${topic_json},"timestamp":${ts}}'


# The SQL select items _error_payload's placeholders need (emqx_rule_funcs.erl json_encode/1, base64_encode/1;
# `timestamp` is milliseconds, the local driver reports seconds).
_ERROR_COLUMNS = "json_encode(topic) as topic_json, base64_encode(payload) as payload_b64, timestamp div 1000 as ts"


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_topic(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_topic(template: str, topic_filter: str) -> tuple[str, list[str]]:
    """The republish topic in EMQX's `${var}` syntax and the SQL select items it needs."""
    parsed = codec_topics.parse_template(template, topic_filter=topic_filter)
    out, selects = [], []
    for kind, value in parsed.parts:
        if kind == "text":
            out.append(str(value).replace("${", "$ {"))
        elif kind == "topic":
            out.append("${topic}")
        else:
            index = 1 if kind == "device_id" else int(value)
            alias = f"level_{index}"
            item = f"nth({index + 1}, split(topic, '/', 'notrim')) as {alias}"
            if item not in selects:
                selects.append(item)
            out.append("${" + alias + "}")
    return "".join(out), selects


def render_schema(*, name: str, type_: str, source: str, description: str = "") -> dict:
    body = {"name": name, "type": _EMQX_TYPES[type_], "source": source, "description": description[:255]}
    if type_ != schemas.PROTOBUF:
        body["source"] = json.dumps(json.loads(source), separators=(",", ":"))
    return body


def render_rules(
    *,
    public_id: str,
    topic_filter: str,
    direction: str,
    type_: str,
    emqx_schema: str,
    message_type: str,
    topic_template: str,
    enabled: bool,
    validations: bool = False,
) -> list[dict]:
    """The EMQX rule(s) of one codec rule. A JSON Schema rule is two rules: matching messages republished, the
    others sent to our error topic. A Protobuf or Avro decode rule with `validations` (EMQX 5.7+) is two rules too:
    the decode, and the error report on its validation's failure event (render_validation). Without it, and for
    encode rules, a payload that does not convert only fails the rule (its `failed` metrics)."""
    topic, selects = render_topic(topic_template, topic_filter)
    name = _sql_string(emqx_schema)
    extra = "".join(f", {item}" for item in selects)
    source = _sql_topic(topic_filter)
    message = f", {_sql_string(message_type)}" if type_ == schemas.PROTOBUF else ""
    description = f"Codec rule {public_id} (managed by the control plane; changes here are overwritten)"

    def rule(ident: str, sql: str, payload: str, to: str) -> dict:
        return {
            "id": ident,
            "sql": sql,
            "actions": [
                {
                    "function": "republish",
                    "args": {"topic": to, "qos": 1, "retain": False, "payload": payload, "user_properties": ""},
                }
            ],
            "enable": enabled,
            "description": description,
        }

    if type_ == schemas.JSON_SCHEMA:
        value = "payload" if direction == "encode" else "json_decode(payload)"
        ok = rule(
            rule_id(public_id),
            f"SELECT payload as out, topic{extra} FROM {source} WHERE schema_check({name}, {value})",
            "${out}",
            topic,
        )
        failed = rule(
            rule_id(public_id) + "_errors",
            f"SELECT {_ERROR_COLUMNS} FROM {source} WHERE not schema_check({name}, {value})",
            _error_payload(public_id, direction, "does not match the JSON Schema"),
            codec_topics.error_topic(public_id),
        )
        return [ok, failed]
    if direction == "decode":
        sql = f"SELECT schema_decode({name}, payload{message}) as out, topic{extra} FROM {source}"
    else:
        sql = f"SELECT schema_encode({name}, json_decode(payload){message}) as out, topic{extra} FROM {source}"
    out = [rule(rule_id(public_id), sql, "${out}", topic)]
    if validations and direction == "decode":
        # The report of a payload the validation below found not to decode (emqx_rule_events.erl
        # eventmsg_validation_failed/2: `validation` is its name, `topic` and `payload` the message's).
        reason = f"not a {message_type} message" if type_ == schemas.PROTOBUF else "not an Avro record of this schema"
        out.append(
            rule(
                rule_id(public_id) + "_errors",
                f"SELECT {_ERROR_COLUMNS} FROM {_sql_topic(VALIDATION_FAILED_EVENT)} "
                f"WHERE validation = {_sql_string(validation_name(public_id))}",
                _error_payload(public_id, direction, reason + " (checked by EMQX's schema validation)"),
                codec_topics.error_topic(public_id),
            )
        )
    return out


def render_validation(
    *, public_id: str, topic_filter: str, type_: str, emqx_schema: str, message_type: str, enabled: bool
) -> dict:
    """The schema validation that tells a Protobuf or Avro decode rule's undecodable payloads apart: it checks the
    payload with the rule's schema (emqx_schema_registry_serde:schema_check/3 decodes it), never drops or changes
    the message (`ignore`), and fires `$events/schema_validation_failed` for each failure."""
    check: dict = {"type": _EMQX_TYPES[type_], "schema": emqx_schema}
    if type_ == schemas.PROTOBUF:
        check["message_type"] = message_type
    return {
        "name": validation_name(public_id),
        "description": f"Codec rule {public_id}: payloads that do not decode (managed by the control plane)",
        "enable": enabled,
        "topics": [topic_filter],
        "strategy": "all_pass",
        "failure_action": "ignore",
        "log_failure": {"level": "none"},  # the error topic and the rule's metrics report it
        "checks": [check],
    }


def validations_supported(version: str | None) -> bool:
    """Whether an EMQX release has schema validation; an unknown version ("") is taken as the driver's default."""
    from deployments import emqx_versions

    try:
        return emqx_versions.parse(version or emqx_versions.DEFAULT_VERSION) >= VALIDATIONS_FROM
    except emqx_versions.UnsupportedVersion:
        return False


class Desired(NamedTuple):
    """What EMQX should hold for a deployment's codec rules, each as the body EMQX takes."""

    schemas: dict[str, dict]  # by EMQX schema name
    rules: dict[str, dict]  # by EMQX rule id
    validations: dict[str, dict]  # by EMQX validation name; none before EMQX 5.7


def desired(rules, *, version: str | None = None) -> Desired:
    """What EMQX `version` should hold for the deployment's codec rules (CodecRule rows with their version and schema
    loaded). Disabled rules are kept, disabled; only the versions rules use are registered."""
    with_validations = validations_supported(version)
    schema_bodies: dict[str, dict] = {}
    rule_bodies: dict[str, dict] = {}
    validation_bodies: dict[str, dict] = {}
    for rule in rules:
        schema_version = rule.schema_version
        schema = schema_version.schema
        name = schema_name(schema.name, schema_version.version)
        message_type = (
            gpb_message_type(schema_version.message_type, bytes(schema_version.descriptor_set))
            if schema.type == schemas.PROTOBUF
            else ""
        )
        schema_bodies[name] = render_schema(
            name=name, type_=schema.type, source=schema_version.source, description=schema.description
        )
        for body in render_rules(
            public_id=rule.public_id,
            topic_filter=rule.topic_filter,
            direction=rule.direction,
            type_=schema.type,
            emqx_schema=name,
            message_type=message_type,
            topic_template=rule.topic_template,
            enabled=rule.enabled,
            validations=with_validations,
        ):
            rule_bodies[body["id"]] = body
        if with_validations and rule.direction == "decode" and schema.type in (schemas.PROTOBUF, schemas.AVRO):
            body = render_validation(
                public_id=rule.public_id,
                topic_filter=rule.topic_filter,
                type_=schema.type,
                emqx_schema=name,
                message_type=message_type,
                enabled=rule.enabled,
            )
            validation_bodies[body["name"]] = body
    return Desired(schemas=schema_bodies, rules=rule_bodies, validations=validation_bodies)


def codecs_sync(api, rules, *, version: str | None = None) -> dict[str, int]:
    """Make EMQX hold exactly our schemas, rules and validations for `rules`: create or replace what differs, then
    delete ours that are no longer wanted (rules and validations before schemas: EMQX refuses to create a validation
    naming a schema it does not hold, and one left naming a deleted schema would fail every message). `api` is a
    deployments.emqx_api.EmqxApi; `version` the cluster's EMQX release (validations from 5.7)."""
    want = desired(rules, version=version)
    have_schemas = {
        s["name"]: s
        for s in api._request("GET", "/schema_registry").json()
        if str(s.get("name", "")).startswith(SCHEMA_PREFIX)
    }
    have_rules = {r["id"]: r for r in api._paged("/rules") if str(r.get("id", "")).startswith(RULE_PREFIX)}
    have_validations: dict[str, dict] = {}
    if validations_supported(version):
        have_validations = {
            v["name"]: v
            for v in api._request("GET", "/schema_validations").json()
            if str(v.get("name", "")).startswith(VALIDATION_PREFIX)
        }
    counts = {"schemas_written": 0, "rules_written": 0, "schemas_deleted": 0, "rules_deleted": 0}
    if want.validations or have_validations:
        counts |= {"validations_written": 0, "validations_deleted": 0}
    for name, body in want.schemas.items():
        current = have_schemas.get(name)
        if current is None:
            api._request("POST", "/schema_registry", json=body, expected=(200, 201))
        elif (current.get("type"), current.get("source")) != (body["type"], body["source"]):
            put = {k: v for k, v in body.items() if k != "name"}
            api._request("PUT", f"/schema_registry/{quote(name, safe='')}", json=put, expected=(200,))
        else:
            continue
        counts["schemas_written"] += 1
    for name, body in want.validations.items():
        current = have_validations.get(name)
        if current is None:
            api._request("POST", "/schema_validations", json=body, expected=(200, 201))
        elif any(current.get(k) != body[k] for k in ("topics", "checks", "enable", "failure_action")):
            # EMQX's update takes the whole validation, named in the body (emqx_schema_validation_http_api.erl).
            api._request("PUT", "/schema_validations", json=body, expected=(200,))
        else:
            continue
        counts["validations_written"] += 1
    for ident, body in want.rules.items():
        current = have_rules.get(ident)
        if current is None:
            api._request("POST", "/rules", json=body, expected=(200, 201))
        elif any(current.get(k) != body[k] for k in ("sql", "actions", "enable")):
            put = {k: v for k, v in body.items() if k != "id"}
            api._request("PUT", f"/rules/{quote(ident, safe='')}", json=put, expected=(200,))
        else:
            continue
        counts["rules_written"] += 1
    for ident in sorted(set(have_rules) - set(want.rules)):
        api._request("DELETE", f"/rules/{quote(ident, safe='')}", expected=(204, 404))
        counts["rules_deleted"] += 1
    for name in sorted(set(have_validations) - set(want.validations)):
        path = f"/schema_validations/validation/{quote(name, safe='')}"
        api._request("DELETE", path, expected=(204, 404))
        counts["validations_deleted"] += 1
    for name in sorted(set(have_schemas) - set(want.schemas)):
        api._request("DELETE", f"/schema_registry/{quote(name, safe='')}", expected=(204, 404))
        counts["schemas_deleted"] += 1
    return counts
