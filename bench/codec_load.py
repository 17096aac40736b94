"""The codec benchmark's load generator and measuring subscriber: raw-socket MQTT 3.1.1 clients, each in its own
process, cheap enough per message that the CPU they take does not decide what the agent achieves. They never
decode more of a message than its `sent` time and `seq`, and never talk to the database.

Payloads are bench.Reading messages in a fixed layout: field 1 (`sent`, a double) at bytes 0..8, field 2 (`seq`, a
fixed64) at bytes 9..17, the rest constant. The publisher pre-encodes every PUBLISH packet but those 20 bytes (packet
id, `sent`, `seq`) and writes each due batch with one send. Both stamp and read CLOCK_MONOTONIC (time.monotonic),
one clock for every process on the machine.

  serve(["publish", PORT, USERNAME, PASSWORD, TEMPLATE_HEX])
      stdin "run RATE SECONDS PREFIX[,PREFIX]" -> one JSON line when every message is acknowledged (or 10 s passed);
      "totals" -> one JSON line
  serve(["subscribe", PORT, USERNAME, PASSWORD])
      stdin "reset FIRST_SEQ", "wait {kind: count} TIMEOUT", "totals" -> one JSON line each; both stop on "quit"
`Load` starts and drives both from the benchmark.
"""

from __future__ import annotations

import json
import pathlib
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

ROOT = pathlib.Path(__file__).resolve().parents[1]

