from django.contrib import admin

from audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit log is evidence."""

    list_display = (
        "created_at",
        "action",
        "target_id",
        "actor_email",
        "api_key_prefix",
        "organization_public_id",
        "via",
        "ip",
    )
    list_filter = ("via", "action")
    search_fields = ("action", "target_id", "actor_email", "organization_public_id", "request_id")
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
