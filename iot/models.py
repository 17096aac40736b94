"""Premium's IoT platform: the device registry and groups, device shadows and their history, and the platform
agent's own rows (its broker credentials per deployment, leases, heartbeats, the outbox it publishes from).

Fields and constraints only. Registry and shadow changes are made in iot.services; presence fields (online,
connected_at…) are written only by the agent (iot.services.presence_apply).
"""

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import broker_text, no_control_characters

AGENT_USERNAME = "$controlplane-agent"
# The agent's MQTT client id on every broker: one persistent session, so a second agent taking a deployment over
# inherits the QoS 1 messages queued for (or in flight to) the first.
AGENT_CLIENT_ID = "$controlplane-agent"


class AgentCredential(models.Model):
    """The platform agent's broker user on one Premium deployment: full access there and nowhere else. The password
    is a Fernet token (controlplane.crypto), never shown by any API; the hash keeps the broker's files stable."""

    deployment = models.OneToOneField("deployments.Deployment", on_delete=models.CASCADE, related_name="+")
    username = models.CharField(max_length=64, default=AGENT_USERNAME, validators=[broker_text])
    password_encrypted = models.TextField()
    salt_b64 = models.CharField(max_length=64, validators=[broker_text])
    hash_b64 = models.CharField(max_length=128, validators=[broker_text])
    created_at = models.DateTimeField(default=timezone.now)


class DeviceGroup(models.Model):
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="device_groups")
    name = models.CharField(max_length=64, validators=[no_control_characters])
    description = models.CharField(max_length=500, blank=True, validators=[no_control_characters])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["deployment", "name"], name="device_group_name_unique")]

    def __str__(self):
        return self.name


class Device(models.Model):
    """A device of one Premium deployment: its identity (the MQTT client id), description and broker credentials.
    Password devices: only the PBKDF2 hash of the password is kept; the password is shown once, when made.
    Certificate devices: no password (salt and hash are empty); they authenticate with an X.509 certificate of the
    deployment's device CA whose CN is `username` (DeviceCertificate records it)."""

    class CredentialType(models.TextChoices):
        PASSWORD = "password", "Username and password"
        CERTIFICATE = "certificate", "X.509 client certificate"

    public_id = PublicIdField(prefix="dev")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="devices")
    device_id = models.CharField(max_length=128, validators=[broker_text])  # its client id and its topics
    name = models.CharField(max_length=128, blank=True, validators=[no_control_characters])
    product = models.CharField(max_length=64, blank=True, validators=[no_control_characters])
    tags = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    groups = models.ManyToManyField(DeviceGroup, blank=True, related_name="devices")
    enabled = models.BooleanField(default=True)
    credential_type = models.CharField(max_length=16, choices=CredentialType.choices, default=CredentialType.PASSWORD)
    username = models.CharField(max_length=64, validators=[broker_text])
    salt_b64 = models.CharField(max_length=64, blank=True, validators=[broker_text])
    hash_b64 = models.CharField(max_length=128, blank=True, validators=[broker_text])
    iterations = models.PositiveIntegerField(default=101)
    credentials_issued_at = models.DateTimeField(default=timezone.now)

    # Presence: written only by the platform agent, from the broker's own connection events.
    online = models.BooleanField(default=False)
    connected_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    client_address = models.CharField(max_length=128, blank=True, validators=[no_control_characters])

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["device_id"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "device_id"], name="device_id_unique_per_deployment"),
            models.UniqueConstraint(fields=["deployment", "username"], name="device_username_unique"),
        ]
        indexes = [
            GinIndex(fields=["tags"], name="device_tags_gin"),
            models.Index(fields=["deployment", "product"], name="device_product_idx"),
            models.Index(fields=["deployment", "online"], name="device_online_idx"),
        ]

    def __str__(self):
        return self.device_id


class DeviceCertificateAuthority(models.Model):
    """A Premium deployment's own CA for its devices' client certificates, made with its broker's first TLS spec (or
    its first certificate device, whichever comes first), and the CRL the broker's certificate listener reads. The key is a Fernet token (controlplane.crypto), never
    shown; `crl_pem` changes only when a revocation changes or the CRL nears its next update (so the broker's file,
    and its reloads, stay still otherwise)."""

    deployment = models.OneToOneField(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="device_certificate_authority"
    )
    certificate_pem = models.TextField(editable=False)
    private_key_encrypted = models.TextField(editable=False)
    fingerprint_sha256 = models.CharField(max_length=95, editable=False)
    not_after = models.DateTimeField(editable=False)
    crl_pem = models.TextField(editable=False)
    crl_number = models.PositiveBigIntegerField(default=1)
    crl_next_update = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)