SENT_TAG, SEQ_TAG = 0x09, 0x11  # field 1 wire type 1 (fixed64: double), field 2 wire type 1 (fixed64)
FIXED = struct.Struct("<BdBQ")  # the first 18 bytes of a payload: tag, sent, tag, seq
PACKET_ID_AND_FIXED = struct.Struct("<HBdBQ")  # the packet id is big-endian: packed byte-swapped
MAX_INFLIGHT = 1000  # unacknowledged QoS 1 publishes, as the paho publisher this replaced allowed
KEEPALIVE = 60
DEVICES = 100
PING_EVERY = 20.0
TICK = 0.001  # the publisher writes what is due once a millisecond: about 5 messages a write at 5,000/s


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def _connect(port: int, client_id: str, username: str, password: str) -> socket.socket:
    """A clean-session MQTT 3.1.1 connection with the user's credentials, CONNACK checked."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + KEEPALIVE.to_bytes(2, "big")
    body += _string(client_id) + _string(username) + _string(password)
    sock.sendall(_packet(0x10, body))
    connack = _recv_exact(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise ConnectionError(f"CONNACK refused: {connack.hex()}")
    sock.settimeout(None)
    return sock


def _split(buf: bytearray) -> Iterator[tuple[int, int, int]]:
    """Complete packets at the head of `buf` as (first byte, body start, body end); `buf` keeps the rest."""
    pos, n = 0, len(buf)
    while n - pos >= 2:
        length, multiplier, i = 0, 1, pos + 1
        while i < n:
            byte = buf[i]
            i += 1
            length += (byte & 0x7F) * multiplier
            if byte < 0x80:
                break
            multiplier *= 128
        else:
            break  # the remaining length is not complete yet
        end = i + length
        if end > n:
            break
        yield buf[pos], i, end
        pos = end
    del buf[:pos]


class Publisher:
    def __init__(self, port: int, username: str, password: str, template: bytes) -> None:
        first, _, seq_tag, _ = FIXED.unpack_from(template)
        if (first, seq_tag) != (SENT_TAG, SEQ_TAG):
            raise ValueError("the template is not in the fixed layout")
        self.sock = _connect(port, "bench-publisher", username, password)
        self.template = template
        self.tail = template[FIXED.size :]
        self.heads: dict[str, list[bytes]] = {}
        self.seq = 0  # the last used; the first message is 1 (proto3 JSON leaves a 0 out)
        self.packet_id = 0
        self.published = 0
        self.acked = 0
        self.per_prefix: dict[str, int] = {}
        self.inbox = bytearray()
        self.last_sent = time.monotonic()

    def _heads(self, prefix: str) -> list[bytes]:
        """Per device: the PUBLISH packet up to its packet id (QoS 1: first byte 0x32)."""
        if prefix not in self.heads:
            heads = []
            for device in range(DEVICES):
                topic = _string(f"{prefix}/dev-{device:04d}/in")
                length = len(topic) + 2 + len(self.template)
                heads.append(b"\x32" + _varint(length) + topic)
            self.heads[prefix] = heads
        return self.heads[prefix]

    def _read(self, timeout: float | None) -> None:
        """Count the PUBACKs that have arrived (waiting up to `timeout` for some; None: not at all)."""
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return
        try:
            data = self.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not data:
            raise ConnectionError("the broker closed the connection")
        self.inbox += data
        for first, _, _ in _split(self.inbox):
            if first == 0x40:
                self.acked += 1
            elif first != 0xD0:  # PINGRESP
                raise ConnectionError(f"unexpected packet 0x{first:02x}")

    def ping(self) -> None:
        self.sock.sendall(b"\xc0\x00")
        self.last_sent = time.monotonic()
        self._read(None)

    def run(self, rate: float, seconds: float, prefixes: list[str]) -> dict[str, Any]:
        """Publish `rate` messages a second for `seconds`, alternating the prefixes, each stamped when written."""
        cycle = [self._heads(prefixes[i % len(prefixes)])[i % DEVICES] for i in range(DEVICES * len(prefixes))]
        tail, pack = self.tail, PACKET_ID_AND_FIXED.pack
        first_seq = self.seq + 1
        sent = held = 0
        lag = 0.0
        started = time.monotonic()
        while True:
            now = time.monotonic()
            elapsed = now - started
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) + 1
            if due > sent:
                count = min(due - sent, MAX_INFLIGHT - (self.published - self.acked))
                if count <= 0:
                    held += 1
                    self._read(0.001)
                    continue
                lag = max(lag, elapsed - sent / rate)
                parts: list[bytes] = []
                packet_id, seq = self.packet_id, self.seq
                for i in range(sent, sent + count):
                    packet_id = packet_id % 65535 + 1
                    seq += 1
                    parts += (
                        cycle[i % len(cycle)],
                        pack(packet_id >> 8 | (packet_id & 0xFF) << 8, SENT_TAG, now, SEQ_TAG, seq),
                        tail,
                    )
                self.sock.sendall(b"".join(parts))
                self.packet_id, self.seq = packet_id, seq
                self.published += count
                sent += count
            if self.published - self.acked >= MAX_INFLIGHT // 2:
                self._read(None)  # otherwise the acknowledgements wait in the socket: fewer system calls
            time.sleep(TICK)
        ended = time.monotonic()
        self.last_sent = ended
        deadline = ended + 10
        while self.acked < self.published and time.monotonic() < deadline:
            self._read(0.05)
        for i, prefix in enumerate(prefixes):
            self.per_prefix[prefix] = self.per_prefix.get(prefix, 0) + len(range(i, sent, len(prefixes)))
        return {
            "sent": sent,
            "per_prefix": {p: len(range(i, sent, len(prefixes))) for i, p in enumerate(prefixes)},
            "first_seq": first_seq,
            "next_seq": self.seq + 1,
            "started": started,
            "ended": ended,
            "max_lag": lag,
            "held": held,
            "acked_total": self.acked,
        }


class Subscriber:
    """Counts each (kind, seq) once and times it from its `sent`; kinds by topic: codec/… (the agent's JSON),
    plain/… (the floor's Protobuf, read at fixed offsets), codec-errors/… (failures)."""

    FILTERS = ("codec/+/out", "plain/+/out", "codec-errors/#")

    def __init__(self, port: int, username: str, password: str) -> None:
        self.sock = _connect(port, "bench-subscriber", username, password)
        # QoS 0 on the way out to the subscriber: mosquitto sends an MQTT 3.1.1 client at most 20 QoS 1 messages
        # unacknowledged (max_inflight_messages), which would cap both paths here, not at the agent.
        body = b"\x00\x01" + b"".join(_string(f) + b"\x00" for f in self.FILTERS)
        self.sock.sendall(_packet(0x82, body))
        suback = _recv_exact(self.sock, 2 + 2 + len(self.FILTERS))
        if suback[0] != 0x90 or b"\x80" in suback[4:]:
            raise ConnectionError(f"SUBACK refused: {suback.hex()}")
        self.inbox = bytearray()
        self.seen: dict[str, set[int]] = {"codec": set(), "plain": set()}
        self.duplicates = {"codec": 0, "plain": 0}
        self.errors = self.malformed = 0
        self.reset(1)

    def reset(self, first_seq: int) -> None:
        self.first_seq = first_seq
        self.latencies: dict[str, list[float]] = {"codec": [], "plain": []}
        self.last_arrival = {"codec": 0.0, "plain": 0.0}
        self.late = {"codec": 0, "plain": 0}  # first arrivals of an earlier window's messages

    def receive(self) -> None:
        data = self.sock.recv(1 << 20)
        now = time.monotonic()  # one reading per receive: when these messages reached the subscriber
        if not data:
            raise ConnectionError("the broker closed the connection")
        buf = self.inbox
        buf += data
        loads, unpack = orjson.loads, FIXED.unpack_from
        for first, start, end in _split(buf):
            if first & 0xF0 != 0x30:
                continue  # PINGRESP
            topic = start + 2
            payload = topic + (buf[start] << 8 | buf[start + 1])
            if first & 0x06:
                payload += 2  # a packet id (QoS > 0)
            try:
                if buf[topic] == 0x70:  # "plain/"
                    kind = "plain"
                    tag, sent, seq_tag, seq = unpack(buf, payload)
                    if (tag, seq_tag) != (SENT_TAG, SEQ_TAG):
                        raise ValueError
                elif buf[topic + 5] == 0x2F:  # "codec/", not "codec-errors/"
                    kind = "codec"
                    value = loads(buf[payload:end])
                    sent, seq = value["sent"], int(value["seq"])
                else:
                    self.errors += 1
                    continue
            except (ValueError, KeyError, TypeError, struct.error):
                self.malformed += 1
                continue
            seen = self.seen[kind]
            if seq in seen:
                self.duplicates[kind] += 1
            elif seq < self.first_seq:
                seen.add(seq)
                self.late[kind] += 1
            else:
                seen.add(seq)
                self.latencies[kind].append(now - sent)
                self.last_arrival[kind] = now

    def totals(self) -> dict[str, Any]:
        return {
            "unique": {k: len(v) for k, v in self.seen.items()},
            "duplicates": self.duplicates,
            "errors": self.errors,
            "malformed": self.malformed,
        }

    def window(self) -> dict[str, Any]:
        kinds = {}
        for kind, samples in self.latencies.items():
            ordered = sorted(samples)
            kinds[kind] = {
                "count": len(ordered),
                "p50": percentile(ordered, 0.5),
                "p99": percentile(ordered, 0.99),
                "max": ordered[-1] if ordered else None,
                "last_arrival": self.last_arrival[kind],
                "late": self.late[kind],
            }
        return {"kinds": kinds, **self.totals()}


def percentile(ordered: list[float], q: float) -> float | None:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] if ordered else None


def _serve_publisher(port: int, username: str, password: str, template: bytes) -> None:
    publisher = Publisher(port, username, password, template)
    _reply({"ready": True})
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], PING_EVERY)
        if not ready:
            publisher.ping()
            continue
        words = sys.stdin.readline().split()
        if not words or words[0] == "quit":
            return
        if words[0] == "totals":
            _reply({"published": publisher.per_prefix, "acked": publisher.acked, "sent": publisher.published})
            continue
        _, rate, seconds, prefixes = words
        _reply(publisher.run(float(rate), float(seconds), prefixes.split(",")))
        if time.monotonic() - publisher.last_sent > PING_EVERY:
            publisher.ping()


