"""Tenant-less API endpoints about the caller: their rate-limit buckets."""

from types import SimpleNamespace
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import exceptions, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ratelimit
from controlplane.api.views import RateLimitHeadersMixin
from organizations import access
from organizations.models import Organization


class RateLimitBucketSerializer(serializers.Serializer[Any]):
    level = serializers.ChoiceField(choices=["platform", "organization", "principal"])
    key = serializers.CharField()
    capacity = serializers.IntegerField()
    refill_per_second = serializers.FloatField()
    remaining = serializers.IntegerField()
    reset_seconds = serializers.IntegerField(help_text="Seconds until the bucket is full again.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Buckets",
            response_only=True,
            value={
                "enabled": True,
                "degraded": False,
                "buckets": [
                    {
                        "level": "platform",
                        "key": "platform",
                        "capacity": 2000,
                        "refill_per_second": 1000.0,
                        "remaining": 1998,
                        "reset_seconds": 1,
                    },
                    {
                        "level": "organization",
                        "key": "org:org_7f3k2m9q4x8c1v5b6n0z",
                        "capacity": 600,
                        "refill_per_second": 20.0,
                        "remaining": 590,
                        "reset_seconds": 1,
                    },
                    {
                        "level": "principal",
                        "key": "key:3fa85f64",
                        "capacity": 300,
                        "refill_per_second": 10.0,
                        "remaining": 295,
                        "reset_seconds": 1,
                    },
                ],
            },
        )
    ]
)
class RateLimitsSerializer(serializers.Serializer[Any]):
    enabled = serializers.BooleanField()
    degraded = serializers.BooleanField(
        help_text="True while the shared store (Redis) is unreachable and each web process counts on its own."
    )
    buckets = RateLimitBucketSerializer(many=True)


class RateLimitsView(RateLimitHeadersMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=["meta"],
        summary="Show your rate-limit buckets",
        parameters=[OpenApiParameter("organization", str, description="Also show this organization's bucket.")],
        responses={200: RateLimitsSerializer},
        description="The token buckets that apply to your requests: the platform's, your credential's and, with "
        "`?organization=org_…`, that organization's. Reading them does not take a token.",
    )
    def get(self, request: Request) -> Response:
        org_id = request.query_params.get("organization")
        organization = None
        if org_id:
            organization = Organization.objects.filter(public_id=org_id).first()
            if organization is None or not access.can_see_organization(
                access.Principal.from_request(request), organization
            ):
                raise exceptions.ValidationError({"organization": ["No such organization."]})
        decision = ratelimit.take(ratelimit.buckets_for(request, SimpleNamespace(organization=organization)), cost=0)
        return Response(
            {
                "enabled": settings.RATE_LIMITS_ENABLED,
                "degraded": ratelimit.degraded(),
                "buckets": [
                    {
                        "level": s.bucket.level,
                        "key": s.bucket.key,
                        "capacity": int(s.bucket.capacity),
                        "refill_per_second": s.bucket.refill_per_second,
                        "remaining": int(s.remaining),
                        "reset_seconds": s.reset_seconds,
                    }
                    for s in decision.states
                ],
            }
        )
