"""Notification channel API routes, mounted under /api/v1/ by controlplane.urls. The paths are older than this app
and are contracts: they never change."""

from django.urls import path

from notifications import api

ORG = "organizations/<str:org>"
CHANNEL = ORG + "/notification-channels/<str:channel>"

urlpatterns = [
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
