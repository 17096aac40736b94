"""REST API of edge nodes (Premium): nodes, their credentials, the bridge file a node runs, and versions of their
desired configuration, under one deployment.

Thin: the scoped base (iot.api._DeploymentScopedViewSet) resolves the organization and project from the URL and
checks the scope (device:read, device:write, as for devices); the view parses, calls one service, serializes.
Another organization's node is a 404.
"""

from __future__ import annotations

from django.db.models import F
from django.http import HttpResponse
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import mixins, serializers, status
from rest_framework.response import Response

from controlplane.api.pagination import CursorPagination
from controlplane.api.serializers import BrokerTextField, InputSerializer
from controlplane.errors import Conflict, ValidationFailed
from iot import edge, edge_selectors, edge_services
from iot.api import _DeploymentScopedViewSet
from iot.edge_models import EdgeConfig, EdgeNode

EDGE_TAG = ["edge nodes (Premium)"]

_NODE_EXAMPLE = {
    "id": "edg_k2m9q4x8c1v5b6n0z7a3",
    "name": "gw-1",
    "kind": "mosquitto",
    "up_topics": ["sensors/#"],
    "down_topics": ["commands/#"],
    "topics": {
        "status": "edge/gw-1/status",
        "config": "edge/gw-1/config",
        "config_ack": "edge/gw-1/config/ack",
        "cloud_prefix": "edge/gw-1/",
    },
    "username": "$edge-5f0c8a2e9b6d4c1f",
    "online": True,
    "connected_at": "2026-11-02T10:00:03Z",
    "disconnected_at": None,
    "last_seen": "2026-11-02T10:00:03Z",
    "config": {"desired_version": 2, "applied_version": 1, "applied_at": "2026-11-02T09:00:00Z", "behind": True},
    "credentials_issued_at": "2026-11-02T08:00:00Z",
    "created_at": "2026-11-02T08:00:00Z",
    "updated_at": "2026-11-02T10:00:03Z",
}
_CREDENTIALS_EXAMPLE = {"username": "$edge-5f0c8a2e9b6d4c1f", "password": "Xq3v…shown-once…9kLm"}
_DOCUMENT_EXAMPLE = {
    "version": 2,
    "node": "gw-1",
    "kind": "mosquitto",
    "topics": {
        "up": [{"local": "sensors/#", "cloud": "edge/gw-1/sensors/#"}],
        "down": [{"cloud": "edge/gw-1/commands/#", "local": "commands/#"}],
    },
    "settings": {"sample_rate": 5},
    "ack": {"topic": "edge/config/ack", "payload": {"version": 2}},
}


class EdgeNodeConfigStateSerializer(serializers.Serializer):
    desired_version = serializers.IntegerField(help_text="The latest configuration version (0: none yet).")
    applied_version = serializers.IntegerField(help_text="The latest version the node acknowledged.")
    applied_at = serializers.DateTimeField(allow_null=True)
    behind = serializers.BooleanField(help_text="The node has not acknowledged the latest version.")


@extend_schema_serializer(examples=[OpenApiExample("Edge node", value=_NODE_EXAMPLE, response_only=True)])
class EdgeNodeSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    online = serializers.BooleanField(
        read_only=True, help_text="From the node's bridge: its status message, or its last will."
    )
    config = serializers.SerializerMethodField()
    topics = serializers.SerializerMethodField()

    class Meta:
        model = EdgeNode
        fields = [
            "id",
            "name",
            "kind",
            "up_topics",
            "down_topics",
            "topics",
            "username",
            "online",
            "connected_at",
            "disconnected_at",
            "last_seen",
            "config",
            "credentials_issued_at",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(EdgeNodeConfigStateSerializer)
    def get_config(self, obj) -> dict:
        return {
            "desired_version": obj.desired_version,
            "applied_version": obj.applied_version,
            "applied_at": serializers.DateTimeField().to_representation(obj.applied_at) if obj.applied_at else None,
            "behind": obj.behind,
        }

    def get_topics(self, obj) -> dict[str, str]:
        return {
            "status": edge.status_topic(obj.name),
            "config": edge.config_topic(obj.name),
            "config_ack": edge.ack_topic(obj.name),
            "cloud_prefix": edge.cloud_prefix(obj.name),
        }


class EdgeNodeCredentialsSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(help_text="Shown this once; only a hash is kept.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Edge node with its credentials",
            value={
                **_NODE_EXAMPLE,
                "online": False,
                "credentials": _CREDENTIALS_EXAMPLE,
                "operation": "op_q2w3e4r5t6y7u8i9o0pa",
                "bridge_config": "connection dep_k2m9q4x8c1v5b6n0z7a3-gw-1\naddress mqtt.example:8883\n…",
            },
            response_only=True,
        )
    ]
)
class EdgeNodeIssuedSerializer(EdgeNodeSerializer):
    credentials = serializers.SerializerMethodField()
    operation = serializers.SerializerMethodField(help_text="The configure operation that gives the broker its user.")
    bridge_config = serializers.SerializerMethodField(
        help_text="The bridge file with the password filled in (shown this once; GET …/config has a placeholder)."
    )

    class Meta(EdgeNodeSerializer.Meta):
        fields = [*EdgeNodeSerializer.Meta.fields, "credentials", "operation", "bridge_config"]

    @extend_schema_field(EdgeNodeCredentialsSerializer)
    def get_credentials(self, obj) -> dict:
        credentials = self.context["credentials"]
        return {"username": credentials.username, "password": credentials.password}

    def get_operation(self, obj) -> str:
        return self.context["operation"]

    def get_bridge_config(self, obj) -> str | None:
        bridge = edge_selectors.edge_bridge(node=obj, password=self.context["credentials"].password)
        return edge.render(bridge) if bridge is not None else None


