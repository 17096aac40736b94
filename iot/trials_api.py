"""REST API of Premium trials: what an organization's members see of the trial staff granted it. Read-only: trials
are granted by staff only (the admin backoffice, `manage.py grant_premium_trial`), never through the API."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response

from controlplane.api.views import ScopedViewSet
from iot import trials
from iot.trials_models import PremiumTrial, TrialDeployment
from organizations import access
from projects.models import Project

_EXAMPLE = {
    "status": "active",
    "deployments": 2,
    "used": 1,
    "starts_at": "2026-11-16T09:00:00Z",
    "ends_at": "2026-11-30T09:00:00Z",
    "trial_deployments": [
        {"deployment": "dep_k2m9q4x8c1v5b6n0z7a3", "name": "plant", "outcome": "trial", "delete_at": None}
    ],
}


class TrialDeploymentSerializer(serializers.Serializer):
    deployment = serializers.CharField(help_text="The deployment's public id.")
    name = serializers.CharField()
    outcome = serializers.ChoiceField(
        choices=TrialDeployment.Outcome.choices,
        help_text="trial: on trial; converted: on the Premium annual plan; stopped: stopped at the trial's end, "
        "its data kept until delete_at; deleted.",
    )
    delete_at = serializers.DateTimeField(allow_null=True, help_text="Stopped ones: when they are deleted.")


@extend_schema_serializer(examples=[OpenApiExample("Premium trial", value=_EXAMPLE, response_only=True)])
class PremiumTrialSerializer(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=[("none", "No trial"), ("active", "Active"), ("ended", "Ended")],
        help_text="none: no Premium trial was granted; active: until ends_at; ended.",
    )
    deployments = serializers.IntegerField(help_text="Trial deployments granted (at most 2).")
    used = serializers.IntegerField(help_text="Premium deployments the organization created.")
    starts_at = serializers.DateTimeField(allow_null=True)
    ends_at = serializers.DateTimeField(allow_null=True, help_text="When the trial ends.")
    trial_deployments = TrialDeploymentSerializer(many=True)


class PremiumTrialViewSet(ScopedViewSet):
    queryset = PremiumTrial.objects.all()
    tenant_field = "organization"
    required_scopes = {"retrieve": "org:read"}

    @extend_schema(
        summary="The organization's Premium trial: its end, its trial deployments and what became of them",
        tags=["premium trial"],
        responses={200: PremiumTrialSerializer},
    )
    def retrieve(self, request, *args, **kwargs):
        projects = access.visible_projects(
            self.principal, self.organization, Project.objects.filter(organization=self.organization)
        )
        summary = trials.premium_trial_summary(organization=self.organization, projects=projects)
        return Response(PremiumTrialSerializer(summary).data)
