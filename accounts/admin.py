from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django_otp.plugins.otp_static.admin import StaticDeviceAdmin
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services
from accounts.models import SignInThrottle, User
from audit.admin_mixins import AuditedModelAdmin


@admin.register(User)
class UserAdmin(AuditedModelAdmin, BaseUserAdmin):
    ordering = ("email",)
    list_display = ("email", "full_name", "public_id", "is_staff", "is_active", "date_joined")
    search_fields = ("email", "full_name", "public_id")
    readonly_fields = ("public_id", "date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("public_id", "email", "password")}),
        ("Profile", {"fields": ("full_name",)}),
        ("Access", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    actions = ["deactivate", "activate"]

    def save_model(self, request, obj, form, change):
        if change and "is_active" in form.changed_data and not obj.is_active:
            # Deactivation ends the user's sessions for good: reactivating later must not revive them.
            obj.session_version += 1
        super().save_model(request, obj, form, change)

    @admin.action(description="Deactivate the selected users (ends their sessions, suspends their API keys)")
    def deactivate(self, request, queryset):
        for user in queryset:
            services.user_set_active(user=user, actor=self._actor(request), active=False)
        self.message_user(request, f"Deactivated {queryset.count()} user(s).", messages.SUCCESS)

    @admin.action(description="Reactivate the selected users")
    def activate(self, request, queryset):
        for user in queryset:
            services.user_set_active(user=user, actor=self._actor(request), active=True)
        self.message_user(request, f"Reactivated {queryset.count()} user(s).", messages.SUCCESS)


@admin.register(SignInThrottle)
class SignInThrottleAdmin(AuditedModelAdmin, admin.ModelAdmin):
    """Failed sign-ins per account and per address. Deleting a row lifts its lock-out (audited)."""

    list_display = ("scope", "key", "failures", "lockouts", "locked_until", "updated_at")
    list_filter = ("scope",)
    search_fields = ("key",)
    readonly_fields = ("scope", "key", "failures", "window_started_at", "lockouts", "locked_until", "updated_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# Second factors: users enrol their own. Staff may only see that a device exists and delete it (a user who lost their
# phone and their recovery codes), audited; never add one for someone (they would hold that user's second factor)
# nor read a key or a code (OTP_ADMIN_HIDE_SENSITIVE_DATA).
for _model, _admin_class in ((TOTPDevice, TOTPDeviceAdmin), (StaticDevice, StaticDeviceAdmin)):
    admin.site.unregister(_model)

    @admin.register(_model)
    class _AuditedDeviceAdmin(AuditedModelAdmin, _admin_class):
        def has_add_permission(self, request):
            return False

        def has_change_permission(self, request, obj=None):
            return False
