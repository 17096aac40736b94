"""Reading connection events: mosquitto 2.0.11's log lines (recorded from a real broker) and EMQX's $SYS client
event payloads (their shape from emqx/emqx v5.8.6 apps/emqx/src/emqx_sys.erl, common_infos/2 and the two hooks)."""

import datetime
import json

from iot.agent.presence import LogTail, parse_emqx_event, parse_mosquitto_line

# Lines written by Debian's mosquitto 2.0.11 with connection_messages on (see docs/iot.md).
RECORDED = """1796037485: mosquitto version 2.0.11 starting
1796037485: Config loaded from /tmp/mexp/b/conf.
1796037485: Opening ipv4 listen socket on port 28883.
1796037485: mosquitto version 2.0.11 running
1796037485: New connection from 127.0.0.1:43357 on port 28883.
1796037485: New client connected from 127.0.0.1:43357 as sensor-1 (p2, c0, k60, u'$device-0a1b2c3d4e5f6a7b').
1796037486: Reloading config.
1796037486: Client sensor-1 disconnected.
1796037487: New connection from 127.0.0.1:42835 on port 28883.
1796037487: Client <unknown> disconnected, not authorised.
1796037489: New client connected from 127.0.0.1:47469 as sensor-1 (p5, c1, k60, u'$controlplane-agent').
1796037490: Client sensor-1 closed its connection.
1796037491: Client sensor-2 has exceeded timeout, disconnecting.
1796037492: Client sensor-3 disconnected: Connection reset by peer.
1796037493: Client sensor-4 already connected, closing old connection.
1796037494: Client sensor-5 disconnected due to protocol error.
1796037495: New bridge connected from 127.0.0.1:38524 as $edge-gw-1 (p2, c0, k30, u'$edge-3750b04e28e6cb1a').
1796037496: mosquitto version 2.0.11 terminating
"""


def at(seconds):
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)


def test_recorded_mosquitto_lines_read_as_connection_events_when_parsed():
    events = [e for e in map(parse_mosquitto_line, RECORDED.splitlines()) if e is not None]
    kinds = [(e.kind, e.client_id) for e in events]
    assert kinds == [
        ("broker_reset", ""),
        ("connected", "sensor-1"),
        ("disconnected", "sensor-1"),
        ("connected", "sensor-1"),
        ("disconnected", "sensor-1"),
        ("disconnected", "sensor-2"),
        ("disconnected", "sensor-3"),
        ("disconnected", "sensor-4"),
        ("disconnected", "sensor-5"),
        ("connected", "$edge-gw-1"),
        ("broker_reset", ""),
    ]
    first = events[1]
    assert first.username == "$device-0a1b2c3d4e5f6a7b"
    assert first.address == "127.0.0.1:43357"
    assert first.at == at(1796037485)
    assert events[3].username == "$controlplane-agent"
    assert events[-2].username == "$edge-3750b04e28e6cb1a"  # a bridge is logged as "New bridge connected"


def test_client_id_with_spaces_cannot_forge_a_device_connection_when_logged():
    forged = (
        "1796037485: New client connected from 10.0.0.9:1 as evil (p2, c0, k60, u'$device-victim'). "
        "(p2, c1, k60, u'customer')."
    )
    assert parse_mosquitto_line(forged) is None
    assert parse_mosquitto_line("1796037486: Client sensor-1 disconnected. Client x closed its connection.") is None
    assert parse_mosquitto_line("1796037486: Client a b disconnected.") is None


def test_tail_reads_whole_lines_once_and_resumes_from_its_cursor_when_the_log_grows(tmp_path):
    log = tmp_path / "mosquitto.log"
    lines = RECORDED.splitlines(keepends=True)
    log.write_text("".join(lines[:6]) + lines[6][:10])  # a line still being written
    tail = LogTail(str(log))
    assert [e.kind for e in tail.read()] == ["broker_reset", "connected"]
    assert tail.read() == []
    with log.open("a") as handle:
        handle.write(lines[6][10:] + lines[7])
    resumed = LogTail(str(log), tail.cursor)  # a new agent resumes where the last one stopped
    assert [(e.kind, e.client_id) for e in resumed.read()] == [("disconnected", "sensor-1")]


def test_tail_splits_only_on_newline_when_a_client_id_holds_a_unicode_line_separator(tmp_path):
    log = tmp_path / "mosquitto.log"
    log.write_bytes(
        "1796037486: New client connected from 1.2.3.4:5 as é\u2028x (p2, c1, k60, u'admin').\n"
        "1796037486: Client sensor-1 disconnected.\n".encode()
    )
    assert [(e.kind, e.client_id) for e in LogTail(str(log)).read()] == [("disconnected", "sensor-1")]


def test_tail_starts_over_when_the_log_is_replaced_or_truncated(tmp_path):
    log = tmp_path / "mosquitto.log"
    log.write_text(RECORDED)
    tail = LogTail(str(log))
    assert len(tail.read()) == 11
    log.write_text(RECORDED.splitlines(keepends=True)[0])
    assert [e.kind for e in tail.read()] == ["broker_reset"]


CONNECTED = {
    "clientid": "sensor-1",
    "username": "$device-0a1b2c3d4e5f6a7b",
    "ipaddress": "203.0.113.7",
    "sockport": 1883,
    "protocol": "mqtt",
    "proto_name": "MQTT",
    "proto_ver": 4,
    "connected_at": 1793613600123,
    "ts": 1793613600125,
    "keepalive": 60,
    "clean_start": False,
    "expiry_interval": 7200,
}
DISCONNECTED = {
    **{k: v for k, v in CONNECTED.items() if k not in ("keepalive", "clean_start", "expiry_interval")},
    "reason": "normal",
    "disconnected_at": 1793613660456,
    "ts": 1793613660457,
}


def test_emqx_client_events_read_as_connection_events_when_published_on_sys_topics():
    connected = parse_emqx_event(
        "$SYS/brokers/emqx@10.0.0.5/clients/sensor-1/connected", json.dumps(CONNECTED).encode()
    )
    assert connected.kind == "connected" and connected.client_id == "sensor-1"
    assert connected.username == "$device-0a1b2c3d4e5f6a7b" and connected.address == "203.0.113.7"
    assert connected.at == datetime.datetime(2026, 11, 2, 10, 0, 0, 123000, tzinfo=datetime.UTC)
    gone = parse_emqx_event(
        "$SYS/brokers/emqx@10.0.0.5/clients/sensor-1/disconnected", json.dumps(DISCONNECTED).encode()
    )
    assert gone.kind == "disconnected" and gone.connection_started_at == connected.at
    assert gone.at == datetime.datetime(2026, 11, 2, 10, 1, 0, 456000, tzinfo=datetime.UTC)


def test_emqx_anonymous_client_has_no_username_when_username_is_null():
    event = parse_emqx_event(
        "$SYS/brokers/n/clients/c/connected", json.dumps({**CONNECTED, "clientid": "c", "username": None}).encode()
    )
    assert event.username is None


def test_other_sys_topics_and_bad_payloads_are_ignored_when_received():
    assert parse_emqx_event("$SYS/brokers/n/clients/c/subscribed", json.dumps(CONNECTED).encode()) is None
    assert parse_emqx_event("$SYS/brokers/n/uptime", b"12") is None
    assert parse_emqx_event("$SYS/brokers/n/clients/c/connected", b"not json") is None
    assert parse_emqx_event("$SYS/brokers/n/clients/c/connected", b'{"clientid": "c"}') is None
