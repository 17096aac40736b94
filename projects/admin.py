from django import forms
from django.contrib import admin

from audit.admin_mixins import AuditedModelAdmin
from organizations.services import organization_lock_open
from projects.models import Project, ProjectGrant


class ProjectForm(forms.ModelForm):
    def clean_organization(self):
        organization = self.cleaned_data["organization"]
        # Under the organization's share lock (the admin's add view is one transaction), as organization_delete
        # takes it: a deletion at the same moment committed first and is seen here, or waits for this project.
        if organization is not None and not organization_lock_open(organization_id=organization.pk):
            raise forms.ValidationError("This organization is closed (deleted by its Owner): no project can be added.")
        return organization


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
    form = ProjectForm

    def has_change_permission(self, request, obj=None):
        # A project of a closed organization is shown read-only, as its organization is (organizations/admin.py).
        if obj is not None and obj.organization.closed_at is not None:
            return False
        return super().has_change_permission(request, obj)
