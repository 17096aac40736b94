"""Monitoring and alerting API routes (metrics, alert rules, silences, alerts), mounted under /api/v1/ by
controlplane.urls."""

from django.urls import path

from alerts import api

ORG = "organizations/<str:org>"
PROJECT = ORG + "/projects/<str:project>"
DEP = PROJECT + "/deployments/<str:dep>"

urlpatterns = [
    path(DEP + "/metrics", api.DeploymentMetricsViewSet.as_view({"get": "series"}), name="deployment-metrics"),
    path(
        DEP + "/metrics/current",
        api.DeploymentMetricsViewSet.as_view({"get": "current"}),
        name="deployment-metrics-current",
    ),
    path(
        PROJECT + "/alert-rules",
        api.AlertRuleViewSet.as_view({"get": "list", "post": "create"}),
        name="alert-rule-list",
    ),
    path(
        PROJECT + "/alert-rules/<str:rule>",
        api.AlertRuleViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="alert-rule-detail",
    ),
    path(PROJECT + "/silences", api.SilenceViewSet.as_view({"get": "list", "post": "create"}), name="silence-list"),
    path(
        PROJECT + "/silences/<str:silence>",
        api.SilenceViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="silence-detail",
    ),
    path(ORG + "/alerts", api.AlertViewSet.as_view({"get": "list"}), name="alert-list"),
    path(ORG + "/alerts/<str:alert>", api.AlertViewSet.as_view({"get": "retrieve"}), name="alert-detail"),
    path(
        ORG + "/alerts/<str:alert>/acknowledge",
        api.AlertViewSet.as_view({"post": "acknowledge"}),
        name="alert-acknowledge",
    ),
]
