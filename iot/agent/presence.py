"""Broker connection events, read from where each broker reports them: mosquitto's log file (local driver) and
EMQX's `$SYS/brokers/<node>/clients/<clientid>/connected|disconnected` messages (Kubernetes driver).

Pure parsing plus a file tail that resumes from a cursor; it never decides what an event means for a device
(iot.services.presence_apply does) and never writes the database.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re


@dataclasses.dataclass(frozen=True)
class PresenceEvent:
    """One broker connection event. `kind`: connected | disconnected | broker_reset (the
    broker started or stopped: nobody is connected). For EMQX a disconnect carries
    the `connected_at` of the connection it ends, so a late disconnect of an older connection changes nothing."""

    kind: str
    at: datetime.datetime
    client_id: str = ""
    username: str | None = None
    address: str = ""
    connection_started_at: datetime.datetime | None = None


# mosquitto 2.0 (src/handle_connect.c, src/loop.c, src/mosquitto.c of v2.0.11), with `log_timestamp` on (epoch
# seconds). Client ids are matched as \S+ and every pattern is anchored at both ends: a device id has no spaces,
# so another client's id with spaces in it can never make a line read as a device's; mosquitto refuses control
# characters in client ids, so one cannot forge a line either.
# A client that connects as a bridge (mosquitto's own bridges, the edge nodes' among them) is logged as "New bridge
# connected" instead of "New client connected", in the same shape.
_CONNECTED = re.compile(
    r"^(?P<ts>\d+): New (?:client|bridge) connected from (?P<address>\S+) as (?P<id>\S+) "
    r"\(p\d+, c\d, k\d+(?:, u'(?P<username>[^']*)')?\)\.$"
)
_DISCONNECTED = re.compile(
    r"^(?P<ts>\d+): Client (?P<id>\S+) (?:"
    r"disconnected\.|disconnected, not authorised\.|disconnected due to [^.]+\.|disconnected: .*\.|"
    r"closed its connection\.|has exceeded timeout, disconnecting\.|been disconnected by administrative action\.|"
    r"already connected, closing old connection\.)$"
)
# A broker starting or terminating has no client connected: every device is offline from then.
_STARTING = re.compile(r"^(?P<ts>\d+): mosquitto version \S+ (?:starting|terminating)\Z")
MAX_READ_BYTES = 4 * 1024 * 1024


def _at(seconds: str | int | float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(float(seconds), tz=datetime.UTC)


def _at_ms(milliseconds: int | float) -> datetime.datetime:
    whole, rest = divmod(int(milliseconds), 1000)
    return datetime.datetime.fromtimestamp(whole, tz=datetime.UTC) + datetime.timedelta(milliseconds=rest)


def parse_mosquitto_line(line: str) -> PresenceEvent | None:
    if " connected from " in line:
        match = _CONNECTED.match(line)
        if match:
            return PresenceEvent(
                kind="connected",
                at=_at(match["ts"]),
                client_id=match["id"],
                username=match["username"],
                address=match["address"],
            )
        return None
    if ": Client " in line:
        match = _DISCONNECTED.match(line)
        if match and match["id"] != "<unknown>":
            return PresenceEvent(kind="disconnected", at=_at(match["ts"]), client_id=match["id"])
        return None
    match = _STARTING.match(line)
    if match:
        return PresenceEvent(kind="broker_reset", at=_at(match["ts"]))
    return None


class LogTail:
    """Reads a growing log from a cursor {"inode", "offset"}: whole lines only, split on "\\n" alone (a client id may
    hold U+2028, which str.splitlines would take for a line break). A replaced or truncated file is read from its
    start."""

    def __init__(self, path: str, cursor: dict | None = None) -> None:
        self.path = path
        cursor = cursor or {}
        self.inode = cursor.get("inode")
        self.offset = int(cursor.get("offset") or 0)

    @property
    def cursor(self) -> dict:
        return {"inode": self.inode, "offset": self.offset}

    def read(self) -> list[PresenceEvent]:
        """The events written since the cursor, and the cursor moved past them (call `cursor` to persist it)."""
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_ino != self.inode or stat.st_size < self.offset:
                    self.inode, self.offset = stat.st_ino, 0
                if stat.st_size == self.offset:
                    return []
                handle.seek(self.offset)
                chunk = handle.read(MAX_READ_BYTES)
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        self.offset += end + 1
        events = []
        for raw in chunk[:end].split(b"\n"):
            event = parse_mosquitto_line(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events


# EMQX 5 (apps/emqx/src/emqx_sys.erl, v5.8.6): the payload of `$SYS/brokers/<node>/clients/<clientid>/<event>` is
# common_infos (clientid, username, ipaddress, sockport, protocol, proto_name, proto_ver, connected_at, ts) plus,
# for `connected`, keepalive, clean_start, expiry_interval, and for `disconnected`, reason and disconnected_at.
# Times are milliseconds since the epoch; username is null for an anonymous client.
EMQX_TOPICS = ("$SYS/brokers/+/clients/+/connected", "$SYS/brokers/+/clients/+/disconnected")


def parse_emqx_event(topic: str, payload: bytes) -> PresenceEvent | None:
    parts = topic.split("/")
    if len(parts) != 6 or parts[:2] != ["$SYS", "brokers"] or parts[3] != "clients":
        return None
    kind = parts[5]
    if kind not in ("connected", "disconnected"):
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    client_id = body.get("clientid")
    connected_at = body.get("connected_at")
    if not isinstance(client_id, str) or not isinstance(connected_at, (int, float)):
        return None
    username = body.get("username")
    if kind == "connected":
        # ipaddress is the client's address without its port (emqx_sys:ntoa of the peer host alone).
        address = body.get("ipaddress")
        return PresenceEvent(
            kind="connected",
            at=_at_ms(connected_at),
            client_id=client_id,
            username=username if isinstance(username, str) else None,
            address=address if isinstance(address, str) else "",
            connection_started_at=_at_ms(connected_at),
        )
    disconnected_at = body.get("disconnected_at", body.get("ts"))
    if not isinstance(disconnected_at, (int, float)):
        return None
    return PresenceEvent(
        kind="disconnected",
        at=_at_ms(disconnected_at),
        client_id=client_id,
        username=username if isinstance(username, str) else None,
        connection_started_at=_at_ms(connected_at),
    )
