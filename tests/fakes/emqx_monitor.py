"""HTTP-level fake of EMQX 5's monitoring endpoints, served on 127.0.0.1 for the real `requests` client.

Owns only what alerts.collectors.emqx calls: monitor_current, stats, metrics, rules (+ per-rule metrics) and
connectors, in EMQX's payload shapes, with HTTP Basic API-key auth. It never reaches the network beyond loopback.
Switches: `mode = "hang"` (requests never answer until stop()) or `mode = "503"`; `version` picks the release whose
routes it serves: before 5.4 there is no `/connectors` (404) and data integrations are `/bridges` (emqx/emqx e5.1.1
apps/emqx_bridge/src/emqx_bridge_api.erl, list entries with `status`), before 5.3.1 not even a connector API.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def _sum_nodes(nodes: list[dict]) -> dict:
    total: dict = {}
    for node in nodes:
        for key, value in node.items():
            if key == "node":
                continue
            total[key] = total.get(key, 0) + value
    return total


class EmqxMonitorFake:
    def __init__(self, *, key: str = "monitor-key", secret: str = "monitor-secret", version: str = "5.8.6") -> None:
        self.key = key
        self.secret = secret
        self.version = version
        self.mode = "ok"
        self.requests: list[str] = []
        self._release = threading.Event()
        self.monitor_current = {
            "connections": 12,
            "live_connections": 10,
            "subscriptions": 25,
            "subscriptions_durable": 0,
            "subscriptions_ram": 25,
            "disconnected_durable_sessions": 0,
            "topics": 7,
            "retained_msg_count": 3,
            "shared_subscriptions": 0,
            "received_msg_rate": 40,
            "sent_msg_rate": 80,
            "dropped_msg_rate": 1,
            "persisted_rate": 0,
            "validation_failed_rate": 0,
            "validation_succeeded_rate": 0,
            "transformation_failed_rate": 0,
            "transformation_succeeded_rate": 0,
        }
        self.stats_nodes = [
            {
                "node": "emqx@10.0.0.1",
                "connections.count": 7,
                "connections.max": 9,
                "live_connections.count": 6,
                "live_connections.max": 8,
                "sessions.count": 7,
                "sessions.max": 9,
                "subscriptions.count": 15,
                "subscriptions.max": 16,
                "topics.count": 7,
                "topics.max": 7,
                "retained.count": 3,
                "retained.max": 3,
            },
            {
                "node": "emqx@10.0.0.2",
                "connections.count": 5,
                "connections.max": 6,
                "live_connections.count": 4,
                "live_connections.max": 6,
                "sessions.count": 5,
                "sessions.max": 6,
                "subscriptions.count": 10,
                "subscriptions.max": 10,
                "topics.count": 0,
                "topics.max": 0,
                "retained.count": 0,
                "retained.max": 0,
            },
        ]
        self.metrics_nodes = [
            {
                "node": "emqx@10.0.0.1",
                "authentication.success": 100,
                "authentication.success.anonymous": 0,
                "authentication.failure": 4,
                "authorization.allow": 500,
                "authorization.deny": 2,
                "authorization.cache_hit": 300,
                "bytes.received": 10_000,
                "bytes.sent": 20_000,
                "messages.received": 400,
                "messages.sent": 800,
                "messages.dropped": 5,
                "messages.publish": 400,
                "packets.connack.auth_error": 4,
            },
            {
                "node": "emqx@10.0.0.2",
                "authentication.success": 50,
                "authentication.success.anonymous": 0,
                "authentication.failure": 1,
                "authorization.allow": 200,
                "authorization.deny": 0,
                "authorization.cache_hit": 100,
                "bytes.received": 5_000,
                "bytes.sent": 6_000,
                "messages.received": 100,
                "messages.sent": 200,
                "messages.dropped": 0,
                "messages.publish": 100,
                "packets.connack.auth_error": 1,
            },
        ]
        self.rules = [
            {
                "id": "rule_to_kafka",
                "name": "rule_to_kafka",
                "enable": True,
                "sql": 'SELECT * FROM "sensors/#"',
                "actions": ["kafka_producer:to_kafka"],
                "description": "",
                "created_at": "2024-05-01T10:00:00.000+00:00",
                "from": ["sensors/#"],
            },
            {
                "id": "rule:with/slash",
                "name": "audit",
                "enable": True,
                "sql": 'SELECT * FROM "audit/#"',
                "actions": ["http:audit"],
                "description": "",
                "created_at": "2024-05-01T10:00:00.000+00:00",
                "from": ["audit/#"],
            },
        ]
        self.rule_metrics = {
            "rule_to_kafka": {"matched": 100, "passed": 98, "failed": 2, "actions.failed": 1},
            "rule:with/slash": {"matched": 10, "passed": 10, "failed": 0, "actions.failed": 0},
        }
        self.connectors = [
            {"type": "kafka_producer", "name": "to_kafka", "enable": True, "status": "connected", "node_status": []},
            {
                "type": "http",
                "name": "audit",
                "enable": True,
                "status": "disconnected",
                "status_reason": "econnrefused",
                "node_status": [],
            },
            {"type": "http", "name": "old", "enable": False, "status": "stopped", "node_status": []},
        ]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EmqxMonitorFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _rule_metrics_body(self, rule_id: str) -> dict:
        base = {
            "matched": 0,
            "matched.rate": 0.0,
            "matched.rate.max": 0.0,
            "matched.rate.last5m": 0.0,
            "passed": 0,
            "failed": 0,
            "failed.exception": 0,
            "failed.unknown": 0,
            "actions.total": 0,
            "actions.success": 0,
            "actions.failed": 0,
            "actions.failed.out_of_service": 0,
            "actions.failed.unknown": 0,
            "actions.discarded": 0,
        }
        base.update(self.rule_metrics.get(rule_id, {}))
        return {"id": rule_id, "metrics": base, "node_metrics": [{"node": "emqx@10.0.0.1", "metrics": base}]}

    def _route(self, path: str, query: dict) -> tuple[int, object]:
        aggregate = query.get("aggregate", ["false"])[0] == "true"
        if path == "/api/v5/monitor_current":
            return 200, self.monitor_current
        if path == "/api/v5/stats":
            return 200, _sum_nodes(self.stats_nodes) if aggregate else self.stats_nodes
        if path == "/api/v5/metrics":
            return 200, _sum_nodes(self.metrics_nodes) if aggregate else self.metrics_nodes
        if path == "/api/v5/rules":
            page = int(query.get("page", ["1"])[0])
            limit = int(query.get("limit", ["100"])[0])
            data = self.rules[(page - 1) * limit : page * limit]
            meta = {"page": page, "limit": limit, "count": len(self.rules), "hasnext": page * limit < len(self.rules)}
            return 200, {"data": data, "meta": meta}
        if path.startswith("/api/v5/rules/") and path.endswith("/metrics"):
            rule_id = unquote(path[len("/api/v5/rules/") : -len("/metrics")])
            if rule_id not in {r["id"] for r in self.rules}:
                return 404, {"code": "NOT_FOUND", "message": "Rule Id Not Found"}
            return 200, self._rule_metrics_body(rule_id)
        release = tuple(int(part) for part in self.version.split("."))
        if path == "/api/v5/connectors" and release >= (5, 4, 0):
            return 200, self.connectors
        if path == "/api/v5/bridges" and release < (5, 4, 0):
            return 200, self.connectors
        return 404, {"code": "NOT_FOUND", "message": "Request Path Not Found"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                if fake.mode == "hang":
                    fake._release.wait(30)
                    return
                if fake.mode == "503":
                    self._send(503, {"code": "SERVICE_UNAVAILABLE", "message": "Service Temporarily Unavailable"})
                    return
                expected = base64.b64encode(f"{fake.key}:{fake.secret}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self._send(401, {"code": "BAD_API_KEY_OR_SECRET", "message": "Check api_key/api_secret"})
                    return
                url = urlparse(self.path)
                # Deep copy: a caller mutating what it got must not change what the fake serves next.
                status, body = fake._route(url.path, parse_qs(url.query))
                self._send(status, copy.deepcopy(body))

        return Handler
