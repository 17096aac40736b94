"""VPC peering routes, mounted under /api/v1/ by controlplane.urls, beside the deployment's other sub-resources."""

from django.urls import path

from networking import api

PEERINGS = "organizations/<str:org>/projects/<str:project>/deployments/<str:dep>/vpc-peerings"

urlpatterns = [
    path(PEERINGS, api.VpcPeeringViewSet.as_view({"get": "list", "post": "create"}), name="vpc-peering-list"),
    # Before the detail route: "validate" is not a peering id.
    path(PEERINGS + "/validate", api.VpcPeeringViewSet.as_view({"post": "validate"}), name="vpc-peering-validate"),
    path(
        PEERINGS + "/<str:peering>",
        api.VpcPeeringViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="vpc-peering-detail",
    ),
]
