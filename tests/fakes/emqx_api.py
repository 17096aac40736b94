"""HTTP-level fake of EMQX 5's management API (`/api/v5`) for the calls deployments.emqx_api makes.

Checks HTTP Basic auth (401 BAD_API_KEY_OR_SECRET otherwise), keeps built-in database users and authorization rules,
and answers with EMQX's response shapes (`{data, meta}` pages, `{code, message}` errors), by release where they
differ. `authorize` decides as EMQX's built-in database does. Never a real broker.
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

AUTHN = "/api/v5/authentication/password_based:built_in_database"
RULES = "/api/v5/authorization/sources/built_in_database/rules"
# emqx/emqx v5.8.6 apps/emqx_auth_mnesia/src/emqx_authz_mnesia_schema.erl MAX_RULES (the default max_rules).
MAX_RULES = 100


# A placeholder in an authorization rule's topic (emqx/emqx v5.8.6 apps/emqx_utils/src/emqx_template.erl
# RE_PLACEHOLDER), and the ones a rule's topic may use (apps/emqx_auth/src/emqx_authz/emqx_authz_rule.erl
# ALLOWED_VARS; 5.1.1 knows only username and clientid). Others are kept as written.
_PLACEHOLDER = re.compile(r"\$\{[.]?([a-zA-Z0-9._]*)\}")
_TOPIC_VARS = ("username", "clientid", "cert_common_name", "zone")


def _topic_vars_allowed(name: str) -> bool:
    return name in _TOPIC_VARS or name.startswith("client_attrs.")


def rule_topic_matches(topic: str, rule_topic: str, *, client_id: str, username: str) -> bool:
    """Whether a rule's topic matches `topic` as EMQX's built-in database reads it (v5.8.6 emqx_authz_rule.erl
    compile_topic/1, match_topics/3): `eq <filter>` is that filter word for word, wildcards included; a topic with a
    placeholder is rendered for the client first, and a placeholder it has no value for matches nothing."""
    from deployments.emqx_acl import topic_matches

    if rule_topic.startswith("eq "):
        return topic.split("/") == rule_topic[3:].split("/")
    values = {"username": username, "clientid": client_id}
    missing = False

    def render(found: re.Match[str]) -> str:
        nonlocal missing
        name = found.group(1)
        if not _topic_vars_allowed(name):
            return found.group(0)
        if name not in values:
            missing = True
            return ""
        return values[name]

    rendered = _PLACEHOLDER.sub(render, rule_topic)
    return not missing and topic_matches(topic, rendered)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _route_path(raw: str) -> str:
    """The path as EMQX's router (cowboy) sees it: split on `/`, each segment percent-decoded, then `.` and `..`
    removed (cowboy_router.erl split_path/2 and remove_dot_segments/2), so no encoding gets a dot segment through."""
    out: list[str] = []
    for segment in (unquote(part) for part in raw.split("/")[1:]):
        if segment == ".":
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return "/" + "/".join(out)


@dataclass
class FakeEmqx:
    api_key: str
    api_secret: str
    users: dict[str, dict] = field(default_factory=dict)  # user_id -> {password_hash, salt, is_superuser}
    user_rules: dict[str, list[dict]] = field(default_factory=dict)
    client_rules: dict[str, list[dict]] = field(default_factory=dict)
    all_rules: list[dict] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)
    fail_status: int | None = None  # answer every request with this status (e.g. 503) while set…
    fail_path_prefix: str = ""  # …or only those whose path starts with this (an authz source restarting, say)…
    fail_method: str = ""  # …and, if set, only with this method
    version: str = "5.8.6"  # the release whose wire formats the fake speaks
    import_queries: list[dict] = field(default_factory=list)
    # Connected clients (client id -> username), and their cached authorization decisions ((client id, action,
    # topic) -> decision), as EMQX keeps them per connection (authorization.cache, on by default) until the cache is
    # cleaned or the client disconnects.
    clients: dict[str, str] = field(default_factory=dict)
    authz_cache: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    # The banned table ((as, who) -> {as, who, by, reason, at, until}), checked at CONNECT (emqx_channel.erl
    # check_banned/2, after the username is set from the certificate's CN by peer_cert_as_username).
    banned: dict[tuple[str, str], dict] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


def _page(items: list[dict], query: dict[str, list[str]]) -> dict:
    page = int(query.get("page", ["1"])[0])
    limit = int(query.get("limit", ["100"])[0])
    chunk = items[(page - 1) * limit : page * limit]
    return {
        "data": chunk,
        "meta": {"page": page, "limit": limit, "count": len(items), "hasnext": page * limit < len(items)},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeEmqx

    def log_message(self, format, *args):  # noqa: A002
        return

    def _send(self, code: int, body: object | None = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, code: int, err: str, message: str) -> None:
        self._send(code, {"code": err, "message": message})

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            return key == self.state.api_key and secret == self.state.api_secret
        return False

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = _route_path(parts.path), parse_qs(parts.query)
        raw = self._raw_body()
        state = self.state
        with state.lock:
            state.seen.append((method, path))
            if not self._authorised():
                self._error(401, "BAD_API_KEY_OR_SECRET", "Check api_key/api_secret")
                return
            if state.fail_status and path.startswith(state.fail_path_prefix) and state.fail_method in ("", method):
                self._error(state.fail_status, "SERVICE_UNAVAILABLE", "injected failure")
                return
            self._dispatch(method, path, query, raw)

    def _dispatch(self, method: str, path: str, query, raw: bytes) -> None:
        state = self.state
        if path == f"{AUTHN}/import_users" and method == "POST":
            self._import_users(raw, query)
        elif path == f"{AUTHN}/users" and method == "GET":
            users = [{"user_id": uid, "is_superuser": u["is_superuser"]} for uid, u in sorted(state.users.items())]
            self._send(200, _page(users, query))
        elif (m := re.fullmatch(f"{re.escape(AUTHN)}/users/(.+)", path)) and method == "DELETE":
            if state.users.pop(m[1], None) is None:
                self._error(404, "NOT_FOUND", "User not found")
            else:
                self._send(204)
        elif path in (f"{RULES}/users", f"{RULES}/clients") and method == "GET":
            key, table = ("username", state.user_rules) if path.endswith("users") else ("clientid", state.client_rules)
            rows = [{key: who, "rules": rules} for who, rules in sorted(table.items())]
            self._send(200, _page(rows, query))
        elif m := re.fullmatch(f"{re.escape(RULES)}/(users|clients)/(.+)", path):
            key, table = ("username", state.user_rules) if m[1] == "users" else ("clientid", state.client_rules)
            who = m[2]
            if method == "PUT":
                body = json.loads(raw)
                rules = [self._rule(r) for r in body.get("rules", [])]
                if None in rules:
                    self._error(400, "BAD_REQUEST", "bad rule schema")
                    return
                if len(rules) > MAX_RULES:  # emqx_authz_api_mnesia.erl user/2, client/2: ensure_rules_len
                    self._error(400, "BAD_REQUEST", "The rules length exceeds the maximum limit.")
                    return
                table[who] = rules
                self._send(204)
            elif method == "DELETE":
                if table.pop(who, None) is None:
                    self._error(404, "NOT_FOUND", "Not Found")
                else:
                    self._send(204)
            elif method == "GET":
                if who not in table:
                    self._error(404, "NOT_FOUND", "Not Found")
                else:
                    self._send(200, {key: who, "rules": table[who]})
            else:
                self._error(405, "METHOD_NOT_ALLOWED", method)
        elif path == f"{RULES}/all":
            if method == "GET":
                self._send(200, {"rules": state.all_rules})
            elif method == "POST":
                rules = [self._rule(r) for r in json.loads(raw).get("rules", [])]
                if None in rules:
                    self._error(400, "BAD_REQUEST", "bad rule schema")
                    return
                if len(rules) > MAX_RULES:
                    self._error(400, "BAD_REQUEST", "The length of rules exceeds the maximum limit.")
                    return
                state.all_rules = rules
                self._send(204)
            elif method == "DELETE":
                state.all_rules = []
                self._send(204)
        elif path == "/api/v5/clients" and method == "GET":
            # emqx_mgmt_api_clients.erl: `username` filters exactly.
            wanted = (query.get("username") or [None])[0]
            connected = [
                {"clientid": cid, "username": who, "connected": True}
                for cid, who in sorted(state.clients.items())
                if wanted is None or who == wanted
            ]
            self._send(200, _page(connected, query))
        elif path == "/api/v5/clients/kickout/bulk" and method == "POST":
            # emqx_mgmt_api_clients.erl schema("/clients/kickout/bulk"): a JSON array of client ids; 204 whether or
            # not each is connected.
            for cid in json.loads(raw or b"[]"):
                if state.clients.pop(cid, None) is not None:
                    state.authz_cache = {k: v for k, v in state.authz_cache.items() if k[0] != cid}
            self._send(204)
        elif (m := re.fullmatch(r"/api/v5/clients/(.+)", path)) and method == "DELETE":
            if state.clients.pop(m[1], None) is None:
                self._error(404, "CLIENTID_NOT_FOUND", "Client ID not found")
            else:
                state.authz_cache = {k: v for k, v in state.authz_cache.items() if k[0] != m[1]}
                self._send(204)
        elif path == "/api/v5/banned" and method == "GET":
            self._send(200, _page([dict(b) for _k, b in sorted(state.banned.items())], query))
        elif path == "/api/v5/banned" and method == "POST":
            # emqx_mgmt_api_banned.erl banned/2 (v5.8.6): 200 with the ban; 400 ALREADY_EXISTS for a live one;
            # `by` defaults to mgmt_api, `until` to infinity (emqx_banned.erl parse/1).
            body = json.loads(raw or b"{}")
            who, kind = body.get("who"), body.get("as")
            if kind not in ("clientid", "username", "peerhost") or not isinstance(who, str) or not who:
                self._error(400, "BAD_REQUEST", "invalid who")
            elif (kind, who) in state.banned:
                self._error(400, "ALREADY_EXISTS", json.dumps(state.banned[(kind, who)]))
            else:
                ban = {
                    "as": kind,
                    "who": who,
                    "by": body.get("by", "mgmt_api"),
                    "reason": body.get("reason", ""),
                    "at": "2026-01-01T00:00:00+00:00",
                    "until": body.get("until", "infinity"),
                }
                state.banned[(kind, who)] = ban
                self._send(200, ban)
        elif (m := re.fullmatch(r"/api/v5/banned/(clientid|username|peerhost)/(.+)", path)) and method == "DELETE":
            if state.banned.pop((m[1], m[2]), None) is None:
                self._error(404, "NOT_FOUND", f"{m[1]}: {m[2]} not found")
            else:
                self._send(204)
        elif path == "/api/v5/authorization/cache" and method == "DELETE":
            state.authz_cache.clear()  # emqx_authz_api_cache.erl clean_cache/2: every node's
            self._send(204)
        elif path == "/api/v5/monitor_current" and method == "GET":
            self._send(
                200,
                {
                    "connections": 3,
                    "live_connections": 2,
                    "sent_msg_rate": 0,
                    "received_msg_rate": 0,
                    "subscriptions": 1,
                    "topics": 1,
                    "retained_msg_count": 0,
                    "shared_subscriptions": 0,
                },
            )
        elif path == "/api/v5/stats" and method == "GET":
            self._send(
                200,
                {
                    "connections.count": 3,
                    "live_connections.count": 2,
                    "sessions.count": 3,
                    "subscriptions.count": 1,
                    "topics.count": 1,
                    "retained.count": 0,
                },
            )
        elif path == "/api/v5/metrics" and method == "GET":
            self._send(
                200,
                {
                    "messages.received": 10,
                    "messages.sent": 10,
                    "messages.dropped": 0,
                    "client.connected": 3,
                    "authentication.failure": 0,
                },
            )
        else:
            self._error(404, "NOT_FOUND", f"no route for {method} {path}")

    @staticmethod
    def _rule(rule: dict) -> dict | None:
        if rule.get("permission") not in ("allow", "deny") or rule.get("action") not in ("publish", "subscribe", "all"):
            return None
        if not isinstance(rule.get("topic"), str):
            return None
        # EMQX fills the defaults into what it stores and returns.
        return {
            "topic": rule["topic"],
            "permission": rule["permission"],
            "action": rule["action"],
            "qos": rule.get("qos", [0, 1, 2]),
            "retain": rule.get("retain", "all"),
        }

    def _import_users(self, raw: bytes, query: dict[str, list[str]]) -> None:
        # From 5.5 the `type` query parameter is required (plain | hash) and the answer is 200 with counts; before,
        # an unknown parameter is ignored and the answer is 204 without a body (emqx/emqx v5.5.0 vs v5.4.1
        # apps/emqx_auth/src/emqx_authn/emqx_authn_user_import_api.erl).
        self.state.import_queries.append(dict(query))
        takes_type = _release(self.state.version) >= (5, 5, 0)
        password_type = (query.get("type") or [None])[0]
        if takes_type and password_type not in ("plain", "hash"):
            self._error(400, "BAD_REQUEST", "type: required, one of plain, hash")
            return
        if takes_type and password_type == "plain":
            self._error(400, "BAD_REQUEST", "the fake imports hashed users only")
            return
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            self._error(400, "BAD_REQUEST", "multipart/form-data expected")
            return
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw
        )
        upload = next(
            (
                part
                for part in message.iter_parts()
                if part.get_param("name", header="content-disposition") == "filename"
            ),
            None,
        )
        if upload is None:
            self._error(400, "BAD_REQUEST", "missing file 'filename'")
            return
        filename = upload.get_filename() or ""
        if not filename.endswith(".json"):
            self._error(400, "BAD_REQUEST", "Unsupported file type")
            return
        try:
            rows = json.loads(upload.get_payload(decode=True))
        except ValueError:
            self._error(400, "BAD_REQUEST", "invalid JSON")
            return
        for row in rows:
            if "user_id" not in row or "password_hash" not in row:
                self._error(400, "BAD_REQUEST", "user_id and password_hash are required")
                return
        override = 0
        for row in rows:
            override += row["user_id"] in self.state.users
            self.state.users[row["user_id"]] = {
                "password_hash": row["password_hash"],
                "salt": row.get("salt", ""),
                "is_superuser": bool(row.get("is_superuser", False)),
            }
        if not takes_type:
            self._send(204)
            return
        self._send(
            200, {"total": len(rows), "success": len(rows) - override, "override": override, "skipped": 0, "failed": 0}
        )

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class FakeEmqxServer:
    def __init__(self, *, api_key: str, api_secret: str, version: str = "5.8.6") -> None:
        self.state = FakeEmqx(api_key=api_key, api_secret=api_secret, version=version)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeEmqxServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def users(self) -> dict[str, dict]:
        with self.state.lock:
            return copy.deepcopy(self.state.users)

    def connect(self, *, client_id: str, username: str) -> None:
        """A client signed in (EMQX checks the password at CONNECT only): it stays connected until kicked. A new
        connection starts with an empty authorization cache (emqx_authz_cache keeps it in the connection process's
        dictionary), also when it takes a client id over. A banned client id or username is refused (ConnectionRefused,
        CONNACK reason 0x8A, emqx_channel.erl check_banned/2)."""
        with self.state.lock:
            if ("clientid", client_id) in self.state.banned or ("username", username) in self.state.banned:
                raise ConnectionRefusedError(f"banned: {client_id!r} / {username!r}")
            self.state.clients[client_id] = username
            for key in [k for k in self.state.authz_cache if k[0] == client_id]:
                del self.state.authz_cache[key]

    def connected(self) -> dict[str, str]:
        with self.state.lock:
            return dict(self.state.clients)

    def authorize(self, *, client_id: str, username: str, action: str, topic: str) -> str | None:
        """EMQX's decision from the stored rules: client id's, then username's, then all's; the first match decides
        (emqx/emqx v5.8.6 apps/emqx_auth_mnesia/src/emqx_authz_mnesia.erl authorize/4). None: no rule matched.
        A connected client's decision is cached (emqx_authz_cache) until the cache is cleaned or it disconnects."""
        with self.state.lock:
            cached = self.state.clients.get(client_id) == username
            key = (client_id, action, topic)
            if cached and key in self.state.authz_cache:
                return self.state.authz_cache[key]
            sequence = (
                self.state.client_rules.get(client_id, [])
                + self.state.user_rules.get(username, [])
                + self.state.all_rules
            )
            decision = next(
                (
                    rule["permission"]
                    for rule in sequence
                    if rule["action"] in ("all", action)
                    and rule_topic_matches(topic, rule["topic"], client_id=client_id, username=username)
                ),
                None,
            )
            if cached:
                self.state.authz_cache[key] = decision
            return decision

    def rules(self) -> dict[str, object]:
        with self.state.lock:
            return copy.deepcopy(
                {"users": self.state.user_rules, "clients": self.state.client_rules, "all": self.state.all_rules}
            )
