from django.urls import include, path

from console import views
from console.pages import api_keys, audit, deployments, members, organization, projects, tls, vpc_peering

app_name = "console"
PROJECT = "console/o/<str:org_id>/p/<str:project_id>"
DEPLOYMENT = PROJECT + "/d/<str:dep_id>"
PEERING = DEPLOYMENT + "/vpc-peering/<str:peering_id>"

urlpatterns = [
    path("", include("console.urls_account")),  # sign-in, sign-up, password, two-factor: console/account_views.py
    path("", views.home, name="home"),
    path("console/invitations/accept", views.invitation_accept, name="invitation-accept"),
    path("console/switch", projects.switch, name="switch"),
    # An organization and its sections.
    path("console/o/<str:org_id>", projects.organization, name="organization"),
    path("console/o/<str:org_id>/members", members.members, name="members"),
    path("console/o/<str:org_id>/members/<str:member_id>", members.member_edit, name="member-edit"),
    path("console/o/<str:org_id>/members/<str:member_id>/remove", members.member_remove, name="member-remove"),
    path(
        "console/o/<str:org_id>/invitations/<str:invitation_id>/resend",
        members.invitation_resend,
        name="invitation-resend",
    ),
    path(
        "console/o/<str:org_id>/invitations/<str:invitation_id>/revoke",
        members.invitation_revoke,
        name="invitation-revoke",
    ),
    path("console/o/<str:org_id>/api-keys", api_keys.api_keys, name="api-keys"),
    path("console/o/<str:org_id>/api-keys/<str:key_id>/rotate", api_keys.api_key_rotate, name="api-key-rotate"),
    path("console/o/<str:org_id>/api-keys/<str:key_id>/revoke", api_keys.api_key_revoke, name="api-key-revoke"),
    path(
        "console/o/<str:org_id>/api-keys/<str:key_id>/protection",
        api_keys.api_key_protection,
        name="api-key-protection",
    ),
    path("console/o/<str:org_id>/audit", audit.audit, name="audit"),
    path("console/o/<str:org_id>/audit.csv", audit.audit_csv, name="audit-csv"),
    path("console/o/<str:org_id>/settings", organization.settings_page, name="settings"),
    path("console/o/<str:org_id>/settings/transfer-ownership", organization.transfer, name="transfer"),
    path("console/o/<str:org_id>/alerts", organization.alerts, name="alerts"),
    path("console/o/<str:org_id>/billing", organization.billing, name="billing"),
    # A project and its deployments.
    path(f"{PROJECT}", projects.project, name="project"),
    path(f"{PROJECT}/rows", projects.project_rows, name="project-rows"),
    path(f"{PROJECT}/settings", projects.project_settings, name="project-settings"),
    path(f"{PROJECT}/delete", projects.project_delete, name="project-delete"),
    path(f"{PROJECT}/deployments/new", deployments.create, name="deployment-create"),
    path(f"{DEPLOYMENT}", deployments.detail, name="deployment"),
    path(f"{DEPLOYMENT}/live", deployments.live, name="deployment-live"),
    path(f"{DEPLOYMENT}/mqtt-users", deployments.mqtt_users, name="deployment-mqtt-users"),
    path(
        f"{DEPLOYMENT}/mqtt-users/<str:user_id>/password",
        deployments.mqtt_user_password,
        name="deployment-mqtt-user-password",
    ),
    path(
        f"{DEPLOYMENT}/mqtt-users/<str:user_id>/delete",
        deployments.mqtt_user_delete,
        name="deployment-mqtt-user-delete",
    ),
    path(f"{DEPLOYMENT}/acl", deployments.acl, name="deployment-acl"),
    path(f"{DEPLOYMENT}/acl/<str:rule_id>/delete", deployments.acl_delete, name="deployment-acl-delete"),
    path(f"{DEPLOYMENT}/acl/<str:rule_id>/move", deployments.acl_move, name="deployment-acl-move"),
    path(f"{DEPLOYMENT}/rate-limits", deployments.rate_limits, name="deployment-rate-limits"),
    path(f"{DEPLOYMENT}/manage", deployments.manage, name="deployment-manage"),
    path(f"{DEPLOYMENT}/actions/<str:name>", deployments.action, name="deployment-action"),
    path(f"{DEPLOYMENT}/protection", deployments.protection, name="deployment-protection"),
    path(f"{DEPLOYMENT}/rename", deployments.rename, name="deployment-rename"),
    path(f"{DEPLOYMENT}/move", deployments.move, name="deployment-move"),
    path(f"{DEPLOYMENT}/delete", deployments.delete, name="deployment-delete"),
    path(f"{DEPLOYMENT}/history", deployments.history, name="deployment-history"),
    # TLS: console/pages/tls.py.
    path(f"{DEPLOYMENT}/tls", tls.certificates, name="deployment-tls"),
    path(f"{DEPLOYMENT}/tls/ca.pem", tls.ca_pem, name="deployment-tls-ca"),
    path(f"{DEPLOYMENT}/tls/<str:certificate_id>/delete", tls.certificate_delete, name="deployment-tls-delete"),
    # VPC peering: console/pages/vpc_peering.py (literal paths before the peering id).
    path(f"{DEPLOYMENT}/vpc-peering", vpc_peering.peerings, name="deployment-vpc-peering"),
    path(f"{DEPLOYMENT}/vpc-peering/rows", vpc_peering.peering_rows, name="deployment-vpc-peering-rows"),
    path(f"{DEPLOYMENT}/vpc-peering/fields", vpc_peering.peering_fields, name="deployment-vpc-peering-fields"),
    path(f"{DEPLOYMENT}/vpc-peering/check", vpc_peering.peering_check, name="deployment-vpc-peering-check"),
    path(f"{PEERING}", vpc_peering.peering_detail, name="deployment-vpc-peering-detail"),
    path(f"{PEERING}/live", vpc_peering.peering_live, name="deployment-vpc-peering-live"),
    path(f"{PEERING}/protection", vpc_peering.peering_protection, name="deployment-vpc-peering-protection"),
    path(f"{PEERING}/delete", vpc_peering.peering_delete, name="deployment-vpc-peering-delete"),
]
