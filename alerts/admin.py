"""Backoffice: alerts across organizations, notification channels with their delivery failures, rules, silences.

Read-mostly: alerts and deliveries are the system's record and are never edited here. Changes made here are audited.
"""

from django.contrib import admin
from django.db.models import Count, Q

from alerts.models import (
    Alert,
    AlertEvent,
    AlertRule,
    Delivery,
    DeliveryAttempt,
    NotificationChannel,
    PlatformEvent,
    Silence,
)
from audit.admin_mixins import AuditedModelAdmin


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AlertEventInline(admin.TabularInline):
    model = AlertEvent
    extra = 0
    can_delete = False
    readonly_fields = ["kind", "value", "message", "created_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = [
        "public_id",
        "organization",
        "deployment",
        "rule",
        "status",
        "severity",
        "since",
        "value",
        "acknowledged_until",
    ]
    list_filter = ["status", "severity"]
    search_fields = [
        "public_id",
        "organization__name",
        "organization__public_id",
        "deployment__public_id",
        "rule__name",
    ]
    list_select_related = ["organization", "deployment", "rule"]
    date_hierarchy = "since"
    inlines = [AlertEventInline]


@admin.register(AlertRule)
class AlertRuleAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = [
        "public_id",
        "name",
        "organization",
        "project",
        "deployment",
        "metric",
        "operator",
        "threshold",
        "threshold_unit",
        "severity",
        "enabled",
    ]
    list_filter = ["enabled", "kind", "severity", "default_key"]
    search_fields = ["public_id", "name", "organization__name", "deployment__public_id"]
    list_select_related = ["organization", "project", "deployment"]
    raw_id_fields = ["organization", "project", "deployment"]
    filter_horizontal = ["channels"]


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
        "created_at",
        "next_attempt_at",
    ]
    list_filter = ["status", "kind", "channel__type"]
    search_fields = ["public_id", "channel__public_id", "organization__name"]
    list_select_related = ["organization", "channel"]
    inlines = [DeliveryAttemptInline]


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


@admin.register(Silence)
class SilenceAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "organization", "project", "matchers", "starts_at", "ends_at", "created_by"]
    list_select_related = ["organization", "project", "created_by"]


@admin.register(PlatformEvent)
class PlatformEventAdmin(ReadOnlyAdmin):
    list_display = ["organization", "kind", "subject", "severity", "created_at"]
    list_filter = ["kind", "severity"]
    search_fields = ["subject", "organization__name"]
