"""Edge node routes (Premium), added to iot.urls under one deployment."""

from django.urls import path

from iot import edge_api

ONE = "organizations/<str:org>/projects/<str:project>/deployments/<str:dep>"
NODE = ONE + "/edge-nodes/<str:node>"

urlpatterns = [
    path(
        ONE + "/edge-nodes", edge_api.EdgeNodeViewSet.as_view({"get": "list", "post": "create"}), name="edge-node-list"
    ),
    path(NODE, edge_api.EdgeNodeViewSet.as_view({"get": "retrieve", "delete": "destroy"}), name="edge-node-detail"),
    path(
        NODE + "/credentials",
        edge_api.EdgeNodeViewSet.as_view({"post": "rotate_credentials"}),
        name="edge-node-credentials",
    ),
    path(NODE + "/config", edge_api.EdgeNodeViewSet.as_view({"get": "bridge_config"}), name="edge-node-config"),
    path(
        NODE + "/configurations",
        edge_api.EdgeConfigViewSet.as_view({"get": "list", "post": "create"}),
        name="edge-node-configurations",
    ),
]
