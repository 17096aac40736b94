"""REST API for the catalog and deployments: CRUD, lifecycle actions, operations, events, MQTT users, ACL, rate limits,
TLS certificates and the CA certificate download.

Thin: parse with a strict input serializer, let ScopedViewSet resolve the tenant and check the scope, call one
service, serialize. Asynchronous changes answer 202 with the deployment and its Operation.
"""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.response import Response

from controlplane.api.pagination import CursorPagination
from controlplane.api.serializers import BrokerTextField, InputSerializer, PlainTextField, StrictCharField
from controlplane.api.views import PublicAPIView, ScopedViewSet
from controlplane.validators import CONTROL_CHARACTER_CODE, find_control_character
from deployments import selectors, services, tls_services
from deployments.models import (
    AclRule,
    Deployment,
    DeploymentEvent,
    MaintenanceWindow,
    MqttUser,
    Operation,
    Plan,
    Price,
    RateLimitPolicy,
    Region,
    TlsCertificate,
)
from organizations import access
from projects.models import Project

DEPLOYMENTS_TAG = ["deployments"]
CONFIG_TAG = ["deployment configuration"]
DRY_RUN = OpenApiParameter(
    "dry_run",
    OpenApiTypes.BOOL,
    OpenApiParameter.QUERY,
    description="Answer what would happen (price per hour, disruption) without doing it.",
)

# --- Catalog -----------------------------------------------------------------------------------------------------


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Region",
            value={
                "code": "local",
                "display_name": "This machine",
                "provider": "local",
                "cloud_region": "local",
                "driver": "local",
                "is_open": True,
                "tiers": ["dedicated/1k", "dedicated/2k"],
            },
            response_only=True,
        )
    ]
)
class RegionSerializer(serializers.ModelSerializer):
    tiers = serializers.SerializerMethodField()

    class Meta:
        model = Region
        fields = ["code", "display_name", "provider", "cloud_region", "driver", "is_open", "tiers"]

    def get_tiers(self, obj) -> list[str]:
        return [f"{t.plan.code}/{t.code}" for t in obj.tiers.all()]


class CatalogTierSerializer(serializers.Serializer):
    code = serializers.CharField()
    max_connections = serializers.IntegerField()
    messages_per_second = serializers.IntegerField()


class CatalogPriceSerializer(serializers.ModelSerializer):
    tier = serializers.CharField(source="tier.code", allow_null=True, default=None)
    amount = serializers.DecimalField(max_digits=12, decimal_places=6, coerce_to_string=True)

    class Meta:
        model = Price
        fields = ["tier", "kind", "currency", "amount", "valid_from"]
        extra_kwargs = {
            "kind": {
                "help_text": "hourly, retention_hourly, annual, session_minutes_million, or traffic_gb: the price of "
                "one GiB (1024³ bytes) of traffic; the name keeps its historical `gb`."
            }
        }


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Plan",
            value={
                "code": "dedicated",
                "name": "Dedicated",
                "description": "One broker cluster per deployment, billed per hour.",
                "tiers": [{"code": "1k", "max_connections": 1000, "messages_per_second": 1000}],
                "prices": [
                    {
                        "tier": "1k",
                        "kind": "hourly",
                        "currency": "USD",
                        "amount": "0.360000",
                        "valid_from": "2024-01-01",
                    }
                ],
            },
            response_only=True,
        )
    ]
)
class PlanSerializer(serializers.ModelSerializer):
    tiers = CatalogTierSerializer(many=True)
    prices = CatalogPriceSerializer(many=True)

    class Meta:
        model = Plan
        fields = ["code", "name", "description", "tiers", "prices"]


class RegionListView(PublicAPIView):
    @extend_schema(summary="List regions", tags=["catalog"], responses={200: RegionSerializer(many=True)})
    def get(self, request):
        return Response(RegionSerializer(selectors.region_list(), many=True).data)


class PlanListView(PublicAPIView):
    @extend_schema(summary="List plans, tiers and prices", tags=["catalog"], responses={200: PlanSerializer(many=True)})
    def get(self, request):
        return Response(PlanSerializer(selectors.plan_list(), many=True).data)


# --- Deployments -------------------------------------------------------------------------------------------------

_DEPLOYMENT_EXAMPLE = {
    "id": "dep_m3k2x9q4b8c1v5n6z7a0",
    "name": "factory-floor",
    "project": "prj_7f3k2m9q4x8c1v5b6n0z",
    "plan": "dedicated",
    "tier": "1k",
    "region": "local",
    "desired_state": "running",
    "status": "running",
    "status_reason": "",
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "BrokerRunning",
            "message": "",
            "observed_generation": 1,
            "last_transition_time": "2026-11-02T10:00:01Z",
        }
    ],
    "generation": 1,
    "observed_generation": 1,
    "connection": {"host": "127.0.0.1", "ports": {"mqtt": 21883, "ws": 21884, "mqtts": 21885, "wss": 21886}},
    "deletion_protection": False,
    "last_error": "",
    "last_tier_change_at": None,
    "created_at": "2026-11-02T10:00:00Z",
    "updated_at": "2026-11-02T10:00:01Z",
    "deleted_at": None,
    "next_maintenance": None,
}
_MAINTENANCE_EXAMPLE = {
    "id": "mnt_h4j5k6l7m8n9p0q1r2s3",
    "deployment": "dep_m3k2x9q4b8c1v5n6z7a0",
    "starts_at": "2026-11-20T02:00:00Z",
    "ends_at": "2026-11-20T04:00:00Z",
    "emergency": False,
    "reason": "Broker security update (EMQX 5.8.4).",
    "status": "scheduled",
    "created_at": "2026-11-02T10:00:00Z",
    "cancelled_at": None,
}
_OPERATION_EXAMPLE = {
    "id": "op_q2w3e4r5t6y7u8i9o0pa",
    "deployment": "dep_m3k2x9q4b8c1v5n6z7a0",
    "kind": "create",
    "status": "pending",
    "target_generation": 1,
    "params": {"plan": "dedicated", "tier": "1k", "region": "local"},
    "error": "",
    "requested_by": "dev@acme.example",
    "created_at": "2026-11-02T10:00:00Z",
    "finished_at": None,
}


