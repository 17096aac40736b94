"""Backoffice: alerts across organizations, their rules and silences.

Read-mostly: alerts and deliveries are the system's record and are never edited here. Changes made here are audited.
"""

from django.contrib import admin

from alerts.models import Alert, AlertEvent, AlertRule, Silence
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


@admin.register(Silence)
class SilenceAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "organization", "project", "matchers", "starts_at", "ends_at", "created_by"]
    list_select_related = ["organization", "project", "created_by"]
