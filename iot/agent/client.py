"""The platform agent's MQTT client: paho's Client with three costs per message taken out, behaviour unchanged.

Under load paho spent more of the agent's CPU than decoding did: it reads every packet with three `recv` calls (the
command byte, the length bytes one at a time, the body), wakes its network thread through a socket pair for every
publish and acknowledgement another thread queues, and walks every message in flight after each PUBACK looking for
one queued behind the in-flight limit. This client reads the socket in large chunks, lets the agent's worker queue a
batch with one wake-up, and finds queued messages in C (not at all when nothing is queued). It depends on paho 2.2's private methods
(`_sock_recv`, `loop_read`, `_update_inflight`, `_sockpairW`), pinned in the lock files; tests/iot/test_agent_client.py
checks it against a real broker.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import threading
from collections.abc import Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_SIZE = 65536  # bytes asked of the socket at once; a 200-byte PUBLISH is then one of hundreds in a read
_STATE = operator.attrgetter("state")
# The MQTT 5 user property on everything the agent publishes. A shared subscription cannot use No Local (MQTT 5.0
# 3.8.3.1), so codec workers recognise the agent's own messages (rule results, shadow answers) by it and never apply
# a rule to them. Anyone may set it: a client that does only keeps its own message out of the codec rules.
ORIGIN = ("controlplane-origin", "platform-agent")


class _OriginProperties(Properties):
    """PUBLISH properties holding only ORIGIN, packed once instead of on every publish."""

    _packed = b""

    def pack(self) -> bytes:
        return type(self)._packed


def _origin_properties() -> Properties:
    stock = Properties(PacketTypes.PUBLISH)
    stock.UserProperty = ORIGIN
    _OriginProperties._packed = stock.pack()
    properties = _OriginProperties(PacketTypes.PUBLISH)
    properties.UserProperty = ORIGIN
    return properties


ORIGIN_PROPERTIES = _origin_properties()


def from_agent(message) -> bool:
    """Whether a received message carries the agent's ORIGIN property."""
    properties = message.properties
    return properties is not None and ORIGIN in (getattr(properties, "UserProperty", None) or ())


class AgentClient(mqtt.Client):
    def __init__(self, *args, **kwargs) -> None:
        self._deferring = threading.local()  # per thread: .active inside deferred_wakeups(), .wanted once it queued
        # What the last read from the socket gave and how much of it paho has taken, kept per socket: a reconnect
        # starts afresh, never with bytes of the connection before.
        self._read_sock: object | None = None
        self._read_buffer = b""
        self._read_position = 0
        super().__init__(*args, **kwargs)

    def publish(self, topic, payload=None, qos=0, retain=False, properties=None):  # type: ignore[override]
        """paho's publish, with ORIGIN on whatever is published without properties of its own."""
        return super().publish(topic, payload, qos, retain, ORIGIN_PROPERTIES if properties is None else properties)

    # -- reading -------------------------------------------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._sock is not self._read_sock:
            self._read_sock, self._read_buffer, self._read_position = self._sock, b"", 0
        if self._read_position >= len(self._read_buffer):
            data = super()._sock_recv(max(bufsize, READ_SIZE))  # raises as paho's does: BlockingIOError, OSError
            if not data:
                return data  # the peer closed: paho sees the empty read
            self._read_buffer, self._read_position = data, 0
        start = self._read_position
        self._read_position = min(start + bufsize, len(self._read_buffer))
        return self._read_buffer[start : self._read_position]

    def _buffered(self) -> bool:
        # A closed or replaced socket is not _read_sock (unset until the first read): its bytes are never counted.
        return self._sock is self._read_sock and self._read_position < len(self._read_buffer)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        # paho reads at most `max_packets` packets, then waits in select() for the socket to be readable; bytes
        # already in this buffer would not make it so. Read on until the buffer is empty: the broker's in-flight
        # window to us (the agent's Receive Maximum) bounds how long that can last.
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._buffered():
            rc = super().loop_read(max_packets)
        return rc

    # -- the in-flight window --------------------------------------------------------------------------------------

    def _update_inflight(self) -> mqtt.MQTTErrorCode:
        """paho's `_update_inflight` (called with `_out_message_mutex` held after each PUBACK): send queued messages,
        oldest first, while the in-flight window has room. paho walks `_out_messages` in Python from its start, past
        every message in flight, for each PUBACK; here the walk to the next queued message runs in C.
        `_out_messages` holds every QoS > 0 message not yet acknowledged, in flight or queued, in publish order."""
        success = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        room = self._max_inflight_messages - self._inflight_messages
        if room <= 0 or len(self._out_messages) <= self._inflight_messages:
            return success  # no slot free, or nothing queued for one
        messages = self._out_messages.values()
        start = 0
        while room > 0:
            try:
                # operator.indexOf stops at the first match; islice skips in C too.
                start += operator.indexOf(itertools.islice(map(_STATE, messages), start, None), mqtt.mqtt_ms_queued)
            except ValueError:
                return success
            message = next(itertools.islice(messages, start, None))
            start += 1
            room -= 1
            self._inflight_messages += 1
            message.state = mqtt.mqtt_ms_wait_for_puback if message.qos == 1 else mqtt.mqtt_ms_wait_for_pubrec
            rc = self._send_publish(
                message.mid,
                message.topic.encode("utf-8"),
                message.payload,
                message.qos,
                message.retain,
                message.dup,
                properties=message.properties,
            )
            if rc != success:
                return rc
        return success

    # -- waking the network thread -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def deferred_wakeups(self) -> Iterator[None]:
        """Within the block, what this thread publishes or acknowledges is queued without waking paho's network
        thread for each packet; it is woken once when the block ends (and writes whatever is queued)."""
        self._deferring.active, self._deferring.wanted = True, False
        try:
            yield
        finally:
            self._deferring.active = False
            if self._deferring.wanted:
                self._deferring.wanted = False
                pair = self.__dict__.get("_sockpairW")
                if pair is not None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        pair.send(b"0")

    @contextlib.contextmanager
    def network_thread_writes(self) -> Iterator[None]:
        """For a callback on paho's network thread that publishes or acknowledges: nothing is woken, since that
        thread's own loop writes whatever is queued on its next turn (it selects for writing while packets wait)."""
        state = self._deferring
        state.active = True
        try:
            yield
        finally:
            state.active = state.wanted = False

    @property  # type: ignore[override]
    def _sockpairW(self):  # noqa: N802 - paho's attribute name
        # paho's _packet_queue sends a byte on this socket after queuing each packet "to break out of select()". A
        # thread inside deferred_wakeups() is told there is no socket pair, and the wake is sent once at the block's
        # end; every other reader (paho's network thread, reconnect, close) sees the real one.
        if getattr(self._deferring, "active", False):
            self._deferring.wanted = True
            return None
        return self.__dict__.get("_sockpairW")

    @_sockpairW.setter
    def _sockpairW(self, value) -> None:  # noqa: N802
        self.__dict__["_sockpairW"] = value
