"""Read-only REST API over the audit log, filterable by actor, action, target and time range."""

import datetime

from django.core.exceptions import ValidationError
from django.db.models import Q
from django_filters import fields as filter_fields
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_serializer
from rest_framework import mixins, serializers

from audit.models import AuditEvent
from controlplane.api.views import ScopedViewSet


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Audit event",
            value={
                "id": "evt_k3j4h5g6f7d8s9a0q1w2",
                "action": "api_key.create",
                "target_type": "apikey",
                "target_id": "key_z9x8c7v6b5n4m3l2k1j0",
                "actor": "owner@acme.example",
                "api_key": None,
                "summary": {"name": "CI pipeline", "role": "project_administrator"},
                "via": "api",
                "ip": "203.0.113.7",
                "user_agent": "curl/8.5.0",
                "request_id": "5f0c8a2e9b6d4c1f8e7a6b5c4d3e2f10",
                "operation_id": "",
                "created_at": "2026-11-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class AuditEventSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    actor = serializers.CharField(source="actor_email", read_only=True)
    api_key = serializers.CharField(source="api_key_prefix", read_only=True, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "action",
            "target_type",
            "target_id",
            "actor",
            "api_key",
            "summary",
            "via",
            "ip",
            "user_agent",
            "request_id",
            "operation_id",
            "created_at",
        ]


class UtcIsoDateTimeField(filter_fields.IsoDateTimeField):
    """An ISO 8601 instant, handed to the database in UTC: Python accepts UTC offsets up to 23:59 but PostgreSQL only
    up to 15:59 (a larger one was a 500), and an instant that has no UTC year from 1 to 9999 is a field error."""

    def to_python(self, value):
        result = super().to_python(value)
        if result is None:
            return None
        try:
            return result.astimezone(datetime.UTC)
        except OverflowError:
            raise ValidationError("Enter a date and time between the years 1 and 9999.", code="invalid") from None


class UtcIsoDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class AuditEventFilter(filters.FilterSet):
    actor = filters.CharFilter(method="filter_actor", help_text="An email address or a user id (`usr_…`).")
    action = filters.CharFilter(
        field_name="action", help_text="Exact action, or a prefix ending in '.' (`project.`).", method="filter_action"
    )
    target = filters.CharFilter(field_name="target_id")
    api_key = filters.CharFilter(field_name="api_key_prefix", help_text="The key's visible prefix.")
    since = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["actor", "action", "target", "api_key", "since", "until"]

    def filter_actor(self, queryset, name, value):
        return queryset.filter(Q(actor_email__iexact=value) | Q(actor__public_id=value))

    def filter_action(self, queryset, name, value):
        return queryset.filter(action__startswith=value) if value.endswith(".") else queryset.filter(action=value)


@extend_schema(tags=["audit"])
class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    lookup_url_kwarg = "event"
    filterset_class = AuditEventFilter
    required_scopes = {"list": "audit:read", "retrieve": "audit:read"}

    @extend_schema(summary="Search the audit log")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an audit event")
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)
