"""REST API of the IoT platform (Premium): devices, device groups, CSV imports, device shadows and their history,
under one deployment.

Thin: ScopedViewSet resolves the organization and project from the URL and checks the scope (device:read,
device:write); the view parses, calls one service, serializes. Another organization's device is a 404.
"""

from __future__ import annotations

from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import exceptions, mixins, parsers, serializers, status
from rest_framework.response import Response

from controlplane.api.pagination import CursorPagination
from controlplane.api.serializers import BrokerTextField, InputSerializer, PlainTextField, iso_datetime
from controlplane.api.views import ScopedViewSet
from controlplane.errors import ValidationFailed
from controlplane.validators import whole_number
from deployments import selectors as deployment_selectors
from deployments.models import Deployment
from iot import selectors, services, shadow
from iot.models import Device, DeviceGroup, Shadow, ShadowChange

DEVICES_TAG = ["devices (Premium)"]
SHADOW_TAG = ["device shadows (Premium)"]

_DEVICE_EXAMPLE = {
    "id": "dev_k2m9q4x8c1v5b6n0z7a3",
    "device_id": "sensor-0017",
    "name": "Boiler room sensor",
    "product": "thermo-v2",
    "tags": ["plant-a", "floor-1"],
    "attributes": {"firmware": "1.4.2"},
    "groups": ["boilers"],
    "enabled": True,
    "credential_type": "password",
    "username": "$device-5f0c8a2e9b6d4c1f",
    "online": True,
    "connected_at": "2026-11-02T10:00:03Z",
    "disconnected_at": None,
    "last_seen": "2026-11-02T10:00:03Z",
    "client_address": "203.0.113.7:50412",
    "credentials_issued_at": "2026-11-02T10:00:00Z",
    "created_at": "2026-11-02T10:00:00Z",
    "updated_at": "2026-11-02T10:00:03Z",
}
_CREDENTIALS_EXAMPLE = {
    "type": "password",
    "username": "$device-5f0c8a2e9b6d4c1f",
    "password": "Xq3v…shown-once…9kLm",
}
_CERTIFICATE_FACTS_EXAMPLE = {
    "fingerprint_sha256": "3A:1F:…:9C",
    "serial": "5c1e0d3f9a7b2e4c6d8f0a1b3c5d7e9f01234567",
    "not_before": "2026-11-02T09:00:00Z",
    "not_after": "2027-11-02T10:00:00Z",
}
_CERTIFICATE_CREDENTIALS_EXAMPLE = {
    "type": "certificate",
    "username": "$device-5f0c8a2e9b6d4c1f",
    "certificate": "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n",
    "private_key": "-----BEGIN PRIVATE KEY-----\n…shown once…\n-----END PRIVATE KEY-----\n",
    "ca_certificate": "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n",
    "fingerprint_sha256": "3A:1F:…:9C",
    "not_after": "2027-11-02T10:00:00Z",
}


# --- serializers -----------------------------------------------------------------------------------------------


class DeviceCertificateFactsSerializer(serializers.Serializer):
    fingerprint_sha256 = serializers.CharField()
    serial = serializers.CharField(help_text="Hexadecimal.")
    not_before = serializers.DateTimeField()
    not_after = serializers.DateTimeField()


@extend_schema_serializer(examples=[OpenApiExample("Device", value=_DEVICE_EXAMPLE, response_only=True)])
class DeviceSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    groups = serializers.SerializerMethodField()
    credential_type = serializers.CharField(
        read_only=True,
        help_text='"password", or "certificate": it connects to the mqtts_x509 port with a client '
        "certificate whose CN is its username.",
    )
    certificate = serializers.SerializerMethodField(
        help_text="Certificate devices: the certificate on record (never its key); null for password devices."
    )
    username = serializers.CharField(read_only=True, help_text="The device's MQTT username.")
    online = serializers.BooleanField(
        read_only=True, help_text="From the broker's own connection events, within seconds."
    )

    class Meta:
        model = Device
        fields = [
            "id",
            "device_id",
            "name",
            "product",
            "tags",
            "attributes",
            "groups",
            "enabled",
            "credential_type",
            "certificate",
            "username",
            "online",
            "connected_at",
            "disconnected_at",
            "last_seen",
            "client_address",
            "credentials_issued_at",
            "created_at",
            "updated_at",
        ]

    def get_groups(self, obj) -> list[str]:
        return [group.name for group in obj.groups.all()]

    @extend_schema_field(DeviceCertificateFactsSerializer(allow_null=True))
    def get_certificate(self, obj) -> dict[str, str] | None:
        row = selectors.device_current_certificate(obj)
        if row is None:
            return None
        return {
            "fingerprint_sha256": row.fingerprint_sha256,
            "serial": row.serial,
            "not_before": iso_datetime(row.not_before) or "",
            "not_after": iso_datetime(row.not_after) or "",
        }


