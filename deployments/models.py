"""The catalog (Region, Plan, Tier, Price) and deployments: desired state, observed state, operations and events.

Fields and constraints only. Desired state changes in deployments.services; observed state (status, conditions,
endpoints, StatusInterval rows) is written only by deployments.reconcile.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import broker_text, no_control_characters


class Region(models.Model):
    class Driver(models.TextChoices):
        LOCAL = "local", "Local mosquitto"
        KUBERNETES = "kubernetes", "Kubernetes (EMQX Operator)"

    code = models.SlugField(max_length=64, unique=True)
    display_name = models.CharField(max_length=100)
    provider = models.CharField(max_length=32, help_text="Cloud provider: aws, gcp, azure, local…")
    cloud_region = models.CharField(max_length=64, blank=True, help_text="The provider's region code, e.g. eu-west-1.")
    driver = models.CharField(max_length=16, choices=Driver.choices)
    bind_address = models.GenericIPAddressField(default="127.0.0.1", help_text="Local driver: listen address.")
    # Fernet token (deployments.crypto); empty with in_cluster=True means the control plane's own cluster.
    kubeconfig_encrypted = models.TextField(blank=True, editable=False)
    in_cluster = models.BooleanField(default=False)
    # Rendered into the Kubernetes manifests of every deployment here.
    storage_class = models.CharField(max_length=64, blank=True, validators=[broker_text])
    service_type = models.CharField(max_length=32, default="LoadBalancer", validators=[broker_text])
    is_open = models.BooleanField(default=True, help_text="Open for new deployments.")
    # The platform's cloud network in this region, as the operator loads it (load_regions' `network:` block): the
    # provider's account/project/subscription, the VPC or VNet, its CIDR. Empty for a region without one (local).
    network = models.JSONField(default=dict, blank=True, help_text="Cloud network: see docs/operations/regions.md.")
    # Fernet token of a JSON object: the credentials the networking adapters call the provider's API with.
    cloud_credentials_encrypted = models.TextField(blank=True, editable=False)
    tiers = models.ManyToManyField("Tier", blank=True, related_name="regions", help_text="Tiers offered here.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["code"]

    def __str__(self):
        return f"{self.display_name} ({self.code})"


# Premium is invite-only: staff grant an organization up to this many trial deployments.
MAX_PREMIUM_TRIAL_DEPLOYMENTS = 2


class Plan(models.Model):
    class Code(models.TextChoices):
        SERVERLESS = "serverless", "Serverless"
        DEDICATED = "dedicated", "Dedicated"
        PREMIUM = "premium", "Premium"
        BYOC = "byoc", "BYOC"

    code = models.CharField(max_length=16, choices=Code.choices, unique=True)
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=300, blank=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "code"]

    def __str__(self):
        return self.name


class Tier(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tiers")
    code = models.CharField(max_length=16, help_text="1k, 2k, 5k, 10k…")
    max_connections = models.PositiveIntegerField()
    messages_per_second = models.PositiveIntegerField()
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["plan__sort_order", "sort_order", "code"]
        constraints = [models.UniqueConstraint(fields=["plan", "code"], name="tier_code_unique_per_plan")]

    def __str__(self):
        return f"{self.plan.code}/{self.code}"


class Price(models.Model):
    class Kind(models.TextChoices):
        HOURLY = "hourly", "per hour running"
        RETENTION_HOURLY = "retention_hourly", "per hour stopped (data retention)"
        ANNUAL = "annual", "per year, prepaid"
        SESSION_MINUTES_MILLION = "session_minutes_million", "per million session-minutes"
        TRAFFIC_GIB = "traffic_gb", "per GiB of traffic"

    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="prices")
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, null=True, blank=True, related_name="prices")
    currency = models.CharField(max_length=3, default="USD")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    amount = models.DecimalField(max_digits=12, decimal_places=6)
    valid_from = models.DateField()

    class Meta:
        ordering = ["plan", "tier", "kind", "currency", "-valid_from"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "tier", "currency", "kind", "valid_from"], name="price_unique"),
            models.UniqueConstraint(
                fields=["plan", "currency", "kind", "valid_from"],
                condition=Q(tier__isnull=True),
                name="price_unique_plan_level",
            ),
            models.CheckConstraint(condition=Q(amount__gte=0), name="price_not_negative"),
        ]

    def __str__(self):
        return f"{self.plan.code}/{self.tier.code if self.tier_id else '*'} {self.kind} {self.amount} {self.currency}"


class DesiredState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    DELETED = "deleted", "Deleted"


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    UPDATING = "updating", "Updating"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    DELETING = "deleting", "Deleting"
    DELETED = "deleted", "Deleted"
    FAILED = "failed", "Failed"
    # Meant to be running, and its broker died (found by the watcher or a reconcile): being restored. Not billed.
    DEGRADED = "degraded", "Degraded"


# The status a deployment settles in once it reached what was asked of it.
SETTLED_STATUS = {
    DesiredState.RUNNING: Status.RUNNING,
    DesiredState.STOPPED: Status.STOPPED,
    DesiredState.DELETED: Status.DELETED,
}


class Deployment(models.Model):
    public_id = PublicIdField(prefix="dep")
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=64, validators=[no_control_characters])
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="deployments")
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="deployments")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="deployments")

    # Desired state: written by deployments.services.
    desired_state = models.CharField(max_length=16, choices=DesiredState.choices, default=DesiredState.RUNNING)
    generation = models.PositiveIntegerField(default=1)
    restart_nonce = models.PositiveIntegerField(default=0)
    # The EMQX release of a deployment in a Kubernetes region (checked by deployments.emqx_versions); "" elsewhere.
    emqx_version = models.CharField(max_length=16, blank=True, default="")
    deletion_protection = models.BooleanField(default=False)
    last_tier_change_at = models.DateTimeField(null=True, blank=True)
    status_reason = models.CharField(max_length=32, blank=True, help_text="Why it was stopped, e.g. billing.")

    # Observed state: written only by deployments.reconcile.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    conditions = models.JSONField(default=list, blank=True)
    observed_generation = models.PositiveIntegerField(default=0)
    observed_restart_nonce = models.PositiveIntegerField(default=0)
    endpoints = models.JSONField(default=dict, blank=True)  # {"host": "...", "ports": {"mqtt": 1883, ...}}
    observed_details = models.JSONField(default=dict, blank=True)  # the driver's Observed.details: log_path, ...
    last_error = models.TextField(blank=True)
    last_reconciled_at = models.DateTimeField(null=True, blank=True)

    # The control plane's own MQTT superuser (monitoring) and the EMQX bootstrap API secret: Fernet tokens, plus the
    # monitor's hash so the broker's password file stays byte-identical from one reconcile to the next.
    monitor_username = models.CharField(max_length=64, default="$controlplane-monitor", editable=False)
    monitor_password_encrypted = models.TextField(blank=True, editable=False)
    monitor_salt_b64 = models.CharField(max_length=64, blank=True, editable=False)
    monitor_hash_b64 = models.CharField(max_length=128, blank=True, editable=False)
    api_secret_encrypted = models.TextField(blank=True, editable=False)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # Deleted deployments stay for billing and history; their names are free again.
            models.UniqueConstraint(
                "project", Lower("name"), condition=~Q(desired_state="deleted"), name="deployment_name_unique_ci"
            ),
        ]
        indexes = [models.Index(fields=["status", "desired_state"], name="deployment_status_idx")]

    def __str__(self):
        return f"{self.name} ({self.public_id})"

    @property
    def is_converged(self) -> bool:
        if self.status == Status.FAILED:
            return self.observed_generation >= self.generation
        return (
            self.status == SETTLED_STATUS[self.desired_state]
            and self.observed_generation >= self.generation
            and self.observed_restart_nonce >= self.restart_nonce
        )


class StatusInterval(models.Model):
    """A span during which a deployment was billable as running or stopped, on one tier: what billing meters.

    Opened and closed by the reconciler in the same transaction as the observed status change it follows.
    """

    class Kind(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    deployment = models.ForeignKey(Deployment, on_delete=models.PROTECT, related_name="status_intervals")
    status = models.CharField(max_length=16, choices=Kind.choices)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment"], condition=Q(ended_at__isnull=True), name="status_interval_one_open"
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=models.F("started_at")),
                name="status_interval_ordered",
            ),
        ]


class Operation(models.Model):
    class Kind(models.TextChoices):
        CREATE = "create", "Create"
        STOP = "stop", "Stop"
        START = "start", "Start"
        RESTART = "restart", "Restart (maintenance)"
        CHANGE_TIER = "change_tier", "Change tier"
        MOVE = "move", "Move to another project"
        DELETE = "delete", "Delete"
        CONFIGURE = "configure", "Configure"

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    public_id = PublicIdField(prefix="op")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="operations")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    target_generation = models.PositiveIntegerField()
    params = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["deployment", "status"], name="operation_active_idx")]


class DeploymentEvent(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    operation = models.ForeignKey(Operation, on_delete=models.SET_NULL, null=True, blank=True, related_name="events")
    kind = models.CharField(max_length=64)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["deployment", "created_at"], name="deployment_event_time_idx")]


class MqttUser(models.Model):
    """An MQTT user of one deployment. Only the PBKDF2 hash is stored; the password is never readable again."""

    public_id = PublicIdField(prefix="mqu")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="mqtt_users")
    username = models.CharField(max_length=128, validators=[broker_text])
    # Written by deployments.services from the hash function, but editable in the backoffice: checked like the rest.
    salt_b64 = models.CharField(max_length=64, validators=[broker_text])
    hash_b64 = models.CharField(max_length=128, validators=[broker_text])
    iterations = models.PositiveIntegerField(default=101)
    is_superuser = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "username"], name="mqtt_user_unique")]


class AclRule(models.Model):
    """One ordered first-match rule. Neither username nor client_id: it applies to everyone."""

    class Permission(models.TextChoices):
        ALLOW = "allow", "Allow"
        DENY = "deny", "Deny"

    class Action(models.TextChoices):
        PUBLISH = "publish", "Publish"
        SUBSCRIBE = "subscribe", "Subscribe"
        ALL = "all", "Publish and subscribe"

    public_id = PublicIdField(prefix="acl")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="acl_rules")
    position = models.PositiveIntegerField()
    permission = models.CharField(max_length=8, choices=Permission.choices)
    action = models.CharField(max_length=16, choices=Action.choices)
    topic = models.CharField(max_length=1024, validators=[broker_text])
    username = models.CharField(max_length=128, null=True, blank=True, validators=[broker_text])
    client_id = models.CharField(max_length=128, null=True, blank=True, validators=[broker_text])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(username__isnull=True) | Q(client_id__isnull=True), name="acl_rule_one_subject"
            ),
        ]


class RateLimitPolicy(models.Model):
    class Level(models.TextChoices):
        GLOBAL = "global", "Global"
        ZONE = "zone", "Zone"
        LISTENER = "listener", "Listener"
        CONNECTION = "connection", "Connection"

    # The largest rate each column holds (PostgreSQL integer, bigint): the API, the console and the service refuse more.
    MAX_RATES = {"max_conn_rate": 2**31 - 1, "messages_rate": 2**31 - 1, "bytes_rate": 2**63 - 1}

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="rate_limits")
    level = models.CharField(max_length=16, choices=Level.choices)
    max_conn_rate = models.PositiveIntegerField(null=True, blank=True)
    messages_rate = models.PositiveIntegerField(null=True, blank=True)
    bytes_rate = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "level"], name="rate_limit_level_unique")]


# An operation still to finish; a maintenance window announced and not over.
ACTIVE_OPERATION_STATES = (Operation.State.PENDING, Operation.State.RUNNING)


class MaintenanceWindow(models.Model):
    """Announced maintenance of one deployment: its brokers restart once, inside [starts_at, ends_at).

    Written only by deployments.services (maintenance_schedule, maintenance_cancel, maintenance_start_due). While a
    scheduled or in-progress window covers now, the deployment's alerts are withheld (alerts.evaluate).
    """

    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        CANCELLED = "cancelled", "Cancelled"

    public_id = PublicIdField(prefix="mnt")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="maintenance_windows")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    emergency = models.BooleanField(default=False, help_text="Announced at least 24 hours ahead instead of 14 days.")
    reason = models.CharField(max_length=500)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    # The restart this window started: set once, under the window's row lock, so a window restarts at most once.
    operation = models.ForeignKey(Operation, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["starts_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="maintenance_window_ordered"),
        ]
        indexes = [
            models.Index(fields=["status", "starts_at"], name="maintenance_window_due_idx"),
            models.Index(fields=["deployment", "starts_at"], name="maintenance_window_dep_idx"),
        ]

    def __str__(self):
        return f"{self.public_id} {self.starts_at:%Y-%m-%d %H:%M}–{self.ends_at:%H:%M} UTC ({self.status})"


OPEN_MAINTENANCE_STATES = (MaintenanceWindow.Status.SCHEDULED, MaintenanceWindow.Status.IN_PROGRESS)


class CertificateAuthority(models.Model):
    """The control plane's own CA: it signs every deployment's default server certificate.

    One row (the `name` is unique and always "default"), created on first use by deployments.tls_services under an
    advisory lock. Its private key is a Fernet token (controlplane.crypto) and is never shown anywhere.
    """

    name = models.CharField(max_length=32, unique=True, default="default", editable=False)
    certificate_pem = models.TextField(editable=False)
    private_key_encrypted = models.TextField(editable=False)
    subject = models.CharField(max_length=1024, editable=False)
    not_before = models.DateTimeField(editable=False)
    not_after = models.DateTimeField(editable=False)
    fingerprint_sha256 = models.CharField(max_length=95, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "certificate authorities"

    def __str__(self):
        return f"{self.subject} (until {self.not_after:%Y-%m-%d})"


class TlsCertificate(models.Model):
    """A certificate a deployment's TLS listeners (mqtts, wss) use.

    `server`: what the listeners serve. The control plane issues one per deployment (source control_plane); a
    customer's own (source customer) replaces it while it exists. `client_ca`: the CA(s) that sign the clients'
    certificates; its presence turns two-way TLS on. The private key is write-only: a Fernet token, never shown.
    Every field but the key is derived from the parsed certificate by deployments.tls, never typed.
    """

    class Kind(models.TextChoices):
        SERVER = "server", "Server certificate"
        CLIENT_CA = "client_ca", "Client CA (two-way TLS)"

    class Source(models.TextChoices):
        CUSTOMER = "customer", "Uploaded by the customer"
        CONTROL_PLANE = "control_plane", "Issued by the control plane's CA"

    public_id = PublicIdField(prefix="crt")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="tls_certificates")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.CUSTOMER)
    # Written only by deployments.tls_services from certificates deployments.tls parsed and re-encoded: never typed,
    # so not editable anywhere (a value that reaches a broker file must have passed the parser).
    certificate_pem = models.TextField(editable=False)
    chain_pem = models.TextField(blank=True, editable=False)
    private_key_encrypted = models.TextField(blank=True, editable=False)
    subject = models.CharField(max_length=1024, editable=False)
    common_name = models.CharField(max_length=256, blank=True, editable=False)
    issuer = models.CharField(max_length=1024, editable=False)
    sans = models.JSONField(default=list, blank=True, editable=False)
    not_before = models.DateTimeField(editable=False)
    not_after = models.DateTimeField(editable=False)
    fingerprint_sha256 = models.CharField(max_length=95, editable=False)
    key_type = models.CharField(max_length=32, editable=False)
    # client_ca only: whether a client must present a certificate, and whether its CN becomes its MQTT username.
    require_client_certificate = models.BooleanField(default=True)
    use_identity_as_username = models.BooleanField(default=False)
    # server only: the host names the customer said their clients use (each covered by the certificate).
    host_names = models.JSONField(default=list, blank=True, editable=False)
    warnings = models.JSONField(default=list, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "-created_at", "id"]
        constraints = [
            # One of each: the customer's server certificate, the issued one, the client CA. A new upload of a kind
            # replaces the old one in the same transaction.
            models.UniqueConstraint(fields=["deployment", "kind", "source"], name="tls_certificate_one_per_kind"),
            models.CheckConstraint(
                condition=Q(kind="server") | Q(source="customer"), name="tls_certificate_client_ca_is_customer"
            ),
            models.CheckConstraint(
                condition=Q(kind="client_ca", private_key_encrypted="")
                | Q(kind="server") & ~Q(private_key_encrypted=""),
                name="tls_certificate_key_only_for_server",
            ),
        ]
        indexes = [models.Index(fields=["not_after"], name="tls_certificate_expiry_idx")]

    def __str__(self):
        return f"{self.kind} {self.subject} ({self.public_id})"
