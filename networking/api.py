"""REST API for a deployment's VPC peerings: list, create (202, the poll does the work), pre-flight validation,
detail, deletion protection, delete.

Thin: parse with a strict input serializer, let ScopedViewSet resolve the tenant and check the scope, call one
service, serialize. Another organization's deployment or peering is a 404, like a missing one.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import exceptions, mixins, serializers, status
from rest_framework.response import Response

from controlplane.api.serializers import InputSerializer, PlainTextField
from controlplane.api.views import ScopedViewSet
from deployments.models import Deployment
from deployments.selectors import deployment_queryset
from networking import checks, selectors, services
from networking.models import VpcPeering

TAGS = ["vpc peering"]

_AWS_EXAMPLE = {
    "id": "pcx_k3m9q4x8c1v5b6n0z7a2",
    "deployment": "dep_m3k2x9q4b8c1v5n6z7a0",
    "provider": "aws",
    "cidr": "10.1.0.0/16",
    "account_id": "222233334444",
    "vpc_id": "vpc-0a1b2c3d4e5f60718",
    "region": "eu-central-1",
    "project_id": None,
    "network": None,
    "tenant_id": None,
    "subscription_id": None,
    "resource_group": None,
    "vnet_name": None,
    "state": "awaiting_customer_action",
    "provider_state": "pending-acceptance",
    "provider_peering_id": "pcx-0f1e2d3c4b5a69788",
    "platform_cidr": "10.0.0.0/16",
    "customer_action": {
        "summary": "Accept peering connection pcx-0f1e2d3c4b5a69788 in AWS account 222233334444 (eu-central-1), then "
        "route the platform's network 10.0.0.0/16 through it from your VPC vpc-0a1b2c3d4e5f60718's route tables and "
        "allow it in your security groups.",
        "commands": [
            "aws ec2 accept-vpc-peering-connection --region eu-central-1 "
            "--vpc-peering-connection-id pcx-0f1e2d3c4b5a69788",
            "aws ec2 create-route --region eu-central-1 --route-table-id <your-route-table-id> "
            "--destination-cidr-block 10.0.0.0/16 --vpc-peering-connection-id pcx-0f1e2d3c4b5a69788",
        ],
        "status": "Pending Acceptance by 222233334444",
    },
    "awaiting_expires_at": "2026-11-09T10:00:03Z",
    "last_error": "",
    "deletion_protection": False,
    "created_at": "2026-11-02T10:00:00Z",
    "updated_at": "2026-11-02T10:00:03Z",
    "activated_at": None,
    "deleted_at": None,
}


class VpcPeeringCustomerActionSerializer(serializers.Serializer):
    summary = serializers.CharField()
    commands = serializers.ListField(child=serializers.CharField(), help_text="Run these in your own cloud account.")
    status = serializers.CharField(default="", help_text="What the provider reports now, e.g. what is still missing.")


def _nullable(help_text: str):
    return serializers.CharField(read_only=True, allow_null=True, help_text=help_text)


@extend_schema_serializer(examples=[OpenApiExample("AWS peering awaiting acceptance", value=_AWS_EXAMPLE)])
class VpcPeeringSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    deployment = serializers.CharField(source="deployment.public_id", read_only=True)
    account_id = _nullable("AWS: the customer's 12-digit account id.")
    vpc_id = _nullable("AWS: the customer's VPC (vpc-…).")
    region = _nullable("AWS: the customer VPC's region (the deployment's).")
    project_id = _nullable("GCP: the customer's project id.")
    network = _nullable("GCP: the customer's VPC network name.")
    tenant_id = _nullable("Azure: the customer's tenant (directory) id.")
    subscription_id = _nullable("Azure: the customer's subscription id.")
    resource_group = _nullable("Azure: the resource group of the customer's VNet.")
    vnet_name = _nullable("Azure: the customer's virtual network name.")
    provider_peering_id = serializers.SerializerMethodField(
        help_text="The provider's id of our side: AWS pcx-…, the GCP peering name, the Azure peering resource id."
    )
    platform_cidr = serializers.SerializerMethodField(help_text="The platform network's CIDR, to route on your side.")
    customer_action = serializers.SerializerMethodField(
        help_text="While awaiting_customer_action: the exact step to take in your cloud; else null."
    )
    awaiting_expires_at = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="While awaiting_customer_action: when the peering stops waiting for your step and fails as "
        "expired (what the platform created is removed; create it again then). Null in any other state.",
    )

    class Meta:
        model = VpcPeering
        fields = [
            "id",
            "deployment",
            "provider",
            "cidr",
            *checks.ALL_FIELDS,
            "state",
            "provider_state",
            "provider_peering_id",
            "platform_cidr",
            "customer_action",
            "awaiting_expires_at",
            "last_error",
            "deletion_protection",
            "created_at",
            "updated_at",
            "activated_at",
            "deleted_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "last_error": {
                "help_text": "Why the peering failed; while it retries, the last temporary error; on an active "
                "peering, what is not well though traffic flows (Azure: an address space added on either side that "
                "the peering has not synced, with provider_state e.g. 'Connected (LocalNotInSync)')."
            }
        }

    def to_representation(self, instance):
        data = super().to_representation(instance)
        theirs = checks.PROVIDER_FIELDS[instance.provider]
        for name in checks.ALL_FIELDS:
            if name not in theirs:
                data[name] = None
        return data

    def get_provider_peering_id(self, obj) -> str | None:
        ids = obj.provider_ids or {}
        if ids.get("created") is False:
            return None  # Azure: our side waits for the customer's role assignment and does not exist yet
        return ids.get("vpc_peering_connection_id") or ids.get("peering_id") or ids.get("peering_name") or None

    def get_platform_cidr(self, obj) -> str | None:
        return (obj.deployment.region.network or {}).get("cidr")

    @extend_schema_field(VpcPeeringCustomerActionSerializer(allow_null=True))
    def get_customer_action(self, obj) -> dict | None:
        if obj.state != VpcPeering.State.AWAITING_CUSTOMER_ACTION or not obj.customer_action:
            return None
        return VpcPeeringCustomerActionSerializer(obj.customer_action).data


_FIELD_HELP = {
    "account_id": "AWS: your 12-digit account id.",
    "vpc_id": "AWS: your VPC id (vpc-…).",
    "region": "AWS: your VPC's region; it must be the deployment's region.",
    "project_id": "GCP: your project id.",
    "network": "GCP: your VPC network's name.",
    "tenant_id": "Azure: your tenant (directory) id, a GUID.",
    "subscription_id": "Azure: your subscription id, a GUID.",
    "resource_group": "Azure: your VNet's resource group.",
    "vnet_name": "Azure: your virtual network's name.",
}


class VpcPeeringValidateSerializer(InputSerializer):
    provider = serializers.ChoiceField(choices=VpcPeering.Provider.choices, help_text="aws | gcp | azure")
    cidr = PlainTextField(max_length=64, help_text="Your network's CIDR, private (RFC 1918 or RFC 6598): 10.1.0.0/16.")

    def get_fields(self):
        fields = super().get_fields()
        for name in checks.ALL_FIELDS:
            fields[name] = PlainTextField(
                max_length=128, required=False, allow_null=True, default=None, help_text=_FIELD_HELP[name]
            )
        return fields


class VpcPeeringCreateSerializer(VpcPeeringValidateSerializer):
    deletion_protection = serializers.BooleanField(
        required=False, default=False, help_text="Refuse DELETE until it is lifted (PATCH deletion_protection)."
    )


class VpcPeeringUpdateSerializer(InputSerializer):
    deletion_protection = serializers.BooleanField(help_text="Lifting it needs the deployment:write scope.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Pre-flight passed",
            value={
                "valid": True,
                "provider": "aws",
                "cidr": "10.1.0.0/16",
                "platform_cidr": "10.0.0.0/16",
                "checks": [
                    "provider aws matches region eu-central",
                    "10.1.0.0/16 is private (RFC 1918)",
                    "10.1.0.0/16 does not overlap the platform's network 10.0.0.0/16",
                    "10.1.0.0/16 does not overlap a reserved range or another peering",
                ],
            },
            response_only=True,
        )
    ]
)
class VpcPeeringPreflightSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    provider = serializers.CharField()
    cidr = serializers.CharField()
    platform_cidr = serializers.CharField()
    checks = serializers.ListField(child=serializers.CharField())


class VpcPeeringViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = selectors.peering_queryset()
    tenant_field = "deployment__project"
    scope_level = "project"
    lookup_url_kwarg = "peering"
    serializer_class = VpcPeeringSerializer
    # A Project User may edit VPC peering (deployment:configure); lifting protection needs deployment:write.
    required_scopes = {
        "list": "deployment:read",
        "retrieve": "deployment:read",
        "create": "deployment:configure",
        "validate": "deployment:configure",
        "partial_update": "deployment:configure",
        "destroy": "deployment:configure",
    }

    def narrow_queryset(self, queryset):
        queryset = queryset.filter(deployment__public_id=self.kwargs["dep"])
        if self.action == "list" and self.request.query_params.get("include_deleted") != "true":
            queryset = queryset.exclude(state=VpcPeering.State.DELETED)
        return queryset

    def deployment(self) -> Deployment:
        if not hasattr(self, "_deployment"):
            found = deployment_queryset().filter(project=self.project, public_id=self.kwargs["dep"]).first()
            if found is None:
                raise exceptions.NotFound("No such deployment.")
            found.project = self.project
            self._deployment = found
        return self._deployment

    def _parsed(self, serializer_class) -> dict:
        data = serializer_class(data=self.request.data)
        data.is_valid(raise_exception=True)
        return dict(data.validated_data)

    @extend_schema(
        summary="List a deployment's VPC peerings",
        tags=TAGS,
        parameters=[
            OpenApiParameter(
                "include_deleted", OpenApiTypes.BOOL, OpenApiParameter.QUERY, description="Also list deleted peerings."
            )
        ],
    )
    def list(self, request, *args, **kwargs):
        self.deployment()
        return super().list(request, *args, **kwargs)

    @extend_schema(
        summary="Peer the deployment's network with your VPC or VNet (202: the peering is created asynchronously)",
        description=(
            "Runs the pre-flight (see `validate`), records the peering in state `pending` and answers at once; the "
            "platform then creates its side at the provider and the peering moves to `awaiting_customer_action` with "
            "the exact command to run on your side, then `active` (or `failed` with the provider's reason). A `local` "
            "region has no VPC: 409."
        ),
        tags=TAGS,
        request=VpcPeeringCreateSerializer,
        responses={202: VpcPeeringSerializer},
    )
    def create(self, request, *args, **kwargs):
        deployment = self.deployment()
        values = self._parsed(VpcPeeringCreateSerializer)
        peering = services.vpc_peering_create(deployment=deployment, actor=self.principal, **values)
        return Response(VpcPeeringSerializer(peering).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Run the pre-flight alone: private range, no overlap, provider and region match",
        description=(
            "Nothing is created. 200 when every check passes; 400 naming each field at fault and the range it "
            "conflicts with (the platform's network, a reserved range, another peering); 409 when the deployment "
            "cannot be peered at all (a `local` region)."
        ),
        tags=TAGS,
        request=VpcPeeringValidateSerializer,
        responses={200: VpcPeeringPreflightSerializer},
    )
    def validate(self, request, *args, **kwargs):
        deployment = self.deployment()
        values = self._parsed(VpcPeeringValidateSerializer)
        provider, cidr = values.pop("provider"), values.pop("cidr")
        checked = services.peering_preflight_check(
            deployment=deployment, actor=self.principal, provider=provider, cidr=cidr, fields=values
        )
        return Response(
            VpcPeeringPreflightSerializer(
                {
                    "valid": True,
                    "provider": checked.provider,
                    "cidr": checked.cidr,
                    "platform_cidr": checked.platform_cidr,
                    "checks": checked.checks,
                }
            ).data
        )

    @extend_schema(summary="Describe a VPC peering, its state and the step awaited from you", tags=TAGS)
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Turn a peering's deletion protection on or off",
        tags=TAGS,
        request=VpcPeeringUpdateSerializer,
        responses={200: VpcPeeringSerializer},
    )
    def partial_update(self, request, *args, **kwargs):
        peering = self.get_object()
        values = self._parsed(VpcPeeringUpdateSerializer)
        peering = services.vpc_peering_update(peering=peering, actor=self.principal, **values)
        return Response(VpcPeeringSerializer(peering).data)

    @extend_schema(
        summary="Delete a VPC peering (202; 409 while deletion protection is on)",
        tags=TAGS,
        request=None,
        responses={202: VpcPeeringSerializer},
    )
    def destroy(self, request, *args, **kwargs):
        peering = services.vpc_peering_delete(peering=self.get_object(), actor=self.principal)
        return Response(VpcPeeringSerializer(peering).data, status=status.HTTP_202_ACCEPTED)
