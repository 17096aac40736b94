"""Codec rows of a Premium deployment: schemas and their immutable versions, codec rules, and the agent's counters
of what each rule decoded and failed to decode. Imported by iot.models (one app, one migration history).

Fields and constraints only; every change is made in iot.codecs.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from controlplane.ids import PublicIdField
from controlplane.validators import no_control_characters


class Schema(models.Model):
    class Type(models.TextChoices):
        PROTOBUF = "protobuf", "Protobuf"
        AVRO = "avro", "Avro"
        JSON_SCHEMA = "json_schema", "JSON Schema"

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="codec_schemas")
    name = models.CharField(max_length=64)  # [A-Za-z0-9_-]: its name in EMQX's schema registry too
    type = models.CharField(max_length=16, choices=Type.choices)
    description = models.CharField(max_length=500, blank=True, validators=[no_control_characters])
    latest_version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["deployment", "name"], name="codec_schema_name_unique")]

    def __str__(self):
        return self.name


class SchemaVersion(models.Model):
    """One compiled version; never changed once written (rules pin a version)."""

    schema = models.ForeignKey(Schema, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    source = models.TextField()
    message_type = models.CharField(max_length=256, blank=True)  # Protobuf: the resolved full name
    descriptor_set = models.BinaryField(blank=True, default=b"")  # Protobuf: protoc's FileDescriptorSet
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["schema", "version"]
        constraints = [models.UniqueConstraint(fields=["schema", "version"], name="codec_schema_version_unique")]


class CodecRule(models.Model):
    class Direction(models.TextChoices):
        DECODE = "decode", "binary to JSON"
        ENCODE = "encode", "JSON to binary"

    public_id = PublicIdField(prefix="cdr")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="codec_rules")
    name = models.CharField(max_length=128, blank=True, validators=[no_control_characters])
    topic_filter = models.CharField(max_length=512)
    direction = models.CharField(max_length=8, choices=Direction.choices)
    schema_version = models.ForeignKey(SchemaVersion, on_delete=models.PROTECT, related_name="rules")
    topic_template = models.CharField(max_length=512)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["deployment", "enabled"], name="codec_rule_enabled_idx")]
        constraints = [
            models.CheckConstraint(condition=Q(direction__in=["decode", "encode"]), name="codec_rule_direction")
        ]


class CodecCounter(models.Model):
    """What a rule did, as running totals the agent adds to; `failures_collected` is how many failures the metric
    collector has already turned into `codec_failures` samples."""

    rule = models.OneToOneField(CodecRule, on_delete=models.CASCADE, primary_key=True, related_name="counter")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="+")
    processed = models.PositiveBigIntegerField(default=0)
    failures = models.PositiveBigIntegerField(default=0)
    failures_collected = models.PositiveBigIntegerField(default=0)
    last_failure = models.TextField(blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
