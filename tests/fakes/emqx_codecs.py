"""HTTP-level fake of EMQX 5's schema registry (`/api/v5/schema_registry`), rule engine (`/api/v5/rules`) and schema
validations (`/api/v5/schema_validations`), on top of the management API fake (tests.fakes.emqx_api), for the calls
iot.codecs_emqx makes.

Answers with EMQX 5.8's shapes: the schema and validation lists are bare arrays, rules come in `{data, meta}` pages,
a second POST of a name or id is a 400 ALREADY_EXISTS, an unknown one a 404 NOT_FOUND. It refuses, with a 400, what
EMQX's own schemas refuse (EMQX_FACTS below, copied from EMQX's source): a field EMQX does not know, a value outside
an enum, a missing required field, a name EMQX's resource names forbid, a rule or validation naming a schema that is
not registered, a rule reading an event EMQX does not fire. Never a real broker.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

from tests.fakes.emqx_api import FakeEmqx, FakeEmqxServer, _Handler, _page

SCHEMAS = "/api/v5/schema_registry"
RULES = "/api/v5/rules"
VALIDATIONS = "/api/v5/schema_validations"
# emqx_resource:validate_name/1 (shorter than 255 too)
_NAME_RE = re.compile(r"^[A-Za-z0-9]+[A-Za-z0-9_-]*$")
_SCHEMA_IN_SQL = re.compile(r"schema_(?:decode|encode|check)\('([^']*)'")
_FROM_EVENT = re.compile(r'FROM\s+"(\$events/[^"]*)"')

# What EMQX accepts, read from emqx/emqx at tag v5.8.6 (commit b895cdcd8cbc34c5f8fc5ea8b948cd2c40bba0fc); the same
# sets hold at e5.9.1 and e5.10.2 for what we send (those add check type external_http and registry fields we do not
# use). Keep each with the file it was read from.
EMQX_FACTS: dict = {
    # apps/emqx_schema_registry/src/emqx_schema_registry_schema.erl: fields("post_" ++ Type) = name + fields(Type);
    # fields(avro|protobuf|json) = type (required) + common_fields: source (required), description (default <<>>).
    # PUT /schema_registry/:name takes fields("put_" ++ Type) = fields(Type), without name.
    "schema_post_fields": {"name", "type", "source", "description"},
    "schema_put_fields": {"type", "source", "description"},
    "schema_required": {"type", "source"},
    "schema_types": {"avro", "protobuf", "json"},
    # apps/emqx_rule_engine/src/emqx_rule_engine_schema.erl fields("rules"): sql (required), actions, enable,
    # description, metadata; emqx_rule_engine_api.erl filter_out_request_body/1 drops id, status, node_status,
    # node_metrics, metrics and node from a POST/PUT body before the config check.
    "rule_fields": {"sql", "actions", "enable", "description", "metadata"},
    "rule_api_extra_fields": {"id", "status", "node_status", "node_metrics", "metrics", "node"},
    # emqx_rule_engine_schema.erl fields("builtin_action_republish") and fields("republish_args").
    "action_fields": {"function", "args"},
    "republish_args": {"topic", "qos", "retain", "payload", "mqtt_properties", "user_properties", "direct_dispatch"},
    # apps/emqx_rule_engine/src/emqx_rule_events.erl event_names/0 (the events a rule's FROM may name) and
    # eventmsg_validation_failed/2 + with_basic_columns/3 (the columns of the validation failure event).
    "validation_failed_event": "$events/schema_validation_failed",
    "validation_failed_columns": {
        "id",
        "validation",
        "clientid",
        "username",
        "payload",
        "peerhost",
        "peername",
        "topic",
        "qos",
        "flags",
        "pub_props",
        "publish_received_at",
        "event",
        "timestamp",
        "node",
    },
    # apps/emqx_schema_validation/src/emqx_schema_validation_schema.erl fields(validation), fields(log_failure),
    # fields(check_*); emqx_schema_validation_config.erl assert_referenced_schemas_exist/1.
    "validation_fields": {
        "tags",
        "description",
        "enable",
        "name",
        "topics",
        "strategy",
        "failure_action",
        "log_failure",
        "checks",
    },
    "validation_required": {"name", "topics", "strategy", "failure_action", "checks"},
    "validation_strategies": {"any_pass", "all_pass"},
    "validation_failure_actions": {"drop", "disconnect", "ignore"},
    "log_failure_fields": {"level"},
    "log_failure_levels": {"error", "warning", "notice", "info", "debug", "none"},
    "check_fields": {
        "sql": {"type", "sql"},
        "json": {"type", "schema"},
        "avro": {"type", "schema"},
        "protobuf": {"type", "schema", "message_type"},
    },
    "check_required": {"sql": {"sql"}, "json": {"schema"}, "avro": {"schema"}, "protobuf": {"schema", "message_type"}},
}
_EVENTS = {
    # emqx_rule_events.erl event_names/0 at v5.8.6
    "$events/client_connected",
    "$events/client_disconnected",
    "$events/client_connack",
    "$events/client_check_authz_complete",
    "$events/client_check_authn_complete",
    "$events/session_subscribed",
    "$events/session_unsubscribed",
    "$events/message_delivered",
    "$events/message_acked",
    "$events/message_dropped",
    "$events/delivery_dropped",
    "$events/message_transformation_failed",
    "$events/schema_validation_failed",
}


@dataclass
class FakeEmqxCodecState(FakeEmqx):
    schemas: dict[str, dict] = field(default_factory=dict)
    engine_rules: dict[str, dict] = field(default_factory=dict)
    validations: dict[str, dict] = field(default_factory=dict)  # insertion order is EMQX's evaluation order
    left_dangling: list[str] = field(default_factory=list)  # validations whose schema was deleted under them


def schema_problem(body: dict, *, put: bool = False) -> str | None:
    """Why EMQX would refuse a schema registry POST (or PUT) body, or None."""
    known = EMQX_FACTS["schema_put_fields" if put else "schema_post_fields"]
    if unknown := set(body) - known:
        return f"unknown fields {sorted(unknown)}"
    if missing := EMQX_FACTS["schema_required"] - set(body):
        return f"missing required fields {sorted(missing)}"
    if not put and (
        not isinstance(body.get("name"), str) or not _NAME_RE.match(body["name"]) or len(body["name"]) >= 255
    ):
        return f"invalid name {body.get('name')!r}"
    if body["type"] not in EMQX_FACTS["schema_types"]:
        return f"type must be one of {sorted(EMQX_FACTS['schema_types'])}"
    if not isinstance(body["source"], str) or not body["source"]:
        return "source must be a non-empty string"
    if body["type"] in ("avro", "json"):
        try:
            json.loads(body["source"])  # emqx_schema:json_binary()
        except ValueError:
            return "source must be JSON"
    if not isinstance(body.get("description", ""), str):
        return "description must be a string"
    return None


def gpb_message_names(source: str) -> set[str]:
    """The message names EMQX's gpb-compiled module of a .proto knows (get_msg_names/0 without `use_packages`): no
    package, nested ones as `Outer.Inner`. Read with a brace-counting scan, enough for the schemas tests send."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", source, flags=re.DOTALL)
    names, stack, depth_of = set(), [], []
    for token in re.finditer(r"\bmessage\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{|\{|\}", text):
        if token[1]:
            stack.append(token[1])
            names.add(".".join(stack))
            depth_of.append(True)
        elif token[0] == "{":
            depth_of.append(False)
        elif depth_of and depth_of.pop():
            stack.pop()
    return names


