"""REST API for organizations, members, invitations and API keys. Thin: parse, call one service, serialize."""

from django.db import transaction
from django.db.models import Prefetch
from django_filters import rest_framework as filters
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
)
from rest_framework import generics, mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ErrorDetail
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response

from controlplane.api.serializers import InputSerializer, PlainTextField, StrictCharField
from controlplane.api.views import RateLimitHeadersMixin, ScopedViewSet
from organizations import access, services
from organizations.models import ApiKey, Invitation, Membership, Organization
from organizations.roles import ORGANIZATION_ROLE_CHOICES, PROJECT_ROLE_CHOICES, Role
from organizations.services import RoleTooHigh
from projects.models import ProjectGrant

ORG_ROLE_CHOICES = ORGANIZATION_ROLE_CHOICES

# --- Serializers -----------------------------------------------------------------------------------------------


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Organization",
            value={
                "id": "org_7f3k2m9q4x8c1v5b6n0z",
                "name": "Acme Industrial IoT",
                "created_at": "2026-11-01T09:30:00Z",
                "require_two_factor": False,
                "my_roles": ["owner"],
                "two_factor_verification_required": False,
            },
            response_only=True,
        )
    ]
)
class OrganizationSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    name = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="Null while `two_factor_verification_required`: the name is the organization's data.",
    )
    my_roles = serializers.SerializerMethodField(
        help_text="Your organization roles; null while `two_factor_verification_required`."
    )
    two_factor_verification_required = serializers.SerializerMethodField(
        help_text="The organization requires two-factor authentication and this console session was not verified by "
        "a second factor: its name and your roles are withheld, and its endpoints answer 403 `two-factor-required`, "
        "until you sign in with your second factor. Always false for API keys, which the requirement does not bind."
    )

    class Meta:
        model = Organization
        fields = ["id", "name", "created_at", "require_two_factor", "my_roles", "two_factor_verification_required"]
        read_only_fields = ["require_two_factor"]

    def _locked(self, obj) -> bool:
        principal = self.context.get("principal")
        return principal is not None and not access.two_factor_satisfied(principal, obj)

    def get_my_roles(self, obj) -> list[str] | None:
        if self._locked(obj):
            return None
        principal = self.context.get("principal")
        membership = principal.membership(obj) if principal else None
        return list(membership.roles) if membership else []

    def get_two_factor_verification_required(self, obj) -> bool:
        return self._locked(obj)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if data["two_factor_verification_required"]:
            data["name"] = None
        return data


class OrganizationCreateSerializer(InputSerializer):
    name = PlainTextField(max_length=100)


class OrganizationUpdateSerializer(InputSerializer):
    name = PlainTextField(max_length=100, required=False)
    require_two_factor = serializers.BooleanField(
        required=False,
        help_text="Members must sign in to the console with two-factor authentication. Owners only, from a console "
        "session verified by their second factor: an API key gets 403 `two-factor-session-required`. API keys are "
        "not affected by the requirement.",
    )

    def validate(self, attrs):
        if not attrs:  # a rename was the only change there was: an empty body answers as it always has
            raise serializers.ValidationError({"name": [ErrorDetail("This field is required.", code="required")]})
        return attrs


