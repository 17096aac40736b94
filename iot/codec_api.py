"""REST API of Premium codecs, under one deployment: schemas and their versions, the try-it decode/encode calls, and
codec rules.

Thin: the tenant comes from the URL (ScopedViewSet), scopes are device:read / device:write, the view parses, calls
one iot.codecs function, serializes. Another organization's schema or rule is a 404.
"""

from __future__ import annotations

import base64

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.response import Response

from controlplane.api.pagination import CursorPagination
from controlplane.api.serializers import BrokerTextField, InputSerializer, PlainTextField
from controlplane.validators import whole_number
from iot import codecs
from iot.api import _DeploymentScopedViewSet
from iot.codec_models import CodecCounter, CodecRule, Schema, SchemaVersion

MAX_VERSION = 2**31 - 1  # SchemaVersion.version is a PostgreSQL integer

CODECS_TAG = ["codecs (Premium)"]

_PROTO = 'syntax = "proto3";\npackage sensors;\nmessage Reading {\n  string device = 1;\n  double temperature = 2;\n}\n'


_VERSION_EXAMPLE = {
    "version": 1,
    "source": _PROTO,
    "message_type": "sensors.Reading",
    "created_at": "2026-11-30T10:00:00Z",
}


@extend_schema_serializer(examples=[OpenApiExample("Version", value=_VERSION_EXAMPLE, response_only=True)])
class SchemaVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = SchemaVersion
        fields = ["version", "source", "message_type", "created_at"]


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Protobuf schema",
            value={
                "name": "reading",
                "type": "protobuf",
                "description": "",
                "latest_version": 1,
                "latest": _VERSION_EXAMPLE,
                "created_at": "2026-11-30T10:00:00Z",
                "updated_at": "2026-11-30T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class SchemaSerializer(serializers.ModelSerializer):
    latest = serializers.SerializerMethodField()

    class Meta:
        model = Schema
        fields = ["name", "type", "description", "latest_version", "latest", "created_at", "updated_at"]

    @extend_schema_field(SchemaVersionSerializer(allow_null=True))
    def get_latest(self, obj) -> dict | None:
        version = next((v for v in obj.versions.all() if v.version == obj.latest_version), None)
        return SchemaVersionSerializer(version).data if version else None


class SchemaCreateSerializer(InputSerializer):
    name = serializers.CharField(help_text="1 to 64 of A-Z a-z 0-9 _ -", trim_whitespace=False)
    type = serializers.ChoiceField(choices=Schema.Type.choices)
    source = serializers.CharField(  # type: ignore[assignment] # the field is named source, as EMQX names it
        trim_whitespace=False, help_text="The .proto text, the Avro schema (JSON text) or the JSON Schema (JSON text)."
    )
    message_type = serializers.CharField(
        required=False, allow_blank=True, help_text="Protobuf only: the message to decode and encode."
    )
    description = PlainTextField(required=False, default="", allow_blank=True, max_length=500)


class SchemaVersionCreateSerializer(InputSerializer):
    source = serializers.CharField(trim_whitespace=False)  # type: ignore[assignment]
    message_type = serializers.CharField(
        required=False, allow_blank=True, help_text="Protobuf only; the previous version's when omitted."
    )


class DecodeRequestSerializer(InputSerializer):
    payload_base64 = serializers.CharField(trim_whitespace=False)
    version = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_VERSION, help_text="The latest version when omitted."
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample("Decoded", value={"result": {"device": "sensor-1", "temperature": 21.5}}, response_only=True)
    ]
)
class DecodeResultSerializer(serializers.Serializer):
    result = serializers.JSONField()


class EncodeRequestSerializer(InputSerializer):
    payload = serializers.JSONField()
    version = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_VERSION, help_text="The latest version when omitted."
    )


@extend_schema_serializer(
    examples=[OpenApiExample("Encoded", value={"payload_base64": "CghzZW5zb3ItMREAAAAAAIA1QA=="}, response_only=True)]
)
class EncodeResultSerializer(serializers.Serializer):
    payload_base64 = serializers.CharField()


class SchemaPagination(CursorPagination):
    ordering = ("name", "id")


class RulePagination(CursorPagination):
    ordering = ("created_at", "id")


def _input(serializer_class, data):
    parsed = serializer_class(data=data)
    parsed.is_valid(raise_exception=True)
    return parsed.validated_data