class ConnectionSerializer(serializers.Serializer):
    host = serializers.CharField()
    ports = serializers.DictField(
        child=serializers.IntegerField(), help_text="Protocol (mqtt, ws, mqtts, wss) -> port."
    )


class NextMaintenanceSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)

    class Meta:
        model = MaintenanceWindow
        fields = ["id", "starts_at", "ends_at", "emergency", "reason", "status"]


@extend_schema_serializer(examples=[OpenApiExample("Deployment", value=_DEPLOYMENT_EXAMPLE, response_only=True)])
class DeploymentSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    project = serializers.CharField(source="project.public_id", read_only=True)
    plan = serializers.CharField(source="plan.code", read_only=True)
    tier = serializers.CharField(source="tier.code", read_only=True)
    region = serializers.CharField(source="region.code", read_only=True)
    connection = serializers.SerializerMethodField()
    next_maintenance = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "project",
            "plan",
            "tier",
            "region",
            "emqx_version",
            "desired_state",
            "status",
            "status_reason",
            "conditions",
            "generation",
            "observed_generation",
            "connection",
            "deletion_protection",
            "last_error",
            "last_tier_change_at",
            "created_at",
            "updated_at",
            "deleted_at",
            "next_maintenance",
        ]

    @extend_schema_field(ConnectionSerializer)
    def get_connection(self, obj) -> dict:
        return {"host": obj.endpoints.get("host", ""), "ports": obj.endpoints.get("ports", {})}

    @extend_schema_field(
        NextMaintenanceSerializer(
            allow_null=True,
            help_text=(
                "The maintenance window in progress or the next one scheduled (its brokers restart once inside it; "
                "alerts are withheld during it), or null."
            ),
        )
    )
    def get_next_maintenance(self, obj) -> dict | None:
        window = selectors.next_maintenance(obj)
        return NextMaintenanceSerializer(window).data if window is not None else None


@extend_schema_serializer(examples=[OpenApiExample("Operation", value=_OPERATION_EXAMPLE, response_only=True)])
class OperationSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    deployment = serializers.CharField(source="deployment.public_id", read_only=True)
    requested_by = serializers.EmailField(source="requested_by.email", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Operation
        fields = [
            "id",
            "deployment",
            "kind",
            "status",
            "target_generation",
            "params",
            "error",
            "requested_by",
            "created_at",
            "finished_at",
        ]


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Accepted", value={"deployment": _DEPLOYMENT_EXAMPLE, "operation": _OPERATION_EXAMPLE}, response_only=True
        )
    ]
)
class DeploymentAcceptedSerializer(serializers.Serializer):
    deployment = DeploymentSerializer()
    operation = OperationSerializer()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Dry run",
            value={
                "dry_run": True,
                "action": "change_tier",
                "currency": "USD",
                "price_per_hour_before": "0.360000",
                "price_per_hour_after": "0.500000",
                "disruption": "restart",
                "summary": "Change the tier from 1k to 2k.",
            },
            response_only=True,
        )
    ]
)
class DryRunSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField(default=True)
    action = serializers.CharField()
    currency = serializers.CharField()
    price_per_hour_before = serializers.DecimalField(max_digits=12, decimal_places=6)
    price_per_hour_after = serializers.DecimalField(max_digits=12, decimal_places=6)
    disruption = serializers.ChoiceField(choices=["none", "rolling", "restart"])
    summary = serializers.CharField()


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Event",
            value={
                "kind": "status.changed",
                "message": "provisioning → running",
                "operation": "op_q2w3e4r5t6y7u8i9o0pa",
                "created_at": "2026-11-02T10:00:01Z",
            },
            response_only=True,
        )
    ]
)
class DeploymentEventSerializer(serializers.ModelSerializer):
    operation = serializers.CharField(source="operation.public_id", read_only=True, allow_null=True, default=None)

    class Meta:
        model = DeploymentEvent
        fields = ["kind", "message", "operation", "created_at"]


class DeploymentCreateSerializer(InputSerializer):
    name = PlainTextField(max_length=64)
    plan = StrictCharField(max_length=16, help_text="serverless | dedicated | premium | byoc")
    tier = StrictCharField(max_length=16, help_text="1k | 2k | 5k | 10k")
    region = StrictCharField(max_length=64, help_text="A region code from GET /api/v1/regions, e.g. local.")
    emqx_version = StrictCharField(
        max_length=16,
        required=False,
        help_text="Kubernetes (EMQX) regions only: the EMQX Enterprise release, 5.1.1 or later among those offered "
        "(default 5.8.6). Refused elsewhere.",
    )
    billing_cycle = serializers.ChoiceField(
        choices=["hourly", "annual"],
        default="hourly",
        required=False,
        help_text="`annual` buys the annual plan at once (prepaid invoice, 12 months, about 15% below hourly); "
        "it needs the deployment:annual scope.",
    )
    auto_renew = serializers.BooleanField(
        default=False, required=False, help_text="With `annual`: renew at the end of the term."
    )


