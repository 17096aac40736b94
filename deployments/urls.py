"""Deployment API routes, mounted under /api/v1/ by controlplane.urls: the catalog and everything under a project."""

from django.urls import path

from deployments import api

DEP = "organizations/<str:org>/projects/<str:project>/deployments"
ONE = DEP + "/<str:dep>"


def _action(name: str):
    return api.DeploymentViewSet.as_view({"post": name})


urlpatterns = [
    path("regions", api.RegionListView.as_view(), name="region-list"),
    path("plans", api.PlanListView.as_view(), name="plan-list"),
    path(DEP, api.DeploymentViewSet.as_view({"get": "list", "post": "create"}), name="deployment-list"),
    path(
        ONE,
        api.DeploymentViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="deployment-detail",
    ),
    path(ONE + "/stop", _action("stop"), name="deployment-stop"),
    path(ONE + "/start", _action("start"), name="deployment-start"),
    path(ONE + "/restart", _action("restart"), name="deployment-restart"),
    path(ONE + "/change-tier", _action("change_tier"), name="deployment-change-tier"),
    path(ONE + "/move", _action("move"), name="deployment-move"),
    path(ONE + "/operations", api.OperationViewSet.as_view({"get": "list"}), name="deployment-operation-list"),
    path(
        ONE + "/operations/<str:op>",
        api.OperationViewSet.as_view({"get": "retrieve"}),
        name="deployment-operation-detail",
    ),
    path(ONE + "/events", api.EventViewSet.as_view({"get": "list"}), name="deployment-event-list"),
    path(
        ONE + "/maintenance-windows",
        api.MaintenanceWindowViewSet.as_view({"get": "list"}),
        name="deployment-maintenance-window-list",
    ),
    path(
        ONE + "/mqtt-users",
        api.MqttUserViewSet.as_view({"get": "list", "post": "create"}),
        name="deployment-mqtt-user-list",
    ),
    path(
        ONE + "/mqtt-users/<str:user>",
        api.MqttUserViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="deployment-mqtt-user-detail",
    ),
    path(
        ONE + "/acl-rules",
        api.AclRuleViewSet.as_view({"get": "list", "post": "create"}),
        name="deployment-acl-rule-list",
    ),
    path(
        ONE + "/acl-rules/<str:rule>",
        api.AclRuleViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="deployment-acl-rule-detail",
    ),
    path(
        ONE + "/rate-limits",
        api.RateLimitViewSet.as_view({"get": "list", "put": "update"}),
        name="deployment-rate-limits",
    ),
    path(
        ONE + "/certificates",
        api.TlsCertificateViewSet.as_view({"get": "list", "post": "create"}),
        name="deployment-certificate-list",
    ),
    # Before the detail route: "issue" is not a certificate id.
    path(
        ONE + "/certificates/issue",
        api.TlsCertificateViewSet.as_view({"post": "issue"}),
        name="deployment-certificate-issue",
    ),
    path(
        ONE + "/certificates/<str:cert>",
        api.TlsCertificateViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="deployment-certificate-detail",
    ),
    path(ONE + "/ca.pem", api.TlsCertificateViewSet.as_view({"get": "ca_pem"}), name="deployment-ca-pem"),
]