class SchemaViewSet(mixins.ListModelMixin, _DeploymentScopedViewSet):
    queryset = Schema.objects.prefetch_related("versions")
    tenant_field = "deployment__project"
    lookup_field = "name"
    lookup_url_kwarg = "schema"
    serializer_class = SchemaSerializer
    pagination_class = SchemaPagination
    required_scopes = {
        "list": "device:read",
        "retrieve": "device:read",
        "create": "device:write",
        "destroy": "device:write",
        "versions": "device:read",
        "version_create": "device:write",
        "version": "device:read",
        "decode": "device:read",
        "encode": "device:read",
    }

    def _schema(self) -> Schema:
        deployment = self.deployment()
        schema = self.get_object()
        schema.deployment = deployment
        return schema

    @extend_schema(summary="List schemas", tags=CODECS_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a schema and its latest version", tags=CODECS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return Response(SchemaSerializer(self._schema()).data)

    @extend_schema(
        summary="Register a schema (Protobuf, Avro or JSON Schema); its source is compiled, version 1",
        tags=CODECS_TAG,
        request=SchemaCreateSerializer,
        responses={201: SchemaSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = _input(SchemaCreateSerializer, request.data)
        schema = codecs.schema_create(deployment=deployment, actor=self.principal, **data)
        schema = Schema.objects.prefetch_related("versions").get(pk=schema.pk)
        return Response(SchemaSerializer(schema).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Delete a schema and its versions (refused while a rule uses it)", tags=CODECS_TAG)
    def destroy(self, request, *args, **kwargs):
        codecs.schema_delete(schema=self._schema(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Every version of a schema", tags=CODECS_TAG, responses={200: SchemaVersionSerializer(many=True)}
    )
    def versions(self, request, *args, **kwargs):
        schema = self._schema()
        return Response(SchemaVersionSerializer(schema.versions.order_by("version"), many=True).data)

    @extend_schema(
        summary="Add a version; refused with the breaking field named unless backward compatible (Avro, Protobuf)",
        tags=CODECS_TAG,
        request=SchemaVersionCreateSerializer,
        responses={201: SchemaVersionSerializer},
    )
    def version_create(self, request, *args, **kwargs):
        schema = self._schema()
        data = _input(SchemaVersionCreateSerializer, request.data)
        version = codecs.schema_version_add(schema=schema, actor=self.principal, **data)
        return Response(SchemaVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="One version of a schema", tags=CODECS_TAG, responses={200: SchemaVersionSerializer})
    def version(self, request, *args, **kwargs):
        schema = self._schema()
        raw = self.kwargs["version"]
        if whole_number(raw) is None:
            raise exceptions.NotFound()
        return Response(SchemaVersionSerializer(codecs.schema_version_get(schema=schema, version=raw)).data)

    @extend_schema(
        summary="Try it: decode a payload (base64) with a version of the schema",
        tags=CODECS_TAG,
        request=DecodeRequestSerializer,
        responses={200: DecodeResultSerializer},
    )
    def decode(self, request, *args, **kwargs):
        schema = self._schema()
        data = _input(DecodeRequestSerializer, request.data)
        result = codecs.schema_decode(schema=schema, payload_base64=data["payload_base64"], version=data.get("version"))
        return Response({"result": result})

    @extend_schema(
        summary="Try it: encode a JSON value with a version of the schema",
        tags=CODECS_TAG,
        request=EncodeRequestSerializer,
        responses={200: EncodeResultSerializer},
    )
    def encode(self, request, *args, **kwargs):
        schema = self._schema()
        data = _input(EncodeRequestSerializer, request.data)
        encoded = codecs.schema_encode(schema=schema, payload=data["payload"], version=data.get("version"))
        return Response({"payload_base64": base64.b64encode(encoded).decode("ascii")})


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Codec rule",
            value={
                "id": "cdr_k2m9q4x8c1v5b6n0z7a3",
                "name": "readings to JSON",
                "topic_filter": "devices/+/telemetry",
                "direction": "decode",
                "schema": "reading",
                "schema_version": 1,
                "topic_template": "app/{device_id}/reading",
                "error_topic": "codec-errors/cdr_k2m9q4x8c1v5b6n0z7a3",
                "enabled": True,
                "processed": 1042,
                "failures": 3,
                "last_failure": "not a sensors.Reading message: Error parsing message",
                "last_failure_at": "2026-11-30T10:04:00Z",
                "created_at": "2026-11-30T10:00:00Z",
                "updated_at": "2026-11-30T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class CodecRuleSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    schema = serializers.CharField(source="schema_version.schema.name", read_only=True)
    schema_version = serializers.IntegerField(source="schema_version.version", read_only=True)
    error_topic = serializers.SerializerMethodField()
    processed = serializers.SerializerMethodField()
    failures = serializers.SerializerMethodField()
    last_failure = serializers.SerializerMethodField()
    last_failure_at = serializers.SerializerMethodField()

    class Meta:
        model = CodecRule
        fields = [
            "id",
            "name",
            "topic_filter",
            "direction",
            "schema",
            "schema_version",
            "topic_template",
            "error_topic",
            "enabled",
            "processed",
            "failures",
            "last_failure",
            "last_failure_at",
            "created_at",
            "updated_at",
        ]

    def _counter(self, obj) -> CodecCounter | None:
        try:
            return obj.counter
        except CodecCounter.DoesNotExist:
            return None

    def get_error_topic(self, obj) -> str:
        from iot.codec_topics import error_topic

        return error_topic(obj.public_id)

    def get_processed(self, obj) -> int:
        counter = self._counter(obj)
        return counter.processed if counter else 0

    def get_failures(self, obj) -> int:
        counter = self._counter(obj)
        return counter.failures if counter else 0

    def get_last_failure(self, obj) -> str:
        counter = self._counter(obj)
        return counter.last_failure if counter else ""

    def get_last_failure_at(self, obj) -> str | None:
        counter = self._counter(obj)
        at = counter.last_failure_at if counter else None
        return serializers.DateTimeField().to_representation(at) if at else None


class CodecRuleCreateSerializer(InputSerializer):
    name = PlainTextField(required=False, default="", allow_blank=True, max_length=128)
    topic_filter = BrokerTextField(max_length=512, trim_whitespace=False, help_text="e.g. devices/+/telemetry")
    direction = serializers.ChoiceField(choices=CodecRule.Direction.choices)
    schema = serializers.CharField(help_text="A schema's name.")
    schema_version = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_VERSION, help_text="The schema's latest version when omitted."
    )
    topic_template = BrokerTextField(
        max_length=512,
        trim_whitespace=False,
        help_text="The output topic: text with {topic}, {topic[N]} (level N of the input topic, from 0) and "
        "{device_id} (level 1 of devices/{device_id}/…).",
    )
    enabled = serializers.BooleanField(required=False, default=True)


class CodecRuleUpdateSerializer(InputSerializer):
    name = PlainTextField(required=False, allow_blank=True, max_length=128)
    topic_filter = BrokerTextField(required=False, max_length=512, trim_whitespace=False)
    direction = serializers.ChoiceField(required=False, choices=CodecRule.Direction.choices)
    schema = serializers.CharField(required=False)
    schema_version = serializers.IntegerField(required=False, min_value=1, max_value=MAX_VERSION)
    topic_template = BrokerTextField(required=False, max_length=512, trim_whitespace=False)
    enabled = serializers.BooleanField(required=False)


class CodecRuleViewSet(mixins.ListModelMixin, _DeploymentScopedViewSet):
    queryset = CodecRule.objects.select_related("schema_version__schema", "counter")
    tenant_field = "deployment__project"
    lookup_field = "public_id"
    lookup_url_kwarg = "codec_rule"
    serializer_class = CodecRuleSerializer
    pagination_class = RulePagination
    required_scopes = {
        "list": "device:read",
        "retrieve": "device:read",
        "create": "device:write",
        "partial_update": "device:write",
        "destroy": "device:write",
    }

    def _rule(self) -> CodecRule:
        deployment = self.deployment()
        rule = self.get_object()
        rule.deployment = deployment
        return rule

    def _answer(self, rule: CodecRule, code=status.HTTP_200_OK) -> Response:
        rule = self.get_queryset().get(pk=rule.pk)
        return Response(CodecRuleSerializer(rule).data, status=code)

    @extend_schema(summary="List codec rules", tags=CODECS_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a codec rule, with its counts", tags=CODECS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return Response(CodecRuleSerializer(self._rule()).data)

    @extend_schema(
        summary="Add a codec rule: messages on a topic filter decoded (or encoded) and republished",
        tags=CODECS_TAG,
        request=CodecRuleCreateSerializer,
        responses={201: CodecRuleSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = _input(CodecRuleCreateSerializer, request.data)
        rule = codecs.codec_rule_create(deployment=deployment, actor=self.principal, **data)
        return self._answer(rule, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a codec rule (its filter, template, schema version, enabled flag…)",
        tags=CODECS_TAG,
        request=CodecRuleUpdateSerializer,
        responses={200: CodecRuleSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        rule = self._rule()
        data = _input(CodecRuleUpdateSerializer, request.data)
        rule = codecs.codec_rule_update(rule=rule, actor=self.principal, **data)
        return self._answer(rule)

    @extend_schema(summary="Delete a codec rule", tags=CODECS_TAG, responses={204: None})
    def destroy(self, request, *args, **kwargs):
        codecs.codec_rule_delete(rule=self._rule(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)
