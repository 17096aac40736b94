"""The platform agent process: takes leases on running Premium deployments, serves each with a DeploymentServer,
renews its leases and reports its health on every heartbeat, and wakes a server when PostgreSQL NOTIFYs it of
outbox work.

Several agents may run: a deployment is served by the one agent holding its lease, and a dead agent's leases expire
and are taken by another within a lease period and a heartbeat. Nothing here touches a shadow or a device.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.utils import timezone

from controlplane import crypto, liveness
from iot import selectors, services
from iot.agent import leases
from iot.agent.server import DeploymentServer, Target
from iot.models import AgentCredential

logger = logging.getLogger("iot.agent")


def _target(deployment, credential: AgentCredential) -> Target | None:
    ports = (deployment.endpoints or {}).get("ports") or {}
    host = (deployment.endpoints or {}).get("host") or ""
    if not host or not ports.get("mqtt"):
        return None
    try:
        password = crypto.decrypt_str(credential.password_encrypted)
    except ValueError:
        logger.error(
            "agent credential of %s cannot be decrypted",
            deployment.public_id,
            extra={"deployment": deployment.public_id},
        )
        return None
    return Target(
        deployment_id=deployment.pk,
        public_id=deployment.public_id,
        host=host,
        port=int(ports["mqtt"]),
        driver=deployment.region.driver,
        log_path=(deployment.observed_details or {}).get("log_path", ""),
        username=credential.username,
        password=password,
    )


class PlatformAgent:
    def __init__(
        self,
        *,
        agent_id: str | None = None,
        heartbeat_seconds: float | None = None,
        lease_seconds: float | None = None,
        max_deployments: int | None = None,
        codec_workers: int | None = None,
    ) -> None:
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.agent_id = agent_id or f"{self.hostname}-{self.pid}-{secrets.token_hex(3)}"
        self.heartbeat_seconds = heartbeat_seconds or settings.IOT_AGENT_HEARTBEAT_SECONDS
        self.lease_seconds = lease_seconds or settings.IOT_AGENT_LEASE_SECONDS
        self.max_deployments = max_deployments or settings.IOT_AGENT_MAX_DEPLOYMENTS
        self.codec_workers = max(1, codec_workers or settings.IOT_CODEC_WORKERS)
        self.started_at = timezone.now()
        self.stop_event = threading.Event()
        self.servers: dict[int, DeploymentServer] = {}
        self.tokens: dict[int, int] = {}
        self._listener = threading.Thread(target=self._listen, name="iot-agent-listen", daemon=True)

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> None:
        logger.info("platform agent %s starting", self.agent_id, extra={"agent": self.agent_id})
        self._listener.start()
        try:
            while not self.stop_event.is_set():
                try:
                    self.tick()
                except DatabaseError as exc:
                    logger.warning(
                        "heartbeat failed (%s); retrying", exc, extra={"agent": self.agent_id, "error": str(exc)}
                    )
                    connection.close()
                # Each pass, the database answering or not: only a loop that hangs lets the file go stale.
                liveness.touch(settings.IOT_AGENT_LIVENESS_FILE)
                self.stop_event.wait(self.heartbeat_seconds)
        finally:
            self.shutdown()

    def tick(self) -> None:
        leases.heartbeat(
            agent_id=self.agent_id,
            hostname=self.hostname,
            pid=self.pid,
            started_at=self.started_at,
            deployments=len(self.servers),
        )
        renewed = leases.renew(
            holder=self.agent_id,
            tokens=self.tokens,
            ttl=self.lease_seconds,
            lags={pk: server.lag() for pk, server in self.servers.items()},
            last_events={pk: server.last_event_at for pk, server in self.servers.items()},
        )
        for pk in list(self.tokens):
            server = self.servers.get(pk)
            if pk not in renewed or server is None or server.lost.is_set():
                self._drop(pk, release=pk in renewed)
        servable = {d.pk: d for d in selectors.servable_deployments()}
        credentials = {c.deployment_id: c for c in AgentCredential.objects.filter(deployment_id__in=list(servable))}
        for pk in list(self.tokens):
            deployment = servable.get(pk)
            current = self.servers[pk].target
            target = _target(deployment, credentials[pk]) if deployment and pk in credentials else None
            if target is None:
                self._drop(pk, release=True)
            elif (target.host, target.port, target.log_path) != (current.host, current.port, current.log_path):
                # The broker moved (new ports, a new listener): reconnect under the same lease.
                token = self.tokens[pk]
                self._stop_server(pk)
                self._start_server(target, token)
        candidates = [pk for pk in servable if pk not in self.tokens and pk in credentials]
        random.shuffle(candidates)  # agents starting together spread the work instead of racing for the same rows
        for pk in candidates:
            if len(self.tokens) >= self.max_deployments:
                break
            target = _target(servable[pk], credentials[pk])
            if target is None:
                continue
            acquired = leases.acquire(deployment_id=pk, holder=self.agent_id, ttl=self.lease_seconds)
            if acquired is None:
                continue
            logger.info(
                "lease of %s taken (token %s)",
                target.public_id,
                acquired,
                extra={"agent": self.agent_id, "deployment": target.public_id, "token": acquired},
            )
            self._start_server(target, acquired)

    def _start_server(self, target: Target, token: int) -> None:
        server = DeploymentServer(
            target,
            holder=self.agent_id,
            token=token,
            presence_cursor=leases.presence_cursor(target.deployment_id),
            codec_workers=self.codec_workers,
        )
        self.tokens[target.deployment_id] = token
        self.servers[target.deployment_id] = server
        server.start()

    def _stop_server(self, pk: int) -> None:
        server = self.servers.pop(pk, None)
        if server is not None:
            server.stop()

    def _drop(self, pk: int, *, release: bool) -> None:
        self._stop_server(pk)
        token = self.tokens.pop(pk, None)
        if release and token is not None:
            leases.release(holder=self.agent_id, tokens={pk: token})
        logger.info(
            "lease of deployment %s dropped (released: %s)",
            pk,
            release,
            extra={"agent": self.agent_id, "deployment_id": pk, "released": release},
        )

    def shutdown(self) -> None:
        """Stop every server and give the leases up, so another agent takes over at once."""
        self.stop_event.set()
        for pk in list(self.servers):
            self._stop_server(pk)
        try:
            leases.release(holder=self.agent_id, tokens=self.tokens)
            leases.heartbeat_stop(agent_id=self.agent_id)
        except DatabaseError:
            logger.warning("could not release leases on shutdown; they expire", extra={"agent": self.agent_id})
        self.tokens.clear()
        logger.info("platform agent %s stopped", self.agent_id, extra={"agent": self.agent_id})

    # -- NOTIFY --------------------------------------------------------------------------------------------------

    def _listen(self) -> None:
        """Wake the server of a deployment whose outbox got work (iot.services NOTIFYs on commit)."""
        while not self.stop_event.is_set():
            wrapper = connections.create_connection("default")
            try:
                wrapper.ensure_connection()
                raw = wrapper.connection
                raw.autocommit = True
                raw.execute(f"LISTEN {services.NOTIFY_CHANNEL}")
                while not self.stop_event.is_set():
                    for notify in raw.notifies(timeout=1.0):
                        try:
                            server = self.servers.get(int(notify.payload))
                        except ValueError:
                            continue
                        if server is not None:
                            server.notify()
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any database trouble
                logger.warning("NOTIFY listener failed (%s); reconnecting", exc, extra={"error": str(exc)})
                self.stop_event.wait(1.0)
            finally:
                try:
                    wrapper.close()
                except Exception:  # noqa: BLE001
                    pass
