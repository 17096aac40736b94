"""Backoffice for the catalog (regions, plans, tiers, prices) and a read-mostly view of deployments and operations.

Every change made here is audited (AuditedModelAdmin). Observed state is the reconciler's: shown, never editable.
"""
from django import forms
from django.contrib import admin

from audit.admin_mixins import AuditedModelAdmin
from deployments import crypto
from deployments.models import (AclRule, Deployment, DeploymentEvent, MqttUser, Operation, Plan, Price,
                                RateLimitPolicy, Region, StatusInterval, Tier)


class RegionForm(forms.ModelForm):
    kubeconfig = forms.CharField(widget=forms.Textarea, required=False,
                                 help_text="Paste a kubeconfig to replace the stored one (kept encrypted); "
                                           "leave empty to keep it.")

    class Meta:
        model = Region
        exclude = ["kubeconfig_encrypted"]

    def save(self, commit=True):
        region = super().save(commit=False)
        if self.cleaned_data.get("kubeconfig"):
            region.kubeconfig_encrypted = crypto.encrypt_str(self.cleaned_data["kubeconfig"])
        if commit:
            region.save()
            self.save_m2m()
        return region


@admin.register(Region)
class RegionAdmin(AuditedModelAdmin, admin.ModelAdmin):
    form = RegionForm
    list_display = ("code", "display_name", "provider", "cloud_region", "driver", "is_open")
    list_filter = ("driver", "provider", "is_open")
    search_fields = ("code", "display_name")
    filter_horizontal = ("tiers",)


class TierInline(admin.TabularInline):
    model = Tier
    extra = 0


@admin.register(Plan)
class PlanAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("code", "name", "sort_order")
    inlines = [TierInline]


@admin.register(Price)
class PriceAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("plan", "tier", "kind", "currency", "amount", "valid_from")
    list_filter = ("plan", "kind", "currency")


class OperationInline(admin.TabularInline):
    model = Operation
    extra = 0
    can_delete = False
    fields = ("public_id", "kind", "status", "target_generation", "error", "created_at", "finished_at")
    readonly_fields = fields


@admin.register(Deployment)
class DeploymentAdmin(AuditedModelAdmin, admin.ModelAdmin):
    list_display = ("name", "public_id", "project", "plan", "tier", "region", "desired_state", "status",
                    "created_at")
    list_filter = ("status", "desired_state", "plan", "region")
    search_fields = ("name", "public_id", "project__public_id", "project__organization__public_id")
    raw_id_fields = ("project",)
    readonly_fields = ("public_id", "status", "conditions", "observed_generation", "observed_restart_nonce",
                       "endpoints", "observed_details", "last_error", "last_reconciled_at", "generation",
                       "restart_nonce", "created_at", "updated_at", "deleted_at")
    exclude = ("monitor_password_encrypted", "monitor_salt_b64", "monitor_hash_b64", "api_secret_encrypted")
    inlines = [OperationInline]


@admin.register(StatusInterval)
class StatusIntervalAdmin(admin.ModelAdmin):
    list_display = ("deployment", "status", "tier", "started_at", "ended_at")
    list_filter = ("status",)
    raw_id_fields = ("deployment",)

    def has_change_permission(self, request, obj=None):
        return False  # billing meters from these rows


admin.site.register([DeploymentEvent, MqttUser, AclRule, RateLimitPolicy])
