"""Codec rules on an EMQX region: rendered into EMQX's schema registry (`/api/v5/schema_registry`) and rule engine
(`/api/v5/rules`, SQL with `schema_decode`/`schema_encode`/`schema_check` and a `republish` action), then pushed.

Renderers are pure; `codecs_sync` makes EMQX hold exactly our schemas (named `cp_…`) and rules (ids `codec_…`)
and leaves every other schema and rule of the cluster alone. Shapes from emqx/emqx v5.8
(apps/emqx_schema_registry/src/emqx_schema_registry_http_api.erl, apps/emqx_rule_engine: emqx_rule_funcs.erl
split/3 and nth/2, the republish action's `${var}` templates).
"""

from __future__ import annotations

import json
from urllib.parse import quote

from iot import codec_topics, schemas

SCHEMA_PREFIX = "cp_"
RULE_PREFIX = "codec_"
_EMQX_TYPES = {schemas.PROTOBUF: "protobuf", schemas.AVRO: "avro", schemas.JSON_SCHEMA: "json"}


def schema_name(schema: str, version: int) -> str:
    """Our schema names are [A-Za-z0-9_-]; EMQX's must start with a letter or digit, hence the prefix."""
    return f"{SCHEMA_PREFIX}{schema}_v{version}"


def rule_id(public_id: str) -> str:
    return f"{RULE_PREFIX}{public_id}"


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
) -> list[dict]:
    """The EMQX rule(s) of one codec rule. A JSON Schema rule is two rules: matching messages republished, the
    others sent to our error topic; a Protobuf or Avro payload that does not decode fails the rule (EMQX counts it
    in the rule's `failed` metrics; EMQX has no error branch to republish it from)."""
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
        error = {
            "rule": public_id,
            "reason": "does not match the JSON Schema",
            "topic": "${topic}",
            "payload_base64": "${payload_b64}",
        }
        failed = rule(
            rule_id(public_id) + "_errors",
            f"SELECT topic, base64_encode(payload) as payload_b64 FROM {source} WHERE not schema_check({name}, {value})",
            json.dumps(error, separators=(",", ":")),
            codec_topics.error_topic(public_id),
        )
        return [ok, failed]
    if direction == "decode":
        sql = f"SELECT schema_decode({name}, payload{message}) as out, topic{extra} FROM {source}"
    else:
        sql = f"SELECT schema_encode({name}, json_decode(payload){message}) as out, topic{extra} FROM {source}"
    return [rule(rule_id(public_id), sql, "${out}", topic)]


def desired(rules) -> tuple[dict[str, dict], dict[str, dict]]:
    """(schemas by EMQX name, rules by EMQX id) for the deployment's codec rules (CodecRule rows with their version
    and schema loaded). Disabled rules are kept, disabled; only the versions rules use are registered."""
    schema_bodies: dict[str, dict] = {}
    rule_bodies: dict[str, dict] = {}
    for rule in rules:
        version = rule.schema_version
        schema = version.schema
        name = schema_name(schema.name, version.version)
        schema_bodies[name] = render_schema(
            name=name, type_=schema.type, source=version.source, description=schema.description
        )
        for body in render_rules(
            public_id=rule.public_id,
            topic_filter=rule.topic_filter,
            direction=rule.direction,
            type_=schema.type,
            emqx_schema=name,
            message_type=version.message_type,
            topic_template=rule.topic_template,
            enabled=rule.enabled,
        ):
            rule_bodies[body["id"]] = body
    return schema_bodies, rule_bodies


def codecs_sync(api, rules) -> dict[str, int]:
    """Make EMQX hold exactly our schemas and rules for `rules`: create or replace what differs, then delete ours
    that are no longer wanted (rules before schemas, so no rule is left naming a deleted schema). `api` is a
    deployments.emqx_api.EmqxApi."""
    want_schemas, want_rules = desired(rules)
    have_schemas = {
        s["name"]: s
        for s in api._request("GET", "/schema_registry").json()
        if str(s.get("name", "")).startswith(SCHEMA_PREFIX)
    }
    have_rules = {r["id"]: r for r in api._paged("/rules") if str(r.get("id", "")).startswith(RULE_PREFIX)}
    counts = {"schemas_written": 0, "rules_written": 0, "schemas_deleted": 0, "rules_deleted": 0}
    for name, body in want_schemas.items():
        current = have_schemas.get(name)
        if current is None:
            api._request("POST", "/schema_registry", json=body, expected=(200, 201))
        elif (current.get("type"), current.get("source")) != (body["type"], body["source"]):
            put = {k: v for k, v in body.items() if k != "name"}
            api._request("PUT", f"/schema_registry/{quote(name, safe='')}", json=put, expected=(200,))
        else:
            continue
        counts["schemas_written"] += 1
    for ident, body in want_rules.items():
        current = have_rules.get(ident)
        if current is None:
            api._request("POST", "/rules", json=body, expected=(200, 201))
        elif any(current.get(k) != body[k] for k in ("sql", "actions", "enable")):
            put = {k: v for k, v in body.items() if k != "id"}
            api._request("PUT", f"/rules/{quote(ident, safe='')}", json=put, expected=(200,))
        else:
            continue
        counts["rules_written"] += 1
    for ident in sorted(set(have_rules) - set(want_rules)):
        api._request("DELETE", f"/rules/{quote(ident, safe='')}", expected=(204, 404))
        counts["rules_deleted"] += 1
    for name in sorted(set(have_schemas) - set(want_schemas)):
        api._request("DELETE", f"/schema_registry/{quote(name, safe='')}", expected=(204, 404))
        counts["schemas_deleted"] += 1
    return counts