class DeviceCredentialsSerializer(serializers.Serializer):
    type = serializers.CharField(help_text='"password" or "certificate".')
    username = serializers.CharField()
    password = serializers.CharField(
        required=False, help_text="Password devices: shown this once; only a hash is kept."
    )
    certificate = serializers.CharField(required=False, help_text="Certificate devices: the client certificate (PEM).")
    private_key = serializers.CharField(
        required=False,
        help_text="Certificate devices whose key was generated here (no CSR): its private key (PEM, PKCS#8), shown "
        "this once and never kept.",
    )
    ca_certificate = serializers.CharField(
        required=False, help_text="Certificate devices: the deployment's device CA (PEM), which signed it."
    )
    fingerprint_sha256 = serializers.CharField(required=False)
    not_after = serializers.DateTimeField(required=False)


def credentials_body(credentials: services.IssuedCredentials) -> dict[str, str]:
    """The credentials as the API shows them this once."""
    issued = credentials.certificate
    if issued is None:
        return {"type": "password", "username": credentials.username, "password": credentials.password}
    body = {
        "type": "certificate",
        "username": credentials.username,
        "certificate": issued.certificate_pem,
        "ca_certificate": credentials.ca_certificate_pem,
        "fingerprint_sha256": issued.fingerprint_sha256,
        "not_after": iso_datetime(issued.not_after) or "",
    }
    if issued.private_key_pem:
        body["private_key"] = issued.private_key_pem
    return body


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Device with its credentials",
            value={**_DEVICE_EXAMPLE, "credentials": _CREDENTIALS_EXAMPLE, "operation": "op_q2w3e4r5t6y7u8i9o0pa"},
            response_only=True,
        ),
        OpenApiExample(
            "Certificate device with its certificate and key",
            value={
                **_DEVICE_EXAMPLE,
                "credential_type": "certificate",
                "certificate": _CERTIFICATE_FACTS_EXAMPLE,
                "credentials": _CERTIFICATE_CREDENTIALS_EXAMPLE,
                "operation": "op_q2w3e4r5t6y7u8i9o0pa",
            },
            response_only=True,
        ),
    ]
)
class DeviceIssuedSerializer(DeviceSerializer):
    credentials = serializers.SerializerMethodField()
    operation = serializers.SerializerMethodField(
        help_text="The configure operation that gives the broker the device's user."
    )

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "credentials", "operation"]

    @extend_schema_field(DeviceCredentialsSerializer)
    def get_credentials(self, obj) -> dict[str, str]:
        return credentials_body(self.context["credentials"])

    def get_operation(self, obj) -> str:
        return self.context["operation"]


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Device changed",
            value={**_DEVICE_EXAMPLE, "enabled": False, "operation": "op_q2w3e4r5t6y7u8i9o0pa"},
            response_only=True,
        )
    ]
)
class DeviceChangedSerializer(DeviceSerializer):
    operation = serializers.SerializerMethodField(
        help_text="The configure operation when the broker's users change (enabled), else null."
    )

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "operation"]

    def get_operation(self, obj) -> str | None:
        return self.context.get("operation")


class _TagsField(serializers.ListField):
    child = PlainTextField(max_length=64)


