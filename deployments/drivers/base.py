"""The one interface every broker driver implements, and the plain data it is given.

A driver is told the whole desired state of one deployment's broker (a BrokerSpec) and closes the gap; it never reads
or writes the database, so the reconciler can call it any number of times, from any worker, after any crash.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol, TypeVar, get_args

Phase = Literal["absent", "starting", "running", "stopped", "failed"]
AclPermission = Literal["allow", "deny"]
AclAction = Literal["publish", "subscribe", "all"]
RateLimitLevel = Literal["global", "zone", "listener", "connection"]
DriverName = Literal["local", "kubernetes"]
# Their values, for one_of: the model fields these come from (choices) are plain str to the type checker.
ACL_PERMISSIONS: tuple[AclPermission, ...] = get_args(AclPermission)
ACL_ACTIONS: tuple[AclAction, ...] = get_args(AclAction)
RATE_LIMIT_LEVELS: tuple[RateLimitLevel, ...] = get_args(RateLimitLevel)
DRIVER_NAMES: tuple[DriverName, ...] = get_args(DriverName)

_Choice = TypeVar("_Choice", bound=str)

# When a deployment's ACL rules match nothing, the client is allowed (EMQX's own default for
# `authorization.no_match`). Every driver renders this, so a rule set means the same on mosquitto and on EMQX.
ACL_NO_MATCH: AclPermission = "allow"


def one_of(value: str, choices: tuple[_Choice, ...]) -> _Choice:
    """`value` as the one of `choices` it equals. Raises ValueError naming the choices when it is none of them."""
    for choice in choices:
        if value == choice:
            return choice
    raise ValueError(f"{value!r} is not one of {', '.join(choices)}")


class DriverError(Exception):
    """Base of the errors a driver raises; the reconciler decides what each means for the deployment."""


class TemporaryDriverError(DriverError):
    """Worth retrying: the cluster is unreachable, a process is still starting, a port was taken under us."""


class PermanentDriverError(DriverError):
    """Retrying will not help: the spec is invalid or a quota is exhausted. The message is shown to the user."""


class ConfigRejectedError(PermanentDriverError):
    """The broker refused the new configuration after it was written. The driver put the last configuration the
    broker accepted back in place and the broker serves with it (`observed` says so); the change itself failed."""

    def __init__(self, message: str, *, observed: Observed) -> None:
        super().__init__(message)
        self.observed = observed


@dataclasses.dataclass(frozen=True)
class MqttCredential:
    """An MQTT user, hashed the way both mosquitto (`$7$`) and EMQX (pbkdf2/sha512) accept: we never hold plaintext."""

    username: str
    salt_b64: str
    hash_b64: str
    iterations: int = 101
    is_superuser: bool = False
    # A confined user may publish and subscribe under exactly these topic filters and nowhere else: the deployment's
    # ACL rules never apply to it, whatever they allow (the devices of deployments.extensions contributors).
    # None: an ordinary user, governed by the ACL rules.
    confined_to: tuple[str, ...] | None = None
    # A user with no password (salt and hash empty): it authenticates only with a client certificate whose CN is its
    # username, on the device-certificate listener (DeviceCaMaterial). Never written to a password file.
    certificate_only: bool = False

    @property
    def revoked_identity(self) -> bool:
        """A revoked device certificate's username (certificate-only, confined to nothing): denied everything, and
        on EMQX kicked and banned, since EMQX may accept the certificate until it refreshes its cached CRL."""
        return self.certificate_only and self.confined_to == ()


@dataclasses.dataclass(frozen=True)
class AclEntry:
    """One ordered rule; the first that matches a client and topic decides. `who` None means everyone."""

    permission: AclPermission
    action: AclAction
    topic: str
    username: str | None = None
    client_id: str | None = None


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """A policy for one level. None means no limit at that level. Rates are per second."""

    level: RateLimitLevel
    max_conn_rate: int | None = None
    messages_rate: int | None = None
    bytes_rate: int | None = None


@dataclasses.dataclass(frozen=True)
class TlsMaterial:
    """What a deployment's TLS listeners (mqtts, wss) serve and whom they ask for a certificate.

    The PEM texts were parsed and re-encoded by deployments.tls; the key is decrypted. The local driver writes them
    into files beside mosquitto's configuration; the Kubernetes driver into a kubernetes.io/tls Secret named
    `secret_name` in the deployment's namespace (`tls.crt`, `tls.key`, and `ca.crt` for the client CA). A spec whose
    material is empty names a Secret that exists already and is mounted as it is."""

    secret_name: str = "broker-tls"
    has_client_ca: bool = False
    verify_peer: bool = False
    certificate_pem: str = ""  # the server certificate followed by its chain up to the root
    private_key_pem: str = dataclasses.field(default="", repr=False)
    client_ca_pem: str = ""  # the CA(s) the clients' certificates must verify against; "" for one-way TLS
    # With a client CA: whether a client without a certificate is refused (EMQX fail_if_no_peer_cert, mosquitto
    # require_certificate), and whether the certificate's common name becomes the MQTT username.
    require_client_certificate: bool = True
    use_identity_as_username: bool = False


@dataclasses.dataclass(frozen=True)
class DeviceCaMaterial:
    """A deployment's device CA and its CRL, for the listener (`mqtts_x509`) on which devices authenticate with a
    client certificate alone: it serves the deployment's server certificate (TlsMaterial), verifies clients against
    `ca_pem`, refuses the certificates `crl_pem` lists, and takes the certificate's CN as the MQTT username."""

    ca_pem: str
    crl_pem: str