class DeviceCertificate(models.Model):
    """Every client certificate a device CA issued: what the CRL is built from. Kept after its device is deleted
    (device set to null) so the revocation stays on the CRL until the certificate expires. `revoked_at` with reason
    certificateHold is lifted again when the device is enabled; any other reason is final."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="+")
    device = models.ForeignKey(Device, null=True, blank=True, on_delete=models.SET_NULL, related_name="certificates")
    device_identifier = models.CharField(max_length=128, validators=[broker_text])  # its device_id, kept after a delete
    username = models.CharField(max_length=64, validators=[broker_text])  # the certificate's CN
    serial = models.CharField(max_length=64)  # lower-case hex
    fingerprint_sha256 = models.CharField(max_length=95)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    from_csr = models.BooleanField(default=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revocation_reason = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "serial"], name="device_certificate_serial_unique"),
            # At most one certificate of a device is current (not finally revoked): the one on record for it.
            models.UniqueConstraint(
                fields=["device"],
                condition=Q(revoked_at__isnull=True) | Q(revocation_reason="certificateHold"),
                name="device_certificate_one_current",
            ),
        ]


class Shadow(models.Model):
    """A device's classic shadow: desired and reported state, per-field timestamps, one version for both.

    `present` is False before the first update and after a delete; the version keeps counting across deletes, as
    AWS IoT's does, so a stale writer is refused after a delete too.
    """

    device = models.OneToOneField(Device, on_delete=models.CASCADE, primary_key=True, related_name="shadow")
    present = models.BooleanField(default=False)
    version = models.PositiveBigIntegerField(default=0)
    desired = models.JSONField(default=dict)
    reported = models.JSONField(default=dict)
    desired_metadata = models.JSONField(default=dict)
    reported_metadata = models.JSONField(default=dict)
    updated_at = models.DateTimeField(default=timezone.now)


class ShadowChange(models.Model):
    """Every accepted shadow change, written in the transaction that accepted it: the shadow's history."""

    class Kind(models.TextChoices):
        UPDATE = "update", "Update"
        DELETE = "delete", "Delete"

    class Source(models.TextChoices):
        MQTT = "mqtt", "MQTT"
        API = "api", "REST API"

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="shadow_history")
    version = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
    source = models.CharField(max_length=8, choices=Source.choices)
    state = models.JSONField(default=dict, blank=True)  # the accepted request's state: {"desired"?, "reported"?}
    client_token = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["device", "version"]
        # Two accepted changes can never claim one version: the constraint, not the code, is the guarantee.
        constraints = [models.UniqueConstraint(fields=["device", "version"], name="shadow_change_version_unique")]
        indexes = [models.Index(fields=["created_at"], name="shadow_change_time_idx")]


class AgentLease(models.Model):
    """Which platform agent serves a deployment, until when. Taken with a conditional upsert when free or expired,
    renewed by the holder's heartbeat; `token` grows with every acquisition and fences a holder that lost it."""

    deployment = models.OneToOneField(
        "deployments.Deployment", on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    holder = models.CharField(max_length=128)
    token = models.PositiveBigIntegerField(default=1)
    acquired_at = models.DateTimeField()
    renewed_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    # What the holder last reported: the age of its oldest unprocessed message, the time of its last processed event.
    lag_seconds = models.FloatField(default=0.0)
    last_event_at = models.DateTimeField(null=True, blank=True)
    # Where the presence source stopped (the broker log's inode and offset): a new holder resumes there.
    presence_cursor = models.JSONField(default=dict, blank=True)


class AgentHeartbeat(models.Model):
    agent_id = models.CharField(max_length=128, unique=True)
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    last_heartbeat_at = models.DateTimeField()
    deployments = models.PositiveIntegerField(default=0)


class OutboxMessage(models.Model):
    """Something the agent serving `deployment` must do on its broker, written in the transaction that caused it:
    publish a message (a shadow delta after a REST change), or take a client id over (disconnect a disabled
    device) once the broker runs `after_generation`. At least once: a row is deleted after it was carried out."""

    class Kind(models.TextChoices):
        PUBLISH = "publish", "Publish"
        KICK = "kick", "Disconnect a client id"

    class Reason(models.TextChoices):
        """Why a client id is taken over: enabling a device again withdraws the disconnect of its disable only."""

        DISABLED = "disabled", "The device was disabled"
        DELETED = "deleted", "The device was deleted"
        CREDENTIALS = "credentials", "The device's certificate was replaced"

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    topic = models.CharField(max_length=512, blank=True)
    payload = models.TextField(blank=True)
    client_id = models.CharField(max_length=128, blank=True)
    reason = models.CharField(max_length=16, choices=Reason.choices, blank=True)  # a kick's; "" before it was kept
    after_generation = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["deployment", "id"], name="outbox_deployment_idx")]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="publish") & ~Q(topic="")) | (Q(kind="kick") & ~Q(client_id="")),
                name="outbox_message_complete",
            )
        ]


# Codecs and edge nodes live in modules of their own; imported here so that Django registers them in this app.
from iot.codec_models import CodecCounter, CodecRule, Schema, SchemaVersion  # noqa: E402, F401 - one app's models
from iot.edge_models import EdgeConfig, EdgeNode, EdgeRetainedClear  # noqa: E402, F401

# Premium trials live in their own module (iot.trials_models); imported here so Django registers them.
from iot.trials_models import PremiumTrial, TrialDeployment  # noqa: E402, F401