class ProjectGrantSerializer(InputSerializer):
    project = StrictCharField(max_length=32, help_text="Project id (`prj_…`).")
    role = serializers.ChoiceField(choices=PROJECT_ROLE_CHOICES)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Member",
            value={
                "id": "mem_q2w3e4r5t6y7u8i9o0pa",
                "email": "dev@acme.example",
                "full_name": "Dana Developer",
                "roles": [],
                "project_grants": [{"project": "prj_7f3k2m9q4x8c1v5b6n0z", "role": "project_user"}],
                "created_at": "2026-11-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class MemberSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)
    full_name = serializers.CharField(source="user.full_name", read_only=True)
    project_grants = serializers.SerializerMethodField()

    class Meta:
        model = Membership
        fields = ["id", "email", "full_name", "roles", "project_grants", "created_at"]

    def get_project_grants(self, obj) -> list[dict]:
        return [{"project": g.project.public_id, "role": g.role} for g in obj.grants.all()]


class MemberUpdateSerializer(InputSerializer):
    roles = serializers.ListField(child=serializers.ChoiceField(choices=ORG_ROLE_CHOICES), required=False, max_length=4)
    project_grants = ProjectGrantSerializer(many=True, required=False, max_length=1000)


@extend_schema_serializer(
    examples=[OpenApiExample("Delete Acme", value={"confirm_name": "Acme Industrial IoT"}, request_only=True)]
)
class OrganizationDeleteSerializer(InputSerializer):
    confirm_name = StrictCharField(
        max_length=100,
        help_text="The organization's name, exactly as it is (as the console makes you type it): deleting it cannot "
        "be undone.",
    )


ORGANIZATION_NOT_EMPTY_EXAMPLE = {
    "type": "https://docs.mqtt-cloud.example/problems/organization-not-empty",
    "title": "Conflict",
    "status": 409,
    "detail": "The organization cannot be deleted yet: 1 deployment is not deleted (dep_7f3k2m9q4x8c1v5b6n0z): delete "
    "it and wait until the deletion completes. 1 invoice is not paid (inv_q2w3e4r5t6y7u8i9o0pa): pay it first.",
    "request_id": "5f0c8a2e9b6d4c1f8e7a6b5c4d3e2f10",
    "errors": [
        {
            "field": None,
            "message": "1 deployment is not deleted (dep_7f3k2m9q4x8c1v5b6n0z): delete it and wait until the "
            "deletion completes.",
            "code": "deployments",
        },
        {
            "field": None,
            "message": "1 invoice is not paid (inv_q2w3e4r5t6y7u8i9o0pa): pay it first.",
            "code": "invoices",
        },
    ],
}


class TransferOwnershipSerializer(InputSerializer):
    member = StrictCharField(max_length=32, help_text="The membership id (`mem_…`) of the new Owner.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Invitation",
            value={
                "id": "ivt_a1s2d3f4g5h6j7k8l9z0",
                "email": "finance@acme.example",
                "roles": ["accountant"],
                "project_grants": [],
                "status": "pending",
                "invited_by": "owner@acme.example",
                "created_at": "2026-11-02T10:00:00Z",
                "expires_at": "2026-11-09T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class InvitationSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    invited_by = serializers.EmailField(source="invited_by.email", read_only=True, allow_null=True)
    status = serializers.CharField(read_only=True)

    class Meta:
        model = Invitation
        fields = ["id", "email", "roles", "project_grants", "status", "invited_by", "created_at", "expires_at"]


class InvitationCreateSerializer(InputSerializer):
    email = serializers.EmailField(max_length=254)
    roles = serializers.ListField(
        child=serializers.ChoiceField(choices=ORG_ROLE_CHOICES), required=False, default=list, max_length=4
    )
    project_grants = ProjectGrantSerializer(many=True, required=False, default=list, max_length=1000)


class InvitationAcceptSerializer(InputSerializer):
    token = StrictCharField(max_length=100)
    password = StrictCharField(
        max_length=128,
        required=False,
        write_only=True,
        help_text="Needed only when no account exists for the invited email.",
    )
    full_name = PlainTextField(max_length=150, required=False, default="")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "API key",
            value={
                "id": "key_z9x8c7v6b5n4m3l2k1j0",
                "name": "CI pipeline",
                "role": "project_administrator",
                "projects": ["prj_7f3k2m9q4x8c1v5b6n0z"],
                "limited_to_projects": True,
                "prefix": "3fa85f64",
                "status": "active",
                "created_by": "owner@acme.example",
                "expires_at": None,
                "last_used_at": "2026-11-24T08:12:00Z",
                "revoked_at": None,
                "previous_secret_expires_at": None,
                "deletion_protection": False,
                "created_at": "2026-11-02T10:00:00Z",
            },
            response_only=True,
        )
    ]
)
class ApiKeySerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    projects = serializers.SerializerMethodField()
    limited_to_projects = serializers.BooleanField(
        read_only=True,
        help_text="Whether the key acts only inside `projects`. A limited key whose projects were all deleted "
        "reaches nothing (and is revoked); it never becomes organization-wide.",
    )
    created_by = serializers.EmailField(source="created_by.email", read_only=True)
    status = serializers.SerializerMethodField()
    previous_secret_expires_at = serializers.DateTimeField(
        source="previous_expires_at", read_only=True, allow_null=True
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "role",
            "projects",
            "limited_to_projects",
            "prefix",
            "status",
            "created_by",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "previous_secret_expires_at",
            "deletion_protection",
            "created_at",
        ]

    def get_projects(self, obj) -> list[str]:
        return [p.public_id for p in obj.projects.all()]

    def get_status(self, obj) -> str:
        if obj.revoked_at:
            return "revoked"
        return "active" if obj.is_active else "expired"


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    secret = serializers.SerializerMethodField(help_text="Shown once. Send it as `Authorization: Bearer <secret>`.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]

    def get_secret(self, obj) -> str:
        return self.context["secret"]


class ApiKeyCreateSerializer(InputSerializer):
    name = PlainTextField(max_length=100)
    role = serializers.ChoiceField(choices=Role.values)
    projects = serializers.ListField(
        child=StrictCharField(max_length=32),
        required=False,
        default=list,
        max_length=1000,
        help_text="Project ids; empty means the whole organization.",
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ApiKeyUpdateSerializer(InputSerializer):
    name = PlainTextField(max_length=100, required=False)
    deletion_protection = serializers.BooleanField(required=False)


class ApiKeyRotateSerializer(InputSerializer):
    overlap_seconds = serializers.IntegerField(
        min_value=0, max_value=86400, default=3600, help_text="How long the old secret keeps working (at most 24 h)."
    )


# --- Filters ---------------------------------------------------------------------------------------------------


class MemberFilter(filters.FilterSet):
    email = filters.CharFilter(field_name="user__email", lookup_expr="icontains")
    role = filters.CharFilter(method="filter_role", help_text="An organization role, e.g. `administrator`.")

    class Meta:
        model = Membership
        fields = ["email", "role"]

    def filter_role(self, queryset, name, value):
        # Matches the quoted role inside the JSON list; works on SQLite and PostgreSQL alike.
        return queryset.filter(roles__icontains=f'"{value}"')


class InvitationFilter(filters.FilterSet):
    email = filters.CharFilter(field_name="email", lookup_expr="icontains")

    class Meta:
        model = Invitation
        fields = ["email"]


class ApiKeyFilter(filters.FilterSet):
    name = filters.CharFilter(field_name="name", lookup_expr="icontains")
    role = filters.ChoiceFilter(choices=Role.choices)
    active = filters.BooleanFilter(field_name="revoked_at", lookup_expr="isnull", label="Only keys not revoked")

    class Meta:
        model = ApiKey
        fields = ["name", "role", "active"]


# --- Views -----------------------------------------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(summary="List your organizations", tags=["organizations"]),
    post=extend_schema(
        summary="Create an organization",
        tags=["organizations"],
        request=OrganizationCreateSerializer,
        responses={201: OrganizationSerializer},
    ),
)
class OrganizationListView(RateLimitHeadersMixin, generics.ListCreateAPIView):
    """Organizations the caller belongs to. Creating one makes the caller its Owner (console sessions only)."""

    serializer_class = OrganizationSerializer
    permission_classes = [IsAuthenticated]

    def get_queryset(self):
        return access.visible_organizations(access.Principal.from_request(self.request)).order_by("-created_at", "-id")

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "principal": access.Principal.from_request(self.request)}

    def create(self, request, *args, **kwargs):
        principal = access.Principal.from_request(request)
        if principal.api_key is not None:
            from rest_framework.exceptions import PermissionDenied

            raise PermissionDenied("API keys belong to one organization and cannot create others.")
        data = OrganizationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization = services.organization_create(name=data.validated_data["name"], owner=request.user)
        return Response(
            OrganizationSerializer(organization, context=self.get_serializer_context()).data,
            status=status.HTTP_201_CREATED,
        )