_SQL_WORDS = {"select", "from", "where", "as", "and", "or", "not", "div", "mod", "true", "false", "null"}


def _columns(sql: str) -> set[str]:
    """The event columns a rule's SQL reads: identifiers that are not functions, keywords or its own aliases."""
    bare = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "''", sql)
    aliases = set(re.findall(r"\bas\s+([A-Za-z_][A-Za-z0-9_]*)", bare, flags=re.IGNORECASE))
    found = set()
    for match in re.finditer(r"\b([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z0-9_.]+)?\b(\s*\()?", bare):
        name = match[1]
        if match[2] or name.lower() in _SQL_WORDS or name in aliases:
            continue
        found.add(name)
    return found


def rule_problem(body: dict, schemas: dict) -> str | None:
    """Why EMQX would refuse a rule body (POST or PUT), or None."""
    if unknown := set(body) - EMQX_FACTS["rule_fields"] - EMQX_FACTS["rule_api_extra_fields"]:
        return f"unknown fields {sorted(unknown)}"
    if not isinstance(body.get("sql"), str) or not body["sql"].upper().startswith("SELECT"):
        return "sql must be a SELECT statement"
    if "enable" in body and not isinstance(body["enable"], bool):
        return "enable must be a boolean"
    for name in _SCHEMA_IN_SQL.findall(body["sql"]):
        if name not in schemas:
            return f"schema {name!r} not found"
    for event in _FROM_EVENT.findall(body["sql"]):
        if event not in _EVENTS:
            return f"unknown event {event!r}"
        if event == EMQX_FACTS["validation_failed_event"]:
            unknown = _columns(body["sql"]) - EMQX_FACTS["validation_failed_columns"]
            if unknown:
                return f"{event} has no columns {sorted(unknown)}"
    for action in body.get("actions", []):
        if not isinstance(action, dict):
            return "an action must be an object here"
        if unknown := set(action) - EMQX_FACTS["action_fields"]:
            return f"unknown action fields {sorted(unknown)}"
        if action.get("function") == "republish":
            args = action.get("args", {})
            if unknown := set(args) - EMQX_FACTS["republish_args"]:
                return f"unknown republish args {sorted(unknown)}"
            if not args.get("topic"):
                return "republish needs a topic"
            if args.get("qos", 0) not in (0, 1, 2) and not str(args.get("qos")).startswith("${"):
                return "qos must be 0, 1, 2 or a ${} template"
            if not isinstance(args.get("retain", False), bool) and not str(args.get("retain")).startswith("${"):
                return "retain must be a boolean or a ${} template"
    return None