@dataclasses.dataclass(frozen=True)
class RegionTarget:
    """Where a deployment's brokers run: what the region row says, with secrets already decrypted."""

    code: str
    driver: DriverName
    bind_address: str = "127.0.0.1"
    # Kubernetes only: a kubeconfig document (YAML text) or "" for in-cluster configuration.
    kubeconfig: str = dataclasses.field(default="", repr=False)  # credentials: never in a printed spec or a log
    storage_class: str = ""
    service_type: str = "LoadBalancer"


@dataclasses.dataclass(frozen=True)
class BrokerSpec:
    """The desired state of one deployment's broker, complete: drivers need nothing else."""

    name: str  # the deployment's public id (`dep_…`): names directories, namespaces, labels
    region: RegionTarget
    running: bool
    max_connections: int
    messages_per_second: int
    message_size_limit: int = 1024 * 1024
    version: str = "5.8.6"
    replicas: int = 1
    users: tuple[MqttCredential, ...] = ()
    acl: tuple[AclEntry, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    # Bumped by a maintenance request: a driver that sees a higher value than it last applied restarts the brokers
    # one at a time, keeping persistent sessions and their queued messages.
    restart_nonce: int = 0
    # Local only: (protocol, port) the deployment was last reachable on, taken again when its broker's directory (and
    # the port allocation in it) was lost, so clients find it where they did.
    previous_ports: tuple[tuple[str, int], ...] = ()
    # Kubernetes only: the bootstrap API key the control plane uses for EMQX's management API.
    api_key: str = ""
    api_secret: str = dataclasses.field(default="", repr=False)
    # The certificate the TLS listeners (mqtts, wss) serve, and the client CA for two-way TLS; None: no TLS listener.
    tls: TlsMaterial | None = None
    # Premium devices' client-certificate listener (only with `tls`); None: no such listener.
    device_ca: DeviceCaMaterial | None = None
    # Kubernetes only: the EMQX Enterprise licence key (EMQX_LICENSE__KEY); "" renders none.
    license_key: str = dataclasses.field(default="", repr=False)
    # Kubernetes only: replicated durable sessions (EMQX Enterprise's builtin_raft storage).
    durable_sessions: bool = False


@dataclasses.dataclass
class Observed:
    """What a driver found after acting: written by the reconciler into the deployment's observed state."""

    phase: Phase
    host: str = ""
    ports: dict[str, int] = dataclasses.field(default_factory=dict)  # protocol -> port: mqtt, ws, mqtts, wss
    message: str = ""
    restart_nonce: int = 0  # the highest restart_nonce fully carried out
    ready_replicas: int = 0
    # Free-form facts a collector needs later (log path, management URL...). Never secrets.
    details: dict[str, str] = dataclasses.field(default_factory=dict)
    # Set when this call found dead a broker that was meant to be running, and started it again: what is known of
    # its exit, and when it was last seen alive (unix seconds, None if never). The reconciler records the crash.
    crashed: str = ""
    last_seen_alive: float | None = None


@dataclasses.dataclass(frozen=True)
class Liveness:
    """A cheap look at a broker that is meant to be running, taken without changing anything.

    `state`: alive; dead (meant to run, and no process, or one that serves nothing: `message` says what is known);
    busy (the driver is acting on it right now, look again later); idle (not meant to be running); missing (nothing
    of it on this machine: never applied here, or its files were removed: dead if it should be serving)."""

    state: Literal["alive", "dead", "busy", "idle", "missing"]
    pid: int | None = None
    message: str = ""
    last_seen_alive: float | None = None  # unix seconds: the last time a look found it alive


class Driver(Protocol):
    def apply(self, spec: BrokerSpec) -> Observed:
        """Close the gap toward `spec` (running or stopped, config, users, ACL, limits, restarts). Idempotent."""

    def observe(self, spec: BrokerSpec) -> Observed:
        """Report what is there now without changing anything."""

    def delete(self, spec: BrokerSpec) -> Observed:
        """Remove everything the deployment owns; answers phase `absent` once nothing is left. Idempotent."""

    # Optional (the local driver has it): `probe(name) -> Liveness`, a look cheap enough to run every few seconds
    # for every deployment, so that a dead broker is noticed without waiting for a resync.
