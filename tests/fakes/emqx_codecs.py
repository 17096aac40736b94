"""HTTP-level fake of EMQX 5's schema registry (`/api/v5/schema_registry`) and rule engine (`/api/v5/rules`), on top
of the management API fake (tests.fakes.emqx_api), for the calls iot.codecs_emqx makes.

Answers with EMQX 5.8's shapes: the schema list is a bare array, rules come in `{data, meta}` pages, a second POST
of a name or id is a 400 ALREADY_EXISTS, an unknown one a 404 NOT_FOUND; schema types are protobuf, avro and json.
It checks what EMQX's own checks would refuse that we could send: a rule naming a schema that is not registered, a
schema name EMQX's resource names forbid, a republish action without a topic. Never a real broker.
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
# emqx_resource:validate_name/1
_NAME_RE = re.compile(r"^[A-Za-z0-9]+[A-Za-z0-9_-]*$")
_SCHEMA_IN_SQL = re.compile(r"schema_(?:decode|encode|check)\('([^']*)'")


@dataclass
class FakeEmqxCodecState(FakeEmqx):
    schemas: dict[str, dict] = field(default_factory=dict)
    engine_rules: dict[str, dict] = field(default_factory=dict)


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
                if not _NAME_RE.match(name):
                    self._error(400, "BAD_REQUEST", f"invalid name {name!r}")
                elif name in state.schemas:
                    self._error(400, "ALREADY_EXISTS", "Schema already exists")
                elif body.get("type") not in ("protobuf", "avro", "json") or not body.get("source"):
                    self._error(400, "BAD_REQUEST", "bad schema")
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
                state.schemas[name] = json.loads(raw)
                self._send(200, {**state.schemas[name], "name": name})
            elif method == "DELETE":
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
        else:
            super()._dispatch(method, path, query, raw)

    def _check_rule(self, body: dict) -> str | None:
        if not isinstance(body.get("sql"), str) or not body["sql"].upper().startswith("SELECT"):
            return "sql must be a SELECT statement"
        for name in _SCHEMA_IN_SQL.findall(body["sql"]):
            if name not in self.state.schemas:
                return f"schema {name!r} not found"
        for action in body.get("actions", []):
            if action.get("function") == "republish" and not action.get("args", {}).get("topic"):
                return "republish needs a topic"
        return None


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