class DeviceCreateSerializer(InputSerializer):
    device_id = BrokerTextField(
        max_length=128,
        trim_whitespace=False,
        help_text="The device's MQTT client id: 1 to 128 characters among A-Z a-z 0-9 _ . : -",
    )
    name = PlainTextField(max_length=128, required=False, default="", allow_blank=True, trim_whitespace=False)
    product = PlainTextField(max_length=64, required=False, default="", allow_blank=True, trim_whitespace=False)
    tags = _TagsField(required=False, default=list, max_length=32)
    attributes = serializers.JSONField(required=False, default=dict, help_text="A JSON object, at most 8 KiB.")
    groups = serializers.ListField(
        child=PlainTextField(max_length=64), required=False, default=list, help_text="Names of existing groups."
    )
    enabled = serializers.BooleanField(required=False, default=True)
    credential_type = serializers.ChoiceField(
        choices=Device.CredentialType.choices,
        required=False,
        default=Device.CredentialType.PASSWORD,
        help_text='"password" (default): a generated username and password. "certificate": an X.509 client '
        "certificate of the deployment's device CA, for the mqtts_x509 port.",
    )
    csr = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        trim_whitespace=False,
        help_text="With credential_type certificate: a PEM PKCS#10 request (RSA 2048+ or EC P-256+ key) whose key "
        "the certificate is for; its subject is ignored (the CN is the device's username). Without it a key is "
        "generated and answered once.",
    )


class DeviceRotateSerializer(InputSerializer):
    credential_type = serializers.ChoiceField(
        choices=Device.CredentialType.choices,
        required=False,
        allow_null=True,
        default=None,
        help_text="The new credentials' type; the device's current type when left out. Switching works both ways.",
    )
    csr = serializers.CharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        trim_whitespace=False,
        help_text="As for registering: with credential_type certificate, a PEM PKCS#10 request.",
    )


class DeviceUpdateSerializer(InputSerializer):
    name = PlainTextField(max_length=128, required=False, allow_blank=True, trim_whitespace=False)
    product = PlainTextField(max_length=64, required=False, allow_blank=True, trim_whitespace=False)
    tags = _TagsField(required=False, max_length=32)
    attributes = serializers.JSONField(required=False)
    groups = serializers.ListField(child=PlainTextField(max_length=64), required=False)
    enabled = serializers.BooleanField(
        required=False, help_text="false disconnects the device at once and refuses its next connection."
    )


class DeviceImportedSerializer(serializers.Serializer):
    id = serializers.CharField()
    device_id = serializers.CharField()
    credentials = DeviceCredentialsSerializer()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Imported",
            value={
                "imported": 1,
                "operation": "op_q2w3e4r5t6y7u8i9o0pa",
                "devices": [
                    {"id": "dev_k2m9q4x8c1v5b6n0z7a3", "device_id": "sensor-0017", "credentials": _CREDENTIALS_EXAMPLE}
                ],
            },
            response_only=True,
        )
    ]
)
class DeviceImportResultSerializer(serializers.Serializer):
    imported = serializers.IntegerField()
    operation = serializers.CharField()
    devices = DeviceImportedSerializer(many=True, help_text="Every device with its credentials, shown this once.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Device group",
            value={"name": "boilers", "description": "Boiler room sensors", "created_at": "2026-11-02T10:00:00Z"},
            response_only=True,
        )
    ]
)
class DeviceGroupSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeviceGroup
        fields = ["name", "description", "created_at"]


class DeviceGroupCreateSerializer(InputSerializer):
    name = PlainTextField(max_length=64, trim_whitespace=False, help_text="1 to 64 of A-Z a-z 0-9 _ . : -")
    description = PlainTextField(max_length=500, required=False, default="", allow_blank=True)


class DeviceGroupUpdateSerializer(InputSerializer):
    description = PlainTextField(max_length=500, allow_blank=True)


_SHADOW_EXAMPLE = {
    "state": {
        "desired": {"setpoint": 21.5},
        "reported": {"setpoint": 20.0, "temperature": 19.8},
        "delta": {"setpoint": 21.5},
    },
    "metadata": {
        "desired": {"setpoint": {"timestamp": 1793613600}},
        "reported": {"setpoint": {"timestamp": 1793613540}, "temperature": {"timestamp": 1793613540}},
    },
    "version": 7,
    "timestamp": 1793613601,
}


