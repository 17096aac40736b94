"""The local driver: one real mosquitto process per deployment on this machine, under `root/<deployment name>/`.

Owns the deployment's directory (config, password and ACL files, persistence, log, pid, ports) and its process. It
never trusts a pid it cannot prove is its own broker, never starts a second broker for a deployment, never writes a
value into a broker file that is not on that field's allow-list, never leaves a broker running on a configuration it
refused, and never reads or writes the database.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import itertools
import json
import os
import pathlib
import pwd
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

from controlplane.validators import find_control_character
from deployments.drivers.base import (
    ACL_NO_MATCH,
    BrokerSpec,
    ConfigRejectedError,
    Liveness,
    Observed,
    PermanentDriverError,
    TemporaryDriverError,
)
from deployments.passwords import mosquitto_password_line, validate_mqtt_username
from deployments.topics import topic_filters_overlap, validate_topic_filter

# mosquitto has no rate limiting at all: no connection rate, message rate or bytes rate, at any level. Its nearest
# settings (max_inflight_messages, max_queued_messages, max_connections) bound quantities, not rates, so no level of a
# RateLimit policy is honoured by a local broker. The policies are accepted and reported as not enforced.
HONOURED_LEVELS: frozenset[str] = frozenset()
RATE_LIMIT_LEVELS = ("global", "zone", "listener", "connection")


MAX_QUEUED_MESSAGES = 1000
PERSISTENT_CLIENT_EXPIRATION = "14d"
DEFAULT_PORT_RANGE = (20000, 30000)  # below Linux's ephemeral range (32768+), so outgoing sockets never take them

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_WEBSOCKETS_SUPPORT: dict[str, bool] = {}


def honoured_rate_limits() -> dict[str, tuple[str, ...]]:
    """Per rate-limit level, the RateLimit fields a local broker enforces: none, because mosquitto cannot."""
    return {level: () for level in RATE_LIMIT_LEVELS}


@dataclasses.dataclass(frozen=True)
class _Paths:
    dir: pathlib.Path

    @property
    def lock(self) -> pathlib.Path:
        return self.dir / ".lock"

    @property
    def conf(self) -> pathlib.Path:
        return self.dir / "mosquitto.conf"

    @property
    def passwd(self) -> pathlib.Path:
        return self.dir / "passwd"

    @property
    def acl(self) -> pathlib.Path:
        return self.dir / "acl"

    @property
    def data(self) -> pathlib.Path:
        return self.dir / "data"

    @property
    def log(self) -> pathlib.Path:
        return self.dir / "mosquitto.log"

    @property
    def stderr(self) -> pathlib.Path:
        return self.dir / "mosquitto.stderr"

    @property
    def pid(self) -> pathlib.Path:
        return self.dir / "mosquitto.pid"

    @property
    def ports(self) -> pathlib.Path:
        return self.dir / "ports.json"

    @property
    def state(self) -> pathlib.Path:
        return self.dir / "state.json"

    @property
    def primed(self) -> pathlib.Path:
        """The broker process whose wss listener has shown mosquitto its TLS context (see _prime_websockets_tls)."""
        return self.dir / "wss-primed.json"

    @property
    def alive(self) -> pathlib.Path:
        """Touched whenever the broker is seen alive: its mtime bounds when a dead broker last served."""
        return self.dir / "alive"

    @property
    def answered(self) -> pathlib.Path:
        """Touched whenever the broker answered a CONNECT: /proc says a process runs, not that it serves."""
        return self.dir / "answered"

    @property
    def unanswered(self) -> pathlib.Path:
        """Holds the pid of a broker that did not answer a CONNECT; its mtime is when that was first seen."""
        return self.dir / "unanswered"

    @property
    def accepted(self) -> pathlib.Path:
        """Hard links to the config, password and ACL files the running broker last accepted."""
        return self.dir / "accepted"

    @property
    def rejected(self) -> pathlib.Path:
        """The digest of the files the broker last refused, and why: the same files are not tried again."""
        return self.dir / "rejected.json"

    @property
    def server_certificate(self) -> pathlib.Path:
        """The certificate the TLS listeners serve, followed by its chain (mosquitto's `certfile`)."""
        return self.dir / "tls-server.crt"

    @property
    def server_key(self) -> pathlib.Path:
        """Its private key (`keyfile`): mode 0600, owned by the broker's user."""
        return self.dir / "tls-server.key"

    @property
    def client_ca(self) -> pathlib.Path:
        """The CA(s) clients' certificates must verify against (`cafile`), only with two-way TLS."""
        return self.dir / "tls-client-ca.crt"

    @property
    def device_ca(self) -> pathlib.Path:
        """The device CA the mqtts_x509 listener verifies client certificates against (its `cafile`)."""
        return self.dir / "tls-device-ca.crt"

    @property
    def device_crl(self) -> pathlib.Path:
        """The device CA's CRL (the listener's `crlfile`): reloaded on SIGHUP, no restart."""
        return self.dir / "tls-device-ca.crl"

    @property
    def broker_files(self) -> tuple[pathlib.Path, ...]:
        return (
            self.conf,
            self.passwd,
            self.acl,
            self.server_certificate,
            self.server_key,
            self.client_ca,
            self.device_ca,
            self.device_crl,
        )

    @property
    def optional_files(self) -> tuple[pathlib.Path, ...]:
        """Broker files that exist only when the spec asks for them (TLS material)."""
        return (self.server_certificate, self.server_key, self.client_ca, self.device_ca, self.device_crl)


@dataclasses.dataclass(frozen=True)
class _RunAs:
    """Who the broker runs as: a root-started mosquitto drops to `user`, which must own what it writes."""

    config_user: str | None
    uid: int | None
    gid: int | None


class _ObservedFacts(TypedDict):
    """What every Observed of a broker's directory says, whatever its phase."""

    host: str
    ports: dict[str, int]
    restart_nonce: int
    details: dict[str, str]


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return None


def _process_cmdline(pid: int) -> list[str] | None:
    try:
        raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # a zombie or a kernel thread
    return raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")


def _process_state(pid: int) -> str | None:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


# No process any more, or only its exit status waiting to be reaped.
_GONE_STATES = (None, "Z", "X")
STOP_RESIGNAL = 1.0  # seconds between SIGTERMs to a broker that has not exited yet (see LocalDriver._stop)
# Stopped by a signal (T: SIGSTOP, SIGTSTP…) or by a tracer (t): the process keeps its listening socket, the kernel
# still completes TCP handshakes into its backlog, and nothing is ever answered. Not alive, whatever /proc lists.
_HALTED_STATES = ("T", "t")


def _process_identity(pid: int) -> str:
    """`pid:start time` (in clock ticks since boot): names one process, even once its pid is reused."""
    try:
        start = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return f"{pid}:{start}"


def _listening_inodes_by_port(ports: set[int]) -> dict[int, set[str]]:
    """Port -> inodes of the sockets listening on it, for each of `ports`, from one read of the kernel's tables."""
    found: dict[int, set[str]] = {port: set() for port in ports}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in found:
                    found[port].add(fields[9])
    return found


def _listening_inodes(port: int) -> set[str]:
    return _listening_inodes_by_port({port})[port]


def _owned_listeners(pid: int, ports: set[int]) -> set[int]:
    """Which of `ports` process `pid` holds a listening socket on (one read of the tables for all of them)."""
    inodes = _listening_inodes_by_port(ports)
    if not any(inodes.values()):
        return set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    sockets = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[8:-1])
    return {port for port, held in inodes.items() if held & sockets}