def _serve_subscriber(port: int, username: str, password: str) -> None:
    """The receiving thread only blocks in recv() and parses: one system call per wake-up. Commands are read on a
    second thread, which wakes the receiver with a PINGREQ (the broker's PINGRESP arrives on the socket); while a
    wait is pending it pings every 50 ms, so the deadline is noticed, and otherwise every 20 s, as keep-alive."""
    subscriber = Subscriber(port, username, password)
    commands: list[str] = []
    waiting: list[tuple[dict[str, int], float]] = []

    def read_commands() -> None:
        while True:
            ready, _, _ = select.select([sys.stdin], [], [], 0.05 if waiting else PING_EVERY)
            if ready:
                line = sys.stdin.readline()
                commands.append(line or "quit")
                if not line:
                    return
            subscriber.sock.sendall(b"\xc0\x00")

    threading.Thread(target=read_commands, daemon=True).start()
    _reply({"ready": True})
    while True:
        subscriber.receive()
        while commands:
            command, _, rest = commands.pop(0).strip().partition(" ")
            if command == "quit":
                return
            if command == "reset":
                subscriber.reset(int(rest))
                _reply({"ok": True})
            elif command == "totals":
                _reply(subscriber.totals())
            elif command == "wait":
                expected_json, timeout = rest.rsplit(" ", 1)
                waiting.append((json.loads(expected_json), time.monotonic() + float(timeout)))
        if waiting:
            expected, deadline = waiting[0]
            if time.monotonic() >= deadline or all(len(subscriber.latencies[k]) >= n for k, n in expected.items()):
                waiting.clear()
                _reply(subscriber.window())


