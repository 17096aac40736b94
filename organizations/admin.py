from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.forms.models import BaseInlineFormSet
from django.utils import timezone

from audit.admin_mixins import AuditedModelAdmin
from audit.services import audit_record
from organizations.models import ApiKey, Invitation, Membership, Organization
from organizations.services import organization_lock_open
from projects.models import Project


class MembershipFormSet(BaseInlineFormSet):
    def clean(self):
        super().clean()
        # Access already refuses a closed organization whoever is a member; a member added here could never use it,
        # and is refused in words rather than saved in silence. Checked under the organization's share lock (the
        # admin's change view is one transaction), as invitation_accept does: a deletion at the same moment either
        # committed first and is seen here, or waits and removes (and names) what this saves.
        adding = any(
            form.has_changed() and not form.cleaned_data.get("DELETE") for form in self.forms if form.is_valid()
        )
        if adding and not organization_lock_open(organization_id=self.instance.pk):
            raise ValidationError(
                "This organization is closed (deleted by its Owner): no member can be added to it or changed."
            )


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = MembershipFormSet
    extra = 0
    fields = ("user", "roles", "created_at")
    readonly_fields = ("created_at",)
    raw_id_fields = ("user",)


class ProjectInline(admin.TabularInline):
    model = Project
    extra = 0
    fields = ("public_id", "name", "is_default", "created_at")
    readonly_fields = ("public_id", "is_default", "created_at")
    show_change_link = True


@admin.register(Organization)
class OrganizationAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("name", "public_id", "premium_trial_deployments", "created_at", "status")
    list_filter = (("closed_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "public_id", "memberships__user__email")
    # Premium trials are granted through their own page (iot's PremiumTrial admin), which records their end. An
    # organization is closed by its Owner (organizations.services.organization_delete), never here.
    readonly_fields = ("public_id", "premium_trial_deployments", "created_at", "closed_at")

    @admin.display(description="status", ordering="closed_at")
    def status(self, obj):
        return f"Closed {obj.closed_at:%Y-%m-%d %H:%M} UTC" if obj.closed_at else "Open"

    def has_change_permission(self, request, obj=None):
        # A closed organization is shown read-only, its members and projects with it: nobody can reach it, so a
        # member, a name or a project saved here could never be used (MembershipFormSet still refuses a member under
        # the lock, for a deletion that commits while the form is being saved).
        if obj is not None and obj.closed_at is not None:
            return False
        return super().has_change_permission(request, obj)

    inlines = [MembershipInline, ProjectInline]

    def save_formset(self, request, form, formset, change):
        with transaction.atomic():
            instances = formset.save(commit=False)
            for obj in formset.deleted_objects:
                audit_record(
                    actor=self._actor(request),
                    organization=form.instance,
                    action=f"admin.{obj._meta.model_name}.delete",
                    target=obj,
                    summary={},
                )
                obj.delete()
            for obj in instances:
                is_new = obj.pk is None
                obj.save()
                audit_record(
                    actor=self._actor(request),
                    organization=form.instance,
                    action=f"admin.{obj._meta.model_name}.{'create' if is_new else 'update'}",
                    target=obj,
                    summary={"changed": [f.name for f in obj._meta.fields]},
                )
            formset.save_m2m()


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("name", "prefix", "organization", "role", "created_by", "last_used_at", "revoked_at", "expires_at")
    list_filter = ("role",)
    search_fields = ("name", "prefix", "public_id", "organization__name", "organization__public_id")
    readonly_fields = (
        "public_id",
        "prefix",
        "secret_hash",
        "previous_secret_hash",
        "previous_expires_at",
        "last_used_at",
        "created_at",
        "created_by",
        "organization",
    )
    exclude = ("projects",)
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # keys are created by members, so that the secret is shown to its owner only

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request, queryset):
        count = 0
        with transaction.atomic():
            for key in queryset.select_for_update().filter(revoked_at=None):
                key.revoked_at = timezone.now()
                key.save(update_fields=["revoked_at"])
                audit_record(
                    actor=self._actor(request),
                    organization=key.organization,
                    action="api_key.revoke",
                    target=key,
                    summary={"name": key.name, "by": "staff"},
                )
                count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


@admin.register(Invitation)
class InvitationAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("email", "organization", "created_at", "expires_at", "accepted_at", "revoked_at")
    search_fields = ("email", "organization__name")
    readonly_fields = ("public_id", "token_hash", "invited_by", "created_at", "accepted_at")
