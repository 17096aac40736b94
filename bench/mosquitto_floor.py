"""The floor for local provisioning: a bare mosquitto start to its first CONNACK, timed with a hand-built CONNECT.

Owns the raw-socket CONNECT helper other benchmarks reuse. It never uses an MQTT client library (paho's connect loop
adds about a second) and never gates the test suite.
"""

from __future__ import annotations

import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid


class ConnackRefused(Exception):
    """The broker answered CONNACK with a non-zero return code."""


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(*, client_id: str, username: str | None = None, password: str | None = None) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, keepalive 60)."""
    flags = 0x02
    payload = _field(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _field(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _field(password.encode())
    body = _field(b"MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def raw_connack(
    host: str, port: int, username: str | None = None, password: str | None = None, timeout: float = 5.0
) -> float:
    """Seconds from opening a TCP connection to reading an accepting CONNACK; raises OSError or ConnackRefused."""
    packet = connect_packet(client_id="bench-" + uuid.uuid4().hex[:12], username=username, password=password)
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(packet)
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                raise ConnectionResetError("broker closed the connection before CONNACK")
            answer += chunk
        elapsed = time.perf_counter() - started
        sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
    if answer[0] != 0x20:
        raise ConnackRefused(f"expected CONNACK, got packet type {answer[0] >> 4}")
    if answer[3] != 0:
        raise ConnackRefused(f"CONNACK return code {answer[3]}")
    return elapsed


def wait_connack(
    host: str, port: int, *, deadline: float, username: str | None = None, password: str | None = None
) -> None:
    """Retry raw_connack until it succeeds or time.perf_counter() passes `deadline`."""
    while True:
        try:
            raw_connack(host, port, username, password, timeout=1.0)
            return
        except (ConnectionRefusedError, ConnectionResetError):
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.0005)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def bare_start_to_connack(tmpdir: str | os.PathLike, *, mosquitto_bin: str = "mosquitto") -> float:
    """Seconds from spawning a bare mosquitto (one listener, anonymous) to its first CONNACK."""
    workdir = pathlib.Path(tmpdir)
    port = _free_port()
    conf = workdir / f"bare-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
    conf.chmod(0o644)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [mosquitto_bin, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_connack("127.0.0.1", port, deadline=started + 10.0)
        return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()


def main(runs: int = 20) -> None:
    with tempfile.TemporaryDirectory(prefix="mosquitto-floor-") as tmp:
        os.chmod(tmp, 0o755)  # a root-started mosquitto reads its config after dropping to the `mosquitto` user
        samples = sorted(bare_start_to_connack(tmp) for _ in range(runs))
    p50 = statistics.median(samples)
    p95 = samples[min(len(samples) - 1, round(0.95 * len(samples)) - 1)]
    print(
        f"bare mosquitto start -> first CONNACK over {runs} runs: "
        f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms (5-9 ms measured on these machines)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
