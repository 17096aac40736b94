"""The URL map: the REST API under /api/v1, its schema and docs, the console, the admin, probes."""

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path, re_path
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from audit.api import AuditEventViewSet
from billing.api import stripe_webhook
from console.api_docs import RedocView, redoc_bundle
from controlplane import health
from controlplane.api.meta import RateLimitsView
from controlplane.api.problems import api_not_found
from controlplane.api.schema_view import OpenApiDocumentView
from controlplane.metrics import metrics_view
from organizations.api import (
    ApiKeyViewSet,
    InvitationAcceptView,
    InvitationViewSet,
    MemberViewSet,
    OrganizationListView,
    OrganizationViewSet,
)
from projects.api import ProjectViewSet

handler404 = "controlplane.api.problems.handler404"
handler500 = "controlplane.api.problems.handler500"

org_router = SimpleRouter(trailing_slash=False)
org_router.register("projects", ProjectViewSet, basename="project")
org_router.register("members", MemberViewSet, basename="member")
org_router.register("invitations", InvitationViewSet, basename="invitation")
org_router.register("api-keys", ApiKeyViewSet, basename="api-key")
org_router.register("audit-events", AuditEventViewSet, basename="audit-event")

organization_detail = OrganizationViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})
organization_transfer = OrganizationViewSet.as_view({"post": "transfer_ownership"})

api_v1: list[URLPattern | URLResolver] = [
    path("organizations", OrganizationListView.as_view(), name="organization-list"),
    path("organizations/<str:org>", organization_detail, name="organization-detail"),
    path("organizations/<str:org>/transfer-ownership", organization_transfer, name="organization-transfer"),
    path("organizations/<str:org>/", include(org_router.urls)),
    path("invitations/accept", InvitationAcceptView.as_view(), name="invitation-accept"),
    path("rate-limits", RateLimitsView.as_view(), name="rate-limits"),
    path("", include("deployments.urls")),
    path("", include("notifications.urls")),
    path("", include("alerts.urls")),
    path("", include("billing.urls")),
    path("", include("networking.urls")),
    path("", include("iot.urls")),
]

urlpatterns = [
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    path("api/schema/", OpenApiDocumentView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file (?script), which the CSP's script-src 'self' allows;
    # ReDoc's page and bundle come from console.api_docs, without the fonts and logo ReDoc would fetch from CDNs.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="redoc"),
    path("api/redoc/redoc.standalone.js", redoc_bundle, name="redoc-bundle"),
    re_path(r"^api/", api_not_found),  # last of /api/: an unmatched API path is a problem+json 404, never HTML
    path("webhooks/stripe", stripe_webhook, name="stripe-webhook"),
    path("pki/", include("iot.pki")),  # devices' CRLs, fetched by the brokers over plain HTTP
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("", include("console.urls")),
]