@extend_schema(tags=["organizations"])
class OrganizationViewSet(ScopedViewSet):
    queryset = Organization.objects.all()
    tenant_field = "pk"
    lookup_url_kwarg = "org"
    serializer_class = OrganizationSerializer
    required_scopes = {
        "retrieve": "org:read",
        "partial_update": "org:write",
        "transfer_ownership": "org:transfer",
        "destroy": "org:delete",
    }
    # Beyond the scope: a person deletes an organization, never an API key (answered before the body is read).
    action_checks = {"destroy": "check_deletable"}
    body_on_delete_actions = ("destroy",)
    problem_examples = {"destroy": {"409": ORGANIZATION_NOT_EMPTY_EXAMPLE}}

    def check_deletable(self):
        services.organization_check_deletable(organization=self.organization, actor=self.principal)

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "principal": getattr(self, "principal", None)}

    @extend_schema(summary="Describe the organization")
    def retrieve(self, request, *args, **kwargs):
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(
        summary="Rename the organization, or require two-factor authentication of its members",
        request=OrganizationUpdateSerializer,
    )
    def partial_update(self, request, *args, **kwargs):
        data = OrganizationUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        organization = self.get_object()
        with transaction.atomic():  # both changes or neither
            if "require_two_factor" in values:
                organization = services.organization_require_two_factor(
                    organization=organization, actor=self.principal, required=values["require_two_factor"]
                )
            if "name" in values:
                organization = services.organization_update(
                    organization=organization, actor=self.principal, name=values["name"]
                )
        return Response(self.get_serializer(organization).data)

    @extend_schema(
        summary="Transfer ownership to another member",
        request=TransferOwnershipSerializer,
        responses={200: MemberSerializer},
    )
    @action(detail=True, methods=["post"], url_path="transfer-ownership")
    def transfer_ownership(self, request, *args, **kwargs):
        data = TransferOwnershipSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.ownership_transfer(
            organization=self.organization, actor=self.principal, member_id=data.validated_data["member"]
        )
        return Response(MemberSerializer(membership).data)

    @extend_schema(
        summary="Delete (close) the organization",
        description="Owners only, in person: an API key gets 403 `api-key-not-allowed`. Send the organization's name "
        "as `confirm_name` (400 on that field otherwise). Refused with 409 `organization-not-empty` while anything "
        "still runs or is owed: a deployment not deleted, usage not invoiced yet (this month's is invoiced when the "
        "month closes), an invoice not paid (draft, open, uncollectible), an active annual plan, a VPC peering; "
        "`errors` lists each, with its own code. Deleting removes every member, pending invitation and API key, so "
        "nobody reaches the organization again; its invoices, billing account and audit log are kept for the legal "
        "retention period.",
        request=OrganizationDeleteSerializer,
        responses={204: OpenApiResponse(description="Deleted: the organization is closed.")},
    )
    def destroy(self, request, *args, **kwargs):
        data = OrganizationDeleteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.organization_delete(
            organization=self.organization, actor=self.principal, confirm_name=data.validated_data["confirm_name"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["members"])
class MemberViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = Membership.objects.select_related("user").prefetch_related(
        Prefetch("grants", queryset=ProjectGrant.objects.select_related("project"))
    )
    serializer_class = MemberSerializer
    lookup_url_kwarg = "member"
    filterset_class = MemberFilter
    required_scopes = {
        "list": "member:read",
        "retrieve": "member:read",
        "partial_update": "member:write",
        "destroy": "member:write",
    }

    @extend_schema(summary="List members (sub-accounts)")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a member")
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(summary="Change a member's roles and project grants", request=MemberUpdateSerializer)
    def partial_update(self, request, *args, **kwargs):
        data = MemberUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_update(
            membership=self.get_object(),
            actor=self.principal,
            roles=data.validated_data.get("roles"),
            project_grants=data.validated_data.get("project_grants"),
        )
        return Response(MemberSerializer(self.get_queryset().get(pk=membership.pk)).data)

    @extend_schema(summary="Remove a member (revokes the API keys they created)")
    def destroy(self, request, *args, **kwargs):
        services.membership_remove(membership=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["members"])
class InvitationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = Invitation.objects.select_related("invited_by")
    serializer_class = InvitationSerializer
    lookup_url_kwarg = "invitation"
    filterset_class = InvitationFilter
    required_scopes = {
        "list": "member:read",
        "retrieve": "member:read",
        "create": "member:write",
        "destroy": "member:write",
        "resend": "member:write",
    }

    @extend_schema(summary="List invitations")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an invitation")
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        summary="Invite someone by email", request=InvitationCreateSerializer, responses={201: InvitationSerializer}
    )
    def create(self, request, *args, **kwargs):
        data = InvitationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation, _token = services.invitation_create(
            organization=self.organization, actor=self.principal, **data.validated_data
        )
        return Response(InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Revoke a pending invitation")
    def destroy(self, request, *args, **kwargs):
        services.invitation_revoke(invitation=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Send an invitation again with a new link (the old link stops working)",
        request=None,
        responses={200: InvitationSerializer},
    )
    @action(detail=True, methods=["post"])
    def resend(self, request, *args, **kwargs):
        invitation, _token = services.invitation_resend(invitation=self.get_object(), actor=self.principal)
        return Response(InvitationSerializer(invitation).data)


@extend_schema(
    tags=["members"],
    summary="Accept an invitation",
    request=InvitationAcceptSerializer,
    responses={201: MemberSerializer},
)
class InvitationAcceptView(RateLimitHeadersMixin, generics.GenericAPIView):
    """Accept with the token from the email. Signed in: joins as yourself. Otherwise creates your account."""

    permission_classes = [AllowAny]
    serializer_class = InvitationAcceptSerializer

    def post(self, request, *args, **kwargs):
        data = InvitationAcceptSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.invitation_accept(user=request.user, **data.validated_data)
        return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["api-keys"])