def _owns_listener(pid: int, port: int) -> bool:
    """True if process `pid` holds a socket listening on `port`: proof that it is our broker serving, not a squatter."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _port_bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # mosquitto binds with SO_REUSEADDR, so a port in TIME_WAIT is usable by it and should count as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# -- the allow-list of every value written into a broker file -----------------------------------------------------
# mosquitto reads its three files line by line: a line break in a value starts a directive of the attacker's choosing,
# a line starting with `#` is a comment, leading and trailing blanks are trimmed from the rest of a line, a username
# ends at the first `:` of a password-file line, and a broken ACL line on reload leaves the broker with no ACL at
# all. So every field has its own rule, checked as it is rendered; a value outside it is a PermanentDriverError.

MAX_MQTT_STRING_BYTES = 65535  # the MQTT string limit, and mosquitto's own limit on usernames in its files
MAX_MESSAGE_SIZE = 268435455  # the largest MQTT packet
_CONFIG_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}\Z")


def _no_control(value: str, what: str) -> None:
    found = find_control_character(value)
    if found is not None:
        raise PermanentDriverError(f"{what} contains the control character U+{ord(found[1]):04X} at {found[0]}")


def _rest_of_line(value: object, what: str) -> str:
    """A value mosquitto reads as the rest of its line: one line, not blank, no blanks at either end."""
    if not isinstance(value, str) or not value:
        raise PermanentDriverError(f"{what} must be a non-empty string")
    _no_control(value, what)
    if value != value.strip():
        raise PermanentDriverError(f"{what} must not start or end with whitespace (mosquitto would trim it)")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_MQTT_STRING_BYTES:
        raise PermanentDriverError(f"{what} is longer than {MAX_MQTT_STRING_BYTES} bytes")
    return value


def _conf_int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise PermanentDriverError(f"{what} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _conf_path(value: pathlib.Path | str, what: str) -> str:
    text = _rest_of_line(str(value), what)
    if not os.path.isabs(text):
        raise PermanentDriverError(f"{what} must be an absolute path")
    return text


def _conf_address(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise PermanentDriverError(f"bind address {value!r} is not an IP address") from None
    if str(address) != value:
        raise PermanentDriverError(f"bind address {value!r} is not in canonical form ({address})")
    return str(address)


def _conf_user(value: str) -> str:
    if not _CONFIG_USER_RE.match(value):
        raise PermanentDriverError(f"broker user {value!r} is not a plain system user name")
    return value


def _file_username(value: object) -> str:
    """A username in the password file (`name:hash`) and the ACL file (`user name`)."""
    if not isinstance(value, str):
        raise PermanentDriverError("an MQTT username must be a string")
    _no_control(value, f"MQTT username {value!r}")
    try:
        validate_mqtt_username(value)
    except ValueError as exc:
        raise PermanentDriverError(f"MQTT username {value!r}: {exc}") from None
    if value.startswith("#"):
        raise PermanentDriverError(
            f"MQTT username {value!r}: a username starting with '#' reads as a comment in mosquitto's password file"
        )
    return value


def _file_topic(value: object) -> str:
    """A topic filter at the end of an ACL line (`topic <access> <filter>`): the rest of the line."""
    text = _rest_of_line(value, f"ACL topic {value!r}")
    try:
        validate_topic_filter(text)
    except ValueError as exc:
        raise PermanentDriverError(f"ACL topic {value!r}: {exc}") from None
    return text


# PEM as deployments.tls re-encodes it: whole base64 lines of at most 64 characters between the markers, one
# line break after each line. Nothing else can reach a certificate or key file.
_PEM_CERTIFICATES = re.compile(
    r"(?:-----BEGIN CERTIFICATE-----\n(?:[A-Za-z0-9+/=]{1,64}\n)+-----END CERTIFICATE-----\n)+"
)
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN PRIVATE KEY-----\n(?:[A-Za-z0-9+/=]{1,64}\n)+-----END PRIVATE KEY-----\n")
_PEM_CRL = re.compile(r"-----BEGIN X509 CRL-----\n(?:[A-Za-z0-9+/=]{1,64}\n)+-----END X509 CRL-----\n")


def _file_pem(value: object, what: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise PermanentDriverError(f"{what} is not PEM text as the control plane writes it")
    return value


def _conf_bool(value: object, what: str) -> str:
    if type(value) is not bool:
        raise PermanentDriverError(f"{what} must be true or false, not {value!r}")
    return "true" if value else "false"


def _file_b64(value: object, what: str) -> str:
    if not isinstance(value, str) or not _BASE64_RE.match(value):
        raise PermanentDriverError(f"{what} must be base64")
    return value


# -- process facts read from /proc --------------------------------------------------------------------------------


def _describe_wait_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended (wait status {status})"


def _zombie_exit_status(pid: int) -> int | None:
    """The wait status of an exited, not yet reaped process (field 52 of /proc/<pid>/stat, Linux 3.5+)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "Z" or len(fields) < 50:
        return None
    return int(fields[49])


# -- small file and socket facts --------------------------------------------------------------------------------

# mosquitto's log is read as bytes and split at b"\n" only: str.splitlines() also breaks at U+2028 and U+2029, which
# mosquitto lets into client ids (lib/utf8_mosq.c refuses C0 and C1 characters only), so a client id could end one
# line and start another. A line of the broker's own is "<unix seconds>: <message>" (log_timestamp on, no
# log_timestamp_format: our config). Text a client controls appears mid-line only, but for a CONNECT's protocol name:
# 4 or 6 raw bytes, logged unchecked, which can start a line ("\n1: Er") whose rest is mosquitto's fixed text
# ('" in CONNECT from <address>.'): never a whole message that proves anything (_refusal_patterns, _RELOADING).
_LOG_LINE = re.compile(r"(\d+): (.*)")
_RELOADING = "Reloading config."
_LOG_TAIL_BYTES = 64 * 1024


def _log_lines(path: pathlib.Path, offset: int = 0, *, tail: int | None = None) -> list[str]:
    """The complete lines of a log (from byte `offset`, or its last `tail` bytes), split at b"\n" only."""
    cut = False
    try:
        with open(path, "rb") as handle:
            if tail is not None:
                handle.seek(0, os.SEEK_END)
                cut = handle.tell() - tail > offset
                offset = max(offset, handle.tell() - tail)
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return []
    # The piece after the last b"\n" is a line still being written: not yet a line. A tail starts mid-line, where a
    # client's words may look like the start of one of the broker's.
    pieces = data.split(b"\n")[:-1]
    return [line.decode("utf-8", "replace") for line in (pieces[1:] if cut else pieces)]


def _broker_messages(lines: list[str]) -> list[str]:
    """The messages of the lines mosquitto wrote itself, timestamp removed; anything else is dropped."""
    messages = []
    for line in lines:
        match = _LOG_LINE.fullmatch(line)
        if match:
            messages.append(match.group(2))
    return messages


def _refusal_patterns(paths: _Paths) -> tuple[re.Pattern[str], ...]:
    """What mosquitto 2.0 logs when it cannot use one of our files (the configuration, password and ACL files:
    src/conf.c, src/security_default.c; the TLS listeners' certificate, key and client CA: src/net.c,
    src/mosquitto.c; at v2.0.11), each message whole and naming the file where mosquitto names it. A message not on
    this list proves no refusal, whatever it says: "OpenSSL Error[…]" lines are left out, a client's bad handshake
    writes them too."""
    conf, passwd, acl, cert, key, client_ca, device_ca, device_crl = (
        re.escape(str(path))
        for path in (
            paths.conf,
            paths.passwd,
            paths.acl,
            paths.server_certificate,
            paths.server_key,
            paths.client_ca,
            paths.device_ca,
            paths.device_crl,
        )
    )
    user = r"\S+"  # usernames in our password file have no whitespace (the allow-list)
    return tuple(
        re.compile(pattern)
        for pattern in (
            rf"Error found at {conf}:\d+\.",
            rf"Error: Unable to open config file {conf}\.",
            rf"Error: Config file {conf} is a directory\.",
            rf"Error: Unable to open acl_file \"{acl}\"\.",
            rf"Error opening acl file \"{acl}\"\.",
            rf"Error: Empty topic in acl_file \"{acl}\"\.",
            rf"Error: Invalid topic access type \".*\" in acl_file \"{acl}\"\.",
            rf"Error: Invalid ACL topic \".*\" in acl_file \"{acl}\"\.",
            rf"Error: Missing username in acl_file \"{acl}\"\.",
            rf"Error: Invalid line in acl_file \"{acl}\": .*\.",
            rf"Error: Unable to open pwfile \"{passwd}\"\.",
            rf"Error opening password file \"{passwd}\"\.",
            rf"Warning: Invalid line in password file '{passwd}'(, username too long\.|, password too long\.|: .*)",
            rf"Error: (Missing password hash|Invalid password hash( type)?|Invalid hash iterations"
            rf"|Unable to decode password( salt)?) for user {user}, removing entry\.",
            rf"Error when reloading certificate '{cert}' or key '{key}'\.",
            rf"Error: Unable to load server certificate \"{cert}\"\. Check certfile\.",
            rf"Error: Unable to load server key file \"{key}\"\. Check keyfile\.",
            r"Error: Server certificate/key are inconsistent\.",
            rf"Error: Unable to load CA certificates\. Check cafile \"{client_ca}\"\.",
            rf"Error: Unable to load CA certificates\. Check cafile \"{device_ca}\"\.",
            rf"Error: Unable to load certificate revocation file \"{device_crl}\"\. Check crlfile\.",
        )
    )


def _refusals(messages: list[str], paths: _Paths) -> list[str]:
    """The messages proving mosquitto refused one of our files. "Error found at <conf>:<line>." follows the message
    saying what is wrong on that line: that message is quoted with it."""
    patterns = _refusal_patterns(paths)
    found = []
    for index, message in enumerate(messages):
        if any(pattern.fullmatch(message) for pattern in patterns):
            if message.startswith("Error found at ") and index > 0 and messages[index - 1].startswith("Error: "):
                found.append(messages[index - 1])
            found.append(message)
    return list(dict.fromkeys(found))


def _last_error(lines: list[str]) -> str:
    """The last error mosquitto itself logged among `lines`, or ""."""
    errors = [m for m in _broker_messages(lines) if m.startswith("Error")]
    return errors[-1][-300:] if errors else ""


