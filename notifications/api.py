"""REST API for notification channels: create, change, delete, send a test, and read each channel's deliveries.

Thin: strict input serializers, ScopedViewSet resolves the tenant and checks the scope, one service call, serialize.
Another organization's channel is a 404 like a missing one. A channel's credentials are never in an answer.
"""

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import mixins, serializers, status
from rest_framework.response import Response

from controlplane.api.serializers import InputSerializer, PlainTextField
from controlplane.api.views import ScopedViewSet
from notifications import selectors, services
from notifications.models import Delivery, NotificationChannel

CHANNELS_TAG = ["notification channels"]


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean, never "true" or 1."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


# --- Notification channels ----------------------------------------------------------------------------------------

_CHANNEL_EXAMPLE = {
    "id": "chn_7f3k2m9q4x8c1v5b6n0z",
    "name": "On-call webhook",
    "type": "webhook",
    "config": {"url": "https://hooks.example.com/mqtt", "headers": {"X-Team": "…"}},
    "is_default": True,
    "platform_events": True,
    "enabled": True,
    "failing_since": None,
    "created_at": "2026-11-01T09:30:00Z",
}


@extend_schema_serializer(examples=[OpenApiExample("Channel", value=_CHANNEL_EXAMPLE, response_only=True)])
class NotificationChannelSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    config = serializers.SerializerMethodField(
        help_text=(
            "The config as it may be shown: a webhook URL's userinfo and query values, every header value and a "
            "Slack hook's path are replaced by `…` (they are stored encrypted). To change one header, send the "
            "headers back with `…` for those to keep."
        )
    )

    class Meta:
        model = NotificationChannel
        fields = [
            "id",
            "name",
            "type",
            "config",
            "is_default",
            "platform_events",
            "enabled",
            "failing_since",
            "created_at",
        ]

    def get_config(self, obj) -> dict:
        # Stored masked: credentials live only in the encrypted copy.
        return obj.config


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Created webhook channel", value={**_CHANNEL_EXAMPLE, "secret": "whsec_Jx3…"}, response_only=True
        )
    ]
)
class NotificationChannelCreatedSerializer(NotificationChannelSerializer):
    secret = serializers.CharField(
        allow_null=True,
        read_only=True,
        help_text=(
            'Webhook only, shown once: verify `X-Signature: t=<unix>,v1=<hex>` as HMAC-SHA256(secret, "<t>.<body>").'
        ),
    )

    class Meta(NotificationChannelSerializer.Meta):
        fields = [*NotificationChannelSerializer.Meta.fields, "secret"]


class NotificationChannelCreateSerializer(InputSerializer):
    name = PlainTextField(max_length=100)
    type = serializers.ChoiceField(choices=NotificationChannel.Type.choices)
    config = serializers.DictField(
        help_text=(
            "email: {addresses: [...]}; webhook: {url, headers}; slack: {url} (an incoming-webhook URL); "
            "pagerduty: {routing_key} (Events API v2 integration key)."
        )
    )
    is_default = StrictBooleanField(default=True)
    platform_events = StrictBooleanField(default=True)
    enabled = StrictBooleanField(default=True)


class NotificationChannelUpdateSerializer(InputSerializer):
    name = PlainTextField(max_length=100, required=False)
    config = serializers.DictField(required=False)
    is_default = StrictBooleanField(required=False)
    platform_events = StrictBooleanField(required=False)
    enabled = StrictBooleanField(required=False)


class DeliveryAttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    ok = serializers.BooleanField()
    status_code = serializers.IntegerField(allow_null=True)
    response_body = serializers.CharField()
    error = serializers.CharField()
    duration_ms = serializers.IntegerField()
    at = serializers.DateTimeField(source="created_at")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Delivery",
            value={
                "id": "dlv_7f3k2m9q4x8c1v5b6n0z",
                "kind": "fire",
                "status": "retrying",
                "attempts": 1,
                "alert": "alt_7f3k2m9q4x8c1v5b6n0z",
                "payload": {"event": "alert.firing"},
                "created_at": "2026-11-01T09:31:00Z",
                "next_attempt_at": "2026-11-01T09:31:30Z",
                "completed_at": None,
                "history": [
                    {
                        "number": 1,
                        "ok": False,
                        "status_code": 500,
                        "response_body": "oops",
                        "error": "HTTP 500",
                        "duration_ms": 12,
                        "at": "2026-11-01T09:31:00Z",
                    }
                ],
            },
            response_only=True,
        )
    ]
)
class DeliverySerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    alert = serializers.SerializerMethodField(help_text="The alert it told of (`alt_…`), or null.")
    history = DeliveryAttemptSerializer(source="attempt_rows", many=True, read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "kind",
            "status",
            "attempts",
            "alert",
            "payload",
            "created_at",
            "next_attempt_at",
            "completed_at",
            "history",
        ]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_alert(self, obj):
        return obj.alert_public_id or None


class NotificationChannelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = NotificationChannel.objects.all()
    lookup_url_kwarg = "channel"
    serializer_class = NotificationChannelSerializer
    required_scopes = {
        "list": "channel:read",
        "retrieve": "channel:read",
        "create": "channel:write",
        "partial_update": "channel:write",
        "destroy": "channel:write",
        "test": "channel:write",
        "deliveries": "channel:read",
    }
    # A webhook's host is resolved when the channel is saved: while DNS does not answer they answer 503.
    outside_service_actions = frozenset({"create", "partial_update"})

    @extend_schema(summary="List notification channels", tags=CHANNELS_TAG)
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a notification channel", tags=CHANNELS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Create a notification channel (a webhook's signing secret is shown once)",
        tags=CHANNELS_TAG,
        request=NotificationChannelCreateSerializer,
        responses={201: NotificationChannelCreatedSerializer},
    )
    def create(self, request, *args, **kwargs):
        data = NotificationChannelCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        channel, secret = services.channel_create(
            organization=self.organization, actor=self.principal, **data.validated_data
        )
        channel.secret = secret
        return Response(NotificationChannelCreatedSerializer(channel).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a notification channel",
        tags=CHANNELS_TAG,
        request=NotificationChannelUpdateSerializer,
        responses={200: NotificationChannelSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        data = NotificationChannelUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        channel = services.channel_update(channel=self.get_object(), actor=self.principal, **data.validated_data)
        return Response(NotificationChannelSerializer(channel).data)

    @extend_schema(summary="Delete a notification channel", tags=CHANNELS_TAG)
    def destroy(self, request, *args, **kwargs):
        services.channel_delete(channel=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Send a test notification through the channel",
        tags=CHANNELS_TAG,
        request=None,
        responses={202: DeliverySerializer},
    )
    def test(self, request, *args, **kwargs):
        delivery = services.channel_test(channel=self.get_object(), actor=self.principal)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Deliveries through the channel, each with every attempt and its response",
        description=(
            "Newest first. A delivery that succeeded or failed is kept for NOTIFICATION_HISTORY_DAYS (90 unless the "
            "operator set another number of days) after it finished; one still pending or retrying is always listed."
        ),
        tags=CHANNELS_TAG,
        responses={200: DeliverySerializer(many=True)},
    )
    def deliveries(self, request, *args, **kwargs):
        queryset = selectors.delivery_list(channel=self.get_object())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)
