"""Codec worker processes: a deployment's codec rules applied by several processes, so decoding scales with cores.

The agent serving a deployment (it holds the lease) runs IOT_CODEC_WORKERS of them while the deployment has enabled
rules; each has its own persistent MQTT session (`$controlplane-agent-codec-{slot}`) and takes the rules' filters
through one MQTT 5 shared subscription, `$share/{share_group()}/{filter}`, so the broker hands every message to one
of them. A worker serves only while its agent does: it exits when the pipe from its agent reaches EOF (the agent
stopped serving, or died: the kernel closes the pipe on any death, SIGKILL included), when the lease is no longer
held with its agent's token (an agent frozen past its lease), or when another process takes its session over. It
never decides which agent serves a deployment, and never writes anything but the rules' counters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

logger = logging.getLogger("iot.agent")

SESSION_EXPIRY = 7 * 24 * 3600  # as the agent's own session: a worker restarted, or the next holder's, resumes it
RECEIVE_MAXIMUM = 400
IDLE_TICK = 0.05
LEASE_CHECK_EVERY = 1.0
RESTART_DELAY = 1.0  # a worker that exits is started again after at least this long
STOP_TIMEOUT = 5.0
EXIT_SOON = 5.0  # after its agent is gone, a worker that has not exited by then is ended at once
SESSION_TAKEN_OVER = 142  # MQTT 5 reason code 0x8E
EXIT_LEASE_LOST = 3  # a worker's exit code when the lease is no longer held with its agent's token
MAX_WORKERS = 16  # slots whose sessions an agent forgets when it runs fewer (see forget_sessions)
_WAKE = object()


def share_group(password: str) -> str:
    """The workers' share group: `controlplane-codecs-` and 16 hex digits derived from the agent's own password.
    mosquitto grants any subscription and checks `read` only on delivery, and skips a member whose ACL refuses the
    message instead of passing it on: a client that joined a guessable group (a device, with its own credentials)
    would take turns of the rules' messages and keep them from every worker."""
    digest = hmac.new(password.encode("utf-8"), b"codec-share-group", hashlib.sha256).hexdigest()
    return f"controlplane-codecs-{digest[:16]}"


def client_id(slot: int) -> str:
    from iot.models import AGENT_CLIENT_ID

    return f"{AGENT_CLIENT_ID}-codec-{slot}"


# -- in the agent ------------------------------------------------------------------------------------------------------


