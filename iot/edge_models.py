"""Edge nodes of a Premium deployment (brokers at the customer's sites bridged to it), their desired configuration
documents, and the retained topics the agent must clear after a node is deleted. Fields and constraints only;
writes are iot.edge_services'. Imported by iot.models so that Django registers them in the `iot` app.
"""

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import broker_text


class EdgeNode(models.Model):
    """A broker at the edge bridged to the deployment, a broker user confined to edge/{name}/#. Only the PBKDF2 hash
    of its password is kept; the password is shown once. State (online…) is written only by the platform agent,
    from the bridge's own status messages; `applied_version` from the node's acknowledgements."""

    class Kind(models.TextChoices):
        MOSQUITTO = "mosquitto", "mosquitto"
        NANOMQ = "nanomq", "NanoMQ"

    public_id = PublicIdField(prefix="edg")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="edge_nodes")
    name = models.CharField(max_length=64, validators=[broker_text])  # a topic level: edge/{name}/…
    kind = models.CharField(max_length=16, choices=Kind.choices)
    up_topics = ArrayField(models.CharField(max_length=256), default=list, blank=True)
    down_topics = ArrayField(models.CharField(max_length=256), default=list, blank=True)
    username = models.CharField(max_length=64, validators=[broker_text])
    salt_b64 = models.CharField(max_length=64, validators=[broker_text])
    hash_b64 = models.CharField(max_length=128, validators=[broker_text])
    iterations = models.PositiveIntegerField(default=101)
    credentials_issued_at = models.DateTimeField(default=timezone.now)

    online = models.BooleanField(default=False)
    connected_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    desired_version = models.PositiveIntegerField(default=0)  # 0: no configuration document yet
    applied_version = models.PositiveIntegerField(default=0)
    applied_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "name"], name="edge_node_name_unique"),
            models.UniqueConstraint(fields=["deployment", "username"], name="edge_node_username_unique"),
            models.CheckConstraint(
                condition=Q(applied_version__lte=F("desired_version")), name="edge_node_applied_not_ahead"
            ),
        ]
        indexes = [models.Index(fields=["deployment", "online"], name="edge_node_online_idx")]

    def __str__(self):
        return self.name

    @property
    def behind(self) -> bool:
        return self.applied_version < self.desired_version


class EdgeConfig(models.Model):
    """One version of a node's desired configuration (its topic mappings and settings), kept as published.
    `published_at` is set by the agent once the broker took the retained message."""

    node = models.ForeignKey(EdgeNode, on_delete=models.CASCADE, related_name="configs")
    version = models.PositiveIntegerField()
    up_topics = ArrayField(models.CharField(max_length=256), default=list, blank=True)
    down_topics = ArrayField(models.CharField(max_length=256), default=list, blank=True)
    settings = models.JSONField(default=dict, blank=True)
    document = models.JSONField()  # exactly what is published to edge/{node}/config
    size = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node", "-version"]
        constraints = [models.UniqueConstraint(fields=["node", "version"], name="edge_config_version_unique")]


class EdgeRetainedClear(models.Model):
    """A retained topic of a deleted node (its status, its configuration) that the agent must clear, so that a node
    made later under the same name never reads its predecessor's messages. Deleted once cleared."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="+")
    topic = models.CharField(max_length=512)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
