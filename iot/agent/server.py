"""Serving one Premium deployment while this agent holds its lease: one MQTT connection to its broker (the agent's
own persistent session), shadow requests answered in batches, connection events turned into online state, and the
outbox carried out (deltas of REST changes, disconnecting disabled devices).

One worker thread per deployment does all of it in order; paho's network thread only queues what arrives. A message
is acknowledged after its batch committed, so one in flight when an agent dies is redelivered to the next holder
of the session; answers are published after the commit. It never decides policy: iot.services does.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import queue
import threading
import time

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from deployments.models import Deployment
from iot import services, shadow
from iot.agent import edge as edge_agent
from iot.agent.client import AgentClient
from iot.agent.codec_workers import CodecWorkerPool
from iot.agent.codecs import CodecEngine
from iot.agent.presence import EMQX_TOPICS, LogTail, parse_emqx_event
from iot.models import AGENT_CLIENT_ID, OutboxMessage

logger = logging.getLogger("iot.agent")

SHADOW_TOPICS = ("devices/+/shadow/update", "devices/+/shadow/get")
BATCH_SIZE = 200
RECEIVE_MAXIMUM = 400  # two batches: the next one arrives while this one commits
SESSION_EXPIRY = 7 * 24 * 3600
IDLE_TICK = 0.05  # how often an idle worker looks at its log and timers
LOG_POLL = 0.2
OUTBOX_POLL = 1.0  # besides NOTIFY, which wakes the worker at once
PRUNE_EVERY = 3600.0
_WAKE = object()


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how to reach a deployment's broker."""

    deployment_id: int
    public_id: str
    host: str
    port: int
    driver: str  # local | kubernetes
    log_path: str
    username: str
    password: str


