"""TLS on a local broker: handshakes per second and the p50 time to first CONNACK on mqtts beside plain mqtt on the
same broker, and the time a certificate change takes to be served (a reload) beside a password-file reload.

Runs the real path below the API: the local driver, real mosquitto (Debian's 2.0.x), the certificates the control
plane's CA issues (EC P-256) and, for comparison, an RSA 2048 certificate. No database. It prints figures and never
gates the test suite. Usage: .venv/bin/python bench/tls.py [connects] [reloads]
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
import shutil
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.mosquitto_floor import ConnackRefused, connect_packet, raw_connack  # noqa: E402
from deployments import tls  # noqa: E402
from deployments.drivers.base import BrokerSpec, RegionTarget, TlsMaterial  # noqa: E402
from deployments.drivers.local import LocalDriver, served_certificate_sha256  # noqa: E402
from deployments.passwords import make_mqtt_credential  # noqa: E402

HOST = "127.0.0.1"
USER = make_mqtt_credential(username="bench", password="bench-password")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _ms(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1000:.2f} ms, p95 {_percentile(samples, 0.95) * 1000:.2f} ms"


def _material(ca, *, rsa: bool = False) -> TlsMaterial:
    ca_pem, ca_key = ca
    now = datetime.datetime.now(datetime.UTC)
    if not rsa:
        certificate, key = tls.issue_server_certificate(
            ca_certificate_pem=ca_pem, ca_private_key_pem=ca_key, host_names=[HOST], now=now
        )
        return TlsMaterial(certificate_pem=certificate, private_key_pem=key)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec as ec_keys
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
    from cryptography.x509.oid import NameOID

    authority = x509.load_pem_x509_certificate(ca_pem.encode())
    authority_key = serialization.load_pem_private_key(ca_key.encode(), password=None)
    assert isinstance(authority_key, ec_keys.EllipticCurvePrivateKey)
    rsa_key = rsa_keys.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(authority.subject)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .sign(authority_key, hashes.SHA256())
    )
    return TlsMaterial(
        certificate_pem=rsa_certificate.public_bytes(serialization.Encoding.PEM).decode(),
        private_key_pem=rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


def _spec(name: str, material: TlsMaterial, users=(USER,)) -> BrokerSpec:
    return BrokerSpec(
        name=name,
        region=RegionTarget(code="bench", driver="local", bind_address=HOST),
        running=True,
        max_connections=10_000,
        messages_per_second=10_000,
        users=users,
        tls=material,
    )


def _tls_connack(port: int, context: ssl.SSLContext) -> float:
    """Seconds from opening the TCP connection to an accepting CONNACK, TLS handshake (verified) included."""
    packet = connect_packet(client_id=f"bench-{time.monotonic_ns()}", username="bench", password="bench-password")
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname=HOST) as sock:
            sock.sendall(packet)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    raise ConnectionResetError("broker closed the connection before CONNACK")
                answer += chunk
            elapsed = time.perf_counter() - started
            sock.sendall(b"\xe0\x00")
    if answer[0] != 0x20 or answer[3] != 0:
        raise ConnackRefused(f"unexpected answer {answer!r}")
    return elapsed


def _handshakes_per_second(port: int, context: ssl.SSLContext, *, threads: int, seconds: float = 2.0) -> float:
    """Full TLS handshakes (new session each time, verified) completed per second by `threads` clients at once."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(index: int) -> None:
        while time.perf_counter() < stop:
            with socket.create_connection((HOST, port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=HOST):
                    counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def _mqtt_connects_per_second(port: int, *, threads: int, seconds: float = 2.0) -> float:
    """Plain MQTT connects (CONNECT answered by CONNACK) per second by `threads` clients at once: the floor."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(index: int) -> None:
        while time.perf_counter() < stop:
            raw_connack(HOST, port, "bench", "bench-password")
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def main(connects: int = 200, reloads: int = 10) -> None:
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench-tls-"))
    root.chmod(0o755)  # a root-started mosquitto reads its files as the `mosquitto` user
    driver = LocalDriver(root=root)
    now = datetime.datetime.now(datetime.UTC)
    ca = tls.generate_certificate_authority(common_name="Bench CA", now=now)
    context = ssl.create_default_context(cadata=ca[0])
    specs = {
        "EC P-256": _spec("dep_benchtlsec", _material(ca)),
        "RSA 2048": _spec("dep_benchtlsrsa", _material(ca, rsa=True)),
    }
    try:
        observed = {label: driver.apply(spec) for label, spec in specs.items()}
        ports = observed["EC P-256"].ports
        print(f"mosquitto {observed['EC P-256'].details.get('pid')} serving {sorted(ports)} on {HOST}")

        for label, seen in observed.items():
            plain = [raw_connack(HOST, seen.ports["mqtt"], "bench", "bench-password") for _ in range(connects)]
            secure = [_tls_connack(seen.ports["mqtts"], context) for _ in range(connects)]
            ratio = statistics.median(secure) / statistics.median(plain)
            print(f"[{label}] first CONNACK over {connects} connects each, same broker:")
            print(f"  mqtt  (floor): {_ms(plain)}")
            print(f"  mqtts        : {_ms(secure)}  ({ratio:.1f}x the floor)")
            single = _handshakes_per_second(seen.ports["mqtts"], context, threads=1)
            parallel = _handshakes_per_second(seen.ports["mqtts"], context, threads=4)
            floor_single = _mqtt_connects_per_second(seen.ports["mqtt"], threads=1)
            floor_parallel = _mqtt_connects_per_second(seen.ports["mqtt"], threads=4)
            print(
                f"  TLS handshakes/s on mqtts: {single:.0f} from 1 client, {parallel:.0f} from 4 at once "
                f"(floor: plain MQTT connects/s on mqtt: {floor_single:.0f} and {floor_parallel:.0f})"
            )

        spec = specs["EC P-256"]
        certificate_reloads, password_reloads = [], []
        broker_pid = observed["EC P-256"].details["pid"]
        for n in range(reloads):
            material = _material(ca)
            fresh = dataclasses.replace(spec, tls=material)
            started = time.perf_counter()
            result = driver.apply(fresh)
            certificate_reloads.append(time.perf_counter() - started)
            wanted = tls.certificate_facts(material.certificate_pem).fingerprint_sha256.replace(":", "").lower()
            assert served_certificate_sha256(HOST, ports["mqtts"]) == wanted, "new certificate not served"
            assert served_certificate_sha256(HOST, ports["wss"]) == wanted, "new certificate not served on wss"
            assert result.details["pid"] == broker_pid, "the broker restarted instead of reloading"
            spec = fresh
            extra = make_mqtt_credential(username=f"extra{n}", password="extra-password")
            with_user = dataclasses.replace(spec, users=(USER, extra))
            started = time.perf_counter()
            driver.apply(with_user)
            password_reloads.append(time.perf_counter() - started)
            spec = with_user
        print(f"certificate change to served on mqtts and wss (driver.apply: SIGHUP, verdict, check), {reloads} runs:")
        print(f"  password-file reload (floor): {_ms(password_reloads)}")
        print(f"  certificate reload          : {_ms(certificate_reloads)}  (same pid: clients stay connected)")
    finally:
        for spec in specs.values():
            try:
                driver.delete(spec)
            except Exception as exc:  # noqa: BLE001 - a benchmark cleans up what it can
                print(f"cleanup of {spec.name}: {exc}")
        for pid in _pids_under(root):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def _pids_under(root: pathlib.Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"mosquitto" in argv and str(root).encode() in argv:
                found.append(int(entry))
    return found


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