class CodecWorkerPool:
    """The worker processes of one deployment, run from its DeploymentServer's worker thread (every method is called
    there): started while the deployment has enabled rules, restarted when one exits, woken when rules change, and
    stopped (EOF on their pipes) when the server stops."""

    def __init__(self, target, *, holder: str, token: int, count: int) -> None:
        self.target, self.holder, self.token, self.count = target, holder, token, min(count, MAX_WORKERS)
        self.procs: dict[int, subprocess.Popen] = {}
        self._started_at: dict[int, float] = {}

    def tick(self, woken: bool, filters: set[str]) -> None:
        """`filters`: those of the enabled rules, as the agent's own engine last loaded them. What the workers apply
        they load themselves; the agent only needs to know whether any rule is on."""
        now = time.monotonic()
        if woken:
            for proc in self.procs.values():
                _send(proc, b"w\n")
        if filters:
            if not self._started_at:
                forget_sessions(self.target, range(self.count, MAX_WORKERS))
            self._supervise(now)
        elif self.procs:
            self.stop()

    def _supervise(self, now: float) -> None:
        for slot in range(self.count):
            proc = self.procs.get(slot)
            if proc is not None:
                if proc.poll() is None:
                    continue
                if proc.returncode == EXIT_LEASE_LOST:
                    self._check_lease()
                logger.warning(
                    "codec worker %s of %s exited (code %s); starting it again",
                    slot,
                    self.target.public_id,
                    proc.returncode,
                    extra={"deployment": self.target.public_id, "slot": slot, "code": proc.returncode},
                )
                del self.procs[slot]
            if now - self._started_at.get(slot, -RESTART_DELAY) >= RESTART_DELAY:
                self._started_at[slot] = now
                self._start(slot)

    def _check_lease(self) -> None:
        """A worker left because the lease is no longer ours: it checks every LEASE_CHECK_EVERY, so it may see that
        before the agent does. The agent must not start another worker for a deployment it no longer serves."""
        from iot.agent import leases
        from iot.services import LeaseLost

        if not leases.held(deployment_id=self.target.deployment_id, holder=self.holder, token=self.token):
            raise LeaseLost(f"codec worker of {self.target.public_id} found the lease no longer held by {self.holder}")

    def _start(self, slot: int) -> None:
        from django.conf import settings

        env = dict(os.environ)
        env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__, "--deployment", self.target.public_id, "--slot", str(slot)],
            stdin=subprocess.PIPE,
            cwd=settings.BASE_DIR,
            env=env,
            close_fds=True,  # no other worker may hold this pipe open: its EOF is how the worker learns we are gone
        )
        assert proc.stdin is not None
        config = {
            "target": {
                "deployment_id": self.target.deployment_id,
                "public_id": self.target.public_id,
                "host": self.target.host,
                "port": self.target.port,
                "driver": self.target.driver,
                "log_path": self.target.log_path,
                "username": self.target.username,
                "password": self.target.password,
            },
            "holder": self.holder,
            "token": self.token,
            "slot": slot,
        }
        # The credentials go through the pipe, never the command line (other users of the host can read that).
        proc.stdin.write(json.dumps(config).encode("utf-8") + b"\n")
        proc.stdin.flush()
        os.set_blocking(proc.stdin.fileno(), False)  # a wake never blocks the agent on a stuck worker
        self.procs[slot] = proc
        logger.info(
            "codec worker %s of %s started (pid %s)",
            slot,
            self.target.public_id,
            proc.pid,
            extra={"deployment": self.target.public_id, "slot": slot, "pid": proc.pid},
        )

    def stop(self) -> None:
        """EOF to every worker: each adds its counts, disconnects cleanly (the broker keeps its session and whatever
        it has not acknowledged for the next holder) and exits; one that does not within STOP_TIMEOUT is killed."""
        procs, self.procs = list(self.procs.values()), {}
        self._started_at.clear()
        for proc in procs:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def forget_sessions(target, slots: range) -> None:
    """End the broker sessions of worker slots nobody runs now (fewer workers than before, or the rules applied in
    the agent itself), in a thread of its own. mosquitto hands a shared subscription's messages to its members in
    turn, offline ones included (mosquitto 2.0 src/subs.c subs__shared_process): an abandoned slot's session would
    take its turn of every message and hold it, and a worker resuming it later would publish stale results."""
    if not slots:
        return

    def forget() -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        for slot in slots:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(slot), protocol=mqtt.MQTTv5)
            client.username_pw_set(target.username, target.password)
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0
            try:
                # The clean start discards the old session, and the new one has no expiry: it ends with this
                # connection, however the connection ends.
                client.connect(target.host, target.port, keepalive=10, clean_start=True, properties=properties)
                client.disconnect()
            except OSError as exc:
                logger.warning(
                    "could not end the session of codec worker slot %s of %s (%s)",
                    slot,
                    target.public_id,
                    exc,
                    extra={"deployment": target.public_id, "slot": slot},
                )
                return

    threading.Thread(target=forget, name=f"iot-codec-forget-{target.public_id}", daemon=True).start()


def _send(proc: subprocess.Popen, data: bytes) -> None:
    try:
        if proc.stdin is not None:
            os.write(proc.stdin.fileno(), data)
    except (BlockingIOError, BrokenPipeError, OSError, ValueError):
        pass  # a full pipe already holds a wake; a gone worker is restarted by _supervise


# -- in a worker process -------------------------------------------------------------------------------------------------


