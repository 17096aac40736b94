from django.urls import include, path

from console import views

app_name = "console"

urlpatterns = [
    path("", include("console.urls_account")),  # sign-in, sign-up, password, two-factor: console/account_views.py
    path("", views.home, name="home"),
    path("console/invitations/accept", views.invitation_accept, name="invitation-accept"),
    path("console/o/<str:org_id>", views.organization, name="organization"),
    path("console/o/<str:org_id>/p/<str:project_id>", views.project, name="project"),
    path("console/o/<str:org_id>/api-keys", views.api_keys, name="api-keys"),
]
