from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from console import views

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("console/signup", views.signup, name="signup"),
    path("console/login", auth_views.LoginView.as_view(template_name="console/login.html"), name="login"),
    path("console/logout", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "console/password-reset",
        auth_views.PasswordResetView.as_view(
            template_name="console/password_reset.html",
            email_template_name="console/password_reset_email.txt",
            success_url=reverse_lazy("console:password-reset-done"),
        ),
        name="password-reset",
    ),
    path(
        "console/password-reset/sent",
        auth_views.PasswordResetDoneView.as_view(
            template_name="console/message.html",
            extra_context={"message": "If an account exists for that address, we sent a link to reset the password."},
        ),
        name="password-reset-done",
    ),
    path(
        "console/password-reset/<uidb64>/<token>",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="console/password_reset_confirm.html",
            success_url=reverse_lazy("console:password-reset-complete"),
        ),
        name="password-reset-confirm",
    ),
    path(
        "console/password-reset/complete",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="console/message.html",
            extra_context={"message": "Your password was changed. You can sign in."},
        ),
        name="password-reset-complete",
    ),
    path("console/invitations/accept", views.invitation_accept, name="invitation-accept"),
    path("console/o/<str:org_id>", views.organization, name="organization"),
    path("console/o/<str:org_id>/p/<str:project_id>", views.project, name="project"),
    path("console/o/<str:org_id>/api-keys", views.api_keys, name="api-keys"),
]