class DeploymentServer:
    def __init__(
        self,
        target: Target,
        *,
        holder: str,
        token: int,
        presence_cursor: dict | None = None,
        codec_workers: int | None = None,
    ) -> None:
        self.target = target
        self.holder = holder
        self.token = token
        self.inbound: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.lost = threading.Event()
        self.connected = threading.Event()
        self.last_event_at: datetime.datetime | None = None
        self._pending_since: float | None = None
        self._tail = LogTail(target.log_path, presence_cursor) if target.driver == "local" else None
        self._cursor_saved = dict(presence_cursor or {})
        self._cursor_saved_at = 0.0
        self.client = self._make_client()
        # On a local region with more than one worker, the codec rules are applied by worker processes in a shared
        # subscription (iot.agent.codec_workers); this connection then takes none of their filters, and its own
        # engine decodes only what its session still held on them (see CodecEngine.subscribing).
        workers = settings.IOT_CODEC_WORKERS if codec_workers is None else codec_workers
        self.codec_workers = (
            CodecWorkerPool(target, holder=holder, token=token, count=workers)
            if target.driver == "local" and workers > 1
            else None
        )
        self.codecs = CodecEngine(self, subscribing=self.codec_workers is None)
        self._codec_unsubscribed: set[str] = set()
        self.thread = threading.Thread(target=self._run, name=f"iot-agent-{target.public_id}", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------------------------

    def _make_client(self) -> AgentClient:
        # MQTT 5: its Receive Maximum sets how many QoS 1 messages the broker has in flight to us unacknowledged
        # (mosquitto 2.0 src/property_broker.c; EMQX takes the smaller of it and its own max_inflight). Under MQTT
        # 3.1.1 mosquitto's max_inflight_messages (20) would cap every batch, since we acknowledge after the commit.
        client = AgentClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=AGENT_CLIENT_ID,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(self.target.username, self.target.password)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(200)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        # A persistent session (kept a week): the next holder of the lease resumes it with whatever was queued.
        properties.SessionExpiryInterval = SESSION_EXPIRY
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect_async(
            self.target.host, self.target.port, keepalive=30, clean_start=False, properties=properties
        )
        self.client.loop_start()
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.inbound.put(_WAKE)
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        # A clean DISCONNECT: the broker keeps the session (and anything queued for it) for the next holder.
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def notify(self) -> None:
        self.inbound.put(_WAKE)

    def lag(self) -> float:
        """Seconds the oldest message this server has not finished processing has waited."""
        oldest = self._pending_since
        with self.inbound.mutex:
            for item in self.inbound.queue:
                if item is not _WAKE:
                    oldest = item[0] if oldest is None else min(oldest, item[0])
                    break
        return max(0.0, time.monotonic() - oldest) if oldest is not None else 0.0

    # -- paho callbacks (network thread) ---------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning(
                "the broker of %s refused the agent: %s",
                self.target.public_id,
                reason_code,
                extra={"deployment": self.target.public_id, "reason": str(reason_code)},
            )
            return
        topics = [(topic, 1) for topic in (*SHADOW_TOPICS, *edge_agent.TOPICS)]
        if self.target.driver != "local":
            topics += [(topic, 1) for topic in EMQX_TOPICS]
        client.subscribe(topics)
        self.codecs.subscribe(client)
        self._codec_unsubscribed = set()
        self.connected.set()
        logger.info("connected to the broker of %s", self.target.public_id, extra={"deployment": self.target.public_id})

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()

    def _on_message(self, client, userdata, message) -> None:
        self.inbound.put((time.monotonic(), message))

    # -- the worker ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_log = next_outbox = time.monotonic()
        next_prune = time.monotonic() + 60.0
        try:
            # The rules first: a resumed session hands over what it holds right after the CONNACK, and a message
            # handled before they are loaded would be acknowledged undecoded.
            self._retrying(self._codecs_tick, True)
            while not self.stopping.is_set():
                batch, woken = self._take()
                if batch:
                    self._retrying(self._handle, batch)
                now = time.monotonic()
                if self._tail is not None and now >= next_log:
                    self._retrying(self._read_log)
                    next_log = now + LOG_POLL
                if woken or now >= next_outbox:
                    self._retrying(self._carry_out_outbox)
                    self._retrying(edge_agent.publish_due, self)
                    next_outbox = now + OUTBOX_POLL
                self._retrying(self._codecs_tick, woken)
                if now >= next_prune:
                    self._retrying(self._prune)
                    next_prune = now + PRUNE_EVERY
        except services.LeaseLost:
            logger.warning(
                "lease of %s lost; stopping", self.target.public_id, extra={"deployment": self.target.public_id}
            )
            self.lost.set()
        except Exception:
            logger.exception("serving %s failed", self.target.public_id, extra={"deployment": self.target.public_id})
            self.lost.set()
        finally:
            if self.codec_workers is not None:
                self.codec_workers.stop()
            connection.close()

    def _codecs_tick(self, woken: bool) -> None:
        self.codecs.tick(woken)
        if self.codec_workers is not None:
            filters = {rule.topic_filter for rule in self.codecs.rules}
            self.codec_workers.tick(woken, filters)
            # The agent's persistent session may still hold plain subscriptions to the rules' filters (taken when
            # the agent applied the rules itself): they would bring it every message the workers decode. What they
            # bring until the broker has them removed, the agent's own engine decodes: the backlog its session held,
            # and (at least once) what arrived in the moment since it connected.
            stale = filters - self._codec_unsubscribed
            if stale and self.connected.is_set():
                self.client.unsubscribe(sorted(stale))
                self._codec_unsubscribed |= stale

    def _retrying(self, fn, *args) -> None:
        """Run `fn` until it succeeds: a database outage pauses the deployment, it loses nothing."""
        while not self.stopping.is_set():
            try:
                fn(*args)
                return
            except (OperationalError, InterfaceError) as exc:
                logger.warning(
                    "database unavailable (%s); %s waits",
                    exc,
                    self.target.public_id,
                    extra={"deployment": self.target.public_id, "error": str(exc)},
                )
                connection.close()
                self.stopping.wait(1.0)
            except DatabaseError:
                connection.close()
                raise

    def _take(self) -> tuple[list, bool]:
        woken = False
        try:
            first = self.inbound.get(timeout=IDLE_TICK)
        except queue.Empty:
            return [], False
        batch = []
        item = first
        while True:
            if item is _WAKE:
                woken = True
            else:
                batch.append(item)
            if len(batch) >= BATCH_SIZE:
                break
            try:
                item = self.inbound.get_nowait()
            except queue.Empty:
                break
        return batch, woken

    def _handle(self, batch: list) -> None:
        self._pending_since = batch[0][0]
        requests, presence, messages = [], [], [message for _, message in batch]
        # What the codec rules publish goes out when the batch has been read, with one wake of paho's thread.
        with self.client.deferred_wakeups():
            for message in messages:
                self.codecs.handle(message)
                parts = message.topic.split("/")
                if len(parts) == 4 and parts[0] == "devices" and parts[2] == "shadow" and parts[3] in ("update", "get"):
                    if shadow.DEVICE_ID_RE.match(parts[1]):
                        requests.append(services.ShadowRequest(parts[1], parts[3], bytes(message.payload)))
                elif message.topic.startswith("$SYS/"):
                    event = parse_emqx_event(message.topic, bytes(message.payload))
                    if event is not None:
                        presence.append(event)
        answers = []
        if requests:
            answers = services.shadow_process_batch(
                deployment_id=self.target.deployment_id, holder=self.holder, token=self.token, requests=requests
            )
        if presence:
            services.presence_apply(
                deployment_id=self.target.deployment_id, holder=self.holder, token=self.token, events=presence
            )
        edge_agent.process(self, messages)
        # Committed: acknowledge first (a crash now cannot apply them twice), then answer.
        with self.client.deferred_wakeups():
            for message in messages:
                if message.qos > 0:
                    self.client.ack(message.mid, message.qos)
            for topic, body in answers:
                self.client.publish(topic, shadow.compact(body), qos=1)
        self._pending_since = None
        self.last_event_at = datetime.datetime.now(datetime.UTC)

    def _read_log(self) -> None:
        if self._tail is None:  # an EMQX region: presence arrives as $SYS messages, there is no log to read
            return
        events = self._tail.read()
        cursor = self._tail.cursor
        moved = cursor != self._cursor_saved
        if not events and not (moved and time.monotonic() - self._cursor_saved_at > 2.0):
            return
        services.presence_apply(
            deployment_id=self.target.deployment_id,
            holder=self.holder,
            token=self.token,
            events=events,
            cursor=cursor,
        )
        self._cursor_saved, self._cursor_saved_at = dict(cursor), time.monotonic()
        if events:
            self.last_event_at = datetime.datetime.now(datetime.UTC)

    def _carry_out_outbox(self) -> None:
        if not self.connected.is_set():
            return
        generation = (
            Deployment.objects.filter(pk=self.target.deployment_id)
            .values_list("observed_generation", flat=True)
            .first()
        )
        if generation is None:
            return
        due = services.outbox_due(deployment_id=self.target.deployment_id, observed_generation=generation)
        done = []
        pending = []
        for message in due:
            if message.kind == OutboxMessage.Kind.KICK:
                if self._take_over(message.client_id):
                    done.append(message.pk)
            else:
                pending.append((message.pk, self.client.publish(message.topic, message.payload.encode("utf-8"), qos=1)))
        for pk, info in pending:
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                continue
            if info.is_published():
                done.append(pk)
        services.outbox_done(deployment_id=self.target.deployment_id, ids=done)

    def _take_over(self, client_id: str) -> bool:
        """Connect with `client_id` (and our own credentials): the broker closes whatever connection held it. Clean
        session, so nothing of the taken-over client's session is kept or delivered to us."""
        done = threading.Event()
        result = {}

        def on_connect(client, userdata, flags, reason_code, properties):
            result["ok"] = not reason_code.is_failure
            done.set()

        kicker = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        kicker.username_pw_set(self.target.username, self.target.password)
        kicker.on_connect = on_connect
        try:
            kicker.connect(self.target.host, self.target.port, keepalive=10)
            kicker.loop_start()
            done.wait(5.0)
            kicker.disconnect()
        except OSError as exc:
            logger.warning(
                "could not take client id %s over (%s)",
                client_id,
                exc,
                extra={"client_id": client_id, "error": str(exc)},
            )
            return False
        finally:
            kicker.loop_stop()
        return bool(result.get("ok"))

    def _prune(self) -> None:
        services.shadow_history_prune(
            older_than=datetime.timedelta(days=settings.IOT_SHADOW_HISTORY_DAYS),
            deployment_ids=[self.target.deployment_id],
        )