def _rejection(reason: str) -> str:
    # One wording whether the broker refused the files now or before: a resync does not read as a new refusal.
    return f"mosquitto refused the new configuration ({reason}); it serves with the previous configuration"


def _fence_connect() -> bytes:
    """An MQTT CONNECT at protocol level 127, which mosquitto answers with CONNACK 1 (unacceptable protocol version)
    and logs as a protocol error: never as an authentication failure, which the collectors count."""
    body = b"\x00\x04MQTT" + bytes([0x7F, 0x02]) + (60).to_bytes(2, "big") + b"\x00\x0fcp-reload-fence"
    return bytes([0x10, len(body)]) + body


_FENCE_CONNECT = _fence_connect()


def _fence(host: str, port: int) -> bool:
    """True once the broker answered a CONNECT sent now. mosquitto carries out a pending reload (SIGHUP) at the end
    of each pass of its event loop, and accepting a connection and reading its CONNECT take two passes: a CONNACK
    received after the signal proves the reload is done and everything it logged is in the log file."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(_FENCE_CONNECT)
            return sock.recv(4)[:1] == b"\x20"
    except OSError:
        return False


def _answers(host: str, port: int, timeout: float) -> bool:
    """True if the broker's event loop acted on a connection opened now: it answered a CONNECT, or closed the
    connection at once (a listener at max_connections accepts and closes). False if nothing came back within
    `timeout` (a stopped or hung broker: the kernel still completes the handshake into its listen backlog) or
    nothing listens."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_FENCE_CONNECT)
            return sock.recv(4)[:1] in (b"\x20", b"")
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:  # TimeoutError included
        return False


def _loopback_for(bind_address: str) -> str:
    address = ipaddress.ip_address(bind_address)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return bind_address


def _digest(contents: Iterable[str | None]) -> str:
    sha = hashlib.sha256()
    for content in contents:
        sha.update(b"\1" if content is None else content.encode())  # an absent file differs from an empty one
        sha.update(b"\0")
    return sha.hexdigest()


def _pem_sha256(path: pathlib.Path) -> str | None:
    """SHA-256 (hex) of the DER of the first certificate in a PEM file: its fingerprint."""
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", text, re.DOTALL)
    if match is None:
        return None
    return hashlib.sha256(base64.b64decode("".join(match.group(1).split()))).hexdigest()


def _conf_listener_ports(path: pathlib.Path) -> list[int]:
    """The ports of the `listener` lines of the configuration file on disk: what a broker started with it serves."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [int(m.group(1)) for m in (re.match(r"^listener (\d+) ", line) for line in lines) if m]


def _websocket_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def _tls_context() -> ssl.SSLContext:
    # The driver only looks at what the broker serves (and primes it): it never trusts or sends anything over it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_certificate_sha256(host: str, port: int, timeout: float = 2.0) -> str | None:
    """SHA-256 (hex) of the certificate a TLS listener presents now, or None if no handshake completes. Works on a
    listener that demands client certificates too: with TLS 1.3 the server's certificate arrives, and the client
    side of the handshake completes, before the server judges the (absent) client certificate."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with _tls_context().wrap_socket(raw, server_hostname=None) as sock:
                der = sock.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return hashlib.sha256(der).hexdigest() if der else None


def _prime_websockets_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Open (and close) one WebSocket over TLS to the wss listener. mosquitto 2.0 reloads a listener's certificate on
    SIGHUP only through the TLS context it holds, and for a WebSocket listener it learns that context from the first
    connection that completes the WebSocket handshake (src/websockets.c, LWS_CALLBACK_ESTABLISHED, v2.0.11): until
    then a reload leaves the wss listener on its old certificate. True if the handshake completed; a listener that
    requires client certificates refuses it (the caller then checks what is served and restarts if need be)."""
    request = (
        f"GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {_websocket_key()}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    )
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with _tls_context().wrap_socket(raw, server_hostname=None) as sock:
                sock.sendall(request.encode("ascii"))
                answer = sock.recv(64)
    except (OSError, ssl.SSLError):
        return False
    return answer.startswith(b"HTTP/1.1 101")


def _recorded_pid(paths: _Paths) -> int | None:
    try:
        return int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return None


def _mtime(path: pathlib.Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _size(path: pathlib.Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _touch(path: pathlib.Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        path.touch(mode=0o600)


@contextlib.contextmanager
def _flock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive flock held on the file at `path` (the kernel drops it if we die, whatever line we die on).

    A file removed (or replaced) while we waited is a lock nobody else will honour, so we retry on the file now at the
    path: delete() removes a deployment's directory, lock file included, while holding its lock.
    """
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            if current.st_ino != os.fstat(fd).st_ino:
                continue
            yield
            return
        finally:
            os.close(fd)


