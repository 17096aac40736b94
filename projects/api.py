"""REST API for projects. Members with only project grants see just the projects they hold grants on."""

from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_serializer
from rest_framework import mixins, serializers, status
from rest_framework.response import Response

from controlplane.api.serializers import InputSerializer, PlainTextField, StrictCharField, iso_datetime
from controlplane.api.views import ScopedViewSet
from organizations import access
from projects import services
from projects.models import Project


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Project",
            value={
                "id": "prj_7f3k2m9q4x8c1v5b6n0z",
                "name": "Factory telemetry",
                "description": "Line 3 sensors",
                "is_default": False,
                "created_at": "2026-11-01T09:30:00Z",
            },
            response_only=True,
        )
    ]
)
class ProjectSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)

    class Meta:
        model = Project
        fields = ["id", "name", "description", "is_default", "created_at"]

    def to_representation(self, instance):
        # The hottest list in the API: built directly, a third of DRF's generic cost. A test pins it to the
        # generic representation, so the schema and this stay one.
        return {
            "id": instance.public_id,
            "name": instance.name,
            "description": instance.description,
            "is_default": instance.is_default,
            "created_at": iso_datetime(instance.created_at),
        }


# What ProjectSerializer reads, plus what the cursor pagination orders by.
LIST_COLUMNS = ("id", "public_id", "name", "description", "is_default", "created_at")


class ProjectCreateSerializer(InputSerializer):
    name = PlainTextField(max_length=100)
    description = StrictCharField(max_length=500, required=False, default="", allow_blank=True)


class ProjectUpdateSerializer(InputSerializer):
    name = PlainTextField(max_length=100, required=False)
    description = StrictCharField(max_length=500, required=False, allow_blank=True)


class ProjectFilter(filters.FilterSet):
    name = filters.CharFilter(field_name="name", lookup_expr="icontains")

    class Meta:
        model = Project
        fields = ["name", "is_default"]


@extend_schema(tags=["projects"])
class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    queryset = Project.objects.all()
    serializer_class = ProjectSerializer
    lookup_url_kwarg = "project"
    filterset_class = ProjectFilter
    required_scopes = {
        "list": "org:read",
        "retrieve": "org:read",
        "create": "project:write",
        "partial_update": "project:write",
        "destroy": "project:write",
    }

    def narrow_queryset(self, queryset):
        queryset = access.visible_projects(self.principal, self.organization, queryset)
        if self.action == "list":
            # The hottest list in the API reads rows, not model instances: building a hundred models per page costs
            # more than the query. ProjectSerializer reads the same attributes from either.
            queryset = queryset.values_list(*LIST_COLUMNS, named=True)
        return queryset

    @extend_schema(summary="List projects")
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(summary="Describe a project")
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(summary="Create a project", request=ProjectCreateSerializer, responses={201: ProjectSerializer})
    def create(self, request, *args, **kwargs):
        data = ProjectCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        project = services.project_create(organization=self.organization, actor=self.principal, **data.validated_data)
        return Response(ProjectSerializer(project).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Rename or describe a project", request=ProjectUpdateSerializer)
    def partial_update(self, request, *args, **kwargs):
        data = ProjectUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        project = services.project_update(project=self.get_object(), actor=self.principal, **data.validated_data)
        return Response(ProjectSerializer(project).data)

    @extend_schema(summary="Delete a project (refused while it holds deployments, and for the Default project)")
    def destroy(self, request, *args, **kwargs):
        services.project_delete(project=self.get_object(), actor=self.principal)
        return Response(status=status.HTTP_204_NO_CONTENT)