def validation_problem(body: dict, schemas: dict) -> str | None:
    """Why EMQX would refuse a schema validation body, or None."""
    if unknown := set(body) - EMQX_FACTS["validation_fields"]:
        return f"unknown fields {sorted(unknown)}"
    if missing := EMQX_FACTS["validation_required"] - set(body):
        return f"missing required fields {sorted(missing)}"
    name = body["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) >= 255:
        return f"invalid name {name!r}"
    topics = body["topics"] if isinstance(body["topics"], list) else [body["topics"]]
    if not topics or len(set(topics)) != len(topics) or not all(isinstance(t, str) and t for t in topics):
        return "topics: at least one topic filter, no duplicates"
    if body["strategy"] not in EMQX_FACTS["validation_strategies"]:
        return f"strategy must be one of {sorted(EMQX_FACTS['validation_strategies'])}"
    if body["failure_action"] not in EMQX_FACTS["validation_failure_actions"]:
        return f"failure_action must be one of {sorted(EMQX_FACTS['validation_failure_actions'])}"
    log_failure = body.get("log_failure", {})
    if (
        set(log_failure) - EMQX_FACTS["log_failure_fields"]
        or log_failure.get("level", "info") not in EMQX_FACTS["log_failure_levels"]
    ):
        return "log_failure: {level: error | warning | notice | info | debug | none}"
    if "enable" in body and not isinstance(body["enable"], bool):
        return "enable must be a boolean"
    checks = body["checks"]
    if not isinstance(checks, list) or not checks:
        return "checks: a non-empty list"
    for check in checks:
        kind = check.get("type") if isinstance(check, dict) else None
        if kind not in EMQX_FACTS["check_fields"]:
            return f"check type must be one of {sorted(EMQX_FACTS['check_fields'])}"
        if unknown := set(check) - EMQX_FACTS["check_fields"][kind]:
            return f"unknown check fields {sorted(unknown)}"
        if missing := EMQX_FACTS["check_required"][kind] - set(check):
            return f"missing check fields {sorted(missing)}"
        if "schema" in check:
            registered = schemas.get(check["schema"])
            if registered is None or registered.get("type") != kind:
                return f"schema {check['schema']!r} of type {kind} not found"
            if kind == "protobuf" and check["message_type"] not in gpb_message_names(registered["source"]):
                return f"schema {check['schema']!r} has no message type {check['message_type']!r}"
    return None


class _CodecHandler(_Handler):
    state: FakeEmqxCodecState

    def _dispatch(self, method: str, path: str, query, raw: bytes) -> None:
        state = self.state
        if path == SCHEMAS:
            if method == "GET":
                self._send(200, [{**s, "name": n} for n, s in sorted(state.schemas.items())])
            elif method == "POST":
                body = json.loads(raw)
                name = body.get("name", "")
                problem = schema_problem(body)
                if problem:
                    self._error(400, "BAD_REQUEST", problem)
                elif name in state.schemas:
                    self._error(400, "ALREADY_EXISTS", "Schema already exists")
                else:
                    state.schemas[name] = {k: v for k, v in body.items() if k != "name"}
                    self._send(201, body)
            else:
                self._error(405, "METHOD_NOT_ALLOWED", method)
        elif m := re.fullmatch(f"{SCHEMAS}/(.+)", path):
            name = m[1]
            if name not in state.schemas:
                self._error(404, "NOT_FOUND", "Schema not found")
            elif method == "GET":
                self._send(200, {**state.schemas[name], "name": name})
            elif method == "PUT":
                body = json.loads(raw)
                problem = schema_problem(body, put=True)
                if problem:
                    self._error(400, "BAD_REQUEST", problem)
                else:
                    state.schemas[name] = body
                    self._send(200, {**state.schemas[name], "name": name})
            elif method == "DELETE":
                # EMQX deletes a schema a validation still names (nothing in emqx_schema_registry checks); the
                # validation then fails every message (serde_not_found), which the sync's order avoids: recorded.
                state.left_dangling += [
                    v["name"] for v in state.validations.values() if any(c.get("schema") == name for c in v["checks"])
                ]
                del state.schemas[name]
                self._send(204)
            else:
                self._error(405, "METHOD_NOT_ALLOWED", method)
        elif path == RULES:
            if method == "GET":
                self._send(200, _page([copy.deepcopy(r) for _, r in sorted(state.engine_rules.items())], query))
            elif method == "POST":
                body = json.loads(raw)
                problem = self._check_rule(body)
                if problem:
                    self._error(400, "BAD_REQUEST", problem)
                elif body["id"] in state.engine_rules:
                    self._error(400, "ALREADY_EXISTS", "rule id already exists")
                else:
                    state.engine_rules[body["id"]] = body
                    self._send(201, body)
            else:
                self._error(405, "METHOD_NOT_ALLOWED", method)
        elif m := re.fullmatch(f"{RULES}/(.+)", path):
            ident = m[1]
            if ident not in state.engine_rules:
                self._error(404, "NOT_FOUND", f"Rule Id Not Found: {ident}")
            elif method == "GET":
                self._send(200, state.engine_rules[ident])
            elif method == "PUT":
                body = {**json.loads(raw), "id": ident}
                problem = self._check_rule(body)
                if problem:
                    self._error(400, "BAD_REQUEST", problem)
                else:
                    state.engine_rules[ident] = body
                    self._send(200, body)
            elif method == "DELETE":
                del state.engine_rules[ident]
                self._send(204)
            else:
                self._error(405, "METHOD_NOT_ALLOWED", method)
        elif path == VALIDATIONS:
            if method == "GET":
                self._send(200, [copy.deepcopy(v) for v in state.validations.values()])
            elif method in ("POST", "PUT"):
                body = json.loads(raw)
                name = body.get("name")
                problem = validation_problem(body, state.schemas)
                if problem:
                    self._error(400, "BAD_REQUEST", problem)
                elif method == "POST" and name in state.validations:
                    self._error(400, "ALREADY_EXISTS", "Validation already exists")
                elif method == "PUT" and name not in state.validations:
                    self._error(404, "NOT_FOUND", "Validation not found")
                else:
                    stored = {"enable": True, "description": "", "tags": [], "log_failure": {"level": "info"}, **body}
                    state.validations[name] = stored
                    self._send(201 if method == "POST" else 200, stored)
            else:
                self._error(405, "METHOD_NOT_ALLOWED", method)
        elif m := re.fullmatch(f"{VALIDATIONS}/validation/([^/]+)", path):
            name = m[1]
            if name not in state.validations:
                self._error(404, "NOT_FOUND", "Validation not found")
            elif method == "GET":
                self._send(200, state.validations[name])
            elif method == "DELETE":
                del state.validations[name]
                self._send(204)
            else:
                self._error(405, "METHOD_NOT_ALLOWED", method)
        else:
            super()._dispatch(method, path, query, raw)

    def _check_rule(self, body: dict) -> str | None:
        return rule_problem(body, self.state.schemas)


class FakeEmqxCodecServer(FakeEmqxServer):
    state: FakeEmqxCodecState

    def __init__(self, *, api_key: str, api_secret: str, version: str = "5.8.6") -> None:
        self.state = FakeEmqxCodecState(api_key=api_key, api_secret=api_secret, version=version)
        handler = type("Handler", (_CodecHandler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        import threading

        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def registry(self) -> dict[str, dict]:
        with self.state.lock:
            return copy.deepcopy(self.state.schemas)

    def engine(self) -> dict[str, dict]:
        with self.state.lock:
            return copy.deepcopy(self.state.engine_rules)

    def schema_validations(self) -> dict[str, dict]:
        with self.state.lock:
            return copy.deepcopy(self.state.validations)
