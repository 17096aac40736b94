"""The local driver: one real mosquitto process per deployment on this machine, under `root/<deployment name>/`.

Owns the deployment's directory (config, password and ACL files, persistence, log, pid, ports) and its process. It
never trusts a pid it cannot prove is its own broker, never starts a second broker for a deployment, and never reads
or writes the database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from deployments.drivers.base import (
    ACL_NO_MATCH,
    BrokerSpec,
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

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
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


@dataclasses.dataclass(frozen=True)
class _RunAs:
    """Who the broker runs as: a root-started mosquitto drops to `user`, which must own what it writes."""

    config_user: str | None
    uid: int | None
    gid: int | None


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
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


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


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
    ) -> None:
        self.root = pathlib.Path(root).resolve()
        self.mosquitto_bin = shutil.which(mosquitto_bin) or mosquitto_bin
        self.sys_interval = sys_interval
        self.autosave_interval = autosave_interval
        self.port_range = port_range
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._websockets = websockets
        # Popen objects for brokers this instance started, so it can reap them (no zombies while the worker lives).
        self._children: dict[int, subprocess.Popen] = {}

    # -- public interface -------------------------------------------------------------------------------------------

    def apply(self, spec: BrokerSpec) -> Observed:
        paths = self._paths(spec)
        self._validate(spec)
        with _flock(paths.lock):
            run_as = self._run_as()
            self._prepare_directory(paths, run_as)
            ports = self._ensure_ports(spec, paths)
            conf_changed = self._write_if_changed(paths.conf, self._render_conf(spec, paths, ports, run_as), run_as)
            auth_changed = self._write_if_changed(paths.passwd, self._render_passwd(spec), run_as)
            auth_changed |= self._write_if_changed(paths.acl, render_acl(spec)[0], run_as)
            state = _read_json(paths.state) or {}
            recorded_nonce = int(state.get("restart_nonce", 0))
            pid = self._find_pid(paths)

            if not spec.running:
                if pid is not None:
                    self._stop(pid)
                self._write_state(paths, run_as, running=False, nonce=max(recorded_nonce, spec.restart_nonce))
                return self._observe_locked(spec, paths)

            if pid is not None and (conf_changed or spec.restart_nonce > recorded_nonce):
                self._stop(pid)
                pid = None
            elif pid is not None and auth_changed:
                # A broker still starting may not handle SIGHUP yet (its default action kills): wait until it serves.
                self._wait_listening(pid, ports, paths)
                # mosquitto re-reads its password and ACL files on SIGHUP without dropping connected clients.
                os.kill(pid, signal.SIGHUP)
            # Recorded before starting: a crash between here and a successful start leaves running=True with no
            # process, which observe() reports as failed and the next apply() repairs.
            self._write_state(paths, run_as, running=True, nonce=max(recorded_nonce, spec.restart_nonce))
            if pid is None:
                pid = self._start(paths, ports, run_as)
            else:
                self._wait_listening(pid, ports, paths)
            return self._observe_locked(spec, paths)

    def observe(self, spec: BrokerSpec) -> Observed:
        paths = self._paths(spec)
        return self._observe_locked(spec, paths)

    def delete(self, spec: BrokerSpec) -> Observed:
        paths = self._paths(spec)
        if not paths.dir.exists():
            # A broker whose directory is gone can still be running (a crash mid-delete): it must not outlive us.
            for pid in self._scan_pids(paths):
                self._stop(pid)
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
        found = {}
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
        registry = {}
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
        base = dict(host=host, ports=ports, restart_nonce=int(state.get("restart_nonce", 0)), details=details)
        if pid is not None:
            if ports.get("mqtt") and _owns_listener(pid, ports["mqtt"]):
                return Observed(phase="running", ready_replicas=1, **base)
            return Observed(phase="starting", message="mosquitto is not listening yet", **base)
        if state.get("running"):
            return Observed(phase="failed", message=self._failure_message(paths), **base)
        return Observed(phase="stopped", **base)

    def _failure_message(self, paths: _Paths) -> str:
        for source in (paths.stderr, paths.log):
            try:
                lines = [ln for ln in source.read_text(errors="replace").splitlines() if "rror" in ln]
            except OSError:
                continue
            if lines:
                return "mosquitto is not running: " + lines[-1][-300:]
        return "mosquitto is not running"

    def _find_pid(self, paths: _Paths) -> int | None:
        """The live broker for this deployment: the pid file if it proves true, else a scan of /proc."""
        try:
            pid = int(paths.pid.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and self._is_our_broker(pid, paths):
            return pid
        scanned = self._scan_pids(paths)
        return scanned[0] if scanned else None

    def _is_our_broker(self, pid: int, paths: _Paths) -> bool:
        if _process_state(pid) in (None, "Z", "X"):
            self._reap(pid)
            return False
        argv = _process_cmdline(pid)
        if not argv or not os.path.basename(argv[0]).startswith("mosquitto"):
            return False
        return any(argv[i] == "-c" and argv[i + 1] == str(paths.conf) for i in range(len(argv) - 1))

    def _scan_pids(self, paths: _Paths) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and self._is_our_broker(int(entry), paths):
                pids.append(int(entry))
        return sorted(pids)

    # -- process control -------------------------------------------------------------------------------------------

    def _start(self, paths: _Paths, ports: dict[str, int], run_as: _RunAs) -> int:
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
        self._wait_listening(proc.pid, ports, paths)
        return proc.pid

    def _wait_listening(self, pid: int, ports: dict[str, int], paths: _Paths) -> None:
        """Until every listener is served (the WebSocket one opens a little after the TCP one)."""
        deadline = time.monotonic() + self.start_timeout
        delay = 0.002
        while True:
            waiting = [port for port in ports.values() if not _owns_listener(pid, port)]
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
        """SIGTERM (mosquitto writes its persistence file on it) and wait for the exit; SIGKILL only past the timeout."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self._reap(pid)
            return
        if not self._wait_gone(pid, self.stop_timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 5.0):
                raise TemporaryDriverError(f"mosquitto (pid {pid}) did not exit")

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
        while _process_state(pid) not in (None, "Z", "X"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        self._reap(pid)
        return True

    def _reap(self, pid: int) -> None:
        proc = self._children.pop(pid, None)
        if proc is not None:
            proc.poll()
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    # -- files -----------------------------------------------------------------------------------------------------

    def _paths(self, spec: BrokerSpec) -> _Paths:
        if not _NAME_RE.match(spec.name):
            raise PermanentDriverError(f"deployment name {spec.name!r} is not a safe directory name")
        return _Paths(self.root / spec.name)

    def _validate(self, spec: BrokerSpec) -> None:
        if spec.max_connections < 1:
            raise PermanentDriverError("max_connections must be at least 1")
        if spec.message_size_limit < 0:
            raise PermanentDriverError("message_size_limit must not be negative")
        for user in spec.users:
            try:
                validate_mqtt_username(user.username)
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
            try:
                validate_topic_filter(entry.topic)
            except ValueError as exc:
                raise PermanentDriverError(f"ACL rule on {entry.topic!r}: {exc}") from None

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
        for leftover in paths.dir.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        for target in (paths.log, paths.stderr):
            if not target.exists():
                target.touch(mode=0o640)
        if run_as.uid is not None:
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

    def _write_if_changed(self, path: pathlib.Path, content: str, run_as: _RunAs) -> bool:
        try:
            if path.read_text() == content:
                return False
        except OSError:
            pass
        _atomic_write(path, content, run_as)
        return True

    def _write_state(self, paths: _Paths, run_as: _RunAs, *, running: bool, nonce: int) -> None:
        self._write_if_changed(
            paths.state, json.dumps({"running": running, "restart_nonce": nonce}, sort_keys=True) + "\n", run_as
        )

    def _ensure_ports(self, spec: BrokerSpec, paths: _Paths) -> dict[str, int]:
        wanted = ["mqtt"] + (["ws"] if self._websockets_supported() else [])
        with _flock(self.root / ".ports.lock"):
            current = {k: int(v) for k, v in (_read_json(paths.ports) or {}).items()}
            missing = [proto for proto in wanted if proto not in current]
            if not missing:
                return current
            taken = {port for ports in self.allocated_ports().values() for port in ports.values()}
            taken |= set(current.values())
            low, high = self.port_range
            candidates = list(range(low, high))
            # Random order: allocators with other roots on this machine rarely race for the same port.
            random.shuffle(candidates)
            for proto in missing:
                for port in candidates:
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
        lines = [
            "# Written by the control plane's local driver; any edit is overwritten.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {paths.passwd}",
            f"acl_file {paths.acl}",
            "persistence true",
            f"persistence_location {paths.data}/",
            f"autosave_interval {self.autosave_interval}",
            f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"message_size_limit {spec.message_size_limit}",
            f"sys_interval {self.sys_interval}",
            f"log_dest file {paths.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "set_tcp_nodelay true",
        ]
        if run_as.config_user:
            lines.append(f"user {run_as.config_user}")
        # max_connections is a per-listener setting in mosquitto 2.0.
        lines += [
            "",
            f"listener {ports['mqtt']} {spec.region.bind_address}",
            "protocol mqtt",
            f"max_connections {spec.max_connections}",
        ]
        if "ws" in ports and self._websockets_supported():
            lines += [
                "",
                f"listener {ports['ws']} {spec.region.bind_address}",
                "protocol websockets",
                f"max_connections {spec.max_connections}",
            ]
            if ":" not in spec.region.bind_address:
                # libwebsockets opens an IPv6 socket unless told otherwise, and fails where IPv6 is off.
                lines.append("socket_domain ipv4")
        return "\n".join(lines) + "\n"

    def _render_passwd(self, spec: BrokerSpec) -> str:
        return "".join(mosquitto_password_line(user) + "\n" for user in sorted(spec.users, key=lambda u: u.username))


def _atomic_write(path: pathlib.Path, content: str, run_as: _RunAs | None) -> None:
    """Write then rename: a reader (or a broker reloading on SIGHUP) sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if run_as is not None and run_as.uid is not None:
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
            if proc.poll() is None:
                proc.terminate()
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
        lines.append(f"user {user.username}")
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
        lines += [f"topic deny {topic}" for topic in denies]
        for topic, accesses in allows.items():
            mode = "readwrite" if len(accesses) == 2 else next(iter(accesses))
            lines.append(f"topic {mode} {topic}")
    note = "exact" if not inexact else "approximated on the strict side: " + "; ".join(sorted(inexact))
    return "\n".join(lines) + "\n", note