class DeploymentUpdateSerializer(InputSerializer):
    name = PlainTextField(max_length=64, required=False)
    deletion_protection = serializers.BooleanField(
        required=False, help_text="Lifting it needs the deployment:write scope."
    )


class DeploymentActionSerializer(InputSerializer):
    pass


class ChangeTierSerializer(InputSerializer):
    tier = StrictCharField(max_length=16)


class MoveSerializer(InputSerializer):
    project = StrictCharField(max_length=32, help_text="Target project id (`prj_…`) in the same organization.")


def _dry_run_requested(request) -> bool:
    value = request.query_params.get("dry_run")
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise exceptions.ValidationError({"dry_run": ["Must be true or false."]})


def _accepted(result, http_status=status.HTTP_202_ACCEPTED) -> Response:
    if isinstance(result, services.DryRun):
        data = DryRunSerializer({"dry_run": True, **result.__dict__}).data
        return Response(data, status=status.HTTP_200_OK)
    deployment, operation = result
    return Response(
        {"deployment": DeploymentSerializer(deployment).data, "operation": OperationSerializer(operation).data},
        status=http_status,
    )


class DeploymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = selectors.deployment_detail_queryset()
    tenant_field = "project"
    scope_level = "project"
    lookup_url_kwarg = "dep"
    serializer_class = DeploymentSerializer
    required_scopes = {
        "list": "deployment:read",
        "retrieve": "deployment:read",
        "create": "deployment:write",
        "partial_update": "deployment:configure",
        "destroy": "deployment:write",
        "stop": "deployment:write",
        "start": "deployment:write",
        "restart": "deployment:write",
        "change_tier": "deployment:write",
        "move": "deployment:write",
    }

    def narrow_queryset(self, queryset):
        if self.action == "list" and self.request.query_params.get("include_deleted") != "true":
            return queryset.exclude(desired_state="deleted", deleted_at__isnull=False)
        return queryset

    @extend_schema(
        summary="List deployments",
        tags=DEPLOYMENTS_TAG,
        parameters=[
            OpenApiParameter(
                "include_deleted",
                OpenApiTypes.BOOL,
                OpenApiParameter.QUERY,
                description="Also list deleted deployments (kept for billing and history).",
            )
        ],
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a deployment, its status and connection details", tags=DEPLOYMENTS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Create a deployment",
        tags=DEPLOYMENTS_TAG,
        request=DeploymentCreateSerializer,
        parameters=[DRY_RUN],
        responses={202: DeploymentAcceptedSerializer, 200: DryRunSerializer},
    )
    def create(self, request, *args, **kwargs):
        data = DeploymentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        annual = values.pop("billing_cycle") == "annual"
        auto_renew = values.pop("auto_renew")
        if annual and not access.has_scope(
            self.principal, "deployment:annual", organization=self.organization, project=self.project
        ):
            raise exceptions.PermissionDenied("Buying an annual plan needs the deployment:annual scope.")
        result = services.deployment_create(
            project=self.project,
            actor=self.principal,
            dry_run=_dry_run_requested(request),
            billing_cycle="annual" if annual else "hourly",
            auto_renew=auto_renew,
            **values,
        )
        return _accepted(result)

    @extend_schema(
        summary="Rename a deployment or change its deletion protection",
        tags=DEPLOYMENTS_TAG,
        request=DeploymentUpdateSerializer,
        responses={200: DeploymentSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        deployment = self.get_object()
        data = DeploymentUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if "deletion_protection" in data.validated_data and not access.has_scope(
            self.principal, "deployment:write", organization=self.organization, project=self.project
        ):
            raise exceptions.PermissionDenied("Changing deletion protection needs the deployment:write scope.")
        deployment = services.deployment_update(deployment=deployment, actor=self.principal, **data.validated_data)
        return Response(DeploymentSerializer(selectors.deployment_detail_queryset().get(pk=deployment.pk)).data)

    @extend_schema(
        summary="Delete a deployment (409 while deletion protection is on)",
        tags=DEPLOYMENTS_TAG,
        request=None,
        responses={202: DeploymentAcceptedSerializer},
    )
    def destroy(self, request, *args, **kwargs):
        return _accepted(services.deployment_delete(deployment=self.get_object(), actor=self.principal))

    @extend_schema(
        summary="Stop a deployment (data and sessions are kept)",
        tags=DEPLOYMENTS_TAG,
        request=DeploymentActionSerializer,
        parameters=[DRY_RUN],
        responses={202: DeploymentAcceptedSerializer, 200: DryRunSerializer},
    )
    def stop(self, request, *args, **kwargs):
        deployment = self.get_object()
        DeploymentActionSerializer(data=request.data).is_valid(raise_exception=True)
        return _accepted(
            services.deployment_stop(deployment=deployment, actor=self.principal, dry_run=_dry_run_requested(request))
        )

    @extend_schema(
        summary="Start a stopped deployment",
        tags=DEPLOYMENTS_TAG,
        request=DeploymentActionSerializer,
        responses={202: DeploymentAcceptedSerializer},
    )
    def start(self, request, *args, **kwargs):
        deployment = self.get_object()
        DeploymentActionSerializer(data=request.data).is_valid(raise_exception=True)
        return _accepted(services.deployment_start(deployment=deployment, actor=self.principal))

    @extend_schema(
        summary="Restart for maintenance, keeping persistent sessions",
        tags=DEPLOYMENTS_TAG,
        request=DeploymentActionSerializer,
        parameters=[DRY_RUN],
        responses={202: DeploymentAcceptedSerializer, 200: DryRunSerializer},
    )
    def restart(self, request, *args, **kwargs):
        deployment = self.get_object()
        DeploymentActionSerializer(data=request.data).is_valid(raise_exception=True)
        return _accepted(
            services.deployment_restart(
                deployment=deployment, actor=self.principal, dry_run=_dry_run_requested(request)
            )
        )

    @extend_schema(
        summary="Change the tier (at most once per 12 hours)",
        tags=DEPLOYMENTS_TAG,
        request=ChangeTierSerializer,
        parameters=[DRY_RUN],
        responses={202: DeploymentAcceptedSerializer, 200: DryRunSerializer},
    )
    def change_tier(self, request, *args, **kwargs):
        deployment = self.get_object()
        data = ChangeTierSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _accepted(
            services.deployment_change_tier(
                deployment=deployment,
                actor=self.principal,
                tier=data.validated_data["tier"],
                dry_run=_dry_run_requested(request),
            )
        )

    @extend_schema(
        summary="Move to another project of the organization",
        tags=DEPLOYMENTS_TAG,
        request=MoveSerializer,
        responses={200: DeploymentAcceptedSerializer},
    )
    def move(self, request, *args, **kwargs):
        deployment = self.get_object()  # before the body: someone else's deployment is a 404, whatever was sent
        data = MoveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        target = Project.objects.filter(
            organization=self.organization, public_id=data.validated_data["project"]
        ).first()
        # Another organization's project, or one the caller cannot write to, reads exactly like a missing one.
        if target is None or not access.has_scope(
            self.principal, "deployment:write", organization=self.organization, project=target
        ):
            raise exceptions.ValidationError({"project": ["No such project in this organization."]})
        return _accepted(
            services.deployment_move(deployment=deployment, actor=self.principal, project=target),
            http_status=status.HTTP_200_OK,
        )


class _DeploymentChildViewSet(ScopedViewSet):
    """Resources under one deployment: the tenant is the project in the URL, the deployment narrows further."""

    tenant_field = "deployment__project"
    scope_level = "project"

    def narrow_queryset(self, queryset):
        return queryset.filter(deployment__public_id=self.kwargs["dep"])

    def deployment(self) -> Deployment:
        if not hasattr(self, "_deployment"):
            found = selectors.deployment_queryset().filter(project=self.project, public_id=self.kwargs["dep"]).first()
            if found is None:
                raise exceptions.NotFound("No such deployment.")
            found.project = self.project
            self._deployment = found
        return self._deployment


class OperationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _DeploymentChildViewSet):
    queryset = Operation.objects.select_related("deployment", "requested_by")
    lookup_url_kwarg = "op"
    serializer_class = OperationSerializer
    required_scopes = {"list": "deployment:read", "retrieve": "deployment:read"}

    @extend_schema(summary="List a deployment's operations", tags=DEPLOYMENTS_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an operation", tags=DEPLOYMENTS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)


class EventViewSet(mixins.ListModelMixin, _DeploymentChildViewSet):
    queryset = DeploymentEvent.objects.select_related("operation")
    serializer_class = DeploymentEventSerializer
    required_scopes = {"list": "deployment:read"}

    @extend_schema(summary="A deployment's timeline of events", tags=DEPLOYMENTS_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)


@extend_schema_serializer(
    examples=[OpenApiExample("Maintenance window", value=_MAINTENANCE_EXAMPLE, response_only=True)]
)
class MaintenanceWindowSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    deployment = serializers.CharField(source="deployment.public_id", read_only=True)

    class Meta:
        model = MaintenanceWindow
        fields = [
            "id",
            "deployment",
            "starts_at",
            "ends_at",
            "emergency",
            "reason",
            "status",
            "created_at",
            "cancelled_at",
        ]


class MaintenancePagination(CursorPagination):
    ordering = ("-starts_at", "-id")


class MaintenanceWindowViewSet(mixins.ListModelMixin, _DeploymentChildViewSet):
    """Read-only: the platform's operators schedule maintenance, and the organization is notified as they do."""

    queryset = MaintenanceWindow.objects.select_related("deployment")
    serializer_class = MaintenanceWindowSerializer
    pagination_class = MaintenancePagination
    required_scopes = {"list": "deployment:read"}

    def narrow_queryset(self, queryset):
        queryset = super().narrow_queryset(queryset)
        wanted = self.request.query_params.get("status")
        if wanted is None:
            return queryset
        if wanted not in MaintenanceWindow.Status.values:
            raise exceptions.ValidationError({"status": [f"One of {', '.join(MaintenanceWindow.Status.values)}."]})
        return queryset.filter(status=wanted)

    @extend_schema(
        summary="A deployment's maintenance windows, latest first (announced 14 days ahead; 24 hours for an emergency)",
        tags=DEPLOYMENTS_TAG,
        parameters=[
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                enum=list(MaintenanceWindow.Status.values),
                description="Only windows in this status.",
            )
        ],
    )
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)


