from django.contrib import admin

from audit.admin_mixins import AuditedModelAdmin
from projects.models import Project, ProjectGrant


class ProjectGrantInline(admin.TabularInline):
    model = ProjectGrant
    extra = 0
    raw_id_fields = ("membership",)


@admin.register(Project)
class ProjectAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("name", "public_id", "organization", "is_default", "created_at")
    search_fields = ("name", "public_id", "organization__name", "organization__public_id")
    readonly_fields = ("public_id", "is_default", "created_at")
    raw_id_fields = ("organization",)
    inlines = [ProjectGrantInline]