@contextlib.contextmanager
def _try_flock(path: pathlib.Path) -> Iterator[bool]:
    """Like _flock, without waiting: yields False at once when another holds the lock (or the file is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                yield False
                return
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            yield False
            return
        yield current.st_ino == os.fstat(fd).st_ino
    finally:
        os.close(fd)


class LocalDriver:
    """Runs one mosquitto per deployment; any number of instances, in any processes, may share one `root`."""

    def __init__(
        self,
        *,
        root: pathlib.Path,
        mosquitto_bin: str = "mosquitto",
        sys_interval: int = 10,
        autosave_interval: int = 60,
        port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
        start_timeout: float = 10.0,
        stop_timeout: float = 15.0,
        websockets: bool | None = None,
        answer_check_seconds: float = 15.0,
        answer_timeout: float = 2.0,
        hung_seconds: float = 10.0,
    ) -> None:
        self.root = pathlib.Path(root).resolve()
        self.mosquitto_bin = shutil.which(mosquitto_bin) or mosquitto_bin
        self.sys_interval = sys_interval
        self.autosave_interval = autosave_interval
        self.port_range = port_range
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._websockets = websockets
        # A live process is not proof of a serving broker: every `answer_check_seconds` a probe sends it a CONNECT
        # (`answer_timeout` to answer); one that answers none for `hung_seconds` (two looks at least) is hung.
        self.answer_check_seconds = answer_check_seconds
        self.answer_timeout = answer_timeout
        self.hung_seconds = hung_seconds
        # Popen objects for brokers this instance started, so it can reap them (no zombies while the worker lives),
        # and how each reaped one ended: a crash report quotes it after the zombie is gone.
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._exits: dict[int, str] = {}

    # -- public interface -------------------------------------------------------------------------------------------

    def apply(self, spec: BrokerSpec) -> Observed:
        paths = self._paths(spec)
        self._validate(spec)
        with _flock(paths.lock):
            run_as = self._run_as()
            crashed, last_seen = "", None
            # The deployment had ports, so an apply wrote its files here before: without them, they were removed
            # under it (a reboot onto an empty LOCAL_BROKERS_DIR, a clean-up). Whether that was a crash only the
            # reconciler knows (the deployment was serving), and records it then. (The lock file just taken
            # recreated the directory: its files say whether it was lost.)
            directory_lost = bool(spec.previous_ports) and not paths.state.exists() and not paths.conf.exists()
            if directory_lost:
                # One may still run from the removed directory: it must not serve on beside the broker started now.
                # (A new deployment has no ports yet, and skips the scan of /proc.)
                for stray in self._scan_pids(paths):
                    self._stop(stray)
            self._prepare_directory(paths, run_as)
            ports = self._ensure_ports(spec, paths)
            recorded_state = _read_json(paths.state)
            state = recorded_state or {}
            state_lost = bool(spec.previous_ports) and recorded_state is None
            meant_to_run = spec.running and (bool(state.get("running")) or state_lost)
            exit_note = ""
            if meant_to_run:
                # What a dead broker left (its exit status) must be read before _find_pid reaps it.
                recorded = _recorded_pid(paths)
                if recorded is not None and not self._is_broker_process(recorded, paths):
                    exit_note = self._exit_message(recorded, paths)
            pid = self._find_pid(paths)
            if meant_to_run and pid is not None:
                unresponsive = self._unresponsive(pid, paths)
                if unresponsive:
                    # A process that serves nothing is a crash too; SIGTERM would wait on it for nothing.
                    crashed, last_seen = f"{unresponsive}; it was killed (SIGKILL)", _mtime(paths.alive)
                    self._kill(pid)
                    pid = None
            elif meant_to_run:
                # Meant to be running and not: a crash (or a start that failed; the reconciler tells them apart).
                if directory_lost:
                    crashed = f"its directory {paths.dir} was gone: nothing of the broker was left on this machine"
                elif state_lost and not exit_note:
                    crashed = f"its state file {paths.state} was gone and no broker ran from {paths.dir}"
                else:
                    crashed = exit_note or "mosquitto is gone and left no pid; its exit status is unknown"
                last_seen = _mtime(paths.alive)
            try:
                observed = self._apply_locked(spec, paths, ports, run_as, state, pid)
            except ConfigRejectedError as exc:
                exc.observed.crashed, exc.observed.last_seen_alive = crashed, last_seen
                raise
            observed.crashed, observed.last_seen_alive = crashed, last_seen
            return observed

    def _apply_locked(
        self,
        spec: BrokerSpec,
        paths: _Paths,
        ports: dict[str, int],
        run_as: _RunAs,
        state: dict[str, Any],
        pid: int | None,
    ) -> Observed:
        rendered: dict[pathlib.Path, str | None] = {
            paths.conf: self._render_conf(spec, paths, ports, run_as),
            paths.passwd: self._render_passwd(spec),
            paths.acl: render_acl(spec)[0],
            **self._render_tls(spec, paths),
        }
        digest = _digest(rendered.values())
        recorded_nonce = int(state.get("restart_nonce", 0))
        restarting = spec.restart_nonce > recorded_nonce
        if pid is not None and not paths.accepted.exists():
            # A broker started before accepted files were kept: what is on disk now is what it runs.
            self._keep_accepted(paths)
        rejected = _read_json(paths.rejected) or {}
        accepted = self._accepted_files(paths)
        # The broker refused exactly these files before: it gets the last accepted ones again (a restart or a crash
        # starts it with those), never the refused ones, and the change keeps failing until the rows change.
        refused_before = rejected.get("digest") == digest and accepted is not None
        files = accepted if accepted is not None and refused_before else rendered

        def changed(path: pathlib.Path) -> bool:
            # Written now, or written by an earlier apply that died before the running broker confirmed it (the
            # files it confirmed are the accepted ones): either way the broker must still be told.
            wrote = self._write_if_changed(path, files[path], run_as)
            return wrote or (pid is not None and accepted is not None and accepted.get(path) != files[path])

        conf_changed = changed(paths.conf)
        auth_changed = changed(paths.passwd)
        auth_changed |= changed(paths.acl)
        # mosquitto 2.0 reloads a TLS listener's certfile and keyfile on SIGHUP (src/mosquitto.c
        # listeners__reload_all_certificates, v2.0.11) but nothing else of a listener: its cafile and
        # require_certificate are read at start only (src/conf.c: "Listeners not valid for reloading").
        cert_changed = changed(paths.server_certificate)
        cert_changed |= changed(paths.server_key)
        client_ca_changed = changed(paths.client_ca)
        # The device listener's CA and CRL are reloaded on SIGHUP too, because it sets certfile, keyfile, crlfile and
        # require_certificate (src/security_default.c mosquitto_security_apply_default, v2.0.11: a new TLS context
        # and net__tls_load_verify). The CA never changes once made; its first appearance changes the configuration
        # (a new listener) and restarts the broker anyway.
        client_ca_changed |= changed(paths.device_ca)
        auth_changed |= changed(paths.device_crl)

        if not spec.running:
            if pid is not None:
                self._stop(pid)
            self._write_state(paths, run_as, spec, running=False, nonce=max(recorded_nonce, spec.restart_nonce))
            return self._observe_locked(spec, paths)

        if pid is not None and (conf_changed or client_ca_changed or restarting):
            self._stop(pid)
            pid = None
        elif pid is not None and (auth_changed or cert_changed):
            # A broker still starting may not handle SIGHUP yet (its default action kills): wait until it serves.
            self._wait_listening(pid, paths)
            # mosquitto re-reads its password and ACL files and its server certificate and key on SIGHUP without
            # dropping connected clients; on a file it cannot use it logs an error and runs without that file (or
            # with a half-loaded certificate): so its verdict is read back.
            refused = self._reload(pid, spec, ports, paths, certificates=cert_changed)
            if refused:
                self._refuse(spec, paths, ports, run_as, pid=pid, digest=digest, reason=refused, reloaded=True)
            elif cert_changed and not self._serves_certificate(spec, ports, paths):
                # The wss listener kept its old certificate: mosquitto had no TLS context of it to reload (no
                # WebSocket client has completed a handshake since it started, and it requires client
                # certificates, so the driver cannot prime it). Only a restart makes it serve the new one.
                self._stop(pid)
                pid = None
        # Recorded before starting: a crash between here and a successful start leaves running=True with no
        # process, which observe() reports as failed and the next apply() repairs.
        self._write_state(paths, run_as, spec, running=True, nonce=max(recorded_nonce, spec.restart_nonce))
        if pid is None:
            offset = _size(paths.log)
            try:
                pid = self._start(paths, run_as)
            except TemporaryDriverError:
                refused = self._config_errors(paths, offset, since_reload=False)[1]
                self._refuse(spec, paths, ports, run_as, pid=None, digest=digest, reason=refused, reloaded=False)
                raise
            refused = self._config_errors(paths, offset, since_reload=False)[1]
            if refused:
                self._refuse(spec, paths, ports, run_as, pid=pid, digest=digest, reason=refused, reloaded=False)
        else:
            self._wait_listening(pid, paths)
        _touch(paths.alive)
        if refused_before:
            raise ConfigRejectedError(
                _rejection(rejected.get("reason", "")), observed=self._observe_locked(spec, paths)
            )
        self._keep_accepted(paths)
        paths.rejected.unlink(missing_ok=True)
        return self._observe_locked(spec, paths)

    def probe(self, name: str) -> Liveness:
        """Whether the broker of deployment `name`, if meant to be running, is alive: a few reads of /proc, and a
        CONNECT now and then (_unresponsive); busy if an apply or delete holds the deployment; idle if its state file
        says it was stopped; missing if nothing of it is on this machine (no directory, or no state file and no
        broker running from it). Changes nothing but the heartbeat files."""
        if not _NAME_RE.match(name):
            raise PermanentDriverError(f"deployment name {name!r} is not a safe directory name")
        paths = _Paths(self.root / name)
        gone = Liveness(state="missing", message=f"its directory {paths.dir} is gone: no broker runs from it")
        if not paths.dir.exists():
            return gone
        with _try_flock(paths.lock) as acquired:
            if not acquired:
                # A lock file removed under us (a wiped directory) is held by nobody.
                return Liveness(state="busy") if paths.lock.exists() else gone
            state = _read_json(paths.state)
            if state is None:
                # Removed or unreadable: what the directory holds no longer says whether a broker is meant to run.
                # A broker still running from it serves, and is looked at as usual.
                if self._find_pid(paths) is None:
                    return Liveness(
                        state="missing", message=f"its state file {paths.state} is gone and no broker runs from it"
                    )
            elif not state.get("running"):
                return Liveness(state="idle")
            recorded = _recorded_pid(paths)
            pid = recorded if recorded is not None and self._is_broker_process(recorded, paths) else None
            if pid is None:
                message = self._exit_message(recorded, paths) if recorded is not None else "mosquitto has no pid file"
                pid = self._find_pid(paths)  # a stale pid file is not a crash if our broker runs under another pid
                if pid is None:
                    return Liveness(state="dead", pid=recorded, message=message, last_seen_alive=_mtime(paths.alive))
            unresponsive = self._unresponsive(pid, paths)
            if unresponsive:
                return Liveness(state="dead", pid=pid, message=unresponsive, last_seen_alive=_mtime(paths.alive))
            if self._unanswered_since(paths, pid) is None:
                _touch(paths.alive)  # not while it leaves a CONNECT unanswered: it may be hung since
            return Liveness(state="alive", pid=pid)

    def observe(self, spec: BrokerSpec) -> Observed:
        paths = self._paths(spec)
        return self._observe_locked(spec, paths)

    def delete(self, spec: BrokerSpec) -> Observed:
        paths = self._paths(spec)
        if not paths.dir.exists():
            # A broker whose directory is gone can still be running (a crash mid-delete): it must not outlive us.
            for orphan in self._scan_pids(paths):
                self._stop(orphan)
            return Observed(phase="absent", host=spec.region.bind_address)
        with _flock(paths.lock):
            pid = self._find_pid(paths)
            if pid is not None:
                self._stop(pid)
            for stray in self._scan_pids(paths):
                self._stop(stray)
            # Under the ports lock, so an allocator never sees the ports both taken and free.
            with _flock(self.root / ".ports.lock"):
                shutil.rmtree(paths.dir, ignore_errors=True)
        return Observed(phase="absent", host=spec.region.bind_address)

    def adopt_all(self) -> dict[str, int]:
        """Deployment name -> pid of every broker already serving under `root` (started by any earlier instance)."""
        found: dict[str, int] = {}
        if not self.root.exists():
            return found
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or not _NAME_RE.match(entry.name):
                continue
            paths = _Paths(entry)
            pid = self._find_pid(paths)
            if pid is not None:
                found[entry.name] = pid
        return found

    def allocated_ports(self) -> dict[str, dict[str, int]]:
        """Deployment name -> its ports, as recorded under `root`: the port registry."""
        registry: dict[str, dict[str, int]] = {}
        if not self.root.exists():
            return registry
        for entry in self.root.iterdir():
            ports = _read_json(entry / "ports.json") if entry.is_dir() else None
            if ports:
                registry[entry.name] = {k: int(v) for k, v in ports.items()}
        return registry

    # -- observation -----------------------------------------------------------------------------------------------

    def _observe_locked(self, spec: BrokerSpec, paths: _Paths) -> Observed:
        host = spec.region.bind_address
        if not paths.dir.exists():
            return Observed(phase="absent", host=host)
        ports = {k: int(v) for k, v in (_read_json(paths.ports) or {}).items()}
        listening = set(_conf_listener_ports(paths.conf))
        if listening:
            # What the configuration on disk serves: a port kept for a listener now off is not an endpoint.
            ports = {protocol: port for protocol, port in ports.items() if port in listening}
        state = _read_json(paths.state) or {}
        pid = self._find_pid(paths)
        _, acl_note = render_acl(spec) if self._acl_renderable(spec) else ("", "invalid ACL")
        details = {
            "log_path": str(paths.log),
            "log_timestamp": "unix epoch seconds",
            "config_path": str(paths.conf),
            "data_dir": str(paths.data),
            "pid": str(pid) if pid is not None else "",
            "rate_limits": "not enforced: mosquitto has no rate limiting",
            "acl": acl_note,
            "max_connections_scope": "per listener",
        }
        if "ws" not in ports:
            details["websockets"] = "not supported by this mosquitto build"
        if spec.tls is not None:
            details["tls"] = "two-way: client certificates required" if spec.tls.has_client_ca else "one-way"
            details["tls_reload"] = (
                "a new server certificate is reloaded (SIGHUP, clients stay connected); a client CA change restarts "
                "the broker"
            )
            if spec.device_ca is not None:
                details["device_certificates"] = (
                    "mqtts_x509: client certificates of the device CA, CN as username; CRL changes reload (SIGHUP)"
                )
        base = _ObservedFacts(host=host, ports=ports, restart_nonce=int(state.get("restart_nonce", 0)), details=details)
        if pid is not None:
            if ports.get("mqtt") and _owns_listener(pid, ports["mqtt"]):
                return Observed(phase="running", ready_replicas=1, **base)
            return Observed(phase="starting", message="mosquitto is not listening yet", **base)
        if state.get("running"):
            return Observed(phase="failed", message=self._failure_message(paths), **base)
        return Observed(phase="stopped", **base)

    def _failure_message(self, paths: _Paths) -> str:
        for source in (paths.stderr, paths.log):
            error = _last_error(_log_lines(source, tail=_LOG_TAIL_BYTES))
            if error:
                return "mosquitto is not running: " + error
        return "mosquitto is not running"

    def _find_pid(self, paths: _Paths) -> int | None:
        """The live broker for this deployment: the pid file if it proves true, else a scan of /proc."""
        pid = _recorded_pid(paths)
        if pid is not None and self._is_our_broker(pid, paths):
            return pid
        if pid is None and not paths.state.exists():
            # Never started: the state file is written before any start, the pid file right after it.
            return None
        scanned = self._scan_pids(paths)
        return scanned[0] if scanned else None

    def _is_our_broker(self, pid: int, paths: _Paths) -> bool:
        """Whether `pid` is this deployment's mosquitto and has not exited (it may be halted: see _unresponsive).
        Reaps it if it exited."""
        if _process_state(pid) in _GONE_STATES:
            self._reap(pid)
            return False
        return self._is_broker_process(pid, paths)

    def _is_broker_process(self, pid: int, paths: _Paths) -> bool:
        """Like _is_our_broker, without reaping: a dead broker's exit status stays readable."""
        if _process_state(pid) in _GONE_STATES:
            return False
        argv = _process_cmdline(pid)
        if not argv or not os.path.basename(argv[0]).startswith("mosquitto"):
            return False
        return any(argv[i] == "-c" and argv[i + 1] == str(paths.conf) for i in range(len(argv) - 1))

    def _unresponsive(self, pid: int, paths: _Paths) -> str:
        """Why broker `pid`, a process that has not exited, serves nothing, or "" if it serves (or may yet): halted
        (state T or t), or hung (no CONNECT answered for hung_seconds, over two looks at least). A CONNECT is sent at
        most every answer_check_seconds while the broker answers, at every look while it does not."""
        state = _process_state(pid)
        if state in _HALTED_STATES:
            how = "by a tracer" if state == "t" else "by a signal (SIGSTOP or SIGTSTP)"
            return f"mosquitto (pid {pid}) was stopped {how}: it kept its port and answered nothing"
        port = (_read_json(paths.ports) or {}).get("mqtt")
        host = (_read_json(paths.state) or {}).get("host")
        if not port or not host:
            return ""  # started before its address was recorded: the next apply records it
        since = self._unanswered_since(paths, pid)
        now = time.time()
        if since is None and now - (_mtime(paths.answered) or 0.0) < self.answer_check_seconds:
            return ""
        if _answers(host, int(port), self.answer_timeout):
            _touch(paths.answered)
            paths.unanswered.unlink(missing_ok=True)
            return ""
        if since is None:
            _atomic_write(paths.unanswered, f"{pid}\n", None)
            return ""
        if now - since < self.hung_seconds:
            return ""
        return f"mosquitto (pid {pid}) has answered no CONNECT for {now - since:.0f} s: it is hung"

    def _unanswered_since(self, paths: _Paths, pid: int) -> float | None:
        """When broker `pid` was first seen leaving a CONNECT unanswered (and has answered none since), or None."""
        try:
            if int(paths.unanswered.read_text().strip()) != pid:
                return None  # another process's: this one has not been found silent yet
        except (OSError, ValueError):
            return None
        return _mtime(paths.unanswered)

    def _exit_message(self, pid: int, paths: _Paths) -> str:
        """What is known of how broker `pid` ended: its wait status while it is a zombie or our own child (kill -9
        reads "killed by SIGKILL"), and the last error it wrote to stderr. Reaps it if it is our child."""
        self._reap_child(pid)
        how = self._exits.get(pid)
        if how is None:
            status = _zombie_exit_status(pid)
            how = _describe_wait_status(status) if status is not None else "ended; its exit status is unknown"
        message = f"mosquitto (pid {pid}) {how}"
        error = _last_error(_log_lines(paths.stderr, tail=_LOG_TAIL_BYTES))
        return message + (f"; its last error: {error}" if error else "")

    def _scan_pids(self, paths: _Paths) -> list[int]:
        conf = os.fsencode(paths.conf)
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            # One read rules out nearly every process; the full check runs on the few that name our config.
            if conf in cmdline and self._is_our_broker(int(entry), paths):
                pids.append(int(entry))
        return sorted(pids)

    # -- process control -------------------------------------------------------------------------------------------

    def _start(self, paths: _Paths, run_as: _RunAs) -> int:
        # Truncated per start, so a failure message quotes this start, not an old one (the log keeps history).
        with open(paths.stderr, "wb") as err:
            proc = subprocess.Popen(
                [self.mosquitto_bin, "-c", str(paths.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=paths.dir,
                close_fds=True,
                # Its own session: the broker outlives the worker that started it, and a later one adopts it.
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        _atomic_write(paths.pid, f"{proc.pid}\n", run_as)
        self._wait_listening(proc.pid, paths)
        return proc.pid

    def _wait_listening(self, pid: int, paths: _Paths) -> None:
        """Until every listener of the configuration on disk is served (the WebSocket ones open a little after the
        TCP ones)."""
        deadline = time.monotonic() + self.start_timeout
        delay = 0.002
        ports = set(_conf_listener_ports(paths.conf))
        while True:
            waiting = sorted(ports - _owned_listeners(pid, ports))
            if not waiting:
                return
            port = waiting[0]
            if not self._is_our_broker(pid, paths):
                raise TemporaryDriverError(self._failure_message(paths))
            if time.monotonic() > deadline:
                raise TemporaryDriverError(f"mosquitto (pid {pid}) is not listening on port {port} yet")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _stop(self, pid: int) -> None:
        """SIGTERM (mosquitto writes its persistence file on it) and wait for the exit; SIGKILL only past the timeout.
        The SIGTERM is sent again every STOP_RESIGNAL seconds: mosquitto 2.0 loses one that arrives between the
        install of its signal handlers and `run = 1` (src/mosquitto.c), so a broker stopped just after it started
        would otherwise sit out the whole timeout, then lose its persistence file to the SIGKILL."""
        deadline = time.monotonic() + self.stop_timeout
        while True:
            try:
                os.kill(pid, signal.SIGTERM)
                # A halted broker (SIGSTOP) would keep the SIGTERM pending until the timeout: let it act on it.
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                self._reap(pid)
                return
            remaining = deadline - time.monotonic()
            if self._wait_gone(pid, max(0.0, min(STOP_RESIGNAL, remaining))):
                return
            if remaining <= STOP_RESIGNAL:
                break
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not self._wait_gone(pid, 5.0):
            raise TemporaryDriverError(f"mosquitto (pid {pid}) did not exit")

    def _kill(self, pid: int) -> None:
        """SIGKILL a broker that serves nothing, and wait for it to be gone (its port with it)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not self._wait_gone(pid, 5.0):
            raise TemporaryDriverError(f"mosquitto (pid {pid}) did not exit on SIGKILL")

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        proc = self._children.get(pid)
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
            self._children.pop(pid, None)
            return True
        deadline = time.monotonic() + timeout
        while _process_state(pid) not in _GONE_STATES:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        self._reap(pid)
        return True

    def _reap(self, pid: int) -> None:
        if pid in self._children:
            self._reap_child(pid)
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def _reap_child(self, pid: int) -> None:
        """Reap broker `pid` if this instance started it and it has exited, remembering how it ended."""
        proc = self._children.get(pid)
        if proc is None or proc.poll() is None:
            return
        self._children.pop(pid, None)
        code = proc.returncode
        if len(self._exits) > 1000:
            self._exits.clear()
        self._exits[pid] = _describe_wait_status((-code) & 0x7F if code < 0 else (code & 0xFF) << 8)

    # -- configuration verdicts ----------------------------------------------------------------------------------

    def _reload(
        self, pid: int, spec: BrokerSpec, ports: dict[str, int], paths: _Paths, *, certificates: bool = False
    ) -> str:
        """SIGHUP the broker and wait for its verdict on the files now on disk: "" if it took them, else the error
        lines it logged (it then runs without the file it could not parse: the caller must not leave it so).
        `certificates`: the server certificate changed, so the wss listener's TLS context is primed first."""
        host = _loopback_for(spec.region.bind_address)
        if certificates and "wss" in ports and ports["wss"] in _conf_listener_ports(paths.conf):
            # Once per broker process: the listener keeps the TLS context it learnt (the WebSocket handshake takes
            # a pass of libwebsockets' service loop, about 0.2 s). If this is wrong, the check of what is served
            # after the reload catches it.
            process = _process_identity(pid)
            if (_read_json(paths.primed) or {}).get("process") != process and _prime_websockets_tls(host, ports["wss"]):
                _atomic_write(paths.primed, json.dumps({"process": process}) + "\n", None)
        offset = _size(paths.log)
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + self.start_timeout
        reload_seen_at = None
        while not _fence(host, ports["mqtt"]):
            # No CONNACK: the listener is full (max_connections) or the broker died. A reload is logged and
            # carried out in one pass of the event loop, so a short wait after its first line is enough.
            if not self._is_our_broker(pid, paths):
                raise TemporaryDriverError(
                    f"mosquitto (pid {pid}) exited while reloading: {self._failure_message(paths)}"
                )
            if reload_seen_at is None and self._config_errors(paths, offset, since_reload=True)[0]:
                reload_seen_at = time.monotonic()
            if reload_seen_at is not None and time.monotonic() - reload_seen_at > 0.2:
                break
            if time.monotonic() > deadline:
                raise TemporaryDriverError(f"mosquitto (pid {pid}) did not confirm the reload of its configuration")
            time.sleep(0.01)
        seen, errors = self._config_errors(paths, offset, since_reload=True)
        if not seen:
            raise TemporaryDriverError(f"mosquitto (pid {pid}) did not log the reload of its configuration")
        return errors

    def _config_errors(self, paths: _Paths, offset: int, *, since_reload: bool) -> tuple[bool, str]:
        """(whether "Reloading config." was logged since `offset`, mosquitto's refusals of our files logged after
        it, or since `offset` when not `since_reload`), read from the log and, for a start, stderr. Only the broker's
        own lines count (see _LOG_LINE), and only messages that name a refusal whole (_refusal_patterns)."""
        messages = _broker_messages(_log_lines(paths.log, offset))
        if since_reload:
            marks = [i for i, message in enumerate(messages) if message == _RELOADING]
            if not marks:
                return False, ""
            messages = messages[marks[-1] + 1 :]
        else:
            messages += _broker_messages(_log_lines(paths.stderr))
        return True, "; ".join(_refusals(messages, paths))[:1000]

    def _keep_accepted(self, paths: _Paths) -> None:
        """Remember the files the broker now runs with, as hard links (the files are only ever replaced, never
        rewritten in place, so a link keeps exactly these bytes)."""
        paths.accepted.mkdir(mode=0o700, exist_ok=True)
        for source in paths.broker_files:
            if not source.exists():
                (paths.accepted / source.name).unlink(missing_ok=True)
                continue
            target = paths.accepted / source.name
            tmp = paths.accepted / f".{source.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp"
            os.link(source, tmp)
            os.replace(tmp, target)

    def _accepted_files(self, paths: _Paths) -> dict[pathlib.Path, str | None] | None:
        """File -> content of the last accepted files (None for an optional file that was absent), or None if they
        were never kept."""
        files: dict[pathlib.Path, str | None] = {}
        for source in paths.broker_files:
            try:
                files[source] = (paths.accepted / source.name).read_text()
            except FileNotFoundError:
                if source not in paths.optional_files:
                    return None
                files[source] = None
            except OSError:
                return None
        return files

    def _restore_accepted(self, paths: _Paths, run_as: _RunAs) -> bool:
        """Put the last accepted files back; False if there are none or they are what is on disk already."""
        accepted = self._accepted_files(paths)
        if accepted is None:
            return False
        changed = False
        for source, content in accepted.items():
            changed |= self._write_if_changed(source, content, run_as)
        return changed

    def _refuse(
        self,
        spec: BrokerSpec,
        paths: _Paths,
        ports: dict[str, int],
        run_as: _RunAs,
        *,
        pid: int | None,
        digest: str,
        reason: str,
        reloaded: bool,
    ) -> None:
        """The broker refused the files just written (`reason`: its own error lines) on a reload (`reloaded`) or a
        start, or failed to start with them without saying why (`reason` empty). Go back to the last accepted files
        and serve with them; then raise ConfigRejectedError if the broker's words prove a refusal, else return (the
        caller raises the start's error). Never leaves a broker running on files it refused."""
        if not self._restore_accepted(paths, run_as):
            if reason:
                live = pid if pid is not None else self._find_pid(paths)
                if live is not None:
                    self._stop(live)
                self._write_state(paths, run_as, spec, running=False, nonce=spec.restart_nonce)
                raise PermanentDriverError(
                    f"mosquitto refused its configuration ({reason}) and there is no earlier one to go back to: it "
                    "was stopped rather than left running without it"
                )
            return
        if reloaded and pid is not None:
            again = self._reload(pid, spec, ports, paths, certificates=True)
            if again:
                self._stop(pid)
                self._write_state(paths, run_as, spec, running=False, nonce=spec.restart_nonce)
                raise PermanentDriverError(
                    f"mosquitto refused the new configuration ({reason}) and then the previous one ({again}): it was "
                    "stopped rather than left running without an ACL"
                )
        else:
            live = pid if pid is not None else self._find_pid(paths)
            if live is not None:
                self._stop(live)
            self._start(paths, run_as)
        _touch(paths.alive)
        if not reason:
            return
        _atomic_write(paths.rejected, json.dumps({"digest": digest, "reason": reason}, sort_keys=True) + "\n", None)
        raise ConfigRejectedError(_rejection(reason), observed=self._observe_locked(spec, paths))

    # -- files -----------------------------------------------------------------------------------------------------

    def _paths(self, spec: BrokerSpec) -> _Paths:
        if not _NAME_RE.match(spec.name):
            raise PermanentDriverError(f"deployment name {spec.name!r} is not a safe directory name")
        return _Paths(self.root / spec.name)

    def _validate(self, spec: BrokerSpec) -> None:
        """Refuse a spec that cannot be rendered exactly, before anything is written. The renderers check every
        field again as they write it (the allow-list), so nothing skips past a change here."""
        _conf_int(spec.max_connections, "max_connections", 1, 10_000_000)
        _conf_int(spec.message_size_limit, "message_size_limit", 0, MAX_MESSAGE_SIZE)
        _conf_address(spec.region.bind_address)
        for user in spec.users:
            _file_username(user.username)
            if user.certificate_only:
                # Only a confined device signs in by certificate (without the device listener, nobody can: it
                # then only has its lines in the ACL file).
                if user.confined_to is None or user.is_superuser:
                    raise PermanentDriverError(
                        f"MQTT user {user.username!r}: a certificate-only user must be a confined device"
                    )
                continue
            try:
                mosquitto_password_line(user)
            except ValueError as exc:
                raise PermanentDriverError(f"MQTT user {user.username!r}: {exc}") from None
        for user in spec.users:
            if user.confined_to is None:
                continue
            if user.is_superuser:
                raise PermanentDriverError(f"MQTT user {user.username!r} cannot be both confined and a superuser")
            for topic in user.confined_to:
                try:
                    validate_topic_filter(topic)
                except ValueError as exc:
                    raise PermanentDriverError(f"MQTT user {user.username!r} confined to {topic!r}: {exc}") from None
        if len({u.username for u in spec.users}) != len(spec.users):
            raise PermanentDriverError("MQTT usernames must be unique")
        for entry in spec.acl:
            if entry.client_id is not None:
                raise PermanentDriverError(
                    "ACL rules scoped to a client id are not supported by the local driver (mosquitto's ACL file "
                    "cannot select clients by id)"
                )
            _file_topic(entry.topic)
            if entry.username is not None:
                _file_username(entry.username)
            if entry.permission not in ("allow", "deny") or entry.action not in ("publish", "subscribe", "all"):
                raise PermanentDriverError(f"ACL rule on {entry.topic!r}: unknown permission or action")
        self._validate_tls(spec)

    def _validate_tls(self, spec: BrokerSpec) -> None:
        tls = spec.tls
        if tls is None:
            return
        _file_pem(tls.certificate_pem, "the server certificate", _PEM_CERTIFICATES)
        _file_pem(tls.private_key_pem, "the server key", _PEM_PRIVATE_KEY)
        _conf_bool(tls.has_client_ca, "has_client_ca")
        _conf_bool(tls.verify_peer, "verify_peer")
        _conf_bool(tls.require_client_certificate, "require_client_certificate")
        _conf_bool(tls.use_identity_as_username, "use_identity_as_username")
        if spec.device_ca is not None:
            _file_pem(spec.device_ca.ca_pem, "the device CA", _PEM_CERTIFICATES)
            _file_pem(spec.device_ca.crl_pem, "the device CRL", _PEM_CRL)
        if tls.has_client_ca:
            _file_pem(tls.client_ca_pem, "the client CA", _PEM_CERTIFICATES)
            if not tls.require_client_certificate:
                raise PermanentDriverError(
                    "mosquitto cannot verify an optional client certificate: with a client CA it requires one"
                )
        elif tls.client_ca_pem or tls.use_identity_as_username:
            raise PermanentDriverError("a client CA or use_identity_as_username without has_client_ca")

    def _acl_renderable(self, spec: BrokerSpec) -> bool:
        try:
            self._validate(spec)
        except PermanentDriverError:
            return False
        return True

    def _run_as(self) -> _RunAs:
        if os.geteuid() != 0:
            return _RunAs(config_user=None, uid=None, gid=None)  # `user` is ignored unless started as root
        try:
            entry = pwd.getpwnam("mosquitto")
        except KeyError:
            # Without a `mosquitto` user, a root-started 2.0 falls back to `nobody`, which could not write our files.
            return _RunAs(config_user="root", uid=None, gid=None)
        return _RunAs(config_user="mosquitto", uid=entry.pw_uid, gid=entry.pw_gid)

    def _prepare_directory(self, paths: _Paths, run_as: _RunAs) -> None:
        paths.data.mkdir(parents=True, exist_ok=True)
        # Every write here happens under the deployment lock we hold, so a temporary file is a dead writer's leftover.
        for leftover in [*paths.dir.glob(".*.tmp"), *paths.accepted.glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)
        for target in (paths.log, paths.stderr):
            if not target.exists():
                target.touch(mode=0o640)
        if run_as.uid is not None and run_as.gid is not None:  # both or neither (_run_as)
            self._check_reachable(paths.dir, run_as)
            for target in (paths.dir, paths.data, paths.log):
                os.chown(target, run_as.uid, run_as.gid)
            paths.dir.chmod(0o750)
            for child in paths.data.iterdir():
                os.chown(child, run_as.uid, run_as.gid)

    def _check_reachable(self, directory: pathlib.Path, run_as: _RunAs) -> None:
        """The broker runs as `mosquitto`: every ancestor of its directory must let that user through."""
        for ancestor in directory.parents:
            st = ancestor.stat()
            if st.st_uid == run_as.uid:
                ok = st.st_mode & 0o100
            elif st.st_gid == run_as.gid:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok:
                raise PermanentDriverError(
                    f"{ancestor} is not traversable by the mosquitto user; the broker could not read its files"
                )

    def _write_if_changed(self, path: pathlib.Path, content: str | None, run_as: _RunAs) -> bool:
        """Write `content` unless the file holds it already; None means the file must not exist."""
        if content is None:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True
        try:
            if path.read_text() == content:
                return False
        except OSError:
            pass
        _atomic_write(path, content, run_as)
        return True

    def _write_state(self, paths: _Paths, run_as: _RunAs, spec: BrokerSpec, *, running: bool, nonce: int) -> None:
        # `host`: where the broker answers a CONNECT, for the probes that have only the deployment's name.
        state = {"running": running, "restart_nonce": nonce, "host": _loopback_for(spec.region.bind_address)}
        self._write_if_changed(paths.state, json.dumps(state, sort_keys=True) + "\n", run_as)

    def _served_protocols(self, spec: BrokerSpec) -> list[str]:
        """The listeners a broker of `spec` has: MQTT and WebSocket, each also over TLS when the spec has TLS."""
        websockets = self._websockets_supported()
        served = ["mqtt"] + (["ws"] if websockets else [])
        if spec.tls is not None:
            served += ["mqtts"] + (["wss"] if websockets else [])
            if spec.device_ca is not None:
                served.append("mqtts_x509")
        return served

    def _ensure_ports(self, spec: BrokerSpec, paths: _Paths) -> dict[str, int]:
        """Ports for every listener `spec` has, allocated once and kept (a listener turned off keeps its port)."""
        wanted = self._served_protocols(spec)
        with _flock(self.root / ".ports.lock"):
            current = {k: int(v) for k, v in (_read_json(paths.ports) or {}).items()}
            missing = [proto for proto in wanted if proto not in current]
            if not missing:
                return current
            taken = {port for ports in self.allocated_ports().values() for port in ports.values()}
            taken |= set(current.values())
            low, high = self.port_range
            previous = dict(spec.previous_ports)
            # From a random point of the range: allocators with other roots on this machine rarely race for the same
            # port (and no list of the whole range is built and shuffled per allocation). A port the deployment had
            # before its directory was lost comes first: its clients still connect there.
            start = random.randrange(low, high)
            for proto in missing:
                before = [previous[proto]] if low <= previous.get(proto, -1) < high else []
                for port in itertools.chain(before, range(start, high), range(low, start)):
                    if port not in taken and _port_bindable(spec.region.bind_address, port):
                        current[proto] = port
                        taken.add(port)
                        break
                else:
                    raise TemporaryDriverError(f"no free port in {low}-{high - 1} on {spec.region.bind_address}")
            _atomic_write(paths.ports, json.dumps(current, sort_keys=True) + "\n", None)
            return current

    def _websockets_supported(self) -> bool:
        """Whether this mosquitto build serves WebSockets (some are built without libwebsockets); probed once."""
        if self._websockets is not None:
            return self._websockets
        if self.mosquitto_bin not in _WEBSOCKETS_SUPPORT:
            _WEBSOCKETS_SUPPORT[self.mosquitto_bin] = _probe_websockets(self.mosquitto_bin)
        return _WEBSOCKETS_SUPPORT[self.mosquitto_bin]

    def _render_conf(self, spec: BrokerSpec, paths: _Paths, ports: dict[str, int], run_as: _RunAs) -> str:
        """mosquitto.conf, every value through its field's allow-list (paths, numbers, one IP address, one user)."""
        address = _conf_address(spec.region.bind_address)
        max_connections = _conf_int(spec.max_connections, "max_connections", 1, 10_000_000)
        lines = [
            "# Written by the control plane's local driver; any edit is overwritten.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {_conf_path(paths.passwd, 'password_file')}",
            f"acl_file {_conf_path(paths.acl, 'acl_file')}",
            "persistence true",
            f"persistence_location {_conf_path(paths.data, 'persistence_location')}/",
            f"autosave_interval {_conf_int(self.autosave_interval, 'autosave_interval', 1, 86400)}",
            f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"message_size_limit {_conf_int(spec.message_size_limit, 'message_size_limit', 0, MAX_MESSAGE_SIZE)}",
            f"sys_interval {_conf_int(self.sys_interval, 'sys_interval', 1, 86400)}",
            f"log_dest file {_conf_path(paths.log, 'log_dest')}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "set_tcp_nodelay true",
        ]
        if run_as.config_user:
            lines.append(f"user {_conf_user(run_as.config_user)}")
        # max_connections is a per-listener setting in mosquitto 2.0.
        lines += [
            "",
            f"listener {_conf_int(ports['mqtt'], 'mqtt port', 1, 65535)} {address}",
            "protocol mqtt",
            f"max_connections {max_connections}",
        ]
        served = self._served_protocols(spec)
        if "ws" in served:
            lines += [
                "",
                f"listener {_conf_int(ports['ws'], 'ws port', 1, 65535)} {address}",
                "protocol websockets",
                f"max_connections {max_connections}",
            ]
            if ":" not in address:
                # libwebsockets opens an IPv6 socket unless told otherwise, and fails where IPv6 is off.
                lines.append("socket_domain ipv4")
        for protocol, kind in (("mqtts", "mqtt"), ("wss", "websockets")):
            if protocol not in served:
                continue
            lines += [
                "",
                f"listener {_conf_int(ports[protocol], f'{protocol} port', 1, 65535)} {address}",
                f"protocol {kind}",
                f"max_connections {max_connections}",
                *self._tls_lines(spec, paths),
            ]
            if kind == "websockets" and ":" not in address:
                lines.append("socket_domain ipv4")
        if "mqtts_x509" in served:
            # Devices authenticating with a client certificate alone: mosquitto 2.0 cannot make client certificates
            # optional on one listener, so they have their own. The certificate's CN is the MQTT username (the
            # password check is skipped, src/handle_connect.c); the ACL file confines that username as any device.
            lines += [
                "",
                f"listener {_conf_int(ports['mqtts_x509'], 'mqtts_x509 port', 1, 65535)} {address}",
                "protocol mqtt",
                f"max_connections {max_connections}",
                f"certfile {_conf_path(paths.server_certificate, 'certfile')}",
                f"keyfile {_conf_path(paths.server_key, 'keyfile')}",
                f"cafile {_conf_path(paths.device_ca, 'cafile')}",
                f"crlfile {_conf_path(paths.device_crl, 'crlfile')}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        return "\n".join(lines) + "\n"

    def _tls_lines(self, spec: BrokerSpec, paths: _Paths) -> list[str]:
        """A TLS listener's settings: the server certificate (with its chain) and key, and for two-way TLS the
        client CA, with client certificates required and, if asked, their common name as the username."""
        tls = spec.tls
        assert tls is not None
        lines = [
            f"certfile {_conf_path(paths.server_certificate, 'certfile')}",
            f"keyfile {_conf_path(paths.server_key, 'keyfile')}",
        ]
        if tls.has_client_ca:
            lines += [
                f"cafile {_conf_path(paths.client_ca, 'cafile')}",
                f"require_certificate {_conf_bool(tls.require_client_certificate, 'require_certificate')}",
                f"use_identity_as_username {_conf_bool(tls.use_identity_as_username, 'use_identity_as_username')}",
            ]
        return lines

    def _render_tls(self, spec: BrokerSpec, paths: _Paths) -> dict[pathlib.Path, str | None]:
        """The certificate, key and client CA files, each through its PEM allow-list; None: the file must go."""
        tls = spec.tls
        if tls is None:
            return {
                paths.server_certificate: None,
                paths.server_key: None,
                paths.client_ca: None,
                paths.device_ca: None,
                paths.device_crl: None,
            }
        device_ca = spec.device_ca
        return {
            paths.server_certificate: _file_pem(tls.certificate_pem, "the server certificate", _PEM_CERTIFICATES),
            paths.server_key: _file_pem(tls.private_key_pem, "the server key", _PEM_PRIVATE_KEY),
            paths.client_ca: (
                _file_pem(tls.client_ca_pem, "the client CA", _PEM_CERTIFICATES) if tls.has_client_ca else None
            ),
            paths.device_ca: (
                _file_pem(device_ca.ca_pem, "the device CA", _PEM_CERTIFICATES) if device_ca is not None else None
            ),
            paths.device_crl: (
                _file_pem(device_ca.crl_pem, "the device CRL", _PEM_CRL) if device_ca is not None else None
            ),
        }

    def _serves_certificate(self, spec: BrokerSpec, ports: dict[str, int], paths: _Paths) -> bool:
        """Whether every TLS listener presents the certificate now in the certfile (checked after a reload)."""
        wanted = _pem_sha256(paths.server_certificate)
        host = _loopback_for(spec.region.bind_address)
        listening = _conf_listener_ports(paths.conf)
        for protocol in ("mqtts", "wss", "mqtts_x509"):
            port = ports.get(protocol)
            if port in listening and served_certificate_sha256(host, port) != wanted:
                return False
        return True

    def _render_passwd(self, spec: BrokerSpec) -> str:
        """One `username:$7$iterations$salt$hash` line per user: the username through its allow-list (no `:`, no
        whitespace or control character, no leading `#`), the rest base64 and a number."""
        lines = []
        for user in sorted(spec.users, key=lambda u: u.username):
            if user.certificate_only:
                continue  # no password: it signs in with a client certificate on mqtts_x509 only
            _file_username(user.username)
            _conf_int(user.iterations, f"iterations of {user.username!r}", 1, 10_000_000)
            _file_b64(user.salt_b64, f"salt of {user.username!r}")
            _file_b64(user.hash_b64, f"hash of {user.username!r}")
            lines.append(mosquitto_password_line(user) + "\n")
        return "".join(lines)


def _atomic_write(path: pathlib.Path, content: str, run_as: _RunAs | None) -> None:
    """Write then rename: a reader (or a broker reloading on SIGHUP) sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if run_as is not None and run_as.uid is not None and run_as.gid is not None:  # both or neither (_run_as)
            os.chown(tmp, run_as.uid, run_as.gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _probe_websockets(mosquitto_bin: str) -> bool:
    """Start the broker once with the shape of config we render (a TCP listener and a WebSocket one: 2.0.11 refuses
    a config whose only listener is WebSocket) and see whether the WebSocket port is served."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ports = []
        for _ in range(2):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                ports.append(sock.getsockname()[1])
        conf = pathlib.Path(tmp) / "probe.conf"
        conf.write_text(
            f"allow_anonymous true\nlog_dest stderr\nlistener {ports[0]} 127.0.0.1\n"
            f"listener {ports[1]} 127.0.0.1\nprotocol websockets\nsocket_domain ipv4\n"
        )
        os.chmod(tmp, 0o755)
        conf.chmod(0o644)
        proc = subprocess.Popen(
            [mosquitto_bin, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False
                if _owns_listener(proc.pid, ports[1]):
                    return True
                time.sleep(0.01)
            return False
        finally:
            # SIGKILL, not SIGTERM: the probe has nothing to save, and mosquitto 2.0 loses a SIGTERM that arrives
            # between installing its handlers and entering its loop (src/mosquitto.c sets `run = 1` after
            # signal__setup()), which is right when its listeners have just opened: a wait would never end.
            if proc.poll() is None:
                proc.kill()
            proc.wait()


# -- ACL rendering ---------------------------------------------------------------------------------------------------

_ACCESS = {"write": "publish", "read": "subscribe"}


def render_acl(spec: BrokerSpec) -> tuple[str, str]:
    """(mosquitto ACL file, a note saying whether it is exact) for the spec's ordered first-match rules.

    mosquitto's ACL model differs from ours: per user, `topic deny` lines win over any `topic read/write` line whatever
    their order, a deny covers both directions, a subscription is always granted and `read` is checked on delivery,
    and no match means denied. Rules that translate exactly do; the rest are rendered on the strict side (denying
    more, never allowing more) and the note says so.
    """
    lines = ["# Written by the control plane's local driver; any edit is overwritten."]
    inexact: set[str] = set()
    for user in sorted(spec.users, key=lambda u: u.username):
        lines.append(f"user {_file_username(user.username)}")
        if user.confined_to is not None:
            # Its own lines only: the rules for everyone (an "allow all #" included) are never rendered for it.
            lines += [f"topic readwrite {topic}" for topic in user.confined_to]
            continue
        if user.is_superuser or not spec.acl:
            lines += ["topic readwrite #", "topic read $SYS/#"] if user.is_superuser else ["topic readwrite #"]
            continue
        rules = [r for r in spec.acl if r.username in (None, user.username)]
        denies: list[str] = []
        allows: dict[str, set[str]] = {}
        for access, action in _ACCESS.items():
            ordered = [r for r in rules if r.action in (action, "all")]
            default = ACL_NO_MATCH
            for index, rule in enumerate(ordered):
                if rule.topic == "#":
                    default = rule.permission
                    ordered = ordered[:index]
                    break
            for index, rule in enumerate(ordered):
                earlier_allows = [r.topic for r in ordered[:index] if r.permission == "allow"]
                later_allows = [r.topic for r in ordered[index + 1 :] if r.permission == "allow"]
                if rule.permission == "deny":
                    needed = default == "allow" or any(topic_filters_overlap(rule.topic, t) for t in later_allows)
                    if not needed:
                        continue
                    if rule.topic not in denies:
                        denies.append(rule.topic)
                    if any(topic_filters_overlap(rule.topic, t) for t in earlier_allows):
                        inexact.add(f"deny on {rule.topic!r} overrides an earlier allow")
                    if rule.action != "all":
                        inexact.add(f"deny {rule.action} on {rule.topic!r} also denies the other direction")
                elif default == "deny":
                    allows.setdefault(rule.topic, set()).add(access)
            if default == "allow":
                allows.setdefault("#", set()).add(access)
        # The access word is always written, so the filter is the rest of the line (mosquitto would otherwise take
        # a first word of the filter for the access).
        lines += [f"topic deny {_file_topic(topic)}" for topic in denies]
        for topic, accesses in allows.items():
            mode = "readwrite" if len(accesses) == 2 else next(iter(accesses))
            lines.append(f"topic {mode} {_file_topic(topic)}")
    note = "exact" if not inexact else "approximated on the strict side: " + "; ".join(sorted(inexact))
    return "\n".join(lines) + "\n", note
