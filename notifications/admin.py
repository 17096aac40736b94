"""Backoffice: notification channels with their delivery failures, deliveries with every attempt, e-mail notices,
platform events.

Read-mostly: deliveries and platform events are the system's record and are never edited here; channel changes made
here are audited. Credentials are never shown: a channel's config is its masked form, the encrypted copy is not a field.
"""

from django.contrib import admin
from django.db.models import Count, Q

from audit.admin_mixins import AuditedModelAdmin
from notifications.models import Delivery, DeliveryAttempt, EmailNotice, NotificationChannel, PlatformEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "ok", "status_code", "error", "response_body", "duration_ms", "created_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "public_id",
        "organization",
        "channel",
        "kind",
        "status",
        "attempts",
        "alert_public_id",
        "created_at",
        "next_attempt_at",
    ]
    list_filter = ["status", "kind", "channel__type"]
    search_fields = ["public_id", "channel__public_id", "alert_public_id", "organization__name"]
    list_select_related = ["organization", "channel"]
    inlines = [DeliveryAttemptInline]


@admin.register(EmailNotice)
class EmailNoticeAdmin(ReadOnlyAdmin):
    list_display = ["subject", "status", "attempts", "last_error", "created_at", "next_attempt_at", "completed_at"]
    list_filter = ["status"]
    search_fields = ["subject"]


class FailingFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request, model_admin):
        return [("failing", "Failing"), ("healthy", "Healthy")]

    def queryset(self, request, queryset):
        if self.value() == "failing":
            return queryset.filter(failing_since__isnull=False)
        if self.value() == "healthy":
            return queryset.filter(failing_since__isnull=True)
        return queryset


@admin.register(NotificationChannel)
class NotificationChannelAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ["public_id", "name", "organization", "type", "enabled", "failing_since", "failed_deliveries"]
    list_filter = [FailingFilter, "type", "enabled"]
    search_fields = ["public_id", "name", "organization__name", "organization__public_id"]
    readonly_fields = ["public_id", "organization", "type", "config", "failing_since", "failure_notice_sent_at"]
    fields = [
        "public_id",
        "organization",
        "name",
        "type",
        "config",
        "is_default",
        "platform_events",
        "enabled",
        "failing_since",
        "failure_notice_sent_at",
    ]

    def has_add_permission(self, request):
        return False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("organization")
            .annotate(_failed=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.FAILED)))
        )

    @admin.display(description="failed deliveries", ordering="_failed")
    def failed_deliveries(self, obj):
        return obj._failed


@admin.register(PlatformEvent)
class PlatformEventAdmin(ReadOnlyAdmin):
    list_display = ["organization", "kind", "subject", "severity", "created_at"]
    list_filter = ["kind", "severity"]
    search_fields = ["subject", "organization__name"]
