from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Users"


class AdminConfig(admin_apps.AdminConfig):
    """Django's admin with our site as the default one: staff need a verified second factor (accounts.admin_site).
    Listed in INSTALLED_APPS in place of django.contrib.admin."""

    default = False  # not the accounts app's own config
    default_site = "accounts.admin_site.OTPRequiredAdminSite"
