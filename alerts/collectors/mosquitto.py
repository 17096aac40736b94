"""Collect one mosquitto 2.0 broker's metrics from its `$SYS` tree and its log file.

Owns the $SYS-to-vocabulary mapping and the log patterns; it connects as the control plane's monitoring user, which
must be allowed to read `$SYS/#`. It never hangs past `timeout`, never raises for an unreachable broker, never
writes anything anywhere.

What mosquitto 2.0.11 tells us, checked against the real broker (tests/alerts/test_collector_mosquitto.py):

* `$SYS` is republished every `sys_interval` seconds, and only the topics whose value changed. On SUBSCRIBE the
  broker first replays the retained copies, computed before we connected. The first non-retained
  `$SYS/broker/uptime` starts a batch computed while we are connected, so from then on `clients/connected`,
  `clients/total` and `subscriptions/count` include the monitor's own connection and `$SYS/#` subscription: we
  subtract one from each. If no fresh batch arrives before the timeout (sys_interval longer than the timeout) the
  retained values are used as they are, without the subtraction (they are from before we connected, give or take a
  publication racing our SUBSCRIBE).
* `retained messages/count` includes the broker's own retained `$SYS` topics; we subtract the distinct `$SYS`
  topics seen. `topics` has no $SYS counterpart and is not reported.
* Rates come from `publish/messages/{received,sent,dropped}` counters and the previous run's state. The `$SYS`
  messages delivered to the monitor itself are counted by `publish/messages/sent` and `bytes/sent`; we keep a
  running total of them in the state and take it off (publish packets only, computed as QoS 0 MQTT 3.1.1 packets;
  the monitor's few control packets a run are left in `traffic_bytes`).
* Authentication failures: each refused CONNECT is logged at `notice` level (so with the default log types) as
  `Client <unknown> disconnected, not authorised.` (client id is `<unknown>` for MQTT 3.1.1 and 5 alike); unknown
  users, wrong passwords and anonymous clients when anonymous is off all give this one line.
* ACL denials: only a denied *incoming PUBLISH* is logged, and only at `debug` level (`log_type all` or `debug`):
  `Denied PUBLISH from <client id> (d0, q0, r0, m0, 'topic', ... (N bytes))`. A SUBSCRIBE outside the ACL is
  granted in the SUBACK and its messages are silently withheld, so it is never visible; a read denial is not logged
  either. `acl_denied_rate` is therefore reported only when the log proves debug logging is on (our own CONNACK
  appears as `Sending CONNACK to <monitor id>`); otherwise it is absent, not zero.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from alerts import metrics as m
from alerts.collectors import CollectResult, counter_rate

SYS_PREFIX = "$SYS/"
T_UPTIME = "$SYS/broker/uptime"
T_CONNECTED = "$SYS/broker/clients/connected"
T_TOTAL = "$SYS/broker/clients/total"
T_SUBSCRIPTIONS = "$SYS/broker/subscriptions/count"
T_RETAINED = "$SYS/broker/retained messages/count"
T_PUB_RECEIVED = "$SYS/broker/publish/messages/received"
T_PUB_SENT = "$SYS/broker/publish/messages/sent"
T_PUB_DROPPED = "$SYS/broker/publish/messages/dropped"
T_BYTES_RECEIVED = "$SYS/broker/bytes/received"
T_BYTES_SENT = "$SYS/broker/bytes/sent"

# Whole lines of the broker's own ("<unix seconds>: <message>"): a client id may hold spaces and these very words
# (mosquitto refuses only control characters in it), so a match anywhere else in a line proves nothing.
AUTH_FAILURE_LINE = re.compile(rb"\d+: Client \S+ disconnected, not authorised\.\n")
ACL_DENIED_LINE = re.compile(rb"\d+: Denied PUBLISH from ")

# After the first fresh $SYS message, the rest of the batch follows within milliseconds over one socket.
_BATCH_QUIET_SECONDS = 0.2
_KEEPALIVE_SECONDS = 5


def _publish_packet_size(topic: str, payload: bytes | bytearray) -> int:
    remaining = 2 + len(topic.encode()) + len(payload)
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


class _SysListener:
    """Callbacks run on the collecting thread itself (we drive paho's loop), so no locking."""

    def __init__(self) -> None:
        self.connected = False
        self.failed = False
        self.error = ""
        self.values: dict[str, str] = {}
        # For each value taken from a fresh batch: the monitor's own (messages, bytes) received before it, i.e.
        # what the broker had already counted as sent to us when it computed that value.
        self.own_before: dict[str, tuple[int, int]] = {}
        self.sys_topics: set[str] = set()
        self.fresh = False
        self.last_message_at = 0.0
        self.own_messages = 0
        self.own_bytes = 0

    def on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.error = f"monitor connection refused: {reason_code}"
            self.failed = True
            return
        client.subscribe("$SYS/#", qos=0)
        self.connected = True

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == T_UPTIME and not msg.retain:
            self.fresh = True
        if self.fresh and not msg.retain:
            self.own_before[msg.topic] = (self.own_messages, self.own_bytes)
        else:
            self.own_before.pop(msg.topic, None)
        self.own_messages += 1
        self.own_bytes += _publish_packet_size(msg.topic, msg.payload)
        self.sys_topics.add(msg.topic)
        self.values[msg.topic] = msg.payload.decode("utf-8", "replace")
        self.last_message_at = time.monotonic()


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


class LogScan(NamedTuple):
    """What one scan of a broker's log found since the last offset."""

    offset: int  # where the next scan starts: after the last complete line read
    auth_failures: int
    acl_denials: int
    debug_seen: bool  # our own client's CONNACK was logged: debug logging is on, so ACL denials are logged too


def _read_log(*, path: str, offset: int, monitor_client_id: str) -> LogScan:
    """Scan the complete new lines of a broker's log."""
    if os.path.getsize(path) < offset:
        # Rotated or truncated: the new file starts from scratch.
        offset = 0
    auth = acl = 0
    debug_seen = False
    own_connack = f"Sending CONNACK to {monitor_client_id} ".encode()
    with open(path, "rb") as fh:
        fh.seek(offset)
        for line in fh:
            if not line.endswith(b"\n"):
                # A line mosquitto is still writing: read it whole next time.
                break
            offset += len(line)
            if AUTH_FAILURE_LINE.fullmatch(line):
                auth += 1
            elif ACL_DENIED_LINE.match(line):
                acl += 1
            elif own_connack in line:  # a random client id of our own: nobody else can write it
                debug_seen = True
    return LogScan(offset=offset, auth_failures=auth, acl_denials=acl, debug_seen=debug_seen)


# Two fresh readings of one broker put its start (now - uptime, whole seconds, read within the batch's quiet time)
# within this of each other.
_SAME_START_SECONDS = 3.0
# What our own share of bytes/sent may be off by (a packet or two; publish/messages/sent: a message or two) before a
# reading below the last is a restart.
_OWN_BYTES_JITTER = 4096


def _restarted(previous: dict[str, Any], *, uptime: float | None, fresh: bool, now: float) -> bool:
    """Whether the broker read now is not the one `previous` was read from, as far as its uptime says: it went
    down, or (both readings fresh) the start it implies moved."""
    if uptime is None or previous.get("uptime") is None:
        return False
    if uptime < previous["uptime"]:
        return True
    if fresh and previous.get("fresh") and "ts" in previous:
        previous_start: float = previous["ts"] - previous["uptime"]
        return abs((now - uptime) - previous_start) > _SAME_START_SECONDS
    return False


def _counted_backwards(counters: dict[str, float | None], previous: dict[str, Any]) -> bool:
    for key, value in counters.items():
        before = previous.get(key)
        if value is None or before is None:
            continue
        slack = {"bytes_sent": _OWN_BYTES_JITTER, "pub_sent": 2}.get(key, 0)
        if value < before - slack:
            return True
    return False


def collect_mosquitto(
    *,
    host: str,
    port: int,
    username: str,
    password: str,
    log_path: str | None,
    log_offset: int,
    previous: dict[str, Any] | None,
    timeout: float,
) -> CollectResult:
    previous = previous or {}
    client_id = f"cp-monitor-{uuid.uuid4().hex[:12]}"
    listener = _SysListener()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    client.on_connect = listener.on_connect
    client.on_message = listener.on_message
    client.connect_timeout = max(timeout, 0.1)
    deadline = time.monotonic() + timeout

    try:
        client.connect(host, port, keepalive=_KEEPALIVE_SECONDS)
    except (OSError, ValueError) as exc:
        return CollectResult(
            log_offset=log_offset, state=previous, available=False, error=f"cannot connect to {host}:{port}: {exc}"
        )
    # Driving the loop here, rather than loop_start(), keeps every wait under our deadline: paho's thread sleeps
    # a whole reconnect delay (1 s) after a refused CONNACK.
    try:
        while time.monotonic() < deadline and not listener.failed:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                if not listener.failed:
                    listener.error = listener.error or "connection lost while reading $SYS"
                break
            if listener.fresh and time.monotonic() - listener.last_message_at >= _BATCH_QUIET_SECONDS:
                break
    finally:
        client.disconnect()
        # Flush the DISCONNECT so the broker logs a clean close rather than a dropped socket.
        client.loop(timeout=0.01)

    if listener.failed or not listener.connected:
        return CollectResult(
            log_offset=log_offset,
            state=previous,
            available=False,
            error=listener.error or f"no CONNACK from {host}:{port} within {timeout:g}s",
        )

    sys_values = listener.values
    fresh = listener.fresh

    now = time.time()
    values: dict[str, float] = {}
    errors: list[str] = []
    own = 1 if fresh else 0

    def gauge(metric: str, topic: str, subtract: int = 0) -> None:
        v = _number(sys_values.get(topic))
        if v is not None:
            values[metric] = max(v - subtract, 0.0)

    gauge(m.CONNECTIONS, T_CONNECTED, own)
    gauge(m.SESSIONS, T_TOTAL, own)
    gauge(m.SUBSCRIPTIONS, T_SUBSCRIPTIONS, own)
    gauge(m.RETAINED, T_RETAINED, len({t for t in listener.sys_topics if t.startswith(SYS_PREFIX)}))
    if not sys_values:
        errors.append("no $SYS values received: does the monitoring user have read access to $SYS/#?")

    uptime = _number(sys_values.get(T_UPTIME))
    restarted = _restarted(previous, uptime=uptime, fresh=fresh, now=now)

    def counters_since(restarted: bool) -> dict[str, float | None]:
        prev_counters = {} if restarted else previous.get("counters", {})
        prev_own = (0, 0) if restarted else (previous.get("own_messages_total", 0), previous.get("own_bytes_total", 0))

        def counter(topic: str, key: str, own_index: int | None = None) -> float | None:
            raw = _number(sys_values.get(topic))
            if raw is None:
                # mosquitto republishes a counter only when it changes and its retained copy is not always kept:
                # an absent counter has not moved since we last saw it.
                return prev_counters.get(key)
            if own_index is None:
                return raw
            return raw - prev_own[own_index] - listener.own_before.get(topic, (0, 0))[own_index]

        return {
            "pub_received": counter(T_PUB_RECEIVED, "pub_received"),
            "pub_sent": counter(T_PUB_SENT, "pub_sent", 0),
            "pub_dropped": counter(T_PUB_DROPPED, "pub_dropped"),
            "bytes_received": counter(T_BYTES_RECEIVED, "bytes_received"),
            "bytes_sent": counter(T_BYTES_SENT, "bytes_sent", 1),
        }

    counters = counters_since(restarted)
    if not restarted and _counted_backwards(counters, previous.get("counters", {})):
        # A broker's counters only grow, and it has sent us at least what we received from it: a reading below
        # the last one is another broker's (a restart the uptime hid: read soon after each start, both read the
        # same few seconds).
        restarted = True
        counters = counters_since(True)
    # bytes/sent is counted when written to the socket, so our own share can be off by a packet or two: a broker
    # that sent nobody else anything may read a little below zero. Counters are never negative.
    counters = {k: None if v is None else max(v, 0.0) for k, v in counters.items()}
    prev_counters = {} if restarted else previous.get("counters", {})
    prev_own_messages = 0 if restarted else previous.get("own_messages_total", 0)
    prev_own_bytes = 0 if restarted else previous.get("own_bytes_total", 0)
    elapsed = None if restarted or "ts" not in previous else now - previous["ts"]
    for metric, key in (
        (m.MESSAGES_RECEIVED_RATE, "pub_received"),
        (m.MESSAGES_SENT_RATE, "pub_sent"),
        (m.MESSAGES_DROPPED_RATE, "pub_dropped"),
    ):
        rate = counter_rate(current=counters[key], previous=prev_counters.get(key), elapsed=elapsed)
        if rate is not None:
            values[metric] = rate
    if elapsed is not None:
        # bytes/sent is counted when written to the socket, so our own share can be off by a packet or two either
        # way; a restart is already excluded through uptime, so a small negative step is jitter, not a reset.
        received, sent = (
            None if counters[k] is None or prev_counters.get(k) is None else max(counters[k] - prev_counters[k], 0)
            for k in ("bytes_received", "bytes_sent")
        )
        if received is not None and sent is not None:
            values[m.TRAFFIC_BYTES] = float(received + sent)

    new_offset = log_offset
    log_counts: dict[str, int | bool] = {}
    if log_path:
        try:
            scan = _read_log(path=log_path, offset=log_offset, monitor_client_id=client_id)
        except OSError as exc:
            errors.append(f"cannot read broker log {log_path}: {exc}")
        else:
            new_offset = scan.offset
            log_counts = {
                "auth_failures": scan.auth_failures,
                "acl_denied": scan.acl_denials,
                "debug_logging": scan.debug_seen,
            }
            if elapsed:
                values[m.AUTH_FAILURE_RATE] = scan.auth_failures / elapsed
                if scan.debug_seen or scan.acl_denials:
                    values[m.ACL_DENIED_RATE] = scan.acl_denials / elapsed

    state = {
        "ts": now,
        "uptime": uptime,
        "fresh": fresh,
        "counters": counters,
        "own_messages_total": prev_own_messages + listener.own_messages,
        "own_bytes_total": prev_own_bytes + listener.own_bytes,
        "log": log_counts,
    }
    return CollectResult(values=values, log_offset=new_offset, state=state, available=True, error="; ".join(errors))