@extend_schema_serializer(examples=[OpenApiExample("Shadow", value=_SHADOW_EXAMPLE, response_only=True)])
class ShadowDocumentSerializer(serializers.Serializer):
    state = serializers.DictField(help_text="desired, reported, and delta (what desired has that reported does not).")
    metadata = serializers.DictField(help_text="The time (Unix seconds) each field was last set, per section.")
    version = serializers.IntegerField()
    timestamp = serializers.IntegerField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Accepted",
            value={
                "state": {"desired": {"setpoint": 21.5}},
                "metadata": {"desired": {"setpoint": {"timestamp": 1793613600}}},
                "version": 7,
                "timestamp": 1793613600,
            },
            response_only=True,
        )
    ]
)
class ShadowAcceptedSerializer(serializers.Serializer):
    state = serializers.DictField()
    metadata = serializers.DictField()
    version = serializers.IntegerField()
    timestamp = serializers.IntegerField()
    clientToken = serializers.CharField(required=False)  # noqa: N815 - AWS IoT's field name, which devices expect


class ShadowUpdateSerializer(serializers.Serializer):
    """For the schema only: the body is checked by iot.shadow exactly as a device's update is."""

    state = serializers.DictField(help_text='{"desired": {…}}; null removes a field, `"desired": null` all of them.')
    version = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=shadow.MAX_VERSION,
        help_text="Refused with 409 unless the shadow is at it.",
    )
    clientToken = serializers.CharField(required=False, max_length=64)  # noqa: N815

    class Meta:
        model = Shadow  # where `version` is stored: its bounds are that bigint column's (tests/test_input_bounds.py)


