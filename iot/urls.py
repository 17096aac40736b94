"""IoT platform routes (Premium), mounted under /api/v1/ by controlplane.urls: under one deployment, and the
organization's Premium trial."""

from django.urls import path

from iot import api, edge_urls, trials_api

ONE = "organizations/<str:org>/projects/<str:project>/deployments/<str:dep>"
DEVICE = ONE + "/devices/<str:device>"

urlpatterns = [
    path(
        "organizations/<str:org>/premium-trial",
        trials_api.PremiumTrialViewSet.as_view({"get": "retrieve"}),
        name="premium-trial",
    ),
    path(ONE + "/devices", api.DeviceViewSet.as_view({"get": "list", "post": "create"}), name="device-list"),
    path(
        DEVICE,
        api.DeviceViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="device-detail",
    ),
    path(
        DEVICE + "/credentials",
        api.DeviceViewSet.as_view({"post": "rotate_credentials"}),
        name="device-credentials",
    ),
    path(
        DEVICE + "/shadow",
        api.DeviceViewSet.as_view({"get": "shadow", "patch": "shadow_update", "delete": "shadow_delete"}),
        name="device-shadow",
    ),
    path(DEVICE + "/shadow/history", api.ShadowHistoryViewSet.as_view({"get": "list"}), name="device-shadow-history"),
    path(ONE + "/device-imports", api.DeviceImportViewSet.as_view({"post": "create"}), name="device-import"),
    path(
        ONE + "/device-groups",
        api.DeviceGroupViewSet.as_view({"get": "list", "post": "create"}),
        name="device-group-list",
    ),
    path(
        ONE + "/device-groups/<str:group>",
        api.DeviceGroupViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="device-group-detail",
    ),
]
urlpatterns += edge_urls.urlpatterns

# Codecs (Premium): schemas, try-it calls, codec rules (iot.codec_api).
from iot import codec_api  # noqa: E402

SCHEMA = ONE + "/schemas/<str:schema>"
urlpatterns += [
    path(
        ONE + "/schemas", codec_api.SchemaViewSet.as_view({"get": "list", "post": "create"}), name="codec-schema-list"
    ),
    path(SCHEMA, codec_api.SchemaViewSet.as_view({"get": "retrieve", "delete": "destroy"}), name="codec-schema-detail"),
    path(
        SCHEMA + "/versions",
        # Every version at once, as a plain array (a schema has few): no pagination, and the OpenAPI document says so.
        codec_api.SchemaViewSet.as_view({"get": "versions", "post": "version_create"}, pagination_class=None),
        name="codec-schema-versions",
    ),
    path(
        SCHEMA + "/versions/<str:version>",
        codec_api.SchemaViewSet.as_view({"get": "version"}),
        name="codec-schema-version",
    ),
    path(SCHEMA + "/decode", codec_api.SchemaViewSet.as_view({"post": "decode"}), name="codec-schema-decode"),
    path(SCHEMA + "/encode", codec_api.SchemaViewSet.as_view({"post": "encode"}), name="codec-schema-encode"),
    path(
        ONE + "/codec-rules",
        codec_api.CodecRuleViewSet.as_view({"get": "list", "post": "create"}),
        name="codec-rule-list",
    ),
    path(
        ONE + "/codec-rules/<str:codec_rule>",
        codec_api.CodecRuleViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="codec-rule-detail",
    ),
]