# --- Configuration: MQTT users, ACL rules, rate limits -----------------------------------------------------------


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "MQTT user",
            value={
                "id": "mqu_a1s2d3f4g5h6j7k8l9z0",
                "username": "sensor-17",
                "superuser": False,
                "operation": "op_q2w3e4r5t6y7u8i9o0pa",
                "created_at": "2026-11-02T10:00:00Z",
                "updated_at": "2026-11-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class MqttUserSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    superuser = serializers.BooleanField(source="is_superuser", read_only=True)
    operation = serializers.SerializerMethodField(help_text="The configure operation a write started.")

    class Meta:
        model = MqttUser
        fields = ["id", "username", "superuser", "operation", "created_at", "updated_at"]

    def get_operation(self, obj) -> str | None:
        return self.context.get("operation")


class MqttUserCreateSerializer(InputSerializer):
    username = BrokerTextField(max_length=128, trim_whitespace=False)
    password = StrictCharField(
        min_length=8,
        max_length=256,
        write_only=True,
        trim_whitespace=False,
        help_text="Write-only; stored as a PBKDF2-SHA512 hash.",
    )
    superuser = serializers.BooleanField(required=False, default=False)


class MqttUserUpdateSerializer(InputSerializer):
    password = StrictCharField(min_length=8, max_length=256, write_only=True, required=False, trim_whitespace=False)
    superuser = serializers.BooleanField(required=False)


class MqttUserViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _DeploymentChildViewSet):
    queryset = MqttUser.objects.all()
    lookup_url_kwarg = "user"
    serializer_class = MqttUserSerializer
    required_scopes = {
        "list": "deployment:read",
        "retrieve": "deployment:read",
        "create": "deployment:configure",
        "partial_update": "deployment:configure",
        "destroy": "deployment:configure",
    }

    @extend_schema(summary="List MQTT users", tags=CONFIG_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an MQTT user", tags=CONFIG_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Add an MQTT user (applied without dropping connected clients)",
        tags=CONFIG_TAG,
        request=MqttUserCreateSerializer,
        responses={201: MqttUserSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = MqttUserCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user, operation = services.mqtt_user_create(
            deployment=deployment,
            actor=self.principal,
            username=values["username"],
            password=values["password"],
            is_superuser=values["superuser"],
        )
        return Response(
            MqttUserSerializer(user, context={"operation": operation.public_id}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        summary="Change an MQTT user's password or superuser flag",
        tags=CONFIG_TAG,
        request=MqttUserUpdateSerializer,
        responses={200: MqttUserSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        user = self.get_object()
        data = MqttUserUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user, operation = services.mqtt_user_update(
            user=user, actor=self.principal, password=values.get("password"), is_superuser=values.get("superuser")
        )
        return Response(MqttUserSerializer(user, context={"operation": operation.public_id}).data)

    @extend_schema(summary="Remove an MQTT user", tags=CONFIG_TAG, responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.mqtt_user_delete(user=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AclPagination(CursorPagination):
    ordering = ("position", "id")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "ACL rule",
            value={
                "id": "acl_z9x8c7v6b5n4m3l2k1j0",
                "position": 0,
                "permission": "deny",
                "action": "publish",
                "topic": "factory/+/commands",
                "username": "sensor-17",
                "client_id": None,
                "operation": "op_q2w3e4r5t6y7u8i9o0pa",
                "created_at": "2026-11-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class AclRuleSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    operation = serializers.SerializerMethodField()

    class Meta:
        model = AclRule
        fields = ["id", "position", "permission", "action", "topic", "username", "client_id", "operation", "created_at"]

    def get_operation(self, obj) -> str | None:
        return self.context.get("operation")


class AclRuleCreateSerializer(InputSerializer):
    permission = serializers.ChoiceField(choices=AclRule.Permission.choices)
    action = serializers.ChoiceField(choices=AclRule.Action.choices)
    topic = BrokerTextField(
        max_length=1024,
        trim_whitespace=False,
        allow_blank=True,
        help_text="A topic filter; '+' and '#' only as whole levels, '#' last; no control characters; no '${' and "
        "not starting with 'eq ' (EMQX would read a placeholder or an exact match; mosquitto would not).",
    )
    username = BrokerTextField(max_length=128, required=False, allow_null=True, default=None, trim_whitespace=False)
    client_id = BrokerTextField(max_length=128, required=False, allow_null=True, default=None, trim_whitespace=False)
    position = serializers.IntegerField(
        min_value=0,
        max_value=2**31 - 1,
        required=False,
        allow_null=True,
        default=None,
        help_text="0 is evaluated first; default: last.",
    )


class AclRuleUpdateSerializer(InputSerializer):
    permission = serializers.ChoiceField(choices=AclRule.Permission.choices, required=False)
    action = serializers.ChoiceField(choices=AclRule.Action.choices, required=False)
    topic = BrokerTextField(max_length=1024, trim_whitespace=False, allow_blank=True, required=False)
    username = BrokerTextField(max_length=128, required=False, allow_null=True, trim_whitespace=False)
    client_id = BrokerTextField(max_length=128, required=False, allow_null=True, trim_whitespace=False)
    position = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False)


class AclRuleViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _DeploymentChildViewSet):
    queryset = AclRule.objects.all()
    lookup_url_kwarg = "rule"
    serializer_class = AclRuleSerializer
    pagination_class = AclPagination
    required_scopes = {
        "list": "deployment:read",
        "retrieve": "deployment:read",
        "create": "deployment:configure",
        "partial_update": "deployment:configure",
        "destroy": "deployment:configure",
    }

    @extend_schema(summary="List ACL rules in evaluation order (first match decides)", tags=CONFIG_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an ACL rule", tags=CONFIG_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Add an ACL rule", tags=CONFIG_TAG, request=AclRuleCreateSerializer, responses={201: AclRuleSerializer}
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = AclRuleCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rule, operation = services.acl_rule_create(deployment=deployment, actor=self.principal, **data.validated_data)
        return Response(
            AclRuleSerializer(rule, context={"operation": operation.public_id}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        summary="Change or reorder an ACL rule",
        tags=CONFIG_TAG,
        request=AclRuleUpdateSerializer,
        responses={200: AclRuleSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        rule = self.get_object()
        data = AclRuleUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rule, operation = services.acl_rule_update(rule=rule, actor=self.principal, **data.validated_data)
        return Response(AclRuleSerializer(rule, context={"operation": operation.public_id}).data)

    @extend_schema(summary="Remove an ACL rule", tags=CONFIG_TAG, responses={204: None})
    def destroy(self, request, *args, **kwargs):
        services.acl_rule_delete(rule=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RateLimitPolicySerializer(serializers.Serializer):
    level = serializers.ChoiceField(choices=RateLimitPolicy.Level.choices)
    max_conn_rate = serializers.IntegerField(
        min_value=1,
        max_value=RateLimitPolicy.MAX_RATES["max_conn_rate"],
        required=False,
        allow_null=True,
        default=None,
        help_text="New connections per second.",
    )
    messages_rate = serializers.IntegerField(
        min_value=1,
        max_value=RateLimitPolicy.MAX_RATES["messages_rate"],
        required=False,
        allow_null=True,
        default=None,
        help_text="Messages per second.",
    )
    bytes_rate = serializers.IntegerField(
        min_value=1,
        max_value=RateLimitPolicy.MAX_RATES["bytes_rate"],
        required=False,
        allow_null=True,
        default=None,
        help_text="Bytes per second.",
    )


class RateLimitPolicyInputSerializer(InputSerializer, RateLimitPolicySerializer):
    pass


class DeploymentRateLimitsUpdateSerializer(InputSerializer):
    policies = RateLimitPolicyInputSerializer(many=True, max_length=4)


class HonouredPolicySerializer(RateLimitPolicySerializer):
    honoured = serializers.ListField(
        child=serializers.CharField(), help_text="The fields of this level the deployment's brokers enforce."
    )


class EmqxEnforcementSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="max_conn_rate | messages_rate | bytes_rate")
    emqx_versions = serializers.CharField(help_text="The EMQX releases this applies to, e.g. 5.9.0 and later.")
    emqx_key = serializers.CharField(help_text="The EMQX configuration key the limit is rendered into.")
    scope = serializers.CharField(help_text="What one EMQX bucket covers: per client, per listener per node...")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Rate limits",
            value={
                "policies": [
                    {"level": "global", "max_conn_rate": 100, "messages_rate": 1000, "bytes_rate": None, "honoured": []}
                ],
                "driver": "local",
                "honoured": {"global": [], "zone": [], "listener": [], "connection": []},
                "note": "Not enforced: this region runs mosquitto, which has no rate limiting at any level.",
                "emqx_enforcement": None,
                "emqx_version": None,
                "operation": "op_q2w3e4r5t6y7u8i9o0pa",
            },
            response_only=True,
        )
    ],
    many=False,  # the answer of the `list` action is this one object, not a page
)
class DeploymentRateLimitsSerializer(serializers.Serializer):
    policies = HonouredPolicySerializer(many=True)
    driver = serializers.CharField()
    honoured = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Per level, the fields enforced in this deployment's region.",
    )
    note = serializers.CharField()
    emqx_enforcement = serializers.DictField(
        child=EmqxEnforcementSerializer(many=True),
        read_only=True,
        allow_null=True,
        help_text="Kubernetes (EMQX) regions: per level, what each EMQX release enforces and where. No EMQX "
        "limiter is cluster-wide; see `scope`. Null in other regions.",
    )
    emqx_version = serializers.CharField(
        read_only=True, allow_null=True, help_text="The EMQX release of this deployment, or null outside EMQX."
    )
    operation = serializers.CharField(allow_null=True)


class RateLimitViewSet(_DeploymentChildViewSet):
    queryset = Deployment.objects.none()  # the policies are read through the deployment
    tenant_field = "project"
    required_scopes = {"list": "deployment:read", "update": "deployment:configure"}

    def _answer(self, deployment, operation=None) -> Response:
        capabilities = selectors.driver_capabilities(deployment.region)
        honoured = capabilities["rate_limits"]
        policies = [
            {
                "level": p.level,
                "max_conn_rate": p.max_conn_rate,
                "messages_rate": p.messages_rate,
                "bytes_rate": p.bytes_rate,
                "honoured": honoured[p.level],
            }
            for p in selectors.rate_limit_list(deployment=deployment)
        ]
        return Response(
            DeploymentRateLimitsSerializer(
                {
                    "policies": policies,
                    "driver": capabilities["driver"],
                    "honoured": honoured,
                    "note": capabilities["rate_limits_note"],
                    "emqx_enforcement": capabilities.get("emqx_enforcement"),
                    "emqx_version": deployment.emqx_version or None,
                    "operation": operation.public_id if operation else None,
                }
            ).data
        )

    @extend_schema(
        summary="Rate-limit policies per level, and which the region enforces",
        tags=CONFIG_TAG,
        responses={200: DeploymentRateLimitsSerializer},
    )
    def list(self, request, *args, **kwargs):
        return self._answer(self.deployment())

    @extend_schema(
        summary="Replace the rate-limit policies (a level may not exceed its parent)",
        tags=CONFIG_TAG,
        request=DeploymentRateLimitsUpdateSerializer,
        responses={200: DeploymentRateLimitsSerializer},
    )
    def update(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = DeploymentRateLimitsUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        _rows, operation = services.rate_limits_replace(
            deployment=deployment, actor=self.principal, policies=data.validated_data["policies"]
        )
        return self._answer(deployment, operation)


# --- TLS: certificates and the control plane's CA ----------------------------------------------------------------

TLS_TAG = ["deployment TLS"]
_PEM_EXAMPLE = "-----BEGIN CERTIFICATE-----\nMIIBvDCCAWKgAwIBAgIU…\n-----END CERTIFICATE-----\n"
_TLS_CERTIFICATE_EXAMPLE = {
    "id": "crt_k4m2x9q4b8c1v5n6z7a0",
    "deployment": "dep_m3k2x9q4b8c1v5n6z7a0",
    "kind": "server",
    "source": "customer",
    "active": True,
    "subject": "CN=mqtt.acme.example,O=Acme",
    "common_name": "mqtt.acme.example",
    "issuer": "CN=Acme Issuing CA,O=Acme",
    "sans": ["mqtt.acme.example"],
    "not_before": "2026-11-01T00:00:00Z",
    "not_after": "2027-11-01T00:00:00Z",
    "fingerprint_sha256": "3F:9A:…:C2",
    "key_type": "EC P-256",
    "certificate": _PEM_EXAMPLE,
    "chain": _PEM_EXAMPLE,
    "host_names": ["mqtt.acme.example"],
    "require_client_certificate": None,
    "use_identity_as_username": None,
    "warnings": [
        "The certificate's names do not cover 127.0.0.1, this deployment's own address: clients connecting to it "
        "by that name will refuse the certificate."
    ],
    "replaced": None,
    "operation": "op_q2w3e4r5t6y7u8i9o0pa",
    "created_at": "2026-11-02T10:00:00Z",
}


class PemTextField(StrictCharField):
    """PEM text: several lines, so line breaks (and only they, among control characters) are allowed; the content
    itself is parsed and re-encoded by deployments.tls before anything is stored."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("max_length", 65536)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        found = find_control_character(value.replace("\r", "").replace("\n", ""))
        if found is not None:
            raise serializers.ValidationError(
                f"PEM text may hold line breaks but no other control character; found U+{ord(found[1]):04X}.",
                code=CONTROL_CHARACTER_CODE,
            )
        return value


@extend_schema_serializer(
    examples=[OpenApiExample("Server certificate", value=_TLS_CERTIFICATE_EXAMPLE, response_only=True)]
)
class TlsCertificateSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    deployment = serializers.CharField(source="deployment.public_id", read_only=True)
    active = serializers.SerializerMethodField(
        help_text="Whether the TLS listeners use it now: a customer's server certificate replaces the issued one."
    )
    certificate = serializers.CharField(
        source="certificate_pem", read_only=True, help_text="PEM: the server certificate, or the client CA bundle."
    )
    chain = serializers.CharField(source="chain_pem", read_only=True, help_text="PEM: its issuers up to the root.")
    sans = serializers.ListField(child=serializers.CharField(), read_only=True, help_text="DNS names and IPs.")
    host_names = serializers.ListField(child=serializers.CharField(), read_only=True)
    warnings = serializers.ListField(child=serializers.CharField(), read_only=True)
    require_client_certificate = serializers.SerializerMethodField()
    use_identity_as_username = serializers.SerializerMethodField()
    replaced = serializers.SerializerMethodField(help_text="The certificate this upload replaced, if any.")
    operation = serializers.SerializerMethodField(help_text="The configure operation a write started.")

    class Meta:
        model = TlsCertificate
        fields = [
            "id",
            "deployment",
            "kind",
            "source",
            "active",
            "subject",
            "common_name",
            "issuer",
            "sans",
            "not_before",
            "not_after",
            "fingerprint_sha256",
            "key_type",
            "certificate",
            "chain",
            "host_names",
            "require_client_certificate",
            "use_identity_as_username",
            "warnings",
            "replaced",
            "operation",
            "created_at",
        ]

    def get_active(self, obj) -> bool:
        if obj.kind == TlsCertificate.Kind.CLIENT_CA or obj.source == TlsCertificate.Source.CUSTOMER:
            return True
        customer_servers = self.context.get("customer_server_deployments")
        if customer_servers is None:
            return not TlsCertificate.objects.filter(
                deployment_id=obj.deployment_id, kind="server", source="customer"
            ).exists()
        return obj.deployment_id not in customer_servers

    def get_require_client_certificate(self, obj) -> bool | None:
        return obj.require_client_certificate if obj.kind == TlsCertificate.Kind.CLIENT_CA else None

    def get_use_identity_as_username(self, obj) -> bool | None:
        return obj.use_identity_as_username if obj.kind == TlsCertificate.Kind.CLIENT_CA else None

    def get_replaced(self, obj) -> str | None:
        return self.context.get("replaced")

    def get_operation(self, obj) -> str | None:
        return self.context.get("operation")


class TlsCertificateCreateSerializer(InputSerializer):
    kind = serializers.ChoiceField(
        choices=TlsCertificate.Kind.choices,
        help_text="`server`: the certificate the TLS listeners serve (one-way TLS), replacing the issued one. "
        "`client_ca`: the CA that signs your clients' certificates (two-way TLS). A new one of a kind replaces the "
        "previous one.",
    )
    certificate = PemTextField(help_text="PEM. server: the certificate alone; client_ca: one or more CA certificates.")
    private_key = PemTextField(
        required=False,
        write_only=True,
        help_text="server only, required: the unencrypted PEM key (RSA 2048+ or EC P-256+). Write-only; kept "
        "encrypted, never shown again.",
    )
    chain = PemTextField(
        required=False,
        allow_blank=True,
        help_text="server only: the issuing certificates in order up to and including the root (empty for a "
        "self-signed certificate).",
    )
    host_names = serializers.ListField(
        child=PlainTextField(max_length=253),
        required=False,
        max_length=20,
        help_text="server only: the host names your clients connect to; each must be covered by the certificate.",
    )
    require_client_certificate = serializers.BooleanField(
        required=False,
        help_text="client_ca only (default true): refuse TLS clients without a certificate. Local regions "
        "(mosquitto) require it.",
    )
    use_identity_as_username = serializers.BooleanField(
        required=False,
        help_text="client_ca only (default false): the client certificate's common name is the MQTT username and "
        "no password is asked on mqtts/wss.",
    )


class TlsCertificateIssueSerializer(InputSerializer):
    extra_sans = serializers.ListField(
        child=PlainTextField(max_length=253),
        required=False,
        max_length=20,
        help_text="Names the certificate carries besides the deployment's own host names (kept on renewals): DNS "
        "names (RFC 1123) and IP addresses, at most 20, no wildcards. Omitted or empty: the deployment's names only.",
    )


class TlsCertificatePagination(CursorPagination):
    ordering = ("kind", "-created_at", "-id")


class TlsCertificateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, _DeploymentChildViewSet):
    """The deployment's certificates: the server certificate the control plane issued, the customer's own server
    certificate and client CA. Writes answer 201/204 and apply asynchronously (the returned operation)."""

    queryset = TlsCertificate.objects.select_related("deployment")
    lookup_url_kwarg = "cert"
    serializer_class = TlsCertificateSerializer
    pagination_class = TlsCertificatePagination
    required_scopes = {
        "list": "deployment:read",
        "retrieve": "deployment:read",
        "create": "deployment:configure",
        "destroy": "deployment:configure",
        "issue": "deployment:configure",
        "ca_pem": "deployment:read",
    }

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if "dep" in self.kwargs:
            context["customer_server_deployments"] = set(
                TlsCertificate.objects.filter(
                    deployment__public_id=self.kwargs["dep"], kind="server", source="customer"
                ).values_list("deployment_id", flat=True)
            )
        return context

    def perform_content_negotiation(self, request, force=False):
        # The PEM is served whatever Accept says; errors stay problem+json, so no PEM renderer is registered.
        return super().perform_content_negotiation(request, force=force or self.action == "ca_pem")

    @extend_schema(summary="List the deployment's TLS certificates", tags=TLS_TAG)
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a TLS certificate (never its key)", tags=TLS_TAG)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Add a server certificate (one-way TLS) or a client CA (two-way TLS)",
        description="Checked before anything is stored: the PEM parses, the key matches the certificate and is RSA "
        "2048+ or EC P-256+, every certificate is within its dates, the chain verifies up to its root, the names "
        "cover `host_names`. Names that do not cover the deployment's own address are a warning. Applied without "
        "dropping connected clients where the broker can reload it (see `warnings` and the operation).",
        tags=TLS_TAG,
        request=TlsCertificateCreateSerializer,
        responses={201: TlsCertificateSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = TlsCertificateCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        certificate, operation, replaced = tls_services.tls_certificate_create(
            deployment=deployment, actor=self.principal, **data.validated_data
        )
        context = {"operation": operation.public_id, "replaced": replaced}
        return Response(TlsCertificateSerializer(certificate, context=context).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Issue (or re-issue) the deployment's server certificate from the control plane's CA",
        description="A new key and certificate from the control plane's CA for the deployment's host names plus "
        "`extra_sans`, replacing the issued certificate (a rotation: new serial and fingerprint). The brokers take "
        "it up through the returned configure operation, reloading in place where the broker can. While a server "
        "certificate of your own exists it is still what the brokers serve (see `active` and `warnings`).",
        tags=TLS_TAG,
        request=TlsCertificateIssueSerializer,
        responses={201: TlsCertificateSerializer},
    )
    def issue(self, request, *args, **kwargs):
        deployment = self.deployment()
        data = TlsCertificateIssueSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        certificate, operation = tls_services.tls_certificate_issue(
            deployment=deployment, actor=self.principal, extra_sans=data.validated_data.get("extra_sans")
        )
        context = {"operation": operation.public_id}
        return Response(TlsCertificateSerializer(certificate, context=context).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Remove a certificate of your own (the issued server certificate is served again; removing the "
        "client CA turns two-way TLS off)",
        tags=TLS_TAG,
        responses={204: None},
    )
    def destroy(self, request, *args, **kwargs):
        tls_services.tls_certificate_delete(certificate=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Download the control plane's CA certificate, which signs the deployment's issued certificate",
        description="Clients that verify the broker (mqtts, wss) against this CA accept the certificate the control "
        "plane issued the deployment. While a server certificate of your own is served, verify against your own "
        "CA instead.",
        operation_id="organizations_projects_deployments_ca_pem_retrieve",
        tags=TLS_TAG,
        responses={
            (200, "application/x-pem-file"): OpenApiResponse(
                OpenApiTypes.STR,
                description="The CA certificate, PEM. Clients verify the broker's issued certificate against it.",
                examples=[OpenApiExample("CA", value=_PEM_EXAMPLE, media_type="application/x-pem-file")],
            )
        },
    )
    def ca_pem(self, request, *args, **kwargs):
        deployment = self.deployment()
        authority = tls_services.certificate_authority()
        response = HttpResponse(authority.certificate_pem, content_type="application/x-pem-file")
        response["Content-Disposition"] = f'attachment; filename="{deployment.public_id}-ca.pem"'
        return response