class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = ApiKey.objects.select_related("organization", "created_by").prefetch_related("projects")
    serializer_class = ApiKeySerializer
    lookup_url_kwarg = "key"
    filterset_class = ApiKeyFilter
    required_scopes = {
        "list": "apikey:read",
        "retrieve": "apikey:read",
        "create": "apikey:write",
        "partial_update": "apikey:write",
        "destroy": "apikey:write",
        "rotate": "apikey:write",
    }
    # Beyond the scope: only who could create a key may see its details, act on it, or be handed its secret. Checked
    # before every such call and before every replay of one (an Owner demoted since gets a 403, not the secret).
    action_checks = {
        "retrieve": "check_key_manageable",
        "partial_update": "check_key_manageable",
        "destroy": "check_key_manageable",
        "rotate": "check_key_manageable",
        "create": "check_key_grantable",
    }

    def check_key_manageable(self):
        if not access.can_manage_api_key(self.principal, self.get_object()):
            if self.action == "retrieve":
                raise RoleTooHigh("You cannot read the details of an API key with more rights than your own.")
            raise RoleTooHigh("You cannot manage an API key with more rights than your own.")

    def check_key_grantable(self):
        data = ApiKeyCreateSerializer(data=self.request.data)
        if data.is_valid():  # else the action answers the field errors
            services.api_key_check_grantable(
                actor=self.principal,
                organization=self.organization,
                role=data.validated_data["role"],
                project_ids=data.validated_data["projects"],
            )

    @extend_schema(summary="List API keys")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe an API key (only if you could create it yourself)")
    def retrieve(self, request, *args, **kwargs):
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(
        summary="Create an API key (the secret is shown once)",
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyWithSecretSerializer},
    )
    def create(self, request, *args, **kwargs):
        data = ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        key, secret = services.api_key_create(
            organization=self.organization,
            actor=self.principal,
            name=values["name"],
            role=values["role"],
            project_ids=values["projects"],
            expires_at=values["expires_at"],
            created_by=request.user,
        )
        return Response(
            ApiKeyWithSecretSerializer(key, context={"secret": secret}).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        summary="Rename an API key or change its deletion protection (only if you could create it yourself)",
        request=ApiKeyUpdateSerializer,
    )
    def partial_update(self, request, *args, **kwargs):
        data = ApiKeyUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = services.api_key_update(key=self.get_object(), actor=self.principal, **data.validated_data)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        summary="Revoke an API key (only if you could create it yourself)", responses={200: ApiKeySerializer}
    )
    def destroy(self, request, *args, **kwargs):
        key = services.api_key_revoke(key=self.get_object(), actor=self.principal)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        summary="Rotate an API key's secret (only if you could create the key yourself)",
        request=ApiKeyRotateSerializer,
        responses={200: ApiKeyWithSecretSerializer},
    )
    @action(detail=True, methods=["post"])
    def rotate(self, request, *args, **kwargs):
        data = ApiKeyRotateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, secret = services.api_key_rotate(key=self.get_object(), actor=self.principal, **data.validated_data)
        return Response(ApiKeyWithSecretSerializer(key, context={"secret": secret}).data)
