"""URLs of the console's account pages (console/account_views.py), in the console's namespace."""

from django.urls import path

from accounts.views import SignOutView
from console import account_views as views

urlpatterns = [
    path("console/login", views.login, name="login"),
    path("console/login/verify", views.login_verify, name="login-verify"),
    path("console/logout", SignOutView.as_view(), name="logout"),
    path("console/signup", views.signup, name="signup"),
    path("console/signup/sent", views.signup_sent, name="signup-sent"),
    path("console/signup/confirm", views.signup_confirm, name="signup-confirm"),
    path("console/password-reset", views.PasswordResetView.as_view(), name="password-reset"),
    path("console/password-reset/sent", views.password_reset_done, name="password-reset-done"),
    path("console/password-reset/complete", views.password_reset_complete, name="password-reset-complete"),
    path(
        "console/password-reset/<uidb64>/<token>",
        views.PasswordResetConfirmView.as_view(),
        name="password-reset-confirm",
    ),
    path("console/account/password", views.password_change, name="password-change"),
    path("console/account/two-factor", views.two_factor_overview, name="two-factor"),
    path("console/account/two-factor/setup", views.two_factor_setup, name="two-factor-setup"),
    path("console/account/two-factor/qr.svg", views.two_factor_qr, name="two-factor-qr"),
    path("console/account/two-factor/verify", views.two_factor_verify, name="two-factor-verify"),
    path("console/account/two-factor/disable", views.two_factor_disable, name="two-factor-disable"),
    path(
        "console/account/two-factor/recovery-codes",
        views.recovery_codes_regenerate,
        name="two-factor-recovery-codes",
    ),
    path(
        "console/account/two-factor/organizations/<str:org_id>",
        views.organization_two_factor,
        name="organization-two-factor",
    ),
]