class _TopicListField(serializers.ListField):
    child = BrokerTextField(max_length=edge.MAX_TOPIC_LENGTH, trim_whitespace=False)


class EdgeNodeCreateSerializer(InputSerializer):
    name = BrokerTextField(max_length=64, trim_whitespace=False, help_text=edge.NODE_NAME_RULE)
    kind = serializers.ChoiceField(choices=edge.KINDS)
    up_topics = _TopicListField(
        required=False, default=list, max_length=edge.MAX_TOPICS, help_text="Local topic filters sent up."
    )
    down_topics = _TopicListField(
        required=False,
        default=list,
        max_length=edge.MAX_TOPICS,
        help_text="Filters under edge/{node}/ on the deployment brought down (without the prefix).",
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Configuration version",
            value={
                "version": 2,
                "up_topics": ["sensors/#"],
                "down_topics": ["commands/#"],
                "settings": {"sample_rate": 5},
                "size": 246,
                "document": _DOCUMENT_EXAMPLE,
                "created_at": "2026-11-02T10:00:00Z",
                "published_at": "2026-11-02T10:00:01Z",
            },
            response_only=True,
        )
    ]
)
class EdgeConfigSerializer(serializers.ModelSerializer):
    class Meta:
        model = EdgeConfig
        fields = ["version", "up_topics", "down_topics", "settings", "size", "document", "created_at", "published_at"]


class EdgeConfigCreateSerializer(InputSerializer):
    up_topics = _TopicListField(required=False, max_length=edge.MAX_TOPICS, help_text="Default: the current ones.")
    down_topics = _TopicListField(required=False, max_length=edge.MAX_TOPICS, help_text="Default: the current ones.")
    settings = serializers.JSONField(required=False, help_text="A JSON object; the whole document at most 64 KiB.")


class EdgeNodeFilter(filters.FilterSet):
    online = filters.BooleanFilter(field_name="online")
    behind = filters.BooleanFilter(
        method="filter_behind", help_text="Nodes that have not applied their latest version."
    )
    kind = filters.ChoiceFilter(choices=[(k, k) for k in edge.KINDS])

    class Meta:
        model = EdgeNode
        fields = ["online", "behind", "kind"]

    def filter_behind(self, queryset, name, value):
        lagging = queryset.filter(applied_version__lt=F("desired_version"))
        return lagging if value else queryset.exclude(pk__in=lagging.values("pk"))


class EdgeNodePagination(CursorPagination):
    ordering = ("name", "id")


class EdgeConfigPagination(CursorPagination):
    ordering = ("-version", "-id")


class EdgeNodeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _DeploymentScopedViewSet):
    queryset = edge_selectors.edge_node_queryset()
    tenant_field = "deployment__project"
    lookup_field = "name"
    lookup_url_kwarg = "node"
    serializer_class = EdgeNodeSerializer
    filterset_class = EdgeNodeFilter
    pagination_class = EdgeNodePagination
    required_scopes = {
        "list": "device:read",
        "retrieve": "device:read",
        "create": "device:write",
        "destroy": "device:write",
        "rotate_credentials": "device:write",
        "bridge_config": "device:read",
    }

    def perform_content_negotiation(self, request, force=False):
        # The bridge file is served whatever Accept says; errors stay problem+json.
        return super().perform_content_negotiation(request, force=force or self.action == "bridge_config")

    def _node(self) -> EdgeNode:
        deployment = self.deployment()
        node = self.get_object()
        node.deployment = deployment
        return node

    @extend_schema(summary="List edge nodes (filter by online, behind, kind)", tags=EDGE_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an edge node: its state and configuration versions", tags=EDGE_TAG)
    def retrieve(self, request, *args, **kwargs):
        return Response(EdgeNodeSerializer(self._node()).data)

    @extend_schema(
        summary="Register an edge node; its MQTT credentials (and its bridge file) are answered this once",
        tags=EDGE_TAG,
        request=EdgeNodeCreateSerializer,
        responses={201: EdgeNodeIssuedSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = EdgeNodeCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node, credentials, operation = edge_services.edge_node_create(
            deployment=deployment, actor=self.principal, **data.validated_data
        )
        context = {"credentials": credentials, "operation": operation.public_id}
        return Response(EdgeNodeIssuedSerializer(node, context=context).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Delete an edge node: its bridge is refused from then on", tags=EDGE_TAG, responses={204: None}
    )
    def destroy(self, request, *args, **kwargs):
        edge_services.edge_node_delete(node=self._node(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Issue new MQTT credentials for an edge node (answered this once; the old ones stop working)",
        tags=EDGE_TAG,
        request=None,
        responses={201: EdgeNodeIssuedSerializer},
    )
    def rotate_credentials(self, request, *args, **kwargs):
        node, credentials, operation = edge_services.edge_node_credentials_rotate(
            node=self._node(), actor=self.principal
        )
        context = {"credentials": credentials, "operation": operation.public_id}
        return Response(EdgeNodeIssuedSerializer(node, context=context).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Download the node's bridge file (mosquitto `connection` section or NanoMQ HOCON `bridges.mqtt`)",
        description="Over mqtts with the deployment's CA when the deployment serves TLS, plain mqtt otherwise. "
        "The password is a placeholder: put in the one shown when the credentials were issued.",
        operation_id="organizations_projects_deployments_edge_nodes_config_retrieve",
        tags=EDGE_TAG,
        parameters=[
            OpenApiParameter(
                "ca_file",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                description="Where the node keeps the CA certificate (an absolute path); default "
                "/etc/mosquitto/certs/{dep}-ca.pem or /etc/nanomq/certs/{dep}-ca.pem.",
            )
        ],
        responses={
            (200, "text/plain"): OpenApiResponse(
                OpenApiTypes.STR,
                description="The bridge file.",
                examples=[
                    OpenApiExample(
                        "mosquitto",
                        value="connection dep_k2m9q4x8c1v5b6n0z7a3-gw-1\naddress mqtt.example:8883\n…",
                        media_type="text/plain",
                    )
                ],
            )
        },
    )
    def bridge_config(self, request, *args, **kwargs):
        node = self._node()
        ca_file = request.query_params.get("ca_file")
        if ca_file is not None:
            try:
                edge.ca_file(ca_file)
            except ValueError as exc:
                raise ValidationFailed({"ca_file": str(exc)}) from None
        bridge = edge_selectors.edge_bridge(node=node, ca_file=ca_file)
        if bridge is None:
            raise Conflict("The deployment has no address yet: download the bridge file once it has started.")
        response = HttpResponse(edge.render(bridge), content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{edge.filename(node.name, node.kind)}"'
        return response


class EdgeConfigViewSet(mixins.ListModelMixin, _DeploymentScopedViewSet):
    queryset = EdgeConfig.objects.all()
    tenant_field = "node__deployment__project"
    deployment_path = "node__deployment"
    serializer_class = EdgeConfigSerializer
    pagination_class = EdgeConfigPagination
    required_scopes = {"list": "device:read", "create": "device:write"}

    def narrow_queryset(self, queryset):
        return super().narrow_queryset(queryset).filter(node__name=self.kwargs["node"])

    def _node(self) -> EdgeNode:
        deployment = self.deployment()
        node = EdgeNode.objects.filter(deployment=deployment, name=self.kwargs["node"]).first()
        if node is None:
            from rest_framework.exceptions import NotFound

            raise NotFound()
        node.deployment = deployment
        return node

    @extend_schema(summary="Every version of an edge node's desired configuration, newest first", tags=EDGE_TAG)
    def list(self, request, *args, **kwargs):
        self._node()
        return super().list(request, *args, **kwargs)

    @extend_schema(
        summary="Set a new desired configuration; the node receives it retained on edge/{node}/config",
        description="Topic mappings (the current ones unless given) and `settings`, a JSON object; the published "
        'document is at most 64 KiB. The node acknowledges with {"version": n} on edge/{node}/config/ack.',
        tags=EDGE_TAG,
        request=EdgeConfigCreateSerializer,
        responses={201: EdgeConfigSerializer},
    )
    def create(self, request, *args, **kwargs):
        node = self._node()
        data = EdgeConfigCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        config = edge_services.edge_config_create(node=node, actor=self.principal, **data.validated_data)
        return Response(EdgeConfigSerializer(config).data, status=status.HTTP_201_CREATED)