@extend_schema_serializer(
    examples=[OpenApiExample("Deleted", value={"version": 8, "timestamp": 1793613700}, response_only=True)]
)
class ShadowDeletedSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    timestamp = serializers.IntegerField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "History entry",
            value={
                "version": 7,
                "kind": "update",
                "source": "mqtt",
                "state": {"reported": {"temperature": 19.8}},
                "client_token": "r-1042",
                "created_at": "2026-11-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class ShadowChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = ShadowChange
        fields = ["version", "kind", "source", "state", "client_token", "created_at"]


# --- filters and pagination ------------------------------------------------------------------------------------


class DeviceFilter(filters.FilterSet):
    tag = filters.CharFilter(method="filter_tag", help_text="Devices with every one of these tags (comma-separated).")
    product = filters.CharFilter(field_name="product")
    online = filters.BooleanFilter(field_name="online")
    enabled = filters.BooleanFilter(field_name="enabled")
    group = filters.CharFilter(field_name="groups__name", help_text="Devices in this group (its name).")

    class Meta:
        model = Device
        fields = ["tag", "product", "online", "enabled", "group"]

    def filter_tag(self, queryset, name, value):
        wanted = [tag.strip() for tag in value.split(",") if tag.strip()]
        return queryset.filter(tags__contains=wanted) if wanted else queryset


class DevicePagination(CursorPagination):
    ordering = ("device_id", "id")


class GroupPagination(CursorPagination):
    ordering = ("name", "id")


class HistoryPagination(CursorPagination):
    ordering = ("-version", "-id")


class JsonParser(parsers.JSONParser):
    """DRF's JSON parser, but a body nested past Python's recursion limit (1 MiB of `[`) is a 400, not a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - the body nests too deeply.") from None


class CsvParser(parsers.BaseParser):
    """The raw bytes of a CSV upload (`text/csv`, optionally `Content-Encoding: gzip`); iot.csv_import reads them."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read() if stream is not None else b""


# --- views -----------------------------------------------------------------------------------------------------


class _DeploymentScopedViewSet(ScopedViewSet):
    """Resources under one Premium deployment: the tenant is the project in the URL, the deployment narrows."""

    scope_level = "project"
    parser_classes = [JsonParser]
    deployment_path = "deployment"
    # Reads too answer 409 once the deployment is being deleted, or (an edge node's bridge file) has no address yet.
    read_conflicts = True

    def narrow_queryset(self, queryset):
        return queryset.filter(**{f"{self.deployment_path}__public_id": self.kwargs["dep"]})

    def deployment(self) -> Deployment:
        if not hasattr(self, "_deployment"):
            found = (
                deployment_selectors.deployment_queryset()
                .filter(project=self.project, public_id=self.kwargs["dep"])
                .first()
            )
            if found is None or self.project is None:
                raise exceptions.NotFound("No such deployment.")
            found.project = self.project
            services.deployment_check_premium(found)
            self._deployment = found
        return self._deployment


class DeviceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _DeploymentScopedViewSet):
    queryset = selectors.device_queryset()
    tenant_field = "deployment__project"
    lookup_field = "device_id"
    lookup_url_kwarg = "device"
    serializer_class = DeviceSerializer
    filterset_class = DeviceFilter
    pagination_class = DevicePagination
    required_scopes = {
        "list": "device:read",
        "retrieve": "device:read",
        "create": "device:write",
        "partial_update": "device:write",
        "destroy": "device:write",
        "rotate_credentials": "device:write",
        "shadow": "device:read",
        "shadow_update": "device:write",
        "shadow_delete": "device:write",
    }

    def _device(self) -> Device:
        self.deployment()
        device = self.get_object()
        device.deployment = self.deployment()
        return device

    @extend_schema(summary="List devices (filter by tag, product, online, enabled, group)", tags=DEVICES_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a device, with its online state", tags=DEVICES_TAG)
    def retrieve(self, request, *args, **kwargs):
        return Response(DeviceSerializer(self._device()).data)

    @extend_schema(
        summary="Register a device; its MQTT credentials are answered this once",
        tags=DEVICES_TAG,
        request=DeviceCreateSerializer,
        responses={201: DeviceIssuedSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = DeviceCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device, credentials, operation = services.device_create(
            deployment=deployment, actor=self.principal, **data.validated_data
        )
        context = {"credentials": credentials, "operation": operation.public_id}
        return Response(DeviceIssuedSerializer(device, context=context).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a device; `enabled: false` disconnects it and refuses its next connection",
        tags=DEVICES_TAG,
        request=DeviceUpdateSerializer,
        responses={200: DeviceChangedSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        device = self._device()
        data = DeviceUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device, operation = services.device_update(device=device, actor=self.principal, **data.validated_data)
        context = {"operation": operation.public_id if operation else None}
        return Response(DeviceChangedSerializer(device, context=context).data)

    @extend_schema(
        summary="Delete a device, its shadow and history; it is disconnected", tags=DEVICES_TAG, responses={204: None}
    )
    def destroy(self, request, *args, **kwargs):
        services.device_delete(device=self._device(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Issue new MQTT credentials for a device (answered this once; the old ones stop working)",
        description="The body may be empty (same credential type as now). A replaced certificate is revoked "
        "(superseded) and a client still connected with it is disconnected.",
        tags=DEVICES_TAG,
        request=DeviceRotateSerializer,
        responses={201: DeviceIssuedSerializer},
    )
    def rotate_credentials(self, request, *args, **kwargs):
        device = self._device()
        data = DeviceRotateSerializer(data=request.data if request.data else {})
        data.is_valid(raise_exception=True)
        device, credentials, operation = services.device_credentials_rotate(
            device=device, actor=self.principal, **data.validated_data
        )
        context = {"credentials": credentials, "operation": operation.public_id}
        return Response(DeviceIssuedSerializer(device, context=context).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="A device's shadow: desired, reported, delta, per-field timestamps, version",
        tags=SHADOW_TAG,
        responses={200: ShadowDocumentSerializer},
    )
    def shadow(self, request, *args, **kwargs):
        return Response(selectors.shadow_get(device=self._device()))

    @extend_schema(
        summary="Change a device's desired state (the device receives the delta on devices/{id}/shadow/update/delta)",
        tags=SHADOW_TAG,
        request=ShadowUpdateSerializer,
        responses={200: ShadowAcceptedSerializer},
    )
    def shadow_update(self, request, *args, **kwargs):
        device = self._device()
        return Response(services.shadow_update_desired(device=device, actor=self.principal, body=request.data))

    @extend_schema(
        summary="Delete a device's shadow (its version keeps counting)",
        tags=SHADOW_TAG,
        parameters=[
            OpenApiParameter(
                "version",
                OpenApiTypes.INT,
                OpenApiParameter.QUERY,
                description="Refused with 409 unless the shadow is at this version.",
            )
        ],
        responses={200: ShadowDeletedSerializer},
    )
    def shadow_delete(self, request, *args, **kwargs):
        device = self._device()
        raw = request.query_params.get("version")
        version = None
        if raw is not None:
            version = whole_number(raw)
            if version is None:
                raise ValidationFailed({"version": "A non-negative whole number."})
        return Response(services.shadow_delete(device=device, actor=self.principal, version=version))


class ShadowHistoryViewSet(mixins.ListModelMixin, _DeploymentScopedViewSet):
    queryset = ShadowChange.objects.all()
    tenant_field = "device__deployment__project"
    deployment_path = "device__deployment"
    serializer_class = ShadowChangeSerializer
    pagination_class = HistoryPagination
    required_scopes = {"list": "device:read"}

    def narrow_queryset(self, queryset):
        return super().narrow_queryset(queryset).filter(device__device_id=self.kwargs["device"])

    @extend_schema(summary="Every accepted change of a device's shadow, newest first", tags=SHADOW_TAG)
    def list(self, request, *args, **kwargs):
        deployment = self.deployment()
        if not Device.objects.filter(deployment=deployment, device_id=self.kwargs["device"]).exists():
            raise exceptions.NotFound()
        return super().list(request, *args, **kwargs)


class DeviceImportViewSet(_DeploymentScopedViewSet):
    queryset = Device.objects.all()
    tenant_field = "deployment__project"
    parser_classes = [CsvParser]
    required_scopes = {"create": "device:write"}

    @extend_schema(
        summary="Import up to 10,000 devices from CSV; any bad row imports nothing and is reported",
        description=(
            "Body: a CSV file (`Content-Type: text/csv`, UTF-8, optionally `Content-Encoding: gzip`), first line "
            "the column names: `device_id` (required), `name`, `product`, `tags` (separated by `;`), `attributes` "
            "(a JSON object), `groups` (names of existing groups, separated by `;`), `enabled` (true/false). "
            "Errors name `rows.<line>.<column>` (the header is line 1)."
        ),
        tags=DEVICES_TAG,
        request={"text/csv": {"type": "string"}},
        responses={201: DeviceImportResultSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = request.data
        if not isinstance(data, bytes):
            # DRF answers an empty body with empty data, whatever the content type.
            if not request.content_type.startswith(CsvParser.media_type):
                raise ValidationFailed("Send the CSV as the body, with Content-Type: text/csv.")
            data = b""
        imported, operation = services.devices_import(
            deployment=deployment,
            actor=self.principal,
            data=data,
            content_encoding=request.META.get("HTTP_CONTENT_ENCODING", ""),
        )
        body = {
            "imported": len(imported),
            "operation": operation.public_id,
            "devices": [
                {
                    "id": device.public_id,
                    "device_id": device.device_id,
                    "credentials": credentials_body(credentials),
                }
                for device, credentials in imported
            ],
        }
        return Response(body, status=status.HTTP_201_CREATED)


class DeviceGroupViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _DeploymentScopedViewSet):
    queryset = DeviceGroup.objects.all()
    tenant_field = "deployment__project"
    lookup_field = "name"
    lookup_url_kwarg = "group"
    serializer_class = DeviceGroupSerializer
    pagination_class = GroupPagination
    required_scopes = {
        "list": "device:read",
        "retrieve": "device:read",
        "create": "device:write",
        "partial_update": "device:write",
        "destroy": "device:write",
    }

    def _group(self) -> DeviceGroup:
        deployment = self.deployment()
        group = self.get_object()
        group.deployment = deployment
        return group

    @extend_schema(summary="List device groups", tags=DEVICES_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a device group", tags=DEVICES_TAG)
    def retrieve(self, request, *args, **kwargs):
        return Response(DeviceGroupSerializer(self._group()).data)

    @extend_schema(
        summary="Create a device group",
        tags=DEVICES_TAG,
        request=DeviceGroupCreateSerializer,
        responses={201: DeviceGroupSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = DeviceGroupCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        group = services.device_group_create(deployment=deployment, actor=self.principal, **data.validated_data)
        return Response(DeviceGroupSerializer(group).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a device group's description",
        tags=DEVICES_TAG,
        request=DeviceGroupUpdateSerializer,
        responses={200: DeviceGroupSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        group = self._group()
        data = DeviceGroupUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        group = services.device_group_update(group=group, actor=self.principal, **data.validated_data)
        return Response(DeviceGroupSerializer(group).data)

    @extend_schema(summary="Delete a device group (its devices stay)", tags=DEVICES_TAG, responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.device_group_delete(group=self._group(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)
