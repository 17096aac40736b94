"""Codec rules applied by the platform agent on a deployment it serves (the local driver's mosquitto has no rule
engine): subscribe to the enabled rules' filters, decode or encode each matching message with the rule's schema
version, republish it on the rule's output topic, or publish the reason to `codec-errors/{rule id}`.

Runs on the thread that owns its MQTT connection (paho's network thread only subscribes on CONNACK): the agent's
DeploymentServer worker thread with IOT_CODEC_WORKERS=1, else each codec worker process (iot.agent.codec_workers).
The agent's own subscriptions use MQTT 5 No Local; a worker's shared subscription cannot, and skips what carries the
agent's ORIGIN property instead: either way a rule's output never loops back into a rule. Counts are added to the
database once a second; it never changes a rule or a schema.

Per message it does only the decode and the publish: which rules a topic matches and the output topic each renders
are worked out once per topic (until the rules change), and nothing touches the database or logs on success.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import threading
import time
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from iot import codec_topics, codecs, schemas
from iot.agent.client import from_agent

if TYPE_CHECKING:
    from iot.agent.codec_workers import CodecHost
    from iot.agent.server import DeploymentServer

logger = logging.getLogger("iot.agent")

RELOAD_EVERY = 5.0  # besides NOTIFY, which wakes the worker at once after a change
FLUSH_EVERY = 1.0
MAX_ERROR_SAMPLE = 64 * 1024  # bytes of the offending payload echoed on the error topic
MAX_ROUTES = 10_000  # topics whose matching rules are remembered; past it the memory starts afresh


class _Rule:
    __slots__ = ("pk", "public_id", "topic_filter", "direction", "codec", "template", "error_topic")

    def __init__(self, row) -> None:
        self.pk = row.pk
        self.public_id = row.public_id
        self.topic_filter = row.topic_filter
        self.direction = row.direction
        self.codec = codecs.codec_of(row.schema_version)
        self.template = codec_topics.parse_template(row.topic_template, topic_filter=row.topic_filter)
        self.error_topic = codec_topics.error_topic(row.public_id)


def _route(rules: list[_Rule], topic: str) -> tuple[tuple[_Rule, str | None], ...]:
    """The rules matching `topic`, in order, each with its output topic (None: it cannot be published, too long,
    empty, `$…` or `codec-errors/…`, which the message's failure reports)."""
    out = []
    for rule in rules:
        if codec_topics.matches(rule.topic_filter, topic):
            rendered = rule.template.render(topic)
            out.append((rule, rendered if codec_topics.output_topic_problem(rendered) is None else None))
    return tuple(out)


def speed_up_paho() -> None:
    """Make paho's MQTT 5 `Properties` and `ReasonCode` cheap to create. paho 2.x builds three lookup tables in
    every Properties' __init__ and walks them in clear(), and copies its table of reason codes into every
    ReasonCode; it creates a Properties per PUBLISH received and a ReasonCode per PUBACK, which cost more than
    decoding the message. The tables are constants paho only reads, so every instance can share one copy, and
    clear() need only drop the properties actually set. Behaviour is unchanged (tests/iot/test_codec_engine.py
    checks packing, unpacking and reason codes against stock instances); applied once per process, by the agent."""
    from paho.mqtt import properties as paho_properties
    from paho.mqtt import reasoncodes
    from paho.mqtt.packettypes import PacketTypes

    cls = paho_properties.Properties
    if getattr(cls, "_shared_tables", False):
        return
    stock = cls(PacketTypes.PUBLISH)
    types, names, table = stock.types, stock.names, stock.properties
    private = frozenset(("packetType", "types", "names", "properties"))

    def init(self, packetType):  # noqa: N803 - paho's own parameter name
        state = self.__dict__
        state["packetType"] = packetType
        state["types"] = types
        state["names"] = names
        state["properties"] = table

    def clear(self):
        for name in [name for name in self.__dict__ if name not in private]:
            delattr(self, name)

    cls.__init__ = init  # type: ignore[method-assign]
    cls.clear = clear  # type: ignore[method-assign]
    cls._shared_tables = True  # type: ignore[attr-defined]

    # ReasonCode.names is a read-only mapping: every instance can look codes up in it directly.
    reasoncodes.ReasonCode.__init__ = _reason_code_init(reasoncodes.ReasonCode.names)  # type: ignore[method-assign]


def _reason_code_init(names):
    """paho's ReasonCode.__init__ (paho 2.2 reasoncodes.py) without its per-instance copy of `names`."""
    from paho.mqtt.packettypes import PacketTypes

    # paho's own parameter names: callers pass aName= by keyword.
    def init(self, packetType, aName="Success", identifier=-1):  # noqa: N803
        self.names = names
        self.packetType = packetType
        if identifier == -1:
            name = "Normal disconnection" if packetType == PacketTypes.DISCONNECT and aName == "Success" else aName
            self.set(name)
        else:
            self.value = identifier
            self.getName()  # check it's good

    return init


class CodecEngine:
    """The rules of one deployment applied on one MQTT connection: the agent's own (`share_group` None: plain
    subscriptions with No Local), or a codec worker's (`$share/{share_group}/{filter}`: the broker hands each
    message to one member of the group, and the agent's own messages are recognised by their ORIGIN property)."""

    def __init__(
        self, server: DeploymentServer | CodecHost, *, share_group: str | None = None, subscribing: bool = True
    ) -> None:
        self.server = server
        self.share_group = share_group
        # False: the agent's own engine while codec workers hold the rules' subscriptions. It subscribes to nothing
        # and applies the rules only to what the agent's session still brings on them: what it queued while the
        # agent applied the rules itself (IOT_CODEC_WORKERS was 1) and no agent ran.
        self.subscribing = subscribing
        self._slots_forgotten = False
        self.rules: list[_Rule] = []
        self._fingerprint: tuple | None = None
        self._filters: set[str] = set()
        self._lock = threading.Lock()
        self._counts: dict[int, list] = {}  # rule pk -> [processed, failures, last reason]
        self._routes: dict[str, tuple[tuple[_Rule, str | None], ...]] = {}  # topic -> matching rules, targets
        speed_up_paho()
        self._next_reload = 0.0
        self._next_flush = time.monotonic() + FLUSH_EVERY

    # -- subscriptions -------------------------------------------------------------------------------------------

    def _subscription(self, topic_filter: str) -> str:
        return topic_filter if self.share_group is None else f"$share/{self.share_group}/{topic_filter}"

    def _options(self) -> mqtt.SubscribeOptions:
        # No Local on a shared subscription is a protocol error (MQTT 5.0 3.8.3.1).
        return mqtt.SubscribeOptions(qos=1, noLocal=self.share_group is None)

    def subscribe(self, client: mqtt.Client) -> None:
        """On (re)connect (paho's thread): subscribe to the filters of the rules loaded so far."""
        if not self.subscribing:
            return
        with self._lock:
            filters = sorted(self._filters)
        if filters:
            client.subscribe([(self._subscription(f), self._options()) for f in filters])

    def _apply_filters(self, wanted: set[str]) -> None:
        with self._lock:
            added, removed = wanted - self._filters, self._filters - wanted
            self._filters = set(wanted)
        if not self.subscribing:
            return
        client = self.server.client
        if added:
            client.subscribe([(self._subscription(f), self._options()) for f in sorted(added)])
        if removed:
            client.unsubscribe([self._subscription(f) for f in sorted(removed)])

    # -- the worker ----------------------------------------------------------------------------------------------

    def tick(self, woken: bool = False) -> None:
        now = time.monotonic()
        if woken or now >= self._next_reload:
            self._reload()
            self._next_reload = now + RELOAD_EVERY
        if now >= self._next_flush:
            self.flush()
            self._next_flush = now + FLUSH_EVERY

    def _reload(self) -> None:
        # On an EMQX region the broker's own rule engine applies the rules (iot.codecs_emqx): the agent does not.
        if self.server.target.driver != "local":
            rows = []
        else:
            rows = codecs.codec_rules_for_agent(deployment_id=self.server.target.deployment_id)
        fingerprint = tuple((r.pk, r.updated_at, r.schema_version_id) for r in rows)
        if fingerprint == self._fingerprint:
            return
        loaded = []
        for row in rows:
            try:
                loaded.append(_Rule(row))
            except Exception as exc:  # noqa: BLE001 - saved rules were checked; one bad row must not stop the rest
                logger.error("codec rule %s cannot be loaded: %s", row.public_id, exc, extra={"rule": row.public_id})
        if (
            loaded
            and self.subscribing
            and not self._slots_forgotten
            and self.share_group is None
            and self.server.target.driver == "local"
        ):
            self._slots_forgotten = True
            # The rules are applied here: no worker slot's session may go on taking turns of their messages.
            from iot.agent.codec_workers import MAX_WORKERS, forget_sessions

            forget_sessions(self.server.target, range(MAX_WORKERS))
        self.rules = loaded
        self._routes = {}
        self._fingerprint = fingerprint
        self._apply_filters({rule.topic_filter for rule in loaded})
        logger.info(
            "codec rules of %s loaded: %d",
            self.server.target.public_id,
            len(loaded),
            extra={"deployment": self.server.target.public_id, "rules": len(loaded)},
        )

    def handle(self, message) -> None:
        """Apply every enabled rule whose filter matches the message's topic, in the rules' order."""
        if not self.rules:
            return
        if self.share_group is not None and from_agent(message):
            return  # what the agent published (No Local's work on the agent's own connection)
        topic = message.topic
        route = self._routes.get(topic)
        if route is None:
            if len(self._routes) >= MAX_ROUTES:
                self._routes = {}
            route = self._routes[topic] = _route(self.rules, topic)
        if route:
            payload, qos = message.payload, min(message.qos, 1)
            for rule, target in route:
                self._apply(rule, target, topic, payload, qos)

    def _apply(self, rule: _Rule, target: str | None, topic: str, payload: bytes, qos: int) -> None:
        counts = self._counts.get(rule.pk)
        if counts is None:
            counts = self._counts[rule.pk] = [0, 0, ""]
        counts[0] += 1
        try:
            if rule.direction == "decode":
                out = rule.codec.decode_json(payload)
            else:
                if len(payload) > schemas.MAX_PAYLOAD_BYTES:
                    raise schemas.CodecFailed(f"the payload is larger than {schemas.MAX_PAYLOAD_BYTES} bytes")
                out = rule.codec.encode(schemas._json_payload(payload))
            if target is None:
                raise schemas.CodecFailed(
                    codec_topics.output_topic_problem(rule.template.render(topic)) or "the output topic is not usable"
                )
        except Exception as exc:  # noqa: BLE001 - one message, whatever is wrong with it, never stops the deployment
            if not isinstance(exc, schemas.CodecFailed):
                logger.exception("codec rule %s failed on a message", rule.public_id, extra={"rule": rule.public_id})
            counts[1] += 1
            counts[2] = str(exc) or type(exc).__name__
            error = {
                "rule": rule.public_id,
                "topic": topic,
                "direction": rule.direction,
                "reason": str(exc),
                "payload_base64": base64.b64encode(payload[:MAX_ERROR_SAMPLE]).decode("ascii"),
                "timestamp": int(time.time()),
            }
            self.server.client.publish(rule.error_topic, json.dumps(error), qos=qos)
            return
        self.server.client.publish(target, out, qos=qos)

    def flush(self) -> None:
        if not self._counts:
            return
        counts = {pk: (c[0], c[1], c[2]) for pk, c in self._counts.items()}
        codecs.codec_counters_add(counts=counts, at=datetime.datetime.now(datetime.UTC))
        self._counts.clear()