def _reply(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


class Load:
    """The two processes, driven from the benchmark: one run publishes and then waits for the arrivals."""

    def __init__(self, port: int, username: str, password: str, template: bytes) -> None:
        args = [str(port), username, password]
        self.subscriber = self._start("subscribe", *args)
        self.publisher = self._start("publish", *args, template.hex())
        self.next_seq = 1

    @staticmethod
    def _start(*args: str) -> subprocess.Popen[str]:
        entry = "import sys; from bench import codec_load; codec_load.serve(sys.argv[1:])"
        proc = subprocess.Popen(
            [sys.executable, "-c", entry, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        Load._read(proc)
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load process {proc.pid} exited with {proc.wait()}")
        return json.loads(line)

    @staticmethod
    def _ask(proc: subprocess.Popen[str], command: str, answer: bool = True) -> dict[str, Any]:
        assert proc.stdin is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return Load._read(proc) if answer else {}

    def run(self, *, rate: float, seconds: float, prefixes: tuple[str, ...], wait: float = 10.0) -> dict[str, Any]:
        """Publish, then wait up to `wait` seconds for every message of this run: the publisher's and the
        subscriber's answers in one dict."""
        self._ask(self.subscriber, f"reset {self.next_seq}")
        published = self._ask(self.publisher, f"run {rate} {seconds} {','.join(prefixes)}")
        self.next_seq = published["next_seq"]
        expected = json.dumps(published["per_prefix"], separators=(",", ":"))
        received = self._ask(self.subscriber, f"wait {expected} {wait}")
        return {"published": published, "received": received}

    def totals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The publisher's counts (per prefix, acknowledged) and the subscriber's since they started."""
        return self._ask(self.publisher, "totals"), self._ask(self.subscriber, "totals")

    def pids(self) -> tuple[int, int]:
        return self.publisher.pid, self.subscriber.pid

    def close(self) -> None:
        for proc in (self.publisher, self.subscriber):
            try:
                self._ask(proc, "quit", answer=False)
                proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()


def serve(argv: list[str]) -> None:
    """A process's entry point (no `__main__` block: scripts/bench.sh runs every bench/*.py that has one)."""
    role, port_text, user, secret = argv[:4]
    if role == "publish":
        _serve_publisher(int(port_text), user, secret, bytes.fromhex(argv[4]))
    else:
        _serve_subscriber(int(port_text), user, secret)
