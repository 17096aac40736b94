"""Monitoring and alerting API routes, mounted under /api/v1/ by controlplane.urls."""

from django.urls import path

from alerts import api

ORG = "organizations/<str:org>"
PROJECT = ORG + "/projects/<str:project>"
DEP = PROJECT + "/deployments/<str:dep>"
CHANNEL = ORG + "/notification-channels/<str:channel>"

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
    path(
        ORG + "/notification-channels",
        api.NotificationChannelViewSet.as_view({"get": "list", "post": "create"}),
        name="notification-channel-list",
    ),
    path(
        CHANNEL,
        api.NotificationChannelViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="notification-channel-detail",
    ),
    path(CHANNEL + "/test", api.NotificationChannelViewSet.as_view({"post": "test"}), name="notification-channel-test"),
    path(
        CHANNEL + "/deliveries",
        api.NotificationChannelViewSet.as_view({"get": "deliveries"}),
        name="notification-channel-deliveries",
    ),
]