class CodecHost:
    """A codec worker: one MQTT connection in the shared subscription whose network thread applies the rules to each
    message as it reads it, and a main thread that reloads the rules, adds the counts and checks the lease. An input
    is acknowledged once its results are queued on the same connection (at least once, as the agent)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from iot.agent.client import AgentClient
        from iot.agent.codecs import CodecEngine
        from iot.agent.server import Target

        self.target = Target(**config["target"])
        self.holder, self.token, self.slot = str(config["holder"]), int(config["token"]), int(config["slot"])
        self.inbound: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.exit_code = 0
        self._lock = threading.Lock()
        client = AgentClient(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(self.slot), protocol=mqtt.MQTTv5, manual_ack=True
        )
        client.username_pw_set(self.target.username, self.target.password)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(200)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client
        self.codecs = CodecEngine(self, share_group=share_group(self.target.password))

    def stop(self, code: int = 0) -> None:
        if not self.stopping.is_set():
            self.exit_code = code
        self.stopping.set()
        self.inbound.put(_WAKE)

    # -- paho callbacks (network thread) -----------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.warning(
                "the broker of %s refused codec worker %s: %s",
                self.target.public_id,
                self.slot,
                reason_code,
                extra={"deployment": self.target.public_id, "slot": self.slot},
            )
            return
        self.codecs.subscribe(client)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
            # Another process connected with this slot's client id: reconnecting would take it back, and the two
            # would take turns. This one stops; its agent starts it again only if it still holds the lease.
            logger.warning(
                "codec worker %s of %s: its session was taken over; stopping",
                self.slot,
                self.target.public_id,
                extra={"deployment": self.target.public_id, "slot": self.slot},
            )
            self.stop(4)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        logger.info(
            "codec worker %s of %s subscribed: %s",
            self.slot,
            self.target.public_id,
            ", ".join(str(code) for code in reason_codes),
            extra={"deployment": self.target.public_id, "slot": self.slot},
        )

    def _on_message(self, client, userdata, message) -> None:
        # Applied here, on paho's network thread, as it reads: no hand-over to another thread per message (the
        # agent's own connection hands over because it commits batches; a worker writes nothing per message). The
        # result is queued before the acknowledgement, on the same connection: an input the broker saw acknowledged
        # has its results at the broker.
        with self._lock, client.network_thread_writes():
            self.codecs.handle(message)
            if message.qos > 0:
                client.ack(message.mid, message.qos)

    # -- the worker thread -------------------------------------------------------------------------------------------

    def run(self) -> int:
        from django.db import DatabaseError, InterfaceError, OperationalError, connection
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from iot.agent import leases

        if not leases.held(deployment_id=self.target.deployment_id, holder=self.holder, token=self.token):
            logger.warning(
                "codec worker %s of %s: the lease is not held by %s; not serving",
                self.slot,
                self.target.public_id,
                self.holder,
                extra={"deployment": self.target.public_id, "slot": self.slot},
            )
            return EXIT_LEASE_LOST
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        connecting = False
        next_check = time.monotonic() + LEASE_CHECK_EVERY
        woken = True
        try:
            while not self.stopping.is_set():
                try:
                    with self._lock:  # the rules, their routes and the counts are the network thread's too
                        self.codecs.tick(woken)
                    if not connecting:
                        # Only once the rules are loaded: the resumed session hands over what it holds right
                        # after the CONNACK, and a message applied before them would be acknowledged undecoded.
                        connecting = True
                        self.client.connect_async(
                            self.target.host, self.target.port, keepalive=30, clean_start=False, properties=properties
                        )
                        self.client.loop_start()
                    now = time.monotonic()
                    if now >= next_check:
                        next_check = now + LEASE_CHECK_EVERY
                        if not leases.held(
                            deployment_id=self.target.deployment_id, holder=self.holder, token=self.token
                        ):
                            logger.warning(
                                "codec worker %s of %s: the lease is no longer held by %s; stopping",
                                self.slot,
                                self.target.public_id,
                                self.holder,
                                extra={"deployment": self.target.public_id, "slot": self.slot},
                            )
                            self.stop(EXIT_LEASE_LOST)
                            break
                except (OperationalError, InterfaceError) as exc:
                    # The database is out: decoding goes on (its counts wait), the lease is checked again later.
                    logger.warning("codec worker %s: database unavailable (%s)", self.slot, exc)
                    connection.close()
                woken = self._wait()
        except DatabaseError:
            logger.exception("codec worker %s of %s failed", self.slot, self.target.public_id)
            self.exit_code = 1
        finally:
            # A clean DISCONNECT: the broker keeps the session, and what this worker has not acknowledged in it.
            # Then the counts, once no message can be applied any more.
            self.client.disconnect()
            self.client.loop_stop()
            try:
                self.codecs.flush()
            except DatabaseError as exc:
                logger.warning("codec worker %s could not add its last counts (%s)", self.slot, exc)
            connection.close()
        return self.exit_code

    def _wait(self) -> bool:
        """Until the next tick: whether the agent woke the worker meanwhile."""
        try:
            self.inbound.get(timeout=IDLE_TICK)
        except queue.Empty:
            return False
        while True:
            try:
                self.inbound.get_nowait()
            except queue.Empty:
                return True

    def watch_agent(self, stream) -> None:
        """Read the agent's pipe: a line `w` wakes the worker (rules changed); EOF means the agent stopped serving
        or died, and the worker stops, whatever else it is doing, within EXIT_SOON."""
        for line in iter(stream.readline, b""):
            if line.strip() == b"w":
                self.inbound.put(_WAKE)
        self.stop(0)
        timer = threading.Timer(EXIT_SOON, os._exit, args=(5,))
        timer.daemon = True
        timer.start()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the agent, which stops its workers
    config = json.loads(sys.stdin.buffer.readline() or b"null")
    if not isinstance(config, dict):
        return 2  # the agent died before it said what to serve
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    logging.getLogger("iot.agent").setLevel(logging.INFO)
    host = CodecHost(config)
    signal.signal(signal.SIGTERM, lambda signum, frame: host.stop(0))
    threading.Thread(target=host.watch_agent, args=(sys.stdin.buffer,), name="agent-pipe", daemon=True).start()
    logger.info(
        "codec worker %s of %s running (pid %s)",
        host.slot,
        host.target.public_id,
        os.getpid(),
        extra={"deployment": host.target.public_id, "slot": host.slot},
    )
    return host.run()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not through the interpreter's shutdown: the daemon thread reading the agent's pipe holds stdin's lock, and
    # finalising stdin under it aborts the process ("could not acquire lock ... at interpreter shutdown").
    os._exit(code)
